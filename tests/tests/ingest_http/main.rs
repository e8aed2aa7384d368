//! The ingest HTTP API against the live stack: every status code it answers (202, 200,
//! 400 naming the field, 401, 403, 404, 409, 413, 422, 429 with Retry-After), idempotency
//! keys, the predictions store by tenant, keys added in Redis at run time, and budget
//! enforcement from NATS (reject vs deprioritise, the priority reaching the inference
//! request). Each test runs its own ingest (and feature) processes on fresh topics and a
//! fresh Redis prefix.

use std::collections::BTreeMap;
use std::time::Duration;

use aifab_core::messages::{encode, tag, Arm, BudgetEvent, BudgetEventKind, Outcome, Prediction};
use aifab_tests::*;
use tokio::process::Child;

// The tests, by theme.
mod status_codes;
mod tenants;
mod undecided_writes;

struct Run {
    uid: String,
    raw: String,
    features: String,
    inference: String,
    training: String,
    predictions: String,
    dlq: String,
    prefix: String,
    dir: tempfile::TempDir,
}

impl Run {
    /// The features topic, read to its end, holds `requests` ids, each exactly once.
    async fn assert_each_written_once(&self, requests: usize, context: &str) {
        let mut features = TopicReader::new(&self.features);
        features
            .read_until(Duration::from_secs(60), "every request's record", |r| {
                r.len() >= requests
            })
            .await;
        features.read_to_end(Duration::from_secs(10)).await;
        let mut per_id: BTreeMap<String, usize> = BTreeMap::new();
        for r in &features.records {
            *per_id.entry(r.key_str()).or_default() += 1;
        }
        let not_once: Vec<_> = per_id.iter().filter(|(_, &n)| n != 1).collect();
        assert!(
            not_once.is_empty(),
            "ids written more than once: {not_once:?} ({context})"
        );
        assert_eq!(
            per_id.len(),
            requests,
            "every request written once ({context})"
        );
    }

    async fn new() -> Self {
        let id = unique("ingest-http");
        let uid = id.rsplit('.').next().unwrap().to_string();
        let run = Run {
            raw: format!("{id}.raw"),
            features: format!("{id}.features"),
            inference: format!("{id}.inference"),
            training: format!("{id}.training"),
            predictions: format!("{id}.predictions"),
            dlq: format!("{id}.dlq"),
            prefix: id.clone(),
            uid,
            dir: tempfile::tempdir().unwrap(),
        };
        for (t, p) in [
            (&run.raw, 2),
            (&run.features, 2),
            (&run.inference, 2),
            (&run.training, 1),
            (&run.predictions, 2),
            (&run.dlq, 1),
        ] {
            create_topic(t, p).await;
        }
        let keys = serde_json::json!({
            "keys": [
                {"key": "key-acme", "tenant": "acme"},
                {"key": "key-beta", "tenant": "beta"},
                {"key": "key-gamma", "tenant": "gamma"},
                {"key": "key-slow", "tenant": "slow"},
                {"key": "key-over", "tenant": run.over()},
                {"key": "key-low", "tenant": run.low()},
            ],
            "tenants": {
                "gamma": {"enabled": false},
                "slow": {"rate_per_s": 0.5, "burst": 2},
                run.over(): {"budget_mode": "reject"},
                run.low(): {"budget_mode": "deprioritise"},
            }
        });
        std::fs::write(run.dir.path().join("keys.json"), keys.to_string()).unwrap();
        run
    }

    fn over(&self) -> String {
        format!("over-{}", self.uid)
    }
    fn low(&self) -> String {
        format!("low-{}", self.uid)
    }

    fn env(&self) -> Vec<(&'static str, String)> {
        vec![
            ("AIFAB_RAW_TOPIC", self.raw.clone()),
            ("AIFAB_FEATURES_TOPIC", self.features.clone()),
            ("AIFAB_INFERENCE_TOPIC", self.inference.clone()),
            ("AIFAB_TRAINING_TOPIC", self.training.clone()),
            ("AIFAB_PREDICTIONS_TOPIC", self.predictions.clone()),
            ("AIFAB_DLQ_TOPIC", self.dlq.clone()),
            ("AIFAB_REDIS_PREFIX", self.prefix.clone()),
            ("AIFAB_INGEST_GROUP", format!("{}.ingest", self.prefix)),
            (
                "AIFAB_INGEST_PREDICTIONS_GROUP",
                format!("{}.ingest-predictions", self.prefix),
            ),
            ("AIFAB_FEATURE_GROUP", format!("{}.feature", self.prefix)),
            (
                "AIFAB_FEATURE_CACHE_GROUP",
                format!("{}.feature-cache", self.prefix),
            ),
            (
                "AIFAB_API_KEYS_FILE",
                self.dir.path().join("keys.json").display().to_string(),
            ),
            ("AIFAB_TASK_LABELS", "sms_spam=ham,spam".into()),
            ("AIFAB_MAX_BODY_BYTES", "4096".into()),
            ("AIFAB_MAX_BATCH_ITEMS", "5".into()),
        ]
    }

    async fn ingest(&self) -> (Child, String) {
        let (child, addr) = spawn_service("ingest", &self.env());
        wait_ready(&addr, "ingest").await;
        (child, addr)
    }

    /// Ingest with a 3 ms produce timeout: many POSTs time out, before their records are
    /// taken into a transaction or while it commits.
    async fn ingest_timing_out(&self) -> (Child, String) {
        let mut env = self.env();
        env.push(("AIFAB_PRODUCE_TIMEOUT_MS", "3".into()));
        let (child, addr) = spawn_service("ingest", &env);
        wait_ready(&addr, "ingest").await;
        (child, addr)
    }

    async fn feature(&self) -> (Child, String) {
        let model = self.dir.path().join("tiny");
        aifab_model::testing::write_tiny_bert(&model, 3).unwrap();
        let mut env = self.env();
        env.push(("AIFAB_MODEL_DIR", model.display().to_string()));
        env.push(("AIFAB_MAX_TOKENS", "32".into()));
        let (child, addr) = spawn_service("feature", &env);
        wait_ready(&addr, "feature").await;
        (child, addr)
    }

    async fn cleanup(&self) {
        for t in [
            &self.raw,
            &self.features,
            &self.inference,
            &self.training,
            &self.predictions,
            &self.dlq,
        ] {
            delete_topic(t).await;
        }
    }
}

async fn post(
    addr: &str,
    path: &str,
    key: Option<&str>,
    body: &str,
    extra: &[(&str, &str)],
) -> HttpResponse {
    let auth = key.map(|k| format!("Bearer {k}"));
    let mut headers: Vec<(&str, &str)> = vec![("Content-Type", "application/json")];
    if let Some(a) = &auth {
        headers.push(("Authorization", a));
    }
    headers.extend_from_slice(extra);
    http_request(addr, "POST", path, &headers, body.as_bytes())
        .await
        .expect("POST")
}

async fn get(addr: &str, path: &str, key: Option<&str>) -> HttpResponse {
    let auth = key.map(|k| format!("Bearer {k}"));
    let headers: Vec<(&str, &str)> = auth.iter().map(|a| ("Authorization", a.as_str())).collect();
    http_request(addr, "GET", path, &headers, b"")
        .await
        .expect("GET")
}

#[track_caller]
fn expect_error(r: &HttpResponse, status: u16, kind: &str, reason_has: &str) {
    assert_eq!(r.status, status, "{kind}: {}", r.body);
    let v = r.json();
    assert_eq!(v["error"], kind, "{}", r.body);
    let reason = v["reason"].as_str().unwrap();
    assert!(
        reason.contains(reason_has),
        "reason {reason:?} lacks {reason_has:?}"
    );
}

/// The sha256 of a key, as an operator computes it (`printf %s "$KEY" | sha256sum`).
fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::Digest;
    format!("{:x}", sha2::Sha256::digest(bytes))
}
