use clap::Parser;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    aifab_cost_accountant::run(aifab_cost_accountant::Config::parse()).await
}
