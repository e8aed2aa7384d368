//! The cost accountant against the live stack: usage charged exactly once even when the
//! topic holds duplicates and is replayed from the start by a new group; bad records
//! dead-lettered; budgets set over HTTP, NATS and `aifab costs budget`; warning and
//! exceeded fire once per period; `GET /v1/costs` and `aifab costs` report.

use std::process::Stdio;
use std::time::Duration;

use aifab_core::messages::{
    decode, encode, tag, BudgetEvent, BudgetEventKind, BudgetPeriod, BudgetSet, UsageRecord,
};
use aifab_core::topics::subjects;
use aifab_tests::*;
use futures::StreamExt;
use rdkafka::producer::{FutureProducer, FutureRecord};
use serde_json::Value;
use tokio::process::{Child, Command};

struct Accountant {
    child: Child,
    addr: String,
}

fn start(topic: &str, group: &str, prefix: &str, extra: &[(&str, &str)]) -> Accountant {
    let addr = format!("127.0.0.1:{}", free_port());
    let mut cmd = Command::new(bin_path("aifab-cost-accountant"));
    cmd.env("AIFAB_HTTP_ADDR", &addr)
        .env("AIFAB_USAGE_TOPIC", topic)
        .env("AIFAB_COST_GROUP", group)
        .env("AIFAB_COST_REDIS_PREFIX", prefix)
        // 3.60 per device-hour: a device-second costs 0.001.
        .env("AIFAB_PRICES", "cpu=3.60,cuda=36")
        .env("AIFAB_BUDGET_INTERVAL_MS", "200")
        .env("AIFAB_BUDGET_STATUS_INTERVAL_MS", "500")
        .env("AIFAB_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .kill_on_drop(true);
    for (k, v) in extra {
        cmd.env(k, v);
    }
    Accountant {
        child: cmd.spawn().expect("start cost-accountant"),
        addr,
    }
}

async fn get_json(addr: &str, path: &str) -> Option<Value> {
    match http_get(addr, path).await {
        Ok((200, body)) => serde_json::from_str(&body).ok(),
        _ => None,
    }
}

fn usage(i: usize, tenant: &str, device_seconds: f64, idle: f64) -> UsageRecord {
    UsageRecord {
        schema: tag(),
        usage_id: format!("batch-{i}:{tenant}"),
        batch_id: format!("batch-{i}"),
        worker: "w-0".into(),
        tenant: tenant.into(),
        task: "spam".into(),
        model_version: "v1".into(),
        device_kind: "cpu".into(),
        rows: 10,
        tokens: 200,
        device_seconds,
        idle_seconds: idle,
        at_ms: aifab_core::now_ms(),
    }
}

async fn produce(topic: &str, payloads: Vec<(String, Vec<u8>)>) {
    let p: FutureProducer = aifab_core::kafka::producer_config(&kafka_brokers(), "aifab-tests")
        .create()
        .unwrap();
    for (key, bytes) in payloads {
        p.send(
            FutureRecord::to(topic).key(&key).payload(&bytes),
            Duration::from_secs(30),
        )
        .await
        .map_err(|(e, _)| e)
        .unwrap();
    }
}

async fn wait_predictions(addr: &str, tenant_filter: &str, want: u64) -> Value {
    let path = format!("/v1/costs{tenant_filter}");
    eventually(
        Duration::from_secs(90),
        &format!("{want} predictions charged"),
        || {
            let path = path.clone();
            async move {
                let r = get_json(addr, &path).await?;
                (r["totals"]["predictions"].as_u64() == Some(want)).then_some(r)
            }
        },
    )
    .await
}

async fn group_drained(group: &str, topic: &str) {
    let (group, topic) = (group.to_string(), topic.to_string());
    eventually(
        Duration::from_secs(90),
        "the accountant's group to reach lag 0",
        || {
            let (group, topic) = (group.clone(), topic.clone());
            async move {
                tokio::task::spawn_blocking(move || {
                    let c =
                        aifab_core::kafka::consumer_config(&kafka_brokers(), "aifab-tests", &group)
                            .create()
                            .unwrap();
                    let offs =
                        aifab_core::kafka::group_offsets(&c, &topic, Duration::from_secs(10))
                            .ok()?;
                    (offs
                        .iter()
                        .all(|p| p.committed.is_some() || p.high_watermark == 0)
                        && offs.iter().map(|p| p.lag).sum::<i64>() == 0)
                        .then_some(())
                })
                .await
                .unwrap()
            }
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn usage_is_charged_once_through_duplicates_and_a_replay() {
    let topic = unique("usage");
    create_topic(&topic, 4).await;
    let prefix = unique("costs");
    let n = 200;
    // Every record twice (a producer retry, a worker re-run), plus one bad record.
    let mut payloads = Vec::new();
    for i in 0..n {
        let tenant = if i % 4 == 0 { "beta" } else { "acme" };
        let u = usage(i, tenant, 1.0, if i % 10 == 0 { 2.0 } else { 0.0 });
        payloads.push((u.usage_id.clone(), encode(&u)));
        payloads.push((u.usage_id.clone(), encode(&u)));
    }
    payloads.push((
        "bad".into(),
        b"{\"schema\":\"usage/v1\",\"tenant\":7}".to_vec(),
    ));
    let dlq_start = dlq_high_watermark().await;
    produce(&topic, payloads).await;

    let first_group = unique("acct");
    let first = start(&topic, &first_group, &prefix, &[]);
    let report = wait_predictions(&first.addr, "", (n * 10) as u64).await;
    let totals = &report["totals"];
    // 200 device-seconds at 0.001, 20 × 2 idle seconds at 0.001.
    assert!(
        (totals["direct_cost"].as_f64().unwrap() - 0.2).abs() < 1e-9,
        "{totals}"
    );
    assert!(
        (totals["idle_cost"].as_f64().unwrap() - 0.04).abs() < 1e-9,
        "{totals}"
    );
    assert!(
        (totals["cost_per_1k_predictions"].as_f64().unwrap() - 0.24 / 2.0).abs() < 1e-9,
        "{totals}"
    );
    let tenants = report["tenants"].as_array().unwrap();
    let acme = tenants.iter().find(|t| t["tenant"] == "acme").unwrap();
    let beta = tenants.iter().find(|t| t["tenant"] == "beta").unwrap();
    assert_eq!(
        (acme["predictions"].as_u64(), beta["predictions"].as_u64()),
        (Some(1500), Some(500))
    );
    // Idle is shared by direct cost: 3/4 to acme.
    assert!(
        (acme["idle_share"].as_f64().unwrap() - 0.03).abs() < 1e-9,
        "{acme}"
    );
    assert_eq!(acme["models"][0]["model"], "spam");
    group_drained(&first_group, &topic).await;
    let metrics = http_get(&first.addr, "/metrics").await.unwrap().1;
    assert_eq!(
        metric(
            &metrics,
            "aifab_cost_accountant_usage_records_total{result=\"duplicate\"}"
        ),
        Some(n as f64),
        "{metrics}"
    );

    // The bad record is a dead letter naming where it came from.
    let dl = dead_letters_from(dlq_start, &topic, 1, Duration::from_secs(60))
        .await
        .remove(0);
    assert_eq!(dl.stage, "cost-accountant");
    assert!(dl.reason.contains("tenant"), "{}", dl.reason);

    // Replay: a new group reads the topic from the start into the same ledger.
    let mut first = first;
    sigterm(&first.child);
    let status = tokio::time::timeout(Duration::from_secs(30), first.child.wait())
        .await
        .expect("exits")
        .unwrap();
    assert!(status.success(), "{status}");
    let replay_group = unique("replay");
    let second = start(&topic, &replay_group, &prefix, &[]);
    group_drained(&replay_group, &topic).await;
    let again = get_json(&second.addr, "/v1/costs").await.unwrap();
    for k in [
        "predictions",
        "direct_cost",
        "idle_cost",
        "total_cost",
        "device_seconds",
        "idle_seconds",
        "tokens",
    ] {
        assert_eq!(
            again["totals"][k], report["totals"][k],
            "replay changed {k}"
        );
    }
    let metrics = http_get(&second.addr, "/metrics").await.unwrap().1;
    assert_eq!(
        metric(
            &metrics,
            "aifab_cost_accountant_usage_records_total{result=\"duplicate\"}"
        ),
        Some(2.0 * n as f64)
    );
    assert_eq!(
        metric(
            &metrics,
            "aifab_cost_accountant_usage_records_total{result=\"charged\"}"
        ),
        None,
        "nothing charged twice"
    );
    delete_topic(&topic).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn budgets_warn_at_80_percent_and_exceed_at_100_once_per_period() {
    let topic = unique("usage");
    create_topic(&topic, 2).await;
    let prefix = unique("costs");
    let tenant = format!("t{}", &uuid::Uuid::new_v4().simple().to_string()[..12]);
    let acct = start(&topic, &unique("acct"), &prefix, &[]);
    let addr = acct.addr.clone();
    eventually(
        Duration::from_secs(60),
        "the accountant to be ready",
        || {
            let addr = addr.clone();
            async move { matches!(http_get(&addr, "/readyz").await, Ok((200, _))).then_some(()) }
        },
    )
    .await;
    let nats = async_nats::connect(nats_url()).await.unwrap();
    let mut events = nats.subscribe(subjects::BUDGET_ALL).await.unwrap();

    // Over HTTP: 0.01 a day for the tenant. A bad budget is refused with the reason.
    let (code, body) = post_json(
        &addr,
        "/v1/budgets",
        &serde_json::json!({"tenant": tenant, "period": "day", "amount": 0.01}),
    )
    .await;
    assert_eq!(code, 200, "{body}");
    let (code, body) = post_json(
        &addr,
        "/v1/budgets",
        &serde_json::json!({"tenant": tenant, "period": "day", "amount": 1, "currency": "EUR"}),
    )
    .await;
    assert_eq!(code, 400);
    assert!(body.contains("EUR") && body.contains("USD"), "{body}");
    let (code, body) = post_json(
        &addr,
        "/v1/budgets",
        &serde_json::json!({"tenant": "bad tenant!", "period": "day", "amount": 1}),
    )
    .await;
    assert_eq!(code, 400);
    assert!(body.contains("tenant"), "{body}");
    // Over NATS: the platform-wide budget.
    let set = BudgetSet {
        schema: tag(),
        tenant: "all".into(),
        period: BudgetPeriod::Month,
        amount: 1000.0,
        currency: "USD".into(),
        at_ms: aifab_core::now_ms(),
    };
    nats.publish(subjects::BUDGET_SET, encode(&set).into())
        .await
        .unwrap();
    nats.flush().await.unwrap();
    // With the CLI.
    let second = format!("{tenant}x");
    let out = Command::new(bin_path("aifab"))
        .args([
            "costs",
            "budget",
            "--tenant",
            &second,
            "--period",
            "month",
            "--amount",
            "5",
            "--url",
            &format!("http://{addr}"),
        ])
        .env("AIFAB_NATS_URL", nats_url())
        .output()
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("the cost accountant has it"), "{stdout}");
    let budgets = eventually(Duration::from_secs(10), "three budgets", || {
        let addr = addr.clone();
        async move {
            get_json(&addr, "/v1/budgets")
                .await
                .filter(|b| b.as_array().unwrap().len() == 3)
        }
    })
    .await;
    assert!(budgets
        .as_array()
        .unwrap()
        .iter()
        .any(|b| b["tenant"] == "all" && b["period"] == "month" && b["amount"] == 1000.0));

    // 0.002 per record: the 4th crosses 80%, the 5th reaches 100%.
    let recs: Vec<(String, Vec<u8>)> = (0..4)
        .map(|i| usage(i, &tenant, 2.0, 0.0))
        .map(|u| (u.usage_id.clone(), encode(&u)))
        .collect();
    produce(&topic, recs).await;
    let mut seen: Vec<BudgetEvent> = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while !seen.iter().any(|e| e.kind == BudgetEventKind::Warning) {
        let msg = tokio::time::timeout_at(deadline, events.next())
            .await
            .expect("a warning within 60 s")
            .unwrap();
        if let Ok(e) = decode::<BudgetEvent>(&msg.payload) {
            if e.tenant == tenant {
                if e.kind != BudgetEventKind::Status {
                    assert_eq!(msg.subject.as_str(), subjects::BUDGET_WARNING);
                }
                seen.push(e);
            }
        }
    }
    let warning = seen
        .iter()
        .find(|e| e.kind == BudgetEventKind::Warning)
        .unwrap()
        .clone();
    assert!(
        (warning.spent - 0.008).abs() < 1e-9 && warning.budget == 0.01,
        "{warning:?}"
    );
    assert!(
        warning.period.len() == 10,
        "a day period: {}",
        warning.period
    );
    assert!(!seen.iter().any(|e| e.kind == BudgetEventKind::Exceeded));

    let recs: Vec<(String, Vec<u8>)> = (4..8)
        .map(|i| usage(i, &tenant, 2.0, 0.0))
        .map(|u| (u.usage_id.clone(), encode(&u)))
        .collect();
    produce(&topic, recs).await;
    // Collect for a while: exactly one warning and one exceeded, and status reports.
    let until = tokio::time::Instant::now() + Duration::from_secs(6);
    while let Ok(Some(msg)) = tokio::time::timeout_at(until, events.next()).await {
        if let Ok(e) = decode::<BudgetEvent>(&msg.payload) {
            if e.tenant == tenant {
                seen.push(e);
            }
        }
    }
    let count = |k| seen.iter().filter(|e| e.kind == k).count();
    assert_eq!(count(BudgetEventKind::Warning), 1, "{seen:?}");
    assert_eq!(count(BudgetEventKind::Exceeded), 1, "{seen:?}");
    assert!(
        count(BudgetEventKind::Status) >= 2,
        "status reports: {seen:?}"
    );
    let last = seen
        .iter()
        .rev()
        .find(|e| e.kind == BudgetEventKind::Status)
        .unwrap();
    assert!((last.spent - 0.016).abs() < 1e-9, "{last:?}");

    // The report and the CLI agree.
    let report = get_json(&addr, &format!("/v1/costs?tenant={tenant}"))
        .await
        .unwrap();
    let t = &report["tenants"][0];
    assert_eq!(t["budget"], 0.01);
    assert!(
        (t["remaining"].as_f64().unwrap() + 0.006).abs() < 1e-9,
        "{t}"
    );
    let out = Command::new(bin_path("aifab"))
        .args([
            "costs",
            "--url",
            &format!("http://{addr}"),
            "--tenant",
            &tenant,
        ])
        .output()
        .await
        .unwrap();
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{table}");
    assert!(
        table
            .lines()
            .any(|l| l.starts_with(&tenant) && l.contains("160%")),
        "{table}"
    );
    let mut acct = acct;
    sigterm(&acct.child);
    assert!(
        tokio::time::timeout(Duration::from_secs(30), acct.child.wait())
            .await
            .expect("exits")
            .unwrap()
            .success()
    );
    delete_topic(&topic).await;
}
