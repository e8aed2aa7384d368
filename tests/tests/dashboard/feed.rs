//! What the monitor is fed: registry entries (Redis), a cost accountant of the test's own
//! with a budget and usage, predictions and unconsumed requests (Kafka), a scale
//! decision and a replica report (NATS).

use super::*;

pub(crate) async fn produce(topic: &str, payloads: Vec<(String, Vec<u8>)>) {
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

pub(crate) fn prediction(
    id: String,
    task: &str,
    version: &str,
    tenant: &str,
    latency_ms: i64,
) -> Prediction {
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
        artifact_sha256: None,
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

/// Deletes a task's registry keys when dropped (pass or fail): the registry's key names
/// have no prefix to keep test tasks apart, and every dashboard lists every task.
pub(crate) struct RegistryCleanup(pub String);

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

/// The model registry: v1 production, v2 candidate on a 25% canary.
pub(crate) async fn registry(task: &str) {
    let conn = redis::Client::open(redis_url())
        .unwrap()
        .get_connection_manager()
        .await
        .unwrap();
    let mut registry = Registry::new(conn);
    let t0 = aifab_core::now_ms();
    registry
        .put(&model(task, "v1", 0.9561, 0.9123, t0 - 3_600_000))
        .await
        .unwrap();
    registry
        .put(&model(task, "v2", 0.9402, 0.8876, t0 - 60_000))
        .await
        .unwrap();
    registry.set_production(task, "v1").await.unwrap();
    registry.set_candidate(task, "v2").await.unwrap();
    registry
        .set_rollout(task, Rollout::Canary { share: 0.25 })
        .await
        .unwrap();
}

/// A cost accountant of its own, charging `tenant` 5 × 37 device-seconds of `task`
/// against a budget of 1.00 a day: returns it and its address.
pub(crate) async fn cost_accountant(
    usage_topic: &str,
    tenant: &str,
    task: &str,
) -> (Child, String) {
    // A device-second costs 0.001.
    let (accountant, costs_addr) = spawn_service(
        "cost-accountant",
        &[
            ("AIFAB_USAGE_TOPIC", usage_topic.to_string()),
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
                tenant: tenant.to_string(),
                task: task.to_string(),
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
    produce(usage_topic, usage).await;
    (accountant, costs_addr)
}

/// Predictions from the end of `predictions` are only seen once the monitor reads:
/// produce probe predictions (task `probe_task`) until it has counted one; returns how
/// many were produced.
pub(crate) async fn probe_until_seen(
    addr: &str,
    predictions: &str,
    probe_task: &str,
    tenant: &str,
) -> usize {
    let addr = addr.to_string();
    let predictions = predictions.to_string();
    let probe_task = probe_task.to_string();
    let tenant = tenant.to_string();
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
    probes
}

/// 50 predictions of `task` (40 by v1 with rising latency, 10 by v2) and 30 requests
/// nobody consumes (lag 30).
pub(crate) async fn predictions_and_lag(s: &Scene, predictions: &str) {
    let mut batch = Vec::new();
    for i in 0..50 {
        let (version, latency) = if i < 40 {
            ("v1", 100 + i as i64 * 5)
        } else {
            ("v2", 400)
        };
        let p = prediction(format!("dash-{i}"), &s.task, version, &s.tenant, latency);
        batch.push((p.id.clone(), encode(&p)));
    }
    produce(predictions, batch).await;
    // 30 requests nobody consumed: lag 30.
    produce(
        &s.requests,
        (0..30).map(|i| (format!("r{i}"), b"{}".to_vec())).collect(),
    )
    .await;
}

/// The autoscaler's decision for `service` (1 → 3 replicas, reason lag) and the
/// actuator's report; returns the decision.
pub(crate) async fn scale_decision(service: &str) -> ScaleDecision {
    let nats = async_nats::connect(nats_url()).await.unwrap();
    let decision = ScaleDecision {
        schema: tag(),
        service: service.to_string(),
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
    nats.publish(subjects::scale(service), encode(&decision).into())
        .await
        .unwrap();
    let report = ReplicaReport {
        schema: tag(),
        service: service.to_string(),
        replicas: 3,
        actuator: "local".into(),
        at_ms: aifab_core::now_ms(),
    };
    nats.publish(subjects::replicas(service), encode(&report).into())
        .await
        .unwrap();
    nats.flush().await.unwrap();
    decision
}
