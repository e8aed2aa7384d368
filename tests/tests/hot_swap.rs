//! Hot swap under load: the registry's v2 announced mid-stream, the worker swaps between
//! batches — every request predicted exactly once, never a batch of mixed versions. (Apart
//! from tests/tests/inference_worker.rs: run beside its SIGKILL scenario, the timing of
//! that one's finisher changed.)

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use aifab_core::messages::{encode, tag, ModelEvent, ModelEventKind, Outcome};
use aifab_tests::*;

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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hot_swap_under_load_never_mixes_versions_in_a_batch() {
    let run = WorkerRun::new(2).await;
    let prefix = unique("swap");
    let n = 3000;
    let mut reader = PredictionReader::new();
    produce_requests(&run.topic, &run.task, &prefix, 0..n / 2).await;
    let (mut worker, _) = run.start("swap-a", 8, &[]);
    read_until(&mut reader, &prefix, 300).await;

    // The registry vouches for v2 (workers load only what it records, digest checked).
    let v2 = registry_record(&run.task, "v2", &run.tiny().head_v2, V2_LABELS);
    aifab_core::registry::Registry::new(
        redis::Client::open(redis_url())
            .unwrap()
            .get_connection_manager()
            .await
            .unwrap(),
    )
    .put(&v2)
    .await
    .unwrap();
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
