//! Ingest and feature through SIGKILLs: 6,000 raw records, both services killed mid-stream
//! and restarted (same instance ids, so a restart fences its dead predecessor's open
//! transaction) → every record is on `features.in` and on `inference.requests` exactly
//! once, and none is dead-lettered (a record consumed again after a crash finds its own
//! id claim, so it is not mistaken for a duplicate).

use std::collections::BTreeMap;
use std::time::Duration;

use aifab_tests::*;
use serde_json::json;
use tokio::process::Child;

fn sigkill(child: &mut Child) {
    let pid = child.id().expect("running");
    std::process::Command::new("kill")
        .arg("-KILL")
        .arg(pid.to_string())
        .status()
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_record_comes_out_once_through_sigkills() {
    let id = unique("ingest-eos");
    let topic = |t: &str| format!("{id}.{t}");
    for (t, p) in [
        ("raw", 4),
        ("features", 4),
        ("inference", 4),
        ("training", 1),
        ("predictions", 1),
        ("dlq", 1),
    ] {
        create_topic(&topic(t), p).await;
    }
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("keys.json"),
        json!({"keys": [{"key": "k", "tenant": "acme"}]}).to_string(),
    )
    .unwrap();
    aifab_model::testing::write_tiny_bert(dir.path().join("tiny"), 2).unwrap();
    let env: Vec<(&str, String)> = vec![
        ("AIFAB_RAW_TOPIC", topic("raw")),
        ("AIFAB_FEATURES_TOPIC", topic("features")),
        ("AIFAB_INFERENCE_TOPIC", topic("inference")),
        ("AIFAB_TRAINING_TOPIC", topic("training")),
        ("AIFAB_PREDICTIONS_TOPIC", topic("predictions")),
        ("AIFAB_DLQ_TOPIC", topic("dlq")),
        ("AIFAB_REDIS_PREFIX", id.clone()),
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
        (
            "AIFAB_MODEL_DIR",
            dir.path().join("tiny").display().to_string(),
        ),
        ("AIFAB_MAX_TOKENS", "32".into()),
        // Small batches, so the kills land between and inside many transactions.
        ("AIFAB_CONSUME_BATCH", "20".into()),
    ];
    let start = |service: &str, instance: &str| {
        let mut e = env.clone();
        e.push(("AIFAB_INSTANCE_ID", instance.to_string()));
        spawn_service(service, &e).0
    };

    let n = 6000;
    let wave = 1500;
    let records: Vec<_> = (0..n)
        .map(|i| {
            let v = json!({
                "schema": "ingest.raw/v1",
                "id": format!("e-{i}"),
                "tenant": "acme",
                "text": format!("the cat sat {i}"),
            });
            (
                Some(format!("e-{i}")),
                serde_json::to_vec(&v).unwrap(),
                vec![],
            )
        })
        .collect();

    // Messages the ingest group has committed on the raw topic (read after a kill).
    let committed = |group: String, topic: String| async move {
        tokio::task::spawn_blocking(move || {
            let c = aifab_core::kafka::consumer_config(&kafka_brokers(), "aifab-tests", &group)
                .create()
                .unwrap();
            aifab_core::kafka::group_offsets(&c, &topic, Duration::from_secs(10))
                .map(|o| o.iter().map(|p| p.committed.unwrap_or(0)).sum::<i64>())
                .unwrap_or(0)
        })
        .await
        .unwrap()
    };

    let mut features = TopicReader::new(&topic("features"));
    let mut inference = TopicReader::new(&topic("inference"));
    let mut ingest = start("ingest", "eos-ingest");
    let mut feature = start("feature", "eos-feature");
    // Four waves; after each but the last, kill ingest (and, every other time, feature)
    // while the wave is half done, then restart them.
    let mut mid_stream = 0;
    for w in 0..n / wave {
        produce_raw(&topic("raw"), &records[w * wave..(w + 1) * wave]).await;
        if w + 1 == n / wave {
            break;
        }
        features
            .read_until(Duration::from_secs(120), "half a wave", |r| {
                r.len() >= w * wave + wave / 2
            })
            .await;
        sigkill(&mut ingest);
        ingest.wait().await.unwrap();
        if w % 2 == 0 {
            sigkill(&mut feature);
            feature.wait().await.unwrap();
            feature = start("feature", "eos-feature");
        }
        if committed(format!("{id}.ingest"), topic("raw")).await < ((w + 1) * wave) as i64 {
            mid_stream += 1;
        }
        ingest = start("ingest", "eos-ingest");
    }
    assert!(
        mid_stream >= 1,
        "no kill landed while ingest had uncommitted work"
    );
    let distinct = |r: &[ReadRecord]| {
        r.iter()
            .map(ReadRecord::key_str)
            .collect::<std::collections::BTreeSet<_>>()
            .len()
    };
    inference
        .read_until(Duration::from_secs(180), "every request tokenized", |r| {
            distinct(r) >= n
        })
        .await;
    features.read_to_end(Duration::from_secs(60)).await;
    inference.read_to_end(Duration::from_secs(60)).await;

    for (name, reader) in [
        ("features.in", &features),
        ("inference.requests", &inference),
    ] {
        let mut counts: BTreeMap<String, usize> = BTreeMap::new();
        for r in &reader.records {
            *counts.entry(r.key_str()).or_default() += 1;
        }
        assert_eq!(counts.len(), n, "{name}: every record");
        let dupes: Vec<_> = counts.iter().filter(|(_, c)| **c != 1).take(5).collect();
        assert!(
            dupes.is_empty(),
            "{name}: records committed more than once: {dupes:?}"
        );
    }
    let mut dlq = TopicReader::new(&topic("dlq"));
    dlq.read(Duration::from_secs(2));
    let reasons: Vec<String> = dlq
        .records
        .iter()
        .take(3)
        .map(|r| String::from_utf8_lossy(&r.payload).to_string())
        .collect();
    assert!(
        dlq.records.is_empty(),
        "nothing dead-lettered, got {}: {reasons:?}",
        dlq.records.len()
    );

    sigterm(&ingest);
    sigterm(&feature);
    for mut c in [ingest, feature] {
        let status = tokio::time::timeout(Duration::from_secs(30), c.wait())
            .await
            .expect("exits")
            .unwrap();
        assert!(status.success(), "SIGTERM exit: {status}");
    }
    for t in [
        "raw",
        "features",
        "inference",
        "training",
        "predictions",
        "dlq",
    ] {
        delete_topic(&topic(t)).await;
    }
}
