use clap::Parser;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    aifab_feature::run(aifab_feature::Config::parse()).await
}
