use clap::Parser;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    aifab_autoscaler::run(aifab_autoscaler::Config::parse()).await
}
