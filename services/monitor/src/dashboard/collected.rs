//! What the monitor collects for the dashboard: its own window reports, lag readings,
//! the autoscaler's decisions and replica reports, budget reports, and the last answers
//! of the sources it fetches (the cost accountant's report, the model registry).

use std::collections::{BTreeMap, VecDeque};

use aifab_core::messages::{AuditEvent, BudgetEvent, LagReading, ReplicaReport, ScaleDecision};
use serde::{Deserialize, Serialize};

use super::Point;
use super::{SourceStatus, CHANGES_KEPT, DECISIONS_KEPT, HISTORY_POINTS, LAG_POINTS};
use crate::stats::StatsReport;

/// A source the monitor fetches (the cost accountant, the registry): the last good value
/// and whether the last attempt worked.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Source<T> {
    #[serde(skip)]
    pub value: Option<T>,
    pub ok: bool,
    /// The last attempt's error (the value, if any, is from an earlier attempt).
    pub error: Option<String>,
    /// When `value` was fetched.
    pub fetched_at_ms: Option<i64>,
    /// Where it comes from (a URL, `redis`), or why it is off.
    pub from: String,
}

impl<T> Source<T> {
    pub fn new(from: impl Into<String>) -> Self {
        Source {
            value: None,
            ok: false,
            error: None,
            fetched_at_ms: None,
            from: from.into(),
        }
    }

    pub fn update(&mut self, result: Result<T, String>, now_ms: i64) {
        match result {
            Ok(v) => {
                self.value = Some(v);
                self.ok = true;
                self.error = None;
                self.fetched_at_ms = Some(now_ms);
            }
            Err(e) => {
                self.ok = false;
                self.error = Some(e);
            }
        }
    }

    pub(super) fn status(&self) -> SourceStatus {
        SourceStatus {
            ok: self.ok,
            error: self.error.clone(),
            fetched_at_ms: self.fetched_at_ms,
            from: self.from.clone(),
        }
    }
}

/// The part of the cost accountant's `GET /v1/costs` the dashboard uses (services do not
/// share crates: this is read from the JSON, leniently).
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(default)]
pub struct CostsSnapshot {
    pub period: String,
    pub period_kind: String,
    pub currency: String,
    pub tenants: Vec<CostTenant>,
}

#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(default)]
pub struct CostTenant {
    pub tenant: String,
    pub total_cost: f64,
    pub predictions: u64,
    pub cost_per_1k_predictions: Option<f64>,
    pub burn_rate_per_hour: f64,
    pub budget: Option<f64>,
    pub remaining: Option<f64>,
    pub budget_used: Option<f64>,
}

/// One task's registry entries.
#[derive(Debug, Clone, PartialEq)]
pub struct TaskModels {
    pub task: String,
    /// Oldest first.
    pub records: Vec<aifab_core::registry::ModelRecord>,
    /// alias → version.
    pub aliases: BTreeMap<String, String>,
    pub rollout: aifab_core::registry::Rollout,
}

/// Everything collected for the dashboard. Updated by the monitor's loops; [`super::build`] turns
/// it into the JSON.
#[derive(Debug, Clone)]
pub struct Collected {
    pub stats: StatsReport,
    pub history: VecDeque<Point>,
    pub lag_history: BTreeMap<(String, String), VecDeque<i64>>,
    pub decisions: BTreeMap<String, VecDeque<ScaleDecision>>,
    pub replicas: BTreeMap<String, ReplicaReport>,
    /// Latest report per (tenant, period).
    pub budgets: BTreeMap<(String, String), BudgetEvent>,
    pub costs: Source<CostsSnapshot>,
    pub registry: Source<Vec<TaskModels>>,
    /// The latest records of the audit log, in the log's order.
    pub changes: VecDeque<AuditEvent>,
    /// Whether the audit log can be read (no changes and an unreadable log differ).
    pub audit: Source<()>,
}

impl Collected {
    pub fn new(costs_from: impl Into<String>) -> Self {
        Collected {
            stats: StatsReport::default(),
            history: VecDeque::new(),
            lag_history: BTreeMap::new(),
            decisions: BTreeMap::new(),
            replicas: BTreeMap::new(),
            budgets: BTreeMap::new(),
            costs: Source::new(costs_from),
            registry: Source::new("redis"),
            changes: VecDeque::new(),
            audit: Source::new("kafka"),
        }
    }

    /// A new window report (every evaluation interval).
    pub fn on_report(&mut self, report: StatsReport, now_ms: i64) {
        let o = report.overall.as_ref();
        push_capped(
            &mut self.history,
            Point {
                at_ms: now_ms,
                per_second: o.map(|s| s.per_second).unwrap_or(0.0),
                p50_ms: o.and_then(|s| s.p50_ms),
                p99_ms: o.and_then(|s| s.p99_ms),
            },
            HISTORY_POINTS,
        );
        self.stats = report;
    }

    pub fn on_lag(&mut self, r: &LagReading) {
        let h = self
            .lag_history
            .entry((r.group.clone(), r.topic.clone()))
            .or_default();
        push_capped(h, r.total_lag, LAG_POINTS);
    }

    pub fn on_decision(&mut self, d: ScaleDecision) {
        push_capped(
            self.decisions.entry(d.service.clone()).or_default(),
            d,
            DECISIONS_KEPT,
        );
    }

    pub fn on_replicas(&mut self, r: ReplicaReport) {
        let newer = self
            .replicas
            .get(&r.service)
            .is_none_or(|old| old.at_ms <= r.at_ms);
        if newer {
            self.replicas.insert(r.service.clone(), r);
        }
    }

    /// A record read from the audit log.
    pub fn on_change(&mut self, e: AuditEvent) {
        push_capped(&mut self.changes, e, CHANGES_KEPT);
    }

    /// Any budget report (status, warning, exceeded): the latest per tenant and period wins.
    pub fn on_budget(&mut self, e: BudgetEvent) {
        let key = (e.tenant.clone(), e.period.clone());
        let newer = self
            .budgets
            .get(&key)
            .is_none_or(|old| old.at_ms <= e.at_ms);
        if newer {
            self.budgets.insert(key, e);
        }
    }
}

fn push_capped<T>(q: &mut VecDeque<T>, v: T, cap: usize) {
    q.push_back(v);
    while q.len() > cap {
        q.pop_front();
    }
}
