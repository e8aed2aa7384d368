//! The monitor against the live stack: lag readings per partition with a rate of change
//! on `aifab.lag.<group>`; latency percentiles and throughput per model and tenant from
//! predictions; SLO alerts that fire and resolve on `aifab.alerts.<rule>`; `/metrics`.

use std::process::Stdio;
use std::time::Duration;

use aifab_core::messages::{
    decode, encode, tag, Alert, AlertState, Arm, LagReading, Outcome, Prediction,
};
use aifab_core::topics::subjects;
use aifab_tests::*;
use futures::StreamExt;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::producer::{FutureProducer, FutureRecord};
use tokio::process::Command;

async fn produce(topic: &str, payloads: Vec<(String, Vec<u8>)>) {
    let p: FutureProducer = aifab_core::kafka::producer_config(&kafka_brokers(), "aifab-tests")
        .create()
        .unwrap();
    let sends = payloads.into_iter().map(|(k, v)| {
        let p = p.clone();
        let topic = topic.to_string();
        async move {
            p.send(
                FutureRecord::to(&topic).key(&k).payload(&v),
                Duration::from_secs(30),
            )
            .await
            .map_err(|(e, _)| e)
            .unwrap();
        }
    });
    futures::future::join_all(sends).await;
}

fn prediction(i: usize, tenant: &str, version: &str, latency_ms: i64) -> Prediction {
    let now = aifab_core::now_ms();
    Prediction {
        schema: tag(),
        id: format!("p-{i}"),
        tenant: tenant.into(),
        task: "spam".into(),
        outcome: Outcome::Ok,
        label: Some("ham".into()),
        scores: [("ham".to_string(), 0.9f32), ("spam".to_string(), 0.1f32)].into(),
        model_version: version.into(),
        arm: Arm::Production,
        batch_id: Some("b".into()),
        batch_size: 1,
        queue_ms: 0.0,
        compute_ms: 1.0,
        received_at_ms: now - latency_ms,
        produced_at_ms: now,
        worker: "w".into(),
    }
}

async fn next_reading(sub: &mut async_nats::Subscriber) -> LagReading {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let msg = tokio::time::timeout_at(deadline, sub.next())
        .await
        .expect("a lag reading")
        .unwrap();
    decode::<LagReading>(&msg.payload).unwrap()
}

/// Alerts of `rule` from this test's monitor (known by its thresholds) until one in `state`.
async fn wait_alert(
    got: &[Alert],
    rule: &str,
    state: AlertState,
    alerts: &mut async_nats::Subscriber,
    thresholds: &[f64],
) -> Vec<Alert> {
    let mut found = Vec::new();
    if got.iter().any(|a| a.rule == rule && a.state == state) {
        return found;
    }
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let msg = tokio::time::timeout_at(deadline, alerts.next())
            .await
            .unwrap_or_else(|_| panic!("alert {rule} {state:?} within 30 s"))
            .unwrap();
        if let Ok(a) = decode::<Alert>(&msg.payload) {
            if a.rule == rule && thresholds.contains(&a.threshold) {
                let done = a.state == state;
                found.push(a);
                if done {
                    return found;
                }
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lag_latency_and_alerts() {
    let requests = unique("mon-requests");
    let predictions = unique("mon-predictions");
    create_topic(&requests, 3).await;
    create_topic(&predictions, 2).await;
    let group = unique("mon-workers");
    // An unusual threshold identifies this monitor's alerts on the shared subjects.
    let p99_slo = 777.0;
    let addr = format!("127.0.0.1:{}", free_port());
    let nats = async_nats::connect(nats_url()).await.unwrap();
    let mut lag_sub = nats.subscribe(subjects::lag(&group)).await.unwrap();
    let mut alerts = nats.subscribe(subjects::ALERTS_ALL).await.unwrap();
    nats.flush().await.unwrap();

    let mut monitor = Command::new(bin_path("aifab-monitor"))
        .env("AIFAB_HTTP_ADDR", &addr)
        .env("AIFAB_MONITOR_WATCH", format!("{group}={requests}"))
        .env("AIFAB_MONITOR_DISCOVER", "false")
        .env("AIFAB_MONITOR_INTERVAL_MS", "500")
        .env("AIFAB_MONITOR_GROUP", unique("monitor"))
        .env("AIFAB_MONITOR_PREDICTIONS_TOPIC", &predictions)
        .env("AIFAB_MONITOR_DLQ_TOPIC", unique("no-dlq"))
        .env("AIFAB_MONITOR_WINDOW_S", "4")
        .env("AIFAB_SLO_P99_MS", p99_slo.to_string())
        .env("AIFAB_SLO_MAX_LAG", "50")
        .env("AIFAB_SLO_MIN_SAMPLES", "10")
        .env("AIFAB_SLO_FOR_EVALS", "2")
        .env("AIFAB_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    eventually(Duration::from_secs(60), "the monitor to be ready", || {
        let addr = addr.clone();
        async move { matches!(http_get(&addr, "/readyz").await, Ok((200, _))).then_some(()) }
    })
    .await;

    // 90 requests nobody consumed yet: all lag, per partition.
    produce(
        &requests,
        (0..90).map(|i| (format!("r{i}"), b"{}".to_vec())).collect(),
    )
    .await;
    let r = loop {
        let r = next_reading(&mut lag_sub).await;
        if r.total_lag == 90 {
            break r;
        }
    };
    assert_eq!(
        (r.group.as_str(), r.topic.as_str()),
        (group.as_str(), requests.as_str())
    );
    assert_eq!(r.partitions.len(), 3);
    assert_eq!(r.partitions.iter().map(|p| p.lag).sum::<i64>(), 90);
    assert!(r
        .partitions
        .iter()
        .all(|p| p.committed.is_none() && p.high_watermark == p.lag));

    // The lag rule fires (90 > 50 for two evaluations)...
    let mut got: Vec<Alert> = Vec::new();
    let lag_rule = format!("lag-{group}");
    let found = wait_alert(
        &got,
        &lag_rule,
        AlertState::Firing,
        &mut alerts,
        &[50.0, p99_slo],
    )
    .await;
    got.extend(found);

    // The group commits 30 per partition: lag 0, draining.
    let (brokers, g, t) = (kafka_brokers(), group.clone(), requests.clone());
    tokio::task::spawn_blocking(move || {
        let c: BaseConsumer = aifab_core::kafka::consumer_config(&brokers, "aifab-tests", &g)
            .create()
            .unwrap();
        let mut tpl = rdkafka::TopicPartitionList::new();
        for p in 0..3 {
            let (_, high) = c.fetch_watermarks(&t, p, Duration::from_secs(10)).unwrap();
            tpl.add_partition_offset(&t, p, rdkafka::Offset::Offset(high))
                .unwrap();
        }
        c.commit(&tpl, CommitMode::Sync).unwrap();
    })
    .await
    .unwrap();
    let mut drained = None;
    for _ in 0..40 {
        let r = next_reading(&mut lag_sub).await;
        if r.total_lag == 0 {
            drained = Some(r);
            break;
        }
    }
    let drained = drained.expect("a reading with lag 0");
    assert!(
        drained.lag_rate_per_s < 0.0,
        "draining shows a negative rate: {drained:?}"
    );
    assert!(drained
        .partitions
        .iter()
        .all(|p| p.committed == Some(p.high_watermark)));

    // ...and resolves once the group has caught up.
    let found = wait_alert(
        &got,
        &lag_rule,
        AlertState::Resolved,
        &mut alerts,
        &[50.0, p99_slo],
    )
    .await;
    got.extend(found);
    let firing = got
        .iter()
        .find(|a| a.rule == lag_rule && a.state == AlertState::Firing)
        .unwrap();
    assert_eq!(firing.value, 90.0);
    assert!(firing.message.contains(&group), "{}", firing.message);

    // Slow predictions (1.5 s end to end): the p99 rule fires; fast ones resolve it once
    // the 4-s window has forgotten the slow ones.
    produce(
        &predictions,
        (0..60)
            .map(|i| prediction(i, if i % 3 == 0 { "beta" } else { "acme" }, "v1", 1500))
            .map(|p| (p.id.clone(), encode(&p)))
            .collect(),
    )
    .await;
    let found = wait_alert(
        &got,
        "p99_latency",
        AlertState::Firing,
        &mut alerts,
        &[50.0, p99_slo],
    )
    .await;
    got.extend(found);
    let a = got
        .iter()
        .find(|a| a.rule == "p99_latency" && a.state == AlertState::Firing)
        .unwrap();
    assert!((1400.0..=1600.0).contains(&a.value), "{a:?}");
    let stats: serde_json::Value =
        serde_json::from_str(&http_get(&addr, "/v1/stats").await.unwrap().1).unwrap();
    assert_eq!(stats["tenants"]["acme"]["count"], 40);
    assert_eq!(stats["tenants"]["beta"]["count"], 20);
    assert_eq!(stats["models"]["spam@v1"]["count"], 60);
    assert!(stats["overall"]["per_second"].as_f64().unwrap() > 0.0);
    assert!(stats["alerts_firing"]
        .as_array()
        .unwrap()
        .iter()
        .any(|a| a["rule"] == "p99_latency"));

    // Keep fast predictions flowing until it resolves.
    let feeder = {
        let predictions = predictions.clone();
        tokio::spawn(async move {
            for round in 0..40 {
                produce(
                    &predictions,
                    (0..20)
                        .map(|i| prediction(1000 + round * 20 + i, "acme", "v2", 20))
                        .map(|p| (p.id.clone(), encode(&p)))
                        .collect(),
                )
                .await;
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
        })
    };
    let found = wait_alert(
        &got,
        "p99_latency",
        AlertState::Resolved,
        &mut alerts,
        &[50.0, p99_slo],
    )
    .await;
    got.extend(found);
    feeder.abort();
    let resolved = got
        .iter()
        .find(|a| a.rule == "p99_latency" && a.state == AlertState::Resolved)
        .unwrap();
    assert!(resolved.value < p99_slo, "{resolved:?}");
    for a in &got {
        aifab_core::schema::validate("alert/v1", &serde_json::to_value(a).unwrap()).unwrap();
    }

    let metrics = http_get(&addr, "/metrics").await.unwrap().1;
    for name in [
        "aifab_monitor_consumer_lag_records{",
        "aifab_monitor_consumer_lag_partition_records{",
        "aifab_monitor_consumer_lag_rate_records_per_second{",
        "aifab_monitor_predictions_total{",
        "aifab_monitor_e2e_latency_seconds_bucket{",
        "aifab_monitor_window_latency_seconds{",
        "aifab_monitor_window_predictions_per_second{",
        "aifab_monitor_alert_firing{",
    ] {
        assert!(metrics.contains(name), "/metrics lacks {name}");
    }
    assert!(metrics.contains(&format!("group=\"{group}\"")));

    sigterm(&monitor);
    let status = tokio::time::timeout(Duration::from_secs(20), monitor.wait())
        .await
        .expect("exits")
        .unwrap();
    assert!(status.success(), "{status}");
    delete_topic(&requests).await;
    delete_topic(&predictions).await;
}
