//! A POST's body, from an authenticated tenant, to records in Kafka: validate, rate limit
//! and budget, claim the request ids in Redis, then write the records to
//! `aifab.features.in` in one transaction.

use aifab_core::messages::IngestRecord;
use aifab_core::pipeline::{Record, SendError};
use axum::http::{HeaderMap, StatusCode};
use redis::aio::ConnectionManager;
use serde_json::json;

use super::answer::Answer;
use super::idempotency::Idempotent;
use super::refuse::refuse;
use super::settle::{in_flight_ms, mark_written, UndecidedWrite};
use super::Api;
use crate::features::features_record;
use crate::metric_names;
use crate::ratelimit::retry_after_secs;
use crate::store::{self, Held};
use crate::tenants::{BudgetMode, TenantSettings};
use crate::validate::{self, Code, ErrorKind, Parsed, Rejection, Route};

/// A POST from a known, enabled tenant.
pub(super) struct Post<'a> {
    pub route: Route,
    pub tenant: &'a str,
    pub settings: &'a TenantSettings,
    pub headers: &'a HeaderMap,
    pub body: &'a [u8],
}

/// What became of a POST: its answer, and the write still settling when its send timed
/// out with the records in a transaction.
pub(super) struct Accepted {
    pub answer: Answer,
    pub undecided: Option<UndecidedWrite>,
}

impl From<Answer> for Accepted {
    fn from(answer: Answer) -> Self {
        Accepted {
            answer,
            undecided: None,
        }
    }
}

/// Validate, limit, claim ids, produce.
pub(super) async fn accept(
    api: &Api,
    conn: &mut ConnectionManager,
    post: &Post<'_>,
    idem: Option<&mut Idempotent>,
) -> Accepted {
    let (route, tenant) = (post.route, post.tenant);
    let parsed = match validate::http_body(post.body, route, tenant, &api.rules) {
        Ok(p) => p,
        Err(r) => return refuse(api, route, post.body, &r).await.into(),
    };
    let priority = match admit(api, conn, tenant, post.settings, parsed.records.len()).await {
        Ok(p) => p,
        Err(answer) => return answer.into(),
    };
    let Parsed { mut records, batch } = parsed;
    let now = aifab_core::now_ms();
    for r in records.iter_mut() {
        if r.id.is_none() {
            r.id = Some(uuid::Uuid::now_v7().to_string());
        }
        r.received_at_ms = Some(now);
    }
    let ids: Vec<String> = records
        .iter()
        .map(|r| r.id.clone().unwrap_or_default())
        .collect();

    let claims = match claim_ids(api, conn, post, &ids, batch, now).await {
        Ok(c) => c,
        Err(answer) => return answer.into(),
    };

    let out = to_records(api, post, &records, priority);
    if let Some(idem) = idem {
        // From here on a stop of this request leaves records that may be written: the key
        // must then answer outcome_unknown, not expire and let a retry write them again.
        let why = match idem.sending(conn, claims.until_ms).await {
            Ok(true) => None,
            Ok(false) => {
                Some("the Idempotency-Key's claim expired before the records were sent".to_string())
            }
            Err(e) => Some(format!("redis: {e}")),
        };
        if let Some(why) = why {
            claims.release(conn).await;
            return Answer::unavailable(&format!("{why}; retry with the same Idempotency-Key"))
                .into();
        }
    }
    let sent = api.producer.send(out, api.settings.produce_timeout).await;
    let n = records.len();
    let success = success(&ids, batch, priority.is_some());
    match sent {
        Ok(()) => {
            let route = route.name();
            metrics::counter!(metric_names::RECORDS_TOTAL, "source" => "http", "route" => route)
                .increment(n as u64);
            mark_written(conn, &claims.keys, &claims.value, &claims.holder).await;
            success.into()
        }
        Err(SendError::NotWritten(e)) => {
            claims.release(conn).await;
            tracing::warn!(error = %e, tenant, "could not write accepted records");
            Answer::unavailable(&format!("kafka: {e}")).into()
        }
        Err(SendError::Undecided { reason, outcome }) => {
            tracing::warn!(
                error = %reason,
                tenant,
                "accepted records not acknowledged in time; settling their ids later"
            );
            let answer = Answer::error(
                StatusCode::SERVICE_UNAVAILABLE,
                Code::Unavailable,
                &format!(
                    "kafka: {reason}; the records may still be written. A retry with the same \
                     Idempotency-Key or the same ids gets 409 in_progress until that is known, \
                     then the final answer: the 202 replayed or duplicate_id if they were \
                     written, a fresh start if not, 409 outcome_unknown if it cannot be learnt"
                ),
            )
            .with_header("retry-after", "5");
            Accepted {
                answer,
                undecided: Some(UndecidedWrite {
                    outcome,
                    claims: claims.keys,
                    holder: claims.holder,
                    in_flight_until: claims.until_ms,
                    ids,
                    success,
                    route: route.name(),
                    records: n as u64,
                }),
            }
        }
    }
}

/// The ids a request claimed, all of them: claimed as in flight until its write is
/// decided (an undecided one included), so that a retry of it meanwhile is told to wait
/// rather than refused for a write that may yet fail.
struct Claims {
    /// Their Redis keys.
    keys: Vec<String>,
    /// Who claimed them; what they hold once written.
    holder: String,
    /// What they hold while in flight.
    value: String,
    /// When they stop counting as in flight.
    until_ms: i64,
}

impl Claims {
    /// Give the ids back: nothing of the request was written.
    async fn release(&self, conn: &mut ConnectionManager) {
        store::release_retrying(conn, &self.keys, &[&self.value]).await;
    }
}

/// Claim every id for the tenant (a repeated id is refused, and GET can answer 202), or
/// give back those claimed and answer for the first one someone else holds.
async fn claim_ids(
    api: &Api,
    conn: &mut ConnectionManager,
    post: &Post<'_>,
    ids: &[String],
    batch: bool,
    now: i64,
) -> Result<Claims, Answer> {
    let holder = format!("http:{}", uuid::Uuid::now_v7());
    let until_ms = now + in_flight_ms(api);
    let value = store::in_flight(&holder, until_ms);
    let wanted: Vec<(String, String)> = ids
        .iter()
        .map(|id| (api.keys.request_id(post.tenant, id), value.clone()))
        .collect();
    // Never shorter than the in-flight time, or a claim could expire while in flight.
    let ttl_s = api
        .settings
        .id_ttl_s
        .max(((until_ms - now) / 1000 + 1) as u64);
    let claimed = store::claim(conn, &wanted, ttl_s)
        .await
        .map_err(|e| Answer::unavailable(&format!("redis: {e}")))?;
    let keys: Vec<String> = wanted
        .iter()
        .zip(&claimed)
        .filter(|(_, c)| c.is_none())
        .map(|((k, _), _)| k.clone())
        .collect();
    let claims = Claims {
        keys,
        holder,
        value,
        until_ms,
    };
    if claims.keys.len() == wanted.len() {
        return Ok(claims);
    }
    claims.release(conn).await;
    let now = aifab_core::now_ms();
    let held: Vec<Option<Held>> = claimed
        .iter()
        .map(|c| c.as_deref().map(|h| store::held(h, now)))
        .collect();
    let (i, held) = first_conflict(&held).unwrap_or((0, Held::InFlight));
    let field = if batch {
        format!("{}[{i}].id", post.route.batch_field())
    } else {
        "id".to_string()
    };
    Err(id_taken(api, post, &field, &ids[i], held).await)
}

/// Rate limit and budget: `Ok` with the priority of a deprioritised tenant's records, or
/// the answer refusing them for now.
async fn admit(
    api: &Api,
    conn: &mut ConnectionManager,
    tenant: &str,
    settings: &TenantSettings,
    n: usize,
) -> Result<Option<u8>, Answer> {
    if let Err(wait) = api
        .limiters
        .check(tenant, settings.rate_per_s, settings.burst, n as f64)
    {
        metrics::counter!(metric_names::RATE_LIMITED_TOTAL).increment(1);
        let reason = format!(
            "tenant \"{tenant}\" is over its rate limit of {} texts/s (burst {}); {n} text(s) in \
             this request",
            settings.rate_per_s, settings.burst
        );
        return Err(Answer::error(
            StatusCode::TOO_MANY_REQUESTS,
            ErrorKind::RateLimited,
            &reason,
        )
        .with_header("retry-after", retry_after_secs(wait).to_string()));
    }
    match api.budget.exceeded(conn, tenant).await {
        Ok(None) => Ok(None),
        Ok(Some(ex)) => match settings.budget_mode {
            BudgetMode::Deprioritise => Ok(Some(api.settings.deprioritised_priority)),
            BudgetMode::Reject => {
                metrics::counter!(metric_names::BUDGET_REJECTED_TOTAL, "source" => "http")
                    .increment(1);
                let reason = format!(
                    "{}; requests are rejected until the period ends",
                    ex.describe(tenant)
                );
                let retry_after = ex.retry_after_s(aifab_core::now_ms()).to_string();
                Err(Answer::error(
                    StatusCode::TOO_MANY_REQUESTS,
                    ErrorKind::BudgetExceeded,
                    &reason,
                )
                .with_header("retry-after", retry_after))
            }
        },
        Err(e) => Err(Answer::unavailable(&format!("redis: {e}"))),
    }
}

/// Of the ids someone else holds, the one that decides the answer: a used id first (the
/// request is a duplicate whatever the others are), then one whose outcome is unknown,
/// then one still in flight.
pub fn first_conflict(held: &[Option<Held>]) -> Option<(usize, Held)> {
    [Held::Used, Held::Unknown, Held::InFlight]
        .into_iter()
        .find_map(|want| {
            held.iter()
                .position(|h| *h == Some(want))
                .map(|i| (i, want))
        })
}

/// The answer to a request with an id (`field`) that an earlier request holds.
async fn id_taken(api: &Api, post: &Post<'_>, field: &str, id: &str, held: Held) -> Answer {
    let tenant = post.tenant;
    match held {
        Held::Used => {
            let r = Rejection::new(
                ErrorKind::DuplicateId,
                format!(
                    "field \"{field}\": \"{id}\" was already used by an earlier request of \
                     tenant \"{tenant}\""
                ),
            )
            .with_tenant(Some(tenant));
            refuse(api, post.route, post.body, &r).await
        }
        Held::Unknown => Answer::outcome_unknown(
            &format!(
                "field \"{field}\": \"{id}\" belongs to an earlier request of tenant \"{tenant}\""
            ),
            &[id.to_string()],
        ),
        Held::InFlight => Answer::in_progress(&format!(
            "field \"{field}\": \"{id}\" belongs to an earlier request of tenant \"{tenant}\" \
             whose write is not decided yet; retry shortly (it is refused as a duplicate once \
             written, accepted if not)"
        )),
    }
}

/// The Kafka records of a request's accepted records.
fn to_records(
    api: &Api,
    post: &Post<'_>,
    records: &[IngestRecord],
    priority: Option<u8>,
) -> Vec<Record> {
    let traceparent = post
        .headers
        .get("traceparent")
        .and_then(|v| v.to_str().ok())
        .map(str::as_bytes);
    records
        .iter()
        .map(|r| features_record(&api.settings.features_topic, r, priority, traceparent))
        .collect()
}

/// The 202: the ids (and the one id with its Location for a single item), and whether
/// the tenant's records were deprioritised.
fn success(ids: &[String], batch: bool, deprioritised: bool) -> Answer {
    let mut body = json!({"ids": ids, "accepted": ids.len()});
    if deprioritised {
        body["deprioritised"] = json!(true);
    }
    let answer = Answer::new(StatusCode::ACCEPTED, body);
    match ids.first().filter(|_| !batch) {
        Some(id) => {
            let mut answer = answer.with_header("location", format!("/v1/predictions/{id}"));
            answer.body["id"] = json!(id);
            answer
        }
        None => answer,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_used_id_decides_over_unknown_and_in_flight_ones() {
        use Held::*;
        assert_eq!(first_conflict(&[None, None]), None);
        assert_eq!(
            first_conflict(&[None, Some(InFlight), Some(Unknown), Some(Used)]),
            Some((3, Used))
        );
        assert_eq!(
            first_conflict(&[Some(InFlight), Some(Unknown), Some(Unknown)]),
            Some((1, Unknown))
        );
        assert_eq!(first_conflict(&[None, Some(InFlight)]), Some((1, InFlight)));
    }

    #[test]
    fn a_single_item_gets_its_id_and_location_a_batch_only_the_ids() {
        let one = success(&["a".into()], false, false);
        assert_eq!(one.status, StatusCode::ACCEPTED);
        assert_eq!(one.body, json!({"ids": ["a"], "accepted": 1, "id": "a"}));
        assert_eq!(one.header("location"), Some("/v1/predictions/a"));
        let batch = success(&["a".into(), "b".into()], true, true);
        assert_eq!(
            batch.body,
            json!({"ids": ["a", "b"], "accepted": 2, "deprioritised": true})
        );
        assert_eq!(batch.header("location"), None);
    }
}
