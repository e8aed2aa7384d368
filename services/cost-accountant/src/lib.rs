//! aifab cost-accountant: Charges device time to tenants and models, enforces budgets, serves /v1/costs.
//!
//! The binary (`main.rs`) only parses [`Config`] and calls [`run`]; everything here can
//! be driven by tests without a broker.

use aifab_core::config::{BrokerArgs, ServeArgs};
use aifab_core::service::{Needs, Service, ServiceSpec};

pub const SPEC: ServiceSpec = ServiceSpec {
    name: "cost-accountant",
    default_port: 8085,
    needs: Needs { kafka: true, nats: true, redis: true },
};

/// Command-line and environment configuration.
#[derive(Debug, Clone, clap::Parser)]
#[command(name = "aifab-cost-accountant", version, about = "Charges device time to tenants and models, enforces budgets, serves /v1/costs.")]
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
