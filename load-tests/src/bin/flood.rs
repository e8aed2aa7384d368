//! A valid tenant's latency and success with and without a flood of unauthenticated
//! requests (see `aifab_load_tests::flood`).

use aifab_load_tests::flood::{self, Args};
use clap::Parser;

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?
        .block_on(flood::run(args))
}
