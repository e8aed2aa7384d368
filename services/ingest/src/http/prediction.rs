//! `GET /v1/predictions/{id}`: the stored prediction (200), `pending` while the id is
//! claimed but not predicted yet (202), or 404.

use std::sync::Arc;
use std::time::Instant;

use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::json;

use super::answer::Answer;
use super::{auth, count, Api};
use crate::validate::Code;

pub(super) async fn prediction(
    State(api): State<Arc<Api>>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Response {
    let started = Instant::now();
    let r = get_prediction(&api, &id, &headers).await;
    count("predictions", r.status(), started);
    r
}

async fn get_prediction(api: &Api, id: &str, headers: &HeaderMap) -> Response {
    let Some(mut conn) = api.redis.try_get() else {
        return Answer::unavailable("redis is not connected").into_response();
    };
    let tenant = match auth::authenticate(api, &mut conn, headers).await {
        Ok(auth::Caller::Tenant(t)) => t,
        // Not dead-lettered: a GET carries no input.
        Ok(auth::Caller::Refused(r)) => {
            metrics::counter!(crate::metric_names::HTTP_UNAUTHENTICATED_TOTAL, "kind" => r.kind.as_str())
                .increment(1);
            return Answer::error(StatusCode::UNAUTHORIZED, r.kind, &r.reason).into_response();
        }
        Ok(auth::Caller::Throttled(wait)) => return auth::throttled(wait).into_response(),
        Err(e) => return Answer::unavailable(&format!("redis: {e}")).into_response(),
    };
    // Keys are per tenant, so another tenant's id is simply not found: same 404 as an id
    // nobody used, which leaks nothing.
    let stored: redis::RedisResult<Option<String>> = redis::cmd("GET")
        .arg(api.keys.prediction(&tenant, id))
        .query_async(&mut conn)
        .await;
    match stored {
        // Stored as the prediction/v1 JSON it was consumed as: sent on as it is.
        Ok(Some(json)) => {
            let mut r = (StatusCode::OK, json).into_response();
            r.headers_mut()
                .insert("content-type", HeaderValue::from_static("application/json"));
            return r;
        }
        Ok(None) => {}
        Err(e) => return Answer::unavailable(&format!("redis: {e}")).into_response(),
    }
    let pending: redis::RedisResult<bool> = redis::cmd("EXISTS")
        .arg(api.keys.request_id(&tenant, id))
        .query_async(&mut conn)
        .await;
    let answer = match pending {
        Ok(true) => Answer::new(
            StatusCode::ACCEPTED,
            json!({"id": id, "status": "pending", "reason": "accepted; no prediction yet"}),
        )
        .with_header("retry-after", "1"),
        Ok(false) => Answer::error(
            StatusCode::NOT_FOUND,
            Code::NotFound,
            &format!("no request with id \"{id}\" for this API key's tenant"),
        ),
        Err(e) => Answer::unavailable(&format!("redis: {e}")),
    };
    answer.into_response()
}
