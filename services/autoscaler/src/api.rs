//! The autoscaler's HTTP API: `GET /v1/decisions` (the recent decisions, newest last) and
//! `GET /v1/policy` (the policy in force).

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

use aifab_core::messages::ScaleDecision;
use axum::{extract::State, routing::get, Json, Router};

use crate::policy::PolicyConfig;

/// The decisions kept for the API and the policy in force.
#[derive(Clone)]
pub(crate) struct ApiState {
    pub history: Arc<Mutex<VecDeque<ScaleDecision>>>,
    pub policy: Arc<PolicyConfig>,
}

/// Decisions kept for `GET /v1/decisions`.
const HISTORY: usize = 200;

/// `GET /v1/decisions` (newest last) and `GET /v1/policy`.
pub(crate) fn router(state: ApiState) -> Router {
    Router::new()
        .route(
            "/v1/decisions",
            get(|State(s): State<ApiState>| async move {
                Json(
                    s.history
                        .lock()
                        .expect("history lock")
                        .iter()
                        .cloned()
                        .collect::<Vec<_>>(),
                )
            }),
        )
        .route(
            "/v1/policy",
            get(|State(s): State<ApiState>| async move { Json((*s.policy).clone()) }),
        )
        .with_state(state)
}

/// Keep a decision for `GET /v1/decisions` (the last [`HISTORY`]).
pub(crate) fn remember(history: &Mutex<VecDeque<ScaleDecision>>, decision: ScaleDecision) {
    let mut h = history.lock().expect("history lock");
    h.push_back(decision);
    while h.len() > HISTORY {
        h.pop_front();
    }
}
