//! Per-tenant online features: counts kept in Redis (layout in [`crate::keys`]).
//!
//! A batch's counts are summed per tenant in memory ([`Deltas`], pure) and written
//! after the batch's Kafka transaction committed, so an aborted and repeated batch is
//! not counted twice (a crash between the commit and the write loses at most that
//! batch's counts: the features are for decisions, not billing — usage records are).

use std::collections::BTreeMap;

use redis::aio::ConnectionManager;

use crate::keys::{Keys, MINUTE_TTL_S};

/// One tenant's counts in one batch.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TenantDelta {
    /// Inference requests (cached answers included).
    pub requests: u64,
    /// Labelled examples.
    pub examples: u64,
    /// Tokens of requests sent to inference.
    pub tokens: u64,
    /// Requests answered from the dedupe cache.
    pub cached: u64,
    /// Requests whose text was truncated.
    pub truncated: u64,
    pub last_seen_ms: i64,
}

/// Per-tenant counts of one batch.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Deltas(pub BTreeMap<String, TenantDelta>);

impl Deltas {
    pub fn tenant(&mut self, tenant: &str, at_ms: i64) -> &mut TenantDelta {
        // Most batches hold few tenants: look up before allocating a key.
        if !self.0.contains_key(tenant) {
            self.0.insert(tenant.to_string(), TenantDelta::default());
        }
        let d = self.0.get_mut(tenant).expect("inserted above");
        d.last_seen_ms = d.last_seen_ms.max(at_ms);
        d
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Write the counts in one round trip.
    pub async fn write(&self, conn: &mut ConnectionManager, keys: &Keys) -> redis::RedisResult<()> {
        if self.0.is_empty() {
            return Ok(());
        }
        let mut pipe = redis::pipe();
        for (tenant, d) in &self.0 {
            let k = keys.tenant(tenant);
            for (field, n) in [
                ("requests", d.requests),
                ("examples", d.examples),
                ("tokens", d.tokens),
                ("cached", d.cached),
                ("truncated", d.truncated),
            ] {
                if n > 0 {
                    pipe.cmd("HINCRBY").arg(&k).arg(field).arg(n).ignore();
                }
            }
            pipe.cmd("HSETNX")
                .arg(&k)
                .arg("first_seen_ms")
                .arg(d.last_seen_ms)
                .ignore();
            // last_seen_ms only moves forward, whichever replica writes last.
            pipe.cmd("EVAL")
                .arg(concat!(
                    "local v = tonumber(redis.call('HGET', KEYS[1], 'last_seen_ms') or '0'); ",
                    "if tonumber(ARGV[1]) > v then ",
                    "redis.call('HSET', KEYS[1], 'last_seen_ms', ARGV[1]) end; return 0"
                ))
                .arg(1)
                .arg(&k)
                .arg(d.last_seen_ms)
                .ignore();
            if d.requests > 0 {
                let m = keys.tenant_minute(tenant, d.last_seen_ms / 60_000);
                pipe.cmd("HINCRBY")
                    .arg(&m)
                    .arg("requests")
                    .arg(d.requests)
                    .ignore();
                pipe.cmd("HINCRBY")
                    .arg(&m)
                    .arg("tokens")
                    .arg(d.tokens)
                    .ignore();
                pipe.cmd("EXPIRE").arg(&m).arg(MINUTE_TTL_S).ignore();
            }
        }
        pipe.exec_async(conn).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deltas_sum_per_tenant_and_keep_the_latest_time() {
        let mut d = Deltas::default();
        d.tenant("acme", 10).requests += 1;
        d.tenant("acme", 5).tokens += 7;
        d.tenant("beta", 3).examples += 1;
        assert_eq!(
            d.0["acme"],
            TenantDelta {
                requests: 1,
                tokens: 7,
                last_seen_ms: 10,
                ..Default::default()
            }
        );
        assert_eq!(d.0["beta"].examples, 1);
        assert!(!d.is_empty());
    }
}
