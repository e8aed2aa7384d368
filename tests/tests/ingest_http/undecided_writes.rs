//! Writes whose outcome is not known at once (timed out, abandoned, hung up on, or
//! holding an id a raw record wants): each request is written once, whatever the retries.

use super::*;

/// Timed-out writes: with a produce timeout shorter than a transaction, POSTs time out
/// before their records are taken into a transaction (nothing written) or while it is
/// committing (outcome undecided). Retrying each request with its Idempotency-Key until
/// it gets a 202 must write every request exactly once: an undecided write keeps its ids
/// claimed and its key pending until the outcome is known, then stores the answer for
/// replay (written) or releases both (not written).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn timed_out_writes_are_settled_so_retries_write_each_request_once() {
    let run = Run::new().await;
    let (_ingest, addr) = run.ingest_timing_out().await;

    let undecided = |m: &str| {
        metric(
            m,
            r#"aifab_ingest_http_undecided_writes_total{outcome="written"}"#,
        )
        .unwrap_or(0.0)
    };
    let mut requests = 0;
    let mut first_answers: BTreeMap<u16, usize> = BTreeMap::new();
    // Until at least one write was undecided and then found written (the case a released
    // claim used to duplicate), at most 200 requests.
    loop {
        let body = format!(r#"{{"id":"t-{requests}","text":"timed out {requests}"}}"#);
        let key = format!("k-{requests}");
        let r = post(
            &addr,
            "/v1/infer",
            Some("key-acme"),
            &body,
            &[("Idempotency-Key", &key)],
        )
        .await;
        *first_answers.entry(r.status).or_default() += 1;
        requests += 1;
        let (_, m) = http_get(&addr, "/metrics").await.unwrap();
        if undecided(&m) >= 1.0 || requests == 200 {
            break;
        }
    }
    let (_, m) = http_get(&addr, "/metrics").await.unwrap();
    assert!(
        undecided(&m) >= 1.0,
        "no undecided write in {requests} requests (first answers {first_answers:?}):\n{m}"
    );

    // Every request, retried with its key until it is answered 202.
    for i in 0..requests {
        let body = format!(r#"{{"id":"t-{i}","text":"timed out {i}"}}"#);
        let key = format!("k-{i}");
        let last = std::sync::Mutex::new(String::new());
        let last_ref = &last;
        let ok = wait_for(Duration::from_secs(90), || {
            let (addr, body, key) = (addr.clone(), body.clone(), key.clone());
            async move {
                let r = post(
                    &addr,
                    "/v1/infer",
                    Some("key-acme"),
                    &body,
                    &[("Idempotency-Key", &key)],
                )
                .await;
                *last_ref.lock().unwrap() = format!("{} {}", r.status, r.body);
                match r.status {
                    202 => Some(r),
                    503 | 409 => None,
                    s => panic!("request {i}: unexpected {s}: {}", r.body),
                }
            }
        })
        .await
        .unwrap_or_else(|| {
            panic!(
                "request {i}: no 202 within 90 s; last answer {}",
                last.lock().unwrap()
            )
        });
        assert_eq!(ok.json()["id"], format!("t-{i}"), "{}", ok.body);
    }

    run.assert_each_written_once(requests, &format!("first answers {first_answers:?}"))
        .await;
    run.cleanup().await;
}

/// Timed-out writes again, retried by a client that sends its own ids and no
/// Idempotency-Key until it gets a final answer: 202, or 409 `duplicate_id`. While a write
/// is undecided its ids are held as in flight, so a retry is told `409 in_progress` rather
/// than refused as a duplicate of records that may never be written. Every id must end up
/// in the features topic exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retries_without_a_key_are_told_to_wait_while_a_write_is_undecided() {
    let run = Run::new().await;
    let (_ingest, addr) = run.ingest_timing_out().await;

    let mut answers: BTreeMap<String, usize> = BTreeMap::new();
    let mut requests = 0;
    // Until a retry was told to wait for an undecided write, at most 300 requests.
    while !answers.contains_key("409 in_progress") && requests < 300 {
        let body = format!(r#"{{"id":"w-{requests}","text":"no key {requests}"}}"#);
        let mut tries = 0;
        loop {
            let r = post(&addr, "/v1/infer", Some("key-acme"), &body, &[]).await;
            let kind = format!("{} {}", r.status, r.json()["error"].as_str().unwrap_or("-"));
            *answers.entry(kind.clone()).or_default() += 1;
            match kind.as_str() {
                "202 -" | "409 duplicate_id" => break,
                "503 unavailable" | "409 in_progress" => {}
                other => panic!("request {requests}: unexpected {other}: {}", r.body),
            }
            tries += 1;
            assert!(
                tries < 2_000,
                "request {requests}: no final answer in {tries} tries ({answers:?})"
            );
            // A client's pause between retries (what Retry-After asks for, shortened).
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        requests += 1;
    }
    assert!(
        answers.contains_key("409 in_progress"),
        "no retry met an undecided write in {requests} requests: {answers:?}"
    );

    run.assert_each_written_once(requests, &format!("answers {answers:?}"))
        .await;
    run.cleanup().await;
}

/// An Idempotency-Key left undecided by a request that never settled it (ingest stopped
/// first): until its in-flight time passes a retry is told to wait; after it, the retry
/// gets `409 outcome_unknown` with the ids, and nothing is written again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_undecided_key_left_by_a_stopped_request_answers_outcome_unknown() {
    let run = Run::new().await;
    let (_ingest, addr) = run.ingest().await;
    let hex = sha256_hex;
    let body = r#"{"id":"u-1","text":"left undecided"}"#;
    let rkey = format!(
        "{}:ingest:idem:acme:infer:{}",
        run.prefix,
        hex(b"k-undecided")
    );
    let undecided = |until_ms: i64| {
        serde_json::json!({
            "state": "undecided", "body_sha256": hex(body.as_bytes()), "until_ms": until_ms,
            "ids": ["u-1"],
        })
        .to_string()
    };
    let client = redis::Client::open(redis_url()).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let key = [("Idempotency-Key", "k-undecided")];

    let now = aifab_core::now_ms();
    redis::cmd("SET")
        .arg(&rkey)
        .arg(undecided(now + 600_000))
        .arg("EX")
        .arg(600)
        .exec_async(&mut conn)
        .await
        .unwrap();
    let r = post(&addr, "/v1/infer", Some("key-acme"), body, &key).await;
    expect_error(&r, 409, "in_progress", "still being processed");

    redis::cmd("SET")
        .arg(&rkey)
        .arg(undecided(now - 1))
        .arg("EX")
        .arg(600)
        .exec_async(&mut conn)
        .await
        .unwrap();
    let r = post(&addr, "/v1/infer", Some("key-acme"), body, &key).await;
    expect_error(&r, 409, "outcome_unknown", "will not be written again");
    assert_eq!(r.json()["ids"], serde_json::json!(["u-1"]), "{}", r.body);

    // A key left `sending` by a request that stopped while its records went to Kafka: in
    // progress until the in-flight time it carries, unknown after it (they may be written).
    let sending = |until_ms: i64| {
        serde_json::json!({
            "state": "sending", "body_sha256": hex(body.as_bytes()), "until_ms": until_ms,
        })
        .to_string()
    };
    let pkey = [("Idempotency-Key", "k-sending")];
    let prkey = format!(
        "{}:ingest:idem:acme:infer:{}",
        run.prefix,
        hex(b"k-sending")
    );
    redis::cmd("SET")
        .arg(&prkey)
        .arg(sending(now + 600_000))
        .arg("EX")
        .arg(600)
        .exec_async(&mut conn)
        .await
        .unwrap();
    expect_error(
        &post(&addr, "/v1/infer", Some("key-acme"), body, &pkey).await,
        409,
        "in_progress",
        "still being processed",
    );
    redis::cmd("SET")
        .arg(&prkey)
        .arg(sending(now - 1))
        .arg("EX")
        .arg(600)
        .exec_async(&mut conn)
        .await
        .unwrap();
    let r = post(&addr, "/v1/infer", Some("key-acme"), body, &pkey).await;
    expect_error(&r, 409, "outcome_unknown", "stopped first");
    assert_eq!(r.json()["ids"], serde_json::json!([]), "{}", r.body);

    // A request's key passes through `sending` to its stored answer: a successful POST
    // leaves `done`, nothing else.
    let through = post(
        &addr,
        "/v1/infer",
        Some("key-acme"),
        r#"{"text":"through sending"}"#,
        &[("Idempotency-Key", "k-through")],
    )
    .await;
    assert_eq!(through.status, 202, "{}", through.body);
    let stored: String = redis::cmd("GET")
        .arg(format!(
            "{}:ingest:idem:acme:infer:{}",
            run.prefix,
            hex(b"k-through")
        ))
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(&stored).unwrap()["state"],
        "done",
        "{stored}"
    );

    // Ids left in flight by a request that stopped, or settled as unknown, are answered
    // as unknown (never written again), not as duplicates of something written.
    for (id, holder) in [
        ("u-2", format!("http:gone@{}", now - 1)),
        ("u-3", "http:settled?".to_string()),
    ] {
        let claim = format!("{}:ingest:id:acme:{id}", run.prefix);
        redis::cmd("SET")
            .arg(&claim)
            .arg(&holder)
            .arg("EX")
            .arg(600)
            .exec_async(&mut conn)
            .await
            .unwrap();
        let r = post(
            &addr,
            "/v1/infer",
            Some("key-acme"),
            &format!(r#"{{"id":"{id}","text":"left unknown"}}"#),
            &[],
        )
        .await;
        expect_error(
            &r,
            409,
            "outcome_unknown",
            &format!(r#""{id}" belongs to an earlier request"#),
        );
        assert_eq!(r.json()["ids"], serde_json::json!([id]), "{}", r.body);
    }

    let mut features = TopicReader::new(&run.features);
    features.read_to_end(Duration::from_secs(10)).await;
    let ids: Vec<String> = features.records.iter().map(|r| r.key_str()).collect();
    assert_eq!(
        ids,
        vec![through.json()["id"].as_str().unwrap().to_string()],
        "only the request that went through wrote"
    );
    run.cleanup().await;
}

/// Clients that hang up right after sending their POST: each request still runs to its
/// end (it is not dropped halfway with its ids claimed or its Idempotency-Key pending), so
/// a retry with the same key gets the first answer and every request is written once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_hanging_up_mid_request_leaves_it_whole() {
    use tokio::io::AsyncWriteExt as _;
    let run = Run::new().await;
    let (_ingest, addr) = run.ingest().await;
    let n = 20;
    let body = |i: usize| format!(r#"{{"id":"h-{i}","text":"hung up {i}"}}"#);
    for i in 0..n {
        let b = body(i);
        let mut s = tokio::net::TcpStream::connect(&addr).await.unwrap();
        let head = format!(
            "POST /v1/infer HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer key-acme\r\n\
             Idempotency-Key: hang-{i}\r\nContent-Type: application/json\r\n\
             Content-Length: {}\r\n\r\n",
            b.len()
        );
        s.write_all(head.as_bytes()).await.unwrap();
        s.write_all(b.as_bytes()).await.unwrap();
        drop(s); // gone before any answer
    }
    for i in 0..n {
        let key = format!("hang-{i}");
        let r = eventually(
            Duration::from_secs(60),
            &format!("a 202 for hung-up request {i}"),
            || {
                let (addr, b, key) = (addr.clone(), body(i), key.clone());
                async move {
                    let r = post(
                        &addr,
                        "/v1/infer",
                        Some("key-acme"),
                        &b,
                        &[("Idempotency-Key", &key)],
                    )
                    .await;
                    (r.status == 202).then_some(r)
                }
            },
        )
        .await;
        assert_eq!(r.json()["id"], format!("h-{i}"), "{}", r.body);
    }
    let mut features = TopicReader::new(&run.features);
    features
        .read_until(
            Duration::from_secs(60),
            "every hung-up request's record",
            |r| r.len() >= n,
        )
        .await;
    features.read_to_end(Duration::from_secs(10)).await;
    let mut ids: Vec<String> = features.records.iter().map(|r| r.key_str()).collect();
    ids.sort();
    let mut expected: Vec<String> = (0..n).map(|i| format!("h-{i}")).collect();
    expected.sort();
    assert_eq!(ids, expected, "each request written exactly once");
    run.cleanup().await;
}

/// A raw Kafka record whose id an HTTP request holds in flight waits for that request's
/// outcome instead of being refused as a duplicate: here the request "fails" (its claim is
/// released), and the record is then written once, with nothing dead-lettered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_raw_record_waits_for_an_http_request_holding_its_id() {
    let run = Run::new().await;
    let (_ingest, addr) = run.ingest().await;
    let client = redis::Client::open(redis_url()).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let claim = format!("{}:ingest:id:acme:r-held", run.prefix);
    let in_flight = format!("http:another-request@{}", aifab_core::now_ms() + 600_000);
    redis::cmd("SET")
        .arg(&claim)
        .arg(&in_flight)
        .arg("EX")
        .arg(600)
        .exec_async(&mut conn)
        .await
        .unwrap();

    let body = |id: &str| {
        format!(r#"{{"schema":"ingest.raw/v1","id":"{id}","tenant":"acme","text":"held id"}}"#)
            .into_bytes()
    };
    produce_raw(&run.raw, &[(Some("r-held".into()), body("r-held"), vec![])]).await;
    eventually(
        Duration::from_secs(60),
        "ingest waiting for the held id",
        || async {
            let (_, text) = http_get(&addr, "/metrics").await.ok()?;
            metric(&text, "aifab_ingest_raw_waits_total").filter(|n| *n >= 1.0)
        },
    )
    .await;

    // The HTTP request's write failed: it releases its claim.
    redis::cmd("DEL")
        .arg(&claim)
        .exec_async(&mut conn)
        .await
        .unwrap();
    run.assert_each_written_once(1, "the held record").await;
    let mut dlq = TopicReader::new(&run.dlq);
    dlq.read_to_end(Duration::from_secs(5)).await;
    assert!(
        dlq.records.is_empty(),
        "nothing dead-lettered: {:?}",
        dlq.records.len()
    );
    let held: Option<String> = redis::cmd("GET")
        .arg(&claim)
        .query_async(&mut conn)
        .await
        .unwrap();
    assert!(
        held.is_some_and(|h| h.starts_with("kafka:")),
        "the record holds its id now"
    );
    run.cleanup().await;
}
