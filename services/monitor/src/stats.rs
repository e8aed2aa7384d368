//! `GET /v1/stats`: the rolling window's report, and the window's gauges on `/metrics`.

use std::collections::BTreeMap;

use aifab_core::messages::{Alert, LagReading};
use serde::Serialize;

use crate::metric_names;
use crate::window::{Key, WindowStats};

/// `GET /v1/stats`.
#[derive(Debug, Clone, Default, Serialize)]
pub struct StatsReport {
    pub window_s: f64,
    pub overall: Option<WindowStats>,
    /// Keyed `task@version`.
    pub models: BTreeMap<String, WindowStats>,
    pub tenants: BTreeMap<String, WindowStats>,
    pub dead_letters_per_s: f64,
    pub lag: Vec<LagReading>,
    pub alerts_firing: Vec<Alert>,
}

/// How a model version is keyed in reports: `task@version`.
pub(crate) fn model_key(task: &str, version: &str) -> String {
    format!("{task}@{version}")
}

/// The report from the window's stats, the latest lag readings and the firing alerts.
pub(crate) fn build_report(
    window_s: f64,
    stats: &BTreeMap<Key, WindowStats>,
    dlq: f64,
    lag: &BTreeMap<(String, String), LagReading>,
    firing: &BTreeMap<String, Alert>,
) -> StatsReport {
    let mut r = StatsReport {
        window_s,
        dead_letters_per_s: dlq,
        ..Default::default()
    };
    for (k, s) in stats {
        match k {
            Key::All => r.overall = Some(s.clone()),
            Key::Model { task, version } => {
                r.models.insert(model_key(task, version), s.clone());
            }
            Key::Tenant(t) => {
                r.tenants.insert(t.clone(), s.clone());
            }
        }
    }
    r.lag = lag.values().cloned().collect();
    r.alerts_firing = firing.values().cloned().collect();
    r
}

/// What a window series is about: its `scope` label.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Scope {
    All,
    Model,
    Tenant,
}

impl Scope {
    fn as_str(self) -> &'static str {
        match self {
            Scope::All => "all",
            Scope::Model => "model",
            Scope::Tenant => "tenant",
        }
    }
}

/// The `scope` and `key` labels of a window's series.
struct Series {
    scope: Scope,
    key: String,
}

impl Series {
    fn of(k: &Key) -> Self {
        let (scope, key) = match k {
            Key::All => (Scope::All, "all".to_string()),
            Key::Model { task, version } => (Scope::Model, model_key(task, version)),
            Key::Tenant(t) => (Scope::Tenant, t.clone()),
        };
        Series { scope, key }
    }
}

pub(crate) fn export_window_metrics(stats: &BTreeMap<Key, WindowStats>, dlq: f64) {
    for (k, s) in stats {
        let Series { scope, key } = Series::of(k);
        let scope = scope.as_str();
        for (q, v) in [("0.5", s.p50_ms), ("0.9", s.p90_ms), ("0.99", s.p99_ms)] {
            if let Some(v) = v {
                metrics::gauge!(metric_names::WINDOW_LATENCY_SECONDS,
                    "scope" => scope, "key" => key.clone(), "quantile" => q)
                .set(v / 1000.0);
            }
        }
        metrics::gauge!(metric_names::WINDOW_PREDICTIONS_PER_SECOND,
            "scope" => scope, "key" => key.clone())
        .set(s.per_second);
        metrics::gauge!(metric_names::WINDOW_ERROR_RATIO, "scope" => scope, "key" => key)
            .set(s.error_rate);
    }
    metrics::gauge!(metric_names::WINDOW_DEAD_LETTERS_PER_SECOND).set(dlq);
}
