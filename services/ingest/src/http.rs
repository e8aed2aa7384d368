//! The HTTP API (axum): `POST /v1/infer`, `POST /v1/examples`, `GET /v1/predictions/{id}`.
//!
//! A POST goes: body (at most `--max-body-bytes`, else 413) → API key (401) → tenant
//! enabled (403) → Idempotency-Key (replay / 409 in progress / 422 reused with another
//! body) → validation (400 naming the field, 403 other tenant, 409 repeated id, 413 too
//! many items) → rate limit (429 + Retry-After) → budget (429 + Retry-After, or
//! deprioritised) → request ids claimed in Redis (409 if already used, 409 in_progress if
//! an earlier request with them is still being written, 409 outcome_unknown if its write
//! may or may not have committed) → records written to `aifab.features.in` in one Kafka
//! transaction → 202 with the ids.
//!
//! Every refused POST except 429, 409 in_progress, 409 outcome_unknown and an over-limit
//! body is also written to `aifab.dlq` (stage `ingest`, no source, the body as sent, cut
//! at 256 KiB) before the 4xx is answered; 429s and in_progress are back-pressure and
//! outcome_unknown an answer about an earlier request, not bad input, and an over-limit
//! body was never read.

use std::sync::Arc;
use std::time::{Duration, Instant};

use aifab_core::messages::{encode, DeadLetter, IngestRecord};
use aifab_core::pipeline::{AtomicProducer, Outcome, Record, SendError, ATOMIC_ANSWER_BOUND};
use aifab_core::redis_store::RedisHandle;
use axum::body::Body;
use axum::extract::{DefaultBodyLimit, Path, Request, State};
use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use futures::StreamExt as _;
use redis::aio::ConnectionManager;
use serde_json::{json, Value};

use crate::budget::BudgetBoard;
use crate::ratelimit::{retry_after_secs, Limiters};
use crate::store::{self, sha256_hex, Keys};
use crate::tenants::{BudgetMode, Registry, TenantSettings};
use crate::validate::{self, Code, ErrorKind, Rejection, Route, Rules};

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
    pub keys: Keys,
    /// Every POST and every settling of an undecided write: shutdown waits for them, so a
    /// request is not cut off halfway (ids claimed, an Idempotency-Key left pending).
    pub tasks: tokio_util::task::TaskTracker,
}

pub fn router(api: Arc<Api>) -> Router {
    Router::new()
        .route("/v1/infer", post(infer))
        .route("/v1/examples", post(examples))
        .route("/v1/predictions/{id}", get(prediction))
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

fn count(route: &str, status: StatusCode, started: Instant) {
    metrics::counter!("aifab_ingest_http_requests_total", "route" => route.to_string(), "status" => status.as_u16().to_string())
        .increment(1);
    metrics::histogram!("aifab_ingest_http_request_seconds", "route" => route.to_string())
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
    let response = match handled.await {
        Ok(r) => r,
        Err(e) => {
            tracing::error!(error = %e, "a POST handler failed");
            error(
                500,
                Code::Internal,
                "the request failed inside ingest; retry with the same Idempotency-Key",
                &[],
            )
        }
    };
    count(route.name(), response.status(), started);
    response
}

/// A JSON response with extra headers.
fn respond(status: u16, body: Value, headers: &[(&str, String)]) -> Response {
    let status = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let mut r = (status, axum::Json(body)).into_response();
    for (k, v) in headers {
        if let (Ok(k), Ok(v)) = (
            HeaderName::from_bytes(k.as_bytes()),
            HeaderValue::from_str(v),
        ) {
            r.headers_mut().insert(k, v);
        }
    }
    r
}

fn error(status: u16, kind: impl Into<Code>, reason: &str, headers: &[(&str, String)]) -> Response {
    let mut h: Vec<(&str, String)> = headers.to_vec();
    if status == 401 {
        h.push(("www-authenticate", "Bearer realm=\"aifab\"".into()));
    }
    respond(
        status,
        json!({"error": kind.into().as_str(), "reason": reason}),
        &h,
    )
}

fn unavailable(what: &str) -> Response {
    error(503, Code::Unavailable, what, &[("retry-after", "1".into())])
}

/// The API key: `Authorization: Bearer <key>` or `X-API-Key: <key>`.
pub fn api_key(headers: &HeaderMap) -> Option<String> {
    if let Some(v) = headers.get("authorization").and_then(|v| v.to_str().ok()) {
        let v = v.trim();
        if v.len() > 7 && v[..7].eq_ignore_ascii_case("bearer ") {
            let k = v[7..].trim();
            if !k.is_empty() {
                return Some(k.to_string());
            }
        }
    }
    headers
        .get("x-api-key")
        .and_then(|v| v.to_str().ok())
        .map(str::trim)
        .filter(|k| !k.is_empty())
        .map(str::to_string)
}

enum Auth {
    Tenant(String),
    Refused(Rejection),
}

async fn authenticate(
    api: &Api,
    conn: &mut ConnectionManager,
    headers: &HeaderMap,
) -> redis::RedisResult<Auth> {
    let Some(key) = api_key(headers) else {
        return Ok(Auth::Refused(Rejection::new(
            ErrorKind::MissingApiKey,
            "missing API key: send `Authorization: Bearer <key>` or `X-API-Key: <key>`",
        )));
    };
    Ok(match api.registry.tenant_for_key(conn, &key).await? {
        Some(t) => Auth::Tenant(t),
        None => Auth::Refused(Rejection::new(ErrorKind::BadApiKey, "unknown API key")),
    })
}

/// Write a refused HTTP request to the DLQ (best effort: the caller gets its 4xx anyway).
async fn dead_letter(api: &Api, route: Route, body: &[u8], r: &Rejection) {
    metrics::counter!("aifab_ingest_dead_letters_total", "source" => "http", "kind" => r.kind.as_str())
        .increment(1);
    let dl = DeadLetter::new(
        body,
        None,
        None,
        "ingest",
        r.kind,
        &r.reason,
        r.tenant.clone(),
    );
    let mut record = Record::new(
        &api.settings.dlq_topic,
        uuid::Uuid::now_v7().to_string(),
        encode(&dl),
    )
    .header("route", format!("/v1/{}", route.name()));
    if let Some(t) = &r.tenant {
        record = record.header("tenant", t.clone());
    }
    if let Err(e) = api
        .producer
        .send(vec![record], api.settings.produce_timeout)
        .await
    {
        metrics::counter!("aifab_ingest_dead_letter_failures_total").increment(1);
        tracing::error!(error = %e, kind = %r.kind, "could not write a dead letter for a refused HTTP request");
    }
}

/// Refuse: dead-letter it, answer the 4xx.
async fn refuse(api: &Api, route: Route, body: &[u8], r: Rejection) -> Response {
    tracing::debug!(kind = %r.kind, reason = %r.reason, tenant = ?r.tenant, "refused HTTP request");
    dead_letter(api, route, body, &r).await;
    error(r.status, r.kind, &r.reason, &[])
}

/// What an Idempotency-Key lookup found.
enum Idem {
    /// This request owns the key now (its Redis key and pending value): finish or release it.
    Claimed(String, String),
    /// A stored response to replay.
    Replay(Response),
    /// An answer without further work (in progress, or reused with another body).
    Answer(Response),
}

async fn idempotency(
    api: &Api,
    conn: &mut ConnectionManager,
    tenant: &str,
    route: Route,
    key: &str,
    body_sha: &str,
) -> redis::RedisResult<Idem> {
    let rkey = api.keys.idempotency(tenant, route.name(), key);
    // Pending expires soon: a request that stops before it sends anything frees its key.
    // Just before sending, the key turns `sending` for its whole TTL (see `Idempotent`).
    // `by` tells this request's values from another's with the same key and body.
    let pending = json!({"state": "pending", "body_sha256": body_sha, "by": uuid::Uuid::now_v7().to_string()}).to_string();
    let ttl_s = api.settings.produce_timeout.as_secs() + 60;
    // One command: a separate GET after a refused SET NX could find the key gone (its
    // request failed and released it) and read that as another body's key.
    let held: Option<String> = redis::cmd("SET")
        .arg(&rkey)
        .arg(&pending)
        .arg("NX")
        .arg("GET")
        .arg("EX")
        .arg(ttl_s)
        .query_async(conn)
        .await?;
    let Some(stored) = held else {
        return Ok(Idem::Claimed(rkey, pending));
    };
    let stored: Value = serde_json::from_str(&stored).unwrap_or(Value::Null);
    if stored["body_sha256"].as_str() != Some(body_sha) {
        return Ok(Idem::Answer(error(
            422,
            Code::IdempotencyKeyReused,
            "this Idempotency-Key was used with a different request body",
            &[],
        )));
    }
    if stored["state"] == "done" {
        let status = stored["status"].as_u64().unwrap_or(200) as u16;
        let mut headers = vec![("idempotent-replayed", "true".to_string())];
        if let Some(loc) = stored["location"].as_str() {
            headers.push(("location", loc.to_string()));
        }
        metrics::counter!("aifab_ingest_idempotent_replays_total").increment(1);
        return Ok(Idem::Replay(respond(
            status,
            stored["body"].clone(),
            &headers,
        )));
    }
    // Sending or undecided past the time its request had to settle it: that request is
    // gone (ingest stopped meanwhile), and what became of its records cannot be learnt.
    let stale = stored["until_ms"]
        .as_i64()
        .is_some_and(|u| aifab_core::now_ms() >= u);
    if stale && (stored["state"] == "undecided" || stored["state"] == "sending") {
        let ids = if stored["ids"].is_array() {
            stored["ids"].clone()
        } else {
            json!([])
        };
        let (status, body, _) =
            outcome_unknown("the request with this Idempotency-Key stopped first", &ids);
        return Ok(Idem::Answer(respond(status, body, &[])));
    }
    Ok(Idem::Answer(error(
        409,
        ErrorKind::InProgress,
        "a request with this Idempotency-Key is still being processed; retry shortly",
        &[("retry-after", "1".into())],
    )))
}

async fn handle_post(api: &Api, route: Route, headers: &HeaderMap, body: Body) -> Response {
    let max = api.settings.max_body_bytes;
    let declared = headers
        .get("content-length")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok());
    let too_large = || {
        metrics::counter!("aifab_ingest_http_body_too_large_total").increment(1);
        error(
            413,
            ErrorKind::BodyTooLarge,
            &format!("body: more than the maximum of {max} bytes"),
            &[],
        )
    };
    if declared.is_some_and(|n| n > max) {
        return too_large();
    }
    let mut bytes: Vec<u8> = Vec::with_capacity(declared.unwrap_or(0).min(max));
    let mut stream = body.into_data_stream();
    while let Some(chunk) = stream.next().await {
        match chunk {
            Ok(c) if bytes.len() + c.len() > max => return too_large(),
            Ok(c) => bytes.extend_from_slice(&c),
            Err(e) => {
                return error(
                    400,
                    Code::BadBody,
                    &format!("body: could not be read: {e}"),
                    &[],
                )
            }
        }
    }
    let Some(mut conn) = api.redis.try_get() else {
        return unavailable("redis is not connected");
    };
    let tenant = match authenticate(api, &mut conn, headers).await {
        Ok(Auth::Tenant(t)) => t,
        Ok(Auth::Refused(r)) => return refuse(api, route, &bytes, r).await,
        Err(e) => return unavailable(&format!("redis: {e}")),
    };
    let settings = match api.registry.tenant(&mut conn, &tenant).await {
        Ok(s) => s.unwrap_or(api.settings.default_tenant),
        Err(e) => return unavailable(&format!("redis: {e}")),
    };
    if !settings.enabled {
        let r = Rejection::new(
            ErrorKind::TenantDisabled,
            format!("tenant \"{tenant}\" is disabled"),
        )
        .with_tenant(Some(&tenant));
        return refuse(api, route, &bytes, r).await;
    }

    let mut idem_key: Option<(String, String)> = None;
    if let Some(k) = headers.get("idempotency-key") {
        let k = match k.to_str() {
            Ok(k) if !k.trim().is_empty() && k.len() <= 255 => k.trim().to_string(),
            _ => {
                let r = Rejection::new(
                    ErrorKind::InvalidValue,
                    "header \"Idempotency-Key\": expected 1 to 255 visible ASCII characters",
                )
                .with_tenant(Some(&tenant));
                return refuse(api, route, &bytes, r).await;
            }
        };
        match idempotency(api, &mut conn, &tenant, route, &k, &sha256_hex(&bytes)).await {
            Ok(Idem::Claimed(rkey, pending)) => idem_key = Some((rkey, pending)),
            Ok(Idem::Replay(r)) | Ok(Idem::Answer(r)) => return r,
            Err(e) => return unavailable(&format!("redis: {e}")),
        }
    }
    let mut undecided = None;
    // Never shorter than the ids' in-flight time: the key must outlive an undecided write.
    let ttl_s = api
        .settings
        .idempotency_ttl_s
        .max((in_flight_ms(api) / 1000 + 61) as u64);
    let mut idem = idem_key.map(|(rkey, pending)| Idempotent {
        rkey,
        values: vec![pending],
        body_sha: sha256_hex(&bytes),
        ttl_s,
    });
    let response = accept(
        api,
        &mut conn,
        route,
        &tenant,
        &settings,
        headers,
        &bytes,
        idem.as_mut(),
        &mut undecided,
    )
    .await;
    match undecided {
        // The key stays pending (a retry gets 409 in_progress) until the outcome is known.
        Some(u) => {
            api.tasks.spawn(settle(conn.clone(), u, idem));
        }
        None => {
            if let Some(idem) = idem {
                idem.finish(&mut conn, &response).await;
            }
        }
    }
    respond(response.0, response.1, &response.2)
}

type Answer = (u16, Value, Vec<(&'static str, String)>);

/// A request's claimed Idempotency-Key.
///
/// Its states: `pending` (claimed, short TTL: nothing sent yet), `sending` (set just before
/// the records go to Kafka, with `until_ms`, the ids' in-flight time), `undecided` (the
/// send timed out; settling), `done` (the answer replayed). A `sending` or `undecided` key
/// past its `until_ms` was left by a request that stopped: it answers `outcome_unknown`.
struct Idempotent {
    rkey: String,
    /// Every value this request set the key to, the latest last: it is released or
    /// replaced only while it holds one of them (a reply lost after a SET leaves either).
    values: Vec<String>,
    body_sha: String,
    ttl_s: u64,
}

impl Idempotent {
    /// Store a 2xx answer for replays; anything else created nothing, so a retry with the
    /// same key should try again.
    async fn finish(&self, conn: &mut ConnectionManager, response: &Answer) {
        if (200..300).contains(&response.0) {
            self.store(conn, response).await;
        } else {
            // Left sending or undecided, the key would answer in_progress, then outcome_unknown.
            let values: Vec<&str> = self.values.iter().map(String::as_str).collect();
            store::release_retrying(conn, std::slice::from_ref(&self.rkey), &values).await;
        }
    }

    /// Move the key on to `state` (with `until_ms`, and `ids` when given) from the value it
    /// holds now, for the key's whole TTL.
    async fn advance(
        &mut self,
        conn: &mut ConnectionManager,
        state: &str,
        until_ms: i64,
        ids: Option<&Value>,
    ) -> redis::RedisResult<bool> {
        let by = self
            .values
            .first()
            .and_then(|v| serde_json::from_str::<Value>(v).ok())
            .map(|v| v["by"].clone());
        let mut next =
            json!({"state": state, "body_sha256": self.body_sha, "until_ms": until_ms, "by": by});
        if let Some(ids) = ids {
            next["ids"] = ids.clone();
        }
        let from = self.values.last().cloned().unwrap_or_default();
        let next = next.to_string();
        // Remembered first: if the reply is lost after Redis set it, a release still finds it.
        self.values.push(next.clone());
        store::replace(conn, &self.rkey, &from, &next, self.ttl_s).await
    }

    /// Store `response` as the key's final answer, replayed to every retry with it.
    async fn store(&self, conn: &mut ConnectionManager, response: &Answer) {
        let status = response.0;
        let mut stored = json!({"state": "done", "body_sha256": self.body_sha, "status": status, "body": response.1});
        if let Some(loc) = response.2.iter().find(|(k, _)| *k == "location") {
            stored["location"] = json!(loc.1);
        }
        let result: redis::RedisResult<()> = redis::cmd("SET")
            .arg(&self.rkey)
            .arg(stored.to_string())
            .arg("EX")
            .arg(self.ttl_s.max(1))
            .exec_async(conn)
            .await;
        if let Err(e) = result {
            tracing::warn!(error = %e, "could not store the idempotent response");
        }
    }
}

impl UndecidedWrite {
    /// The value its claims hold while in flight.
    fn claim_value(&self) -> String {
        store::in_flight(&self.holder, self.in_flight_until)
    }
}

/// Accepted records whose transaction had not finished when the request timed out.
struct UndecidedWrite {
    outcome: tokio::sync::oneshot::Receiver<Outcome>,
    /// The request's id claims: released only if nothing was written.
    claims: Vec<String>,
    /// Their holder, set back once the outcome is known (see `store::held`).
    holder: String,
    /// When the claims stop counting as in flight.
    in_flight_until: i64,
    /// The answer the request would have had (stored for its Idempotency-Key if written).
    success: Answer,
    /// For `aifab_ingest_records_total` once written.
    route: &'static str,
    records: u64,
}

/// Longest an undecided write is waited for: past the producer's own bound on answering,
/// so that only a producer that stopped leaves an outcome unknown this way.
const SETTLE_WAIT: Duration = ATOMIC_ANSWER_BOUND.saturating_add(Duration::from_secs(10));

/// Wait for an undecided write's outcome, then settle its claims and Idempotency-Key as
/// if the request had waited: written keeps the claims (a retry with the same ids is a
/// duplicate) and stores the answer for replay; not written releases both.
async fn settle(mut conn: ConnectionManager, u: UndecidedWrite, mut idem: Option<Idempotent>) {
    if let Some(idem) = &mut idem {
        // The key stays undecided until settled below, for as long as the ids are in
        // flight; if this task never gets that far (ingest stopped), the key then answers
        // outcome_unknown with the ids rather than let a retry write the records again.
        // If this fails the key stays `sending`, which answers the same without the ids.
        if let Err(e) = idem
            .advance(
                &mut conn,
                "undecided",
                u.in_flight_until,
                Some(&u.success.1["ids"]),
            )
            .await
        {
            tracing::warn!(error = %e, "could not mark the Idempotency-Key undecided");
        }
    }
    let claim_value = u.claim_value();
    let outcome = match tokio::time::timeout(SETTLE_WAIT, u.outcome).await {
        Ok(Ok(o)) => o,
        Ok(Err(_)) => Outcome::Unknown("the producer stopped".into()),
        Err(_) => Outcome::Unknown(format!("no answer within {SETTLE_WAIT:?}")),
    };
    match outcome {
        Outcome::Written => {
            metrics::counter!("aifab_ingest_http_undecided_writes_total", "outcome" => "written")
                .increment(1);
            metrics::counter!("aifab_ingest_records_total", "source" => "http", "route" => u.route)
                .increment(u.records);
            mark_written(&mut conn, &u.claims, &claim_value, &u.holder).await;
            if let Some(idem) = idem {
                idem.finish(&mut conn, &u.success).await;
            }
        }
        Outcome::NotWritten(e) => {
            metrics::counter!("aifab_ingest_http_undecided_writes_total", "outcome" => "not_written").increment(1);
            tracing::info!(error = %e, "a timed-out request's records were not written; releasing its ids");
            store::release_retrying(&mut conn, &u.claims, &[&claim_value]).await;
            if let Some(idem) = idem {
                idem.finish(
                    &mut conn,
                    &answer_error(503, Code::Unavailable, &e, Vec::new()),
                )
                .await;
            }
        }
        Outcome::Unknown(e) => {
            // Never written twice: the ids stay used (a retry with them is refused) and
            // the Idempotency-Key keeps this answer (a retry with it gets it again rather
            // than new ids written a second time).
            metrics::counter!("aifab_ingest_http_undecided_writes_total", "outcome" => "unknown")
                .increment(1);
            tracing::warn!(error = %e, ids = u.claims.len(), "a request's outcome is unknown; its ids stay claimed");
            mark_written(
                &mut conn,
                &u.claims,
                &claim_value,
                &store::unknown(&u.holder),
            )
            .await;
            if let Some(idem) = idem {
                idem.store(&mut conn, &outcome_unknown(&e, &u.success.1["ids"]))
                    .await;
            }
        }
    }
}

/// Slack on a claim's in-flight time past the produce timeout and the settle wait: the
/// Redis round trips around them, and clocks of replicas that differ a little.
const IN_FLIGHT_MARGIN_MS: i64 = 30_000;

/// How long a request's ids stay in flight after they are claimed: the longest it can
/// take to learn whether its records were written, plus the margin.
fn in_flight_ms(api: &Api) -> i64 {
    (api.settings.produce_timeout + SETTLE_WAIT).as_millis() as i64 + IN_FLIGHT_MARGIN_MS
}

/// Claims whose records are written are plain used ids from now on (`to` = the holder),
/// those whose outcome is unknown are `store::unknown`. Best effort: if this fails they
/// are answered as unknown once their in-flight time passes.
async fn mark_written(conn: &mut ConnectionManager, claims: &[String], from: &str, to: &str) {
    if let Err(e) = store::mark(conn, claims, from, to).await {
        tracing::warn!(error = %e, "could not mark written ids; until their in-flight time passes a retry is told to wait");
    }
}

/// The final answer of a request whose records may or may not have been written.
fn outcome_unknown(why: &str, ids: &Value) -> Answer {
    let reason = format!(
        "{why}: the records may or may not have been written, and will not be written again with these ids \
         or this Idempotency-Key; GET /v1/predictions/{{id}} answers 200 for those that were"
    );
    let mut answer = answer_error(409, ErrorKind::OutcomeUnknown, &reason, Vec::new());
    answer.1["ids"] = ids.clone();
    answer
}

fn answer_error(
    status: u16,
    kind: impl Into<Code>,
    reason: &str,
    headers: Vec<(&'static str, String)>,
) -> Answer {
    let mut h = headers;
    if status == 401 {
        h.push(("www-authenticate", "Bearer realm=\"aifab\"".into()));
    }
    (
        status,
        json!({"error": kind.into().as_str(), "reason": reason}),
        h,
    )
}

/// Validate, limit, claim ids, produce. Returns status, body and headers; sets
/// `undecided` when the produce timed out after its records went into a transaction.
#[allow(clippy::too_many_arguments)]
async fn accept(
    api: &Api,
    conn: &mut ConnectionManager,
    route: Route,
    tenant: &str,
    settings: &TenantSettings,
    headers: &HeaderMap,
    bytes: &[u8],
    idem: Option<&mut Idempotent>,
    undecided: &mut Option<UndecidedWrite>,
) -> Answer {
    let refused = |r: Rejection| async move {
        dead_letter(api, route, bytes, &r).await;
        answer_error(r.status, r.kind, &r.reason, Vec::new())
    };
    let parsed = match validate::http_body(bytes, route, tenant, &api.rules) {
        Ok(p) => p,
        Err(r) => return refused(r).await,
    };
    let n = parsed.records.len();
    if let Err(wait) = api
        .limiters
        .check(tenant, settings.rate_per_s, settings.burst, n as f64)
    {
        metrics::counter!("aifab_ingest_rate_limited_total").increment(1);
        return answer_error(
            429,
            ErrorKind::RateLimited,
            &format!(
                "tenant \"{tenant}\" is over its rate limit of {} texts/s (burst {}); {n} text(s) in this request",
                settings.rate_per_s, settings.burst
            ),
            vec![("retry-after", retry_after_secs(wait).to_string())],
        );
    }
    let mut priority: Option<u8> = None;
    match api.budget.exceeded(conn, tenant).await {
        Ok(Some(ex)) => match settings.budget_mode {
            BudgetMode::Reject => {
                metrics::counter!("aifab_ingest_budget_rejected_total", "source" => "http")
                    .increment(1);
                return answer_error(
                    429,
                    ErrorKind::BudgetExceeded,
                    &format!(
                        "{}; requests are rejected until the period ends",
                        ex.describe(tenant)
                    ),
                    vec![(
                        "retry-after",
                        ex.retry_after_s(aifab_core::now_ms()).to_string(),
                    )],
                );
            }
            BudgetMode::Deprioritise => priority = Some(api.settings.deprioritised_priority),
        },
        Ok(None) => {}
        Err(e) => {
            return answer_error(
                503,
                Code::Unavailable,
                &format!("redis: {e}"),
                vec![("retry-after", "1".into())],
            )
        }
    }

    let mut records: Vec<IngestRecord> = parsed.records;
    let now = aifab_core::now_ms();
    for r in records.iter_mut() {
        if r.id.is_none() {
            r.id = Some(uuid::Uuid::now_v7().to_string());
        }
        r.received_at_ms = Some(now);
    }
    // Claim every id for this tenant: a repeated id is refused, and GET can answer 202.
    // Claimed as in flight until this request's write is decided (an undecided one
    // included), so that a retry of it meanwhile is told to wait rather than refused for a
    // write that may yet fail.
    let holder = format!("http:{}", uuid::Uuid::now_v7());
    let in_flight_until = now + in_flight_ms(api);
    let claim_value = store::in_flight(&holder, in_flight_until);
    let claims: Vec<(String, String)> = records
        .iter()
        .map(|r| {
            let key = api
                .keys
                .request_id(tenant, r.id.as_deref().unwrap_or_default());
            (key, claim_value.clone())
        })
        .collect();
    // Never shorter than the in-flight time, or a claim could expire while in flight.
    let ttl_s = api
        .settings
        .id_ttl_s
        .max(((in_flight_until - now) / 1000 + 1) as u64);
    let claimed = match store::claim(conn, &claims, ttl_s).await {
        Ok(c) => c,
        Err(e) => {
            return answer_error(
                503,
                Code::Unavailable,
                &format!("redis: {e}"),
                vec![("retry-after", "1".into())],
            )
        }
    };
    let mine: Vec<String> = claims
        .iter()
        .zip(&claimed)
        .filter(|(_, c)| c.is_none())
        .map(|((k, _), _)| k.clone())
        .collect();
    if mine.len() < claims.len() {
        store::release_retrying(conn, &mine, &[&claim_value]).await;
        let now = aifab_core::now_ms();
        let field = |i: usize| {
            if parsed.batch {
                format!("{}[{i}].id", route.batch_field())
            } else {
                "id".to_string()
            }
        };
        let id = |i: usize| records[i].id.as_deref().unwrap_or_default().to_string();
        let held = |c: &Option<String>| c.as_deref().map(|h| store::held(h, now));
        if let Some(i) = claimed
            .iter()
            .position(|c| held(c) == Some(store::Held::Used))
        {
            let r = Rejection::new(
                ErrorKind::DuplicateId,
                format!("field \"{}\": \"{}\" was already used by an earlier request of tenant \"{tenant}\"", field(i), id(i)),
            )
            .with_tenant(Some(tenant));
            return refused(r).await;
        }
        if let Some(i) = claimed
            .iter()
            .position(|c| held(c) == Some(store::Held::Unknown))
        {
            let why = format!(
                "field \"{}\": \"{}\" belongs to an earlier request of tenant \"{tenant}\"",
                field(i),
                id(i)
            );
            return outcome_unknown(&why, &json!([id(i)]));
        }
        let i = claimed.iter().position(Option::is_some).unwrap_or_default();
        return answer_error(
            409,
            ErrorKind::InProgress,
            &format!(
                "field \"{}\": \"{}\" belongs to an earlier request of tenant \"{tenant}\" whose write is not \
                 decided yet; retry shortly (it is refused as a duplicate once written, accepted if not)",
                field(i),
                id(i)
            ),
            vec![("retry-after", "1".into())],
        );
    }

    let traceparent = headers
        .get("traceparent")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let out: Vec<Record> = records
        .iter()
        .map(|r| {
            let id = r.id.clone().unwrap_or_default();
            let mut rec =
                Record::new(&api.settings.features_topic, id, encode(r)).header("tenant", tenant);
            if let Some(p) = priority {
                rec = rec.header("priority", p.to_string());
            }
            if let Some(t) = &traceparent {
                rec = rec.header("traceparent", t.clone());
            }
            rec
        })
        .collect();
    if let Some(idem) = idem {
        // From here on a stop of this request leaves records that may be written: the key
        // must then answer outcome_unknown, not expire and let a retry write them again.
        let why = match idem.advance(conn, "sending", in_flight_until, None).await {
            Ok(true) => None,
            Ok(false) => {
                Some("the Idempotency-Key's claim expired before the records were sent".to_string())
            }
            Err(e) => Some(format!("redis: {e}")),
        };
        if let Some(why) = why {
            store::release_retrying(conn, &mine, &[&claim_value]).await;
            return answer_error(
                503,
                Code::Unavailable,
                &format!("{why}; retry with the same Idempotency-Key"),
                vec![("retry-after", "1".into())],
            );
        }
    }
    let sent = api.producer.send(out, api.settings.produce_timeout).await;
    let ids: Vec<String> = records
        .iter()
        .map(|r| r.id.clone().unwrap_or_default())
        .collect();
    let mut body = json!({"ids": ids, "accepted": n});
    let mut headers = Vec::new();
    if !parsed.batch {
        body["id"] = json!(ids[0]);
        headers.push(("location", format!("/v1/predictions/{}", ids[0])));
    }
    if priority.is_some() {
        body["deprioritised"] = json!(true);
    }
    let success = (202, body, headers);
    match sent {
        Ok(()) => {
            metrics::counter!("aifab_ingest_records_total", "source" => "http", "route" => route.name()).increment(n as u64);
            mark_written(conn, &mine, &claim_value, &holder).await;
            success
        }
        Err(SendError::NotWritten(e)) => {
            store::release_retrying(conn, &mine, &[&claim_value]).await;
            tracing::warn!(error = %e, tenant, "could not write accepted records");
            answer_error(
                503,
                Code::Unavailable,
                &format!("kafka: {e}"),
                vec![("retry-after", "1".into())],
            )
        }
        Err(SendError::Undecided { reason, outcome }) => {
            tracing::warn!(error = %reason, tenant, "accepted records not acknowledged in time; settling their ids later");
            *undecided = Some(UndecidedWrite {
                outcome,
                claims: mine,
                holder,
                in_flight_until,
                success,
                route: route.name(),
                records: n as u64,
            });
            answer_error(
                503,
                Code::Unavailable,
                &format!(
                    "kafka: {reason}; the records may still be written. A retry with the same Idempotency-Key \
                     or the same ids gets 409 in_progress until that is known, then the final answer: the 202 \
                     replayed or duplicate_id if they were written, a fresh start if not, 409 outcome_unknown \
                     if it cannot be learnt"
                ),
                vec![("retry-after", "5".into())],
            )
        }
    }
}

async fn prediction(
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
        return unavailable("redis is not connected");
    };
    let tenant = match authenticate(api, &mut conn, headers).await {
        Ok(Auth::Tenant(t)) => t,
        Ok(Auth::Refused(r)) => return error(401, r.kind, &r.reason, &[]),
        Err(e) => return unavailable(&format!("redis: {e}")),
    };
    // Keys are per tenant, so another tenant's id is simply not found: same 404 as an id
    // nobody used, which leaks nothing.
    let stored: redis::RedisResult<Option<String>> = redis::cmd("GET")
        .arg(api.keys.prediction(&tenant, id))
        .query_async(&mut conn)
        .await;
    match stored {
        Ok(Some(json)) => {
            let mut r = (StatusCode::OK, json).into_response();
            r.headers_mut()
                .insert("content-type", HeaderValue::from_static("application/json"));
            return r;
        }
        Ok(None) => {}
        Err(e) => return unavailable(&format!("redis: {e}")),
    }
    let pending: redis::RedisResult<bool> = redis::cmd("EXISTS")
        .arg(api.keys.request_id(&tenant, id))
        .query_async(&mut conn)
        .await;
    match pending {
        Ok(true) => respond(
            202,
            json!({"id": id, "status": "pending", "reason": "accepted; no prediction yet"}),
            &[("retry-after", "1".into())],
        ),
        Ok(false) => error(
            404,
            Code::NotFound,
            &format!("no request with id \"{id}\" for this API key's tenant"),
            &[],
        ),
        Err(e) => unavailable(&format!("redis: {e}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn api_keys_from_either_header() {
        let mut h = HeaderMap::new();
        assert_eq!(api_key(&h), None);
        h.insert("x-api-key", HeaderValue::from_static(" k1 "));
        assert_eq!(api_key(&h).as_deref(), Some("k1"));
        h.insert("authorization", HeaderValue::from_static("Bearer k2"));
        assert_eq!(api_key(&h).as_deref(), Some("k2"), "Authorization wins");
        h.insert("authorization", HeaderValue::from_static("Basic abc"));
        assert_eq!(api_key(&h).as_deref(), Some("k1"));
        h.insert("authorization", HeaderValue::from_static("bearer   "));
        h.remove("x-api-key");
        assert_eq!(api_key(&h), None);
    }
}
