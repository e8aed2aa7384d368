//! The dashboard: what the monitor collects for it (its own window, lag readings, the
//! autoscaler's decisions and replica reports, budget reports, the cost accountant's
//! report and the model registry) and the pure function from that to `GET /v1/dashboard`.
//! The page (`dashboard.html`, served at `GET /`) polls that JSON and draws it.

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use aifab_core::messages::{BudgetEvent, LagReading, ReplicaReport, ScaleDecision};
use serde::{Deserialize, Serialize};

use crate::StatsReport;

/// The page, embedded in the binary.
pub const PAGE: &str = include_str!("dashboard.html");

/// Points of throughput/latency history kept (one per evaluation interval).
pub const HISTORY_POINTS: usize = 120;
/// Lag readings kept per (group, topic).
pub const LAG_POINTS: usize = 60;
/// Scale decisions kept per service.
pub const DECISIONS_KEPT: usize = 20;
/// Budget use at which a tenant shows as `warning` (the cost accountant warns at 80%).
pub const WARNING_RATIO: f64 = 0.8;

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

    fn status(&self) -> SourceStatus {
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

/// Everything collected for the dashboard. Updated by the monitor's loops; [`build`] turns
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

// The JSON types of `GET /v1/dashboard` are in aifab_core::dashboard.
pub use aifab_core::dashboard::*;

/// Limits for [`build`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Limits {
    /// Budget reports and replica reports older than this are dropped.
    pub max_age_ms: i64,
    /// Versions shown per task (newest; aliased ones always).
    pub versions_per_task: usize,
}

fn rollout_text(r: &aifab_core::registry::Rollout) -> String {
    use aifab_core::registry::Rollout;
    match r {
        Rollout::Off => "off".into(),
        Rollout::Canary { share } => format!("canary {}%", (share * 1000.0).round() / 10.0),
        Rollout::Shadow => "shadow".into(),
    }
}

fn state_of(spent: f64, budget: Option<f64>) -> (Option<f64>, String) {
    match budget {
        None => (None, "no_budget".into()),
        Some(b) if b <= 0.0 => (None, if spent > 0.0 { "exceeded" } else { "ok" }.into()),
        Some(b) => {
            let r = spent / b;
            let s = if r >= 1.0 {
                "exceeded"
            } else if r >= WARNING_RATIO {
                "warning"
            } else {
                "ok"
            };
            (Some(r), s.into())
        }
    }
}

/// The dashboard at `now_ms` from what was collected. Pure.
pub fn build(c: &Collected, now_ms: i64, limits: Limits) -> Dashboard {
    let s = &c.stats;
    let o = s.overall.as_ref();
    let throughput = Throughput {
        predictions: o.map(|s| s.count).unwrap_or(0),
        per_second: o.map(|s| s.per_second).unwrap_or(0.0),
        errors: o.map(|s| s.errors).unwrap_or(0),
        error_rate: o.map(|s| s.error_rate).unwrap_or(0.0),
        dead_letters_per_s: s.dead_letters_per_s,
    };
    let latency_ms = Latency {
        p50: o.and_then(|s| s.p50_ms),
        p90: o.and_then(|s| s.p90_ms),
        p99: o.and_then(|s| s.p99_ms),
        max: o.and_then(|s| s.max_ms),
    };

    let mut lag: Vec<LagRow> = s
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

    let fresh = |at: i64| now_ms - at <= limits.max_age_ms;
    let names: BTreeSet<&String> = c.decisions.keys().chain(c.replicas.keys()).collect();
    let services = names
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
        .collect();

    // Tenants: budget reports first; the cost report fills in the rest.
    let costs = c.costs.value.as_ref();
    let cost_of = |t: &str| costs.and_then(|r| r.tenants.iter().find(|x| x.tenant == t));
    let mut tenants = Vec::new();
    let mut with_budget_report = BTreeSet::new();
    for ((tenant, period), e) in &c.budgets {
        if !fresh(e.at_ms) {
            continue;
        }
        with_budget_report.insert(tenant.clone());
        let (used, state) = state_of(e.spent, Some(e.budget));
        let ct = cost_of(tenant).filter(|_| costs.is_some_and(|r| &r.period == period));
        tenants.push(TenantRow {
            tenant: tenant.clone(),
            period: period.clone(),
            spent: e.spent,
            budget: Some(e.budget),
            remaining: Some(e.budget - e.spent),
            used_ratio: used,
            burn_rate_per_hour: e.burn_rate_per_hour,
            currency: e.currency.clone(),
            state,
            predictions: ct.map(|t| t.predictions),
            cost_per_1k_predictions: ct.and_then(|t| t.cost_per_1k_predictions),
            source: "nats".into(),
            at_ms: Some(e.at_ms),
        });
    }
    if let Some(r) = costs {
        for t in &r.tenants {
            if with_budget_report.contains(&t.tenant) {
                continue;
            }
            let (used, state) = state_of(t.total_cost, t.budget);
            tenants.push(TenantRow {
                tenant: t.tenant.clone(),
                period: r.period.clone(),
                spent: t.total_cost,
                budget: t.budget,
                remaining: t.remaining.or(t.budget.map(|b| b - t.total_cost)),
                used_ratio: t.budget_used.or(used),
                burn_rate_per_hour: t.burn_rate_per_hour,
                currency: r.currency.clone(),
                state,
                predictions: Some(t.predictions),
                cost_per_1k_predictions: t.cost_per_1k_predictions,
                source: "costs".into(),
                at_ms: c.costs.fetched_at_ms,
            });
        }
    }
    tenants.sort_by(|a, b| (&a.tenant, &a.period).cmp(&(&b.tenant, &b.period)));

    // Models: registry versions with their evaluation metrics and live window stats.
    let mut models = Vec::new();
    let mut registered = BTreeSet::new();
    for tm in c.registry.value.iter().flatten() {
        let aliased: BTreeSet<&String> = tm.aliases.values().collect();
        let n = tm.records.len();
        let mut rows: Vec<ModelRow> = tm
            .records
            .iter()
            .enumerate()
            .filter(|(i, r)| {
                *i + limits.versions_per_task.max(1) >= n || aliased.contains(&r.version)
            })
            .map(|(_, r)| {
                let aliases: Vec<String> = tm
                    .aliases
                    .iter()
                    .filter(|(_, v)| **v == r.version)
                    .map(|(a, _)| a.clone())
                    .collect();
                let is_candidate = aliases.iter().any(|a| a == aifab_core::registry::CANDIDATE);
                registered.insert(crate::model_key(&r.task, &r.version));
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
                    live: s
                        .models
                        .get(&crate::model_key(&r.task, &r.version))
                        .cloned(),
                }
            })
            .collect();
        rows.reverse(); // newest first
        models.extend(rows);
    }
    for (key, st) in &s.models {
        if registered.contains(key) {
            continue;
        }
        let (task, version) = key.rsplit_once('@').unwrap_or((key.as_str(), ""));
        models.push(ModelRow {
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
        });
    }
    // Tasks in name order; within a task newest registered first, then unregistered.
    models.sort_by(|a, b| a.task.cmp(&b.task).then(b.registered.cmp(&a.registered)));

    Dashboard {
        at_ms: now_ms,
        window_s: s.window_s,
        throughput,
        latency_ms,
        history: c.history.iter().cloned().collect(),
        lag,
        services,
        tenants,
        models,
        alerts_firing: s.alerts_firing.clone(),
        sources: Sources {
            costs: c.costs.status(),
            registry: c.registry.status(),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use aifab_core::messages::{tag, BudgetEventKind, PartitionLag, ScaleInputs};
    use aifab_core::registry::{ModelRecord, Rollout};

    const LIMITS: Limits = Limits {
        max_age_ms: 60_000,
        versions_per_task: 2,
    };

    fn ws(count: u64, p99: f64) -> WindowStats {
        WindowStats {
            count,
            per_second: count as f64 / 60.0,
            errors: 1,
            error_rate: 1.0 / count as f64,
            p50_ms: Some(p99 / 2.0),
            p90_ms: Some(p99 * 0.9),
            p99_ms: Some(p99),
            max_ms: Some(p99 + 1.0),
        }
    }

    fn record(task: &str, v: &str, f1: f64, at: i64) -> ModelRecord {
        ModelRecord {
            task: task.into(),
            version: v.into(),
            artifact_uri: format!("file:///a/{task}/{v}"),
            encoder: "all-MiniLM-L6-v2".into(),
            encoder_sha256: "00".into(),
            labels: vec!["ham".into(), "spam".into()],
            metrics: [
                ("accuracy".to_string(), f1 + 0.01),
                ("macro_f1".to_string(), f1),
            ]
            .into(),
            train_examples: 800,
            eval_examples: 200,
            created_at_ms: at,
        }
    }

    fn budget(tenant: &str, period: &str, spent: f64, amount: f64, at: i64) -> BudgetEvent {
        BudgetEvent {
            schema: tag(),
            kind: BudgetEventKind::Status,
            tenant: tenant.into(),
            period: period.into(),
            budget: amount,
            spent,
            burn_rate_per_hour: 0.5,
            currency: "USD".into(),
            at_ms: at,
        }
    }

    fn decision(service: &str, current: u32, desired: u32, reason: &str, at: i64) -> ScaleDecision {
        ScaleDecision {
            schema: tag(),
            service: service.into(),
            current_replicas: current,
            desired_replicas: desired,
            reason: reason.into(),
            detail: format!("{reason}: {current} -> {desired}"),
            inputs: ScaleInputs {
                total_lag: 400,
                lag_rate_per_s: 10.0,
                partitions: 8,
                burn_rate_per_hour: None,
                remaining_budget: None,
            },
            at_ms: at,
        }
    }

    fn collected(now: i64) -> Collected {
        let mut c = Collected::new("http://costs");
        let lag = LagReading {
            schema: tag(),
            group: "aifab-inference-worker".into(),
            topic: "aifab.inference.requests".into(),
            partitions: vec![PartitionLag {
                partition: 0,
                committed: Some(5),
                high_watermark: 45,
                lag: 40,
            }],
            total_lag: 40,
            lag_rate_per_s: -2.0,
            at_ms: now - 100,
        };
        for l in [10, 20, 40] {
            c.on_lag(&LagReading {
                total_lag: l,
                ..lag.clone()
            });
        }
        let mut report = StatsReport {
            window_s: 60.0,
            overall: Some(ws(120, 80.0)),
            dead_letters_per_s: 0.25,
            lag: vec![lag],
            ..Default::default()
        };
        report.models.insert("spam@v3".into(), ws(100, 70.0));
        report.models.insert("spam@v9".into(), ws(20, 90.0));
        c.on_report(report, now);
        c.on_decision(decision("inference-worker", 1, 2, "lag", now - 2_000));
        c.on_decision(decision(
            "inference-worker",
            2,
            3,
            "budget_cap",
            now - 1_000,
        ));
        c.on_decision(decision("old-service", 1, 1, "steady", now - 3_600_000));
        c.on_replicas(ReplicaReport {
            schema: tag(),
            service: "inference-worker".into(),
            replicas: 3,
            actuator: "local".into(),
            at_ms: now - 500,
        });
        // An older report does not replace a newer one.
        c.on_replicas(ReplicaReport {
            schema: tag(),
            service: "inference-worker".into(),
            replicas: 1,
            actuator: "local".into(),
            at_ms: now - 9_000,
        });
        c.on_budget(budget("acme", "2026-11-29", 9.0, 10.0, now - 3_000));
        c.on_budget(budget("acme", "2026-11-29", 8.5, 10.0, now - 4_000)); // older: ignored
        c.on_budget(budget("beta", "2026-11", 1.0, 10.0, now - 1_000));
        c.on_budget(budget("gone", "2026-10", 1.0, 10.0, now - 3_600_000)); // stale
        c.costs.update(
            Ok(CostsSnapshot {
                period: "2026-11-29".into(),
                period_kind: "day".into(),
                currency: "USD".into(),
                tenants: vec![
                    CostTenant {
                        tenant: "acme".into(),
                        total_cost: 9.0,
                        predictions: 9000,
                        cost_per_1k_predictions: Some(1.0),
                        ..Default::default()
                    },
                    CostTenant {
                        tenant: "zeta".into(),
                        total_cost: 0.3,
                        predictions: 30,
                        budget: Some(0.2),
                        ..Default::default()
                    },
                ],
            }),
            now - 200,
        );
        c.registry.update(
            Ok(vec![TaskModels {
                task: "spam".into(),
                records: vec![
                    record("spam", "v1", 0.9, 1),
                    record("spam", "v2", 0.91, 2),
                    record("spam", "v3", 0.93, 3),
                    record("spam", "v4", 0.5, 4),
                ],
                aliases: [
                    ("production".to_string(), "v3".to_string()),
                    ("candidate".to_string(), "v4".to_string()),
                ]
                .into(),
                rollout: Rollout::Canary { share: 0.1 },
            }]),
            now - 300,
        );
        c
    }

    #[test]
    fn throughput_latency_and_lag_come_from_the_window() {
        let now = 10_000_000;
        let d = build(&collected(now), now, LIMITS);
        assert_eq!(d.throughput.predictions, 120);
        assert_eq!(d.throughput.errors, 1);
        assert_eq!(d.throughput.dead_letters_per_s, 0.25);
        assert_eq!(
            (d.latency_ms.p50, d.latency_ms.p99, d.latency_ms.max),
            (Some(40.0), Some(80.0), Some(81.0))
        );
        assert_eq!(d.history.len(), 1);
        assert_eq!(d.history[0].p99_ms, Some(80.0));
        assert_eq!(d.lag.len(), 1);
        assert_eq!(
            (
                d.lag[0].total_lag,
                d.lag[0].partitions,
                d.lag[0].lag_rate_per_s
            ),
            (40, 1, -2.0)
        );
        assert_eq!(d.lag[0].history, vec![10, 20, 40]);
    }

    #[test]
    fn services_show_replicas_and_the_newest_decision_first() {
        let now = 10_000_000;
        let d = build(&collected(now), now, LIMITS);
        assert_eq!(
            d.services.len(),
            1,
            "the hour-old decision is stale: {:?}",
            d.services
        );
        let s = &d.services[0];
        assert_eq!(
            (s.service.as_str(), s.replicas, s.actuator.as_deref()),
            ("inference-worker", Some(3), Some("local"))
        );
        assert_eq!(
            (s.desired_replicas, s.reason.as_deref()),
            (Some(3), Some("budget_cap"))
        );
        assert_eq!(
            s.decisions
                .iter()
                .map(|d| d.reason.as_str())
                .collect::<Vec<_>>(),
            vec!["budget_cap", "lag"]
        );
    }

    #[test]
    fn tenants_merge_budget_reports_and_the_cost_report() {
        let now = 10_000_000;
        let d = build(&collected(now), now, LIMITS);
        let names: Vec<(&str, &str, &str)> = d
            .tenants
            .iter()
            .map(|t| (t.tenant.as_str(), t.state.as_str(), t.source.as_str()))
            .collect();
        assert_eq!(
            names,
            vec![
                ("acme", "warning", "nats"),
                ("beta", "ok", "nats"),
                ("zeta", "exceeded", "costs")
            ]
        );
        let acme = &d.tenants[0];
        assert_eq!(
            (acme.spent, acme.budget, acme.remaining, acme.used_ratio),
            (9.0, Some(10.0), Some(1.0), Some(0.9))
        );
        assert_eq!(
            acme.predictions,
            Some(9000),
            "the cost report's period matches the budget's"
        );
        assert_eq!(
            d.tenants[1].predictions, None,
            "a month budget is not today's report"
        );
        let zeta = &d.tenants[2];
        assert_eq!(
            (zeta.spent, zeta.budget, zeta.period.as_str()),
            (0.3, Some(0.2), "2026-11-29")
        );
        assert!((zeta.used_ratio.unwrap() - 1.5).abs() < 1e-12);
        assert!(d.sources.costs.ok && d.sources.registry.ok);
    }

    #[test]
    fn models_show_metrics_aliases_rollout_and_live_stats() {
        let now = 10_000_000;
        let d = build(&collected(now), now, LIMITS);
        let versions: Vec<&str> = d.models.iter().map(|m| m.version.as_str()).collect();
        // Two newest (v4, v3; v3 is also production), v1 and v2 left out, then v9 seen
        // only in predictions.
        assert_eq!(versions, vec!["v4", "v3", "v9"]);
        let v3 = &d.models[1];
        assert_eq!(v3.aliases, vec!["production"]);
        assert_eq!(v3.macro_f1, Some(0.93));
        assert_eq!(v3.live.as_ref().map(|l| l.count), Some(100));
        assert_eq!(v3.rollout, None);
        let v4 = &d.models[0];
        assert_eq!(
            (v4.aliases.clone(), v4.rollout.as_deref()),
            (vec!["candidate".to_string()], Some("canary 10%"))
        );
        assert!(v4.live.is_none());
        assert!(!d.models[2].registered && d.models[2].live.as_ref().unwrap().count == 20);
    }

    #[test]
    fn a_failed_fetch_keeps_the_last_value_and_says_so() {
        let now = 10_000_000;
        let mut c = collected(now);
        c.costs.update(Err("connection refused".into()), now);
        let d = build(&c, now, LIMITS);
        assert!(!d.sources.costs.ok);
        assert_eq!(d.sources.costs.error.as_deref(), Some("connection refused"));
        assert_eq!(d.sources.costs.fetched_at_ms, Some(now - 200));
        assert!(d.tenants.iter().any(|t| t.tenant == "zeta"));
        let json = serde_json::to_value(&d).unwrap();
        assert_eq!(json["tenants"][0]["tenant"], "acme");
        assert_eq!(json["sources"]["costs"]["from"], "http://costs");
    }

    #[test]
    fn an_empty_monitor_has_an_empty_dashboard() {
        let d = build(&Collected::new("off"), 5, LIMITS);
        assert_eq!(d.throughput.predictions, 0);
        assert_eq!(d.latency_ms.p99, None);
        assert!(
            d.lag.is_empty()
                && d.services.is_empty()
                && d.tenants.is_empty()
                && d.models.is_empty()
        );
        assert!(PAGE.contains("/v1/dashboard"), "the page polls the JSON");
    }
}
