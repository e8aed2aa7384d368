//! aifab autoscaler: Turns lag and budget events into scale decisions for inference workers.
//!
//! The binary (`main.rs`) only parses [`Config`] and calls [`run`]; everything here can
//! be driven by tests without a broker.

use aifab_core::config::{BrokerArgs, ServeArgs};
use aifab_core::service::{Needs, Service, ServiceSpec};

pub const SPEC: ServiceSpec = ServiceSpec {
    name: "autoscaler",
    default_port: 8086,
    needs: Needs { kafka: false, nats: true, redis: false },
};

/// Command-line and environment configuration.
#[derive(Debug, Clone, clap::Parser)]
#[command(name = "aifab-autoscaler", version, about = "Turns lag and budget events into scale decisions for inference workers.")]
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
