//! Ingest's Redis key layout, in one place (documented in the README, "Ingest and
//! features"). Every key starts with the configured prefix (`--redis-prefix`, default
//! `aifab`), so tests and several deployments can share one Redis.
//!
//! - `<p>:ingest:apikey:<sha256 hex of key>`: an API key added at run time.
//!   Type: string, the tenant. Written by operators.
//! - `<p>:ingest:tenant:<tenant>`: a tenant added (or its settings changed) at run time.
//!   Type: hash of `rate_per_s`, `burst`, `budget_mode`, `enabled`. Written by operators.
//! - `<p>:ingest:id:<tenant>:<id>`: request ids in use (duplicate-id check, "pending"
//!   answers). Type: string, who claimed it (see [`held`]), TTL `--id-ttl-s`. Written by
//!   ingest.
//! - `<p>:ingest:idem:<tenant>:<route>:<sha256 hex of Idempotency-Key>`: the stored
//!   response of an idempotent POST. Type: string, JSON, TTL `--idempotency-ttl-s`.
//!   Written by ingest.
//! - `<p>:ingest:prediction:<tenant>:<id>`: answers for `GET /v1/predictions/{id}`.
//!   Type: string, `prediction/v1` JSON, TTL `--prediction-ttl-s`. Written by ingest's
//!   predictions consumer.
//! - `<p>:ingest:budget:<tenant>`: the tenant is over budget. Type: string, JSON,
//!   expires at the end of the budget period. Written by ingest (from NATS
//!   `aifab.budget.exceeded`).

use aifab_core::redis_store::KeyPrefix;
use redis::aio::ConnectionManager;
use sha2::Digest;

#[derive(Debug, Clone)]
pub struct Keys {
    prefix: KeyPrefix,
}

impl Keys {
    pub fn new(prefix: &str) -> Self {
        Keys {
            prefix: KeyPrefix::new(prefix),
        }
    }
    pub fn api_key(&self, key_sha256: &str) -> String {
        format!("{}:ingest:apikey:{key_sha256}", self.prefix)
    }
    pub fn tenant(&self, tenant: &str) -> String {
        format!("{}:ingest:tenant:{tenant}", self.prefix)
    }
    pub fn request_id(&self, tenant: &str, id: &str) -> String {
        format!("{}:ingest:id:{tenant}:{id}", self.prefix)
    }
    pub fn idempotency(&self, tenant: &str, route: &str, key: &str) -> String {
        format!(
            "{}:ingest:idem:{tenant}:{route}:{}",
            self.prefix,
            sha256_hex(key.as_bytes())
        )
    }
    pub fn prediction(&self, tenant: &str, id: &str) -> String {
        format!("{}:ingest:prediction:{tenant}:{id}", self.prefix)
    }
    pub fn budget(&self, tenant: &str) -> String {
        format!("{}:ingest:budget:{tenant}", self.prefix)
    }
}

/// SHA-256 of `bytes`, as 64 lowercase hex digits.
pub fn sha256_hex(bytes: &[u8]) -> String {
    format!("{:x}", sha2::Sha256::digest(bytes))
}

/// Claim request ids: `SET key value NX GET EX ttl` for each, in one round trip. Returns,
/// per key, `None` when this call claimed it and `Some(holder)` when someone had it. One
/// command per key, so there is no gap in which a holder could release the key between
/// this call finding it taken and reading who holds it.
pub async fn claim(
    conn: &mut ConnectionManager,
    claims: &[(String, String)],
    ttl_s: u64,
) -> redis::RedisResult<Vec<Option<String>>> {
    if claims.is_empty() {
        return Ok(Vec::new());
    }
    let mut pipe = redis::pipe();
    for (key, value) in claims {
        pipe.cmd("SET")
            .arg(key)
            .arg(value)
            .arg("NX")
            .arg("GET")
            .arg("EX")
            .arg(ttl_s.max(1));
    }
    pipe.query_async(conn).await
}

/// What a claimed id's holder value says about it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Held {
    /// An HTTP request is still writing it, or its write is undecided: it may yet be
    /// released, so another request with the id should retry rather than be refused.
    InFlight,
    /// Written, or claimed by a Kafka record (`kafka:<topic>:<partition>:<offset>`).
    Used,
    /// Its request's write may or may not have committed, and never will be learnt: the
    /// producer gave up on the commit, or the request stopped (ingest died) in flight.
    /// Never written again, like a used id, but answered as unknown rather than as a
    /// duplicate of something written.
    Unknown,
}

/// The value an HTTP request claims its ids with: `<holder>@<until_ms>` is in flight until
/// `until_ms`, a time past the longest the request can take to learn whether its records
/// were written. By then it has set the value back to plain `<holder>` (written), to
/// [`unknown`] or released the ids; if it died instead, they are unknown from then on.
pub fn in_flight(holder: &str, until_ms: i64) -> String {
    format!("{holder}@{until_ms}")
}

/// The value of ids whose write's outcome is unknown: `<holder>?`.
pub fn unknown(holder: &str) -> String {
    format!("{holder}?")
}

pub fn held(value: &str, now_ms: i64) -> Held {
    if value.ends_with('?') {
        return Held::Unknown;
    }
    match value.rsplit_once('@') {
        Some((_, until)) => match until.parse::<i64>() {
            Ok(u) if now_ms < u => Held::InFlight,
            Ok(_) => Held::Unknown,
            Err(_) => Held::Used,
        },
        None => Held::Used,
    }
}

/// Compare-and-set in one script: a claim is changed only while it still holds this
/// request's value. A plain `SET XX` or `DEL` could act on a claim another request made
/// after ours went (a retried `DEL` whose first reply was lost, say).
static MARK: std::sync::LazyLock<redis::Script> = std::sync::LazyLock::new(|| {
    redis::Script::new(
        "local n = 0
         for _, k in ipairs(KEYS) do
           if redis.call('GET', k) == ARGV[1] then redis.call('SET', k, ARGV[2], 'KEEPTTL'); n = n + 1 end
         end
         return n",
    )
});

/// Deletes each key that holds any of the values in ARGV.
static RELEASE: std::sync::LazyLock<redis::Script> = std::sync::LazyLock::new(|| {
    redis::Script::new(
        "local n = 0
         for _, k in ipairs(KEYS) do
           local v = redis.call('GET', k)
           for _, mine in ipairs(ARGV) do
             if v == mine then n = n + redis.call('DEL', k); break end
           end
         end
         return n",
    )
});

static REPLACE: std::sync::LazyLock<redis::Script> = std::sync::LazyLock::new(|| {
    redis::Script::new(
        "if redis.call('GET', KEYS[1]) == ARGV[1] then
           redis.call('SET', KEYS[1], ARGV[2], 'EX', ARGV[3]); return 1
         end
         return 0",
    )
});

/// Set `key` to `to` with a new TTL if it still holds `from`; whether it did.
pub async fn replace(
    conn: &mut ConnectionManager,
    key: &str,
    from: &str,
    to: &str,
    ttl_s: u64,
) -> redis::RedisResult<bool> {
    let mut call = REPLACE.prepare_invoke();
    call.key(key).arg(from).arg(to).arg(ttl_s.max(1));
    let n: i64 = call.invoke_async(conn).await?;
    Ok(n == 1)
}

/// Set the claims that still hold `from` (this request's claim value) to `to`, keeping
/// their TTL, in one round trip. Returns how many it changed.
pub async fn mark(
    conn: &mut ConnectionManager,
    keys: &[String],
    from: &str,
    to: &str,
) -> redis::RedisResult<usize> {
    if keys.is_empty() {
        return Ok(0);
    }
    let mut call = MARK.prepare_invoke();
    call.key(keys).arg(from).arg(to);
    call.invoke_async(conn).await
}

/// [`release`], tried up to five times over about three seconds: claims of a write that
/// failed and stay would be answered as unknown once their in-flight time has passed,
/// though nothing of them was written.
pub async fn release_retrying(conn: &mut ConnectionManager, keys: &[String], values: &[&str]) {
    let mut backoff = aifab_core::backoff::Backoff::new(
        std::time::Duration::from_millis(100),
        std::time::Duration::from_secs(2),
    );
    for attempt in 1..=5 {
        match release(conn, keys, values).await {
            Ok(_) => return,
            Err(e) if attempt == 5 => {
                tracing::error!(
                    error = %e,
                    keys = keys.len(),
                    "could not release the claims of a failed write (ids are refused as unknown, \
                     an Idempotency-Key answers outcome_unknown, once their in-flight time passes)"
                )
            }
            Err(e) => {
                tracing::warn!(error = %e, "releasing the claims of a failed write failed; retrying");
                tokio::time::sleep(backoff.next_delay()).await;
            }
        }
    }
}

/// Release the claims that still hold one of `values` (what a request that then failed
/// set them to). Returns how many it released.
pub async fn release(
    conn: &mut ConnectionManager,
    keys: &[String],
    values: &[&str],
) -> redis::RedisResult<usize> {
    if keys.is_empty() || values.is_empty() {
        return Ok(0);
    }
    let mut call = RELEASE.prepare_invoke();
    call.key(keys).arg(values);
    call.invoke_async(conn).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layout() {
        let k = Keys::new("t1:");
        assert_eq!(k.tenant("acme"), "t1:ingest:tenant:acme");
        assert_eq!(k.request_id("acme", "r:1"), "t1:ingest:id:acme:r:1");
        assert_eq!(k.prediction("acme", "r1"), "t1:ingest:prediction:acme:r1");
        assert_eq!(
            k.api_key(&sha256_hex(b"abc")),
            "t1:ingest:apikey:ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        assert!(k
            .idempotency("acme", "infer", "key-1")
            .starts_with("t1:ingest:idem:acme:infer:"));
    }

    #[test]
    fn an_id_is_in_flight_only_while_its_request_may_still_release_it() {
        let v = in_flight("http:r1", 5_000);
        assert_eq!(held(&v, 4_999), Held::InFlight);
        assert_eq!(
            held(&v, 5_000),
            Held::Unknown,
            "past its time its request died unsettled"
        );
        assert_eq!(held("http:r1", 0), Held::Used, "written");
        assert_eq!(
            held(&unknown("http:r1"), 0),
            Held::Unknown,
            "settled as unknown"
        );
        assert_eq!(held("kafka:aifab.ingest.raw:3:17", 0), Held::Used);
        assert_eq!(
            held("http:r1@soon", 0),
            Held::Used,
            "a value it cannot read counts as used"
        );
    }
}
