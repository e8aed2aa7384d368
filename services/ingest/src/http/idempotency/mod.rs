//! The Idempotency-Key at the edges: its header, and the Redis commands that move the
//! key's record through the states decided in [`state`]
//! (`<p>:ingest:idem:<tenant>:<route>:<sha256 of the key>`, see [`crate::store`]).

pub mod state;

use axum::http::HeaderValue;
use redis::aio::ConnectionManager;

use self::state::{Claim, Finish, Record};
use super::answer::Answer;
use super::Api;
use crate::metric_names;
use crate::store;
use crate::validate::Route;

/// The key a request sent: 1 to 255 visible ASCII characters, trimmed.
pub fn key_of(header: &HeaderValue) -> Option<String> {
    match header.to_str() {
        Ok(k) if !k.trim().is_empty() && k.len() <= 255 => Some(k.trim().to_string()),
        _ => None,
    }
}

/// A key this request claimed: it moves the key on, then stores its answer or releases it.
pub(super) struct Idempotent {
    rkey: String,
    /// The record the key holds now, as far as this request knows.
    current: Record,
    /// Every value this request set the key to, the latest last: it is released or
    /// replaced only while it holds one of them (a reply lost after a SET leaves either).
    values: Vec<String>,
    ttl_s: u64,
}

/// Claim `key` for a request with this body: `Ok` when this request owns it now, else
/// the answer it gets instead. `ttl_s` is how long the key lives once the records are
/// about to be sent.
pub(super) async fn claim(
    api: &Api,
    conn: &mut ConnectionManager,
    tenant: &str,
    route: Route,
    key: &str,
    body_sha256: &str,
    ttl_s: u64,
) -> redis::RedisResult<Result<Idempotent, Answer>> {
    let rkey = api.keys.idempotency(tenant, route.name(), key);
    let pending = Record::pending(body_sha256, &uuid::Uuid::now_v7().to_string());
    let value = pending.to_json();
    // Pending expires soon: a request that stops before it sends anything frees its key.
    // Just before sending, the key turns `sending` for its whole TTL.
    let pending_ttl_s = api.settings.produce_timeout.as_secs() + 60;
    // One command: a separate GET after a refused SET NX could find the key gone (its
    // request failed and released it) and read that as another body's key.
    let held: Option<String> = redis::cmd("SET")
        .arg(&rkey)
        .arg(&value)
        .arg("NX")
        .arg("GET")
        .arg("EX")
        .arg(pending_ttl_s)
        .query_async(conn)
        .await?;
    let claim = state::on_claim(held.as_deref(), body_sha256, aifab_core::now_ms());
    if let Claim::Replay(_) = claim {
        metrics::counter!(metric_names::IDEMPOTENT_REPLAYS_TOTAL).increment(1);
    }
    Ok(match claim.answer() {
        Some(answer) => Err(answer),
        None => Ok(Idempotent {
            rkey,
            current: pending,
            values: vec![value],
            ttl_s,
        }),
    })
}

impl Idempotent {
    pub fn body_sha256(&self) -> &str {
        &self.current.body_sha256
    }

    /// `sending`: from here on a stop of the request leaves records that may be written.
    /// Whether the key still held this request's value (it may have expired).
    pub async fn sending(
        &mut self,
        conn: &mut ConnectionManager,
        until_ms: i64,
    ) -> redis::RedisResult<bool> {
        let next = self.current.sending(until_ms);
        self.advance(conn, next).await
    }

    /// `undecided`, naming the ids whose write is settling.
    pub async fn undecided(
        &mut self,
        conn: &mut ConnectionManager,
        until_ms: i64,
        ids: &[String],
    ) -> redis::RedisResult<bool> {
        let next = self.current.undecided(until_ms, ids);
        self.advance(conn, next).await
    }

    /// Replace the value the key holds now with `next`, for the key's whole TTL.
    async fn advance(
        &mut self,
        conn: &mut ConnectionManager,
        next: Record,
    ) -> redis::RedisResult<bool> {
        let from = self.values.last().cloned().unwrap_or_default();
        let value = next.to_json();
        // Remembered first: if the reply is lost after Redis set it, a release still finds it.
        self.values.push(value.clone());
        self.current = next;
        store::replace(conn, &self.rkey, &from, &value, self.ttl_s).await
    }

    /// Store the request's final answer, or release the key (see [`state::on_finish`]).
    pub async fn finish(self, conn: &mut ConnectionManager, answer: &Answer) {
        let finish = state::on_finish(self.body_sha256(), answer);
        self.apply(conn, finish).await;
    }

    pub async fn apply(self, conn: &mut ConnectionManager, finish: Finish) {
        match finish {
            Finish::Store(record) => {
                let result: redis::RedisResult<()> = redis::cmd("SET")
                    .arg(&self.rkey)
                    .arg(record.to_json())
                    .arg("EX")
                    .arg(self.ttl_s.max(1))
                    .exec_async(conn)
                    .await;
                if let Err(e) = result {
                    tracing::warn!(error = %e, "could not store the idempotent response");
                }
            }
            Finish::Release => {
                let values: Vec<&str> = self.values.iter().map(String::as_str).collect();
                store::release_retrying(conn, std::slice::from_ref(&self.rkey), &values).await;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_visible_ascii_up_to_255_characters() {
        let h = |s: &str| HeaderValue::from_str(s).unwrap();
        assert_eq!(key_of(&h(" k-1 ")).as_deref(), Some("k-1"));
        assert_eq!(key_of(&h("   ")), None);
        assert_eq!(key_of(&h(&"k".repeat(255))).map(|k| k.len()), Some(255));
        assert_eq!(key_of(&h(&"k".repeat(256))), None);
        assert_eq!(
            key_of(&HeaderValue::from_bytes(b"caf\xc3\xa9").unwrap()),
            None
        );
    }
}
