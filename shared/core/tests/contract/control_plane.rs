//! (b) Rust values of the control-plane messages (NATS events).

use std::collections::BTreeMap;

use aifab_core::messages::*;

use crate::round_trip::{check_type, T0};

#[test]
fn model_event() {
    let full = ModelEvent {
        schema: tag(),
        kind: ModelEventKind::RolledBack,
        task: "sms_spam".into(),
        version: "sms_spam-20251129-150000".into(),
        artifact_uri: "file:///var/lib/aifab/models/sms_spam/sms_spam-20251129-150000".into(),
        alias: Some("production".into()),
        metrics: [
            ("accuracy".to_string(), 0.981),
            ("macro_f1".to_string(), 0.957),
        ]
        .into_iter()
        .collect(),
        at_ms: T0,
    };
    let minimal = ModelEvent {
        kind: ModelEventKind::Published,
        alias: None,
        metrics: BTreeMap::new(),
        ..full.clone()
    };
    check_type(full, minimal);
}

#[test]
fn lag_reading() {
    let full = LagReading {
        schema: tag(),
        group: "aifab-inference-worker".into(),
        topic: "aifab.inference.requests".into(),
        partitions: vec![
            PartitionLag {
                partition: 0,
                committed: Some(10_400),
                high_watermark: 10_520,
                lag: 120,
            },
            PartitionLag {
                partition: 1,
                committed: None,
                high_watermark: 15,
                lag: 15,
            },
        ],
        total_lag: 135,
        lag_rate_per_s: -12.5,
        at_ms: T0,
    };
    let minimal = LagReading {
        partitions: vec![],
        total_lag: 0,
        lag_rate_per_s: 0.0,
        ..full.clone()
    };
    check_type(full, minimal);
}

#[test]
fn alert() {
    let full = Alert {
        schema: tag(),
        rule: "p99_latency".into(),
        state: AlertState::Firing,
        severity: Severity::Critical,
        value: 812.0,
        threshold: 500.0,
        message: "p99 latency 812 ms is above 500 ms".into(),
        at_ms: T0,
    };
    let minimal = Alert {
        state: AlertState::Resolved,
        severity: Severity::Info,
        value: 120.0,
        ..full.clone()
    };
    check_type(full, minimal);
}

#[test]
fn budget_event() {
    let full = BudgetEvent {
        schema: tag(),
        kind: BudgetEventKind::Exceeded,
        tenant: "acme".into(),
        period: "2025-11-29".into(),
        budget: 50.0,
        spent: 50.01,
        burn_rate_per_hour: 3.75,
        currency: "USD".into(),
        at_ms: T0,
    };
    let minimal = BudgetEvent {
        kind: BudgetEventKind::Warning,
        period: "2025-11".into(),
        ..full.clone()
    };
    check_type(full, minimal);
}

#[test]
fn budget_set() {
    let full = BudgetSet {
        schema: tag(),
        tenant: "acme".into(),
        period: BudgetPeriod::Day,
        amount: 50.0,
        currency: "EUR".into(),
        at_ms: T0,
    };
    let minimal = BudgetSet {
        period: BudgetPeriod::Month,
        amount: 0.0,
        ..full.clone()
    };
    check_type(full, minimal);
}

#[test]
fn scale_decision() {
    let full = ScaleDecision {
        schema: tag(),
        service: "inference-worker".into(),
        current_replicas: 2,
        desired_replicas: 4,
        reason: "lag".into(),
        detail: "lag 12000 records growing 150/s; 4 replicas drain it in 60 s".into(),
        inputs: ScaleInputs {
            total_lag: 12_000,
            lag_rate_per_s: 150.0,
            partitions: 8,
            burn_rate_per_hour: Some(3.75),
            remaining_budget: Some(-1.5),
        },
        at_ms: T0,
    };
    let minimal = ScaleDecision {
        reason: "cooldown".into(),
        inputs: ScaleInputs {
            total_lag: 0,
            lag_rate_per_s: 0.0,
            partitions: 8,
            burn_rate_per_hour: None,
            remaining_budget: None,
        },
        ..full.clone()
    };
    check_type(full, minimal);
}

#[test]
fn train_request() {
    let full = TrainRequest {
        schema: tag(),
        task: "sms_spam".into(),
        requested_by: Some("ops@acme".into()),
        at_ms: T0,
    };
    let minimal = TrainRequest {
        requested_by: None,
        ..full.clone()
    };
    check_type(full, minimal);
}

#[test]
fn train_progress() {
    let full = TrainProgress {
        schema: tag(),
        task: "sms_spam".into(),
        stage: TrainStage::Training,
        done: 12,
        total: 200,
        validation_loss: Some(0.08),
        detail: Some("v3".into()),
        at_ms: T0,
    };
    let minimal = TrainProgress {
        validation_loss: None,
        detail: None,
        stage: TrainStage::Embedding,
        ..full.clone()
    };
    check_type(full, minimal);
}

#[test]
fn replica_report() {
    let full = ReplicaReport {
        schema: tag(),
        service: "inference-worker".into(),
        replicas: 4,
        actuator: "kubernetes".into(),
        at_ms: T0,
    };
    let minimal = ReplicaReport {
        replicas: 0,
        actuator: "local".into(),
        ..full.clone()
    };
    check_type(full, minimal);
}

#[test]
fn audit_event() {
    let full = AuditEvent {
        schema: tag(),
        action: AuditAction::ModelRolledBack,
        service: "aifab".into(),
        actor: Actor {
            credential: Credential::Operator,
            address: Some("10.0.4.17:51234".into()),
            name: Some("ops@host-1".into()),
        },
        tenant: Some("acme".into()),
        task: Some("sms_spam".into()),
        version: Some("sms_spam-20251129-150000".into()),
        detail: "production back to sms_spam-20251129-150000".into(),
        at_ms: T0,
    };
    let minimal = AuditEvent {
        action: AuditAction::BudgetSet,
        actor: Actor {
            credential: Credential::Service,
            address: None,
            name: None,
        },
        tenant: None,
        task: None,
        version: None,
        ..full.clone()
    };
    check_type(full, minimal);
}
