//! The model registry: versioned artifacts in an object store, metadata and aliases in
//! Redis. The trainer writes it; workers and the CLI read it.
//!
//! Redis layout (all keys under `aifab:registry:<task>:`):
//!
//! | key | type | holds |
//! |---|---|---|
//! | `seq` | string (INCR) | last version number issued (`v<n>`) |
//! | `versions` | sorted set | version names scored by creation time (ms) |
//! | `version:<v>` | string | the [`ModelRecord`] as JSON |
//! | `alias:<alias>` | string | the version an alias (`production`, `candidate`) points to |
//! | `history:production` | list | earlier production versions, newest first (rollback) |
//! | `rollout` | string | the candidate's [`Rollout`] as JSON |
//!
//! Artifacts live at `<artifact root>/<task>/<version>/` (`head.safetensors`,
//! `labels.json`, `metrics.json`, `manifest.json`); `artifact_uri` names that directory.

use std::collections::BTreeMap;

use redis::aio::ConnectionManager;
use redis::AsyncCommands;
use serde::{Deserialize, Serialize};

pub const PRODUCTION: &str = "production";
pub const CANDIDATE: &str = "candidate";

/// Everything the registry knows about one version.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelRecord {
    pub task: String,
    pub version: String,
    /// Directory (`file:///...`) or object-store URL of the artifact.
    pub artifact_uri: String,
    /// The encoder it was trained on (model dir name) and its weights' SHA-256.
    pub encoder: String,
    pub encoder_sha256: String,
    /// SHA-256 of the served files ([`crate::artifacts::files_sha256`]): a worker serves
    /// the version only if the files it fetched have this digest. Absent on records
    /// written before digests were kept (workers refuse those unless told otherwise).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub artifact_sha256: Option<String>,
    pub labels: Vec<String>,
    /// Headline metrics: accuracy, macro_f1, ...
    pub metrics: BTreeMap<String, f64>,
    pub train_examples: usize,
    pub eval_examples: usize,
    pub created_at_ms: i64,
}

/// How the candidate takes traffic.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(tag = "mode", rename_all = "snake_case")]
pub enum Rollout {
    /// Not served.
    Off,
    /// Serves this share (0..=1) of requests, chosen by a stable hash of the request id.
    Canary { share: f64 },
    /// Computed for every request and recorded, never served.
    Shadow,
}

/// Whether a candidate may become production.
#[derive(Debug, Clone, PartialEq)]
pub enum GateDecision {
    Promote { reason: String },
    Reject { reason: String },
}

/// The promotion gate: macro-F1 at least production's minus `tolerance`, or at least
/// `floor` for a task's first model.
pub fn promotion_gate(
    candidate_f1: f64,
    production_f1: Option<f64>,
    tolerance: f64,
    floor: f64,
) -> GateDecision {
    match production_f1 {
        Some(p) if candidate_f1 + 1e-12 >= p - tolerance => GateDecision::Promote {
            reason: format!(
                "macro_f1 {candidate_f1:.4} >= production {p:.4} - tolerance {tolerance}"
            ),
        },
        Some(p) => GateDecision::Reject {
            reason: format!(
                "macro_f1 {candidate_f1:.4} < production {p:.4} - tolerance {tolerance}"
            ),
        },
        None if candidate_f1 + 1e-12 >= floor => GateDecision::Promote {
            reason: format!("first model: macro_f1 {candidate_f1:.4} >= floor {floor}"),
        },
        None => GateDecision::Reject {
            reason: format!("first model: macro_f1 {candidate_f1:.4} < floor {floor}"),
        },
    }
}

/// Which arm a request goes to under a rollout: stable in the request id, so a retried
/// request lands on the same arm.
pub fn canary_arm(request_id: &str, share: f64) -> bool {
    // FNV-1a: stable across processes and versions (std's hasher is not).
    let mut h: u64 = 0xcbf29ce484222325;
    for b in request_id.as_bytes() {
        h ^= *b as u64;
        h = h.wrapping_mul(0x100000001b3);
    }
    (h % 10_000) as f64 / 10_000.0 < share
}

fn key(task: &str, rest: &str) -> String {
    format!("aifab:registry:{task}:{rest}")
}

/// Registry reads and writes over a Redis connection.
#[derive(Clone)]
pub struct Registry {
    conn: ConnectionManager,
}

impl Registry {
    pub fn new(conn: ConnectionManager) -> Self {
        Registry { conn }
    }

    /// Reserve the next version name for a task.
    pub async fn next_version(&mut self, task: &str) -> redis::RedisResult<String> {
        let n: u64 = self.conn.incr(key(task, "seq"), 1).await?;
        Ok(format!("v{n}"))
    }

    pub async fn put(&mut self, record: &ModelRecord) -> redis::RedisResult<()> {
        let json = serde_json::to_string(record).expect("record serializes");
        redis::pipe()
            .atomic()
            .set(
                key(&record.task, &format!("version:{}", record.version)),
                json,
            )
            .zadd(
                key(&record.task, "versions"),
                &record.version,
                record.created_at_ms,
            )
            .query_async::<()>(&mut self.conn)
            .await
    }

    pub async fn get(
        &mut self,
        task: &str,
        version: &str,
    ) -> redis::RedisResult<Option<ModelRecord>> {
        let json: Option<String> = self
            .conn
            .get(key(task, &format!("version:{version}")))
            .await?;
        Ok(json.and_then(|j| serde_json::from_str(&j).ok()))
    }

    /// Every version of a task, oldest first.
    pub async fn list(&mut self, task: &str) -> redis::RedisResult<Vec<ModelRecord>> {
        let versions: Vec<String> = self.conn.zrange(key(task, "versions"), 0, -1).await?;
        let mut out = Vec::new();
        for v in versions {
            if let Some(r) = self.get(task, &v).await? {
                out.push(r);
            }
        }
        Ok(out)
    }

    /// Tasks that have at least one version.
    pub async fn tasks(&mut self) -> redis::RedisResult<Vec<String>> {
        let keys: Vec<String> = self.conn.keys("aifab:registry:*:versions").await?;
        let mut tasks: Vec<String> = keys
            .iter()
            .filter_map(|k| {
                k.strip_prefix("aifab:registry:")?
                    .strip_suffix(":versions")
                    .map(String::from)
            })
            .collect();
        tasks.sort();
        Ok(tasks)
    }

    pub async fn alias(&mut self, task: &str, alias: &str) -> redis::RedisResult<Option<String>> {
        self.conn.get(key(task, &format!("alias:{alias}"))).await
    }

    /// The record an alias points to.
    pub async fn resolve(
        &mut self,
        task: &str,
        alias: &str,
    ) -> redis::RedisResult<Option<ModelRecord>> {
        match self.alias(task, alias).await? {
            Some(v) => self.get(task, &v).await,
            None => Ok(None),
        }
    }

    /// Point `production` at `version`, remembering the previous one for rollback.
    pub async fn set_production(
        &mut self,
        task: &str,
        version: &str,
    ) -> redis::RedisResult<Option<String>> {
        let previous = self.alias(task, PRODUCTION).await?;
        let mut pipe = redis::pipe();
        pipe.atomic()
            .set(key(task, &format!("alias:{PRODUCTION}")), version);
        if let Some(p) = previous.as_deref().filter(|p| *p != version) {
            pipe.lpush(key(task, "history:production"), p);
        }
        pipe.query_async::<()>(&mut self.conn).await?;
        Ok(previous)
    }

    pub async fn set_candidate(&mut self, task: &str, version: &str) -> redis::RedisResult<()> {
        self.conn
            .set(key(task, &format!("alias:{CANDIDATE}")), version)
            .await
    }

    /// The version a rollback without `--to` would go back to (nothing changes).
    pub async fn previous_production(&mut self, task: &str) -> redis::RedisResult<Option<String>> {
        self.conn.lindex(key(task, "history:production"), 0).await
    }

    /// Point `production` back at `version`, atomically. With `from_history`, only while
    /// `version` is the last production version remembered, and it is taken off the
    /// history (the next rollback goes one further back). `false`: another change got
    /// there first and nothing was changed.
    pub async fn rollback_to(
        &mut self,
        task: &str,
        version: &str,
        from_history: bool,
    ) -> redis::RedisResult<bool> {
        // One script: between reading the history and moving the alias, another rollback
        // must not pop the same entry (production would move without being announced).
        let script = redis::Script::new(
            r"if ARGV[2] == '1' then
                if redis.call('LINDEX', KEYS[2], 0) ~= ARGV[1] then return 0 end
                redis.call('LPOP', KEYS[2])
              end
              redis.call('SET', KEYS[1], ARGV[1])
              return 1",
        );
        let done: i32 = script
            .key(key(task, &format!("alias:{PRODUCTION}")))
            .key(key(task, "history:production"))
            .arg(version)
            .arg(if from_history { "1" } else { "0" })
            .invoke_async(&mut self.conn)
            .await?;
        Ok(done == 1)
    }

    pub async fn rollout(&mut self, task: &str) -> redis::RedisResult<Rollout> {
        let json: Option<String> = self.conn.get(key(task, "rollout")).await?;
        Ok(json
            .and_then(|j| serde_json::from_str(&j).ok())
            .unwrap_or(Rollout::Off))
    }

    pub async fn set_rollout(&mut self, task: &str, rollout: Rollout) -> redis::RedisResult<()> {
        self.conn
            .set(
                key(task, "rollout"),
                serde_json::to_string(&rollout).expect("rollout serializes"),
            )
            .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gate_compares_with_production_or_floor() {
        assert!(matches!(
            promotion_gate(0.95, Some(0.96), 0.02, 0.5),
            GateDecision::Promote { .. }
        ));
        assert!(matches!(
            promotion_gate(0.93, Some(0.96), 0.02, 0.5),
            GateDecision::Reject { .. }
        ));
        assert!(matches!(
            promotion_gate(0.6, None, 0.02, 0.5),
            GateDecision::Promote { .. }
        ));
        match promotion_gate(0.4, None, 0.02, 0.5) {
            GateDecision::Reject { reason } => assert!(reason.contains("floor"), "{reason}"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn canary_split_is_stable_and_close_to_the_share() {
        let ids: Vec<String> = (0..20_000).map(|i| format!("req-{i}")).collect();
        let hits = ids.iter().filter(|id| canary_arm(id, 0.1)).count();
        assert!((1700..2300).contains(&hits), "{hits} of 20000 at share 0.1");
        assert!(ids
            .iter()
            .all(|id| canary_arm(id, 0.1) == canary_arm(id, 0.1)));
        assert!(!ids.iter().any(|id| canary_arm(id, 0.0)));
        assert!(ids.iter().all(|id| canary_arm(id, 1.0)));
    }

    #[test]
    fn rollout_json_shape() {
        let j = serde_json::to_string(&Rollout::Canary { share: 0.25 }).unwrap();
        assert_eq!(j, r#"{"mode":"canary","share":0.25}"#);
        assert_eq!(
            serde_json::from_str::<Rollout>(r#"{"mode":"shadow"}"#).unwrap(),
            Rollout::Shadow
        );
    }
}
