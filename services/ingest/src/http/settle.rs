//! Writes whose outcome the request could not wait for: their ids stay in flight, and
//! their Idempotency-Key undecided, until the producer says whether the transaction
//! committed; then both are settled as if the request had waited.

use std::time::Duration;

use aifab_core::pipeline::{Outcome, ATOMIC_ANSWER_BOUND};
use redis::aio::ConnectionManager;

use super::answer::Answer;
use super::idempotency::{state, Idempotent};
use super::Api;
use crate::metric_names;
use crate::store;

/// Longest an undecided write is waited for: past the producer's own bound on answering,
/// so that only a producer that stopped leaves an outcome unknown this way.
pub const SETTLE_WAIT: Duration = ATOMIC_ANSWER_BOUND.saturating_add(Duration::from_secs(10));

/// Slack on a claim's in-flight time past the produce timeout and the settle wait: the
/// Redis round trips around them, and clocks of replicas that differ a little.
const IN_FLIGHT_MARGIN_MS: i64 = 30_000;

/// How long a request's ids stay in flight after they are claimed: the longest it can
/// take to learn whether its records were written, plus the margin.
pub(super) fn in_flight_ms(api: &Api) -> i64 {
    (api.settings.produce_timeout + SETTLE_WAIT).as_millis() as i64 + IN_FLIGHT_MARGIN_MS
}

/// Accepted records whose transaction had not finished when the request timed out.
pub(super) struct UndecidedWrite {
    pub outcome: tokio::sync::oneshot::Receiver<Outcome>,
    /// The request's id claims: released only if nothing was written.
    pub claims: Vec<String>,
    /// Their holder, set back once the outcome is known (see `store::held`).
    pub holder: String,
    /// When the claims stop counting as in flight.
    pub in_flight_until: i64,
    /// The records' ids, as the answer names them.
    pub ids: Vec<String>,
    /// The answer the request would have had (stored for its Idempotency-Key if written).
    pub success: Answer,
    /// For the records counter once written.
    pub route: &'static str,
    pub records: u64,
}

impl UndecidedWrite {
    /// The value its claims hold while in flight.
    fn claim_value(&self) -> String {
        store::in_flight(&self.holder, self.in_flight_until)
    }
}

/// Claims whose records are written are plain used ids from now on (`to` = the holder),
/// those whose outcome is unknown are `store::unknown`. Best effort: if this fails they
/// are answered as unknown once their in-flight time passes.
pub(super) async fn mark_written(
    conn: &mut ConnectionManager,
    claims: &[String],
    from: &str,
    to: &str,
) {
    if let Err(e) = store::mark(conn, claims, from, to).await {
        tracing::warn!(
            error = %e,
            "could not mark written ids; until their in-flight time passes a retry is told to wait"
        );
    }
}

/// Wait for an undecided write's outcome, then settle its claims and Idempotency-Key as
/// if the request had waited: written keeps the claims (a retry with the same ids is a
/// duplicate) and stores the answer for replay; not written releases both.
pub(super) async fn settle(
    mut conn: ConnectionManager,
    u: UndecidedWrite,
    mut idem: Option<Idempotent>,
) {
    if let Some(idem) = &mut idem {
        // The key stays undecided until settled below, for as long as the ids are in
        // flight; if this task never gets that far (ingest stopped), the key then answers
        // outcome_unknown with the ids rather than let a retry write the records again.
        // If this fails the key stays `sending`, which answers the same without the ids.
        if let Err(e) = idem.undecided(&mut conn, u.in_flight_until, &u.ids).await {
            tracing::warn!(error = %e, "could not mark the Idempotency-Key undecided");
        }
    }
    let claim_value = u.claim_value();
    let outcome = match tokio::time::timeout(SETTLE_WAIT, u.outcome).await {
        Ok(Ok(o)) => o,
        Ok(Err(_)) => Outcome::Unknown("the producer stopped".into()),
        Err(_) => Outcome::Unknown(format!("no answer within {SETTLE_WAIT:?}")),
    };
    let settled = match &outcome {
        Outcome::Written => "written",
        Outcome::NotWritten(_) => "not_written",
        Outcome::Unknown(_) => "unknown",
    };
    metrics::counter!(metric_names::HTTP_UNDECIDED_WRITES_TOTAL, "outcome" => settled).increment(1);
    match &outcome {
        Outcome::Written => {
            metrics::counter!(metric_names::RECORDS_TOTAL, "source" => "http", "route" => u.route)
                .increment(u.records);
            mark_written(&mut conn, &u.claims, &claim_value, &u.holder).await;
        }
        Outcome::NotWritten(e) => {
            tracing::info!(
                error = %e,
                "a timed-out request's records were not written; releasing its ids"
            );
            store::release_retrying(&mut conn, &u.claims, &[&claim_value]).await;
        }
        Outcome::Unknown(e) => {
            // Never written twice: the ids stay used (a retry with them is refused) and
            // the Idempotency-Key keeps the outcome_unknown answer (see `state::on_settle`).
            tracing::warn!(
                error = %e,
                ids = u.claims.len(),
                "a request's outcome is unknown; its ids stay claimed"
            );
            mark_written(
                &mut conn,
                &u.claims,
                &claim_value,
                &store::unknown(&u.holder),
            )
            .await;
        }
    }
    if let Some(idem) = idem {
        let finish = state::on_settle(idem.body_sha256(), &outcome, &u.success, &u.ids);
        idem.apply(&mut conn, finish).await;
    }
}
