//! The monitor's dashboard against the live stack, rendered in headless Chromium: a cost
//! accountant charges a tenant under a budget (its `aifab.budget.status` reports and
//! `GET /v1/costs` reach the monitor), a model registry entry with metrics (Redis), a
//! scale decision and a replica report (NATS), predictions on a predictions topic and a
//! lagging group. The values the page renders must be the ones `GET /v1/dashboard`
//! serves; a screenshot is saved under the target dir.

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

async fn produce(topic: &str, payloads: Vec<(String, Vec<u8>)>) {
    let p: FutureProducer = aifab_core::kafka::producer_config(&kafka_brokers(), "aifab-tests")
        .create()
        .unwrap();
    for (k, v) in payloads {
        p.send(
            FutureRecord::to(topic).key(&k).payload(&v),
            Duration::from_secs(30),
        )
        .await
        .map_err(|(e, _)| e)
        .unwrap();
    }
}

async fn get_json(addr: &str, path: &str) -> Option<Value> {
    match http_get(addr, path).await {
        Ok((200, body)) => serde_json::from_str(&body).ok(),
        _ => None,
    }
}

fn prediction(id: String, task: &str, version: &str, tenant: &str, latency_ms: i64) -> Prediction {
    let now = aifab_core::now_ms();
    Prediction {
        schema: tag(),
        id,
        tenant: tenant.into(),
        task: task.into(),
        outcome: Outcome::Ok,
        label: Some("ham".into()),
        scores: [("ham".to_string(), 0.8f32), ("spam".to_string(), 0.2f32)].into(),
        model_version: version.into(),
        arm: if version == "v1" {
            Arm::Production
        } else {
            Arm::Canary
        },
        batch_id: Some("b".into()),
        batch_size: 1,
        queue_ms: 0.0,
        compute_ms: 1.0,
        received_at_ms: now - latency_ms,
        produced_at_ms: now,
        worker: "w-0".into(),
    }
}

fn model(task: &str, version: &str, accuracy: f64, macro_f1: f64, at: i64) -> ModelRecord {
    ModelRecord {
        task: task.into(),
        version: version.into(),
        artifact_uri: format!("file:///nowhere/{task}/{version}"),
        encoder: "all-MiniLM-L6-v2".into(),
        encoder_sha256: "0".repeat(64),
        labels: vec!["ham".into(), "spam".into()],
        metrics: [
            ("accuracy".to_string(), accuracy),
            ("macro_f1".to_string(), macro_f1),
        ]
        .into(),
        train_examples: 800,
        eval_examples: 200,
        created_at_ms: at,
    }
}

// ------------------------------------------------------------------ reading the DOM

/// The attributes of the opening tag at `at` (which points into the tag).
fn tag_attrs(dom: &str, at: usize) -> BTreeMap<String, String> {
    let start = dom[..at].rfind('<').expect("a tag");
    let end = at + dom[at..].find('>').expect("the tag ends");
    let tag = &dom[start + 1..end];
    let mut out = BTreeMap::new();
    let mut rest = tag.split_once(' ').map(|(_, r)| r).unwrap_or("");
    while let Some(eq) = rest.find("=\"") {
        let name = rest[..eq].trim().to_string();
        let after = &rest[eq + 2..];
        let close = after.find('"').expect("a closed attribute");
        out.insert(name, unescape(&after[..close]));
        rest = &after[close + 1..];
    }
    out
}

fn unescape(s: &str) -> String {
    s.replace("&quot;", "\"")
        .replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&#39;", "'")
        .replace("&amp;", "&")
}

/// Text inside the element whose opening tag is at `at`, tags stripped, up to `end_tag`.
fn inner_text(dom: &str, at: usize, end_tag: &str) -> String {
    let open_end = at + dom[at..].find('>').unwrap() + 1;
    let close = open_end + dom[open_end..].find(end_tag).unwrap_or(0);
    let mut text = String::new();
    let mut in_tag = false;
    for c in dom[open_end..close].chars() {
        match c {
            '<' => in_tag = true,
            '>' => in_tag = false,
            c if !in_tag => text.push(c),
            _ => {}
        }
    }
    unescape(text.trim())
}

/// `data-field="name"`: (data-value, text).
fn field(dom: &str, name: &str) -> (Option<String>, String) {
    let at = dom
        .find(&format!("data-field=\"{name}\""))
        .unwrap_or_else(|| panic!("no data-field {name} in the DOM"));
    (
        tag_attrs(dom, at).get("data-value").cloned(),
        inner_text(dom, at, "</span>"),
    )
}

/// The `<tr>` with `attr="value"` (and every other given attribute), as a slice of the DOM.
fn row<'a>(dom: &'a str, attrs: &[(&str, &str)]) -> &'a str {
    let (attr, value) = attrs[0];
    let needle = format!("{attr}=\"{value}\"");
    let mut from = 0;
    while let Some(i) = dom[from..].find(&needle) {
        let at = from + i;
        let start = dom[..at].rfind('<').unwrap();
        if dom[start..].starts_with("<tr") {
            let a = tag_attrs(dom, at);
            if attrs
                .iter()
                .all(|(k, v)| a.get(*k).map(String::as_str) == Some(*v))
            {
                let end = start + dom[start..].find("</tr>").expect("the row ends");
                return &dom[start..end];
            }
        }
        from = at + needle.len();
    }
    panic!("no row with {attrs:?} in the rendered page")
}

/// A cell of a row: (data-value, text).
fn cell(row: &str, col: &str) -> (Option<String>, String) {
    let at = row
        .find(&format!("data-col=\"{col}\""))
        .unwrap_or_else(|| panic!("no cell {col} in {row}"));
    (
        tag_attrs(row, at).get("data-value").cloned(),
        inner_text(row, at, "</td>"),
    )
}

fn num(v: &Option<String>) -> f64 {
    v.as_deref()
        .unwrap_or_else(|| panic!("no data-value"))
        .parse()
        .unwrap()
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
        "v1": [v1["macro_f1"], v1["accuracy"], v1["aliases"], v1["live"]["count"], v1["live"]["p99_ms"]],
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_page_renders_what_the_dashboard_json_says() {
    let task = unique("dash-task").replace('.', "-");
    let tenant = unique("dash-tenant").replace('.', "-");
    let service = unique("dash-svc").replace('.', "-");
    let group = unique("dash-workers");
    let requests = unique("dash-requests");
    let predictions = unique("dash-predictions");
    let usage_topic = unique("dash-usage");
    // One partition: once the monitor has seen a probe, it sees every later prediction.
    create_topic(&predictions, 1).await;
    create_topic(&requests, 2).await;
    create_topic(&usage_topic, 1).await;

    // The model registry: v1 production, v2 candidate on a 25% canary.
    let _cleanup = RegistryCleanup(task.clone());
    let conn = redis::Client::open(redis_url())
        .unwrap()
        .get_connection_manager()
        .await
        .unwrap();
    let mut registry = Registry::new(conn);
    let t0 = aifab_core::now_ms();
    registry
        .put(&model(&task, "v1", 0.9561, 0.9123, t0 - 3_600_000))
        .await
        .unwrap();
    registry
        .put(&model(&task, "v2", 0.9402, 0.8876, t0 - 60_000))
        .await
        .unwrap();
    registry.set_production(&task, "v1").await.unwrap();
    registry.set_candidate(&task, "v2").await.unwrap();
    registry
        .set_rollout(&task, Rollout::Canary { share: 0.25 })
        .await
        .unwrap();

    // A cost accountant of its own: a device-second costs 0.001; budget 1.00 a day.
    let (_accountant, costs_addr) = spawn_service(
        "cost-accountant",
        &[
            ("AIFAB_USAGE_TOPIC", usage_topic.clone()),
            ("AIFAB_COST_GROUP", unique("dash-costs")),
            ("AIFAB_COST_REDIS_PREFIX", unique("dash-costs")),
            ("AIFAB_PRICES", "cpu=3.60".into()),
            ("AIFAB_BUDGET_INTERVAL_MS", "200".into()),
            ("AIFAB_BUDGET_STATUS_INTERVAL_MS", "500".into()),
        ],
    );
    wait_ready(&costs_addr, "the cost accountant").await;
    let (code, body) = post_json(
        &costs_addr,
        "/v1/budgets",
        &serde_json::json!({"tenant": tenant, "period": "day", "amount": 1.0}),
    )
    .await;
    assert_eq!(code, 200, "{body}");
    let usage: Vec<(String, Vec<u8>)> = (0..5)
        .map(|i| {
            let u = UsageRecord {
                schema: tag(),
                usage_id: format!("dash-batch-{i}:{tenant}"),
                batch_id: format!("dash-batch-{i}"),
                worker: "w-0".into(),
                tenant: tenant.clone(),
                task: task.clone(),
                model_version: "v1".into(),
                device_kind: "cpu".into(),
                rows: 10,
                tokens: 200,
                device_seconds: 37.0,
                idle_seconds: 0.0,
                at_ms: aifab_core::now_ms(),
            };
            (u.usage_id.clone(), encode(&u))
        })
        .collect();
    produce(&usage_topic, usage).await;

    // The monitor under test.
    let (_monitor, addr) = spawn_service(
        "monitor",
        &[
            ("AIFAB_MONITOR_WATCH", format!("{group}={requests}")),
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
    let probe_task = format!("{task}-probe");
    let mut probes = 0;
    eventually(
        Duration::from_secs(60),
        "the monitor to see a probe prediction",
        || {
            probes += 1;
            let (addr, predictions, probe_task, tenant) = (
                addr.clone(),
                predictions.clone(),
                probe_task.clone(),
                tenant.clone(),
            );
            let id = format!("probe-{probes}");
            async move {
                produce(
                    &predictions,
                    vec![(
                        id.clone(),
                        encode(&prediction(id, &probe_task, "v0", &tenant, 5)),
                    )],
                )
                .await;
                let d = get_json(&addr, "/v1/dashboard").await?;
                (d["throughput"]["predictions"].as_u64()? > 0).then_some(())
            }
        },
    )
    .await;
    let mut batch = Vec::new();
    for i in 0..50 {
        let (version, latency) = if i < 40 {
            ("v1", 100 + i as i64 * 5)
        } else {
            ("v2", 400)
        };
        let p = prediction(format!("dash-{i}"), &task, version, &tenant, latency);
        batch.push((p.id.clone(), encode(&p)));
    }
    produce(&predictions, batch).await;
    // 30 requests nobody consumed: lag 30.
    produce(
        &requests,
        (0..30).map(|i| (format!("r{i}"), b"{}".to_vec())).collect(),
    )
    .await;
    // The autoscaler's decision and the actuator's report.
    let nats = async_nats::connect(nats_url()).await.unwrap();
    let decision = ScaleDecision {
        schema: tag(),
        service: service.clone(),
        current_replicas: 1,
        desired_replicas: 3,
        reason: "lag".into(),
        detail: "lag 30 records rising at 6.0/s: 3 replicas to drain within 15 s".into(),
        inputs: ScaleInputs {
            total_lag: 30,
            lag_rate_per_s: 6.0,
            partitions: 2,
            burn_rate_per_hour: None,
            remaining_budget: None,
        },
        at_ms: aifab_core::now_ms(),
    };
    nats.publish(subjects::scale(&service), encode(&decision).into())
        .await
        .unwrap();
    let report = ReplicaReport {
        schema: tag(),
        service: service.clone(),
        replicas: 3,
        actuator: "local".into(),
        at_ms: aifab_core::now_ms(),
    };
    nats.publish(subjects::replicas(&service), encode(&report).into())
        .await
        .unwrap();
    nats.flush().await.unwrap();

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
    let (_, _, ten, v1, v2) = complete(&before, &group, &service, &tenant, &task).unwrap();
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
    let s = stable(&before, &group, &service, &tenant, &task);
    assert_eq!(
        s,
        stable(&after, &group, &service, &tenant, &task),
        "the checked values held still while the page rendered"
    );
    assert!(
        dom.contains("data-rendered-at=\"1"),
        "the page's script rendered the JSON: {}",
        &dom[..dom.len().min(2000)]
    );

    // Throughput and latency.
    let d = &after;
    let (v, text) = field(&dom, "throughput.predictions");
    assert_eq!(
        num(&v) as u64,
        d["throughput"]["predictions"].as_u64().unwrap()
    );
    assert_eq!(text, d["throughput"]["predictions"].to_string());
    assert_eq!(
        d["throughput"]["predictions"].as_u64().unwrap(),
        probes_seen(d, &probe_task) + 50
    );
    for q in ["p50", "p90", "p99", "max"] {
        let (v, text) = field(&dom, &format!("latency.{q}"));
        let want = d["latency_ms"][q].as_f64().unwrap();
        assert_eq!(num(&v), want, "latency {q}");
        assert_eq!(text, format!("{want:.0}"), "latency {q}");
    }

    // Lag per group.
    let r = row(
        &dom,
        &[
            ("data-group", group.as_str()),
            ("data-topic", requests.as_str()),
        ],
    );
    assert_eq!(cell(r, "total_lag"), (Some("30".into()), "30".into()));
    assert_eq!(cell(r, "partitions").1, "2");

    // Replicas and the scale decision.
    let r = row(&dom, &[("data-service", service.as_str())]);
    assert_eq!(cell(r, "replicas").1, "3");
    assert_eq!(cell(r, "desired").1, "3");
    assert_eq!(cell(r, "reason").1, "lag");
    assert_eq!(cell(r, "actuator").1, "local");
    let r = row(
        &dom,
        &[
            ("data-service", service.as_str()),
            ("data-at", &decision.at_ms.to_string()),
        ],
    );
    assert_eq!(cell(r, "detail").1, decision.detail);
    assert_eq!(cell(r, "change").1, "1 → 3");

    // Spend vs budget.
    let t = find(&d["tenants"], "tenant", &tenant).unwrap();
    let r = row(
        &dom,
        &[
            ("data-tenant", tenant.as_str()),
            ("data-period", t["period"].as_str().unwrap()),
        ],
    );
    let (v, text) = cell(r, "spent");
    assert_eq!(num(&v), t["spent"].as_f64().unwrap());
    assert_eq!(text, format!("{:.4} USD", t["spent"].as_f64().unwrap()));
    assert_eq!(cell(r, "budget"), (Some("1".into()), "1.00".into()));
    assert_eq!(
        cell(r, "used_ratio").1,
        format!("{:.1}%", t["used_ratio"].as_f64().unwrap() * 100.0)
    );
    assert_eq!(cell(r, "predictions").1, "50");
    assert_eq!(cell(r, "state").1, "ok");

    // Model versions and their metrics.
    let r = row(
        &dom,
        &[("data-task", task.as_str()), ("data-version", "v1")],
    );
    assert_eq!(
        cell(r, "macro_f1"),
        (Some("0.9123".into()), "0.9123".into())
    );
    assert_eq!(cell(r, "accuracy").1, "0.9561");
    assert_eq!(cell(r, "aliases").1, "production");
    assert_eq!(cell(r, "live_count").1, "40");
    let v1 = d["models"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["task"] == task.as_str() && m["version"] == "v1")
        .unwrap();
    assert_eq!(
        cell(r, "live_p99_ms").1,
        format!("{:.0}", v1["live"]["p99_ms"].as_f64().unwrap())
    );
    let r = row(
        &dom,
        &[("data-task", task.as_str()), ("data-version", "v2")],
    );
    assert_eq!(cell(r, "macro_f1").1, "0.8876");
    assert_eq!(cell(r, "aliases").1, "candidatecanary 25%");
    assert_eq!(cell(r, "live_count").1, "10");

    // `aifab status` prints the same values from the same JSON.
    let out = std::process::Command::new(bin_path("aifab"))
        .args(["status", "--monitor-url", &format!("http://{addr}")])
        .env("AIFAB_LOG", "warn")
        .output()
        .expect("run aifab status");
    let text = String::from_utf8_lossy(&out.stdout);
    eprintln!("aifab status:\n{text}");
    let line = |cells: &[&str]| {
        text.lines()
            .find(|l| {
                l.split_whitespace()
                    .take(cells.len())
                    .eq(cells.iter().copied())
            })
            .unwrap_or_else(|| panic!("aifab status has no line starting {cells:?}:\n{text}"))
            .split_whitespace()
            .collect::<Vec<_>>()
    };
    let lag = line(&[&group, &requests]);
    assert_eq!((lag[2], lag[4]), ("30", "2"), "lag and partitions");
    assert_eq!(line(&[&service])[1..4], ["3", "3", "lag:"]);
    let spent = format!("{:.4}", t["spent"].as_f64().unwrap());
    assert_eq!(line(&[&tenant])[2..5], [spent.as_str(), "USD", "1.00"]);
    assert_eq!(line(&[&task, "v1"])[2..5], ["production", "-", "0.9561"]);
    assert_eq!(
        line(&[&task, "v2"])[2..6],
        ["candidate", "canary", "25%", "0.9402"]
    );
    assert!(
        text.lines()
            .any(|l| l.starts_with("throughput (last ") && l.contains(" predictions/s, p50 ")),
        "{text}"
    );

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

/// Deletes a task's registry keys when dropped (pass or fail): the registry's key names
/// have no prefix to keep test tasks apart, and every dashboard lists every task.
struct RegistryCleanup(String);

impl Drop for RegistryCleanup {
    fn drop(&mut self) {
        let Ok(mut conn) = redis::Client::open(redis_url()).and_then(|c| c.get_connection()) else {
            return;
        };
        let keys: Vec<String> = redis::cmd("KEYS")
            .arg(format!("aifab:registry:{}:*", self.0))
            .query(&mut conn)
            .unwrap_or_default();
        if !keys.is_empty() {
            let _: redis::RedisResult<()> = redis::cmd("DEL").arg(&keys).query(&mut conn);
        }
    }
}

/// Probe predictions the monitor counted (the unregistered `<task>-probe@v0` row).
fn probes_seen(d: &Value, probe_task: &str) -> u64 {
    find(&d["models"], "task", probe_task)
        .and_then(|m| m["live"]["count"].as_u64())
        .unwrap_or(0)
}
