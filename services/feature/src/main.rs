use clap::Parser;

/// mimalloc: per-message allocations (JSON, tokenizer) are a large share of the CPU
/// with glibc's allocator.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    aifab_feature::run(aifab_feature::Config::parse()).await
}
