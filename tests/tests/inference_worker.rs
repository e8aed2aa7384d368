//! The inference worker against the live broker, with a tiny random BERT: exactly-once
//! through repeated SIGKILLs, graceful SIGTERM, hot swap under load without mixed
//! batches, and clear start-up failures.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use aifab_core::kafka::{consumer_config, group_offsets};
use aifab_core::messages::{encode, tag, ModelEvent, ModelEventKind, Outcome};
use aifab_tests::*;
use tokio::process::Command;

async fn read_until(reader: &mut PredictionReader, prefix: &str, distinct: usize) {
    let ok = reader.read_until(prefix, distinct, Duration::from_secs(180));
    assert!(ok, "only {} of {distinct} predicted", reader.counts().len());
}

async fn read_to_end(reader: &mut PredictionReader, prefix: &str) {
    assert!(
        reader.read_to_end(prefix, Duration::from_secs(90)),
        "predictions topic never settled"
    );
}

/// The `load-tests/chaos` scenario (the same code, `kill_chaos`): 20,000 requests, the
/// replica SIGKILLed five times mid-stream — restarted under its instance id after the
/// first four, replaced by a second identity after the fifth — and a read_committed
/// reader sees every request predicted exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_request_gets_exactly_one_prediction_through_sigkills() {
    let run = WorkerRun::new(4).await;
    let n = 20_000;
    let plan = KillPlan {
        requests: n,
        kills: 5,
        batch: 16,
        instance: "eos-a".into(),
        finisher: Some(("eos-b".into(), 32)),
        timeout: Duration::from_secs(180),
    };
    let report = kill_chaos(&run, &plan).await;
    eprintln!(
        "{} kills, {:?}, {:.1}s",
        report.kills,
        report.delivery,
        report.elapsed.as_secs_f64()
    );
    assert!(report.completed, "every wait finished in time");
    assert_eq!(report.kills, 5);
    assert_eq!(
        report.delivery,
        Delivery {
            requests: n,
            lost: 0,
            duplicated: 0
        }
    );
    assert_eq!(report.predictions.len(), n, "committed predictions");
    assert!(report
        .predictions
        .iter()
        .all(|p| p.outcome == Outcome::Ok && p.model_version == "v1"));
    let workers: BTreeSet<_> = report
        .predictions
        .iter()
        .map(|p| p.worker.as_str())
        .collect();
    assert_eq!(workers, BTreeSet::from(["eos-a", "eos-b"]));

    // Graceful stop: SIGTERM exits 0.
    let mut second = report.last;
    sigterm(&second);
    let status = tokio::time::timeout(Duration::from_secs(30), second.wait())
        .await
        .expect("exits")
        .unwrap();
    assert!(status.success(), "SIGTERM exit: {status}");
    delete_topic(&run.topic).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hot_swap_under_load_never_mixes_versions_in_a_batch() {
    let run = WorkerRun::new(2).await;
    let prefix = unique("swap");
    let n = 3000;
    let mut reader = PredictionReader::new();
    produce_requests(&run.topic, &run.task, &prefix, 0..n / 2).await;
    let (mut worker, _) = run.start("swap-a", 8, &[]);
    read_until(&mut reader, &prefix, 300).await;

    let nats = async_nats::connect(nats_url()).await.unwrap();
    let event = ModelEvent {
        schema: tag(),
        kind: ModelEventKind::Published,
        task: run.task.clone(),
        version: "v2".into(),
        artifact_uri: format!("file://{}", run.tiny().head_v2.display()),
        alias: None,
        metrics: Default::default(),
        at_ms: aifab_core::now_ms(),
    };
    nats.publish(
        aifab_core::topics::subjects::MODEL_PUBLISHED,
        encode(&event).into(),
    )
    .await
    .unwrap();
    nats.flush().await.unwrap();
    produce_requests(&run.topic, &run.task, &prefix, n / 2..n).await;
    read_until(&mut reader, &prefix, n).await;
    run.drained().await;
    read_to_end(&mut reader, &prefix).await;

    let counts = reader.counts();
    assert_eq!(counts.len(), n);
    assert!(counts.values().all(|c| *c == 1));
    assert!(
        reader.seen.iter().all(|p| p.outcome == Outcome::Ok),
        "no errors during the swap"
    );
    let mut by_batch: BTreeMap<&str, BTreeSet<&str>> = BTreeMap::new();
    for p in &reader.seen {
        by_batch
            .entry(p.batch_id.as_deref().unwrap())
            .or_default()
            .insert(p.model_version.as_str());
        let labels = if p.model_version == "v1" {
            V1_LABELS
        } else {
            V2_LABELS
        };
        assert!(
            labels.contains(&p.label.as_deref().unwrap()),
            "label of {} from its own version",
            p.id
        );
        assert_eq!(p.scores.len(), labels.len());
    }
    let mixed: Vec<_> = by_batch.iter().filter(|(_, v)| v.len() > 1).collect();
    assert!(mixed.is_empty(), "mixed-version batches: {mixed:?}");
    let versions: BTreeSet<_> = reader
        .seen
        .iter()
        .map(|p| p.model_version.as_str())
        .collect();
    assert_eq!(
        versions,
        BTreeSet::from(["v1", "v2"]),
        "both versions served"
    );
    // Once v2 served, v1 never did again.
    let first_v2 = reader
        .seen
        .iter()
        .filter(|p| p.model_version == "v2")
        .map(|p| p.produced_at_ms)
        .min()
        .unwrap();
    let late_v1 = reader
        .seen
        .iter()
        .filter(|p| p.model_version == "v1" && p.produced_at_ms > first_v2)
        .count();
    assert_eq!(late_v1, 0, "v1 predictions after the switch");
    sigkill(&mut worker);
    delete_topic(&run.topic).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_whose_model_fails_to_load_is_not_ready_and_consumes_nothing() {
    let run = WorkerRun::new(1).await;
    produce_requests(&run.topic, &run.task, &unique("idle"), 0..10).await;
    let (worker, addr) = run.start(
        "broken",
        8,
        &[("AIFAB_HEAD_DIR", "/nonexistent/head".into())],
    );
    let body = eventually(
        Duration::from_secs(60),
        "/readyz 503 naming the model",
        || {
            let addr = addr.clone();
            async move {
                match http_get(&addr, "/readyz").await {
                    Ok((503, b))
                        if b.contains("\"model\":{\"ok\":false")
                            && b.contains("kafka\":{\"ok\":true") =>
                    {
                        Some(b)
                    }
                    _ => None,
                }
            }
        },
    )
    .await;
    assert!(
        body.contains("/nonexistent/head"),
        "the reason names the path: {body}"
    );
    // It never joined the group, so nothing was committed.
    let (brokers, group, topic) = (kafka_brokers(), run.group.clone(), run.topic.clone());
    let offs = tokio::task::spawn_blocking(move || {
        let c = consumer_config(&brokers, "aifab-tests", &group)
            .create()
            .unwrap();
        group_offsets(&c, &topic, Duration::from_secs(10)).unwrap()
    })
    .await
    .unwrap();
    assert!(
        offs.iter().all(|p| p.committed.is_none() && p.lag == 10),
        "{offs:?}"
    );
    drop(worker);
    delete_topic(&run.topic).await;
}

#[tokio::test]
async fn asking_for_a_missing_device_fails_at_start_up() {
    let models = tiny_models();
    let out = Command::new(bin_path("aifab-inference-worker"))
        .env("AIFAB_HTTP_ADDR", format!("127.0.0.1:{}", free_port()))
        .env("AIFAB_MODEL_DIR", &models.model_dir)
        .env("AIFAB_DEVICE", "cuda:7")
        .output()
        .await
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("cuda:7") && stderr.to_lowercase().contains("cuda"),
        "clear error: {stderr}"
    );
}
