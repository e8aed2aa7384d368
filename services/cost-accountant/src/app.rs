//! What the HTTP API and the loops share (the store, Redis, the prices), and the two
//! things done on request: reading a cost report and setting a budget.

use std::sync::Arc;

use aifab_core::audit::{AuditLog, Change};
use aifab_core::messages::{Actor, AuditAction, BudgetPeriod, BudgetSet};
use aifab_core::redis_store::RedisHandle;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use redis::aio::ConnectionManager;
use tokio::sync::Notify;

use crate::ledger::{self, PriceTable, ALL_TENANTS};
use crate::report::{assemble, resolve_period, BurnRates, CostQuery, CostReport, ReportInputs};
use crate::store::{Store, StoredBudget};

/// What the HTTP API and the loops share.
#[derive(Clone)]
pub(crate) struct App {
    pub store: Store,
    pub redis: RedisHandle,
    pub prices: Arc<PriceTable>,
    /// Wakes the budget loop (after a budget is set).
    pub check_now: Arc<Notify>,
    /// Where every budget set is recorded before it takes effect.
    pub audit: AuditLog,
}

impl App {
    pub async fn conn(&self) -> Result<ConnectionManager, ApiError> {
        self.redis.try_get().ok_or_else(|| {
            ApiError(
                StatusCode::SERVICE_UNAVAILABLE,
                "redis is not connected yet".into(),
            )
        })
    }

    /// The cost report a query asks for.
    pub async fn report(&self, q: &CostQuery) -> Result<CostReport, ApiError> {
        let now = aifab_core::now_ms();
        let period = resolve_period(q, now).map_err(|e| ApiError(StatusCode::BAD_REQUEST, e))?;
        let mut conn = self.conn().await?;
        let days = if period.kind == BudgetPeriod::Day {
            vec![period.period.clone()]
        } else {
            ledger::days_in(&period.period)
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
        // Burn rates are about now: a past period has none.
        let current = period.period == ledger::period_of(period.kind, now);
        let mut burn = BurnRates::default();
        if current {
            for t in rows.keys() {
                let rate = self.store.burn_rate(&mut conn, t, now).await?;
                burn.tenants.insert(t.clone(), rate);
            }
            burn.total = self.store.burn_rate(&mut conn, ALL_TENANTS, now).await?;
        }
        let budgets = self.store.budgets(&mut conn).await?;
        Ok(assemble(ReportInputs {
            period,
            currency: self.prices.currency.clone(),
            ledger: rows,
            idle: ledger::parse_idle(&idles),
            burn,
            budgets,
        }))
    }

    /// Validate and store a budget.
    /// Set a budget for `actor`: validated, recorded on the audit log, then stored.
    pub async fn set_budget(&self, b: BudgetSet, actor: Actor) -> Result<StoredBudget, ApiError> {
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
            period: b.period,
            amount: b.amount,
            currency: b.currency.clone(),
            set_at_ms: aifab_core::now_ms(),
        };
        let mut conn = self.conn().await?;
        let detail = format!(
            "{} budget {} {}",
            ledger::period_kind_name(stored.period),
            stored.amount,
            stored.currency
        );
        let change = Change::new(AuditAction::BudgetSet, actor, detail).tenant(&stored.tenant);
        self.audit.record(change).await.map_err(|e| {
            ApiError(
                StatusCode::SERVICE_UNAVAILABLE,
                format!("budget not set: {e:#}"),
            )
        })?;
        self.store.set_budget(&mut conn, &stored).await?;
        tracing::info!(tenant = %stored.tenant, period = ledger::period_kind_name(stored.period),
            amount = stored.amount, "budget set");
        self.check_now.notify_one();
        Ok(stored)
    }
}

/// Why a request (or a budget from NATS) was refused: the HTTP status and the message.
pub(crate) struct ApiError(pub StatusCode, pub String);

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
