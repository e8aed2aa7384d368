use clap::Parser;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    aifab_trainer::run(aifab_trainer::Config::parse()).await
}
