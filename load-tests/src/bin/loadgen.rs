//! Open-loop load generator: inference requests produced to Kafka at arrival times fixed
//! in advance, predictions read back read_committed (see `aifab_load_tests::loadgen`).

use aifab_load_tests::loadgen::{self, Args};
use clap::Parser;

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    args.check()?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    rt.block_on(loadgen::run(args))
}
