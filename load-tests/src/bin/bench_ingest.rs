//! Ingest + feature throughput over the local broker, next to a bare rdkafka producer
//! and a relay of the same two transactional hops (see `aifab_load_tests::bench_ingest`).

use aifab_load_tests::bench_ingest::{self, Args};
use clap::Parser;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    bench_ingest::run(Args::parse()).await
}
