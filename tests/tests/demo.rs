//! `aifab demo` end to end on the live stack: it starts the supervisor and every service,
//! trains a model through ingest → feature → trainer, serves requests through the
//! worker, and reports figures that match what happened; a second run reuses the model.
//! The task and tenant are fresh, so earlier runs' models are not reused by accident.

use std::time::Duration;

use aifab_tests::*;
use tokio::process::Command;

fn figure<'a>(out: &'a str, line: &str) -> &'a str {
    out.lines()
        .find(|l| l.starts_with(&format!("{line} ")))
        .unwrap_or_else(|| panic!("no {line:?} line in:\n{out}"))
}

async fn demo(home: &std::path::Path, task: &str, tenant: &str) -> String {
    let out = tokio::time::timeout(
        Duration::from_secs(600),
        Command::new(bin_path("aifab"))
            .args([
                "demo",
                "--train-limit",
                "400",
                "--test-limit",
                "120",
                "--tenant",
                tenant,
                "--idle-timeout-s",
                "60",
            ])
            .env("AIFAB_HOME", home)
            // The supervisor's worker inherits this, so it serves the demo's task.
            .env("AIFAB_TASK", task)
            .env("AIFAB_LOG", "warn")
            .output(),
    )
    .await
    .expect("aifab demo finished within 10 minutes")
    .expect("run aifab demo");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "aifab demo failed: {}\n{stdout}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

#[tokio::test(flavor = "multi_thread")]
async fn the_demo_trains_serves_and_reports_then_reuses_its_model() {
    let home = tempfile::tempdir().unwrap();
    let _guard = SupervisorGuard {
        home: home.path().to_path_buf(),
    };
    let task = unique("demo").replace('.', "_");
    let tenant = unique("tenant").replace('.', "_");

    let first = demo(home.path(), &task, &tenant).await;
    assert!(
        first.contains(&format!("trained {task}: version v1")),
        "{first}"
    );
    let requests = figure(&first, "requests");
    assert!(
        requests.contains("120 sent, 120 answered") && requests.ends_with(", 0 missing"),
        "{requests}"
    );
    let accuracy: f64 = figure(&first, "accuracy")
        .split_whitespace()
        .nth(1)
        .unwrap()
        .parse()
        .unwrap();
    assert!(
        accuracy >= 0.85,
        "accuracy {accuracy} on 120 SMS after training on 320:\n{first}"
    );
    assert!(
        figure(&first, "model").contains(&format!("{task}/v1 (served: v1)")),
        "{first}"
    );
    assert!(figure(&first, "latency").contains("p99"), "{first}");
    let cost = figure(&first, "cost");
    assert!(
        cost.contains("per 1,000 predictions"),
        "the cost accountant charged the run: {cost}"
    );

    // Every service is still up under the supervisor.
    let status = Command::new(bin_path("aifab"))
        .arg("status")
        .env("AIFAB_HOME", home.path())
        .output()
        .await
        .unwrap();
    assert!(
        status.status.success(),
        "{}",
        String::from_utf8_lossy(&status.stdout)
    );

    let second = demo(home.path(), &task, &tenant).await;
    assert!(
        second.contains(&format!("reusing model {task}/v1")),
        "{second}"
    );
    assert!(!second.contains("trained "), "no second training: {second}");
    let requests = figure(&second, "requests");
    assert!(
        requests.contains("120 answered") && requests.contains("from the dedupe cache"),
        "{requests}"
    );
}
