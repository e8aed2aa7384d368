//! Configuration pieces every service flattens into its own clap `Parser`.
//!
//! Every flag has an `AIFAB_*` environment fallback and a loopback default that matches
//! `scripts/stack-up`, so a service started with no flags talks to the local stack.

use clap::{Args, ValueEnum};

/// The local stack's addresses: the defaults of every service's and CLI verb's flags.
pub const DEFAULT_KAFKA_BROKERS: &str = "127.0.0.1:9092";
pub const DEFAULT_NATS_URL: &str = "nats://127.0.0.1:4222";
pub const DEFAULT_REDIS_URL: &str = "redis://127.0.0.1:6379";

/// Where the brokers are.
#[derive(Debug, Clone, Args)]
pub struct BrokerArgs {
    /// Kafka bootstrap servers, comma-separated host:port.
    #[arg(long, env = "AIFAB_KAFKA_BROKERS", default_value = DEFAULT_KAFKA_BROKERS)]
    pub kafka_brokers: String,

    /// NATS server URL (control-plane events).
    #[arg(long, env = "AIFAB_NATS_URL", default_value = DEFAULT_NATS_URL)]
    pub nats_url: String,

    /// Redis URL (state: registry, ledger, caches).
    #[arg(
        long,
        env = "AIFAB_REDIS_URL",
        default_value = DEFAULT_REDIS_URL
    )]
    pub redis_url: String,

    /// Kafka topic where every state change is recorded with who made it.
    #[arg(long, env = "AIFAB_AUDIT_TOPIC", default_value = crate::topics::AUDIT.name)]
    pub audit_topic: String,

    /// Replicas every topic this service uses must have: it stops, naming the topic, when
    /// it finds one with fewer. Unset: whatever the cluster has (the brokers' default when
    /// topics are created).
    #[arg(long, env = "AIFAB_TOPIC_REPLICATION_FACTOR", value_parser = clap::value_parser!(i32).range(1..))]
    pub topic_replication_factor: Option<i32>,

    /// `min.insync.replicas` every topic this service uses must have. Unset: the brokers'.
    #[arg(long, env = "AIFAB_TOPIC_MIN_INSYNC_REPLICAS", value_parser = clap::value_parser!(i32).range(1..))]
    pub topic_min_insync_replicas: Option<i32>,
}

impl BrokerArgs {
    /// The replication the deployment expects of its topics.
    pub fn replication(&self) -> crate::kafka::Replication {
        crate::kafka::Replication {
            factor: self.topic_replication_factor,
            min_insync: self.topic_min_insync_replicas,
        }
    }

    /// The writer of this service's records to the audit topic.
    pub fn audit_log(&self, service: &str) -> anyhow::Result<crate::audit::AuditLog> {
        crate::audit::AuditLog::with_topic(&self.kafka_brokers, service, &self.audit_topic)
    }
}

/// Where the encoder is (the inference worker, the trainer, the feature service's
/// tokenizer, `aifab train`).
#[derive(Debug, Clone, Args)]
pub struct ModelArgs {
    /// Encoder directory (config.json, model.safetensors, tokenizer.json); see scripts/fetch-model.
    #[arg(long, env = "AIFAB_MODEL_DIR", default_value_t = default_model_dir())]
    pub model_dir: String,
}

/// Where `scripts/fetch-model` puts the encoder when `AIFAB_MODEL_CACHE` is not set:
/// `$HOME/.cache/aifab/models/all-minilm-l6-v2`.
pub fn default_model_dir() -> String {
    let home = std::env::var("HOME").unwrap_or_else(|_| ".".into());
    format!("{home}/.cache/aifab/models/all-minilm-l6-v2")
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

    /// Address of the ops routes (/healthz, /readyz, /metrics) when they must not share the
    /// API's port (a public ingest): e.g. 0.0.0.0:9080. Default: the API's port.
    #[arg(long, env = "AIFAB_OPS_ADDR")]
    pub ops_addr: Option<std::net::SocketAddr>,

    /// File holding the admin token: routes that change state (budgets, training) need
    /// `Authorization: Bearer <it>`. Unset: those routes answer loopback peers only.
    #[arg(long, env = "AIFAB_ADMIN_TOKEN_FILE")]
    pub admin_token_file: Option<std::path::PathBuf>,

    /// File holding the read token: routes that show tenants' spend or traffic (costs,
    /// the dashboard) need it or the admin token. Unset (and no admin token): loopback only.
    #[arg(long, env = "AIFAB_READ_TOKEN_FILE")]
    pub read_token_file: Option<std::path::PathBuf>,

    /// Most API requests in flight at once; more are answered 503 with Retry-After at once.
    #[arg(long, env = "AIFAB_HTTP_MAX_CONCURRENT", default_value_t = 512)]
    pub http_max_concurrent: usize,

    /// Longest an API request may take to be answered, in seconds (then 503 `timeout`).
    #[arg(long, env = "AIFAB_HTTP_REQUEST_TIMEOUT_S", default_value_t = 60)]
    pub http_request_timeout_s: u64,

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

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        model: ModelArgs,
    }

    #[test]
    fn the_model_dir_is_a_flag_with_fetch_models_directory_as_default() {
        let cli = Cli::parse_from(["test", "--model-dir", "/models/encoder"]);
        assert_eq!(cli.model.model_dir, "/models/encoder");
        assert!(default_model_dir().ends_with("/.cache/aifab/models/all-minilm-l6-v2"));
    }
}
