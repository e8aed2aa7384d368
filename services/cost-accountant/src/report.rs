//! `GET /v1/costs`: the report's JSON, which period a query asks for, and the report
//! assembled from what the store holds (the arithmetic is in [`crate::ledger`]). Pure.

use std::collections::BTreeMap;

use aifab_core::messages::BudgetPeriod;
use serde::{Deserialize, Serialize};

use crate::ledger::{self, cost_per_1k, IdleCost, ModelCost, ALL_TENANTS};
use crate::store::StoredBudget;

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

/// A report's totals over every tenant.
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
    /// `day` or `month`.
    pub period_kind: BudgetPeriod,
    pub currency: String,
    pub totals: Totals,
    pub tenants: Vec<TenantCost>,
    pub idle: Vec<IdleCost>,
}

/// The query of `GET /v1/costs`.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct CostQuery {
    /// `day` (default) or `month`.
    pub period: Option<String>,
    /// `YYYY-MM-DD` or `YYYY-MM` (default: now).
    pub date: Option<String>,
    pub tenant: Option<String>,
}

/// The period a report covers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReportPeriod {
    pub kind: BudgetPeriod,
    /// `YYYY-MM-DD` or `YYYY-MM`.
    pub period: String,
}

/// Spend per hour over the burn window: per tenant (direct cost only) and in all.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct BurnRates {
    pub tenants: BTreeMap<String, f64>,
    pub total: f64,
}

/// What a report is assembled from: what the store holds for one period.
#[derive(Debug, Clone, PartialEq)]
pub struct ReportInputs {
    pub period: ReportPeriod,
    pub currency: String,
    /// Ledger rows per tenant.
    pub ledger: BTreeMap<String, Vec<ModelCost>>,
    pub idle: Vec<IdleCost>,
    pub burn: BurnRates,
    pub budgets: Vec<StoredBudget>,
}

/// Assemble a report from what the store holds (the arithmetic is in [`ledger`]).
pub fn assemble(inputs: ReportInputs) -> CostReport {
    let ReportInputs {
        period,
        currency,
        ledger: ledger_rows,
        idle,
        burn,
        budgets,
    } = inputs;
    let kind = period.kind;
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
            .find(|b| b.tenant == tenant && b.period == kind)
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
                burn_rate_per_hour: burn.tenants.get(&tenant).copied().unwrap_or(0.0)
                    * (1.0 + idle_ratio),
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
        period: period.period,
        period_kind: kind,
        currency,
        totals: Totals {
            direct_cost: direct_total,
            idle_cost,
            total_cost,
            predictions,
            device_seconds: tenants.iter().map(|t| t.device_seconds).sum(),
            idle_seconds: idle.iter().map(|i| i.idle_seconds).sum(),
            tokens: tenants.iter().map(|t| t.tokens).sum(),
            cost_per_1k_predictions: cost_per_1k(total_cost, predictions),
            burn_rate_per_hour: burn.total,
            budget: all_budget,
            remaining: all_budget.map(|b| b - total_cost),
        },
        tenants,
        idle,
    }
}

/// Parse `?period=&date=` into a period kind and string.
pub fn resolve_period(q: &CostQuery, now_ms: i64) -> Result<ReportPeriod, String> {
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
    Ok(ReportPeriod { kind, period })
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
                period: BudgetPeriod::Day,
                amount: 10.0,
                currency: "USD".into(),
                set_at_ms: 0,
            },
            StoredBudget {
                tenant: "beta".into(),
                period: BudgetPeriod::Month,
                amount: 99.0,
                currency: "USD".into(),
                set_at_ms: 0,
            },
            StoredBudget {
                tenant: "all".into(),
                period: BudgetPeriod::Day,
                amount: 20.0,
                currency: "USD".into(),
                set_at_ms: 0,
            },
        ];
        let r = assemble(ReportInputs {
            period: ReportPeriod {
                kind: BudgetPeriod::Day,
                period: "2026-11-29".into(),
            },
            currency: "USD".into(),
            ledger: rows,
            idle,
            burn: BurnRates {
                tenants: burn,
                total: 5.0,
            },
            budgets,
        });
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
        let json = serde_json::to_value(&r).unwrap();
        assert_eq!(
            json["period_kind"], "day",
            "the wire name of the period kind"
        );
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
            ReportPeriod {
                kind: BudgetPeriod::Day,
                period: "2026-11-29".into()
            }
        );
        assert_eq!(
            resolve_period(&q(Some("month"), None), now).unwrap(),
            ReportPeriod {
                kind: BudgetPeriod::Month,
                period: "2026-11".into()
            }
        );
        assert_eq!(
            resolve_period(&q(Some("month"), Some("2026-10")), now)
                .unwrap()
                .period,
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
