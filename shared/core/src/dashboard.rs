//! The monitor's `GET /v1/dashboard` answer. The monitor builds it
//! (`aifab-monitor`'s `dashboard::build`); the dashboard page and `aifab status` read it,
//! so the types live here, beside the other message types.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::messages::{Alert, AuditEvent};

/// `GET /v1/dashboard`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Dashboard {
    pub at_ms: i64,
    pub window_s: f64,
    pub throughput: Throughput,
    pub latency_ms: Latency,
    pub history: Vec<Point>,
    pub lag: Vec<LagRow>,
    pub services: Vec<ServiceRow>,
    pub tenants: Vec<TenantRow>,
    pub models: Vec<ModelRow>,
    pub alerts_firing: Vec<Alert>,
    pub sources: Sources,
    /// The latest state changes from the audit log, oldest first.
    #[serde(default)]
    pub changes: Vec<AuditEvent>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Throughput {
    /// Predictions in the window.
    pub predictions: u64,
    pub per_second: f64,
    pub errors: u64,
    pub error_rate: f64,
    pub dead_letters_per_s: f64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Latency {
    pub p50: Option<f64>,
    pub p90: Option<f64>,
    pub p99: Option<f64>,
    pub max: Option<f64>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Point {
    pub at_ms: i64,
    pub per_second: f64,
    pub p50_ms: Option<f64>,
    pub p99_ms: Option<f64>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LagRow {
    pub group: String,
    pub topic: String,
    pub total_lag: i64,
    pub lag_rate_per_s: f64,
    pub partitions: usize,
    pub at_ms: i64,
    /// Total lag of the last readings, oldest first.
    pub history: Vec<i64>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DecisionRow {
    pub at_ms: i64,
    pub current_replicas: u32,
    pub desired_replicas: u32,
    pub reason: String,
    pub detail: String,
    pub total_lag: i64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ServiceRow {
    pub service: String,
    /// From the actuator's latest replica report, else the latest decision's current count.
    pub replicas: Option<u32>,
    pub actuator: Option<String>,
    pub replicas_at_ms: Option<i64>,
    pub desired_replicas: Option<u32>,
    pub reason: Option<String>,
    pub detail: Option<String>,
    pub decided_at_ms: Option<i64>,
    /// Newest first.
    pub decisions: Vec<DecisionRow>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TenantRow {
    pub tenant: String,
    /// The budget period (`YYYY-MM-DD`, `YYYY-MM`), or the cost report's period.
    pub period: String,
    pub spent: f64,
    pub budget: Option<f64>,
    pub remaining: Option<f64>,
    pub used_ratio: Option<f64>,
    pub burn_rate_per_hour: f64,
    pub currency: String,
    /// `ok`, `warning` (≥ 80% used), `exceeded` (≥ 100%), `no_budget`.
    pub state: String,
    /// Predictions charged in the cost report's period, when the report has the tenant.
    pub predictions: Option<u64>,
    pub cost_per_1k_predictions: Option<f64>,
    /// `nats` (a budget report) or `costs` (the cost accountant's report only).
    pub source: String,
    pub at_ms: Option<i64>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelRow {
    pub task: String,
    pub version: String,
    /// `production`, `candidate`, ...
    pub aliases: Vec<String>,
    /// For the candidate: `off`, `canary 10%`, `shadow`.
    pub rollout: Option<String>,
    pub accuracy: Option<f64>,
    pub macro_f1: Option<f64>,
    pub metrics: BTreeMap<String, f64>,
    pub train_examples: Option<usize>,
    pub eval_examples: Option<usize>,
    pub created_at_ms: Option<i64>,
    /// False for a version seen only in predictions.
    pub registered: bool,
    /// This version's predictions in the monitor's window.
    pub live: Option<WindowStats>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SourceStatus {
    pub ok: bool,
    pub error: Option<String>,
    pub fetched_at_ms: Option<i64>,
    pub from: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Sources {
    pub costs: SourceStatus,
    pub registry: SourceStatus,
    /// The audit topic the recent changes come from (absent from older monitors).
    #[serde(default)]
    pub audit: Option<SourceStatus>,
}

/// A window's numbers for one key.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WindowStats {
    pub count: u64,
    pub per_second: f64,
    pub errors: u64,
    pub error_rate: f64,
    pub p50_ms: Option<f64>,
    pub p90_ms: Option<f64>,
    pub p99_ms: Option<f64>,
    pub max_ms: Option<f64>,
}
