//! aifab cost-accountant: charges the device time and tokens of `aifab.usage` to tenant ×
//! model × day in Redis, priced per device kind; shares worker idle time out in
//! proportion to use; keeps budgets per tenant and period (set over HTTP, NATS
//! `aifab.budget.set` or `aifab costs budget`) and emits `aifab.budget.warning` (80%) and
//! `aifab.budget.exceeded` (100%) once per period, plus `aifab.budget.status` reports;
//! serves `GET /v1/costs`.
//!
//! - [`ledger`]: the cost math (prices, periods, idle sharing, thresholds), pure.
//! - [`store`]: the Redis edge (one Lua script charges a usage record exactly once).
//!
//! The binary (`main.rs`) only parses [`Config`] and calls [`run`].

pub mod ledger;
pub mod store;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use aifab_core::config::{BrokerArgs, ServeArgs};
use aifab_core::messages::{
    decode, encode, tag, BudgetEvent, BudgetEventKind, BudgetPeriod, BudgetSet, DeadLetter,
    SourceRef, UsageRecord,
};
use aifab_core::redis_store::RedisHandle;
use aifab_core::service::{Needs, Service, ServiceSpec};
use aifab_core::supervise::{Heartbeat, STALE_AFTER};
use aifab_core::topics::{self, groups, subjects};
use anyhow::Context;
use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use futures::StreamExt;
use rdkafka::consumer::{CommitMode, Consumer, StreamConsumer};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::Message;
use redis::aio::ConnectionManager;
use serde::{Deserialize, Serialize};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::ledger::{cost_per_1k, IdleCost, ModelCost, PriceTable, ALL_TENANTS};
use crate::store::{Store, StoredBudget};

pub const SPEC: ServiceSpec = ServiceSpec {
    name: "cost-accountant",
    default_port: 8085,
    needs: Needs {
        kafka: true,
        nats: true,
        redis: true,
    },
};

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

// ------------------------------------------------------------------------------ report

/// One tenant in a cost report.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TenantCost {
    pub tenant: String,
    pub direct_cost: f64,
    /// This tenant's share of worker idle time (by direct cost).
    pub idle_share: f64,
    pub total_cost: f64,
    pub predictions: u64,
    pub device_seconds: f64,
    pub tokens: u64,
    pub cost_per_1k_predictions: Option<f64>,
    pub burn_rate_per_hour: f64,
    pub budget: Option<f64>,
    pub remaining: Option<f64>,
    pub budget_used: Option<f64>,
    pub models: Vec<ModelCost>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Totals {
    pub direct_cost: f64,
    pub idle_cost: f64,
    pub total_cost: f64,
    pub predictions: u64,
    pub device_seconds: f64,
    pub idle_seconds: f64,
    pub tokens: u64,
    pub cost_per_1k_predictions: Option<f64>,
    pub burn_rate_per_hour: f64,
    /// The platform-wide budget (tenant `all`), when set.
    pub budget: Option<f64>,
    pub remaining: Option<f64>,
}

/// `GET /v1/costs`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CostReport {
    pub period: String,
    pub period_kind: String,
    pub currency: String,
    pub totals: Totals,
    pub tenants: Vec<TenantCost>,
    pub idle: Vec<IdleCost>,
}

#[derive(Debug, Clone, Default, Deserialize)]
pub struct CostQuery {
    /// `day` (default) or `month`.
    pub period: Option<String>,
    /// `YYYY-MM-DD` or `YYYY-MM` (default: now).
    pub date: Option<String>,
    pub tenant: Option<String>,
}

/// Assemble a report from what the store holds (the arithmetic is in [`ledger`]).
pub fn assemble(
    period: &str,
    kind: BudgetPeriod,
    currency: &str,
    ledger_rows: BTreeMap<String, Vec<ModelCost>>,
    idle: Vec<IdleCost>,
    burn: &BTreeMap<String, f64>,
    total_burn: f64,
    budgets: &[StoredBudget],
) -> CostReport {
    let direct: BTreeMap<String, f64> = ledger_rows
        .iter()
        .map(|(t, rows)| (t.clone(), rows.iter().map(|r| r.cost).sum()))
        .collect();
    let idle_cost: f64 = idle.iter().map(|i| i.cost).sum();
    let shares = ledger::share_idle(&direct, idle_cost);
    let direct_total: f64 = direct.values().sum();
    let idle_ratio = if direct_total > 0.0 {
        idle_cost / direct_total
    } else {
        0.0
    };
    let budget_of = |tenant: &str| {
        budgets
            .iter()
            .find(|b| b.tenant == tenant && b.period_kind() == kind)
            .map(|b| b.amount)
    };
    let tenants: Vec<TenantCost> = ledger_rows
        .into_iter()
        .map(|(tenant, models)| {
            let d = direct[&tenant];
            let share = shares.get(&tenant).copied().unwrap_or(0.0);
            let total = d + share;
            let predictions = models.iter().map(|m| m.predictions).sum();
            let budget = budget_of(&tenant);
            TenantCost {
                direct_cost: d,
                idle_share: share,
                total_cost: total,
                predictions,
                device_seconds: models.iter().map(|m| m.device_seconds).sum(),
                tokens: models.iter().map(|m| m.tokens).sum(),
                cost_per_1k_predictions: cost_per_1k(total, predictions),
                burn_rate_per_hour: burn.get(&tenant).copied().unwrap_or(0.0) * (1.0 + idle_ratio),
                remaining: budget.map(|b| b - total),
                budget_used: budget.and_then(|b| (b > 0.0).then(|| total / b)),
                budget,
                models,
                tenant,
            }
        })
        .collect();
    let predictions: u64 = tenants.iter().map(|t| t.predictions).sum();
    let total_cost = direct_total + idle_cost;
    let all_budget = budget_of(ALL_TENANTS);
    CostReport {
        period: period.to_string(),
        period_kind: ledger::period_kind_name(kind).to_string(),
        currency: currency.to_string(),
        totals: Totals {
            direct_cost: direct_total,
            idle_cost,
            total_cost,
            predictions,
            device_seconds: tenants.iter().map(|t| t.device_seconds).sum(),
            idle_seconds: idle.iter().map(|i| i.idle_seconds).sum(),
            tokens: tenants.iter().map(|t| t.tokens).sum(),
            cost_per_1k_predictions: cost_per_1k(total_cost, predictions),
            burn_rate_per_hour: total_burn,
            budget: all_budget,
            remaining: all_budget.map(|b| b - total_cost),
        },
        tenants,
        idle,
    }
}

/// Parse `?period=&date=` into a period kind and string.
pub fn resolve_period(q: &CostQuery, now_ms: i64) -> Result<(BudgetPeriod, String), String> {
    let kind = match q.period.as_deref() {
        None | Some("day") => BudgetPeriod::Day,
        Some("month") => BudgetPeriod::Month,
        Some(other) => return Err(format!("period {other:?}: expected day or month")),
    };
    let period = match &q.date {
        None => ledger::period_of(kind, now_ms),
        Some(d) => {
            let ok = ledger::period_bounds(d).is_some()
                && match kind {
                    BudgetPeriod::Day => d.len() == 10,
                    BudgetPeriod::Month => d.len() == 7,
                };
            if !ok {
                return Err(format!(
                    "date {d:?}: expected {} for period {}",
                    if kind == BudgetPeriod::Day {
                        "YYYY-MM-DD"
                    } else {
                        "YYYY-MM"
                    },
                    ledger::period_kind_name(kind)
                ));
            }
            d.clone()
        }
    };
    Ok((kind, period))
}

// ----------------------------------------------------------------------------- service

#[derive(Clone)]
struct App {
    store: Store,
    redis: RedisHandle,
    prices: Arc<PriceTable>,
    /// Wakes the budget loop (after a budget is set).
    check_now: Arc<Notify>,
}

impl App {
    async fn conn(&self) -> Result<ConnectionManager, ApiError> {
        self.redis.try_get().ok_or_else(|| {
            ApiError(
                StatusCode::SERVICE_UNAVAILABLE,
                "redis is not connected yet".into(),
            )
        })
    }

    async fn report(&self, q: &CostQuery) -> Result<CostReport, ApiError> {
        let now = aifab_core::now_ms();
        let (kind, period) =
            resolve_period(q, now).map_err(|e| ApiError(StatusCode::BAD_REQUEST, e))?;
        let mut conn = self.conn().await?;
        let days = if kind == BudgetPeriod::Day {
            vec![period.clone()]
        } else {
            ledger::days_in(&period)
        };
        let mut ledgers = Vec::new();
        let mut idles = Vec::new();
        for d in &days {
            ledgers.push(ledger::parse_ledger(
                &self.store.hash(&mut conn, &format!("ledger:{d}")).await?,
            ));
            idles.push(self.store.hash(&mut conn, &format!("idle:{d}")).await?);
        }
        let mut rows = ledger::merge_ledgers(ledgers);
        if let Some(t) = &q.tenant {
            rows.retain(|k, _| k == t);
        }
        let current = period == ledger::period_of(kind, now);
        let mut burn = BTreeMap::new();
        let mut total_burn = 0.0;
        if current {
            for t in rows.keys() {
                burn.insert(t.clone(), self.store.burn_rate(&mut conn, t, now).await?);
            }
            total_burn = self.store.burn_rate(&mut conn, ALL_TENANTS, now).await?;
        }
        let budgets = self.store.budgets(&mut conn).await?;
        Ok(assemble(
            &period,
            kind,
            &self.prices.currency,
            rows,
            ledger::parse_idle(&idles),
            &burn,
            total_burn,
            &budgets,
        ))
    }

    /// Validate and store a budget.
    async fn set_budget(&self, b: BudgetSet) -> Result<StoredBudget, ApiError> {
        let bad = |m: String| ApiError(StatusCode::BAD_REQUEST, m);
        if let Err(v) = aifab_core::schema::validate(
            "budget.set/v1",
            &serde_json::to_value(&b).expect("serializes"),
        ) {
            return Err(bad(v
                .iter()
                .map(|x| x.to_string())
                .collect::<Vec<_>>()
                .join("; ")));
        }
        if !b.amount.is_finite() || b.amount < 0.0 {
            return Err(bad(format!(
                "amount {}: expected a finite number ≥ 0",
                b.amount
            )));
        }
        if b.currency != self.prices.currency {
            return Err(bad(format!(
                "currency {}: this cost accountant prices in {} (no conversion)",
                b.currency, self.prices.currency
            )));
        }
        let stored = StoredBudget {
            tenant: b.tenant.clone(),
            period: ledger::period_kind_name(b.period).to_string(),
            amount: b.amount,
            currency: b.currency.clone(),
            set_at_ms: aifab_core::now_ms(),
        };
        let mut conn = self.conn().await?;
        self.store.set_budget(&mut conn, &stored).await?;
        tracing::info!(tenant = %stored.tenant, period = %stored.period, amount = stored.amount, "budget set");
        self.check_now.notify_one();
        Ok(stored)
    }
}

struct ApiError(StatusCode, String);

impl From<redis::RedisError> for ApiError {
    fn from(e: redis::RedisError) -> Self {
        ApiError(StatusCode::SERVICE_UNAVAILABLE, format!("redis: {e}"))
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.0, Json(serde_json::json!({ "error": self.1 }))).into_response()
    }
}

/// Body of `POST /v1/budgets`: a `budget.set/v1` message, or the same without `schema`
/// and `at_ms` (currency defaults to the accountant's).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct BudgetBody {
    #[serde(default)]
    schema: Option<String>,
    tenant: String,
    period: BudgetPeriod,
    amount: f64,
    #[serde(default)]
    currency: Option<String>,
    #[serde(default)]
    at_ms: Option<i64>,
}

fn router(app: App) -> Router {
    Router::new()
        .route(
            "/v1/costs",
            get(
                |State(app): State<App>, Query(q): Query<CostQuery>| async move {
                    app.report(&q).await.map(Json)
                },
            ),
        )
        .route(
            "/v1/budgets",
            get(|State(app): State<App>| async move {
                let mut conn = app.conn().await?;
                Ok::<_, ApiError>(Json(app.store.budgets(&mut conn).await?))
            })
            .post(
                |State(app): State<App>, body: axum::body::Bytes| async move {
                    let b: BudgetBody = serde_json::from_slice(&body).map_err(|e| {
                        ApiError(StatusCode::BAD_REQUEST, format!("budget body: {e}"))
                    })?;
                    if let Some(s) = &b.schema {
                        if s != "budget.set/v1" {
                            return Err(ApiError(
                                StatusCode::BAD_REQUEST,
                                format!("schema: expected \"budget.set/v1\", found \"{s}\""),
                            ));
                        }
                    }
                    let set = BudgetSet {
                        schema: tag(),
                        tenant: b.tenant,
                        period: b.period,
                        amount: b.amount,
                        currency: b.currency.unwrap_or_else(|| app.prices.currency.clone()),
                        at_ms: b.at_ms.unwrap_or_else(aifab_core::now_ms),
                    };
                    app.set_budget(set).await.map(Json)
                },
            ),
        )
        .with_state(app)
}

/// Start the service and run until SIGTERM/SIGINT.
pub async fn run(config: Config) -> anyhow::Result<()> {
    let prices = PriceTable::parse(
        &config.prices,
        config.default_price_per_hour,
        config.price_per_1k_tokens,
        &config.currency,
    )
    .map_err(|e| anyhow::anyhow!("--prices: {e}"))?;
    let mut svc = Service::init(SPEC, &config.serve, &config.brokers).await?;
    let store = Store::new(
        &config.redis_prefix,
        config.dedupe_days * 86_400,
        config.retention_days * 86_400,
        config.burn_window_s as i64 * 1000,
    );
    let app = App {
        store,
        redis: svc.redis()?,
        prices: Arc::new(prices),
        check_now: Arc::new(Notify::new()),
    };
    svc.serve(router(app.clone())).await?;
    let nats = svc.nats()?;

    let heartbeat = svc.heartbeat("usage-consumer", STALE_AFTER);
    svc.supervise(
        "usage-consumer",
        charge_loop(config.clone(), app.clone(), heartbeat, svc.shutdown.clone()),
    );
    svc.supervise(
        "budget-checks",
        budget_loop(
            config.clone(),
            app.clone(),
            nats.clone(),
            svc.shutdown.clone(),
        ),
    );
    svc.supervise(
        "budget-sets",
        listen_budget_sets(nats, app, svc.shutdown.clone()),
    );
    // Until SIGTERM, or until a loop fails (then exit non-zero to be restarted).
    svc.shutdown.cancelled().await;
    svc.finish().await
}

/// Budgets set over NATS (`aifab.budget.set`), as `POST /v1/budgets` sets them.
async fn listen_budget_sets(
    nats: async_nats::Client,
    app: App,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let mut sets = nats
        .subscribe(subjects::BUDGET_SET)
        .await
        .context("subscribing to aifab.budget.set")?;
    loop {
        let msg = tokio::select! {
            _ = shutdown.cancelled() => return Ok(()),
            m = sets.next() => m.with_context(|| format!("the NATS subscription to {} ended", subjects::BUDGET_SET))?,
        };
        match decode::<BudgetSet>(&msg.payload) {
            Ok(b) => {
                if let Err(ApiError(_, e)) = app.set_budget(b).await {
                    tracing::warn!(error = %e, "budget from NATS refused");
                }
            }
            Err(e) => tracing::warn!(subject = %msg.subject, error = %e, "bad budget.set message"),
        }
    }
}

/// Consume usage records and charge each once; commit offsets after charging.
async fn charge_loop(
    config: Config,
    app: App,
    heartbeat: Heartbeat,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    // Charging needs Redis: do not consume before it answers.
    let mut conn = tokio::select! {
        c = app.redis.get() => c?,
        _ = shutdown.cancelled() => return Ok(()),
    };
    let brokers = &config.brokers.kafka_brokers;
    let mut cc =
        aifab_core::kafka::consumer_config(brokers, "aifab-cost-accountant", &config.group);
    cc.set(
        "auto.offset.reset",
        match config.start_from {
            StartFrom::Earliest => "earliest",
            StartFrom::Latest => "latest",
        },
    );
    let consumer: StreamConsumer = cc.create().context("creating the usage consumer")?;
    consumer
        .subscribe(&[&config.usage_topic])
        .context("subscribing to the usage topic")?;
    let producer: FutureProducer =
        aifab_core::kafka::producer_config(brokers, "aifab-cost-accountant")
            .create()
            .context("creating the DLQ producer")?;
    tracing::info!(topic = %config.usage_topic, group = %config.group, "charging usage");
    let mut stream = consumer.stream();
    let mut last_commit = tokio::time::Instant::now();
    let mut dirty = false;
    loop {
        let msg = tokio::select! {
            _ = shutdown.cancelled() => break,
            _ = tokio::time::sleep(Duration::from_millis(500)) => {
                heartbeat.idle();
                None
            }
            m = stream.next() => Some(m.context("the usage consumer's stream ended")?),
        };
        if let Some(msg) = msg {
            let m = match msg {
                Ok(m) => m,
                Err(e) => {
                    heartbeat.trouble(format_args!("consumer error: {e}"));
                    tracing::warn!(error = %e, "usage consumer error");
                    continue;
                }
            };
            let payload = m.payload().unwrap_or_default();
            match decode::<UsageRecord>(payload) {
                Ok(u) => {
                    let (direct, idle) = app.prices.cost(&u);
                    // Retry until charged: skipping would lose money, and charging is idempotent.
                    let mut backoff = aifab_core::backoff::Backoff::for_dependencies();
                    loop {
                        match app.store.charge(&mut conn, &u, direct, idle).await {
                            Ok(fresh) => {
                                let result = if fresh { "charged" } else { "duplicate" };
                                metrics::counter!("aifab_cost_accountant_usage_records_total", "result" => result).increment(1);
                                heartbeat.progress();
                                break;
                            }
                            Err(e) => {
                                heartbeat.trouble(format_args!("charging failed: {e}"));
                                let delay = backoff.next_delay_jittered();
                                tracing::warn!(error = %e, retry_in = ?delay, "charging failed; retrying");
                                tokio::select! {
                                    _ = tokio::time::sleep(delay) => {}
                                    _ = shutdown.cancelled() => return Ok(()),
                                }
                            }
                        }
                    }
                }
                Err(e) => {
                    metrics::counter!("aifab_cost_accountant_usage_records_total", "result" => "invalid").increment(1);
                    let source = SourceRef {
                        topic: m.topic().to_string(),
                        partition: m.partition(),
                        offset: m.offset(),
                    };
                    let dl = DeadLetter::new(
                        payload,
                        m.key(),
                        Some(source),
                        "cost-accountant",
                        e.kind(),
                        &explain(payload, &e),
                        None,
                    );
                    let key = format!("{}:{}:{}", m.topic(), m.partition(), m.offset());
                    let bytes = encode(&dl);
                    if let Err((err, _)) = producer
                        .send(
                            FutureRecord::to(topics::DLQ.name).key(&key).payload(&bytes),
                            Duration::from_secs(30),
                        )
                        .await
                    {
                        tracing::error!(error = %err, "dead-lettering a bad usage record failed; not committing it");
                        continue;
                    }
                    tracing::warn!(reason = %e, offset = m.offset(), "bad usage record dead-lettered");
                }
            }
            if let Err(e) = consumer.store_offset_from_message(&m) {
                tracing::warn!(error = %e, "storing the offset failed");
            }
            dirty = true;
        }
        if dirty && last_commit.elapsed() >= Duration::from_millis(500) {
            if let Err(e) = consumer.commit_consumer_state(CommitMode::Async) {
                tracing::debug!(error = %e, "offset commit failed (retried with the next)");
            }
            dirty = false;
            last_commit = tokio::time::Instant::now();
        }
    }
    drop(stream);
    if dirty {
        if let Err(e) = consumer.commit_consumer_state(CommitMode::Sync) {
            tracing::warn!(error = %e, "final offset commit failed");
        }
    }
    Ok(())
}

/// Why a usage record was refused, naming the field when the schema can tell.
fn explain(payload: &[u8], e: &aifab_core::messages::DecodeError) -> String {
    if let Ok(v) = serde_json::from_slice::<serde_json::Value>(payload) {
        if let Err(violations) = aifab_core::schema::validate("usage/v1", &v) {
            return violations
                .iter()
                .map(|x| x.to_string())
                .collect::<Vec<_>>()
                .join("; ");
        }
    }
    e.to_string()
}

/// The state of one budget now.
async fn budget_state(
    app: &App,
    conn: &mut ConnectionManager,
    b: &StoredBudget,
    now: i64,
) -> redis::RedisResult<(String, f64, f64)> {
    let period = ledger::period_of(b.period_kind(), now);
    let totals = app.store.period_totals(conn, &period).await?;
    let spent = totals.spent(&b.tenant);
    let burn = if b.tenant == ALL_TENANTS {
        app.store.burn_rate(conn, ALL_TENANTS, now).await?
    } else {
        totals.with_idle_share(app.store.burn_rate(conn, &b.tenant, now).await?)
    };
    let currency = app.prices.currency.to_lowercase();
    let labels = [
        ("tenant", b.tenant.clone()),
        ("period_kind", b.period.clone()),
    ];
    metrics::gauge!(
        format!("aifab_cost_accountant_period_spend_{currency}"),
        &labels
    )
    .set(spent);
    metrics::gauge!(format!("aifab_cost_accountant_budget_{currency}"), &labels).set(b.amount);
    if b.amount > 0.0 {
        metrics::gauge!("aifab_cost_accountant_budget_used_ratio", &labels).set(spent / b.amount);
    }
    metrics::gauge!(
        format!("aifab_cost_accountant_burn_rate_{currency}_per_hour"),
        &labels
    )
    .set(burn);
    Ok((period, spent, burn))
}

/// Check every budget periodically: fire warning/exceeded once per period, and publish
/// status reports.
async fn budget_loop(
    config: Config,
    app: App,
    nats: async_nats::Client,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let mut conn = tokio::select! {
        c = app.redis.get() => c?,
        _ = shutdown.cancelled() => return Ok(()),
    };
    let every = Duration::from_millis(config.budget_interval_ms.max(100));
    let status_every = config.status_interval_ms.max(100) as i64;
    let mut last_status = 0i64;
    loop {
        let now = aifab_core::now_ms();
        let publish_status = now - last_status >= status_every;
        match app.store.budgets(&mut conn).await {
            Err(e) => tracing::warn!(error = %e, "reading budgets failed"),
            Ok(budgets) => {
                for b in budgets {
                    let (period, spent, burn) = match budget_state(&app, &mut conn, &b, now).await {
                        Ok(s) => s,
                        Err(e) => {
                            tracing::warn!(error = %e, "budget check failed");
                            continue;
                        }
                    };
                    let event = |kind| BudgetEvent {
                        schema: tag(),
                        kind,
                        tenant: b.tenant.clone(),
                        period: period.clone(),
                        budget: b.amount,
                        spent,
                        burn_rate_per_hour: burn.max(0.0),
                        currency: b.currency.clone(),
                        at_ms: now,
                    };
                    for kind in ledger::crossed(spent, b.amount) {
                        match app
                            .store
                            .first_fire(&mut conn, &b.tenant, &period, kind)
                            .await
                        {
                            Ok(true) => {
                                let subject = match kind {
                                    BudgetEventKind::Warning => subjects::BUDGET_WARNING,
                                    _ => subjects::BUDGET_EXCEEDED,
                                };
                                let ev = event(kind);
                                tracing::warn!(tenant = %b.tenant, %period, budget = b.amount, spent, ?kind, "budget threshold crossed");
                                metrics::counter!("aifab_cost_accountant_budget_events_total", "kind" => subject.rsplit('.').next().unwrap_or("")).increment(1);
                                if let Err(e) = nats.publish(subject, encode(&ev).into()).await {
                                    tracing::warn!(error = %e, "publishing a budget event failed");
                                }
                            }
                            Ok(false) => {}
                            Err(e) => tracing::warn!(error = %e, "budget event bookkeeping failed"),
                        }
                    }
                    if publish_status {
                        if let Err(e) = nats
                            .publish(
                                subjects::BUDGET_STATUS,
                                encode(&event(BudgetEventKind::Status)).into(),
                            )
                            .await
                        {
                            tracing::debug!(error = %e, "publishing budget status failed");
                        }
                    }
                }
            }
        }
        if publish_status {
            last_status = now;
        }
        tokio::select! {
            _ = tokio::time::sleep(every) => {}
            _ = app.check_now.notified() => { last_status = 0; }
            _ = shutdown.cancelled() => return Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(model: &str, cost: f64, predictions: u64) -> ModelCost {
        ModelCost {
            model: model.into(),
            model_version: "v1".into(),
            device_kind: "cpu".into(),
            device_seconds: cost * 10.0,
            tokens: predictions * 20,
            predictions,
            cost,
        }
    }

    #[test]
    fn a_report_shares_idle_and_prices_per_prediction() {
        let rows: BTreeMap<String, Vec<ModelCost>> = [
            (
                "acme".to_string(),
                vec![row("spam", 3.0, 3000), row("intent", 1.0, 1000)],
            ),
            ("beta".to_string(), vec![row("spam", 4.0, 1000)]),
        ]
        .into();
        let idle = vec![IdleCost {
            worker: "w0".into(),
            device_kind: "cpu".into(),
            idle_seconds: 100.0,
            cost: 2.0,
        }];
        let burn: BTreeMap<String, f64> = [("acme".to_string(), 1.0)].into();
        let budgets = vec![
            StoredBudget {
                tenant: "acme".into(),
                period: "day".into(),
                amount: 10.0,
                currency: "USD".into(),
                set_at_ms: 0,
            },
            StoredBudget {
                tenant: "beta".into(),
                period: "month".into(),
                amount: 99.0,
                currency: "USD".into(),
                set_at_ms: 0,
            },
            StoredBudget {
                tenant: "all".into(),
                period: "day".into(),
                amount: 20.0,
                currency: "USD".into(),
                set_at_ms: 0,
            },
        ];
        let r = assemble(
            "2026-11-29",
            BudgetPeriod::Day,
            "USD",
            rows,
            idle,
            &burn,
            5.0,
            &budgets,
        );
        assert_eq!(r.totals.direct_cost, 8.0);
        assert_eq!(r.totals.idle_cost, 2.0);
        assert_eq!(r.totals.total_cost, 10.0);
        assert_eq!(r.totals.predictions, 5000);
        assert_eq!(r.totals.cost_per_1k_predictions, Some(2.0));
        assert_eq!(
            (r.totals.budget, r.totals.remaining),
            (Some(20.0), Some(10.0))
        );
        let acme = &r.tenants[0];
        assert_eq!(
            (acme.direct_cost, acme.idle_share, acme.total_cost),
            (4.0, 1.0, 5.0)
        );
        assert_eq!(acme.cost_per_1k_predictions, Some(1.25));
        assert_eq!(
            acme.burn_rate_per_hour, 1.25,
            "direct burn plus its idle share"
        );
        assert_eq!(
            (acme.budget, acme.remaining, acme.budget_used),
            (Some(10.0), Some(5.0), Some(0.5))
        );
        let beta = &r.tenants[1];
        assert_eq!(beta.total_cost, 5.0);
        assert_eq!(beta.budget, None, "a month budget is not in a day report");
        let sum: f64 = r.tenants.iter().map(|t| t.total_cost).sum();
        assert!(
            (sum - r.totals.total_cost).abs() < 1e-9,
            "idle shares add up"
        );
    }

    #[test]
    fn periods_from_queries() {
        let now = 1_795_910_400_000 + 1000;
        let q = |p: Option<&str>, d: Option<&str>| CostQuery {
            period: p.map(Into::into),
            date: d.map(Into::into),
            tenant: None,
        };
        assert_eq!(
            resolve_period(&q(None, None), now).unwrap(),
            (BudgetPeriod::Day, "2026-11-29".into())
        );
        assert_eq!(
            resolve_period(&q(Some("month"), None), now).unwrap(),
            (BudgetPeriod::Month, "2026-11".into())
        );
        assert_eq!(
            resolve_period(&q(Some("month"), Some("2026-10")), now)
                .unwrap()
                .1,
            "2026-10"
        );
        assert!(resolve_period(&q(Some("month"), Some("2026-10-01")), now)
            .unwrap_err()
            .contains("YYYY-MM"));
        assert!(resolve_period(&q(Some("week"), None), now)
            .unwrap_err()
            .contains("day or month"));
    }
}
