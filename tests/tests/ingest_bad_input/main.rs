//! Bad input through ingest and feature over Kafka and HTTP: 1,000 valid
//! and 1,000 invalid messages over 18 kinds of bad input. Every valid message reaches its
//! next topic (`features.in`) exactly once and the one after it (inference requests or
//! training examples) exactly once; every invalid one is in the DLQ exactly once with
//! the right `error_kind` and a reason naming the field (Kafka ones with their source
//! partition and offset, HTTP ones with the body as sent); both services keep running.
//!
//! - `kafka_input`: the records produced to the raw topic, valid and invalid.
//! - `http_input`: the requests posted to ingest, valid and refused.
//! - `outcome`: what must come out: each valid message forwarded once, each invalid one
//!   dead-lettered once with its reason.

mod http_input;
mod kafka_input;
mod outcome;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::Duration;

use aifab_core::messages::{decode, DeadLetter};
use aifab_tests::*;
use futures::StreamExt as _;
use serde_json::json;

struct Topics {
    raw: String,
    features: String,
    inference: String,
    training: String,
    predictions: String,
    dlq: String,
    prefix: String,
}

impl Topics {
    fn all(&self) -> [&String; 6] {
        [
            &self.raw,
            &self.features,
            &self.inference,
            &self.training,
            &self.predictions,
            &self.dlq,
        ]
    }
}

/// An invalid input and what its dead letter must say.
struct Expect {
    kind: &'static str,
    reason: String,
}

/// An HTTP request ingest must refuse, and how.
struct BadRequest {
    /// The API key sent, if any.
    key: Option<&'static str>,
    path: &'static str,
    /// Holds a `~kind~n~` marker that finds its dead letter.
    body: String,
    status: u16,
    kind: &'static str,
    reason: String,
}

/// What the test sent, and so what must come out.
#[derive(Default)]
struct Sent {
    /// Each valid message by its identity (its id, or the marker in an id-less one's
    /// text), and whether it is labelled (a training example).
    valid_labelled: BTreeMap<String, bool>,
    /// Invalid Kafka records, by index.
    kafka_expect: Vec<Expect>,
    /// Where each invalid Kafka record landed: (partition, offset) → (its index in
    /// `kafka_expect`, the key it was produced with).
    kafka_dlq_expect: HashMap<(i32, i64), (usize, Option<String>)>,
    http_bad: Vec<BadRequest>,
}

/// A marker for bad request `i` of a kind, put in its body.
fn marker(kind: &str, i: usize) -> String {
    format!("~{kind}~{i}~")
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

/// The `~kind~n~` marker in a test body.
fn marker_of(body: &str) -> String {
    let start = body.find('~').expect("a marker");
    let rest = &body[start + 1..];
    let a = rest.find('~').unwrap();
    let b = rest[a + 1..].find('~').unwrap();
    body[start..start + 1 + a + 1 + b + 1].to_string()
}

#[test]
fn markers_are_found() {
    assert_eq!(marker_of(r#"{"text":"~nokey~12~"}"#), "~nokey~12~");
    assert_eq!(marker_of(r#"{"text":"~big~3~ 7"}"#), "~big~3~");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_valid_and_a_thousand_invalid_messages_over_kafka_and_http() {
    let id = unique("ingest-bad");
    let t = Topics {
        raw: format!("{id}.raw"),
        features: format!("{id}.features"),
        inference: format!("{id}.inference"),
        training: format!("{id}.training"),
        predictions: format!("{id}.predictions"),
        dlq: format!("{id}.dlq"),
        prefix: id.clone(),
    };
    for (name, p) in [
        (&t.raw, 4),
        (&t.features, 4),
        (&t.inference, 4),
        (&t.training, 2),
        (&t.predictions, 2),
        (&t.dlq, 1),
    ] {
        create_topic(name, p).await;
    }
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("keys.json"),
        json!({"keys": [
            {"key": "key-acme", "tenant": "acme"},
            {"key": "key-beta", "tenant": "beta"},
        ]})
        .to_string(),
    )
    .unwrap();
    aifab_model::testing::write_tiny_bert(dir.path().join("tiny"), 5).unwrap();
    let env: Vec<(&str, String)> = vec![
        ("AIFAB_RAW_TOPIC", t.raw.clone()),
        ("AIFAB_FEATURES_TOPIC", t.features.clone()),
        ("AIFAB_INFERENCE_TOPIC", t.inference.clone()),
        ("AIFAB_TRAINING_TOPIC", t.training.clone()),
        ("AIFAB_PREDICTIONS_TOPIC", t.predictions.clone()),
        ("AIFAB_DLQ_TOPIC", t.dlq.clone()),
        ("AIFAB_REDIS_PREFIX", t.prefix.clone()),
        ("AIFAB_INGEST_GROUP", format!("{id}.ingest")),
        (
            "AIFAB_INGEST_PREDICTIONS_GROUP",
            format!("{id}.ingest-predictions"),
        ),
        ("AIFAB_FEATURE_GROUP", format!("{id}.feature")),
        ("AIFAB_FEATURE_CACHE_GROUP", format!("{id}.feature-cache")),
        (
            "AIFAB_API_KEYS_FILE",
            dir.path().join("keys.json").display().to_string(),
        ),
        ("AIFAB_TASK_LABELS", "sms_spam=ham,spam".into()),
        ("AIFAB_MAX_BATCH_ITEMS", "10".into()),
        (
            "AIFAB_MODEL_DIR",
            dir.path().join("tiny").display().to_string(),
        ),
        ("AIFAB_MAX_TOKENS", "32".into()),
        // One dead letter per kind of unauthenticated request for the whole test.
        (
            "AIFAB_UNAUTHENTICATED_DEAD_LETTER_EVERY_MS",
            "3600000".into(),
        ),
    ];
    let (mut ingest, ingest_addr) = spawn_service("ingest", &env);
    let (mut feature, feature_addr) = spawn_service("feature", &env);
    wait_ready(&ingest_addr, "ingest").await;
    wait_ready(&feature_addr, "feature").await;

    let mut sent = Sent::default();
    kafka_input::produce_mixed(&t, &mut sent).await;
    http_input::post_all(&ingest_addr, &mut sent).await;
    // Duplicates, after their originals were accepted.
    kafka_input::produce_duplicates(&t, &mut sent).await;
    http_input::post_duplicates(&ingest_addr, &mut sent).await;
    assert_eq!(
        sent.kafka_expect.len() + sent.http_bad.len(),
        1000,
        "1,000 invalid messages"
    );
    let kinds: BTreeSet<&str> = sent
        .kafka_expect
        .iter()
        .map(|e| e.kind)
        .chain(sent.http_bad.iter().map(|b| b.kind))
        .collect();
    assert!(kinds.len() >= 12, "kinds of bad input: {kinds:?}");

    outcome::every_valid_one_forwarded_once(&t, &sent).await;
    outcome::every_invalid_one_dead_lettered_once(&t, &sent).await;

    // ------------------------------------------------------------ both services still running
    for (child, addr, name) in [
        (&mut ingest, &ingest_addr, "ingest"),
        (&mut feature, &feature_addr, "feature"),
    ] {
        assert!(child.try_wait().unwrap().is_none(), "{name} exited");
        assert_eq!(
            http_get(addr, "/healthz").await.unwrap().0,
            200,
            "{name} /healthz"
        );
        assert_eq!(
            http_get(addr, "/readyz").await.unwrap().0,
            200,
            "{name} /readyz"
        );
    }
    let (_, metrics) = http_get(&ingest_addr, "/metrics").await.unwrap();
    assert!(
        metrics.contains("aifab_ingest_dead_letters_total"),
        "{metrics}"
    );
    // Every stranger counted, though only a sample was dead-lettered.
    for kind in ["bad_api_key", "missing_api_key"] {
        let sent_kind = sent.http_bad.iter().filter(|b| b.kind == kind).count();
        let counted = metric(
            &metrics,
            &format!("aifab_ingest_http_unauthenticated_total{{kind=\"{kind}\"}}"),
        );
        assert_eq!(counted, Some(sent_kind as f64), "{kind}");
    }
    for name in t.all() {
        delete_topic(name).await;
    }
}
