//! The dashboard's data model and JSON, from a collection with every kind of input.

use super::*;
use crate::stats::StatsReport;
use aifab_core::messages::{
    tag, BudgetEvent, BudgetEventKind, LagReading, PartitionLag, ReplicaReport, ScaleDecision,
    ScaleInputs,
};
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
        artifact_sha256: None,
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
        d.lag.is_empty() && d.services.is_empty() && d.tenants.is_empty() && d.models.is_empty()
    );
    assert!(PAGE.contains("/v1/dashboard"), "the page polls the JSON");
}

#[test]
fn budget_standings() {
    let s = |spent, budget| {
        let st = standing(spent, budget);
        (st.used_ratio, st.state.as_str())
    };
    assert_eq!(s(1.0, None), (None, "no_budget"));
    assert_eq!(s(0.0, Some(0.0)), (None, "ok"));
    assert_eq!(s(0.1, Some(0.0)), (None, "exceeded"));
    assert_eq!(s(5.0, Some(10.0)), (Some(0.5), "ok"));
    assert_eq!(s(8.0, Some(10.0)), (Some(0.8), "warning"));
    assert_eq!(s(10.0, Some(10.0)), (Some(1.0), "exceeded"));
}

#[test]
fn the_latest_changes_are_kept_in_the_log_s_order() {
    use aifab_core::messages::{Actor, AuditAction, AuditEvent};
    let mut c = Collected::new("http://costs");
    for i in 0..(CHANGES_KEPT as i64 + 5) {
        c.on_change(AuditEvent {
            schema: tag(),
            action: AuditAction::TrainRequested,
            service: "trainer".into(),
            actor: Actor::service("trainer"),
            tenant: None,
            task: Some("sms_spam".into()),
            version: None,
            detail: format!("change {i}"),
            at_ms: 1_000 + i,
        });
    }
    let d = build(&c, 10_000, LIMITS);
    assert_eq!(d.changes.len(), CHANGES_KEPT);
    assert_eq!(
        d.changes[0].detail, "change 5",
        "the oldest beyond the cap are dropped"
    );
    assert_eq!(
        d.changes.last().unwrap().detail,
        format!("change {}", CHANGES_KEPT + 4)
    );
}
