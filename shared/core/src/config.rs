//! Configuration pieces every service flattens into its own clap `Parser`.
//!
//! Every flag has an `AIFAB_*` environment fallback and a loopback default that matches
//! `scripts/stack-up`, so a service started with no flags talks to the local stack.

use clap::{Args, ValueEnum};

/// Where the brokers are.
#[derive(Debug, Clone, Args)]
pub struct BrokerArgs {
    /// Kafka bootstrap servers, comma-separated host:port.
    #[arg(long, env = "AIFAB_KAFKA_BROKERS", default_value = "127.0.0.1:9092")]
    pub kafka_brokers: String,

    /// NATS server URL (control-plane events).
    #[arg(long, env = "AIFAB_NATS_URL", default_value = "nats://127.0.0.1:4222")]
    pub nats_url: String,

    /// Redis URL (state: registry, ledger, caches).
    #[arg(
        long,
        env = "AIFAB_REDIS_URL",
        default_value = "redis://127.0.0.1:6379"
    )]
    pub redis_url: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line, for log shippers.
    Json,
}

/// Logging and the service's own HTTP port (health, readiness, metrics, API).
#[derive(Debug, Clone, Args)]
pub struct ServeArgs {
    /// Address of this service's HTTP server: /healthz, /readyz, /metrics (and its API).
    #[arg(long, env = "AIFAB_HTTP_ADDR")]
    pub http_addr: Option<std::net::SocketAddr>,

    /// Log format.
    #[arg(long, env = "AIFAB_LOG_FORMAT", value_enum, default_value = "text")]
    pub log_format: LogFormat,

    /// Log filter in `tracing` syntax, e.g. `info,aifab_core=debug`.
    #[arg(long, env = "AIFAB_LOG", default_value = "info")]
    pub log: String,

    /// Seconds to wait for in-flight work to drain after SIGTERM before exiting anyway.
    #[arg(long, env = "AIFAB_SHUTDOWN_GRACE_S", default_value_t = 30)]
    pub shutdown_grace_s: u64,
}

impl ServeArgs {
    /// The configured address, or the service's default loopback port.
    pub fn http_addr_or(&self, default_port: u16) -> std::net::SocketAddr {
        self.http_addr
            .unwrap_or_else(|| std::net::SocketAddr::from(([127, 0, 0, 1], default_port)))
    }
}
