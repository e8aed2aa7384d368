//! Canary and shadow rollout of the registry's candidate, as the worker serves it.

use std::collections::BTreeMap;
use std::time::Duration;

use aifab_core::messages::Arm;
use aifab_core::registry::{Registry, Rollout};
use aifab_tests::*;

/// Produce `n` requests and read until each has a served prediction (and, when
/// `shadow`, a shadow one); returns the predictions by arm.
async fn run_round(
    topic: &str,
    task: &str,
    n: usize,
    shadow: bool,
) -> BTreeMap<String, Vec<aifab_core::messages::Prediction>> {
    let prefix = unique("r");
    let mut reader = PredictionReader::new();
    produce_requests(topic, task, &prefix, 0..n).await;
    let want = if shadow { 2 * n } else { n };
    let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
    while reader.seen.len() < want {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{} of {want} predictions",
            reader.seen.len()
        );
        reader.read(&prefix, Duration::from_millis(300));
    }
    let mut by_arm: BTreeMap<String, Vec<_>> = BTreeMap::new();
    for p in reader.seen {
        by_arm.entry(format!("{:?}", p.arm)).or_default().push(p);
    }
    by_arm
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn canary_share_and_shadow_are_served_as_configured() {
    let models = tiny_models();
    let task = unique("task").replace('.', "-");
    let topic = unique("requests");
    create_topic(&topic, 2).await;
    let mut registry = local_registry().await;
    registry
        .put(&registry_record(&task, "v1", &models.head_v1, V1_LABELS))
        .await
        .unwrap();
    registry
        .put(&registry_record(&task, "v2", &models.head_v2, V2_LABELS))
        .await
        .unwrap();
    registry.set_production(&task, "v1").await.unwrap();
    registry.set_candidate(&task, "v2").await.unwrap();
    registry
        .set_rollout(&task, Rollout::Canary { share: 0.3 })
        .await
        .unwrap();

    // The candidate is polled from Redis (every 2 s): the rounds below check served arms.
    let (_worker, _) = registry_worker(&models, &task, &topic, &[]).await;

    let mut canary_seen = false;
    for _ in 0..10 {
        let by_arm = run_round(&topic, &task, 400, false).await;
        let canary = by_arm.get("Canary").map_or(0, Vec::len);
        if canary == 0 {
            continue;
        }
        canary_seen = true;
        assert!(!by_arm.contains_key("Shadow"));
        assert!(by_arm["Production"]
            .iter()
            .all(|p| p.model_version == "v1" && p.arm == Arm::Production));
        assert!(by_arm["Canary"]
            .iter()
            .all(|p| p.model_version == "v2" && V2_LABELS.contains(&p.label.as_deref().unwrap())));
        let share = canary as f64 / 400.0;
        assert!(
            (0.2..0.4).contains(&share),
            "canary share {share} for a configured 0.3"
        );
        break;
    }
    assert!(canary_seen, "the canary never took traffic");

    registry.set_rollout(&task, Rollout::Shadow).await.unwrap();
    let mut shadow_seen = false;
    for _ in 0..10 {
        // Until the worker sees the change, rounds come back with no shadow predictions.
        let round = run_round_with_timeout(&topic, &task).await;
        // A round that straddles the switch has canary predictions: try the next one.
        if let Some(by_arm) = round.filter(|m| !m.contains_key("Canary")) {
            assert_eq!(
                by_arm["Production"].len(),
                100,
                "every request served by production"
            );
            assert_eq!(by_arm["Shadow"].len(), 100, "and shadowed by the candidate");
            assert!(by_arm["Shadow"].iter().all(|p| p.model_version == "v2"));
            assert!(!by_arm.contains_key("Canary"));
            shadow_seen = true;
            break;
        }
    }
    assert!(shadow_seen, "shadow predictions never appeared");
    delete_topic(&topic).await;
}

/// One round of 100 requests in shadow mode; `None` if the worker had not switched yet.
async fn run_round_with_timeout(
    topic: &str,
    task: &str,
) -> Option<BTreeMap<String, Vec<aifab_core::messages::Prediction>>> {
    let prefix = unique("s");
    let mut reader = PredictionReader::new();
    produce_requests(topic, task, &prefix, 0..100).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while reader.seen.len() < 200 && tokio::time::Instant::now() < deadline {
        reader.read(&prefix, Duration::from_millis(300));
        let served = reader.seen.iter().filter(|p| p.arm != Arm::Shadow).count();
        if served == 100 && reader.seen.iter().all(|p| p.arm != Arm::Shadow) {
            // Give the round's shadow outputs (same transaction) a moment; if none, not switched.
            reader.read(&prefix, Duration::from_millis(500));
            if reader.seen.iter().all(|p| p.arm != Arm::Shadow) {
                return None;
            }
        }
    }
    let mut by_arm: BTreeMap<String, Vec<_>> = BTreeMap::new();
    for p in reader.seen {
        by_arm.entry(format!("{:?}", p.arm)).or_default().push(p);
    }
    Some(by_arm)
}

/// Two rollbacks that both read the same history entry: only the first moves production
/// (each one is announced to the workers; an unannounced move would strand them).
#[tokio::test]
async fn a_rollback_moves_production_only_from_the_history_it_read() {
    let task = unique("task").replace('.', "-");
    let mut registry = local_registry().await;
    for v in ["v1", "v2", "v3"] {
        registry.set_production(&task, v).await.unwrap();
    }
    // (production, the rollback history's head)
    async fn aliases(registry: &mut Registry, task: &str) -> (Option<String>, Option<String>) {
        let production = registry.alias(task, "production").await.unwrap();
        (
            production,
            registry.previous_production(task).await.unwrap(),
        )
    }
    let at = |p: &str, previous: &str| (Some(p.to_string()), Some(previous.to_string()));
    assert_eq!(aliases(&mut registry, &task).await, at("v3", "v2"));
    assert!(registry.rollback_to(&task, "v2", true).await.unwrap());
    // The second saw v2 at the head too, but the first took it: nothing changes.
    assert!(!registry.rollback_to(&task, "v2", true).await.unwrap());
    assert_eq!(aliases(&mut registry, &task).await, at("v2", "v1"));
    // An explicit target does not need (or touch) the history.
    assert!(registry.rollback_to(&task, "v3", false).await.unwrap());
    assert_eq!(aliases(&mut registry, &task).await, at("v3", "v1"));
}

/// A promotion and a rollback the worker never hears of on NATS (as when it was cut off
/// while they were announced: core NATS does not replay) are followed from the registry.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn production_changes_missed_on_nats_are_followed_from_the_registry() {
    let models = tiny_models();
    let task = unique("task").replace('.', "-");
    let topic = unique("requests");
    create_topic(&topic, 1).await;
    let mut registry = local_registry().await;
    for (v, head, labels) in [
        ("v1", &models.head_v1, V1_LABELS),
        ("v2", &models.head_v2, V2_LABELS),
    ] {
        registry
            .put(&registry_record(&task, v, head, labels))
            .await
            .unwrap();
    }
    registry.set_production(&task, "v1").await.unwrap();

    let (_worker, addr) =
        registry_worker(&models, &task, &topic, &[("AIFAB_MODEL_RECONCILE_S", "1")]).await;
    served_by(&topic, &task, "v1").await;

    // Moved in Redis only: no event on NATS.
    registry.set_production(&task, "v2").await.unwrap();
    served_by(&topic, &task, "v2").await;
    assert!(registry.rollback_to(&task, "v1", true).await.unwrap());
    served_by(&topic, &task, "v1").await;
    // Both changes followed from the registry (counted just after each swap).
    eventually(
        Duration::from_secs(10),
        "2 reconciled model changes",
        || {
            let addr = addr.clone();
            async move {
                let (_, metrics) = http_get(&addr, "/metrics").await.ok()?;
                (metric(&metrics, "aifab_inference_worker_model_reconciled_total") == Some(2.0))
                    .then_some(())
            }
        },
    )
    .await;
    delete_topic(&topic).await;
}
