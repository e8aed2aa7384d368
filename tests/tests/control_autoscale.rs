//! The control loop, live: real inference-worker processes (tiny random BERT) run by the
//! local supervisor as a replica set; the monitor publishes their group's lag; the
//! autoscaler decides; the supervisor applies its decisions. Under a step of load the lag
//! rises, workers scale up, the lag drains and workers scale down after the window; with
//! a small budget set, scaling is capped (`budget_cap`) and the budget event is seen.
//!
//! Windows, cooldowns and intervals are shortened so the whole test takes about two
//! minutes.

use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use aifab::supervisor::{ReplicaSetConfig, Supervisor};
use aifab_core::messages::{
    decode, encode, tag, BudgetEvent, BudgetEventKind, BudgetPeriod, BudgetSet, InferenceRequest,
    LagReading, ReplicaReport, ScaleDecision, Truncation,
};
use aifab_core::topics::subjects;
use aifab_tests::*;
use futures::StreamExt;
use rdkafka::producer::{FutureProducer, FutureRecord};
use tokio::process::{Child, Command};
use tokio_util::sync::CancellationToken;

#[derive(Debug, Clone)]
enum Seen {
    Lag(LagReading),
    Decision(ScaleDecision),
    Replicas(ReplicaReport),
    Budget(BudgetEvent),
}

#[derive(Clone, Default)]
struct Log(Arc<Mutex<Vec<(Instant, Seen)>>>);

impl Log {
    fn since(&self, t: Instant) -> Vec<Seen> {
        self.0
            .lock()
            .unwrap()
            .iter()
            .filter(|(at, _)| *at >= t)
            .map(|(_, s)| s.clone())
            .collect()
    }
    fn lags(&self, t: Instant) -> Vec<LagReading> {
        self.since(t)
            .into_iter()
            .filter_map(|s| if let Seen::Lag(l) = s { Some(l) } else { None })
            .collect()
    }
    fn decisions(&self, t: Instant) -> Vec<ScaleDecision> {
        self.since(t)
            .into_iter()
            .filter_map(|s| {
                if let Seen::Decision(d) = s {
                    Some(d)
                } else {
                    None
                }
            })
            .collect()
    }
    fn replicas(&self, t: Instant) -> Vec<u32> {
        self.since(t)
            .into_iter()
            .filter_map(|s| {
                if let Seen::Replicas(r) = s {
                    Some(r.replicas)
                } else {
                    None
                }
            })
            .collect()
    }
    fn budget_events(&self, t: Instant) -> Vec<BudgetEvent> {
        self.since(t)
            .into_iter()
            .filter_map(|s| {
                if let Seen::Budget(b) = s {
                    Some(b)
                } else {
                    None
                }
            })
            .collect()
    }
    async fn until<T>(&self, timeout: Duration, what: &str, f: impl Fn(&Log) -> Option<T>) -> T {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(v) = f(self) {
                return v;
            }
            if Instant::now() >= deadline {
                let recent: Vec<String> = self
                    .0
                    .lock()
                    .unwrap()
                    .iter()
                    .rev()
                    .take(40)
                    .rev()
                    .map(|(_, s)| match s {
                        Seen::Lag(l) => format!("lag {}", l.total_lag),
                        Seen::Decision(d) => format!(
                            "decide {}→{} {}",
                            d.current_replicas, d.desired_replicas, d.reason
                        ),
                        Seen::Replicas(r) => format!("replicas {}", r.replicas),
                        Seen::Budget(b) => {
                            format!("budget {:?} {:.2}/{:.2}", b.kind, b.spent, b.budget)
                        }
                    })
                    .collect();
                panic!("timed out after {timeout:?} waiting for {what}; last seen: {recent:#?}");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

fn service(binary: &str, envs: &[(&str, String)]) -> (Child, String) {
    let addr = format!("127.0.0.1:{}", free_port());
    let mut cmd = Command::new(bin_path(binary));
    cmd.env("AIFAB_HTTP_ADDR", &addr)
        .env("AIFAB_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .kill_on_drop(true);
    for (k, v) in envs {
        cmd.env(k, v);
    }
    (
        cmd.spawn()
            .unwrap_or_else(|e| panic!("starting {binary}: {e}")),
        addr,
    )
}

async fn ready(addr: &str, what: &str) {
    let addr = addr.to_string();
    eventually(Duration::from_secs(60), &format!("{what} ready"), || {
        let addr = addr.clone();
        async move { matches!(http_get(&addr, "/readyz").await, Ok((200, _))).then_some(()) }
    })
    .await;
}

/// `n` requests for `task` from `tenant`, as fast as the producer goes.
async fn burst(topic: &str, task: &str, tenant: &str, prefix: &str, n: usize) {
    let p: FutureProducer = aifab_core::kafka::producer_config(&kafka_brokers(), "aifab-tests")
        .create()
        .unwrap();
    let sends = (0..n).map(|i| {
        let p = p.clone();
        let len = 3 + (i * 7) % 20;
        let mut ids = vec![2u32];
        ids.extend((0..len - 2).map(|j| 5 + ((i * 31 + j * 17) % 100) as u32));
        ids.push(3);
        let req = InferenceRequest {
            schema: tag(),
            id: format!("{prefix}-{i}"),
            tenant: tenant.into(),
            task: task.into(),
            text: format!("request {i}"),
            token_count: ids.len() as u32,
            input_ids: ids,
            truncation: Truncation::None,
            received_at_ms: aifab_core::now_ms(),
            deadline_ms: None,
            priority: 0,
            attributes: Default::default(),
        };
        let topic = topic.to_string();
        async move {
            let bytes = encode(&req);
            p.send(
                FutureRecord::to(&topic).key(&req.id).payload(&bytes),
                Duration::from_secs(30),
            )
            .await
            .map_err(|(e, _)| e)
            .unwrap();
        }
    });
    futures::future::join_all(sends).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn workers_scale_up_under_load_down_after_the_window_and_stop_at_the_budget() {
    let started = Instant::now();
    let models = tiny_models();
    let id = uuid::Uuid::new_v4().simple().to_string();
    let topic = unique("as-requests");
    create_topic(&topic, 4).await;
    let group = format!("aifab-test-workers-{}", &id[..10]);
    let scale_name = format!("iw-{}", &id[..10]);
    let tenant = format!("t{}", &id[..12]);
    let task = format!("task-{}", &id[..8]);

    // Watch everything the loop says.
    let log = Log::default();
    let nats = async_nats::connect(nats_url()).await.unwrap();
    for subject in [
        subjects::lag(&group),
        subjects::scale(&scale_name),
        subjects::replicas(&scale_name),
        subjects::BUDGET_ALL.to_string(),
    ] {
        let mut sub = nats.subscribe(subject).await.unwrap();
        let log = log.clone();
        let tenant = tenant.clone();
        tokio::spawn(async move {
            while let Some(m) = sub.next().await {
                let seen = if let Ok(x) = decode::<LagReading>(&m.payload) {
                    Seen::Lag(x)
                } else if let Ok(x) = decode::<ScaleDecision>(&m.payload) {
                    Seen::Decision(x)
                } else if let Ok(x) = decode::<ReplicaReport>(&m.payload) {
                    Seen::Replicas(x)
                } else if let Ok(x) = decode::<BudgetEvent>(&m.payload) {
                    if x.tenant != tenant {
                        continue;
                    }
                    Seen::Budget(x)
                } else {
                    continue;
                };
                log.0.lock().unwrap().push((Instant::now(), seen));
            }
        });
    }
    nats.flush().await.unwrap();

    // 36,000 per device-hour: 10 a device-second, so a small budget goes fast.
    let price_per_hour = 36_000.0;
    let (accountant, acct_addr) = service(
        "aifab-cost-accountant",
        &[
            ("AIFAB_COST_REDIS_PREFIX", unique("as-costs")),
            ("AIFAB_COST_GROUP", unique("as-acct")),
            ("AIFAB_COST_START_FROM", "latest".into()),
            ("AIFAB_PRICES", format!("cpu={price_per_hour}")),
            ("AIFAB_BUDGET_INTERVAL_MS", "300".into()),
            ("AIFAB_BUDGET_STATUS_INTERVAL_MS", "500".into()),
            ("AIFAB_BURN_WINDOW_S", "30".into()),
        ],
    );
    let (monitor, mon_addr) = service(
        "aifab-monitor",
        &[
            ("AIFAB_MONITOR_WATCH", format!("{group}={topic}")),
            ("AIFAB_MONITOR_DISCOVER", "false".into()),
            ("AIFAB_MONITOR_INTERVAL_MS", "500".into()),
            ("AIFAB_MONITOR_GROUP", unique("as-monitor")),
        ],
    );
    let (autoscaler, as_addr) = service(
        "aifab-autoscaler",
        &[
            ("AIFAB_AUTOSCALER_SERVICE", scale_name.clone()),
            ("AIFAB_AUTOSCALER_GROUP", group.clone()),
            ("AIFAB_AUTOSCALER_POLICY", "aifab".into()),
            ("AIFAB_AUTOSCALER_MIN_REPLICAS", "1".into()),
            ("AIFAB_AUTOSCALER_MAX_REPLICAS", "4".into()),
            ("AIFAB_AUTOSCALER_STABILIZATION_S", "8".into()),
            ("AIFAB_AUTOSCALER_DOWN_COOLDOWN_S", "4".into()),
            ("AIFAB_AUTOSCALER_STARTUP_S", "4".into()),
            ("AIFAB_AUTOSCALER_REPLICA_RATE", "50".into()),
            ("AIFAB_AUTOSCALER_DRAIN_S", "10".into()),
            ("AIFAB_AUTOSCALER_BUDGET_TENANT", tenant.clone()),
            (
                "AIFAB_AUTOSCALER_REPLICA_COST_PER_HOUR",
                price_per_hour.to_string(),
            ),
            ("AIFAB_AUTOSCALER_MIN_REPLICAS_OVER_BUDGET", "1".into()),
            ("AIFAB_AUTOSCALER_BUDGET_MAX_AGE_S", "30".into()),
        ],
    );
    for (addr, what) in [
        (&acct_addr, "cost-accountant"),
        (&mon_addr, "monitor"),
        (&as_addr, "autoscaler"),
    ] {
        ready(addr, what).await;
    }

    // The supervisor runs the workers: replica i on ports[i], instance `<scale_name>-w-i`.
    let ports: Vec<u16> = (0..4).map(|_| free_port()).collect();
    let bin_dir = bin_path("aifab-inference-worker")
        .parent()
        .unwrap()
        .to_path_buf();
    let logs = tempfile::tempdir().unwrap();
    let env = |k: &str, v: &str| (k.to_string(), v.to_string());
    let replicas = ReplicaSetConfig {
        service: "inference-worker".into(),
        scale_name: scale_name.clone(),
        ports: ports.clone(),
        initial: 1,
        instance_prefix: format!("{scale_name}-w"),
        env: vec![
            env("AIFAB_MODEL_DIR", &models.model_dir.display().to_string()),
            env("AIFAB_HEAD_DIR", &models.head_v1.display().to_string()),
            env("AIFAB_MODEL_VERSION", "v1"),
            env("AIFAB_TASK", &task),
            env("AIFAB_INPUT_TOPIC", &topic),
            env("AIFAB_WORKER_GROUP", &group),
            // One request per batch and per Kafka transaction (batches may otherwise share
            // one for up to 250 ms): a worker is slow enough for a step of load to build
            // lag on any machine.
            env("AIFAB_MAX_BATCH_SIZE", "1"),
            env("AIFAB_MAX_WAIT_MS", "1"),
            env("AIFAB_MAX_TXN_MS", "0"),
            env("AIFAB_LOG", "warn"),
        ],
    };
    let supervisor = Supervisor::new(&bin_dir, logs.path(), &[])
        .unwrap()
        .with_replica_set(replicas)
        .unwrap()
        .with_nats_url(&nats_url());
    let stop = CancellationToken::new();
    let supervising = tokio::spawn(supervisor.run(stop.clone(), Duration::from_secs(20)));
    ready(&format!("127.0.0.1:{}", ports[0]), "worker 0").await;
    log.until(Duration::from_secs(20), "a replica report of 1", |l| {
        l.replicas(started).contains(&1).then_some(())
    })
    .await;

    // ---------------------------------------------------------------- a step of load
    let step = Instant::now();
    let producer = {
        let (topic, task, tenant) = (topic.clone(), task.clone(), tenant.clone());
        tokio::spawn(async move {
            burst(&topic, &task, &tenant, "step-a", 3000).await;
            for k in 0..15 {
                burst(&topic, &task, &tenant, &format!("step-b{k}"), 200).await;
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        })
    };
    let peak = log
        .until(Duration::from_secs(30), "the lag to rise", |l| {
            l.lags(step)
                .into_iter()
                .map(|r| r.total_lag)
                .max()
                .filter(|m| *m >= 500)
        })
        .await;
    let up = log
        .until(
            Duration::from_secs(60),
            "the supervisor to run 2+ workers",
            |l| l.replicas(step).into_iter().max().filter(|m| *m >= 2),
        )
        .await;
    let scaled_up = log
        .decisions(step)
        .into_iter()
        .find(|d| d.desired_replicas >= 2)
        .expect("a decision for more replicas");
    assert!(
        scaled_up.inputs.total_lag > 0 && scaled_up.inputs.partitions == 4,
        "{scaled_up:?}"
    );
    producer.await.unwrap();
    log.until(Duration::from_secs(120), "the lag to drain", |l| {
        l.lags(step).last().filter(|r| r.total_lag == 0).map(|_| ())
    })
    .await;
    let drained = Instant::now();
    log.until(
        Duration::from_secs(60),
        "the workers to scale back to 1",
        |l| l.replicas(drained).last().filter(|n| **n == 1).map(|_| ()),
    )
    .await;
    let decisions = log.decisions(step);
    assert!(
        decisions
            .iter()
            .any(|d| d.reason == "stabilizing" || d.reason == "cooldown"),
        "the scale-down waited for the window: {:?}",
        decisions
            .iter()
            .map(|d| (d.desired_replicas, d.reason.as_str()))
            .collect::<Vec<_>>()
    );
    let history: serde_json::Value =
        serde_json::from_str(&http_get(&as_addr, "/v1/decisions").await.unwrap().1).unwrap();
    assert!(history
        .as_array()
        .unwrap()
        .iter()
        .any(|d| d["desired_replicas"].as_u64() >= Some(2)));
    eprintln!(
        "step: lag peaked at {peak}, {up} workers, back to 1 after {:?}",
        drained.elapsed()
    );

    // ---------------------------------------------------------------- a small budget
    let report: serde_json::Value = serde_json::from_str(
        &http_get(&acct_addr, &format!("/v1/costs?tenant={tenant}"))
            .await
            .unwrap()
            .1,
    )
    .unwrap();
    let spent = report["tenants"][0]["total_cost"].as_f64().unwrap_or(0.0);
    let set = BudgetSet {
        schema: tag(),
        tenant: tenant.clone(),
        period: BudgetPeriod::Day,
        amount: spent + 20.0,
        currency: "USD".into(),
        at_ms: aifab_core::now_ms(),
    };
    let budget_set = Instant::now();
    nats.publish(subjects::BUDGET_SET, encode(&set).into())
        .await
        .unwrap();
    nats.flush().await.unwrap();
    log.until(
        Duration::from_secs(30),
        "decisions that know the budget",
        |l| {
            l.decisions(budget_set)
                .into_iter()
                .find(|d| d.inputs.remaining_budget.is_some())
                .map(|_| ())
        },
    )
    .await;
    let capped_from = Instant::now();
    burst(&topic, &task, &tenant, "step-c", 3000).await;
    let cap = log
        .until(Duration::from_secs(30), "a budget_cap decision", |l| {
            l.decisions(capped_from)
                .into_iter()
                .find(|d| d.reason == "budget_cap")
        })
        .await;
    assert_eq!(cap.desired_replicas, 1, "{cap:?}");
    assert!(cap.detail.contains("capped at"), "{}", cap.detail);
    let ev = log
        .until(
            Duration::from_secs(60),
            "a budget warning or exceeded event",
            |l| {
                l.budget_events(budget_set).into_iter().find(|e| {
                    matches!(e.kind, BudgetEventKind::Warning | BudgetEventKind::Exceeded)
                })
            },
        )
        .await;
    assert_eq!(ev.budget, spent + 20.0);
    log.until(
        Duration::from_secs(120),
        "the lag to drain under the cap",
        |l| {
            l.lags(capped_from)
                .last()
                .filter(|r| r.total_lag == 0)
                .map(|_| ())
        },
    )
    .await;
    let over = log
        .decisions(capped_from)
        .into_iter()
        .filter(|d| d.desired_replicas > 1)
        .count();
    assert_eq!(over, 0, "no decision above the budget cap");
    assert!(
        log.replicas(capped_from).iter().all(|n| *n <= 1),
        "replicas stayed at 1: {:?}",
        log.replicas(capped_from)
    );
    eprintln!(
        "budget: capped at 1 ({}); {:?} event seen; test took {:?}",
        cap.detail,
        ev.kind,
        started.elapsed()
    );

    stop.cancel();
    supervising.await.unwrap().unwrap();
    for mut child in [accountant, monitor, autoscaler] {
        sigterm(&child);
        let status = tokio::time::timeout(Duration::from_secs(20), child.wait())
            .await
            .expect("exits")
            .unwrap();
        assert!(status.success(), "{status}");
    }
    delete_topic(&topic).await;
}
