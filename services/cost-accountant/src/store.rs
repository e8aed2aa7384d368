//! The ledger in Redis. Keys (prefix `P`, `aifab:costs` by default):
//!
//! | key | type | holds |
//! |---|---|---|
//! | `P:seen:<usage_id>` | string, TTL | a usage record was charged (the idempotency key) |
//! | `P:ledger:<day>` | hash | `tenant|task|version|device|{device_seconds,tokens,rows,cost}` |
//! | `P:idle:<day>` | hash | `worker|device|{idle_seconds,cost}` |
//! | `P:period:<day or month>` | hash | `direct|<tenant>`, `rows|<tenant>`, `direct`, `rows`, `idle` |
//! | `P:burn:<tenant>:<bucket>` | float, TTL | direct cost charged in that time bucket |
//! | `P:burn-total:<bucket>` | float, TTL | direct + idle cost in that bucket |
//! | `P:budgets` | hash | `<tenant>|day`, `<tenant>|month` → budget JSON |
//! | `P:fired:<tenant>:<period>:<kind>` | string, TTL | a budget event went out (once per period) |
//!
//! Charging is one Lua script: `SET NX` on the usage id, then every increment, atomically,
//! so a replayed or duplicated usage record charges nothing twice.

use aifab_core::messages::{BudgetEventKind, BudgetPeriod, UsageRecord};
use aifab_core::redis_store::KeyPrefix;
use redis::aio::ConnectionManager;
use serde::{Deserialize, Serialize};

use crate::ledger::{self, PeriodTotals};

const CHARGE: &str = r#"
if not redis.call('SET', KEYS[1], '1', 'NX', 'EX', ARGV[1]) then return 0 end
local p = ARGV[2]
redis.call('HINCRBYFLOAT', KEYS[2], p .. '|device_seconds', ARGV[3])
redis.call('HINCRBY', KEYS[2], p .. '|tokens', ARGV[4])
redis.call('HINCRBY', KEYS[2], p .. '|rows', ARGV[5])
redis.call('HINCRBYFLOAT', KEYS[2], p .. '|cost', ARGV[6])
redis.call('EXPIRE', KEYS[2], ARGV[12])
local idle = tonumber(ARGV[9]) > 0
for _, k in ipairs({KEYS[3], KEYS[4]}) do
  redis.call('HINCRBYFLOAT', k, 'direct|' .. ARGV[7], ARGV[6])
  redis.call('HINCRBY', k, 'rows|' .. ARGV[7], ARGV[5])
  redis.call('HINCRBYFLOAT', k, 'direct', ARGV[6])
  redis.call('HINCRBY', k, 'rows', ARGV[5])
  if idle then redis.call('HINCRBYFLOAT', k, 'idle', ARGV[10]) end
  redis.call('EXPIRE', k, ARGV[12])
end
if idle then
  redis.call('HINCRBYFLOAT', KEYS[5], ARGV[8] .. '|idle_seconds', ARGV[9])
  redis.call('HINCRBYFLOAT', KEYS[5], ARGV[8] .. '|cost', ARGV[10])
  redis.call('EXPIRE', KEYS[5], ARGV[12])
end
redis.call('INCRBYFLOAT', KEYS[6], ARGV[6])
redis.call('EXPIRE', KEYS[6], ARGV[11])
redis.call('INCRBYFLOAT', KEYS[7], ARGV[13])
redis.call('EXPIRE', KEYS[7], ARGV[11])
return 1
"#;

/// A budget as stored.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StoredBudget {
    pub tenant: String,
    /// `day` or `month` in the JSON.
    pub period: BudgetPeriod,
    pub amount: f64,
    pub currency: String,
    pub set_at_ms: i64,
}

#[derive(Clone)]
pub struct Store {
    prefix: KeyPrefix,
    script: redis::Script,
    /// TTL of the idempotency keys, seconds (longer than the usage topic's retention).
    pub dedupe_ttl_s: u64,
    /// TTL of ledger hashes, seconds.
    pub retention_s: u64,
    /// Burn-rate bucket width and window, ms.
    pub bucket_ms: i64,
    pub window_ms: i64,
}

impl Store {
    pub fn new(prefix: &str, dedupe_ttl_s: u64, retention_s: u64, window_ms: i64) -> Self {
        let window_ms = window_ms.max(1000);
        Store {
            prefix: KeyPrefix::new(prefix),
            script: redis::Script::new(CHARGE),
            dedupe_ttl_s,
            retention_s,
            bucket_ms: (window_ms / 30).max(1000),
            window_ms,
        }
    }

    fn key(&self, rest: &str) -> String {
        format!("{}:{rest}", self.prefix)
    }

    /// Charge one usage record; false when it was charged before.
    pub async fn charge(
        &self,
        conn: &mut ConnectionManager,
        u: &UsageRecord,
        direct: f64,
        idle: f64,
    ) -> redis::RedisResult<bool> {
        let day = ledger::day_of(u.at_ms);
        let month = ledger::month_of(u.at_ms);
        let bucket = u.at_ms.div_euclid(self.bucket_ms);
        let burn_ttl = (2 * self.window_ms / 1000).max(60);
        let n: i64 = self
            .script
            .key(self.key(&format!("seen:{}", u.usage_id)))
            .key(self.key(&format!("ledger:{day}")))
            .key(self.key(&format!("period:{day}")))
            .key(self.key(&format!("period:{month}")))
            .key(self.key(&format!("idle:{day}")))
            .key(self.key(&format!("burn:{}:{bucket}", u.tenant)))
            .key(self.key(&format!("burn-total:{bucket}")))
            .arg(self.dedupe_ttl_s)
            .arg(ledger::ledger_prefix(u))
            .arg(u.device_seconds.max(0.0))
            .arg(u.tokens)
            .arg(u.rows)
            .arg(direct)
            .arg(&u.tenant)
            .arg(format!("{}|{}", u.worker, u.device_kind))
            .arg(u.idle_seconds.max(0.0))
            .arg(idle)
            .arg(burn_ttl)
            .arg(self.retention_s)
            .arg(direct + idle)
            .invoke_async(conn)
            .await?;
        Ok(n == 1)
    }

    pub async fn hash(
        &self,
        conn: &mut ConnectionManager,
        rest: &str,
    ) -> redis::RedisResult<Vec<(String, String)>> {
        redis::cmd("HGETALL")
            .arg(self.key(rest))
            .query_async(conn)
            .await
    }

    pub async fn period_totals(
        &self,
        conn: &mut ConnectionManager,
        period: &str,
    ) -> redis::RedisResult<PeriodTotals> {
        Ok(PeriodTotals::parse(
            &self.hash(conn, &format!("period:{period}")).await?,
        ))
    }

    /// Spend per hour over the burn window for a tenant (direct only) or, for
    /// [`ledger::ALL_TENANTS`], everything.
    pub async fn burn_rate(
        &self,
        conn: &mut ConnectionManager,
        tenant: &str,
        now_ms: i64,
    ) -> redis::RedisResult<f64> {
        let last = now_ms.div_euclid(self.bucket_ms);
        let first = (now_ms - self.window_ms).div_euclid(self.bucket_ms) + 1;
        let buckets: Vec<i64> = (first..=last).collect();
        let keys: Vec<String> = buckets
            .iter()
            .map(|b| {
                if tenant == ledger::ALL_TENANTS {
                    self.key(&format!("burn-total:{b}"))
                } else {
                    self.key(&format!("burn:{tenant}:{b}"))
                }
            })
            .collect();
        let values: Vec<Option<f64>> = redis::cmd("MGET").arg(&keys).query_async(conn).await?;
        let pairs: Vec<(i64, f64)> = buckets
            .into_iter()
            .zip(values)
            .filter_map(|(b, v)| v.map(|v| (b, v)))
            .collect();
        Ok(ledger::burn_rate_per_hour(
            &pairs,
            self.bucket_ms,
            self.window_ms,
            now_ms,
        ))
    }

    pub async fn set_budget(
        &self,
        conn: &mut ConnectionManager,
        b: &StoredBudget,
    ) -> redis::RedisResult<()> {
        let json = serde_json::to_string(b).expect("budget serializes");
        redis::cmd("HSET")
            .arg(self.key("budgets"))
            .arg(format!(
                "{}|{}",
                b.tenant,
                ledger::period_kind_name(b.period)
            ))
            .arg(json)
            .query_async(conn)
            .await
    }

    pub async fn budgets(
        &self,
        conn: &mut ConnectionManager,
    ) -> redis::RedisResult<Vec<StoredBudget>> {
        let fields = self.hash(conn, "budgets").await?;
        Ok(fields
            .into_iter()
            .filter_map(|(_, v)| serde_json::from_str(&v).ok())
            .collect())
    }

    /// True the first time an event of `kind` fires for this tenant and period.
    pub async fn first_fire(
        &self,
        conn: &mut ConnectionManager,
        tenant: &str,
        period: &str,
        kind: BudgetEventKind,
    ) -> redis::RedisResult<bool> {
        let kind = ledger::event_kind_name(kind);
        let set: Option<String> = redis::cmd("SET")
            .arg(self.key(&format!("fired:{tenant}:{period}:{kind}")))
            .arg(aifab_core::now_ms())
            .arg("NX")
            .arg("EX")
            .arg(40 * 86_400)
            .query_async(conn)
            .await?;
        Ok(set.is_some())
    }
}
