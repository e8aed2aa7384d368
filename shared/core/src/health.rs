//! `/healthz`, `/readyz` and `/metrics`: the operational endpoints on every service's port.
//!
//! Liveness (`/healthz`) answers as long as the process serves HTTP. Readiness (`/readyz`)
//! is 200 only while every registered check passes (dependencies reachable, model
//! loaded, ...), 503 with the failing checks otherwise, so an orchestrator routes no work
//! to a service that cannot do it.

use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};

use axum::{extract::State, http::StatusCode, response::IntoResponse, routing::get, Json, Router};
use metrics_exporter_prometheus::PrometheusHandle;
use serde::Serialize;

use crate::telemetry::metric_name;

/// One readiness check's current state.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct CheckState {
    pub ok: bool,
    /// What was seen last: an address when fine, the error when not.
    pub detail: String,
    pub since_ms: i64,
}

/// Named readiness checks, shared by the tasks that update them and the HTTP handler.
#[derive(Debug, Clone)]
pub struct Readiness {
    service: &'static str,
    checks: Arc<RwLock<BTreeMap<String, CheckState>>>,
}

#[derive(Debug, Serialize)]
pub struct ReadinessReport {
    pub service: &'static str,
    pub ready: bool,
    pub checks: BTreeMap<String, CheckState>,
}

impl Readiness {
    pub fn new(service: &'static str) -> Self {
        Readiness { service, checks: Arc::default() }
    }

    /// Add a check that starts failing with `detail` until someone sets it.
    pub fn register(&self, name: &str, detail: impl Into<String>) {
        let mut checks = self.checks.write().expect("readiness lock");
        checks.entry(name.to_string()).or_insert_with(|| CheckState {
            ok: false,
            detail: detail.into(),
            since_ms: crate::now_ms(),
        });
    }

    /// Record a check's result; returns true when its ok-state changed.
    pub fn set(&self, name: &str, ok: bool, detail: impl Into<String>) -> bool {
        let detail = detail.into();
        let mut checks = self.checks.write().expect("readiness lock");
        let changed = checks.get(name).map(|c| c.ok != ok).unwrap_or(true);
        let since_ms = match checks.get(name) {
            Some(c) if !changed => c.since_ms,
            _ => crate::now_ms(),
        };
        checks.insert(name.to_string(), CheckState { ok, detail, since_ms });
        metrics::gauge!(metric_name(self.service, "check_up"), "check" => name.to_string())
            .set(if ok { 1.0 } else { 0.0 });
        changed
    }

    pub fn is_ok(&self, name: &str) -> bool {
        self.checks.read().expect("readiness lock").get(name).map(|c| c.ok).unwrap_or(false)
    }

    /// Ready when there is at least one check and all pass... or there are none at all.
    pub fn is_ready(&self) -> bool {
        self.checks.read().expect("readiness lock").values().all(|c| c.ok)
    }

    pub fn report(&self) -> ReadinessReport {
        let checks = self.checks.read().expect("readiness lock").clone();
        ReadinessReport { service: self.service, ready: checks.values().all(|c| c.ok), checks }
    }
}

#[derive(Clone)]
struct OpsState {
    readiness: Readiness,
    metrics: PrometheusHandle,
}

/// The operational routes; services merge their own API routes beside them.
pub fn ops_router(readiness: Readiness, metrics: PrometheusHandle) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics_text))
        .with_state(OpsState { readiness, metrics })
}

async fn healthz(State(s): State<OpsState>) -> impl IntoResponse {
    Json(serde_json::json!({ "status": "ok", "service": s.readiness.service }))
}

async fn readyz(State(s): State<OpsState>) -> impl IntoResponse {
    let report = s.readiness.report();
    let code = if report.ready { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
    (code, Json(report))
}

async fn metrics_text(State(s): State<OpsState>) -> impl IntoResponse {
    (
        [(axum::http::header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        s.metrics.render(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ready_only_when_every_check_passes() {
        let r = Readiness::new("test");
        r.register("kafka", "not probed yet");
        r.register("redis", "not probed yet");
        assert!(!r.is_ready());
        assert!(r.set("kafka", true, "127.0.0.1:9092"));
        assert!(!r.is_ready());
        assert!(r.set("redis", true, "redis://127.0.0.1"));
        assert!(r.is_ready());
        assert!(!r.set("redis", true, "again"), "same state is not a change");
        assert!(r.set("redis", false, "connection refused"));
        let report = r.report();
        assert!(!report.ready);
        assert_eq!(report.checks["redis"].detail, "connection refused");
    }
}
