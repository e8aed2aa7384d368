//! The inference worker against the live broker, with a tiny random BERT: exactly-once
//! through repeated SIGKILLs, graceful SIGTERM, and clear start-up failures (hot swap under
//! load: tests/tests/hot_swap.rs).

use std::collections::BTreeSet;
use std::time::Duration;

use aifab_core::kafka::{consumer_config, group_offsets};
use aifab_core::messages::Outcome;
use aifab_tests::*;
use tokio::process::Command;

/// The `load-tests/chaos` scenario (the same code, `kill_chaos`): 20,000 requests, the
/// replica SIGKILLed five times mid-stream — restarted under its instance id after the
/// first four, replaced by a second identity after the fifth — and a read_committed
/// reader sees every request predicted exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_request_gets_exactly_one_prediction_through_sigkills() {
    let run = WorkerRun::new(4).await;
    let n = 20_000;
    // Instance ids (so transactional ids) of this run's own: runs back to back on one
    // broker must not meet each other's.
    let (a, b) = (unique("eos-a"), unique("eos-b"));
    let plan = KillPlan {
        requests: n,
        kills: 5,
        batch: 16,
        instance: a.clone(),
        finisher: Some((b.clone(), 32)),
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
    // Only the two identities served. The finisher serves what is left at the last kill,
    // which can be nothing: the reader that times the kills trails the worker, and on a
    // busy machine `a` may commit the whole backlog before its last SIGKILL.
    assert!(workers.contains(a.as_str()), "{workers:?}");
    assert!(
        workers.is_subset(&BTreeSet::from([a.as_str(), b.as_str()])),
        "{workers:?}"
    );
    eprintln!("the finisher served {} predictions", {
        report.predictions.iter().filter(|p| p.worker == b).count()
    });

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
