//! The monitor's HTTP API: `GET /` (the dashboard page), `GET /v1/stats` (the rolling
//! window) and `GET /v1/dashboard` (what the page draws).

use axum::{extract::State, response::Html, routing::get, Json, Router};

use crate::dashboard;
use crate::state::SharedState;

/// The page (static, open: a browser cannot send a bearer header to load it).
pub(crate) fn page() -> Router {
    Router::new().route("/", get(|| async { Html(dashboard::PAGE) }))
}

/// What tenants' traffic and spend is read from (the read role).
pub(crate) fn router(shared: SharedState, limits: dashboard::Limits) -> Router {
    Router::new()
        .route(
            "/v1/stats",
            get(|State(s): State<SharedState>| async move {
                Json(s.lock().expect("stats lock").report.clone())
            }),
        )
        .route(
            "/v1/dashboard",
            get(move |State(s): State<SharedState>| async move {
                let d = dashboard::build(
                    &s.lock().expect("stats lock").dash,
                    aifab_core::now_ms(),
                    limits,
                );
                Json(d)
            }),
        )
        .with_state(shared)
}
