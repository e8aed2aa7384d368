//! Budget enforcement: which tenants are over budget, learnt from NATS
//! `aifab.budget.exceeded` (published by the cost accountant at most once per tenant per
//! period).
//!
//! Every replica subscribes and writes what it hears to Redis
//! (`<p>:ingest:budget:<tenant>`, expiring when the period ends), so a replica started
//! after the event still knows; each replica keeps a local copy refreshed from Redis
//! every [`REFRESH`]. The state ends by itself with the period (`2026-11` ends at the
//! start of December UTC, `2026-11-29` at midnight UTC); an operator lifts it early by
//! deleting the key. A period this code cannot read lasts [`UNKNOWN_PERIOD_MS`].

use std::time::Duration;

use aifab_core::messages::{decode, BudgetEvent, BudgetEventKind};
use futures::StreamExt as _;
use redis::aio::ConnectionManager;
use serde::{Deserialize, Serialize};

use crate::cache::TtlCache;
use crate::metric_names;
use crate::store::Keys;

pub const REFRESH: Duration = Duration::from_secs(2);
/// How long an exceeded state lasts when its period cannot be parsed.
pub const UNKNOWN_PERIOD_MS: i64 = 3_600_000;

/// A tenant is over budget until `until_ms`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Exceeded {
    pub period: String,
    pub until_ms: i64,
    pub budget: f64,
    pub spent: f64,
    pub currency: String,
}

impl Exceeded {
    pub fn from_event(e: &BudgetEvent, now_ms: i64) -> Self {
        Exceeded {
            period: e.period.clone(),
            until_ms: period_end_ms(&e.period).unwrap_or(now_ms + UNKNOWN_PERIOD_MS),
            budget: e.budget,
            spent: e.spent,
            currency: e.currency.clone(),
        }
    }

    /// Seconds until the state ends (for Retry-After), at least 1.
    pub fn retry_after_s(&self, now_ms: i64) -> u64 {
        (((self.until_ms - now_ms).max(0) as u64).div_ceil(1000)).max(1)
    }

    pub fn describe(&self, tenant: &str) -> String {
        format!(
            "tenant \"{tenant}\" is over its budget for period {} (spent {:.2} of {:.2} {})",
            self.period, self.spent, self.budget, self.currency
        )
    }
}

pub use aifab_core::period::period_end_ms;

/// Which tenants are over budget, as this replica knows it.
pub struct BudgetBoard {
    keys: Keys,
    /// Each tenant's state as last read from Redis or heard on NATS.
    local: TtlCache<Option<Exceeded>>,
}

impl BudgetBoard {
    pub fn new(keys: Keys) -> Self {
        BudgetBoard {
            keys,
            local: TtlCache::new(REFRESH),
        }
    }

    /// The tenant's exceeded state now, if any (local copy, refreshed from Redis).
    pub async fn exceeded(
        &self,
        conn: &mut ConnectionManager,
        tenant: &str,
    ) -> redis::RedisResult<Option<Exceeded>> {
        let now = aifab_core::now_ms();
        let state = match self.local.fresh(tenant) {
            Some(s) => s,
            None => {
                let raw: Option<String> = redis::cmd("GET")
                    .arg(self.keys.budget(tenant))
                    .query_async(conn)
                    .await?;
                let s = raw.and_then(|r| serde_json::from_str::<Exceeded>(&r).ok());
                self.local.insert(tenant.to_string(), s.clone());
                s
            }
        };
        Ok(state.filter(|e| e.until_ms > now))
    }

    /// Record an event: locally at once, and in Redis for the other replicas.
    pub async fn record(&self, conn: Option<&mut ConnectionManager>, event: &BudgetEvent) {
        if event.kind != BudgetEventKind::Exceeded {
            return;
        }
        let now = aifab_core::now_ms();
        let state = Exceeded::from_event(event, now);
        if state.until_ms <= now {
            tracing::info!(
                tenant = %event.tenant,
                period = %event.period,
                "budget event for a period already over; ignored"
            );
            return;
        }
        tracing::warn!(tenant = %event.tenant, period = %event.period, spent = event.spent, budget = event.budget,
            "tenant over budget");
        metrics::counter!(metric_names::BUDGET_EVENTS_TOTAL).increment(1);
        self.local.insert(event.tenant.clone(), Some(state.clone()));
        if let Some(conn) = conn {
            let ttl_ms = (state.until_ms - now).max(1);
            let json = serde_json::to_string(&state).expect("serializes");
            let r: redis::RedisResult<()> = redis::cmd("SET")
                .arg(self.keys.budget(&event.tenant))
                .arg(json)
                .arg("PX")
                .arg(ttl_ms)
                .exec_async(conn)
                .await;
            if let Err(e) = r {
                tracing::warn!(error = %e, tenant = %event.tenant, "could not store the budget state in Redis");
            }
        }
    }
}

/// Follow NATS `aifab.budget.exceeded` until shutdown.
pub async fn follow_events(
    nats: async_nats::Client,
    board: std::sync::Arc<BudgetBoard>,
    redis: aifab_core::redis_store::RedisHandle,
    shutdown: tokio_util::sync::CancellationToken,
) -> anyhow::Result<()> {
    let subject = aifab_core::topics::subjects::BUDGET_EXCEEDED;
    let mut sub = loop {
        match nats.subscribe(subject).await {
            Ok(s) => break s,
            Err(e) => {
                tracing::warn!(error = %e, subject, "subscribing failed; retrying");
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                    _ = shutdown.cancelled() => return Ok(()),
                }
            }
        }
    };
    tracing::info!(subject, "following budget events");
    loop {
        let msg = tokio::select! {
            m = sub.next() => match m {
                Some(m) => m,
                None => anyhow::bail!("the NATS subscription to {subject} ended"),
            },
            _ = shutdown.cancelled() => return Ok(()),
        };
        match decode::<BudgetEvent>(&msg.payload) {
            Ok(event) => {
                let mut conn = redis.try_get();
                board.record(conn.as_mut(), &event).await;
            }
            Err(e) => {
                metrics::counter!(metric_names::BUDGET_EVENTS_INVALID_TOTAL).increment(1);
                tracing::warn!(error = %e, subject, "ignoring an invalid budget event");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use aifab_core::messages::tag;

    #[test]
    fn periods_end_at_the_next_month_or_day() {
        // 2026-12-01T00:00:00Z
        assert_eq!(period_end_ms("2026-11"), Some(1_796_083_200_000));
        // 2027-01-01T00:00:00Z
        assert_eq!(period_end_ms("2026-12"), Some(1_798_761_600_000));
        // 2026-11-30T00:00:00Z
        assert_eq!(
            period_end_ms("2026-11-29"),
            Some(1_796_083_200_000 - 86_400_000)
        );
        assert_eq!(
            period_end_ms("2024-02-29"),
            Some(1_709_251_200_000),
            "leap day → 2024-03-01"
        );
        assert_eq!(period_end_ms("2023-02-29"), None);
        assert_eq!(period_end_ms("2026-13"), None);
        assert_eq!(period_end_ms("2026-W48"), None);
        assert_eq!(period_end_ms("soon"), None);
        assert_eq!(period_end_ms("1970-01-01"), Some(86_400_000));
    }

    #[test]
    fn exceeded_state_and_retry_after() {
        let e = BudgetEvent {
            schema: tag(),
            kind: BudgetEventKind::Exceeded,
            tenant: "acme".into(),
            period: "2026-11".into(),
            budget: 10.0,
            spent: 12.5,
            burn_rate_per_hour: 1.0,
            currency: "USD".into(),
            at_ms: 0,
        };
        let s = Exceeded::from_event(&e, 0);
        assert_eq!(s.until_ms, 1_796_083_200_000);
        assert_eq!(s.retry_after_s(s.until_ms - 1500), 2);
        assert_eq!(s.retry_after_s(s.until_ms + 5), 1);
        assert!(
            s.describe("acme").contains("spent 12.50 of 10.00 USD"),
            "{}",
            s.describe("acme")
        );
        let odd = Exceeded::from_event(
            &BudgetEvent {
                period: "q4".into(),
                ..e
            },
            1000,
        );
        assert_eq!(odd.until_ms, 1000 + UNKNOWN_PERIOD_MS);
    }
}
