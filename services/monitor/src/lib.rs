//! aifab monitor: Measures consumer lag, latency and throughput; raises SLO alerts; serves the dashboard.
//!
//! The binary (`main.rs`) only parses [`Config`] and calls [`run`]; everything here can
//! be driven by tests without a broker.

use aifab_core::config::{BrokerArgs, ServeArgs};
use aifab_core::service::{Needs, Service, ServiceSpec};

pub const SPEC: ServiceSpec = ServiceSpec {
    name: "monitor",
    default_port: 8084,
    needs: Needs { kafka: true, nats: true, redis: false },
};

/// Command-line and environment configuration.
#[derive(Debug, Clone, clap::Parser)]
#[command(name = "aifab-monitor", version, about = "Measures consumer lag, latency and throughput; raises SLO alerts; serves the dashboard.")]
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
