//! Budget views from the cost accountant's `aifab.budget.*` events. Pure: the clock is
//! an argument.

use std::collections::BTreeMap;

use aifab_core::messages::BudgetEvent;

use crate::policy::BudgetView;

pub use aifab_core::period::{days_from_civil, period_end_ms, DAY_MS};

/// The latest budget report per period for one tenant.
#[derive(Debug, Clone)]
pub struct BudgetTracker {
    tenant: String,
    /// Reports older than this are ignored (the cost accountant may be gone).
    max_age_ms: i64,
    latest: BTreeMap<String, BudgetEvent>,
}

impl BudgetTracker {
    pub fn new(tenant: &str, max_age_ms: i64) -> Self {
        BudgetTracker {
            tenant: tenant.to_string(),
            max_age_ms,
            latest: BTreeMap::new(),
        }
    }

    pub fn tenant(&self) -> &str {
        &self.tenant
    }

    /// Take a report; false when it is about another tenant or older than what we have.
    pub fn observe(&mut self, ev: BudgetEvent) -> bool {
        if ev.tenant != self.tenant {
            return false;
        }
        if self
            .latest
            .get(&ev.period)
            .is_some_and(|old| old.at_ms > ev.at_ms)
        {
            return false;
        }
        self.latest.insert(ev.period.clone(), ev);
        true
    }

    /// The most restrictive live budget (least budget per remaining hour), if any.
    pub fn view(&self, now_ms: i64) -> Option<BudgetView> {
        self.latest
            .values()
            .filter(|ev| now_ms.saturating_sub(ev.at_ms) <= self.max_age_ms)
            .filter_map(|ev| {
                let end = period_end_ms(&ev.period)?;
                (end > now_ms).then(|| BudgetView {
                    remaining: ev.budget - ev.spent,
                    burn_rate_per_hour: ev.burn_rate_per_hour,
                    hours_left: (end - now_ms) as f64 / 3_600_000.0,
                })
            })
            .min_by(|a, b| {
                let ra = a.remaining / a.hours_left.max(1e-9);
                let rb = b.remaining / b.hours_left.max(1e-9);
                ra.total_cmp(&rb)
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use aifab_core::messages::{tag, BudgetEventKind};

    #[test]
    fn period_ends() {
        // 2026-11-29T00:00Z = 1_795_910_400_000 ms.
        assert_eq!(days_from_civil(1970, 1, 1), 0);
        assert_eq!(days_from_civil(2026, 11, 29) * DAY_MS, 1_795_910_400_000);
        assert_eq!(
            period_end_ms("2026-11-29"),
            Some(1_795_910_400_000 + DAY_MS)
        );
        assert_eq!(
            period_end_ms("2026-11"),
            Some(days_from_civil(2026, 12, 1) * DAY_MS)
        );
        assert_eq!(
            period_end_ms("2026-12"),
            Some(days_from_civil(2027, 1, 1) * DAY_MS)
        );
        assert_eq!(
            period_end_ms("2024-02-29"),
            Some(days_from_civil(2024, 3, 1) * DAY_MS)
        );
        assert_eq!(period_end_ms("2026-13"), None);
        assert_eq!(period_end_ms("soon"), None);
    }

    fn ev(period: &str, budget: f64, spent: f64, at_ms: i64) -> BudgetEvent {
        BudgetEvent {
            schema: tag(),
            kind: BudgetEventKind::Status,
            tenant: "all".into(),
            period: period.into(),
            budget,
            spent,
            burn_rate_per_hour: 1.0,
            currency: "USD".into(),
            at_ms,
        }
    }

    #[test]
    fn the_tightest_live_budget_wins() {
        let day_start = days_from_civil(2026, 11, 29) * DAY_MS;
        let now = day_start + 12 * 3_600_000; // noon: 12 h left today
        let mut t = BudgetTracker::new("all", 60_000);
        assert!(t.view(now).is_none());
        // Day: 24 left for 12 h = 2/h. Month: 50 left for 36 h = 1.4/h: tighter.
        assert!(t.observe(ev("2026-11-29", 30.0, 6.0, now)));
        assert!(t.observe(ev("2026-11", 200.0, 150.0, now)));
        assert!(!t.observe(BudgetEvent {
            tenant: "acme".into(),
            ..ev("2026-11", 1.0, 0.0, now)
        }));
        let v = t.view(now).unwrap();
        assert_eq!(v.remaining, 50.0);
        assert!((v.hours_left - (12.0 + 24.0)).abs() < 1e-9, "{v:?}");
        // Stale reports are ignored.
        assert!(t.view(now + 61_000).is_none());
        // An older report does not replace a newer one.
        assert!(!t.observe(ev("2026-11", 200.0, 0.0, now - 1)));
        // A finished period does not count.
        let mut t = BudgetTracker::new("all", i64::MAX);
        t.observe(ev("2026-11-28", 1.0, 0.0, now));
        assert!(t.view(now).is_none());
    }
}
