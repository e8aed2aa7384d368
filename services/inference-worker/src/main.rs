use clap::Parser;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    aifab_inference_worker::run(aifab_inference_worker::Config::parse()).await
}
