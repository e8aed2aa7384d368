//! The HTTP API (axum): `POST /v1/infer`, `POST /v1/examples`, `GET /v1/predictions/{id}`.
//!
//! A POST goes: API key, from the headers alone (401; the body is not read) → body (at
//! most `--max-body-bytes`, else 413) → tenant
//! enabled (403) → Idempotency-Key (replay / 409 in progress / 422 reused with another
//! body) → validation (400 naming the field, 403 other tenant, 409 repeated id, 413 too
//! many items) → rate limit (429 + Retry-After) → budget (429 + Retry-After, or
//! deprioritised) → request ids claimed in Redis (409 if already used, 409 in_progress if
//! an earlier request with them is still being written, 409 outcome_unknown if its write
//! may or may not have committed) → records written to `aifab.features.in` in one Kafka
//! transaction → 202 with the ids.
//!
//! A 401 is counted (`aifab_ingest_http_unauthenticated_total`) and dead-lettered only as
//! a sample (`--unauthenticated-dead-letter-every-ms`). Every other refused POST except
//! 429, 409 in_progress, 409 outcome_unknown and an over-limit body is written to
//! `aifab.dlq` (stage `ingest`, no source, the body as sent, cut
//! at 256 KiB) before the 4xx is answered; 429s and in_progress are back-pressure and
//! outcome_unknown an answer about an earlier request, not bad input, and an over-limit
//! body was never read.
//!
//! Modules: [`answer`] (what is answered), [`auth`] (API key → tenant), [`idempotency`]
//! (the Idempotency-Key's states), [`accept`] (validate, limit, claim ids, produce),
//! [`settle`] (writes whose outcome came late), [`prediction`] (the GET), [`refuse`]
//! (dead letters of refused requests).

pub mod accept;
pub mod answer;
pub mod auth;
pub mod idempotency;
pub mod prediction;
pub mod refuse;
pub mod settle;

use std::sync::Arc;
use std::time::{Duration, Instant};

use aifab_core::pipeline::AtomicProducer;
use aifab_core::redis_store::RedisHandle;
use axum::body::Body;
use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use futures::StreamExt as _;

use self::accept::{accept, Accepted, Post};
use self::answer::Answer;
use self::refuse::{refuse, refuse_unauthenticated, DeadLetterSample};
use self::settle::{in_flight_ms, settle};
pub use auth::api_key;

use crate::budget::BudgetBoard;
use crate::metric_names;
use crate::ratelimit::Limiters;
use crate::store::{sha256_hex, Keys};
use crate::tenants::{Registry, TenantSettings};
use crate::validate::{Code, ErrorKind, Rejection, Route, Rules};

/// What the HTTP API needs besides the shared state.
#[derive(Debug, Clone)]
pub struct HttpSettings {
    pub features_topic: String,
    pub dlq_topic: String,
    pub max_body_bytes: usize,
    pub id_ttl_s: u64,
    pub idempotency_ttl_s: u64,
    /// `priority` given to a deprioritised tenant's requests.
    pub deprioritised_priority: u8,
    /// Longest a POST waits for Kafka to acknowledge its records.
    pub produce_timeout: Duration,
    /// Settings of a tenant known only through a key added in Redis.
    pub default_tenant: TenantSettings,
}

pub struct Api {
    pub settings: HttpSettings,
    pub rules: Rules,
    pub registry: Arc<Registry>,
    pub budget: Arc<BudgetBoard>,
    pub limiters: Limiters,
    pub redis: RedisHandle,
    pub producer: AtomicProducer,
    /// Dead letters of refused requests: a queue apart from accepted records.
    pub dlq_producer: rdkafka::producer::FutureProducer,
    /// Which unauthenticated requests are dead-lettered.
    pub unauthenticated_sample: DeadLetterSample,
    pub keys: Keys,
    /// Every POST and every settling of an undecided write: shutdown waits for them, so a
    /// request is not cut off halfway (ids claimed, an Idempotency-Key left pending).
    pub tasks: tokio_util::task::TaskTracker,
}

pub fn router(api: Arc<Api>) -> Router {
    Router::new()
        .route("/v1/infer", post(infer))
        .route("/v1/examples", post(examples))
        .route("/v1/predictions/{id}", get(prediction::prediction))
        // The body limit is enforced by the handlers, so the 413 is JSON like every error.
        .layer(DefaultBodyLimit::disable())
        .with_state(api)
}

async fn infer(State(api): State<Arc<Api>>, request: Request) -> Response {
    post_route(api, Route::Infer, request).await
}

async fn examples(State(api): State<Arc<Api>>, request: Request) -> Response {
    post_route(api, Route::Examples, request).await
}

/// Count a request and its time by route and status.
fn count(route: &str, status: StatusCode, started: Instant) {
    let (route, status) = (route.to_string(), status.as_u16().to_string());
    let labels = [("route", route.clone()), ("status", status)];
    metrics::counter!(metric_names::HTTP_REQUESTS_TOTAL, &labels).increment(1);
    metrics::histogram!(metric_names::HTTP_REQUEST_SECONDS, "route" => route)
        .record(started.elapsed().as_secs_f64());
}

async fn post_route(api: Arc<Api>, route: Route, request: Request) -> Response {
    let started = Instant::now();
    // In a task of its own: a client that goes away mid-request drops this future, and
    // the request must not stop halfway (ids claimed, records in a transaction, an
    // Idempotency-Key pending with nothing to settle it); it runs to its end.
    let tasks = api.tasks.clone();
    let handled = tasks.spawn(async move {
        let (parts, body) = request.into_parts();
        handle_post(&api, route, &parts.headers, body).await
    });
    let answer = match handled.await {
        Ok(a) => a,
        Err(e) => {
            tracing::error!(error = %e, "a POST handler failed");
            Answer::error(
                StatusCode::INTERNAL_SERVER_ERROR,
                Code::Internal,
                "the request failed inside ingest; retry with the same Idempotency-Key",
            )
        }
    };
    count(route.name(), answer.status, started);
    answer.into_response()
}

/// The body, read up to `max` bytes: a declared or actual length over it is a 413.
async fn read_body(headers: &HeaderMap, body: Body, max: usize) -> Result<Vec<u8>, Answer> {
    let declared = headers
        .get("content-length")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok());
    let too_large = || {
        metrics::counter!(metric_names::HTTP_BODY_TOO_LARGE_TOTAL).increment(1);
        Answer::error(
            StatusCode::PAYLOAD_TOO_LARGE,
            ErrorKind::BodyTooLarge,
            &format!("body: more than the maximum of {max} bytes"),
        )
    };
    if declared.is_some_and(|n| n > max) {
        return Err(too_large());
    }
    let mut bytes: Vec<u8> = Vec::with_capacity(declared.unwrap_or(0).min(max));
    let mut stream = body.into_data_stream();
    while let Some(chunk) = stream.next().await {
        match chunk {
            Ok(c) if bytes.len() + c.len() > max => return Err(too_large()),
            Ok(c) => bytes.extend_from_slice(&c),
            Err(e) => {
                return Err(Answer::error(
                    StatusCode::BAD_REQUEST,
                    Code::BadBody,
                    &format!("body: could not be read: {e}"),
                ))
            }
        }
    }
    Ok(bytes)
}

async fn handle_post(api: &Api, route: Route, headers: &HeaderMap, body: Body) -> Answer {
    let Some(mut conn) = api.redis.try_get() else {
        return Answer::unavailable("redis is not connected");
    };
    // Who is asking, before reading a byte of the body: a stranger costs a header lookup.
    let tenant = match auth::authenticate(api, &mut conn, headers).await {
        Ok(auth::Caller::Tenant(t)) => t,
        Ok(auth::Caller::Refused(r)) => return refuse_unauthenticated(api, route, &r).await,
        Ok(auth::Caller::Throttled(wait)) => return auth::throttled(wait),
        Err(e) => return Answer::unavailable(&format!("redis: {e}")),
    };
    let bytes = match read_body(headers, body, api.settings.max_body_bytes).await {
        Ok(b) => b,
        Err(answer) => return answer,
    };
    let settings = match api.registry.tenant(&mut conn, &tenant).await {
        Ok(s) => s.unwrap_or(api.settings.default_tenant),
        Err(e) => return Answer::unavailable(&format!("redis: {e}")),
    };
    if !settings.enabled {
        let r = Rejection::new(
            ErrorKind::TenantDisabled,
            format!("tenant \"{tenant}\" is disabled"),
        )
        .with_tenant(Some(&tenant));
        return refuse(api, route, &bytes, &r).await;
    }

    let mut idem = None;
    if let Some(k) = headers.get("idempotency-key") {
        let Some(k) = idempotency::key_of(k) else {
            let r = Rejection::new(
                ErrorKind::InvalidValue,
                "header \"Idempotency-Key\": expected 1 to 255 visible ASCII characters",
            )
            .with_tenant(Some(&tenant));
            return refuse(api, route, &bytes, &r).await;
        };
        // Never shorter than the ids' in-flight time: the key must outlive an undecided write.
        let ttl_s = api
            .settings
            .idempotency_ttl_s
            .max((in_flight_ms(api) / 1000 + 61) as u64);
        let sha = sha256_hex(&bytes);
        match idempotency::claim(api, &mut conn, &tenant, route, &k, &sha, ttl_s).await {
            Ok(Ok(claimed)) => idem = Some(claimed),
            Ok(Err(answer)) => return answer,
            Err(e) => return Answer::unavailable(&format!("redis: {e}")),
        }
    }
    let post = Post {
        route,
        tenant: &tenant,
        settings: &settings,
        headers,
        body: &bytes,
    };
    let Accepted { answer, undecided } = accept(api, &mut conn, &post, idem.as_mut()).await;
    match undecided {
        // The key stays pending (a retry gets 409 in_progress) until the outcome is known.
        Some(u) => {
            api.tasks.spawn(settle(conn.clone(), u, idem));
        }
        None => {
            if let Some(idem) = idem {
                idem.finish(&mut conn, &answer).await;
            }
        }
    }
    answer
}
