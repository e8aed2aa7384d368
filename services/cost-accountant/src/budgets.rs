//! Budgets: checked on an interval against the period's spend (warning and exceeded
//! events once per period, status reports periodically, gauges on `/metrics`), and set
//! over NATS `aifab.budget.set` as `POST /v1/budgets` sets them.

use std::time::Duration;

use aifab_core::messages::{
    decode, encode, tag, Actor, BudgetEvent, BudgetEventKind, BudgetSet, Credential,
};
use aifab_core::topics::subjects;
use anyhow::Context;
use futures::StreamExt;
use redis::aio::ConnectionManager;
use tokio_util::sync::CancellationToken;

use crate::app::{ApiError, App};
use crate::config::Config;
use crate::ledger::{self, ALL_TENANTS};
use crate::metric_names;
use crate::store::StoredBudget;

/// Where one budget stands now.
#[derive(Debug, Clone, PartialEq)]
struct BudgetNow {
    /// The current period (`YYYY-MM-DD` or `YYYY-MM`).
    period: String,
    spent: f64,
    /// Spend per hour (with the idle share for a tenant).
    burn: f64,
}

impl BudgetNow {
    /// The budget event of `kind` for `b` standing here.
    fn event(&self, b: &StoredBudget, kind: BudgetEventKind, now: i64) -> BudgetEvent {
        BudgetEvent {
            schema: tag(),
            kind,
            tenant: b.tenant.clone(),
            period: self.period.clone(),
            budget: b.amount,
            spent: self.spent,
            burn_rate_per_hour: self.burn.max(0.0),
            currency: b.currency.clone(),
            at_ms: now,
        }
    }
}

/// Where one budget stands now; its gauges on `/metrics`.
async fn budget_now(
    app: &App,
    conn: &mut ConnectionManager,
    b: &StoredBudget,
    now: i64,
) -> redis::RedisResult<BudgetNow> {
    let period = ledger::period_of(b.period, now);
    let totals = app.store.period_totals(conn, &period).await?;
    let spent = totals.spent(&b.tenant);
    let burn = if b.tenant == ALL_TENANTS {
        app.store.burn_rate(conn, ALL_TENANTS, now).await?
    } else {
        totals.with_idle_share(app.store.burn_rate(conn, &b.tenant, now).await?)
    };
    let currency = &app.prices.currency;
    let labels = [
        ("tenant", b.tenant.clone()),
        (
            "period_kind",
            ledger::period_kind_name(b.period).to_string(),
        ),
    ];
    let money = |template| metric_names::with_currency(template, currency);
    metrics::gauge!(money(metric_names::PERIOD_SPEND), &labels).set(spent);
    metrics::gauge!(money(metric_names::BUDGET), &labels).set(b.amount);
    if b.amount > 0.0 {
        metrics::gauge!(metric_names::BUDGET_USED_RATIO, &labels).set(spent / b.amount);
    }
    metrics::gauge!(money(metric_names::BURN_RATE_PER_HOUR), &labels).set(burn);
    Ok(BudgetNow {
        period,
        spent,
        burn,
    })
}

/// Check every budget periodically: fire warning/exceeded once per period, and publish
/// status reports.
pub(crate) async fn budget_loop(
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
                    if let Err(e) = check(&app, &mut conn, &nats, &b, now, publish_status).await {
                        tracing::warn!(error = %e, "budget check failed");
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

/// Budgets set over NATS (`aifab.budget.set`), as `POST /v1/budgets` sets them.
pub(crate) async fn listen_budget_sets(
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
            m = sets.next() => m.with_context(|| {
                format!("the NATS subscription to {} ended", subjects::BUDGET_SET)
            })?,
        };
        match decode::<BudgetSet>(&msg.payload) {
            Ok(b) => {
                let actor = Actor {
                    credential: Credential::Nats,
                    address: None,
                    name: None,
                };
                if let Err(ApiError(_, e)) = app.set_budget(b, actor).await {
                    tracing::warn!(error = %e, "budget from NATS refused");
                }
            }
            Err(e) => tracing::warn!(subject = %msg.subject, error = %e, "bad budget.set message"),
        }
    }
}

/// Check one budget at `now`: fire the thresholds it crossed (once per period) and, when
/// due, publish where it stands.
async fn check(
    app: &App,
    conn: &mut ConnectionManager,
    nats: &async_nats::Client,
    b: &StoredBudget,
    now: i64,
    publish_status: bool,
) -> redis::RedisResult<()> {
    let state = budget_now(app, conn, b, now).await?;
    for kind in ledger::crossed(state.spent, b.amount) {
        match app
            .store
            .first_fire(conn, &b.tenant, &state.period, kind)
            .await
        {
            Ok(true) => {
                let subject = match kind {
                    BudgetEventKind::Warning => subjects::BUDGET_WARNING,
                    _ => subjects::BUDGET_EXCEEDED,
                };
                tracing::warn!(tenant = %b.tenant, period = %state.period, budget = b.amount,
                    spent = state.spent, ?kind, "budget threshold crossed");
                metrics::counter!(metric_names::BUDGET_EVENTS_TOTAL,
                    "kind" => ledger::event_kind_name(kind))
                .increment(1);
                let ev = state.event(b, kind, now);
                if let Err(e) = nats.publish(subject, encode(&ev).into()).await {
                    tracing::warn!(error = %e, "publishing a budget event failed");
                }
            }
            Ok(false) => {}
            Err(e) => tracing::warn!(error = %e, "budget event bookkeeping failed"),
        }
    }
    if publish_status {
        let ev = state.event(b, BudgetEventKind::Status, now);
        if let Err(e) = nats
            .publish(subjects::BUDGET_STATUS, encode(&ev).into())
            .await
        {
            tracing::debug!(error = %e, "publishing budget status failed");
        }
    }
    Ok(())
}
