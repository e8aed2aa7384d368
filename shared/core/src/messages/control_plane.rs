//! Control-plane messages: the NATS events that steer the system (model versions, lag,
//! alerts, budgets, scaling, training, replicas).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::SchemaTag;

/// What happened to a model version.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ModelEventKind {
    Published,
    Promoted,
    RolledBack,
}

/// `aifab.model.published` / `.promoted` / `.rolled_back`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelEvent {
    pub schema: SchemaTag<ModelEvent>,
    pub kind: ModelEventKind,
    pub task: String,
    pub version: String,
    /// Where the artifact lives (`file:///...`, `s3://...`).
    pub artifact_uri: String,
    /// The alias this event moved, when it moved one (`production`, `candidate`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub alias: Option<String>,
    /// Headline evaluation metrics (accuracy, macro_f1, ...).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub metrics: BTreeMap<String, f64>,
    pub at_ms: i64,
}
message!(ModelEvent, "model.event/v1");

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PartitionLag {
    pub partition: i32,
    /// Committed offset of the group, or absent when it never committed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub committed: Option<i64>,
    pub high_watermark: i64,
    pub lag: i64,
}

/// `aifab.lag.<group>`: a consumer group's lag on one topic.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LagReading {
    pub schema: SchemaTag<LagReading>,
    pub group: String,
    pub topic: String,
    pub partitions: Vec<PartitionLag>,
    pub total_lag: i64,
    /// Change of `total_lag` per second since the previous reading (negative: draining).
    pub lag_rate_per_s: f64,
    pub at_ms: i64,
}
message!(LagReading, "lag.reading/v1");

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AlertState {
    Firing,
    Resolved,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Severity {
    Info,
    Warning,
    Critical,
}

/// `aifab.alerts.<rule>`: an SLO rule started or stopped firing.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Alert {
    pub schema: SchemaTag<Alert>,
    pub rule: String,
    pub state: AlertState,
    pub severity: Severity,
    pub value: f64,
    pub threshold: f64,
    pub message: String,
    pub at_ms: i64,
}
message!(Alert, "alert/v1");

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BudgetEventKind {
    /// Spend crossed the warning fraction (80%) of the budget.
    Warning,
    /// Spend reached the budget.
    Exceeded,
    /// Where a budget stands now (not a threshold crossing): published periodically on
    /// `aifab.budget.status` for every budget, so the autoscaler can project spend to the
    /// period's end before any threshold is crossed.
    Status,
}

/// `aifab.budget.warning` / `aifab.budget.exceeded`: at most once per tenant per period;
/// `aifab.budget.status`: periodically, for every budget set.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BudgetEvent {
    pub schema: SchemaTag<BudgetEvent>,
    pub kind: BudgetEventKind,
    pub tenant: String,
    /// The budget period, e.g. `2026-11` or `2026-11-29`.
    pub period: String,
    pub budget: f64,
    pub spent: f64,
    /// Spend per hour over the recent window.
    pub burn_rate_per_hour: f64,
    pub currency: String,
    pub at_ms: i64,
}
message!(BudgetEvent, "budget.event/v1");

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BudgetPeriod {
    Day,
    Month,
}

/// `aifab.budget.set`: set a tenant's budget for a period kind.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BudgetSet {
    pub schema: SchemaTag<BudgetSet>,
    pub tenant: String,
    pub period: BudgetPeriod,
    pub amount: f64,
    pub currency: String,
    pub at_ms: i64,
}
message!(BudgetSet, "budget.set/v1");

/// The inputs a scale decision was made from, published with it for audit.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScaleInputs {
    pub total_lag: i64,
    pub lag_rate_per_s: f64,
    pub partitions: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub burn_rate_per_hour: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub remaining_budget: Option<f64>,
}

/// `aifab.scale.<service>`: the autoscaler's decision; an actuator applies it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScaleDecision {
    pub schema: SchemaTag<ScaleDecision>,
    pub service: String,
    pub current_replicas: u32,
    pub desired_replicas: u32,
    /// Machine-readable: `lag`, `stabilizing`, `cooldown`, `budget_cap`, `max_replicas`, ...
    pub reason: String,
    /// Human-readable explanation.
    pub detail: String,
    pub inputs: ScaleInputs,
    pub at_ms: i64,
}
message!(ScaleDecision, "scale.decision/v1");

/// `aifab.train.request`: train a task now.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrainRequest {
    pub schema: SchemaTag<TrainRequest>,
    pub task: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub requested_by: Option<String>,
    pub at_ms: i64,
}
message!(TrainRequest, "train.request/v1");

/// Where a training job is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TrainStage {
    Embedding,
    Training,
    Evaluating,
    Done,
    Failed,
}

/// `aifab.train.progress`: a training job's progress, for progress bars and dashboards.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrainProgress {
    pub schema: SchemaTag<TrainProgress>,
    pub task: String,
    pub stage: TrainStage,
    /// Units done and total in this stage (texts embedded, epochs run).
    pub done: u64,
    pub total: u64,
    /// Validation loss of the last epoch (training stage).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub validation_loss: Option<f64>,
    /// The version registered (done stage) or the error (failed stage).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
    pub at_ms: i64,
}
message!(TrainProgress, "train.progress/v1");

/// `aifab.replicas.<service>`: how many replicas an actuator runs now.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReplicaReport {
    pub schema: SchemaTag<ReplicaReport>,
    pub service: String,
    pub replicas: u32,
    /// `local`, `docker`, `kubernetes`.
    pub actuator: String,
    pub at_ms: i64,
}
message!(ReplicaReport, "replicas.report/v1");
