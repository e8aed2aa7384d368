//! What a newcomer does on a fresh machine, where nothing is warm: a brand-new stack
//! (Kafka formats its KRaft storage; no topics, no consumer-offsets or transaction-state
//! topics yet), every service started at once — before its topics exist, as happens
//! when a deployment's services start before its topic-creation job — then the topics
//! created, then `aifab demo`. The whole loop (train, promote, serve, score) must succeed
//! on the first try.
//!
//! The stack is the test's own, on free loopback ports, so the broker really is cold.
//! The services are up (answering `/healthz`) before the topics are created, with no
//! settle delay anywhere: a service that looked for its topic once and gave up (the
//! trainer did: it then held 0 examples while answering ready) fails this test.

use std::process::Stdio;
use std::time::Duration;

use aifab_tests::{bin_path, free_port, run_ok, unique};
use tokio::process::Command;

/// The environment that points `aifab` (and the stack and services it starts) at a stack
/// of this test's own.
struct FreshStack {
    data: tempfile::TempDir,
    home: tempfile::TempDir,
    env: Vec<(&'static str, String)>,
}

impl FreshStack {
    fn new() -> Self {
        let data = tempfile::Builder::new()
            .prefix("aifab-cold-stack-")
            .tempdir()
            .unwrap();
        let home = tempfile::Builder::new()
            .prefix("aifab-cold-home-")
            .tempdir()
            .unwrap();
        let (kafka, nats, redis) = (free_port(), free_port(), free_port());
        let env = vec![
            ("AIFAB_DATA_DIR", data.path().display().to_string()),
            ("AIFAB_HOME", home.path().display().to_string()),
            ("AIFAB_KAFKA_PORT", kafka.to_string()),
            ("AIFAB_KAFKA_CONTROLLER_PORT", free_port().to_string()),
            ("AIFAB_KAFKA_HEAP_OPTS", "-Xms128m -Xmx512m".to_string()),
            ("AIFAB_NATS_PORT", nats.to_string()),
            ("AIFAB_NATS_MONITOR_PORT", free_port().to_string()),
            ("AIFAB_REDIS_PORT", redis.to_string()),
            ("AIFAB_KAFKA_BROKERS", format!("127.0.0.1:{kafka}")),
            ("AIFAB_NATS_URL", format!("nats://127.0.0.1:{nats}")),
            ("AIFAB_REDIS_URL", format!("redis://127.0.0.1:{redis}")),
        ];
        FreshStack { data, home, env }
    }

    fn aifab(&self, args: &[&str]) -> Command {
        self.command(bin_path("aifab"), args)
    }

    /// One of the repository's scripts, for this stack.
    fn script(&self, name: &str, args: &[&str]) -> Command {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .parent()
            .unwrap();
        self.command(root.join("scripts").join(name), args)
    }

    fn command(&self, program: std::path::PathBuf, args: &[&str]) -> Command {
        let mut cmd = Command::new(program);
        cmd.args(args).stdin(Stdio::null());
        for (k, v) in &self.env {
            cmd.env(k, v);
        }
        cmd
    }
}

impl Drop for FreshStack {
    /// Stop the supervisor, its services and the stack, whatever happened; keep the logs
    /// of a failed run.
    fn drop(&mut self) {
        let mut down = std::process::Command::new(bin_path("aifab"));
        down.args(["down", "--stack"])
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        for (k, v) in &self.env {
            down.env(k, v);
        }
        let _ = down.status();
        if std::thread::panicking() {
            let kept =
                std::env::temp_dir().join(format!("aifab-cold-start-logs-{}", std::process::id()));
            let _ = std::fs::create_dir_all(&kept);
            for dir in [
                self.home.path().join("logs"),
                self.data.path().join("kafka/logs"),
            ] {
                for entry in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
                    let _ = std::fs::copy(entry.path(), kept.join(entry.file_name()));
                }
            }
            eprintln!(
                "cold start: service and broker logs kept in {}",
                kept.display()
            );
        }
    }
}

fn figure<'a>(out: &'a str, line: &str) -> &'a str {
    out.lines()
        .find(|l| l.starts_with(&format!("{line} ")))
        .unwrap_or_else(|| panic!("no {line:?} line in:\n{out}"))
}

#[tokio::test(flavor = "multi_thread")]
async fn the_demo_succeeds_first_time_on_a_brand_new_stack() {
    let stack = FreshStack::new();
    assert!(
        !stack.data.path().join("kafka").exists(),
        "the stack's data dir starts empty"
    );
    let task = unique("cold").replace('.', "_");

    // A freshly formatted broker with no topics at all.
    let up = run_ok(
        stack.script("stack-up", &["--no-topics"]),
        "stack-up --no-topics",
        Duration::from_secs(300),
    )
    .await;
    assert!(up.contains("not created (--no-topics)"), "{up}");
    assert!(
        stack.data.path().join("kafka").exists(),
        "the stack was formatted in the fresh data dir"
    );

    // Every service, at once, under the supervisor (the worker serves the demo's task).
    // `aifab down` (when the stack is dropped) stops it and its services.
    let mut supervisor = stack.aifab(&["up", "--no-stack"]);
    supervisor
        .env("AIFAB_TASK", &task)
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    let mut supervisor = supervisor.spawn().expect("start aifab up");
    for service in [
        "ingest",
        "feature",
        "trainer",
        "inference-worker",
        "monitor",
        "cost-accountant",
        "autoscaler",
    ] {
        let addr = format!("127.0.0.1:{}", local_port(service));
        aifab_tests::eventually(
            Duration::from_secs(120),
            &format!("{service} to answer /healthz"),
            || {
                let addr = addr.clone();
                async move {
                    matches!(aifab_tests::http_get(&addr, "/healthz").await, Ok((200, _)))
                        .then_some(())
                }
            },
        )
        .await;
    }
    assert!(
        supervisor.try_wait().unwrap().is_none(),
        "the supervisor is still running"
    );

    // Now the topics, as a deployment's topic job would make them, then the newcomer's
    // command (which finds the supervisor up and waits for every service to be ready).
    run_ok(
        stack.script("stack-up", &[]),
        "stack-up",
        Duration::from_secs(300),
    )
    .await;
    let mut demo = stack.aifab(&[
        "demo",
        "--train-limit",
        "400",
        "--test-limit",
        "120",
        "--tenant",
        "cold",
        "--idle-timeout-s",
        "90",
    ]);
    demo.env("AIFAB_TASK", &task);
    let stdout = run_ok(
        demo,
        "the first aifab demo on a fresh stack",
        Duration::from_secs(900),
    )
    .await;
    eprintln!("{stdout}");
    assert!(
        stdout.contains(&format!("trained {task}: version v1")),
        "{stdout}"
    );
    let requests = figure(&stdout, "requests");
    assert!(
        requests.contains("120 sent, 120 answered") && requests.ends_with(", 0 missing"),
        "{requests}"
    );
    let accuracy: f64 = figure(&stdout, "accuracy")
        .split_whitespace()
        .nth(1)
        .unwrap()
        .parse()
        .unwrap();
    assert!(
        accuracy >= 0.85,
        "accuracy {accuracy} on 120 SMS after training on 320:\n{stdout}"
    );
    assert!(
        figure(&stdout, "model").contains(&format!("{task}/v1 (served: v1)")),
        "{stdout}"
    );
}

/// The port the local supervisor gives a service (`services/aifab/src/local.rs`).
fn local_port(service: &str) -> u16 {
    aifab::local::SERVICES
        .iter()
        .find(|s| s.name == service)
        .unwrap_or_else(|| panic!("no local service {service}"))
        .port
}
