use clap::Parser;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    aifab_monitor::run(aifab_monitor::Config::parse()).await
}
