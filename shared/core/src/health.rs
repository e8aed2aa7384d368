//! `/healthz`, `/readyz` and `/metrics`: the operational endpoints on every service's port.
//!
//! Liveness (`/healthz`) answers as long as the process serves HTTP. Readiness (`/readyz`)
//! is 200 only while every registered check passes (dependencies reachable, model
//! loaded, ...), 503 with the failing checks otherwise, so an orchestrator routes no work
//! to a service that cannot do it.

use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use axum::{extract::State, http::StatusCode, response::IntoResponse, routing::get, Json, Router};
use metrics_exporter_prometheus::PrometheusHandle;
use serde::Serialize;

use crate::supervise::{Heartbeat, LoopHealth};
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
/// Besides the checks that tasks set, every supervised loop reads as a check named
/// `loop:<name>` (see [`crate::supervise`]), evaluated when asked.
#[derive(Debug, Clone)]
pub struct Readiness {
    service: &'static str,
    checks: Arc<RwLock<BTreeMap<String, CheckState>>>,
    loops: Arc<RwLock<BTreeMap<String, LoopHealth>>>,
}

#[derive(Debug, Serialize)]
pub struct ReadinessReport {
    pub service: &'static str,
    pub ready: bool,
    pub checks: BTreeMap<String, CheckState>,
}

impl Readiness {
    pub fn new(service: &'static str) -> Self {
        Readiness {
            service,
            checks: Arc::default(),
            loops: Arc::default(),
        }
    }

    /// Watch a loop: ready while it runs (and, with a heartbeat, while it progresses).
    pub fn watch_loop(&self, name: &str, heartbeat: Option<(Heartbeat, Duration)>) {
        let health = LoopHealth::new(crate::now_ms(), heartbeat);
        self.loops
            .write()
            .expect("readiness lock")
            .insert(name.to_string(), health);
    }

    /// Watch a loop with no heartbeat, unless it is watched already (with one).
    pub fn watch_loop_once(&self, name: &str) {
        let mut loops = self.loops.write().expect("readiness lock");
        loops
            .entry(name.to_string())
            .or_insert_with(|| LoopHealth::new(crate::now_ms(), None));
    }

    /// A watched loop ended while the service was running.
    pub fn loop_stopped(&self, name: &str, why: &str) {
        let mut loops = self.loops.write().expect("readiness lock");
        let health = loops
            .entry(name.to_string())
            .or_insert_with(|| LoopHealth::new(crate::now_ms(), None));
        health.stopped = Some((crate::now_ms(), why.to_string()));
        metrics::gauge!(metric_name(self.service, crate::telemetry::CHECK_UP), "check" => format!("loop:{name}"))
            .set(0.0);
    }

    /// Every check now: the ones tasks set plus one per watched loop.
    fn all_checks(&self) -> BTreeMap<String, CheckState> {
        let mut checks = self.checks.read().expect("readiness lock").clone();
        let now = crate::now_ms();
        for (name, health) in self.loops.read().expect("readiness lock").iter() {
            checks.insert(format!("loop:{name}"), health.check(now));
        }
        checks
    }

    /// Add a check that starts failing with `detail` until someone sets it.
    pub fn register(&self, name: &str, detail: impl Into<String>) {
        let mut checks = self.checks.write().expect("readiness lock");
        checks
            .entry(name.to_string())
            .or_insert_with(|| CheckState {
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
        checks.insert(
            name.to_string(),
            CheckState {
                ok,
                detail,
                since_ms,
            },
        );
        metrics::gauge!(metric_name(self.service, crate::telemetry::CHECK_UP), "check" => name.to_string())
            .set(if ok { 1.0 } else { 0.0 });
        changed
    }

    pub fn is_ok(&self, name: &str) -> bool {
        self.all_checks().get(name).map(|c| c.ok).unwrap_or(false)
    }

    /// Ready when every check passes (also when there are none at all).
    pub fn is_ready(&self) -> bool {
        self.all_checks().values().all(|c| c.ok)
    }

    pub fn report(&self) -> ReadinessReport {
        let checks = self.all_checks();
        ReadinessReport {
            service: self.service,
            ready: checks.values().all(|c| c.ok),
            checks,
        }
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
    let code = if report.ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (code, Json(report))
}

async fn metrics_text(State(s): State<OpsState>) -> impl IntoResponse {
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "text/plain; version=0.0.4",
        )],
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

    #[test]
    fn a_stopped_or_stale_loop_makes_the_service_unready_by_name() {
        let r = Readiness::new("test");
        r.register("kafka", "");
        r.set("kafka", true, "ok");
        let hb = Heartbeat::new();
        hb.progress();
        r.watch_loop("examples-consumer", Some((hb.clone(), Duration::ZERO)));
        r.watch_loop("train-requests", None);
        // A zero stale limit: any time without progress is stale.
        std::thread::sleep(Duration::from_millis(5));
        let report = r.report();
        assert!(!report.ready);
        assert!(
            report.checks["loop:examples-consumer"]
                .detail
                .starts_with("no progress for"),
            "{report:?}"
        );
        assert!(report.checks["loop:train-requests"].ok);
        r.watch_loop("examples-consumer", None);
        assert!(r.is_ready());
        r.loop_stopped("train-requests", "nats subscription ended");
        assert!(!r.is_ready());
        assert_eq!(
            r.report().checks["loop:train-requests"].detail,
            "stopped: nats subscription ended"
        );
    }
}
