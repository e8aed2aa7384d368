//! Redis answers kept in process for a short time: API keys, tenant settings and budget
//! states are read on every request and change rarely, so each answer is reused for a
//! fixed time (found and not found alike) instead of asked again.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Most entries one cache keeps: past it, it starts over, so a client sending random
/// keys cannot grow it without bound.
pub const MAX_ENTRIES: usize = 100_000;

/// Values by key, each reused for `ttl` after it was stored.
pub struct TtlCache<V> {
    ttl: Duration,
    entries: Mutex<HashMap<String, (Instant, V)>>,
}

impl<V: Clone> TtlCache<V> {
    pub fn new(ttl: Duration) -> Self {
        TtlCache {
            ttl,
            entries: Mutex::default(),
        }
    }

    /// The value stored for `key` less than the TTL ago.
    pub fn fresh(&self, key: &str) -> Option<V> {
        self.entries
            .lock()
            .expect("cache lock")
            .get(key)
            .filter(|(at, _)| at.elapsed() < self.ttl)
            .map(|(_, v)| v.clone())
    }

    pub fn insert(&self, key: String, value: V) {
        let mut entries = self.entries.lock().expect("cache lock");
        if entries.len() >= MAX_ENTRIES && !entries.contains_key(&key) {
            entries.clear();
        }
        entries.insert(key, (Instant::now(), value));
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.entries.lock().expect("cache lock").len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_are_reused_only_within_the_ttl() {
        let long = TtlCache::new(Duration::from_secs(3600));
        assert_eq!(long.fresh("a"), None);
        long.insert("a".into(), Some(1));
        long.insert("b".into(), None);
        assert_eq!(long.fresh("a"), Some(Some(1)));
        assert_eq!(long.fresh("b"), Some(None), "a miss is remembered too");
        let expired = TtlCache::new(Duration::ZERO);
        expired.insert("a".into(), 1);
        assert_eq!(expired.fresh("a"), None);
    }

    #[test]
    fn a_full_cache_starts_over() {
        let c = TtlCache::new(Duration::from_secs(3600));
        for i in 0..MAX_ENTRIES {
            c.insert(i.to_string(), ());
        }
        c.insert("0".into(), ());
        assert_eq!(c.len(), MAX_ENTRIES, "replacing an entry keeps the others");
        c.insert("new".into(), ());
        assert_eq!(c.len(), 1);
        assert_eq!(c.fresh("new"), Some(()));
    }
}
