//! Refused requests: written to `aifab.dlq` (stage `ingest`, the body as sent, the route
//! and tenant as headers), then answered with their 4xx.

use aifab_core::messages::{encode, DeadLetter};
use aifab_core::pipeline::Record;

use super::answer::Answer;
use super::Api;
use crate::metric_names;
use crate::validate::{Rejection, Route};

/// Dead-letter a refused request and give its answer.
pub(super) async fn refuse(api: &Api, route: Route, body: &[u8], r: &Rejection) -> Answer {
    tracing::debug!(kind = %r.kind, reason = %r.reason, tenant = ?r.tenant, "refused HTTP request");
    dead_letter(api, route, body, r).await;
    Answer::refused(r)
}

/// Best effort: the caller gets its 4xx whether or not the dead letter was written.
async fn dead_letter(api: &Api, route: Route, body: &[u8], r: &Rejection) {
    let kind = r.kind.as_str();
    metrics::counter!(metric_names::DEAD_LETTERS_TOTAL, "source" => "http", "kind" => kind)
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
        metrics::counter!(metric_names::DEAD_LETTER_FAILURES_TOTAL).increment(1);
        tracing::error!(
            error = %e,
            kind = %r.kind,
            "could not write a dead letter for a refused HTTP request"
        );
    }
}
