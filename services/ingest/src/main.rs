use clap::Parser;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    aifab_ingest::run(aifab_ingest::Config::parse()).await
}
