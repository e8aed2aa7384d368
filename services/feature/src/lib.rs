//! aifab feature: Tokenizes accepted records into inference requests and training examples; dedupe cache and per-tenant online features in Redis.
//!
//! The binary (`main.rs`) only parses [`Config`] and calls [`run`]; everything here can
//! be driven by tests without a broker.

use aifab_core::config::{BrokerArgs, ServeArgs};
use aifab_core::service::{Needs, Service, ServiceSpec};

pub const SPEC: ServiceSpec = ServiceSpec {
    name: "feature",
    default_port: 8081,
    needs: Needs { kafka: true, nats: false, redis: true },
};

/// Command-line and environment configuration.
#[derive(Debug, Clone, clap::Parser)]
#[command(name = "aifab-feature", version, about = "Tokenizes accepted records into inference requests and training examples; dedupe cache and per-tenant online features in Redis.")]
pub struct Config {
    #[command(flatten)]
    pub brokers: BrokerArgs,
    #[command(flatten)]
    pub serve: ServeArgs,
}

/// Start the service and run until SIGTERM/SIGINT.
pub async fn run(config: Config) -> anyhow::Result<()> {
    let mut svc = Service::init(SPEC, &config.serve, &config.brokers).await?;
    svc.serve(axum::Router::new()).await?;
    svc.shutdown.cancelled().await;
    svc.finish().await;
    Ok(())
}
