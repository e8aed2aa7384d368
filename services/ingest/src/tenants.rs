//! API keys and tenants: a JSON file read at start (`--api-keys-file`), plus Redis for
//! keys and tenants added at run time (layout in [`crate::store`]).
//!
//! ```json
//! {
//!   "keys": [
//!     {"key": "acme-secret-1", "tenant": "acme"},
//!     {"key_sha256": "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08", "tenant": "beta"},
//!     {"key_id": "ak1f2e3d4c5b6a", "salt": "…", "key_sha256_salted": "…", "tenant": "acme"}
//!   ],
//!   "tenants": {
//!     "acme": {"rate_per_s": 200, "burst": 400, "budget_mode": "reject"},
//!     "beta": {"budget_mode": "deprioritise"},
//!     "gamma": {"enabled": false}
//!   }
//! }
//! ```
//!
//! The last form is what `aifab keys create` writes: a salted hash of a generated key
//! (`aifab_core::api_keys`), the one to use in production; plain `key` entries are for
//! tests and local runs (ingest warns about them when short).
//!
//! A tenant is *known* when the file names it (under `tenants` or as a key's tenant) or
//! Redis has its settings hash. Settings come from the defaults, overridden by the file,
//! overridden by the Redis hash (so an operator can change a tenant at run time). Redis
//! lookups are cached in-process for [`CACHE_TTL`] (found and not found alike).

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::time::Duration;

use anyhow::Context as _;
use redis::aio::ConnectionManager;
use serde::Deserialize;

use crate::cache::TtlCache;
use crate::store::{sha256_hex, Keys};

/// How long a Redis answer about a key or tenant is reused.
pub const CACHE_TTL: Duration = Duration::from_secs(2);
/// How long a key Redis found valid is exempt from the limit on lookups of unseen keys.
pub const SEEN_TTL: Duration = Duration::from_secs(600);

/// What happens to a tenant's requests once its budget is exceeded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum BudgetMode {
    /// HTTP: 429 with Retry-After (the end of the budget period); Kafka: dead-lettered
    /// with error_kind `budget_exceeded`.
    Reject,
    /// Accepted, but its inference requests carry a higher `priority` (served later).
    #[serde(alias = "deprioritize")]
    #[value(alias = "deprioritize")]
    Deprioritise,
}

impl std::str::FromStr for BudgetMode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "reject" => Ok(BudgetMode::Reject),
            "deprioritise" | "deprioritize" => Ok(BudgetMode::Deprioritise),
            other => Err(format!(
                "budget_mode: expected \"reject\" or \"deprioritise\", found {other:?}"
            )),
        }
    }
}

/// A tenant's effective settings.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TenantSettings {
    /// Sustained requests (texts) per second over HTTP; 0 = unlimited.
    pub rate_per_s: f64,
    /// Bucket size: texts allowed in a burst.
    pub burst: f64,
    pub budget_mode: BudgetMode,
    pub enabled: bool,
}

/// Settings as written in the file or Redis: every field optional.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TenantOverrides {
    pub rate_per_s: Option<f64>,
    pub burst: Option<f64>,
    pub budget_mode: Option<BudgetMode>,
    pub enabled: Option<bool>,
}

impl TenantOverrides {
    pub fn apply(&self, base: TenantSettings) -> TenantSettings {
        TenantSettings {
            rate_per_s: self.rate_per_s.unwrap_or(base.rate_per_s),
            burst: self.burst.unwrap_or(base.burst),
            budget_mode: self.budget_mode.unwrap_or(base.budget_mode),
            enabled: self.enabled.unwrap_or(base.enabled),
        }
    }

    /// From a Redis hash; unparseable fields are reported and skipped.
    pub fn from_hash(hash: &HashMap<String, String>) -> (Self, Vec<String>) {
        let mut o = TenantOverrides::default();
        let mut problems = Vec::new();
        for (k, v) in hash {
            match k.as_str() {
                "rate_per_s" => match v.parse::<f64>() {
                    Ok(x) if x >= 0.0 => o.rate_per_s = Some(x),
                    _ => problems.push(format!("rate_per_s: expected a number >= 0, found {v:?}")),
                },
                "burst" => match v.parse::<f64>() {
                    Ok(x) if x >= 1.0 => o.burst = Some(x),
                    _ => problems.push(format!("burst: expected a number >= 1, found {v:?}")),
                },
                "budget_mode" => match v.parse() {
                    Ok(m) => o.budget_mode = Some(m),
                    Err(e) => problems.push(e),
                },
                "enabled" => match v.as_str() {
                    "1" | "true" | "yes" => o.enabled = Some(true),
                    "0" | "false" | "no" => o.enabled = Some(false),
                    _ => problems.push(format!("enabled: expected true/false or 1/0, found {v:?}")),
                },
                _ => {} // other fields (notes, created_ms, ...) are the operator's own
            }
        }
        (o, problems)
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct KeyEntry {
    #[serde(default)]
    key: Option<String>,
    #[serde(default)]
    key_sha256: Option<String>,
    #[serde(default)]
    key_id: Option<String>,
    #[serde(default)]
    salt: Option<String>,
    #[serde(default)]
    key_sha256_salted: Option<String>,
    tenant: String,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct KeysFile {
    #[serde(default)]
    keys: Vec<KeyEntry>,
    #[serde(default)]
    tenants: BTreeMap<String, TenantOverrides>,
}

/// The static part: what the file says.
#[derive(Debug, Clone, Default)]
pub struct StaticTenants {
    /// sha256 hex of a key → tenant.
    keys: HashMap<String, String>,
    /// Salted entries by key id.
    salted: HashMap<String, aifab_core::api_keys::SaltedKey>,
    tenants: HashMap<String, TenantOverrides>,
}

use aifab_core::api_keys::valid_tenant;

impl StaticTenants {
    /// Parse the file's text; errors name the problem.
    pub fn parse(text: &str) -> anyhow::Result<Self> {
        let file: KeysFile =
            serde_json::from_str(text).context("API keys file: not the expected JSON")?;
        let mut out = StaticTenants::default();
        for (i, k) in file.keys.iter().enumerate() {
            anyhow::ensure!(
                valid_tenant(&k.tenant),
                "API keys file: keys[{i}].tenant {:?} is not a valid tenant name",
                k.tenant
            );
            if let (Some(key_id), Some(salt), Some(hash)) =
                (&k.key_id, &k.salt, &k.key_sha256_salted)
            {
                anyhow::ensure!(
                    k.key.is_none()
                        && k.key_sha256.is_none()
                        && hex::decode(salt).is_ok_and(|s| s.len() >= 8)
                        && hash.len() == 64
                        && hash.bytes().all(|b| b.is_ascii_hexdigit()),
                    "API keys file: keys[{i}]: a salted entry has key_id, salt (hex, 8+ bytes) and \
                     key_sha256_salted (64 hex digits) only"
                );
                out.salted.insert(
                    key_id.clone(),
                    aifab_core::api_keys::SaltedKey {
                        key_id: key_id.clone(),
                        salt: salt.clone(),
                        key_sha256_salted: hash.clone(),
                        tenant: k.tenant.clone(),
                    },
                );
                out.tenants.entry(k.tenant.clone()).or_default();
                continue;
            }
            let sha = match (&k.key, &k.key_sha256) {
                (Some(key), None) if !key.is_empty() => {
                    if key.len() < aifab_core::access::MIN_TOKEN_LEN {
                        tracing::warn!(index = i, tenant = %k.tenant,
                            "API keys file: a plain key shorter than 24 characters; use `aifab keys create`");
                    }
                    sha256_hex(key.as_bytes())
                }
                (None, Some(sha))
                    if sha.len() == 64 && sha.bytes().all(|b| b.is_ascii_hexdigit()) =>
                {
                    sha.to_ascii_lowercase()
                }
                _ => anyhow::bail!(
                    "API keys file: keys[{i}] needs exactly one of \"key\" (non-empty) or \
                     \"key_sha256\" (64 hex digits)"
                ),
            };
            out.keys.insert(sha, k.tenant.clone());
            out.tenants.entry(k.tenant.clone()).or_default();
        }
        for (name, o) in file.tenants {
            anyhow::ensure!(
                valid_tenant(&name),
                "API keys file: tenant {name:?} is not a valid tenant name"
            );
            out.tenants.insert(name, o);
        }
        Ok(out)
    }

    pub fn load(path: &Path) -> anyhow::Result<Self> {
        let text =
            std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        Self::parse(&text).with_context(|| format!("in {}", path.display()))
    }

    pub fn key_count(&self) -> usize {
        self.keys.len() + self.salted.len()
    }

    /// The tenant of a `<key_id>.<secret>` key with a salted entry.
    fn salted_tenant(&self, key: &str) -> Option<&str> {
        let (id, secret) = aifab_core::api_keys::split(key)?;
        let entry = self.salted.get(id)?;
        entry.matches(secret).then_some(entry.tenant.as_str())
    }
}

/// What an API key turned out to be.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyLookup {
    Tenant(String),
    Unknown,
    /// Not looked up: too many keys ingest has not seen lately asked this second (a
    /// flood of made-up keys must not become a flood of Redis lookups). Retry after this.
    Throttled(std::time::Duration),
}

/// Keys and tenants, from the file and Redis.
pub struct Registry {
    statics: StaticTenants,
    defaults: TenantSettings,
    keys: Keys,
    /// sha256 hex of a key added in Redis → its tenant.
    key_cache: TtlCache<String>,
    /// sha256 hex of keys Redis does not know: apart from the known ones, so a flood of
    /// made-up keys (which fills and clears this one) never evicts a paying tenant's key.
    unknown_key_cache: TtlCache<()>,
    /// Keys Redis said were valid in the last [`SEEN_TTL`]: looked up again without the
    /// limit below, so a flood of made-up keys never locks out a tenant added in Redis.
    seen_keys: TtlCache<()>,
    /// Redis lookups of other keys: at most `lookups_per_s` a second.
    lookups: crate::ratelimit::Limiters,
    lookups_per_s: f64,
    /// A tenant's settings added in Redis.
    tenant_cache: TtlCache<Option<TenantOverrides>>,
}

impl Registry {
    /// `lookups_per_s`: most Redis lookups of not-yet-seen keys a second (0: unlimited).
    pub fn new(
        statics: StaticTenants,
        defaults: TenantSettings,
        keys: Keys,
        lookups_per_s: f64,
    ) -> Self {
        Registry {
            lookups: crate::ratelimit::Limiters::default(),
            seen_keys: TtlCache::new(SEEN_TTL),
            lookups_per_s,
            statics,
            defaults,
            keys,
            key_cache: TtlCache::new(CACHE_TTL),
            unknown_key_cache: TtlCache::new(CACHE_TTL),
            tenant_cache: TtlCache::new(CACHE_TTL),
        }
    }

    /// The tenant an API key belongs to, or `None` for an unknown key.
    pub async fn tenant_for_key(
        &self,
        conn: &mut ConnectionManager,
        key: &str,
    ) -> redis::RedisResult<KeyLookup> {
        if let Some(t) = self.statics.salted_tenant(key) {
            return Ok(KeyLookup::Tenant(t.to_string()));
        }
        let sha = sha256_hex(key.as_bytes());
        if let Some(t) = self.statics.keys.get(&sha) {
            return Ok(KeyLookup::Tenant(t.clone()));
        }
        if let Some(tenant) = self.key_cache.fresh(&sha) {
            return Ok(KeyLookup::Tenant(tenant));
        }
        if self.unknown_key_cache.fresh(&sha).is_some() {
            return Ok(KeyLookup::Unknown);
        }
        let (rate, burst) = (self.lookups_per_s, self.lookups_per_s);
        if self.seen_keys.fresh(&sha).is_none() {
            if let Err(wait) = self.lookups.check("unseen-keys", rate, burst, 1.0) {
                return Ok(KeyLookup::Throttled(wait));
            }
        }
        let found: Option<String> = redis::cmd("GET")
            .arg(self.keys.api_key(&sha))
            .query_async(conn)
            .await?;
        match found.filter(|t| valid_tenant(t)) {
            Some(tenant) => {
                self.seen_keys.insert(sha.clone(), ());
                self.key_cache.insert(sha, tenant.clone());
                Ok(KeyLookup::Tenant(tenant))
            }
            None => {
                self.unknown_key_cache.insert(sha, ());
                Ok(KeyLookup::Unknown)
            }
        }
    }

    /// A tenant's settings, or `None` when the tenant is unknown.
    pub async fn tenant(
        &self,
        conn: &mut ConnectionManager,
        tenant: &str,
    ) -> redis::RedisResult<Option<TenantSettings>> {
        let runtime = match self.tenant_cache.fresh(tenant) {
            Some(o) => o,
            None => {
                let hash: HashMap<String, String> = redis::cmd("HGETALL")
                    .arg(self.keys.tenant(tenant))
                    .query_async(conn)
                    .await?;
                let o = if hash.is_empty() {
                    None
                } else {
                    let (o, problems) = TenantOverrides::from_hash(&hash);
                    for p in problems {
                        tracing::warn!(
                            tenant,
                            key = %self.keys.tenant(tenant),
                            problem = %p,
                            "ignoring a bad tenant setting in Redis"
                        );
                    }
                    Some(o)
                };
                self.tenant_cache.insert(tenant.to_string(), o.clone());
                o
            }
        };
        let file = self.statics.tenants.get(tenant);
        if file.is_none() && runtime.is_none() {
            return Ok(None);
        }
        let mut s = self.defaults;
        if let Some(f) = file {
            s = f.apply(s);
        }
        if let Some(r) = &runtime {
            s = r.apply(s);
        }
        Ok(Some(s))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn defaults() -> TenantSettings {
        TenantSettings {
            rate_per_s: 100.0,
            burst: 200.0,
            budget_mode: BudgetMode::Reject,
            enabled: true,
        }
    }

    #[test]
    fn file_keys_are_hashed_and_tenants_known() {
        let s = StaticTenants::parse(concat!(
            r#"{"keys":[{"key":"k1","tenant":"acme"},"#,
            r#"{"key_sha256":"9F86D081884C7D659A2FEAA0C55AD015A3BF4F1B2B0B822CD15D6C15B0F00A08","#,
            r#""tenant":"beta"}],"#,
            r#""tenants":{"acme":{"rate_per_s":5,"burst":10},"#,
            r#""gamma":{"enabled":false,"budget_mode":"deprioritize"}}}"#,
        ))
        .unwrap();
        assert_eq!(
            s.keys.get(&sha256_hex(b"k1")).map(String::as_str),
            Some("acme")
        );
        assert_eq!(
            s.keys.get(&sha256_hex(b"test")).map(String::as_str),
            Some("beta")
        );
        assert!(s.tenants.contains_key("beta"), "a key's tenant is known");
        let acme = s.tenants["acme"].apply(defaults());
        assert_eq!(
            (acme.rate_per_s, acme.burst, acme.enabled),
            (5.0, 10.0, true)
        );
        let gamma = s.tenants["gamma"].apply(defaults());
        assert_eq!(
            (gamma.enabled, gamma.budget_mode),
            (false, BudgetMode::Deprioritise)
        );
    }

    #[test]
    fn file_errors_say_what_is_wrong() {
        let e = StaticTenants::parse(r#"{"keys":[{"tenant":"acme"}]}"#).unwrap_err();
        assert!(
            format!("{e:#}").contains("keys[0] needs exactly one of"),
            "{e:#}"
        );
        let e =
            StaticTenants::parse(r#"{"keys":[{"key":"x","tenant":"bad tenant"}]}"#).unwrap_err();
        // A salted entry from `aifab keys create` finds its tenant by the key, only.
        let (key, entry) = aifab_core::api_keys::create("acme");
        let file = serde_json::json!({"keys": [entry]}).to_string();
        let s = StaticTenants::parse(&file).unwrap();
        assert_eq!(s.salted_tenant(&key), Some("acme"));
        assert_eq!(s.salted_tenant(&format!("{key}x")), None);
        assert!(
            !file.contains(key.split_once('.').unwrap().1),
            "the file has no secret"
        );
        assert!(
            format!("{e:#}").contains("not a valid tenant name"),
            "{e:#}"
        );
        let e = StaticTenants::parse(r#"{"tenants":{"a":{"rate":1}}}"#).unwrap_err();
        assert!(format!("{e:#}").contains("unknown field `rate`"), "{e:#}");
    }

    #[test]
    fn redis_hash_overrides_parse() {
        let h: HashMap<String, String> = [
            ("rate_per_s", "2.5"),
            ("burst", "0"),
            ("budget_mode", "deprioritise"),
            ("enabled", "0"),
            ("note", "whatever"),
        ]
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        let (o, problems) = TenantOverrides::from_hash(&h);
        assert_eq!(o.rate_per_s, Some(2.5));
        assert_eq!(o.burst, None);
        assert_eq!(o.budget_mode, Some(BudgetMode::Deprioritise));
        assert_eq!(o.enabled, Some(false));
        assert_eq!(problems.len(), 1, "{problems:?}");
    }
}
