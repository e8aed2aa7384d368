//! Every service binary starts, reports ready only when its dependencies answer, serves
//! metrics, says clearly when a dependency is down, and exits cleanly on SIGTERM.

use std::process::Stdio;
use std::time::Duration;

use aifab_tests::{bin_path, eventually, free_port, http_get, sigterm};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

const SERVICES: &[&str] = &[
    "ingest",
    "feature",
    "trainer",
    "inference-worker",
    "monitor",
    "cost-accountant",
    "autoscaler",
];

/// Start a service binary; its stdout (JSON logs) is piped only when `capture_logs`, so an
/// unread pipe can never fill up and stall the service.
fn start(service: &str, addr: &str, envs: &[(&str, String)], capture_logs: bool) -> Child {
    let mut cmd = Command::new(bin_path(&format!("aifab-{service}")));
    cmd.env("AIFAB_HTTP_ADDR", addr)
        .env("AIFAB_LOG_FORMAT", "json")
        .stdout(if capture_logs {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stderr(Stdio::inherit())
        .kill_on_drop(true);
    for (k, v) in envs {
        cmd.env(k, v);
    }
    cmd.spawn()
        .unwrap_or_else(|e| panic!("starting aifab-{service}: {e}"))
}

async fn exits_cleanly(mut child: Child, service: &str) {
    sigterm(&child);
    let status = tokio::time::timeout(Duration::from_secs(20), child.wait())
        .await
        .unwrap_or_else(|_| panic!("{service} did not exit within 20s of SIGTERM"))
        .unwrap();
    assert!(status.success(), "{service} exited with {status}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_service_becomes_ready_serves_metrics_and_stops_on_sigterm() {
    let models = aifab_tests::tiny_models();
    for service in SERVICES {
        let addr = format!("127.0.0.1:{}", free_port());
        let extra = service_env(service, &models);
        let child = start(service, &addr, &extra, false);
        let body = eventually(
            Duration::from_secs(60),
            &format!("{service} /readyz to be 200"),
            || {
                let addr = addr.clone();
                async move {
                    match http_get(&addr, "/readyz").await {
                        Ok((200, body)) => Some(body),
                        _ => None,
                    }
                }
            },
        )
        .await;
        assert!(body.contains("\"ready\":true"), "{service}: {body}");
        let (code, health) = http_get(&addr, "/healthz").await.unwrap();
        assert_eq!(code, 200, "{service} /healthz");
        assert!(
            health.contains(service),
            "{service} /healthz names the service: {health}"
        );
        let (code, metrics) = http_get(&addr, "/metrics").await.unwrap();
        assert_eq!(code, 200);
        let up = format!("aifab_{}_up 1", service.replace('-', "_"));
        assert!(
            metrics.contains(&up),
            "{service} /metrics lacks {up}:\n{metrics}"
        );
        exits_cleanly(child, service).await;
    }
}

/// Service-specific settings the tests need: the worker serves a tiny random model.
fn service_env(service: &str, models: &aifab_tests::TinyModels) -> Vec<(&'static str, String)> {
    match service {
        "inference-worker" => vec![
            ("AIFAB_MODEL_DIR", models.model_dir.display().to_string()),
            ("AIFAB_HEAD_DIR", models.head_v1.display().to_string()),
            ("AIFAB_INPUT_TOPIC", aifab_tests::unique("idle-requests")),
        ],
        _ => Vec::new(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_dependency_keeps_the_service_unready_with_a_clear_log_line() {
    // Redis at a port nobody listens on: the service must stay up, say so, and not be ready.
    let addr = format!("127.0.0.1:{}", free_port());
    let dead = format!("redis://127.0.0.1:{}", free_port());
    let mut child = start(
        "cost-accountant",
        &addr,
        &[("AIFAB_REDIS_URL", dead.clone())],
        true,
    );
    let stdout = child.stdout.take().unwrap();
    let mut lines = BufReader::new(stdout).lines();
    let line = tokio::time::timeout(Duration::from_secs(30), async {
        while let Some(line) = lines.next_line().await.unwrap() {
            if line.contains("redis unreachable") {
                return line;
            }
        }
        panic!("stdout closed before a redis warning");
    })
    .await
    .expect("a 'redis unreachable' log line within 30s");
    assert!(
        line.contains(&dead),
        "the log line names the address: {line}"
    );
    assert!(
        line.contains("retry_in"),
        "the log line says when it retries: {line}"
    );

    let body = eventually(
        Duration::from_secs(30),
        "/readyz to answer 503 naming redis",
        || {
            let addr = addr.clone();
            async move {
                match http_get(&addr, "/readyz").await {
                    Ok((503, body)) if body.contains("\"redis\":{\"ok\":false") => Some(body),
                    _ => None,
                }
            }
        },
    )
    .await;
    assert!(body.contains("\"ready\":false"), "{body}");
    let (code, _) = http_get(&addr, "/healthz").await.unwrap();
    assert_eq!(code, 200, "alive while a dependency is down");
    exits_cleanly(child, "cost-accountant").await;
}

/// The loop each service cannot do without (names as in `/readyz`, `loop:<name>`).
const ESSENTIAL_LOOPS: &[(&str, &str)] = &[
    ("ingest", "raw-loop"),
    ("feature", "feature-loop"),
    ("trainer", "examples-consumer"),
    ("inference-worker", "batch-loop"),
    ("monitor", "lag-poller"),
    ("cost-accountant", "usage-consumer"),
    ("autoscaler", "controller"),
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_loop_that_stops_makes_every_kind_of_service_exit_naming_it() {
    assert_eq!(
        ESSENTIAL_LOOPS.len(),
        SERVICES.len(),
        "one loop per service kind"
    );
    let models = aifab_tests::tiny_models();
    for (service, loop_name) in ESSENTIAL_LOOPS {
        let addr = format!("127.0.0.1:{}", free_port());
        let mut env = service_env(service, &models);
        // The failpoint makes the loop fail as soon as it starts, as a crash in it would.
        env.push((aifab_core::supervise::FAILPOINT_ENV, loop_name.to_string()));
        let mut child = start(service, &addr, &env, true);
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let mut logs = Vec::new();
        let status = tokio::time::timeout(Duration::from_secs(60), async {
            while let Some(line) = lines.next_line().await.unwrap() {
                logs.push(line);
            }
            child.wait().await.unwrap()
        })
        .await
        .unwrap_or_else(|_| {
            panic!(
                "{service} did not exit within 60 s of its {loop_name} loop failing:\n{}",
                logs.join("\n")
            )
        });
        assert!(
            !status.success(),
            "{service} must exit non-zero to be restarted, got {status}"
        );
        let named = logs.iter().find(|l| {
            l.contains("a loop the service needs stopped")
                && l.contains(&format!("\"loop_name\":\"{loop_name}\""))
        });
        assert!(
            named.is_some(),
            "{service}: no error line naming loop {loop_name}:\n{}",
            logs.join("\n")
        );
        assert!(
            named.unwrap().contains("\"level\":\"ERROR\""),
            "{service}: {named:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_trainer_started_before_its_topic_exists_consumes_and_trains_once_it_does() {
    let topic = aifab_tests::unique("late-examples");
    let task = aifab_tests::unique("late").replace('.', "_");
    let addr = format!("127.0.0.1:{}", free_port());
    let models = aifab_tests::tiny_models();
    let store = tempfile::tempdir().unwrap();
    let env = [
        ("AIFAB_TRAINING_TOPIC", topic.clone()),
        ("AIFAB_TRAINER_GROUP", aifab_tests::unique("late-trainer")),
        ("AIFAB_MODEL_DIR", models.model_dir.display().to_string()),
        ("AIFAB_ARTIFACT_DIR", store.path().display().to_string()),
        // Train as soon as the 40 examples below are in.
        ("AIFAB_TRAIN_EVERY", "40".to_string()),
    ];
    let child = start("trainer", &addr, &env, false);
    // Not ready while its input does not exist, and readiness says why.
    let body = eventually(
        Duration::from_secs(60),
        "trainer /readyz naming its missing topic",
        || {
            let addr = addr.clone();
            async move {
                match http_get(&addr, "/readyz").await {
                    Ok((503, body)) if body.contains("does not exist yet") => Some(body),
                    _ => None,
                }
            }
        },
    )
    .await;
    assert!(body.contains("loop:examples-consumer"), "{body}");

    aifab_tests::create_topic(&topic, 2).await;
    let examples: Vec<_> = (0..40)
        .map(|i| {
            let label = if i % 2 == 0 { "spam" } else { "ham" };
            let text = if i % 2 == 0 {
                format!("WIN a free prize now {i}")
            } else {
                format!("see you at lunch {i}")
            };
            let example = aifab_core::messages::TrainingExample {
                schema: aifab_core::messages::tag(),
                id: format!("late-{i}"),
                tenant: "t".into(),
                task: task.clone(),
                text,
                label: label.into(),
                received_at_ms: aifab_core::now_ms(),
            };
            (
                Some(format!("late-{i}")),
                aifab_core::messages::encode(&example),
                Vec::new(),
            )
        })
        .collect();
    aifab_tests::produce_raw(&topic, &examples).await;
    eventually(
        Duration::from_secs(120),
        "the trainer's window to hold the 40 examples",
        || {
            let addr = addr.clone();
            let task = task.clone();
            async move {
                let (code, body) = http_get(&addr, "/v1/window").await.ok()?;
                let v: serde_json::Value = serde_json::from_str(&body).ok()?;
                (code == 200 && v["examples"][&task].as_u64() == Some(40)).then_some(())
            }
        },
    )
    .await;
    eventually(
        Duration::from_secs(60),
        "the trainer to be ready once it consumes",
        || {
            let addr = addr.clone();
            async move { matches!(http_get(&addr, "/readyz").await, Ok((200, _))).then_some(()) }
        },
    )
    .await;
    eventually(
        Duration::from_secs(180),
        "a training job on the late examples to succeed",
        || {
            let addr = addr.clone();
            async move {
                let (_, text) = http_get(&addr, "/metrics").await.ok()?;
                (aifab_tests::metric(&text, "aifab_trainer_jobs_total{result=\"ok\"}")? >= 1.0)
                    .then_some(())
            }
        },
    )
    .await;
    exits_cleanly(child, "trainer").await;
}
