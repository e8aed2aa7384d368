//! Per-tenant rate limiting: a token bucket per tenant, in process.
//!
//! Each ingest replica limits on its own (no Redis round trip per request), so with N
//! replicas behind a load balancer a tenant gets up to N × its rate. Size the rate per
//! replica, or run one replica per tenant group. The bucket is plain arithmetic on a
//! clock passed in, so it is unit-tested without sleeping.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// A token bucket: holds up to `burst` tokens, refills at `rate_per_s`.
#[derive(Debug, Clone, PartialEq)]
pub struct TokenBucket {
    pub rate_per_s: f64,
    pub burst: f64,
    tokens: f64,
    /// Seconds (on the caller's clock) of the last refill.
    last_s: f64,
}

impl TokenBucket {
    /// A full bucket.
    pub fn new(rate_per_s: f64, burst: f64, now_s: f64) -> Self {
        let burst = burst.max(1.0);
        TokenBucket {
            rate_per_s,
            burst,
            tokens: burst,
            last_s: now_s,
        }
    }

    /// Change the limits (settings changed at run time), keeping the tokens it has.
    pub fn reconfigure(&mut self, rate_per_s: f64, burst: f64) {
        self.rate_per_s = rate_per_s;
        self.burst = burst.max(1.0);
        self.tokens = self.tokens.min(self.burst);
    }

    fn refill(&mut self, now_s: f64) {
        let dt = (now_s - self.last_s).max(0.0);
        self.tokens = (self.tokens + dt * self.rate_per_s).min(self.burst);
        self.last_s = self.last_s.max(now_s);
    }

    /// Take `cost` tokens (capped at the bucket size, so a batch larger than the burst
    /// can still pass once the bucket is full). `Err(wait)`: how long until it would fit.
    /// A rate of 0 means unlimited.
    pub fn try_take(&mut self, cost: f64, now_s: f64) -> Result<(), Duration> {
        if self.rate_per_s <= 0.0 {
            return Ok(());
        }
        self.refill(now_s);
        let cost = cost.min(self.burst);
        if self.tokens + 1e-9 >= cost {
            self.tokens -= cost;
            Ok(())
        } else {
            let missing = cost - self.tokens;
            Err(Duration::from_secs_f64(missing / self.rate_per_s))
        }
    }

    pub fn tokens(&self) -> f64 {
        self.tokens
    }
}

/// `Retry-After` seconds for a wait: whole seconds, rounded up, at least 1.
pub fn retry_after_secs(wait: Duration) -> u64 {
    (wait.as_secs_f64().ceil() as u64).max(1)
}

/// The buckets of every tenant seen.
pub struct Limiters {
    epoch: Instant,
    buckets: Mutex<HashMap<String, TokenBucket>>,
}

impl Default for Limiters {
    fn default() -> Self {
        Limiters {
            epoch: Instant::now(),
            buckets: Mutex::default(),
        }
    }
}

impl Limiters {
    /// Take `cost` tokens from `tenant`'s bucket (created full with these limits).
    pub fn check(
        &self,
        tenant: &str,
        rate_per_s: f64,
        burst: f64,
        cost: f64,
    ) -> Result<(), Duration> {
        let now = self.epoch.elapsed().as_secs_f64();
        let mut buckets = self.buckets.lock().expect("limiter lock");
        let bucket = buckets
            .entry(tenant.to_string())
            .or_insert_with(|| TokenBucket::new(rate_per_s, burst, now));
        if bucket.rate_per_s != rate_per_s || bucket.burst != burst.max(1.0) {
            bucket.reconfigure(rate_per_s, burst);
        }
        bucket.try_take(cost, now)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn burst_then_steady_rate() {
        let mut b = TokenBucket::new(10.0, 5.0, 0.0);
        for _ in 0..5 {
            assert!(b.try_take(1.0, 0.0).is_ok());
        }
        let wait = b.try_take(1.0, 0.0).unwrap_err();
        assert!((wait.as_secs_f64() - 0.1).abs() < 1e-9, "{wait:?}");
        assert!(b.try_take(1.0, 0.05).is_err(), "half a token is not enough");
        assert!(b.try_take(1.0, 0.1).is_ok(), "one token after 100 ms");
        // A long pause refills only up to the burst.
        assert!(b.try_take(5.0, 100.0).is_ok());
        assert!(b.try_take(1.0, 100.0).is_err());
    }

    #[test]
    fn batches_cost_their_size_capped_at_the_burst() {
        let mut b = TokenBucket::new(1.0, 4.0, 0.0);
        assert!(b.try_take(3.0, 0.0).is_ok());
        let wait = b.try_take(3.0, 0.0).unwrap_err();
        assert!((wait.as_secs_f64() - 2.0).abs() < 1e-9, "{wait:?}");
        assert_eq!(retry_after_secs(wait), 2);
        // 10 texts against a bucket of 4: passes when the bucket is full.
        assert!(b.try_take(10.0, 10.0).is_ok());
        assert!(b.tokens() < 1e-9);
    }

    #[test]
    fn zero_rate_is_unlimited_and_retry_after_rounds_up() {
        let mut b = TokenBucket::new(0.0, 1.0, 0.0);
        for _ in 0..1000 {
            assert!(b.try_take(1.0, 0.0).is_ok());
        }
        assert_eq!(retry_after_secs(Duration::from_millis(1)), 1);
        assert_eq!(retry_after_secs(Duration::from_millis(1500)), 2);
        assert_eq!(retry_after_secs(Duration::ZERO), 1);
    }

    #[test]
    fn limiters_keep_one_bucket_per_tenant_and_follow_new_settings() {
        let l = Limiters::default();
        assert!(l.check("a", 1.0, 2.0, 1.0).is_ok());
        assert!(l.check("a", 1.0, 2.0, 1.0).is_ok());
        assert!(l.check("a", 1.0, 2.0, 1.0).is_err());
        assert!(
            l.check("b", 1.0, 2.0, 1.0).is_ok(),
            "tenants do not share a bucket"
        );
        assert!(
            l.check("a", 0.0, 2.0, 1.0).is_ok(),
            "raised to unlimited at run time"
        );
    }
}
