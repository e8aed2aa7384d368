//! The monitor's command line and environment, and the settings derived from them.

use aifab_core::config::{BrokerArgs, ServeArgs};
use aifab_core::topics::{self, groups};

use crate::dashboard;
use crate::slo::SloConfig;

/// Command-line and environment configuration.
#[derive(Debug, Clone, clap::Parser)]
#[command(
    name = "aifab-monitor",
    version,
    about = "Measures consumer lag, latency and throughput; raises SLO alerts; serves the \
             dashboard.",
    long_about = "Measures consumer lag, latency and throughput; raises SLO alerts; serves the \
        dashboard.\n\n\
        GET / is a live dashboard page (throughput, latency percentiles, lag per group, \
        replicas and scale decisions, spend vs budget per tenant, model versions and their \
        metrics); it polls GET /v1/dashboard. GET /v1/stats serves the rolling window \
        alone.\n\n\
        Needs Kafka, NATS and Redis (the model registry): /readyz is 503 while any is \
        unreachable. The cost accountant (--costs-url) is optional: while it is unreachable \
        the dashboard says so and keeps the budget reports it hears on NATS."
)]
pub struct Config {
    #[command(flatten)]
    pub brokers: BrokerArgs,
    #[command(flatten)]
    pub serve: ServeArgs,

    /// Milliseconds between lag readings (and SLO evaluations).
    #[arg(long, env = "AIFAB_MONITOR_INTERVAL_MS", default_value_t = 5000)]
    pub interval_ms: u64,
    /// Groups to watch always, `GROUP=TOPIC,...`.
    #[arg(long, env = "AIFAB_MONITOR_WATCH", default_value = "")]
    pub watch: String,
    /// Also watch every consumer group named `--group-prefix*` on `--topic-prefix*` topics.
    #[arg(
        long,
        env = "AIFAB_MONITOR_DISCOVER",
        default_value_t = true,
        action = clap::ArgAction::Set
    )]
    pub discover: bool,
    /// Prefix of discovered groups.
    #[arg(long, env = "AIFAB_MONITOR_GROUP_PREFIX", default_value = "aifab-")]
    pub group_prefix: String,
    /// Prefix of discovered topics.
    #[arg(long, env = "AIFAB_MONITOR_TOPIC_PREFIX", default_value = "aifab.")]
    pub topic_prefix: String,
    /// Seconds between group discoveries.
    #[arg(long, env = "AIFAB_MONITOR_DISCOVER_EVERY_S", default_value_t = 30)]
    pub discover_every_s: u64,
    /// This monitor's consumer group (predictions and dead letters).
    #[arg(long, env = "AIFAB_MONITOR_GROUP", default_value = groups::MONITOR)]
    pub group: String,
    /// Predictions topic.
    #[arg(long, env = "AIFAB_MONITOR_PREDICTIONS_TOPIC", default_value = topics::PREDICTIONS.name)]
    pub predictions_topic: String,
    /// Dead-letter topic.
    #[arg(long, env = "AIFAB_MONITOR_DLQ_TOPIC", default_value = topics::DLQ.name)]
    pub dlq_topic: String,
    /// Rolling window of latency, throughput and DLQ rate, seconds.
    #[arg(long, env = "AIFAB_MONITOR_WINDOW_S", default_value_t = 60)]
    pub window_s: u64,
    /// SLO: p99 end-to-end latency, milliseconds (0: off).
    #[arg(long, env = "AIFAB_SLO_P99_MS", default_value_t = 1000.0)]
    pub slo_p99_ms: f64,
    /// SLO: share of predictions that may fail (expire) (0: off).
    #[arg(long, env = "AIFAB_SLO_ERROR_RATE", default_value_t = 0.01)]
    pub slo_error_rate: f64,
    /// SLO: most lag of any watched group, records (0: off).
    #[arg(long, env = "AIFAB_SLO_MAX_LAG", default_value_t = 10_000)]
    pub slo_max_lag: i64,
    /// SLO: most dead letters per second (0: off).
    #[arg(long, env = "AIFAB_SLO_DLQ_PER_S", default_value_t = 1.0)]
    pub slo_dlq_per_s: f64,
    /// SLO: latency and error rules need this many predictions in the window.
    #[arg(long, env = "AIFAB_SLO_MIN_SAMPLES", default_value_t = 20)]
    pub slo_min_samples: u64,
    /// SLO: consecutive evaluations before a rule fires or resolves.
    #[arg(long, env = "AIFAB_SLO_FOR_EVALS", default_value_t = 2)]
    pub slo_for_evals: u32,

    /// Dashboard: the cost accountant's base URL, for `GET /v1/costs` (today's spend per
    /// tenant). Empty: off (budget reports on NATS still show).
    #[arg(
        long,
        env = "AIFAB_MONITOR_COSTS_URL",
        default_value = "http://127.0.0.1:8085"
    )]
    pub costs_url: String,
    /// Dashboard: milliseconds between fetches of the cost report and the model registry.
    #[arg(
        long,
        env = "AIFAB_MONITOR_DASHBOARD_REFRESH_MS",
        default_value_t = 5000
    )]
    pub dashboard_refresh_ms: u64,
    /// Dashboard: budget reports, replica reports and scale decisions older than this many
    /// seconds are left out.
    #[arg(long, env = "AIFAB_MONITOR_DASHBOARD_MAX_AGE_S", default_value_t = 600)]
    pub dashboard_max_age_s: u64,
    /// Dashboard: model versions shown per task (the newest; aliased versions always).
    #[arg(long, env = "AIFAB_MONITOR_DASHBOARD_VERSIONS", default_value_t = 5)]
    pub dashboard_versions: usize,
}

impl Config {
    pub fn dashboard_limits(&self) -> dashboard::Limits {
        dashboard::Limits {
            max_age_ms: self
                .dashboard_max_age_s
                .saturating_mul(1000)
                .min(i64::MAX as u64) as i64,
            versions_per_task: self.dashboard_versions.max(1),
        }
    }

    pub fn slo(&self) -> SloConfig {
        SloConfig {
            p99_ms: self.slo_p99_ms,
            error_rate: self.slo_error_rate,
            max_lag: self.slo_max_lag,
            dlq_per_s: self.slo_dlq_per_s,
            min_samples: self.slo_min_samples,
            for_evals: self.slo_for_evals,
        }
    }
}
