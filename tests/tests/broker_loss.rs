//! Losing a broker of three (`scripts/stack-up --brokers 3`: RF 3, min ISR 2 everywhere):
//! ingest, feature and two inference workers run on the cluster while requests arrive at a
//! steady rate on `aifab.ingest.raw`. The node that leads the most partitions, and is the
//! transaction coordinator of one worker, is SIGKILLed mid-stream and started again; later
//! the active controller is SIGKILLed and stays down to the end. A read_committed reader
//! counts every request's predictions: 0 lost, 0 duplicated, and no service restarted.
//! Prints `key value` figures: requests/s before, during and after each loss, and the
//! longest stall (docs/operations.md quotes them).

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use aifab_core::topics;
use aifab_tests::*;
use rdkafka::producer::{FutureProducer, FutureRecord};
use serde_json::json;

/// Offered load, requests per second.
const RATE: f64 = 100.0;
/// How long each phase lasts: the scenario, not a wait for something.
const BEFORE: Duration = Duration::from_secs(10);
const DOWN: Duration = Duration::from_secs(15);
const AFTER: Duration = Duration::from_secs(15);
const STAYS_DOWN: Duration = Duration::from_secs(40);

/// What the steady producer did.
struct Produced {
    sent: usize,
    failed: Vec<String>,
}

/// Produce `ingest.raw/v1` records `<prefix>-<i>` at `RATE` per second until `stop`, with
/// the idempotent producer users would use; each delivery is awaited at the end.
async fn produce_steadily(brokers: String, prefix: String, stop: Arc<AtomicBool>) -> Produced {
    let p: FutureProducer = aifab_core::kafka::producer_config(&brokers, "aifab-tests")
        .create()
        .unwrap();
    let start = Instant::now();
    let mut deliveries = Vec::new();
    let mut sent = 0usize;
    let mut tick = tokio::time::interval(Duration::from_millis(10));
    while !stop.load(Ordering::Relaxed) {
        tick.tick().await;
        let due = (start.elapsed().as_secs_f64() * RATE) as usize;
        while sent < due {
            let id = format!("{prefix}-{sent}");
            let body = json!({
                "schema": "ingest.raw/v1",
                "id": id,
                "tenant": "acme",
                "text": format!("the cat sat on mat {sent}"),
            })
            .to_string();
            let record = FutureRecord::to(topics::INGEST_RAW.name)
                .key(&id)
                .payload(&body);
            match p.send_result(record) {
                Ok(d) => deliveries.push((id, d)),
                Err((e, _)) => panic!("enqueue {id}: {e}"),
            }
            sent += 1;
        }
    }
    let mut failed = Vec::new();
    for (id, d) in deliveries {
        match d.await {
            Ok(Ok(_)) => {}
            Ok(Err((e, _))) => failed.push(format!("{id}: {e}")),
            Err(_) => failed.push(format!("{id}: delivery cancelled")),
        }
    }
    Produced { sent, failed }
}

/// Sets the flag when dropped (also while unwinding from a panic).
struct StopOnDrop(Arc<AtomicBool>);

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn losing_a_broker_of_three_loses_and_duplicates_nothing() {
    let t_setup = Instant::now();
    let stack = ClusterStack::up().await;
    let ep = stack.endpoints();
    eprintln!(
        "three-broker cluster up on {} in {:.1}s",
        ep.kafka,
        t_setup.elapsed().as_secs_f64()
    );

    let models = tiny_models();
    let dir = tempfile::tempdir().unwrap();
    let keys = dir.path().join("keys.json");
    std::fs::write(
        &keys,
        json!({"keys": [{"key": "k", "tenant": "acme"}]}).to_string(),
    )
    .unwrap();
    // Every service checks that its topics have 3 replicas and min ISR 2.
    let replication = [
        ("AIFAB_TOPIC_REPLICATION_FACTOR", "3".to_string()),
        ("AIFAB_TOPIC_MIN_INSYNC_REPLICAS", "2".to_string()),
    ];
    let mut env: Vec<(&str, String)> = vec![
        ("AIFAB_KAFKA_BROKERS", ep.kafka.clone()),
        ("AIFAB_NATS_URL", ep.nats.clone()),
        ("AIFAB_REDIS_URL", ep.redis.clone()),
        ("AIFAB_API_KEYS_FILE", keys.display().to_string()),
        ("AIFAB_MODEL_DIR", models.model_dir.display().to_string()),
        ("AIFAB_MAX_TOKENS", "32".into()),
    ];
    env.extend(replication.iter().cloned());
    let start = |service: &str| {
        let mut e = env.clone();
        e.push(("AIFAB_INSTANCE_ID", format!("loss-{service}")));
        spawn_service(service, &e)
    };
    let (mut ingest, ingest_addr) = start("ingest");
    let (mut feature, feature_addr) = start("feature");
    wait_ready(&ingest_addr, "ingest").await;
    wait_ready(&feature_addr, "feature").await;

    // The victim: the node leading the most aifab partitions. Worker A's transactional id
    // is picked so that the same node coordinates its transactions (ingest's and
    // feature's producers have made `__transaction_state` exist by now).
    let leadership = eventually(
        Duration::from_secs(60),
        "__transaction_state to exist",
        || async {
            let l = stack.leadership().await?;
            l.coordinator("probe").map(|_| l)
        },
    )
    .await;
    let victim = leadership
        .busiest("aifab.")
        .expect("aifab topics have leaders");
    let worker_a = (0..10_000)
        .map(|k| format!("loss-a{k}"))
        .find(|name| {
            leadership.coordinator(&format!("aifab-inference-worker-{name}")) == Some(victim)
        })
        .unwrap_or_else(|| panic!("no transactional id coordinated by node {victim}"));
    eprintln!(
        "node {victim} leads {:?} of the aifab partitions per node and coordinates {worker_a}'s transactions",
        leadership.led_by("aifab.")
    );

    let run = WorkerRun {
        topic: topics::INFERENCE_REQUESTS.name.into(),
        group: unique("workers"),
        task: "default".into(),
        model_dir: models.model_dir.clone(),
        head_dir: models.head_v1.clone(),
        version: "v1".into(),
        models: None,
        endpoints: ep.clone(),
    };
    let (mut worker_a, addr_a) = run.start(&worker_a, 16, &replication);
    let (mut worker_b, addr_b) = run.start("loss-b", 16, &replication);
    wait_ready(&addr_a, "worker a").await;
    wait_ready(&addr_b, "worker b").await;

    // The reader runs through the whole scenario, so each prediction is timed when it
    // becomes visible, not when the test gets round to reading it.
    let prefix = unique("loss");
    let brokers = ep.kafka.clone();
    let (stop_reading, progress) = (
        Arc::new(AtomicBool::new(false)),
        Arc::new(AtomicUsize::new(0)),
    );
    // Whatever happens, the reading thread ends (a panic below must fail the test, not
    // leave the runtime waiting for it).
    let _stop_on_drop = StopOnDrop(stop_reading.clone());
    // Opened (at the current end) before anything is produced.
    let mut reader = tokio::task::spawn_blocking(move || {
        PredictionReader::on_brokers(&brokers, topics::PREDICTIONS.name)
    })
    .await
    .unwrap();
    let reading = {
        let (prefix, stop, progress) = (prefix.clone(), stop_reading.clone(), progress.clone());
        tokio::task::spawn_blocking(move || {
            let mut last_progress = Instant::now();
            let deadline = Instant::now() + Duration::from_secs(900);
            while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
                reader.follow(&prefix, Duration::from_millis(200), &mut last_progress);
                progress.store(reader.seen.len(), Ordering::Relaxed);
            }
            reader
        })
    };
    let stop_producing = Arc::new(AtomicBool::new(false));
    let t0 = Instant::now();
    let t0_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64;
    let producing = tokio::spawn(produce_steadily(
        ep.kafka.clone(),
        prefix.clone(),
        stop_producing.clone(),
    ));
    let at = |t: Instant| t.duration_since(t0).as_secs_f64();

    let flowing = eventually(Duration::from_secs(60), "the first predictions", || async {
        (progress.load(Ordering::Relaxed) > 0).then(Instant::now)
    })
    .await;
    tokio::time::sleep(BEFORE).await;

    let kill_1 = Instant::now();
    stack.kill(victim).await;
    eprintln!("{:.1}s: SIGKILLed node {victim}", at(kill_1));
    tokio::time::sleep(DOWN).await;
    stack.start().await;
    let back_1 = Instant::now();
    eprintln!("{:.1}s: node {victim} back", at(back_1));
    // Before the next loss, the restarted node must be in sync everywhere again: with
    // min ISR 2 and no unclean elections, a partition whose only in-sync replicas were the
    // controller and the node still catching up would go offline.
    eventually(
        Duration::from_secs(120),
        "every partition's 3 replicas in sync again",
        || async {
            stack
                .leadership()
                .await
                .filter(|l| l.fully_replicated(3))
                .map(|_| ())
        },
    )
    .await;
    eprintln!("{:.1}s: fully replicated again", at(Instant::now()));
    tokio::time::sleep(AFTER).await;

    let alive = (1..=NODES as i32).find(|n| *n != victim).unwrap();
    let controller = stack.controller(alive).expect("an active controller");
    let kill_2 = Instant::now();
    stack.kill(controller).await;
    eprintln!(
        "{:.1}s: SIGKILLed node {controller}, the active controller; it stays down",
        at(kill_2)
    );
    tokio::time::sleep(STAYS_DOWN).await;
    stop_producing.store(true, Ordering::Relaxed);
    let end = Instant::now();
    let produced = producing.await.unwrap();
    assert!(
        produced.failed.is_empty(),
        "{} of {} sends failed with two of three brokers up, first: {:?}",
        produced.failed.len(),
        produced.sent,
        produced.failed.first()
    );
    let n = produced.sent;
    eventually(
        Duration::from_secs(180),
        "every request predicted",
        || async { (progress.load(Ordering::Relaxed) >= n).then_some(()) },
    )
    .await;
    let drained = Instant::now();
    stop_reading.store(true, Ordering::Relaxed);
    let mut reader = reading.await.unwrap();
    assert!(
        run.wait_drained(Duration::from_secs(120)).await,
        "the worker group never reached lag 0"
    );
    // read_committed: reading to the end waits out open transactions, so a duplicate
    // committed late is counted too.
    let (settled, reader) = {
        let prefix = prefix.clone();
        tokio::task::spawn_blocking(move || {
            let settled = reader.read_to_end(&prefix, Duration::from_secs(90));
            (settled, reader)
        })
        .await
        .unwrap()
    };
    assert!(settled, "the predictions topic never settled");

    let ids: Vec<String> = (0..n).map(|i| format!("{prefix}-{i}")).collect();
    let d = delivery(ids.iter().map(String::as_str), &reader.counts());
    if d.duplicated > 0 {
        eprintln!("duplicated, first ten:\n{}", reader.duplicates_report(10));
    }
    assert_eq!(
        d,
        Delivery {
            requests: n,
            lost: 0,
            duplicated: 0
        }
    );
    for (child, what) in [
        (&mut ingest, "ingest"),
        (&mut feature, "feature"),
        (&mut worker_a, "worker a"),
        (&mut worker_b, "worker b"),
    ] {
        still_running(child, what);
    }

    // When each request was predicted (its worker's clock) and when its prediction was
    // read (committed and fetched), in seconds from the first send.
    let predicted = Timeline::new(
        reader
            .seen
            .iter()
            .map(|p| (p.produced_at_ms - t0_ms) as f64 / 1000.0)
            .collect(),
    );
    let read = Timeline::new(reader.received.iter().map(|t| at(*t)).collect());
    let (flowing, kill_1, back_1, kill_2, end, drained) = (
        at(flowing),
        at(kill_1),
        at(back_1),
        at(kill_2),
        at(end),
        at(drained),
    );
    println!("broker_loss_requests {n}");
    println!("broker_loss_offered_rps {RATE:.0}");
    println!("broker_loss_node_down_s {:.1}", back_1 - kill_1);
    println!("broker_loss_drained_after_end_s {:.1}", drained - end);
    for (what, t) in [("predicted", &predicted), ("read", &read)] {
        let stall_1 = t.longest_stall(kill_1, kill_2);
        let stall_2 = t.longest_stall(kill_2, drained);
        for (key, value) in [
            ("before_rps", t.rate(flowing, kill_1)),
            ("during_rps", t.rate(kill_1, back_1)),
            ("after_restart_rps", t.rate(back_1, kill_2)),
            ("one_down_rps", t.rate(kill_2, end)),
            ("longest_stall_s", stall_1.secs),
            ("stall_began_after_kill_s", stall_1.from - kill_1),
            ("controller_loss_longest_stall_s", stall_2.secs),
        ] {
            println!("broker_loss_{what}_{key} {value:.1}");
        }
    }
    eprintln!("{d:?}; scenario {:.0}s", t0.elapsed().as_secs_f64());

    for child in [&ingest, &feature, &worker_a, &worker_b] {
        sigterm(child);
    }
    for (mut child, what) in [
        (ingest, "ingest"),
        (feature, "feature"),
        (worker_a, "worker a"),
        (worker_b, "worker b"),
    ] {
        let status = tokio::time::timeout(Duration::from_secs(60), child.wait())
            .await
            .unwrap_or_else(|_| panic!("{what} exits after SIGTERM"))
            .unwrap();
        assert!(status.success(), "{what}: SIGTERM exit {status}");
    }
}
