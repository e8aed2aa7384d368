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
        .stdout(if capture_logs { Stdio::piped() } else { Stdio::null() })
        .stderr(Stdio::inherit())
        .kill_on_drop(true);
    for (k, v) in envs {
        cmd.env(k, v);
    }
    cmd.spawn().unwrap_or_else(|e| panic!("starting aifab-{service}: {e}"))
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
        let body = eventually(Duration::from_secs(60), &format!("{service} /readyz to be 200"), || {
            let addr = addr.clone();
            async move {
                match http_get(&addr, "/readyz").await {
                    Ok((200, body)) => Some(body),
                    _ => None,
                }
            }
        })
        .await;
        assert!(body.contains("\"ready\":true"), "{service}: {body}");
        let (code, health) = http_get(&addr, "/healthz").await.unwrap();
        assert_eq!(code, 200, "{service} /healthz");
        assert!(health.contains(service), "{service} /healthz names the service: {health}");
        let (code, metrics) = http_get(&addr, "/metrics").await.unwrap();
        assert_eq!(code, 200);
        let up = format!("aifab_{}_up 1", service.replace('-', "_"));
        assert!(metrics.contains(&up), "{service} /metrics lacks {up}:\n{metrics}");
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
    let mut child = start("cost-accountant", &addr, &[("AIFAB_REDIS_URL", dead.clone())], true);
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
    assert!(line.contains(&dead), "the log line names the address: {line}");
    assert!(line.contains("retry_in"), "the log line says when it retries: {line}");

    let body = eventually(Duration::from_secs(30), "/readyz to answer 503 naming redis", || {
        let addr = addr.clone();
        async move {
            match http_get(&addr, "/readyz").await {
                Ok((503, body)) if body.contains("\"redis\":{\"ok\":false") => Some(body),
                _ => None,
            }
        }
    })
    .await;
    assert!(body.contains("\"ready\":false"), "{body}");
    let (code, _) = http_get(&addr, "/healthz").await.unwrap();
    assert_eq!(code, 200, "alive while a dependency is down");
    exits_cleanly(child, "cost-accountant").await;
}
