//! aifab cost-accountant: charges the device time and tokens of `aifab.usage` to tenant ×
//! model × day in Redis, priced per device kind; shares worker idle time out in
//! proportion to use; keeps budgets per tenant and period (set over HTTP, NATS
//! `aifab.budget.set` or `aifab costs budget`) and emits `aifab.budget.warning` (80%) and
//! `aifab.budget.exceeded` (100%) once per period, plus `aifab.budget.status` reports;
//! serves `GET /v1/costs`.
//!
//! - [`ledger`]: the cost math (prices, periods, idle sharing, thresholds), pure.
//! - [`report`]: the `GET /v1/costs` report assembled from the ledger, pure.
//! - [`store`]: the Redis edge (one Lua script charges a usage record exactly once).
//! - [`metric_names`]: every metric the cost accountant exports.
//! - [`config`]: the command line.
//! - `app`, `api`: shared state and the HTTP API; `usage`: the usage consumer;
//!   `budgets`: budget checks and budgets set over NATS.
//!
//! The binary (`main.rs`) only parses [`Config`] and calls [`run`].

mod api;
mod app;
mod budgets;
pub mod config;
pub mod ledger;
pub mod metric_names;
pub mod report;
pub mod store;
mod usage;

use std::sync::Arc;

use aifab_core::service::{Needs, Service, ServiceSpec};
use aifab_core::supervise::STALE_AFTER;
use tokio::sync::Notify;

pub use crate::config::{Config, StartFrom};
pub use crate::report::{
    assemble, resolve_period, BurnRates, CostQuery, CostReport, ReportInputs, ReportPeriod,
    TenantCost, Totals,
};

use crate::app::App;
use crate::ledger::PriceTable;
use crate::store::Store;

pub const SPEC: ServiceSpec = ServiceSpec {
    name: "cost-accountant",
    default_port: 8085,
    needs: Needs::ALL,
};

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
    svc.check_topics(&[
        &config.usage_topic,
        aifab_core::topics::DLQ.name,
        &config.brokers.audit_topic,
    ]);
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
        audit: config.brokers.audit_log(SPEC.name)?,
    };
    let api = api::router(&svc, app.clone());
    svc.serve(api).await?;
    let nats = svc.nats()?;

    let heartbeat = svc.heartbeat("usage-consumer", STALE_AFTER);
    svc.supervise(
        "usage-consumer",
        usage::charge_loop(config.clone(), app.clone(), heartbeat, svc.shutdown.clone()),
    );
    svc.supervise(
        "budget-checks",
        budgets::budget_loop(
            config.clone(),
            app.clone(),
            nats.clone(),
            svc.shutdown.clone(),
        ),
    );
    svc.supervise(
        "budget-sets",
        budgets::listen_budget_sets(nats, app, svc.shutdown.clone()),
    );
    // Until SIGTERM, or until a loop fails (then exit non-zero to be restarted).
    svc.shutdown.cancelled().await;
    svc.finish().await
}
