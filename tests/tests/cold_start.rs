//! What a newcomer does on a fresh machine: `aifab demo` against a stack that does not
//! exist yet — a brand-new data directory (Kafka formats its KRaft storage, no topics,
//! no consumer-offsets or transaction-state topics yet), every service started the moment
//! the stack answers, with no settle delay — and the whole loop (train, promote, serve,
//! score) must succeed on the first try.
//!
//! The stack is the test's own, on free loopback ports, so the broker really is cold:
//! its group coordinators are still being elected while the services first ask for them.

use std::process::Stdio;
use std::time::Duration;

use aifab_tests::{bin_path, free_port, unique};
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
        let data = tempfile::Builder::new().prefix("aifab-cold-stack-").tempdir().unwrap();
        let home = tempfile::Builder::new().prefix("aifab-cold-home-").tempdir().unwrap();
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
        let mut cmd = Command::new(bin_path("aifab"));
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
        down.args(["down", "--stack"]).stdout(Stdio::null()).stderr(Stdio::null());
        for (k, v) in &self.env {
            down.env(k, v);
        }
        let _ = down.status();
        if std::thread::panicking() {
            let kept = std::env::temp_dir().join(format!("aifab-cold-start-logs-{}", std::process::id()));
            let _ = std::fs::create_dir_all(&kept);
            for dir in [self.home.path().join("logs"), self.data.path().join("kafka/logs")] {
                for entry in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
                    let _ = std::fs::copy(entry.path(), kept.join(entry.file_name()));
                }
            }
            eprintln!("cold start: service and broker logs kept in {}", kept.display());
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
    assert!(!stack.data.path().join("kafka").exists(), "the stack's data dir starts empty");
    let task = unique("cold").replace('.', "_");
    let out = tokio::time::timeout(
        Duration::from_secs(900),
        stack
            .aifab(&["demo", "--train-limit", "400", "--test-limit", "120", "--tenant", "cold", "--idle-timeout-s", "90"])
            // The supervisor's worker inherits this, so it serves the demo's task.
            .env("AIFAB_TASK", &task)
            .output(),
    )
    .await
    .expect("aifab demo finished within 15 minutes")
    .expect("run aifab demo");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "the first demo on a fresh stack failed: {}\n{stdout}\n{stderr}", out.status);
    assert!(stack.data.path().join("kafka").exists(), "the demo formatted and used the fresh stack");
    assert!(stdout.contains(&format!("trained {task}: version v1")), "{stdout}");
    let requests = figure(&stdout, "requests");
    assert!(requests.contains("120 sent, 120 answered") && requests.ends_with(", 0 missing"), "{requests}");
    let accuracy: f64 = figure(&stdout, "accuracy").split_whitespace().nth(1).unwrap().parse().unwrap();
    assert!(accuracy >= 0.85, "accuracy {accuracy} on 120 SMS after training on 320:\n{stdout}");
    assert!(figure(&stdout, "model").contains(&format!("{task}/v1 (served: v1)")), "{stdout}");
}
