//! The monitor's dashboard against the live stack, rendered in headless Chromium: a cost
//! accountant charges a tenant under a budget (its `aifab.budget.status` reports and
//! `GET /v1/costs` reach the monitor), a model registry entry with metrics (Redis), a
//! scale decision and a replica report (NATS), predictions on a predictions topic and a
//! lagging group. The values the page renders must be the ones `GET /v1/dashboard`
//! serves; a screenshot is saved under the target dir.
//!
//! - `feed`: what the monitor is fed (registry, costs, predictions, lag, scale decisions).
//! - `page`: reading the rendered DOM and checking it against the JSON.
//! - `cli`: `aifab status` against the same JSON.

mod cli;
mod feed;
mod page;

use std::collections::BTreeMap;
use std::process::Stdio;
use std::time::Duration;

use aifab_core::messages::{
    encode, tag, Arm, Outcome, Prediction, ReplicaReport, ScaleDecision, ScaleInputs, UsageRecord,
};
use aifab_core::registry::{ModelRecord, Registry, Rollout};
use aifab_core::topics::subjects;
use aifab_tests::*;
use rdkafka::producer::{FutureProducer, FutureRecord};
use serde_json::Value;
use tokio::process::Child;

/// The names this run's inputs go by (unique per run).
struct Scene {
    task: String,
    tenant: String,
    service: String,
    group: String,
    /// The topic `group` should consume and does not (its lag is checked).
    requests: String,
    /// The task of the probe predictions that tell the monitor is reading.
    probe_task: String,
}

async fn get_json(addr: &str, path: &str) -> Option<Value> {
    match http_get(addr, path).await {
        Ok((200, body)) => serde_json::from_str(&body).ok(),
        _ => None,
    }
}

fn find<'a>(list: &'a Value, key: &str, value: &str) -> Option<&'a Value> {
    list.as_array()?.iter().find(|x| x[key] == value)
}

/// What the test checks, from one `GET /v1/dashboard`, once everything has arrived.
fn complete<'a>(
    d: &'a Value,
    group: &str,
    service: &str,
    tenant: &str,
    task: &str,
) -> Option<(&'a Value, &'a Value, &'a Value, &'a Value, &'a Value)> {
    let lag = find(&d["lag"], "group", group).filter(|l| l["total_lag"] == 30)?;
    let svc = find(&d["services"], "service", service)
        .filter(|s| s["replicas"] == 3 && s["reason"].is_string())?;
    let ten = find(&d["tenants"], "tenant", tenant).filter(|t| {
        t["source"] == "nats" && t["predictions"] == 50 && t["spent"].as_f64() > Some(0.0)
    })?;
    let models: Vec<&Value> = d["models"]
        .as_array()?
        .iter()
        .filter(|m| m["task"] == task)
        .collect();
    let v1 = models
        .iter()
        .find(|m| m["version"] == "v1")
        .filter(|m| m["live"]["count"] == 40)?;
    let v2 = models
        .iter()
        .find(|m| m["version"] == "v2")
        .filter(|m| m["live"]["count"] == 10)?;
    Some((lag, svc, ten, v1, v2))
}

/// The values that do not move once everything has arrived (rates and ages do).
fn stable(d: &Value, group: &str, service: &str, tenant: &str, task: &str) -> Value {
    let (lag, svc, ten, v1, v2) = complete(d, group, service, tenant, task).expect("complete");
    serde_json::json!({
        "predictions": d["throughput"]["predictions"],
        "latency": d["latency_ms"],
        "lag": lag["total_lag"],
        "svc": [svc["replicas"], svc["desired_replicas"], svc["reason"], svc["actuator"]],
        "tenant": [ten["spent"], ten["budget"], ten["state"], ten["predictions"], ten["period"]],
        "v1": [
            v1["macro_f1"], v1["accuracy"], v1["aliases"], v1["live"]["count"],
            v1["live"]["p99_ms"],
        ],
        "v2": [v2["macro_f1"], v2["aliases"], v2["rollout"], v2["live"]["count"]],
    })
}

fn chromium(args: &[String]) -> std::process::Output {
    let out = std::process::Command::new("chromium")
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--no-first-run",
            "--hide-scrollbars",
        ])
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| {
            panic!(
                "running chromium: {e} (install the Debian package: apt-get install -y chromium)"
            )
        });
    assert!(
        out.status.success(),
        "chromium {args:?}: {}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// Probe predictions the monitor counted (the unregistered `<task>-probe@v0` row).
fn probes_seen(d: &Value, probe_task: &str) -> u64 {
    find(&d["models"], "task", probe_task)
        .and_then(|m| m["live"]["count"].as_u64())
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_page_renders_what_the_dashboard_json_says() {
    let task = unique("dash-task").replace('.', "-");
    let s = Scene {
        probe_task: format!("{task}-probe"),
        task,
        tenant: unique("dash-tenant").replace('.', "-"),
        service: unique("dash-svc").replace('.', "-"),
        group: unique("dash-workers"),
        requests: unique("dash-requests"),
    };
    let (group, service, tenant, task) = (&s.group, &s.service, &s.tenant, &s.task);
    let predictions = unique("dash-predictions");
    let usage_topic = unique("dash-usage");
    // One partition: once the monitor has seen a probe, it sees every later prediction.
    create_topic(&predictions, 1).await;
    create_topic(&s.requests, 2).await;
    create_topic(&usage_topic, 1).await;

    let _cleanup = feed::RegistryCleanup(task.clone());
    feed::registry(task).await;
    let (_accountant, costs_addr) = feed::cost_accountant(&usage_topic, tenant, task).await;

    // The monitor under test.
    let (_monitor, addr) = spawn_service(
        "monitor",
        &[
            ("AIFAB_MONITOR_WATCH", format!("{group}={}", s.requests)),
            ("AIFAB_MONITOR_DISCOVER", "false".into()),
            ("AIFAB_MONITOR_INTERVAL_MS", "500".into()),
            ("AIFAB_MONITOR_GROUP", unique("dash-monitor")),
            ("AIFAB_MONITOR_PREDICTIONS_TOPIC", predictions.clone()),
            ("AIFAB_MONITOR_DLQ_TOPIC", unique("dash-no-dlq")),
            ("AIFAB_MONITOR_WINDOW_S", "600".into()),
            ("AIFAB_MONITOR_COSTS_URL", format!("http://{costs_addr}")),
            ("AIFAB_MONITOR_DASHBOARD_REFRESH_MS", "500".into()),
        ],
    );
    wait_ready(&addr, "the monitor").await;
    let (code, page) = http_get(&addr, "/").await.unwrap();
    assert_eq!(code, 200);
    assert!(
        page.contains("/v1/dashboard") && !page.contains("<script src"),
        "one self-contained page"
    );

    // The monitor reads predictions from the end: probe until it sees one, then the rest.
    feed::probe_until_seen(&addr, &predictions, &s.probe_task, tenant).await;
    feed::predictions_and_lag(&s, &predictions).await;
    let decision = feed::scale_decision(service).await;

    let before = eventually(
        Duration::from_secs(90),
        "the dashboard to show every input",
        || {
            let (addr, group, service, tenant, task) = (
                addr.clone(),
                group.clone(),
                service.clone(),
                tenant.clone(),
                task.clone(),
            );
            async move {
                let d = get_json(&addr, "/v1/dashboard").await?;
                complete(&d, &group, &service, &tenant, &task)?;
                Some(d)
            }
        },
    )
    .await;
    // The tenant's spend is the accountant's: 5 × 37 device-seconds at 0.001.
    let (_, _, ten, v1, v2) = complete(&before, group, service, tenant, task).unwrap();
    assert!(
        (ten["spent"].as_f64().unwrap() - 0.185).abs() < 1e-9,
        "{ten}"
    );
    assert_eq!(
        (ten["budget"].as_f64(), ten["state"].as_str()),
        (Some(1.0), Some("ok"))
    );
    assert_eq!(
        (v1["macro_f1"].as_f64(), v1["aliases"][0].as_str()),
        (Some(0.9123), Some("production"))
    );
    assert_eq!(
        (v2["aliases"][0].as_str(), v2["rollout"].as_str()),
        (Some("candidate"), Some("canary 25%"))
    );
    assert_eq!(
        before["sources"]["costs"]["ok"], true,
        "{}",
        before["sources"]
    );

    // Render it.
    let profile = tempfile::tempdir().unwrap();
    let url = format!("http://{addr}/");
    let out = chromium(&[
        format!("--user-data-dir={}", profile.path().display()),
        "--virtual-time-budget=5000".into(),
        "--dump-dom".into(),
        url.clone(),
    ]);
    let dom = String::from_utf8(out.stdout).unwrap();
    let after = get_json(&addr, "/v1/dashboard")
        .await
        .expect("the dashboard JSON");
    assert_eq!(
        stable(&before, group, service, tenant, task),
        stable(&after, group, service, tenant, task),
        "the checked values held still while the page rendered"
    );
    assert!(
        dom.contains("data-rendered-at=\"1"),
        "the page's script rendered the JSON: {}",
        &dom[..dom.len().min(2000)]
    );
    page::check_page(&dom, &after, &s, &decision);

    // `aifab status` prints the same values from the same JSON.
    let t = find(&after["tenants"], "tenant", tenant).unwrap();
    cli::check_status_cli(&addr, &s, t["spent"].as_f64().unwrap());

    // A screenshot, for people.
    let shot = bin_path("aifab-monitor")
        .parent()
        .unwrap()
        .join("dashboard-screenshot.png");
    let _ = std::fs::remove_file(&shot);
    chromium(&[
        format!("--user-data-dir={}", profile.path().display()),
        "--virtual-time-budget=5000".into(),
        "--window-size=1280,1600".into(),
        format!("--screenshot={}", shot.display()),
        url,
    ]);
    let size = std::fs::metadata(&shot).map(|m| m.len()).unwrap_or(0);
    assert!(
        size > 10_000,
        "a screenshot at {} ({size} bytes)",
        shot.display()
    );
    eprintln!("dashboard screenshot: {}", shot.display());
}
