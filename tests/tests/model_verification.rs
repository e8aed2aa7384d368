//! Models are verified: the worker serves a version only as the registry records it, and
//! only when its files have the record's SHA-256. A forged event (a version the registry
//! does not have, pointing at files of the forger's choosing) and a tampered artifact are
//! refused, counted and alerted on `aifab.alerts.model_verification`, and the worker goes
//! on serving the version it had; the same artifact, restored, is then served.

use std::time::Duration;

use aifab_core::messages::{decode, encode, tag, Alert, ModelEvent, ModelEventKind};
use aifab_tests::*;
use futures::StreamExt;

const SERVED: &[&str] = &["head.safetensors", "labels.json"];

fn promoted(task: &str, version: &str, dir: &std::path::Path) -> Vec<u8> {
    encode(&ModelEvent {
        schema: tag(),
        kind: ModelEventKind::Promoted,
        task: task.into(),
        version: version.into(),
        artifact_uri: format!("file://{}", dir.display()),
        alias: Some("production".into()),
        metrics: Default::default(),
        at_ms: aifab_core::now_ms(),
    })
}

/// The model versions of `n` fresh predictions.
async fn served_versions(topic: &str, task: &str, n: usize) -> Vec<String> {
    let prefix = unique("mv");
    let mut reader = PredictionReader::new();
    produce_requests(topic, task, &prefix, 0..n).await;
    assert!(
        reader.read_until(&prefix, n, Duration::from_secs(60)),
        "{}",
        reader.describe()
    );
    reader
        .seen
        .iter()
        .map(|p| p.model_version.clone())
        .collect()
}

async fn next_alert(alerts: &mut async_nats::Subscriber) -> Alert {
    let m = tokio::time::timeout(Duration::from_secs(30), alerts.next())
        .await
        .expect("a model verification alert")
        .unwrap();
    decode::<Alert>(&m.payload).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_events_and_tampered_artifacts_are_refused_and_alerted() {
    let models = tiny_models();
    let task = unique("task").replace('.', "-");
    let topic = unique("requests");
    create_topic(&topic, 1).await;
    let mut registry = local_registry().await;
    registry
        .put(&registry_record(&task, "v1", &models.head_v1, V1_LABELS))
        .await
        .unwrap();
    registry.set_production(&task, "v1").await.unwrap();
    // v2's files live in a directory of this test's own, to be tampered with.
    let v2 = tempfile::tempdir().unwrap();
    for f in SERVED {
        std::fs::copy(models.head_v2.join(f), v2.path().join(f)).unwrap();
    }
    registry
        .put(&registry_record(&task, "v2", v2.path(), V2_LABELS))
        .await
        .unwrap();

    let nats = async_nats::connect(nats_url()).await.unwrap();
    let mut alerts = nats
        .subscribe(aifab_core::topics::subjects::alert("model_verification"))
        .await
        .unwrap();
    let (_worker, addr) = registry_worker(&models, &task, &topic, &[]).await;
    assert!(served_versions(&topic, &task, 5)
        .await
        .iter()
        .all(|v| v == "v1"));

    let subject = "aifab.model.promoted".to_string();

    // A forged event: a version the registry does not have, files of the forger's choice.
    nats.publish(
        subject.clone(),
        promoted(&task, "v666", &models.head_v2).into(),
    )
    .await
    .unwrap();
    let alert = next_alert(&mut alerts).await;
    assert!(
        alert.message.contains("no such version"),
        "{}",
        alert.message
    );

    // A tampered artifact: v2 is in the registry, but its labels were rewritten.
    std::fs::write(v2.path().join("labels.json"), br#"["x","y","pwned"]"#).unwrap();
    nats.publish(subject.clone(), promoted(&task, "v2", v2.path()).into())
        .await
        .unwrap();
    let alert = next_alert(&mut alerts).await;
    assert!(alert.message.contains("tampered"), "{}", alert.message);

    // Still v1, and both refusals counted.
    assert!(served_versions(&topic, &task, 5)
        .await
        .iter()
        .all(|v| v == "v1"));
    let (_, metrics) = http_get(&addr, "/metrics").await.unwrap();
    assert_eq!(
        metric(
            &metrics,
            "aifab_inference_worker_model_verification_failures_total"
        ),
        Some(2.0),
        "{metrics}"
    );

    // The same version with its files restored is served, once promoted as a real
    // promotion does it: in the registry, then announced. (The worker also checks the
    // registry's production version, so an event alone would not keep v2 served.)
    std::fs::copy(
        models.head_v2.join("labels.json"),
        v2.path().join("labels.json"),
    )
    .unwrap();
    registry.set_production(&task, "v2").await.unwrap();
    nats.publish(subject, promoted(&task, "v2", v2.path()).into())
        .await
        .unwrap();
    eventually(Duration::from_secs(30), "v2 to be served", || {
        let (topic, task) = (topic.clone(), task.clone());
        async move {
            let versions = served_versions(&topic, &task, 3).await;
            versions.iter().all(|v| v == "v2").then_some(())
        }
    })
    .await;
    delete_topic(&topic).await;
}
