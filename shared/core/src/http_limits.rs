//! Limits every service's API routes run under: at most `max_concurrent` requests at once
//! across all routes (more are shed at once with 503 and `Retry-After`, not queued), and
//! none answered later than `timeout` (503 `timeout`: the outcome is unknown, so a client
//! retries with the same Idempotency-Key). The ops routes (`/healthz`, `/readyz`, `/metrics`) are outside the
//! limits, so a flood never makes a service look dead to its orchestrator.

use std::time::Duration;

use axum::error_handling::HandleErrorLayer;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::{BoxError, Json, Router};
use tower::ServiceBuilder;

#[derive(Debug, Clone, Copy)]
pub struct HttpLimits {
    pub max_concurrent: usize,
    pub timeout: Duration,
}

/// `api` under `limits`; `service` names the metric of what they stop.
pub fn limited(api: Router, limits: HttpLimits, service: &'static str) -> Router {
    api.layer(
        ServiceBuilder::new()
            .layer(HandleErrorLayer::new(move |e: BoxError| async move {
                refusal(&e, limits, service)
            }))
            .load_shed()
            // One semaphore for every route: `Router::layer` makes a service per route.
            .layer(tower::limit::GlobalConcurrencyLimitLayer::new(
                limits.max_concurrent.max(1),
            ))
            .timeout(limits.timeout),
    )
}

/// The answer to a request the limits stopped.
fn refusal(e: &BoxError, limits: HttpLimits, service: &str) -> Response {
    let (status, code, error) = if e.is::<tower::timeout::error::Elapsed>() {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            "timeout",
            format!(
                "no answer within {:?}; the request may still complete: retry with the same \
                 Idempotency-Key",
                limits.timeout
            ),
        )
    } else if e.is::<tower::load_shed::error::Overloaded>() {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            "overloaded",
            format!(
                "{} requests are in flight, the most this service takes; retry shortly",
                limits.max_concurrent
            ),
        )
    } else {
        (
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            format!("unhandled error: {e}"),
        )
    };
    let name = crate::telemetry::metric_name(service, crate::telemetry::HTTP_LIMITED);
    metrics::counter!(name, "reason" => code).increment(1);
    let mut r = (
        status,
        Json(serde_json::json!({ "error": error, "code": code })),
    )
        .into_response();
    if status == StatusCode::SERVICE_UNAVAILABLE {
        r.headers_mut()
            .insert(header::RETRY_AFTER, header::HeaderValue::from_static("1"));
    }
    r
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use axum::routing::get;
    use tokio::sync::Notify;
    use tower::ServiceExt as _;

    use super::*;

    /// One route that says when it has started, then takes 200 ms.
    fn app(timeout_ms: u64, started: Arc<Notify>) -> Router {
        limited(
            Router::new().route(
                "/slow",
                get(move || async move {
                    started.notify_one();
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    "done"
                }),
            ),
            HttpLimits {
                max_concurrent: 1,
                timeout: Duration::from_millis(timeout_ms),
            },
            "test",
        )
    }

    #[tokio::test]
    async fn the_limit_holds_across_routes() {
        let started = Arc::new(Notify::new());
        let s = started.clone();
        let app = limited(
            Router::new()
                .route(
                    "/slow",
                    get(move || async move {
                        s.notify_one();
                        tokio::time::sleep(Duration::from_millis(200)).await;
                        "done"
                    }),
                )
                .route("/other", get(|| async { "other" })),
            HttpLimits {
                max_concurrent: 1,
                timeout: Duration::from_secs(5),
            },
            "test",
        );
        let first = tokio::spawn(app.clone().oneshot(get_slow()));
        started.notified().await;
        let other = axum::http::Request::get("/other")
            .body(axum::body::Body::empty())
            .unwrap();
        let r = app.clone().oneshot(other).await.unwrap();
        assert_eq!(
            r.status(),
            StatusCode::SERVICE_UNAVAILABLE,
            "one limit for all routes"
        );
        assert_eq!(first.await.unwrap().unwrap().status(), StatusCode::OK);
    }

    fn get_slow() -> axum::http::Request<axum::body::Body> {
        axum::http::Request::get("/slow")
            .body(axum::body::Body::empty())
            .unwrap()
    }

    #[tokio::test]
    async fn a_request_over_the_timeout_is_answered_503_timeout() {
        let r = app(20, Arc::default()).oneshot(get_slow()).await.unwrap();
        assert_eq!(r.status(), StatusCode::SERVICE_UNAVAILABLE);
        let body = axum::body::to_bytes(r.into_body(), 1 << 16).await.unwrap();
        assert!(String::from_utf8_lossy(&body).contains("\"timeout\""));
    }

    #[tokio::test]
    async fn a_request_over_the_concurrency_limit_is_shed_with_503() {
        let started = Arc::new(Notify::new());
        let app = app(5_000, started.clone());
        let first = tokio::spawn(app.clone().oneshot(get_slow()));
        // The first holds the only slot until it finishes.
        started.notified().await;
        let shed = app.clone().oneshot(get_slow()).await.unwrap();
        assert_eq!(shed.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(shed.headers()[header::RETRY_AFTER], "1");
        assert_eq!(first.await.unwrap().unwrap().status(), StatusCode::OK);
    }
}
