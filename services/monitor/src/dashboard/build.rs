//! The pure function from what was collected to `GET /v1/dashboard`, one part (lag,
//! services, tenants, models) at a time.

use std::collections::{BTreeMap, BTreeSet};

use aifab_core::messages::ScaleDecision;
use aifab_core::registry::{Rollout, CANDIDATE};

use super::collected::{Collected, CostsSnapshot, TaskModels};
use super::{
    Dashboard, DecisionRow, LagRow, Latency, ModelRow, ServiceRow, Sources, TenantRow, Throughput,
    WindowStats, WARNING_RATIO,
};
use crate::stats::{model_key, StatsReport};

/// Limits for [`build`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Limits {
    /// Budget reports and replica reports older than this are dropped.
    pub max_age_ms: i64,
    /// Versions shown per task (newest; aliased ones always).
    pub versions_per_task: usize,
}

/// Where a tenant's spend stands against its budget (`TenantRow::state` on the wire).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BudgetState {
    Ok,
    /// At or over [`WARNING_RATIO`] of the budget.
    Warning,
    Exceeded,
    /// No budget is set.
    NoBudget,
}

impl BudgetState {
    pub fn as_str(self) -> &'static str {
        match self {
            BudgetState::Ok => "ok",
            BudgetState::Warning => "warning",
            BudgetState::Exceeded => "exceeded",
            BudgetState::NoBudget => "no_budget",
        }
    }
}

/// A tenant's spend against its budget.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BudgetStanding {
    /// Spend over budget (none without a positive budget).
    pub used_ratio: Option<f64>,
    pub state: BudgetState,
}

/// Where `spent` stands against `budget`.
pub fn standing(spent: f64, budget: Option<f64>) -> BudgetStanding {
    let (used_ratio, state) = match budget {
        None => (None, BudgetState::NoBudget),
        Some(b) if b <= 0.0 => (
            None,
            if spent > 0.0 {
                BudgetState::Exceeded
            } else {
                BudgetState::Ok
            },
        ),
        Some(b) => {
            let r = spent / b;
            let s = if r >= 1.0 {
                BudgetState::Exceeded
            } else if r >= WARNING_RATIO {
                BudgetState::Warning
            } else {
                BudgetState::Ok
            };
            (Some(r), s)
        }
    };
    BudgetStanding { used_ratio, state }
}

/// Where a tenant row's numbers come from (`TenantRow::source` on the wire).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum TenantSource {
    /// A budget report on NATS.
    Nats,
    /// The cost accountant's `GET /v1/costs`.
    Costs,
}

impl TenantSource {
    fn as_str(self) -> &'static str {
        match self {
            TenantSource::Nats => "nats",
            TenantSource::Costs => "costs",
        }
    }
}

fn rollout_text(r: &Rollout) -> String {
    match r {
        Rollout::Off => "off".into(),
        Rollout::Canary { share } => format!("canary {}%", (share * 1000.0).round() / 10.0),
        Rollout::Shadow => "shadow".into(),
    }
}

/// The dashboard at `now_ms` from what was collected. Pure.
pub fn build(c: &Collected, now_ms: i64, limits: Limits) -> Dashboard {
    let s = &c.stats;
    let o = s.overall.as_ref();
    let fresh = |at: i64| now_ms - at <= limits.max_age_ms;
    Dashboard {
        at_ms: now_ms,
        window_s: s.window_s,
        throughput: Throughput {
            predictions: o.map(|s| s.count).unwrap_or(0),
            per_second: o.map(|s| s.per_second).unwrap_or(0.0),
            errors: o.map(|s| s.errors).unwrap_or(0),
            error_rate: o.map(|s| s.error_rate).unwrap_or(0.0),
            dead_letters_per_s: s.dead_letters_per_s,
        },
        latency_ms: Latency {
            p50: o.and_then(|s| s.p50_ms),
            p90: o.and_then(|s| s.p90_ms),
            p99: o.and_then(|s| s.p99_ms),
            max: o.and_then(|s| s.max_ms),
        },
        history: c.history.iter().cloned().collect(),
        lag: lag_rows(c),
        services: service_rows(c, &fresh),
        tenants: tenant_rows(c, &fresh),
        models: model_rows(c, limits),
        alerts_firing: s.alerts_firing.clone(),
        sources: Sources {
            costs: c.costs.status(),
            registry: c.registry.status(),
            audit: Some(c.audit.status()),
        },
        changes: c.changes.iter().cloned().collect(),
    }
}

/// One row per (group, topic), in that order, with its recent history.
fn lag_rows(c: &Collected) -> Vec<LagRow> {
    let mut lag: Vec<LagRow> = c
        .stats
        .lag
        .iter()
        .map(|r| LagRow {
            group: r.group.clone(),
            topic: r.topic.clone(),
            total_lag: r.total_lag,
            lag_rate_per_s: r.lag_rate_per_s,
            partitions: r.partitions.len(),
            at_ms: r.at_ms,
            history: c
                .lag_history
                .get(&(r.group.clone(), r.topic.clone()))
                .map(|h| h.iter().copied().collect())
                .unwrap_or_default(),
        })
        .collect();
    lag.sort_by(|a, b| (&a.group, &a.topic).cmp(&(&b.group, &b.topic)));
    lag
}

/// One row per scaled service with a fresh replica report or decision; newest decision
/// first.
fn service_rows(c: &Collected, fresh: &dyn Fn(i64) -> bool) -> Vec<ServiceRow> {
    let names: BTreeSet<&String> = c.decisions.keys().chain(c.replicas.keys()).collect();
    names
        .into_iter()
        .filter_map(|name| {
            let rep = c.replicas.get(name).filter(|r| fresh(r.at_ms));
            let decisions: Vec<&ScaleDecision> = c
                .decisions
                .get(name)
                .map(|d| d.iter().rev().filter(|d| fresh(d.at_ms)).collect())
                .unwrap_or_default();
            if rep.is_none() && decisions.is_empty() {
                return None;
            }
            let last = decisions.first();
            Some(ServiceRow {
                service: name.clone(),
                replicas: rep.map(|r| r.replicas).or(last.map(|d| d.current_replicas)),
                actuator: rep.map(|r| r.actuator.clone()),
                replicas_at_ms: rep.map(|r| r.at_ms),
                desired_replicas: last.map(|d| d.desired_replicas),
                reason: last.map(|d| d.reason.clone()),
                detail: last.map(|d| d.detail.clone()),
                decided_at_ms: last.map(|d| d.at_ms),
                decisions: decisions
                    .iter()
                    .map(|d| DecisionRow {
                        at_ms: d.at_ms,
                        current_replicas: d.current_replicas,
                        desired_replicas: d.desired_replicas,
                        reason: d.reason.clone(),
                        detail: d.detail.clone(),
                        total_lag: d.inputs.total_lag,
                    })
                    .collect(),
            })
        })
        .collect()
}

/// Tenants: fresh budget reports first; the cost report fills in the rest.
fn tenant_rows(c: &Collected, fresh: &dyn Fn(i64) -> bool) -> Vec<TenantRow> {
    let costs: Option<&CostsSnapshot> = c.costs.value.as_ref();
    let cost_of = |t: &str| costs.and_then(|r| r.tenants.iter().find(|x| x.tenant == t));
    let mut tenants = Vec::new();
    let mut with_budget_report = BTreeSet::new();
    for ((tenant, period), e) in &c.budgets {
        if !fresh(e.at_ms) {
            continue;
        }
        with_budget_report.insert(tenant.clone());
        let st = standing(e.spent, Some(e.budget));
        let ct = cost_of(tenant).filter(|_| costs.is_some_and(|r| &r.period == period));
        tenants.push(TenantRow {
            tenant: tenant.clone(),
            period: period.clone(),
            spent: e.spent,
            budget: Some(e.budget),
            remaining: Some(e.budget - e.spent),
            used_ratio: st.used_ratio,
            burn_rate_per_hour: e.burn_rate_per_hour,
            currency: e.currency.clone(),
            state: st.state.as_str().to_string(),
            predictions: ct.map(|t| t.predictions),
            cost_per_1k_predictions: ct.and_then(|t| t.cost_per_1k_predictions),
            source: TenantSource::Nats.as_str().to_string(),
            at_ms: Some(e.at_ms),
        });
    }
    if let Some(r) = costs {
        for t in &r.tenants {
            if with_budget_report.contains(&t.tenant) {
                continue;
            }
            let st = standing(t.total_cost, t.budget);
            tenants.push(TenantRow {
                tenant: t.tenant.clone(),
                period: r.period.clone(),
                spent: t.total_cost,
                budget: t.budget,
                remaining: t.remaining.or(t.budget.map(|b| b - t.total_cost)),
                used_ratio: t.budget_used.or(st.used_ratio),
                burn_rate_per_hour: t.burn_rate_per_hour,
                currency: r.currency.clone(),
                state: st.state.as_str().to_string(),
                predictions: Some(t.predictions),
                cost_per_1k_predictions: t.cost_per_1k_predictions,
                source: TenantSource::Costs.as_str().to_string(),
                at_ms: c.costs.fetched_at_ms,
            });
        }
    }
    tenants.sort_by(|a, b| (&a.tenant, &a.period).cmp(&(&b.tenant, &b.period)));
    tenants
}

/// Models: registry versions with their evaluation metrics and live window stats, then
/// versions seen only in predictions. Tasks in name order; within a task newest
/// registered first, then unregistered.
fn model_rows(c: &Collected, limits: Limits) -> Vec<ModelRow> {
    let s = &c.stats;
    let mut models = Vec::new();
    let mut registered = BTreeSet::new();
    for tm in c.registry.value.iter().flatten() {
        let mut rows = registered_rows(tm, s, limits);
        for r in &rows {
            registered.insert(model_key(&r.task, &r.version));
        }
        rows.reverse(); // newest first
        models.extend(rows);
    }
    for (key, st) in &s.models {
        if registered.contains(key) {
            continue;
        }
        models.push(unregistered_row(key, st));
    }
    models.sort_by(|a, b| a.task.cmp(&b.task).then(b.registered.cmp(&a.registered)));
    models
}

/// A task's shown versions (the newest, and aliased ones), oldest first.
fn registered_rows(tm: &TaskModels, s: &StatsReport, limits: Limits) -> Vec<ModelRow> {
    let aliased: BTreeSet<&String> = tm.aliases.values().collect();
    let n = tm.records.len();
    tm.records
        .iter()
        .enumerate()
        .filter(|(i, r)| *i + limits.versions_per_task.max(1) >= n || aliased.contains(&r.version))
        .map(|(_, r)| {
            let aliases: Vec<String> = tm
                .aliases
                .iter()
                .filter(|(_, v)| **v == r.version)
                .map(|(a, _)| a.clone())
                .collect();
            let is_candidate = aliases.iter().any(|a| a == CANDIDATE);
            ModelRow {
                task: r.task.clone(),
                version: r.version.clone(),
                rollout: is_candidate.then(|| rollout_text(&tm.rollout)),
                aliases,
                accuracy: r.metrics.get("accuracy").copied(),
                macro_f1: r.metrics.get("macro_f1").copied(),
                metrics: r.metrics.clone(),
                train_examples: Some(r.train_examples),
                eval_examples: Some(r.eval_examples),
                created_at_ms: Some(r.created_at_ms),
                registered: true,
                live: s.models.get(&model_key(&r.task, &r.version)).cloned(),
            }
        })
        .collect()
}

/// A version seen in predictions (keyed `task@version`) but not in the registry.
fn unregistered_row(key: &str, st: &WindowStats) -> ModelRow {
    let (task, version) = key.rsplit_once('@').unwrap_or((key, ""));
    ModelRow {
        task: task.to_string(),
        version: version.to_string(),
        aliases: Vec::new(),
        rollout: None,
        accuracy: None,
        macro_f1: None,
        metrics: BTreeMap::new(),
        train_examples: None,
        eval_examples: None,
        created_at_ms: None,
        registered: false,
        live: Some(st.clone()),
    }
}
