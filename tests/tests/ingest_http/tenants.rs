//! Per tenant: idempotency keys, the predictions store, keys added at run time, rate
//! limits and budgets (reject or deprioritise).

use super::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idempotency_keys_predictions_by_tenant_and_runtime_keys() {
    let run = Run::new().await;
    let (_ingest, addr) = run.ingest().await;
    let infer = "/v1/infer";

    // The same Idempotency-Key and body: the same answer, and one record only.
    let body = r#"{"inputs":[{"text":"idem a"},{"text":"idem b"}]}"#;
    let first = post(
        &addr,
        infer,
        Some("key-acme"),
        body,
        &[("Idempotency-Key", "k-1")],
    )
    .await;
    assert_eq!(first.status, 202, "{}", first.body);
    let again = post(
        &addr,
        infer,
        Some("key-acme"),
        body,
        &[("Idempotency-Key", "k-1")],
    )
    .await;
    assert_eq!(again.status, 202);
    assert_eq!(again.json(), first.json(), "replayed response");
    assert_eq!(again.header("idempotent-replayed"), Some("true"));
    // The key is per tenant: beta's k-1 is a new request.
    let other = post(
        &addr,
        infer,
        Some("key-beta"),
        body,
        &[("Idempotency-Key", "k-1")],
    )
    .await;
    assert_eq!(other.status, 202);
    assert_ne!(other.json()["ids"], first.json()["ids"]);
    // Reused with another body: 422.
    let r = post(
        &addr,
        infer,
        Some("key-acme"),
        r#"{"text":"something else"}"#,
        &[("Idempotency-Key", "k-1")],
    )
    .await;
    expect_error(&r, 422, "idempotency_key_reused", "different request body");
    // A refused request does not use up its key.
    let r = post(
        &addr,
        infer,
        Some("key-acme"),
        r#"{"text":""}"#,
        &[("Idempotency-Key", "k-2")],
    )
    .await;
    assert_eq!(r.status, 400);
    let r = post(
        &addr,
        infer,
        Some("key-acme"),
        r#"{"text":""}"#,
        &[("Idempotency-Key", "k-2")],
    )
    .await;
    assert_eq!(r.status, 400, "evaluated again, not replayed: {}", r.body);

    let mut features = TopicReader::new(&run.features);
    features
        .read_until(Duration::from_secs(30), "4 records", |r| r.len() >= 4)
        .await;
    features.read_to_end(Duration::from_secs(30)).await;
    assert_eq!(
        features.records.len(),
        4,
        "2 for acme's k-1 (once), 2 for beta's"
    );

    // GET /v1/predictions/{id}: 202 while pending, 200 once stored, 404 to other tenants.
    let id = first.json()["ids"][0].as_str().unwrap().to_string();
    let path = format!("/v1/predictions/{id}");
    let r = get(&addr, &path, Some("key-acme")).await;
    assert_eq!(
        (r.status, r.json()["status"].as_str()),
        (202, Some("pending")),
        "{}",
        r.body
    );
    let p = Prediction {
        schema: tag(),
        id: id.clone(),
        tenant: "acme".into(),
        task: "default".into(),
        outcome: Outcome::Ok,
        label: Some("spam".into()),
        scores: [("spam".to_string(), 0.8f32), ("ham".to_string(), 0.2)].into(),
        model_version: "v7".into(),
        arm: Arm::Production,
        batch_id: Some("b-1".into()),
        batch_size: 2,
        queue_ms: 1.0,
        compute_ms: 2.0,
        received_at_ms: aifab_core::now_ms(),
        produced_at_ms: aifab_core::now_ms(),
        worker: "w".into(),
    };
    produce_raw(&run.predictions, &[(Some(id.clone()), encode(&p), vec![])]).await;
    let body = eventually(
        Duration::from_secs(30),
        "the prediction to be served",
        || {
            let (addr, path) = (addr.clone(), path.clone());
            async move {
                let r = get(&addr, &path, Some("key-acme")).await;
                (r.status == 200).then_some(r.json())
            }
        },
    )
    .await;
    assert_eq!(
        (body["label"].as_str(), body["model_version"].as_str()),
        (Some("spam"), Some("v7"))
    );
    let theirs = get(&addr, &path, Some("key-beta")).await;
    let nobody = get(&addr, "/v1/predictions/no-such-id", Some("key-beta")).await;
    assert_eq!((theirs.status, nobody.status), (404, 404));
    assert_eq!(
        theirs.json()["error"],
        nobody.json()["error"],
        "same answer as an unknown id"
    );
    assert!(
        !theirs.body.contains("acme"),
        "nothing about the owner leaks: {}",
        theirs.body
    );
    let r = get(&addr, &path, None).await;
    expect_error(&r, 401, "missing_api_key", "missing API key");

    // A key and tenant added in Redis at run time.
    let client = redis::Client::open(redis_url()).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let key = format!("runtime-key-{}", run.uid);
    let sha = sha256_hex(key.as_bytes());
    let tenant = format!("rt-{}", run.uid);
    redis::cmd("SET")
        .arg(format!("{}:ingest:apikey:{sha}", run.prefix))
        .arg(&tenant)
        .exec_async(&mut conn)
        .await
        .unwrap();
    redis::cmd("HSET")
        .arg(format!("{}:ingest:tenant:{tenant}", run.prefix))
        .arg("rate_per_s")
        .arg(50)
        .exec_async(&mut conn)
        .await
        .unwrap();
    let r = post(
        &addr,
        infer,
        Some(&key),
        r#"{"text":"from a runtime key"}"#,
        &[],
    )
    .await;
    assert_eq!(r.status, 202, "{}", r.body);
    // The runtime tenant is known on the Kafka path too.
    let rec = format!(
        r#"{{"schema":"ingest.raw/v1","tenant":"{tenant}","text":"over kafka","id":"rt-1"}}"#
    );
    produce_raw(&run.raw, &[(Some("rt-1".into()), rec.into_bytes(), vec![])]).await;
    features
        .read_until(
            Duration::from_secs(30),
            "the runtime tenant's records",
            |r| {
                r.iter()
                    .filter(|x| x.header("tenant").as_deref() == Some(tenant.as_str()))
                    .count()
                    == 2
            },
        )
        .await;
    run.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rate_limits_and_budgets_answer_429_with_retry_after_or_deprioritise() {
    let run = Run::new().await;
    let (_ingest, addr) = run.ingest().await;
    let (_feature, _) = run.feature().await;
    let infer = "/v1/infer";

    // Tenant "slow": burst 2, 0.5 texts/s.
    for i in 0..2 {
        let r = post(
            &addr,
            infer,
            Some("key-slow"),
            &format!(r#"{{"text":"slow {i}"}}"#),
            &[],
        )
        .await;
        assert_eq!(r.status, 202, "{}", r.body);
    }
    let r = post(&addr, infer, Some("key-slow"), r#"{"text":"slow 2"}"#, &[]).await;
    expect_error(
        &r,
        429,
        "rate_limited",
        r#"tenant "slow" is over its rate limit"#,
    );
    let retry: u64 = r
        .header("retry-after")
        .expect("Retry-After")
        .parse()
        .unwrap();
    assert!((1..=2).contains(&retry), "Retry-After {retry}");
    // Another tenant is not limited by slow's bucket.
    let r = post(
        &addr,
        infer,
        Some("key-acme"),
        r#"{"text":"not slow"}"#,
        &[],
    )
    .await;
    assert_eq!(r.status, 202);
    tokio::time::sleep(Duration::from_secs(retry)).await;
    let r = post(&addr, infer, Some("key-slow"), r#"{"text":"slow 3"}"#, &[]).await;
    assert_eq!(r.status, 202, "after Retry-After: {}", r.body);

    // Budget exceeded (NATS, from the cost accountant): reject vs deprioritise.
    let nats = async_nats::connect(nats_url()).await.unwrap();
    let period = this_month_utc();
    for tenant in [run.over(), run.low()] {
        let e = BudgetEvent {
            schema: tag(),
            kind: BudgetEventKind::Exceeded,
            tenant,
            period: period.clone(),
            budget: 10.0,
            spent: 10.5,
            burn_rate_per_hour: 2.0,
            currency: "USD".into(),
            at_ms: aifab_core::now_ms(),
        };
        nats.publish(
            aifab_core::topics::subjects::BUDGET_EXCEEDED,
            encode(&e).into(),
        )
        .await
        .unwrap();
    }
    nats.flush().await.unwrap();
    let r = eventually(
        Duration::from_secs(20),
        "the over-budget tenant to be refused",
        || {
            let addr = addr.clone();
            async move {
                let r = post(
                    &addr,
                    infer,
                    Some("key-over"),
                    r#"{"text":"over budget"}"#,
                    &[],
                )
                .await;
                (r.status == 429).then_some(r)
            }
        },
    )
    .await;
    expect_error(
        &r,
        429,
        "budget_exceeded",
        &format!("is over its budget for period {period} (spent 10.50 of 10.00 USD)"),
    );
    let retry: u64 = r.header("retry-after").unwrap().parse().unwrap();
    assert!(
        (1..=31 * 86_400).contains(&retry),
        "until the end of the month: {retry}"
    );
    // The budget state is in Redis for replicas that missed the event.
    let client = redis::Client::open(redis_url()).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let ttl: i64 = redis::cmd("PTTL")
        .arg(format!("{}:ingest:budget:{}", run.prefix, run.over()))
        .query_async(&mut conn)
        .await
        .unwrap();
    assert!(ttl > 0, "expires with the period: {ttl}");

    let r = post(
        &addr,
        infer,
        Some("key-low"),
        r#"{"text":"the cat sat","id":"low-1"}"#,
        &[],
    )
    .await;
    assert_eq!(r.status, 202, "{}", r.body);
    assert_eq!(r.json()["deprioritised"], true);
    let mut requests = TopicReader::new(&run.inference);
    requests
        .read_until(Duration::from_secs(30), "low-1's inference request", |r| {
            r.iter().any(|x| x.key_str() == "low-1")
        })
        .await;
    let req = requests
        .records
        .iter()
        .find(|x| x.key_str() == "low-1")
        .unwrap()
        .json();
    assert_eq!(req["priority"], 9, "{req}");
    let normal = requests
        .records
        .iter()
        .find(|x| x.json()["text"] == "not slow")
        .map(|x| x.json());
    if let Some(n) = normal {
        assert_eq!(n["priority"], 0);
    }
    run.cleanup().await;
}
