//! The cost accountant's command line and environment.

use aifab_core::config::{BrokerArgs, ServeArgs};
use aifab_core::topics::{self, groups};

/// Where a consumer group with no committed offset starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum StartFrom {
    Earliest,
    Latest,
}

/// Command-line and environment configuration.
#[derive(Debug, Clone, clap::Parser)]
#[command(
    name = "aifab-cost-accountant",
    version,
    about = "Charges device time to tenants and models, enforces budgets, serves /v1/costs."
)]
pub struct Config {
    #[command(flatten)]
    pub brokers: BrokerArgs,
    #[command(flatten)]
    pub serve: ServeArgs,

    /// Usage topic to charge.
    #[arg(long, env = "AIFAB_USAGE_TOPIC", default_value = topics::USAGE.name)]
    pub usage_topic: String,
    /// Consumer group.
    #[arg(long, env = "AIFAB_COST_GROUP", default_value = groups::COST_ACCOUNTANT)]
    pub group: String,
    /// Where a group with no committed offset starts.
    #[arg(
        long,
        env = "AIFAB_COST_START_FROM",
        value_enum,
        default_value = "earliest"
    )]
    pub start_from: StartFrom,
    /// Prices per device-hour by device kind, `KIND=PRICE,...`.
    #[arg(long, env = "AIFAB_PRICES", default_value = "cpu=0.20,cuda=2.50")]
    pub prices: String,
    /// Price per device-hour of device kinds not in --prices.
    #[arg(long, env = "AIFAB_DEFAULT_PRICE_PER_HOUR", default_value_t = 0.20)]
    pub default_price_per_hour: f64,
    /// Price per 1,000 tokens, on top of device time.
    #[arg(long, env = "AIFAB_PRICE_PER_1K_TOKENS", default_value_t = 0.0)]
    pub price_per_1k_tokens: f64,
    /// Currency of prices and budgets (ISO 4217).
    #[arg(long, env = "AIFAB_CURRENCY", default_value = "USD")]
    pub currency: String,
    /// Prefix of every Redis key this service writes.
    #[arg(long, env = "AIFAB_COST_REDIS_PREFIX", default_value = "aifab:costs")]
    pub redis_prefix: String,
    /// Burn rates are spend per hour over this trailing window, seconds.
    #[arg(long, env = "AIFAB_BURN_WINDOW_S", default_value_t = 900)]
    pub burn_window_s: u64,
    /// How often budgets are checked, milliseconds.
    #[arg(long, env = "AIFAB_BUDGET_INTERVAL_MS", default_value_t = 2000)]
    pub budget_interval_ms: u64,
    /// How often `aifab.budget.status` reports go out, milliseconds.
    #[arg(long, env = "AIFAB_BUDGET_STATUS_INTERVAL_MS", default_value_t = 5000)]
    pub status_interval_ms: u64,
    /// Days a charged usage id is remembered (keep it above the usage topic's retention).
    #[arg(long, env = "AIFAB_COST_DEDUPE_DAYS", default_value_t = 40)]
    pub dedupe_days: u64,
    /// Days ledger entries are kept.
    #[arg(long, env = "AIFAB_COST_RETENTION_DAYS", default_value_t = 400)]
    pub retention_days: u64,
}

impl StartFrom {
    /// librdkafka's `auto.offset.reset` for it.
    pub fn offset_reset(self) -> &'static str {
        match self {
            StartFrom::Earliest => "earliest",
            StartFrom::Latest => "latest",
        }
    }
}
