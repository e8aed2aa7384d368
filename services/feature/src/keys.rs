//! The feature service's Redis key layout (documented in the README, "Ingest and
//! features"). Every key starts with `--redis-prefix` (default `aifab`).
//!
//! - `<p>:feature:dedupe:<sha256>`: a computed prediction for (scope, task, text).
//!   Type: string, `prediction/v1` JSON, TTL `--dedupe-ttl-s`.
//! - `<p>:feature:tenant:<tenant>`: online features, all time.
//!   Type: hash of `requests`, `examples`, `tokens`, `cached`, `truncated`,
//!   `first_seen_ms`, `last_seen_ms`.
//! - `<p>:feature:tenant:<tenant>:minute:<unix minute>`: online features per minute
//!   (rolling windows). Type: hash of `requests`, `tokens`, TTL 2 h.

use aifab_core::redis_store::KeyPrefix;
use sha2::Digest;

/// Seconds a per-minute online-features hash is kept.
pub const MINUTE_TTL_S: u64 = 7200;

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
    pub fn dedupe(&self, hash: &str) -> String {
        format!("{}:feature:dedupe:{hash}", self.prefix)
    }
    pub fn tenant(&self, tenant: &str) -> String {
        format!("{}:feature:tenant:{tenant}", self.prefix)
    }
    pub fn tenant_minute(&self, tenant: &str, minute: i64) -> String {
        format!("{}:feature:tenant:{tenant}:minute:{minute}", self.prefix)
    }
}

/// Who shares dedupe cache entries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum DedupeScope {
    /// Only requests of the same tenant (no tenant can learn what another one sent).
    Tenant,
    /// Every tenant: one computation per (task, text) platform-wide.
    Global,
}

/// The dedupe hash of a text: sha256 over (scope, task, text), hex.
pub fn dedupe_hash(scope: DedupeScope, tenant: &str, task: &str, text: &str) -> String {
    let mut h = sha2::Sha256::new();
    match scope {
        DedupeScope::Tenant => h.update(tenant.as_bytes()),
        DedupeScope::Global => h.update(b"*"),
    }
    h.update([0x1f]);
    h.update(task.as_bytes());
    h.update([0x1f]);
    h.update(text.as_bytes());
    hex::encode(h.finalize())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hashes_separate_scope_task_and_text() {
        let a = dedupe_hash(DedupeScope::Tenant, "acme", "t", "hello");
        assert_eq!(a.len(), 64);
        assert_eq!(a, dedupe_hash(DedupeScope::Tenant, "acme", "t", "hello"));
        assert_ne!(a, dedupe_hash(DedupeScope::Tenant, "beta", "t", "hello"));
        assert_ne!(a, dedupe_hash(DedupeScope::Tenant, "acme", "u", "hello"));
        assert_ne!(a, dedupe_hash(DedupeScope::Tenant, "acme", "t", "hello!"));
        assert_eq!(
            dedupe_hash(DedupeScope::Global, "acme", "t", "hello"),
            dedupe_hash(DedupeScope::Global, "beta", "t", "hello")
        );
        assert_ne!(
            dedupe_hash(DedupeScope::Global, "", "ab", "c"),
            dedupe_hash(DedupeScope::Global, "", "a", "bc")
        );
        let k = Keys::new("p");
        assert_eq!(k.tenant_minute("acme", 5), "p:feature:tenant:acme:minute:5");
    }
}
