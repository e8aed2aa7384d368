//! Every status code the API answers, each with a reason; bad requests dead-lettered.

use super::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_status_code_comes_with_a_reason_and_bad_requests_are_dead_lettered() {
    let run = Run::new().await;
    let (mut ingest, addr) = run.ingest().await;
    let infer = "/v1/infer";

    // 202: one text, a batch, labelled examples.
    let r = post(
        &addr,
        infer,
        Some("key-acme"),
        r#"{"text":"hello there","task":"sms_spam","id":"one"}"#,
        &[],
    )
    .await;
    assert_eq!(r.status, 202, "{}", r.body);
    assert_eq!(r.json()["id"], "one");
    assert_eq!(r.header("location"), Some("/v1/predictions/one"));
    let r = post(
        &addr,
        infer,
        Some("key-acme"),
        r#"{"inputs":[{"text":"a"},{"text":"b","deadline_ms":500},{"text":"c"}]}"#,
        &[],
    )
    .await;
    assert_eq!(r.status, 202, "{}", r.body);
    let batch_ids: Vec<String> = r.json()["ids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap().to_string())
        .collect();
    assert_eq!(batch_ids.len(), 3);
    assert!(r.header("location").is_none());
    let r = post(
        &addr,
        "/v1/examples",
        Some("key-beta"),
        r#"{"examples":[{"text":"win cash","task":"sms_spam","label":"spam"}]}"#,
        &[],
    )
    .await;
    assert_eq!(r.status, 202, "{}", r.body);
    // The X-API-Key header works too.
    let r = post(
        &addr,
        infer,
        None,
        r#"{"text":"via x-api-key"}"#,
        &[("X-API-Key", "key-beta")],
    )
    .await;
    assert_eq!(r.status, 202, "{}", r.body);

    // 400s name the field.
    let bad: &[(&str, &str, &str)] = &[
        (
            r#"{"txt":"hello"}"#,
            "missing_field",
            r#"missing field "text"; unexpected field "txt""#,
        ),
        (
            r#"{"task":"sms_spam"}"#,
            "missing_field",
            r#"missing field "text""#,
        ),
        (
            r#"{"text":"x","deadline_ms":"soon"}"#,
            "wrong_type",
            r#"field "deadline_ms": "soon" is not of type "integer""#,
        ),
        (r#"{"text":""}"#, "empty_text", r#"field "text""#),
        (
            r#"{"text":"x","label":"spam"}"#,
            "unexpected_field",
            r#"unexpected field "label": /v1/infer takes unlabelled texts"#,
        ),
        (
            r#"{"inputs":[{"text":"ok"},{"text":7}]}"#,
            "wrong_type",
            r#"field "inputs[1].text": 7 is not of type "string""#,
        ),
        (r#"{"text": "unterminated"#, "not_json", "body: not JSON"),
        ("[1,2]", "wrong_type", "body: expected a JSON object"),
    ];
    for (body, kind, reason) in bad {
        let r = post(&addr, infer, Some("key-acme"), body, &[]).await;
        expect_error(&r, 400, kind, reason);
    }
    let r = post(
        &addr,
        "/v1/examples",
        Some("key-acme"),
        r#"{"text":"x","task":"sms_spam","label":"eggs"}"#,
        &[],
    )
    .await;
    expect_error(
        &r,
        400,
        "unknown_label",
        concat!(
            r#"field "label": "eggs" is not a label of task "sms_spam" "#,
            r#"(expected one of "ham", "spam")"#
        ),
    );
    let r = post(
        &addr,
        "/v1/examples",
        Some("key-acme"),
        r#"{"text":"x"}"#,
        &[],
    )
    .await;
    expect_error(&r, 400, "missing_field", r#"missing field "label""#);

    // 401: no key, unknown key.
    let r = post(&addr, infer, None, r#"{"text":"who am i"}"#, &[]).await;
    expect_error(&r, 401, "missing_api_key", "missing API key");
    assert!(r
        .header("www-authenticate")
        .is_some_and(|v| v.starts_with("Bearer")));
    let r = post(
        &addr,
        infer,
        Some("key-nobody"),
        r#"{"text":"who am i"}"#,
        &[],
    )
    .await;
    expect_error(&r, 401, "bad_api_key", "unknown API key");

    // 403: acting for another tenant; a disabled tenant.
    let r = post(
        &addr,
        infer,
        Some("key-acme"),
        r#"{"text":"x","tenant":"beta"}"#,
        &[],
    )
    .await;
    expect_error(
        &r,
        403,
        "forbidden_tenant",
        r#"this API key belongs to tenant "acme", found "beta""#,
    );
    let r = post(&addr, infer, Some("key-gamma"), r#"{"text":"x"}"#, &[]).await;
    expect_error(&r, 403, "tenant_disabled", r#"tenant "gamma" is disabled"#);

    // 409: an id this tenant already used; the same id in another tenant is fine.
    let r = post(
        &addr,
        infer,
        Some("key-acme"),
        r#"{"text":"again","id":"one"}"#,
        &[],
    )
    .await;
    expect_error(
        &r,
        409,
        "duplicate_id",
        r#"field "id": "one" was already used by an earlier request of tenant "acme""#,
    );
    let r = post(
        &addr,
        infer,
        Some("key-beta"),
        r#"{"text":"mine","id":"one"}"#,
        &[],
    )
    .await;
    assert_eq!(r.status, 202, "ids are per tenant: {}", r.body);
    let r = post(
        &addr,
        infer,
        Some("key-acme"),
        r#"{"inputs":[{"text":"a","id":"fresh-1"},{"text":"b","id":"one"}]}"#,
        &[],
    )
    .await;
    expect_error(&r, 409, "duplicate_id", r#"field "inputs[1].id": "one""#);
    // The refused batch released its other claims: fresh-1 is still free.
    let r = post(
        &addr,
        infer,
        Some("key-acme"),
        r#"{"text":"a","id":"fresh-1"}"#,
        &[],
    )
    .await;
    assert_eq!(r.status, 202, "{}", r.body);

    // 413: too many items; a body over the byte limit.
    let six = format!(r#"{{"inputs":[{}]}}"#, [r#"{"text":"t"}"#; 6].join(","));
    let r = post(&addr, infer, Some("key-acme"), &six, &[]).await;
    expect_error(
        &r,
        413,
        "batch_too_large",
        r#"field "inputs": 6 items, more than the maximum of 5"#,
    );
    let big = format!(r#"{{"text":"{}"}}"#, "x".repeat(5000));
    let r = post(&addr, infer, Some("key-acme"), &big, &[]).await;
    expect_error(
        &r,
        413,
        "body_too_large",
        "more than the maximum of 4096 bytes",
    );

    // 404 for an unknown route body shape is axum's; a GET of an unknown id is ours.
    let r = get(&addr, "/v1/predictions/never-sent", Some("key-acme")).await;
    expect_error(&r, 404, "not_found", "never-sent");

    // Accepted records reached the features topic once each, with tenant and receipt time.
    let mut features = TopicReader::new(&run.features);
    features
        .read_until(Duration::from_secs(30), "8 accepted records", |r| {
            r.len() >= 8
        })
        .await;
    features.read_to_end(Duration::from_secs(30)).await;
    assert_eq!(
        features.records.len(),
        8,
        "1 + 3 + 1 + 1 + 1 (beta's \"one\") + 1 (fresh-1)"
    );
    let first = features
        .records
        .iter()
        .find(|r| r.key_str() == "one" && r.header("tenant").as_deref() == Some("acme"))
        .unwrap();
    let v = first.json();
    assert_eq!(
        (
            v["schema"].as_str(),
            v["tenant"].as_str(),
            v["task"].as_str()
        ),
        (Some("ingest.raw/v1"), Some("acme"), Some("sms_spam"))
    );
    assert!(v["received_at_ms"].as_i64().unwrap() > 0);
    let d = features
        .records
        .iter()
        .find(|r| r.json()["deadline_ms"] == 500)
        .unwrap();
    assert_eq!(d.json()["task"], "default", "default task filled in");
    assert!(batch_ids.contains(&d.key_str()));

    // Every refused request except 413 over the byte limit is in the DLQ, with its body.
    let mut dlq = TopicReader::new(&run.dlq);
    dlq.read_until(Duration::from_secs(30), "dead letters", |r| r.len() >= 17)
        .await;
    dlq.read_to_end(Duration::from_secs(30)).await;
    let mut kinds: BTreeMap<String, usize> = BTreeMap::new();
    for r in &dlq.records {
        let dl: aifab_core::messages::DeadLetter =
            aifab_core::messages::decode(&r.payload).unwrap();
        assert_eq!((dl.stage.as_str(), dl.source.is_none()), ("ingest", true));
        *kinds.entry(dl.error_kind.clone()).or_default() += 1;
        if dl.error_kind == "forbidden_tenant" {
            assert_eq!(
                base64_decode(&dl.original_base64),
                br#"{"text":"x","tenant":"beta"}"#
            );
            assert_eq!(dl.tenant.as_deref(), Some("acme"));
        }
    }
    let expected: BTreeMap<String, usize> = [
        ("unexpected_field", 1),
        ("missing_field", 3),
        ("wrong_type", 3),
        ("empty_text", 1),
        ("not_json", 1),
        ("unknown_label", 1),
        ("missing_api_key", 1),
        ("bad_api_key", 1),
        ("forbidden_tenant", 1),
        ("tenant_disabled", 1),
        ("duplicate_id", 2),
        ("batch_too_large", 1),
    ]
    .iter()
    .map(|(k, n)| (k.to_string(), *n))
    .collect();
    assert_eq!(kinds, expected);

    let (code, _) = http_get(&addr, "/healthz").await.unwrap();
    assert_eq!(code, 200);
    let (_, metrics) = http_get(&addr, "/metrics").await.unwrap();
    assert!(
        metrics.contains("aifab_ingest_http_requests_total"),
        "{metrics}"
    );
    sigterm(&ingest);
    let status = tokio::time::timeout(Duration::from_secs(30), ingest.wait())
        .await
        .expect("exits")
        .unwrap();
    assert!(status.success(), "SIGTERM exit: {status}");
    run.cleanup().await;
}
