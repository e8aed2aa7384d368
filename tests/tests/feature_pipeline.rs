//! The feature service against the live stack with the tiny test tokenizer: tokenization
//! with truncation recorded and token counts, training examples, the priority header,
//! dead letters for records it cannot use, per-tenant online features in Redis, and the
//! dedupe cache answering a repeated text without inference.

use std::collections::HashMap;
use std::time::Duration;

use aifab_core::messages::{
    decode, encode, tag, Arm, DeadLetter, InferenceRequest, Outcome, Prediction, TrainingExample,
    Truncation,
};
use aifab_tests::*;
use serde_json::json;
use tokio::process::Child;

struct Run {
    features: String,
    inference: String,
    training: String,
    predictions: String,
    dlq: String,
    prefix: String,
    _dir: tempfile::TempDir,
    model: std::path::PathBuf,
}

impl Run {
    async fn new() -> Self {
        let id = unique("feature");
        let dir = tempfile::tempdir().unwrap();
        let model = dir.path().join("tiny");
        aifab_model::testing::write_tiny_bert(&model, 11).unwrap();
        let run = Run {
            features: format!("{id}.features"),
            inference: format!("{id}.inference"),
            training: format!("{id}.training"),
            predictions: format!("{id}.predictions"),
            dlq: format!("{id}.dlq"),
            prefix: id,
            _dir: dir,
            model,
        };
        for (t, p) in [
            (&run.features, 2),
            (&run.inference, 2),
            (&run.training, 1),
            (&run.predictions, 2),
            (&run.dlq, 1),
        ] {
            create_topic(t, p).await;
        }
        run
    }

    async fn feature(&self, extra: &[(&'static str, &str)]) -> (Child, String) {
        let mut env: Vec<(&str, String)> = vec![
            ("AIFAB_FEATURES_TOPIC", self.features.clone()),
            ("AIFAB_INFERENCE_TOPIC", self.inference.clone()),
            ("AIFAB_TRAINING_TOPIC", self.training.clone()),
            ("AIFAB_PREDICTIONS_TOPIC", self.predictions.clone()),
            ("AIFAB_DLQ_TOPIC", self.dlq.clone()),
            ("AIFAB_REDIS_PREFIX", self.prefix.clone()),
            ("AIFAB_FEATURE_GROUP", format!("{}.feature", self.prefix)),
            (
                "AIFAB_FEATURE_CACHE_GROUP",
                format!("{}.feature-cache", self.prefix),
            ),
            ("AIFAB_MODEL_DIR", self.model.display().to_string()),
        ];
        for (k, v) in extra {
            env.push((k, v.to_string()));
        }
        let (child, addr) = spawn_service("feature", &env);
        wait_ready(&addr, "feature").await;
        (child, addr)
    }

    async fn cleanup(&self) {
        for t in [
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

/// A record as ingest writes it to the features topic.
fn accepted(
    id: &str,
    tenant: &str,
    text: &str,
    extra: serde_json::Value,
) -> (Option<String>, Vec<u8>, Vec<(String, String)>) {
    let mut v = json!({
        "schema": "ingest.raw/v1",
        "id": id,
        "tenant": tenant,
        "text": text,
        "received_at_ms": aifab_core::now_ms(),
    });
    for (k, x) in extra.as_object().unwrap() {
        v[k] = x.clone();
    }
    (
        Some(id.to_string()),
        serde_json::to_vec(&v).unwrap(),
        vec![("tenant".into(), tenant.into())],
    )
}

async fn redis_conn() -> redis::aio::MultiplexedConnection {
    redis::Client::open(redis_url())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokenizes_with_truncation_counts_tokens_and_keeps_online_features() {
    let run = Run::new().await;
    let (mut feature, addr) = run
        .feature(&[("AIFAB_MAX_TOKENS", "12"), ("AIFAB_TRUNCATION", "head")])
        .await;
    let long = "the quick brown fox jumps over the lazy dog and the cat sat on the mat";
    let mut prio = accepted("f-prio", "t1", "hello world", json!({}));
    prio.2.push(("priority".into(), "9".into()));
    let mut records = vec![
        accepted(
            "f-short",
            "t1",
            "the cat sat",
            json!({"task": "sms_spam", "deadline_ms": 750, "attributes": {"channel": "web"}}),
        ),
        accepted("f-long", "t1", long, json!({})),
        accepted(
            "f-label",
            "t2",
            "a good film",
            json!({"task": "sms_spam", "label": "ham"}),
        ),
        prio,
        (Some("g-1".into()), b"{nope".to_vec(), vec![]),
        (
            Some("g-2".into()),
            br#"{"schema":"ingest.raw/v1","tenant":"t1","text":"no id","received_at_ms":1}"#
                .to_vec(),
            vec![],
        ),
        (
            Some("g-3".into()),
            br#"{"schema":"ingest.raw/v1","id":"g-3","tenant":"t1","text":"no time"}"#.to_vec(),
            vec![],
        ),
    ];
    records.push(accepted("f-after", "t2", "the dog", json!({})));
    produce_raw(&run.features, &records).await;

    let mut inference = TopicReader::new(&run.inference);
    inference
        .read_until(Duration::from_secs(60), "4 inference requests", |r| {
            r.len() >= 4
        })
        .await;
    inference.read_to_end(Duration::from_secs(30)).await;
    let reqs: HashMap<String, InferenceRequest> = inference
        .records
        .iter()
        .map(|r| (r.key_str(), decode::<InferenceRequest>(&r.payload).unwrap()))
        .collect();
    assert_eq!(reqs.len(), 4, "{:?}", reqs.keys());
    let short = &reqs["f-short"];
    assert_eq!(
        (short.token_count, short.truncation),
        (5, Truncation::None),
        "[CLS] the cat sat [SEP]"
    );
    assert_eq!((short.input_ids[0], short.input_ids[4]), (2, 3));
    assert_eq!(
        (short.task.as_str(), short.deadline_ms, short.priority),
        ("sms_spam", Some(750), 0)
    );
    assert_eq!(
        short.attributes.get("channel").map(String::as_str),
        Some("web")
    );
    let long_req = &reqs["f-long"];
    assert_eq!(
        (
            long_req.token_count,
            long_req.input_ids.len(),
            long_req.truncation
        ),
        (12, 12, Truncation::Head)
    );
    assert_eq!(long_req.task, "default");
    let full = aifab_model::TextTokenizer::from_file(&run.model, 64)
        .unwrap()
        .encode(long)
        .unwrap()
        .ids;
    assert!(full.len() > 12);
    assert_eq!(
        long_req.input_ids[..11],
        full[..11],
        "head: the start of the text is kept"
    );
    assert_eq!(
        *long_req.input_ids.last().unwrap(),
        3,
        "[SEP] kept after truncation"
    );
    assert_eq!(
        reqs["f-prio"].priority, 9,
        "the priority header becomes the request's priority"
    );
    assert!(inference
        .records
        .iter()
        .all(|r| r.header("tenant").is_some()));

    let mut training = TopicReader::new(&run.training);
    training
        .read_until(Duration::from_secs(30), "1 training example", |r| {
            !r.is_empty()
        })
        .await;
    let ex: TrainingExample = decode(&training.records[0].payload).unwrap();
    assert_eq!(
        (
            ex.id.as_str(),
            ex.label.as_str(),
            ex.tenant.as_str(),
            ex.task.as_str()
        ),
        ("f-label", "ham", "t2", "sms_spam")
    );

    let mut dlq = TopicReader::new(&run.dlq);
    dlq.read_until(Duration::from_secs(30), "3 dead letters", |r| r.len() >= 3)
        .await;
    let mut got: Vec<(String, String, String)> = dlq
        .records
        .iter()
        .map(|r| {
            let dl: DeadLetter = decode(&r.payload).unwrap();
            assert_eq!(dl.stage, "feature");
            assert_eq!(dl.source.as_ref().unwrap().topic, run.features);
            (r.key_str(), dl.error_kind, dl.reason)
        })
        .collect();
    got.sort();
    assert_eq!((got[0].0.as_str(), got[0].1.as_str()), ("g-1", "not_json"));
    assert_eq!(
        (got[1].0.as_str(), got[1].1.as_str()),
        ("g-2", "missing_field")
    );
    assert!(got[1].2.contains(r#"missing field "id""#), "{}", got[1].2);
    assert!(
        got[2].2.contains(r#"missing field "received_at_ms""#),
        "{}",
        got[2].2
    );

    // Online features, written once the batch committed.
    let mut conn = redis_conn().await;
    let key = format!("{}:feature:tenant:t1", run.prefix);
    let t1: HashMap<String, i64> =
        eventually(Duration::from_secs(20), "t1's online features", || {
            let (mut conn, key) = (conn.clone(), key.clone());
            async move {
                let h: HashMap<String, i64> = redis::cmd("HGETALL")
                    .arg(&key)
                    .query_async(&mut conn)
                    .await
                    .ok()?;
                (h.get("requests") == Some(&3)).then_some(h)
            }
        })
        .await;
    let tokens: i64 = ["f-short", "f-long", "f-prio"]
        .iter()
        .map(|k| reqs[*k].token_count as i64)
        .sum();
    assert_eq!(t1["tokens"], tokens);
    assert_eq!(t1["truncated"], 1);
    assert!(
        t1["last_seen_ms"] > 0
            && t1["first_seen_ms"] > 0
            && t1["first_seen_ms"] <= t1["last_seen_ms"]
    );
    let t2: HashMap<String, i64> = redis::cmd("HGETALL")
        .arg(format!("{}:feature:tenant:t2", run.prefix))
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(
        (t2.get("examples"), t2.get("requests")),
        (Some(&1), Some(&1)),
        "{t2:?}"
    );
    let minute = t1["last_seen_ms"] / 60_000;
    let m: HashMap<String, i64> = redis::cmd("HGETALL")
        .arg(format!("{}:feature:tenant:t1:minute:{minute}", run.prefix))
        .query_async(&mut conn)
        .await
        .unwrap();
    assert!(m.get("requests").is_some_and(|n| *n >= 1), "{m:?}");

    assert!(feature.try_wait().unwrap().is_none(), "still running");
    assert_eq!(http_get(&addr, "/healthz").await.unwrap().0, 200);
    sigterm(&feature);
    let status = tokio::time::timeout(Duration::from_secs(30), feature.wait())
        .await
        .expect("exits")
        .unwrap();
    assert!(status.success(), "SIGTERM exit: {status}");
    run.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_repeated_text_is_answered_from_the_cache_without_inference() {
    let run = Run::new().await;
    let (_feature, addr) = run.feature(&[("AIFAB_DEDUPE_TTL_S", "120")]).await;
    let text = "what a great movie";
    produce_raw(
        &run.features,
        &[accepted("d-1", "acme", text, json!({"task": "sms_spam"}))],
    )
    .await;

    // A stand-in worker answers d-1.
    let mut inference = TopicReader::new(&run.inference);
    inference
        .read_until(Duration::from_secs(60), "d-1 sent to inference", |r| {
            r.iter().any(|x| x.key_str() == "d-1")
        })
        .await;
    let computed = Prediction {
        schema: tag(),
        id: "d-1".into(),
        tenant: "acme".into(),
        task: "sms_spam".into(),
        outcome: Outcome::Ok,
        label: Some("ham".into()),
        scores: [("ham".to_string(), 0.7f32), ("spam".to_string(), 0.3)].into(),
        model_version: "v4".into(),
        arm: Arm::Production,
        batch_id: Some("w-9".into()),
        batch_size: 4,
        queue_ms: 2.0,
        compute_ms: 9.0,
        received_at_ms: aifab_core::now_ms(),
        produced_at_ms: aifab_core::now_ms(),
        worker: "worker-a".into(),
    };
    // Like the real worker, it copies the request's headers (the dedupe key among them).
    let request = inference
        .records
        .iter()
        .find(|x| x.key_str() == "d-1")
        .unwrap();
    assert!(
        request.header("dedupe-key").is_some_and(|h| h.len() == 64),
        "{:?}",
        request.headers
    );
    let headers: Vec<(String, String)> = request
        .headers
        .iter()
        .map(|(k, v)| (k.clone(), String::from_utf8_lossy(v).to_string()))
        .collect();
    produce_raw(
        &run.predictions,
        &[(Some("d-1".into()), encode(&computed), headers)],
    )
    .await;

    // The cache filler stores it under the text's hash.
    let mut conn = redis_conn().await;
    let pattern = format!("{}:feature:dedupe:*", run.prefix);
    eventually(Duration::from_secs(30), "the cache entry", || {
        let (mut conn, pattern) = (conn.clone(), pattern.clone());
        async move {
            let keys: Vec<String> = redis::cmd("KEYS")
                .arg(&pattern)
                .query_async(&mut conn)
                .await
                .ok()?;
            (!keys.is_empty()).then_some(())
        }
    })
    .await;
    let ttl: i64 = {
        let keys: Vec<String> = redis::cmd("KEYS")
            .arg(&pattern)
            .query_async(&mut conn)
            .await
            .unwrap();
        redis::cmd("TTL")
            .arg(&keys[0])
            .query_async(&mut conn)
            .await
            .unwrap()
    };
    assert!(ttl > 0 && ttl <= 120, "TTL {ttl}");

    // The same text again: answered from the cache. Another tenant or task: computed.
    produce_raw(
        &run.features,
        &[
            accepted("d-2", "acme", text, json!({"task": "sms_spam"})),
            accepted("d-3", "beta", text, json!({"task": "sms_spam"})),
            accepted("d-4", "acme", text, json!({"task": "other"})),
        ],
    )
    .await;
    let mut predictions = TopicReader::new(&run.predictions);
    predictions
        .read_until(Duration::from_secs(60), "d-2's cached prediction", |r| {
            r.iter().any(|x| x.key_str() == "d-2")
        })
        .await;
    let cached: Prediction = decode(
        &predictions
            .records
            .iter()
            .find(|x| x.key_str() == "d-2")
            .unwrap()
            .payload,
    )
    .unwrap();
    assert_eq!(
        (
            cached.outcome,
            cached.label.as_deref(),
            cached.model_version.as_str()
        ),
        (Outcome::Cached, Some("ham"), "v4")
    );
    assert_eq!(
        (cached.tenant.as_str(), cached.batch_size, cached.compute_ms),
        ("acme", 0, 0.0)
    );
    assert!(cached.worker.starts_with("feature-"), "{}", cached.worker);
    assert_eq!(cached.scores, computed.scores);

    inference
        .read_until(Duration::from_secs(60), "d-3 and d-4", |r| {
            r.iter().any(|x| x.key_str() == "d-3") && r.iter().any(|x| x.key_str() == "d-4")
        })
        .await;
    inference.read_to_end(Duration::from_secs(30)).await;
    let sent: Vec<String> = inference.records.iter().map(ReadRecord::key_str).collect();
    assert!(
        !sent.contains(&"d-2".to_string()),
        "d-2 must not reach inference: {sent:?}"
    );
    assert_eq!(sent.iter().filter(|k| *k == "d-1").count(), 1);

    // Counted once each batch committed, just after its outputs became visible.
    let counted = |m: &str| {
        m.contains(r#"aifab_feature_dedupe_total{result="hit"} 1"#)
            && m.contains(r#"aifab_feature_dedupe_total{result="miss"} 3"#)
    };
    let seen = wait_for(Duration::from_secs(10), || async {
        counted(&http_get(&addr, "/metrics").await.ok()?.1).then_some(())
    })
    .await;
    if seen.is_none() {
        let (_, metrics) = http_get(&addr, "/metrics").await.unwrap();
        panic!("no dedupe counts of 1 hit and 3 misses in /metrics: {metrics}");
    }
    let acme: HashMap<String, i64> =
        eventually(Duration::from_secs(20), "acme's cached count", || {
            let mut conn = conn.clone();
            let key = format!("{}:feature:tenant:acme", run.prefix);
            async move {
                let h: HashMap<String, i64> = redis::cmd("HGETALL")
                    .arg(&key)
                    .query_async(&mut conn)
                    .await
                    .ok()?;
                (h.get("cached") == Some(&1)).then_some(h)
            }
        })
        .await;
    assert_eq!(acme["requests"], 3, "d-1, d-2 (cached), d-4");
    run.cleanup().await;
}
