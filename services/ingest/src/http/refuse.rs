//! Refused requests: written to `aifab.dlq` (stage `ingest`, the body as sent, the route
//! and tenant as headers), then answered with their 4xx.
//!
//! Dead letters go through a producer of their own, not the transactional one that
//! writes accepted records: a flood of refusals must not queue in front of paying
//! tenants' records. Unauthenticated requests (401) are counted, and only a sample of
//! them is dead-lettered, without their body, which is never read.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use aifab_core::messages::{encode, DeadLetter};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};

use super::answer::Answer;
use super::Api;
use crate::metric_names;
use crate::validate::{ErrorKind, Rejection, Route};

/// Dead-letter a refused request and give its answer.
pub(super) async fn refuse(api: &Api, route: Route, body: &[u8], r: &Rejection) -> Answer {
    tracing::debug!(kind = %r.kind, reason = %r.reason, tenant = ?r.tenant, "refused HTTP request");
    metrics::counter!(metric_names::DEAD_LETTERS_TOTAL, "source" => "http", "kind" => r.kind.as_str())
        .increment(1);
    dead_letter(api, route, body, r).await;
    Answer::refused(r)
}

/// A request without a valid API key: counted, answered 401, and dead-lettered only when
/// the sample allows (without its body, which was not read).
pub(super) async fn refuse_unauthenticated(api: &Api, route: Route, r: &Rejection) -> Answer {
    metrics::counter!(metric_names::HTTP_UNAUTHENTICATED_TOTAL, "kind" => r.kind.as_str())
        .increment(1);
    if api.unauthenticated_sample.take(r.kind, Instant::now()) {
        metrics::counter!(metric_names::DEAD_LETTERS_TOTAL, "source" => "http", "kind" => r.kind.as_str())
            .increment(1);
        let sampled = Rejection {
            reason: format!(
                "{} (body not read; unauthenticated requests are dead-lettered at most once per {:?} per kind)",
                r.reason, api.unauthenticated_sample.every
            ),
            ..r.clone()
        };
        dead_letter(api, route, b"", &sampled).await;
    }
    Answer::refused(r)
}

/// At most one dead letter per kind per `every`; `every` of zero: none at all.
#[derive(Debug)]
pub struct DeadLetterSample {
    pub every: Duration,
    last: Mutex<HashMap<ErrorKind, Instant>>,
}

impl DeadLetterSample {
    pub fn new(every: Duration) -> Self {
        DeadLetterSample {
            every,
            last: Mutex::default(),
        }
    }

    /// Whether a refusal of `kind` at `now` is dead-lettered.
    pub fn take(&self, kind: ErrorKind, now: Instant) -> bool {
        if self.every.is_zero() {
            return false;
        }
        let mut last = self.last.lock().expect("sample lock");
        match last.get(&kind) {
            Some(t) if now.saturating_duration_since(*t) < self.every => false,
            _ => {
                last.insert(kind, now);
                true
            }
        }
    }
}

/// Best effort: the caller gets its 4xx whether or not the dead letter was written.
async fn dead_letter(api: &Api, route: Route, body: &[u8], r: &Rejection) {
    let dl = DeadLetter::new(
        body,
        None,
        None,
        "ingest",
        r.kind,
        &r.reason,
        r.tenant.clone(),
    );
    let route = format!("/v1/{}", route.name());
    let mut headers = OwnedHeaders::new().insert(Header {
        key: "route",
        value: Some(route.as_bytes()),
    });
    if let Some(t) = &r.tenant {
        headers = headers.insert(Header {
            key: "tenant",
            value: Some(t.as_bytes()),
        });
    }
    let key = uuid::Uuid::now_v7().to_string();
    let payload = encode(&dl);
    let record = FutureRecord::to(&api.settings.dlq_topic)
        .key(&key)
        .payload(&payload)
        .headers(headers);
    let producer: &FutureProducer = &api.dlq_producer;
    if let Err((e, _)) = producer.send(record, api.settings.produce_timeout).await {
        metrics::counter!(metric_names::DEAD_LETTER_FAILURES_TOTAL).increment(1);
        tracing::error!(
            error = %e,
            kind = %r.kind,
            "could not write a dead letter for a refused HTTP request"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_dead_letter_per_kind_per_interval_and_none_at_zero() {
        let s = DeadLetterSample::new(Duration::from_secs(1));
        let t0 = Instant::now();
        assert!(s.take(ErrorKind::BadApiKey, t0));
        assert!(!s.take(ErrorKind::BadApiKey, t0 + Duration::from_millis(999)));
        assert!(s.take(ErrorKind::MissingApiKey, t0), "kinds sample apart");
        assert!(s.take(ErrorKind::BadApiKey, t0 + Duration::from_secs(1)));
        let never = DeadLetterSample::new(Duration::ZERO);
        assert!(!never.take(ErrorKind::BadApiKey, t0));
    }
}
