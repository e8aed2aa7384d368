//! Training → registry → hot swap, on the live stack with a tiny random BERT:
//! a trained model is promoted and served; a worse candidate is not promoted; a forced
//! promotion and a rollback are both followed by the worker.

use std::process::Stdio;
use std::time::Duration;

use aifab_core::messages::{
    decode, encode, tag, ModelEvent, ModelEventKind, TrainRequest, TrainingExample,
};
use aifab_core::topics::subjects;
use aifab_tests::*;
use futures::StreamExt;
use rdkafka::producer::{FutureProducer, FutureRecord};
use tokio::process::{Child, Command};

const POSITIVE: &[&str] = &["good", "great", "love", "happy"];
const NEGATIVE: &[&str] = &["bad", "terrible", "hate", "sad"];
const FILLER: &[&str] = &["the", "movie", "film", "day", "this", "was", "very", "it"];

fn sentence(i: usize, words: &[&str]) -> String {
    format!(
        "{} {} {} {}",
        FILLER[i % FILLER.len()],
        words[i % words.len()],
        FILLER[(i / 3) % FILLER.len()],
        words[(i / 5) % words.len()]
    )
}

async fn produce_examples(topic: &str, task: &str, from: usize, n: usize, random_labels: bool) {
    let p: FutureProducer = aifab_core::kafka::producer_config(&kafka_brokers(), "aifab-tests")
        .create()
        .unwrap();
    for i in from..from + n {
        let positive = i % 2 == 0;
        let text = sentence(i, if positive { POSITIVE } else { NEGATIVE });
        let label = if random_labels {
            if (i * 7919) % 3 == 0 {
                "pos"
            } else {
                "neg"
            }
        } else if positive {
            "pos"
        } else {
            "neg"
        };
        let ex = TrainingExample {
            schema: tag(),
            id: format!("ex-{i}"),
            tenant: "acme".into(),
            task: task.into(),
            text,
            label: label.into(),
            received_at_ms: aifab_core::now_ms(),
        };
        p.send(
            FutureRecord::to(topic).key(&ex.id).payload(&encode(&ex)),
            Duration::from_secs(30),
        )
        .await
        .map_err(|(e, _)| e)
        .unwrap();
    }
}

async fn next_event(
    sub: &mut async_nats::Subscriber,
    task: &str,
    kind: ModelEventKind,
) -> ModelEvent {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(180);
    loop {
        let msg = tokio::time::timeout_at(deadline, sub.next())
            .await
            .expect("model event in time")
            .unwrap();
        let e: ModelEvent = decode(&msg.payload).unwrap();
        if e.task == task && e.kind == kind {
            return e;
        }
    }
}

fn aifab_cli(args: &[&str]) -> std::process::Output {
    std::process::Command::new(bin_path("aifab"))
        .args(args)
        .output()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn train_promote_serve_reject_and_roll_back() {
    let models = tiny_models();
    let artifacts = tempfile::tempdir().unwrap();
    let task = unique("task").replace('.', "-");
    let examples_topic = unique("examples");
    let requests_topic = unique("requests");
    create_topic(&examples_topic, 2).await;
    create_topic(&requests_topic, 2).await;
    let nats = async_nats::connect(nats_url()).await.unwrap();
    let mut events = nats.subscribe(subjects::MODEL_ALL).await.unwrap();

    produce_examples(&examples_topic, &task, 0, 300, false).await;
    let trainer_addr = format!("127.0.0.1:{}", free_port());
    let _trainer: Child = Command::new(bin_path("aifab-trainer"))
        .env("AIFAB_HTTP_ADDR", &trainer_addr)
        .env("AIFAB_MODEL_DIR", &models.model_dir)
        .env("AIFAB_ARTIFACT_DIR", artifacts.path())
        .env("AIFAB_TRAINING_TOPIC", &examples_topic)
        .env("AIFAB_TRAINER_GROUP", unique("trainer"))
        .env("AIFAB_TRAIN_EVERY", "0")
        .env("AIFAB_PROMOTION_FLOOR", "0.8")
        .env("AIFAB_PROMOTION_TOLERANCE", "0.02")
        .env("AIFAB_LOG", "warn")
        .stdout(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    // Once the window holds the examples, ask for training.
    eventually(
        Duration::from_secs(60),
        "the trainer window to fill",
        || {
            let addr = trainer_addr.clone();
            let task = task.clone();
            async move {
                let (_, body) = http_get(&addr, "/v1/window").await.ok()?;
                body.contains(&format!("\"{task}\":300")).then_some(())
            }
        },
    )
    .await;
    let ask = |task: &str| TrainRequest {
        schema: tag(),
        task: task.into(),
        requested_by: Some("test".into()),
        at_ms: aifab_core::now_ms(),
    };
    nats.publish(subjects::TRAIN_REQUEST, encode(&ask(&task)).into())
        .await
        .unwrap();
    let v1 = next_event(&mut events, &task, ModelEventKind::Promoted).await;
    assert!(
        v1.metrics["macro_f1"] >= 0.8,
        "first model passes the floor: {:?}",
        v1.metrics
    );
    let v1_f1 = v1.metrics["macro_f1"];
    let v1 = v1.version;
    assert!(artifacts
        .path()
        .join(&task)
        .join(&v1)
        .join("metrics.json")
        .exists());

    // A worker with no head serves the registry's production version.
    let _worker: Child = Command::new(bin_path("aifab-inference-worker"))
        .env("AIFAB_HTTP_ADDR", format!("127.0.0.1:{}", free_port()))
        .env("AIFAB_MODEL_DIR", &models.model_dir)
        .env("AIFAB_TASK", &task)
        .env("AIFAB_INPUT_TOPIC", &requests_topic)
        .env("AIFAB_WORKER_GROUP", unique("workers"))
        .env("AIFAB_INSTANCE_ID", unique("w"))
        .env("AIFAB_LOG", "warn")
        .stdout(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    served_by(&requests_topic, &task, &v1).await;

    // Noise: labels unrelated to the text. The candidate is worse and must not be promoted.
    produce_examples(&examples_topic, &task, 300, 900, true).await;
    eventually(
        Duration::from_secs(60),
        "the noisy examples in the window",
        || {
            let addr = trainer_addr.clone();
            let task = task.clone();
            async move {
                let (_, body) = http_get(&addr, "/v1/window").await.ok()?;
                body.contains(&format!("\"{task}\":1200")).then_some(())
            }
        },
    )
    .await;
    nats.publish(subjects::TRAIN_REQUEST, encode(&ask(&task)).into())
        .await
        .unwrap();
    let v2 = next_event(&mut events, &task, ModelEventKind::Published).await;
    assert_ne!(v2.version, v1);
    assert!(
        v2.metrics["macro_f1"] < v1_f1 - 0.02,
        "noise makes it worse: {:?} vs {v1_f1}",
        v2.metrics
    );
    let list = aifab_cli(&["models", "list", "--task", &task]);
    let list = String::from_utf8_lossy(&list.stdout).to_string();
    let production_line = list
        .lines()
        .find(|l| l.contains("production"))
        .unwrap_or_default()
        .to_string();
    assert!(
        production_line.contains(&format!(" {v1} ")),
        "v1 stays production:\n{list}"
    );

    // The gate refuses a manual promotion too, unless forced; the worker follows --force.
    let refused = aifab_cli(&["models", "promote", &task, &v2.version]);
    assert!(
        !refused.status.success(),
        "gate refuses: {}",
        String::from_utf8_lossy(&refused.stdout)
    );
    let why = String::from_utf8_lossy(&refused.stderr).to_string();
    assert!(why.contains("not promoted"), "{why}");
    let forced = aifab_cli(&["models", "promote", &task, &v2.version, "--force"]);
    assert!(
        forced.status.success(),
        "{}",
        String::from_utf8_lossy(&forced.stderr)
    );
    served_by(&requests_topic, &task, &v2.version).await;

    // Rollback: production returns to v1, and so does the worker.
    let rolled = aifab_cli(&["models", "rollback", &task]);
    assert!(
        rolled.status.success(),
        "{}",
        String::from_utf8_lossy(&rolled.stderr)
    );
    assert!(String::from_utf8_lossy(&rolled.stdout).contains(&v1));
    served_by(&requests_topic, &task, &v1).await;
    for t in [&examples_topic, &requests_topic] {
        delete_topic(t).await;
    }
}
