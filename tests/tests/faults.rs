//! Faults survived: the broker restarted mid-run (on a private stack), NATS and Redis
//! restarted under a running ingest (private servers), and poison requests on a worker's
//! partition. Worker SIGKILLs are `inference_worker.rs`'s
//! `every_request_gets_exactly_one_prediction_through_sigkills` (20,000 requests, 5 kills);
//! a worker whose model fails to load is `inference_worker.rs`'s
//! `a_worker_whose_model_fails_to_load_is_not_ready_and_consumes_nothing`; bad input at
//! ingest is `ingest_bad_input.rs`.

use std::time::{Duration, Instant};

use aifab_core::messages::{encode, tag, BudgetEvent, BudgetEventKind, Outcome};
use aifab_tests::*;

async fn readyz(addr: &str) -> Option<(u16, String)> {
    http_get(addr, "/readyz").await.ok()
}

/// Wait until `/readyz` answers `code` with a body containing `needle`.
async fn wait_readyz(addr: &str, code: u16, needle: &str, what: &str) {
    eventually(Duration::from_secs(60), what, || async move {
        readyz(addr)
            .await
            .filter(|(c, b)| *c == code && b.contains(needle))
            .map(|_| ())
    })
    .await;
}

/// The broker (a private one) stopped with SIGTERM while the worker works through a
/// backlog, kept down until the worker has had to retry a transactional call (or abort a
/// transaction), and started again on the same data dir, with
/// requests produced before (a backlog), during and after the outage: the worker keeps running
/// without a restart and a read_committed reader sees every request predicted exactly
/// once (the worker's path is transactional).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_restart_mid_run_loses_and_duplicates_nothing() {
    let t0 = Instant::now();
    let stack = PrivateStack::up().await;
    let ep = stack.endpoints();
    eprintln!(
        "private stack up on {} in {:.1}s",
        ep.kafka,
        t0.elapsed().as_secs_f64()
    );
    let run = WorkerRun::new_on(ep.clone(), 4).await;
    let prefix = unique("restart");
    let brokers = ep.kafka.clone();
    let mut reader = tokio::task::spawn_blocking(move || {
        PredictionReader::on_brokers(&brokers, aifab_core::topics::PREDICTIONS.name)
    })
    .await
    .unwrap();
    // The backlog must outlast the time to see the first predictions and stop the broker
    // (batch size 1 runs several hundred transactions a second here).
    let (before, during, after) = (0..12_000, 12_000..13_000, 13_000..14_000);
    let n = after.end;
    produce_requests_on(&ep.kafka, &run.topic, &run.task, &prefix, before.clone()).await;
    // Batch size 1: the backlog lasts, so a transaction is open when the broker goes.
    // Its log is printed if the test fails: recovery from a broker restart has many paths.
    let log = LogOnFailure::new("the worker");
    let (mut worker, addr) =
        run.start_logging_to("restart-a", 1, &[("AIFAB_LOG", "info".into())], log.stdio());
    assert!(
        reader.read_until(&prefix, 200, Duration::from_secs(120)),
        "first predictions"
    );

    let t = Instant::now();
    stack.stop(Component::Kafka).await;
    eprintln!("broker stopped after {:.1}s", t.elapsed().as_secs_f64());
    // Requests keep coming while the broker is away: the idempotent producer retries them.
    let producing = {
        let (ep, run_topic, task, prefix) = (
            ep.clone(),
            run.topic.clone(),
            run.task.clone(),
            prefix.clone(),
        );
        tokio::spawn(async move {
            produce_requests_on(&ep.kafka, &run_topic, &task, &prefix, during).await
        })
    };
    wait_readyz(
        &addr,
        503,
        r#""kafka":{"ok":false"#,
        "the worker to report the broker down",
    )
    .await;
    // Down until the worker has met the outage inside a transaction: a commit (or an
    // abort) it had to retry, or a transaction it aborted. Or for 30 s at most: while no
    // coordinator is reachable librdkafka's send_offsets_to_transaction can wait without
    // timing out (librdkafka issue 5456), so the worker may meet the outage inside a call
    // that returns only once the broker is back.
    let met_in_transaction = || {
        let addr = addr.clone();
        async move {
            let page = http_get(&addr, "/metrics").await.ok()?.1;
            let met = [
                "aifab_inference_worker_pipeline_transaction_retries_total",
                "aifab_inference_worker_pipeline_transactions_aborted_total",
            ]
            .iter()
            .any(|m| metric(&page, m).is_some_and(|v| v >= 1.0));
            met.then_some(())
        }
    };
    let met = wait_for(Duration::from_secs(30), met_in_transaction)
        .await
        .is_some();
    eprintln!(
        "worker {} during the outage",
        if met {
            "retried or aborted a transactional call"
        } else {
            "blocked in a transactional call"
        }
    );
    // And down for longer than message.timeout.ms (15 s): outputs still in flight when it
    // went fail delivery, so their transaction has to be aborted and its batches redone.
    // The length of the outage is the scenario, not a wait for something.
    let outage = Duration::from_secs(20);
    tokio::time::sleep(outage.saturating_sub(t.elapsed())).await;
    still_running(&mut worker, "the worker while the broker is down");
    stack.start().await;
    eprintln!("broker back after {:.1}s down", t.elapsed().as_secs_f64());
    producing
        .await
        .expect("requests produced during the outage delivered");
    produce_requests_on(&ep.kafka, &run.topic, &run.task, &prefix, after).await;

    if !reader.read_until(&prefix, n, Duration::from_secs(180)) {
        let counters = recovery_counters(&addr).await;
        let lag = run.lag().await;
        panic!(
            "only {} of {n} predicted; the reader: {}; the worker group: {lag:?}; the worker's counters:\n{counters}",
            reader.counts().len(),
            reader.describe()
        );
    }
    assert!(
        run.wait_drained(Duration::from_secs(60)).await,
        "the worker group never reached lag 0"
    );
    assert!(
        reader.read_to_end(&prefix, Duration::from_secs(60)),
        "predictions topic never settled"
    );
    wait_readyz(
        &addr,
        200,
        r#""kafka":{"ok":true"#,
        "the worker ready again",
    )
    .await;
    still_running(&mut worker, "the worker after the restart");

    let ids: Vec<String> = (0..n).map(|i| format!("{prefix}-{i}")).collect();
    let d = delivery(ids.iter().map(String::as_str), &reader.counts());
    eprintln!("{d:?} in {:.1}s", t0.elapsed().as_secs_f64());
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
    assert!(reader.seen.iter().all(|p| p.outcome == Outcome::Ok));
    sigterm(&worker);
    let status = tokio::time::timeout(Duration::from_secs(30), worker.wait())
        .await
        .expect("exits")
        .unwrap();
    assert!(status.success(), "SIGTERM exit after the restart: {status}");
}

/// The worker's metrics that tell how it recovered (or did not).
async fn recovery_counters(addr: &str) -> String {
    let Ok((_, page)) = http_get(addr, "/metrics").await else {
        return "(no /metrics)".into();
    };
    let wanted = [
        "transaction",
        "restarts",
        "batches_total",
        "redeliveries",
        "queue_depth",
        "requests_total",
    ];
    page.lines()
        .filter(|l| {
            !l.starts_with('#') && !l.contains("_bucket{") && wanted.iter().any(|w| l.contains(w))
        })
        .collect::<Vec<_>>()
        .join("\n")
}

async fn post(addr: &str, key: &str, body: &str) -> HttpResponse {
    http_request(
        addr,
        "POST",
        "/v1/infer",
        &[("Authorization", &format!("Bearer {key}"))],
        body.as_bytes(),
    )
    .await
    .expect("POST /v1/infer")
}

/// NATS and then Redis (private servers) stopped and started again under a running
/// ingest: it never exits, `/readyz` names the missing dependency and recovers, a budget
/// event published after NATS came back is enforced, and Redis-backed duplicate-id checks
/// work after Redis came back (both for ids stored before the restart and new ones).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_and_redis_restarts_are_survived_without_restarting_ingest() {
    let mut nats = PrivateServer::nats().await;
    let mut redis = PrivateServer::redis().await;
    let id = unique("faults-ingest");
    let (raw, features, predictions, dlq) = (
        format!("{id}.raw"),
        format!("{id}.features"),
        format!("{id}.predictions"),
        format!("{id}.dlq"),
    );
    for t in [&raw, &features, &predictions, &dlq] {
        create_topic(t, 1).await;
    }
    let uid = id.rsplit('.').next().unwrap().to_string();
    let (ok_tenant, over_tenant) = (format!("ok-{uid}"), format!("over-{uid}"));
    let dir = tempfile::tempdir().unwrap();
    let keys = serde_json::json!({
        "keys": [{"key": "key-ok", "tenant": ok_tenant}, {"key": "key-over", "tenant": over_tenant}],
        "tenants": {over_tenant.clone(): {"budget_mode": "reject"}},
    });
    std::fs::write(dir.path().join("keys.json"), keys.to_string()).unwrap();
    let (mut ingest, addr) = spawn_service(
        "ingest",
        &[
            ("AIFAB_NATS_URL", format!("nats://127.0.0.1:{}", nats.port)),
            (
                "AIFAB_REDIS_URL",
                format!("redis://127.0.0.1:{}", redis.port),
            ),
            ("AIFAB_RAW_TOPIC", raw.clone()),
            ("AIFAB_FEATURES_TOPIC", features.clone()),
            ("AIFAB_PREDICTIONS_TOPIC", predictions.clone()),
            ("AIFAB_DLQ_TOPIC", dlq.clone()),
            ("AIFAB_REDIS_PREFIX", id.clone()),
            ("AIFAB_INGEST_GROUP", format!("{id}.ingest")),
            (
                "AIFAB_INGEST_PREDICTIONS_GROUP",
                format!("{id}.ingest-predictions"),
            ),
            (
                "AIFAB_API_KEYS_FILE",
                dir.path().join("keys.json").display().to_string(),
            ),
        ],
    );
    wait_ready(&addr, "ingest").await;
    let r = post(
        &addr,
        "key-ok",
        r#"{"id":"before","text":"before the restarts"}"#,
    )
    .await;
    assert_eq!(r.status, 202, "{}", r.body);

    // NATS goes away: ingest reports it and keeps running; back: ready again.
    nats.stop().await;
    wait_readyz(
        &addr,
        503,
        r#""nats":{"ok":false"#,
        "ingest to report NATS down",
    )
    .await;
    still_running(&mut ingest, "ingest while NATS is down");
    nats.start().await;
    wait_readyz(
        &addr,
        200,
        r#""nats":{"ok":true"#,
        "ingest ready after NATS came back",
    )
    .await;

    // A budget event published on the restarted NATS is enforced (the subscription came
    // back with the connection). Published until it takes effect: the resubscription may
    // land just after a publish.
    let client = async_nats::connect(format!("nats://127.0.0.1:{}", nats.port))
        .await
        .unwrap();
    let event = BudgetEvent {
        schema: tag(),
        kind: BudgetEventKind::Exceeded,
        tenant: over_tenant.clone(),
        period: this_month_utc(),
        budget: 10.0,
        spent: 10.5,
        burn_rate_per_hour: 2.0,
        currency: "USD".into(),
        at_ms: aifab_core::now_ms(),
    };
    let refused = eventually(
        Duration::from_secs(30),
        "the budget event to be enforced after NATS came back",
        || {
            let (client, event, addr) = (client.clone(), event.clone(), addr.clone());
            async move {
                client
                    .publish(
                        aifab_core::topics::subjects::BUDGET_EXCEEDED,
                        encode(&event).into(),
                    )
                    .await
                    .ok()?;
                client.flush().await.ok()?;
                tokio::time::sleep(Duration::from_millis(200)).await;
                let r = post(&addr, "key-over", r#"{"text":"over budget"}"#).await;
                (r.status == 429).then_some(r)
            }
        },
    )
    .await;
    assert!(refused.body.contains("budget_exceeded"), "{}", refused.body);

    // Redis goes away: not ready, still running; back (its append-only file kept the
    // data): ready again, an id stored before the restart is still a duplicate, and a new
    // id is stored and checked.
    redis.stop().await;
    wait_readyz(
        &addr,
        503,
        r#""redis":{"ok":false"#,
        "ingest to report Redis down",
    )
    .await;
    still_running(&mut ingest, "ingest while Redis is down");
    redis.start().await;
    wait_readyz(
        &addr,
        200,
        r#""redis":{"ok":true"#,
        "ingest ready after Redis came back",
    )
    .await;
    let r = post(&addr, "key-ok", r#"{"id":"before","text":"again"}"#).await;
    assert_eq!(r.status, 409, "an id stored before the restart: {}", r.body);
    assert!(r.body.contains("duplicate_id"), "{}", r.body);
    let r = post(
        &addr,
        "key-ok",
        r#"{"id":"after","text":"after the restarts"}"#,
    )
    .await;
    assert_eq!(r.status, 202, "{}", r.body);
    let r = post(
        &addr,
        "key-ok",
        r#"{"id":"after","text":"after the restarts"}"#,
    )
    .await;
    assert_eq!(
        r.status, 409,
        "the new id was stored in the restarted Redis: {}",
        r.body
    );
    still_running(&mut ingest, "ingest after both restarts");

    // Both accepted texts reached the next topic once each.
    let mut out = TopicReader::new(&features);
    out.read_until(Duration::from_secs(30), "2 accepted records", |r| {
        r.len() >= 2
    })
    .await;
    out.read_to_end(Duration::from_secs(30)).await;
    assert_eq!(out.records.len(), 2, "accepted records on {features}");

    sigterm(&ingest);
    let status = tokio::time::timeout(Duration::from_secs(30), ingest.wait())
        .await
        .expect("exits")
        .unwrap();
    assert!(status.success(), "SIGTERM exit: {status}");
    for t in [&raw, &features, &predictions, &dlq] {
        delete_topic(t).await;
    }
}

/// Poison requests on a worker's one partition — not JSON, another schema, a request for
/// another task — between valid ones: each is dead-lettered with its original bytes, kind
/// and offset, and every valid request after them is predicted (the partition is not
/// blocked). A valid request with extreme numbers (`deadline_ms` u64::MAX, which used to
/// panic the worker) is predicted too, and the worker never exits.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn poison_requests_go_to_the_dlq_and_do_not_block_the_partition() {
    let run = WorkerRun::new(1).await;
    let prefix = unique("poison");
    let valid = |i: usize| encode(&request(&run.task, &prefix, i));
    let mut far = request(&run.task, &prefix, 40);
    far.deadline_ms = Some(u64::MAX);
    far.received_at_ms = i64::MIN;
    let poison: Vec<(&str, Vec<u8>)> = vec![
        (
            "not_json",
            b"{\"schema\":\"inference.request/v1\", not json".to_vec(),
        ),
        (
            "wrong_schema",
            br#"{"schema":"prediction/v1","id":"x"}"#.to_vec(),
        ),
        ("wrong_task", encode(&request("another-task", &prefix, 999))),
    ];
    let mut records: Vec<RawRecord> = Vec::new();
    records.extend((0..20).map(|i| (Some(format!("{prefix}-{i}")), valid(i), vec![])));
    records.extend(poison.iter().map(|(_, b)| (None, b.clone(), vec![])));
    records.push((Some(far.id.clone()), encode(&far), vec![]));
    records.extend((20..40).map(|i| (Some(format!("{prefix}-{i}")), valid(i), vec![])));
    let dlq_from = dlq_high_watermark().await;
    let mut reader = PredictionReader::new();
    let offsets = produce_raw(&run.topic, &records).await;

    let (mut worker, _) = run.start("poison-a", 8, &[]);
    assert!(
        reader.read_until(&prefix, 41, Duration::from_secs(120)),
        "only {} of 41 predicted",
        reader.counts().len()
    );
    run.drained().await;
    assert!(reader.read_to_end(&prefix, Duration::from_secs(60)));
    let d = delivery(
        (0..=40)
            .map(|i| format!("{prefix}-{i}"))
            .collect::<Vec<_>>()
            .iter()
            .map(String::as_str),
        &reader.counts(),
    );
    assert_eq!(
        d,
        Delivery {
            requests: 41,
            lost: 0,
            duplicated: 0
        }
    );
    assert!(
        reader.seen.iter().all(|p| p.outcome == Outcome::Ok),
        "all computed"
    );

    let mut dead =
        dead_letters_from(dlq_from, &run.topic, poison.len(), Duration::from_secs(60)).await;
    dead.sort_by_key(|dl| dl.source.as_ref().unwrap().offset);
    for ((kind, bytes), (dl, (_, offset))) in poison.iter().zip(dead.iter().zip(&offsets[20..23])) {
        assert_eq!(dl.error_kind, *kind, "{dl:?}");
        assert_eq!(dl.stage, "inference-worker");
        assert_eq!(dl.source.as_ref().unwrap().offset, *offset);
        assert_eq!(
            base64_decode(&dl.original_base64),
            *bytes,
            "original bytes kept"
        );
        assert!(!dl.reason.is_empty());
    }
    still_running(&mut worker, "the worker after the poison requests");
    sigkill(&mut worker);
    delete_topic(&run.topic).await;
}
