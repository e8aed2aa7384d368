//! Cost math, pure: prices, periods, the ledger's field names, idle-time sharing, reports
//! and budget thresholds. The Redis edge (`store.rs`) only moves these numbers.

use std::collections::BTreeMap;

use aifab_core::messages::{BudgetEventKind, BudgetPeriod, UsageRecord};
use serde::{Deserialize, Serialize};

/// The tenant name of the platform-wide budget: every tenant's spend plus idle time.
pub const ALL_TENANTS: &str = "all";

/// Warning at this fraction of a budget.
pub const WARNING_FRACTION: f64 = 0.8;

// ------------------------------------------------------------------------------ prices

/// Prices per device-hour by device kind, plus per 1,000 tokens.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PriceTable {
    pub per_device_hour: BTreeMap<String, f64>,
    /// For device kinds not in the table.
    pub default_per_device_hour: f64,
    pub per_1k_tokens: f64,
    pub currency: String,
}

impl PriceTable {
    /// Parse `cpu=0.20,cuda=2.50` (per device-hour).
    pub fn parse(
        spec: &str,
        default_per_device_hour: f64,
        per_1k_tokens: f64,
        currency: &str,
    ) -> Result<Self, String> {
        let mut per_device_hour = BTreeMap::new();
        for part in spec.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let (kind, price) = part.split_once('=').ok_or_else(|| {
                format!("price {part:?}: expected KIND=PRICE_PER_HOUR, e.g. cuda=2.50")
            })?;
            let price: f64 = price
                .trim()
                .parse()
                .map_err(|_| format!("price {part:?}: {price:?} is not a number"))?;
            if !price.is_finite() || price < 0.0 {
                return Err(format!("price {part:?}: expected a finite price ≥ 0"));
            }
            per_device_hour.insert(kind.trim().to_string(), price);
        }
        if currency.len() != 3 || !currency.chars().all(|c| c.is_ascii_uppercase()) {
            return Err(format!(
                "currency {currency:?}: expected an ISO 4217 code such as USD"
            ));
        }
        Ok(PriceTable {
            per_device_hour,
            default_per_device_hour,
            per_1k_tokens,
            currency: currency.to_string(),
        })
    }

    pub fn device_hour(&self, kind: &str) -> f64 {
        self.per_device_hour
            .get(kind)
            .copied()
            .unwrap_or(self.default_per_device_hour)
    }

    /// What one usage record costs.
    pub fn cost(&self, u: &UsageRecord) -> UsageCost {
        let per_s = self.device_hour(&u.device_kind) / 3600.0;
        let direct =
            u.device_seconds.max(0.0) * per_s + u.tokens as f64 / 1000.0 * self.per_1k_tokens;
        UsageCost {
            direct,
            idle: u.idle_seconds.max(0.0) * per_s,
        }
    }
}

/// What one usage record costs.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct UsageCost {
    /// Device time and tokens used for the tenant.
    pub direct: f64,
    /// The worker's idle time the record reports (shared out among tenants).
    pub idle: f64,
}

// ----------------------------------------------------------------------------- periods

pub use aifab_core::period::{
    civil_from_days, day_of, days_from_civil, month_of, period_bounds, DAY_MS,
};

pub fn period_of(kind: BudgetPeriod, at_ms: i64) -> String {
    match kind {
        BudgetPeriod::Day => day_of(at_ms),
        BudgetPeriod::Month => month_of(at_ms),
    }
}

/// A period kind's wire name (`day`, `month`).
pub fn period_kind_name(kind: BudgetPeriod) -> &'static str {
    match kind {
        BudgetPeriod::Day => "day",
        BudgetPeriod::Month => "month",
    }
}

/// A budget event kind's wire name (`warning`, `exceeded`, `status`).
pub fn event_kind_name(kind: BudgetEventKind) -> &'static str {
    match kind {
        BudgetEventKind::Warning => "warning",
        BudgetEventKind::Exceeded => "exceeded",
        BudgetEventKind::Status => "status",
    }
}

/// The days (`YYYY-MM-DD`) of a period.
pub fn days_in(period: &str) -> Vec<String> {
    let Some((start, end)) = period_bounds(period) else {
        return Vec::new();
    };
    (start / DAY_MS..end / DAY_MS)
        .map(|d| day_of(d * DAY_MS))
        .collect()
}

// ------------------------------------------------------------------------------ ledger

/// One ledger row: what a tenant spent on one model version on one device kind.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ModelCost {
    pub model: String,
    pub model_version: String,
    pub device_kind: String,
    pub device_seconds: f64,
    pub tokens: u64,
    pub predictions: u64,
    pub cost: f64,
}

/// The ledger field prefix of a usage record: `tenant|task|version|device`.
pub fn ledger_prefix(u: &UsageRecord) -> String {
    format!(
        "{}|{}|{}|{}",
        u.tenant, u.task, u.model_version, u.device_kind
    )
}

/// Parse a day's ledger hash (`tenant|task|version|device|metric` → value) into rows per
/// tenant. A version containing `|` survives: the ends are split off first.
pub fn parse_ledger(fields: &[(String, String)]) -> BTreeMap<String, Vec<ModelCost>> {
    let mut rows: BTreeMap<(String, String, String, String), ModelCost> = BTreeMap::new();
    for (field, value) in fields {
        let mut parts: Vec<&str> = field.split('|').collect();
        if parts.len() < 5 {
            continue;
        }
        let metric = parts.pop().unwrap_or_default();
        let device = parts.pop().unwrap_or_default();
        let tenant = parts.remove(0);
        let task = parts.remove(0);
        let version = parts.join("|");
        let key = (
            tenant.to_string(),
            task.to_string(),
            version.clone(),
            device.to_string(),
        );
        let row = rows.entry(key).or_insert_with(|| ModelCost {
            model: task.to_string(),
            model_version: version,
            device_kind: device.to_string(),
            ..Default::default()
        });
        let v: f64 = value.parse().unwrap_or(0.0);
        match metric {
            "device_seconds" => row.device_seconds += v,
            "tokens" => row.tokens += v as u64,
            "rows" => row.predictions += v as u64,
            "cost" => row.cost += v,
            _ => {}
        }
    }
    let mut out: BTreeMap<String, Vec<ModelCost>> = BTreeMap::new();
    for ((tenant, ..), row) in rows {
        out.entry(tenant).or_default().push(row);
    }
    out
}

/// Add `b` into `a` (same model, version and device).
fn merge_rows(into: &mut Vec<ModelCost>, more: Vec<ModelCost>) {
    for r in more {
        match into.iter_mut().find(|x| {
            x.model == r.model
                && x.model_version == r.model_version
                && x.device_kind == r.device_kind
        }) {
            Some(x) => {
                x.device_seconds += r.device_seconds;
                x.tokens += r.tokens;
                x.predictions += r.predictions;
                x.cost += r.cost;
            }
            None => into.push(r),
        }
    }
}

/// Merge several days' parsed ledgers.
pub fn merge_ledgers(
    days: Vec<BTreeMap<String, Vec<ModelCost>>>,
) -> BTreeMap<String, Vec<ModelCost>> {
    let mut out: BTreeMap<String, Vec<ModelCost>> = BTreeMap::new();
    for day in days {
        for (tenant, rows) in day {
            merge_rows(out.entry(tenant).or_default(), rows);
        }
    }
    out
}

/// A worker's idle time in a period.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct IdleCost {
    pub worker: String,
    pub device_kind: String,
    pub idle_seconds: f64,
    pub cost: f64,
}

/// Parse idle hashes (`worker|device|metric` → value), merging days.
pub fn parse_idle(days: &[Vec<(String, String)>]) -> Vec<IdleCost> {
    let mut rows: BTreeMap<(String, String), IdleCost> = BTreeMap::new();
    for fields in days {
        for (field, value) in fields {
            let Some((rest, metric)) = field.rsplit_once('|') else {
                continue;
            };
            let Some((worker, device)) = rest.rsplit_once('|') else {
                continue;
            };
            let row = rows
                .entry((worker.to_string(), device.to_string()))
                .or_insert_with(|| IdleCost {
                    worker: worker.to_string(),
                    device_kind: device.to_string(),
                    ..Default::default()
                });
            let v: f64 = value.parse().unwrap_or(0.0);
            match metric {
                "idle_seconds" => row.idle_seconds += v,
                "cost" => row.cost += v,
                _ => {}
            }
        }
    }
    rows.into_values().collect()
}

/// Idle cost shared out in proportion to each tenant's direct cost (as OpenCost shares
/// idle capacity). Tenants with no direct cost get none; with no direct cost at all,
/// nothing is shared (the idle cost stays unallocated).
pub fn share_idle(direct: &BTreeMap<String, f64>, idle_cost: f64) -> BTreeMap<String, f64> {
    let total: f64 = direct.values().filter(|v| **v > 0.0).sum();
    direct
        .iter()
        .map(|(t, d)| {
            (
                t.clone(),
                if total > 0.0 && *d > 0.0 {
                    idle_cost * d / total
                } else {
                    0.0
                },
            )
        })
        .collect()
}

pub fn cost_per_1k(cost: f64, predictions: u64) -> Option<f64> {
    (predictions > 0).then(|| cost * 1000.0 / predictions as f64)
}

/// Spend per hour from burn buckets (`bucket index → cost`) over the window ending at
/// `now_ms`.
pub fn burn_rate_per_hour(
    buckets: &[(i64, f64)],
    bucket_ms: i64,
    window_ms: i64,
    now_ms: i64,
) -> f64 {
    let first = (now_ms - window_ms).div_euclid(bucket_ms) + 1;
    let last = now_ms.div_euclid(bucket_ms);
    let sum: f64 = buckets
        .iter()
        .filter(|(b, _)| *b >= first && *b <= last)
        .map(|(_, c)| c)
        .sum();
    sum / (window_ms as f64 / 3_600_000.0)
}

// ----------------------------------------------------------------------------- budgets

/// A period's totals as kept in Redis (`P:period:<period>`): direct cost and predictions
/// per tenant, the direct total and the idle total.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct PeriodTotals {
    pub direct: BTreeMap<String, f64>,
    pub rows: BTreeMap<String, u64>,
    pub direct_total: f64,
    pub idle_total: f64,
    pub rows_total: u64,
}

impl PeriodTotals {
    pub fn parse(fields: &[(String, String)]) -> Self {
        let mut t = PeriodTotals::default();
        for (k, v) in fields {
            let x: f64 = v.parse().unwrap_or(0.0);
            match k.split_once('|') {
                Some(("direct", tenant)) => {
                    t.direct.insert(tenant.to_string(), x);
                }
                Some(("rows", tenant)) => {
                    t.rows.insert(tenant.to_string(), x as u64);
                }
                None if k == "direct" => t.direct_total = x,
                None if k == "idle" => t.idle_total = x,
                None if k == "rows" => t.rows_total = x as u64,
                _ => {}
            }
        }
        t
    }

    /// What counts against a tenant's budget: its direct cost plus its share of idle
    /// time; for [`ALL_TENANTS`], everything.
    pub fn spent(&self, tenant: &str) -> f64 {
        if tenant == ALL_TENANTS {
            return self.direct_total + self.idle_total;
        }
        let d = self.direct.get(tenant).copied().unwrap_or(0.0);
        let share = if self.direct_total > 0.0 {
            self.idle_total * d / self.direct_total
        } else {
            0.0
        };
        d + share
    }

    /// A direct burn rate scaled up by the period's idle-to-direct ratio.
    pub fn with_idle_share(&self, direct_burn: f64) -> f64 {
        if self.direct_total > 0.0 {
            direct_burn * (1.0 + self.idle_total / self.direct_total)
        } else {
            direct_burn
        }
    }
}

/// Which thresholds `spent` has crossed for `budget`, in firing order.
pub fn crossed(spent: f64, budget: f64) -> Vec<BudgetEventKind> {
    let mut out = Vec::new();
    if spent <= 0.0 {
        return out;
    }
    if spent >= WARNING_FRACTION * budget {
        out.push(BudgetEventKind::Warning);
    }
    if spent >= budget {
        out.push(BudgetEventKind::Exceeded);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use aifab_core::messages::tag;

    fn usage(tenant: &str, device: &str, secs: f64, tokens: u64, idle: f64) -> UsageRecord {
        UsageRecord {
            schema: tag(),
            usage_id: "b1:acme".into(),
            batch_id: "b1".into(),
            worker: "w0".into(),
            tenant: tenant.into(),
            task: "sms_spam".into(),
            model_version: "v1".into(),
            device_kind: device.into(),
            rows: 3,
            tokens,
            device_seconds: secs,
            idle_seconds: idle,
            at_ms: 0,
        }
    }

    #[test]
    fn prices_by_device_kind_and_tokens() {
        let p = PriceTable::parse("cpu=0.36, cuda=3.6", 1.8, 0.01, "USD").unwrap();
        let c = p.cost(&usage("acme", "cuda", 10.0, 2000, 5.0));
        assert!((c.direct - (0.01 + 0.02)).abs() < 1e-12, "{}", c.direct);
        assert!((c.idle - 0.005).abs() < 1e-12);
        assert_eq!(p.device_hour("tpu"), 1.8, "unknown kinds use the default");
        assert!(PriceTable::parse("cpu", 0.0, 0.0, "USD")
            .unwrap_err()
            .contains("KIND=PRICE"));
        assert!(PriceTable::parse("cpu=-1", 0.0, 0.0, "USD").is_err());
        assert!(PriceTable::parse("", 0.0, 0.0, "usd")
            .unwrap_err()
            .contains("ISO 4217"));
    }

    #[test]
    fn kind_names_are_the_wire_names() {
        for kind in [
            BudgetEventKind::Warning,
            BudgetEventKind::Exceeded,
            BudgetEventKind::Status,
        ] {
            assert_eq!(serde_json::to_value(kind).unwrap(), event_kind_name(kind));
        }
        for kind in [BudgetPeriod::Day, BudgetPeriod::Month] {
            assert_eq!(serde_json::to_value(kind).unwrap(), period_kind_name(kind));
        }
    }

    #[test]
    fn periods_and_calendar() {
        let t = 1_795_910_400_000 + 3_600_000; // 2026-11-29T01:00Z
        assert_eq!(day_of(t), "2026-11-29");
        assert_eq!(month_of(t), "2026-11");
        assert_eq!(day_of(0), "1970-01-01");
        assert_eq!(day_of(951_782_400_000), "2000-02-29");
        for d in [-1000, 0, 59, 10_957, 20_000, 20_421] {
            let (y, m, dd) = civil_from_days(d);
            assert_eq!(days_from_civil(y, m, dd), d);
        }
        assert_eq!(
            period_bounds("2026-11-29"),
            Some((1_795_910_400_000, 1_795_910_400_000 + DAY_MS))
        );
        assert_eq!(days_in("2026-02").len(), 28);
        assert_eq!(days_in("2024-02").last().unwrap(), "2024-02-29");
        assert_eq!(period_bounds("2026-02-30"), None);
        assert_eq!(period_bounds("2026-13"), None);
    }

    #[test]
    fn ledger_fields_parse_back_into_rows() {
        let f = |k: &str, v: &str| (k.to_string(), v.to_string());
        let fields = vec![
            f("acme|sms_spam|v1|cpu|device_seconds", "1.5"),
            f("acme|sms_spam|v1|cpu|tokens", "300"),
            f("acme|sms_spam|v1|cpu|rows", "10"),
            f("acme|sms_spam|v1|cpu|cost", "0.25"),
            f("acme|sms_spam|v|2|cuda|cost", "1"),
            f("beta|banking|v3|cpu|rows", "4"),
            f("junk", "1"),
        ];
        let rows = parse_ledger(&fields);
        assert_eq!(rows["acme"].len(), 2);
        let a = &rows["acme"][0];
        assert_eq!(
            (
                a.model.as_str(),
                a.model_version.as_str(),
                a.device_kind.as_str()
            ),
            ("sms_spam", "v1", "cpu")
        );
        assert_eq!(
            (a.device_seconds, a.tokens, a.predictions, a.cost),
            (1.5, 300, 10, 0.25)
        );
        assert_eq!(rows["acme"][1].model_version, "v|2");
        let merged = merge_ledgers(vec![rows.clone(), rows]);
        assert_eq!(merged["acme"][0].predictions, 20);
        assert_eq!(merged["beta"][0].predictions, 8);
        let idle = parse_idle(&[
            vec![f("w-0|cpu|idle_seconds", "30"), f("w-0|cpu|cost", "0.01")],
            vec![f("w-0|cpu|idle_seconds", "10")],
        ]);
        assert_eq!(
            idle,
            vec![IdleCost {
                worker: "w-0".into(),
                device_kind: "cpu".into(),
                idle_seconds: 40.0,
                cost: 0.01
            }]
        );
    }

    #[test]
    fn idle_is_shared_by_direct_cost() {
        let direct: BTreeMap<String, f64> = [
            ("acme".to_string(), 3.0),
            ("beta".to_string(), 1.0),
            ("zero".to_string(), 0.0),
        ]
        .into();
        let s = share_idle(&direct, 2.0);
        assert_eq!(s["acme"], 1.5);
        assert_eq!(s["beta"], 0.5);
        assert_eq!(s["zero"], 0.0);
        assert!(share_idle(&BTreeMap::new(), 2.0).is_empty());
        assert_eq!(cost_per_1k(0.5, 2000), Some(0.25));
        assert_eq!(cost_per_1k(0.5, 0), None);
    }

    #[test]
    fn budget_spend_and_thresholds() {
        let f = |k: &str, v: &str| (k.to_string(), v.to_string());
        let t = PeriodTotals::parse(&[
            f("direct|acme", "6"),
            f("direct|beta", "2"),
            f("direct", "8"),
            f("idle", "4"),
            f("rows|acme", "10"),
        ]);
        assert_eq!(t.spent("acme"), 9.0, "6 direct + 3 of the idle 4");
        assert_eq!(t.spent(ALL_TENANTS), 12.0);
        assert_eq!(t.spent("nobody"), 0.0);
        assert_eq!(t.with_idle_share(2.0), 3.0);
        assert_eq!(crossed(0.0, 10.0), vec![]);
        assert_eq!(crossed(7.9, 10.0), vec![]);
        assert_eq!(crossed(8.0, 10.0), vec![BudgetEventKind::Warning]);
        assert_eq!(
            crossed(10.0, 10.0),
            vec![BudgetEventKind::Warning, BudgetEventKind::Exceeded]
        );
        assert_eq!(
            crossed(0.01, 0.0),
            vec![BudgetEventKind::Warning, BudgetEventKind::Exceeded],
            "a zero budget"
        );
    }

    #[test]
    fn burn_rate_over_the_window() {
        // 30 s buckets, 10-minute window, now at bucket 100's start + 1 s.
        let now = 100 * 30_000 + 1000;
        let buckets = vec![(100, 1.0), (90, 2.0), (81, 4.0), (80, 100.0)];
        // Buckets 81..=100 are in the window: 7 in 1/6 h.
        let r = burn_rate_per_hour(&buckets, 30_000, 600_000, now);
        assert!((r - 42.0).abs() < 1e-9, "{r}");
    }
}
