//! The ingest HTTP API against the live stack: every status code it answers (202, 200,
//! 400 naming the field, 401, 403, 404, 409, 413, 422, 429 with Retry-After), idempotency
//! keys, the predictions store by tenant, keys added in Redis at run time, and budget
//! enforcement from NATS (reject vs deprioritise, the priority reaching the inference
//! request). Each test runs its own ingest (and feature) processes on fresh topics and a
//! fresh Redis prefix.

use std::collections::BTreeMap;
use std::time::Duration;

use aifab_core::messages::{encode, tag, Arm, BudgetEvent, BudgetEventKind, Outcome, Prediction};
use aifab_tests::*;
use tokio::process::Child;

struct Run {
    uid: String,
    raw: String,
    features: String,
    inference: String,
    training: String,
    predictions: String,
    dlq: String,
    prefix: String,
    dir: tempfile::TempDir,
}

impl Run {
    /// The features topic, read to its end, holds `requests` ids, each exactly once.
    async fn assert_each_written_once(&self, requests: usize, context: &str) {
        let mut features = TopicReader::new(&self.features);
        features
            .read_until(Duration::from_secs(60), "every request's record", |r| {
                r.len() >= requests
            })
            .await;
        features.read_to_end(Duration::from_secs(10)).await;
        let mut per_id: BTreeMap<String, usize> = BTreeMap::new();
        for r in &features.records {
            *per_id.entry(r.key_str()).or_default() += 1;
        }
        let not_once: Vec<_> = per_id.iter().filter(|(_, &n)| n != 1).collect();
        assert!(
            not_once.is_empty(),
            "ids written more than once: {not_once:?} ({context})"
        );
        assert_eq!(
            per_id.len(),
            requests,
            "every request written once ({context})"
        );
    }

    async fn new() -> Self {
        let id = unique("ingest-http");
        let uid = id.rsplit('.').next().unwrap().to_string();
        let run = Run {
            raw: format!("{id}.raw"),
            features: format!("{id}.features"),
            inference: format!("{id}.inference"),
            training: format!("{id}.training"),
            predictions: format!("{id}.predictions"),
            dlq: format!("{id}.dlq"),
            prefix: id.clone(),
            uid,
            dir: tempfile::tempdir().unwrap(),
        };
        for (t, p) in [
            (&run.raw, 2),
            (&run.features, 2),
            (&run.inference, 2),
            (&run.training, 1),
            (&run.predictions, 2),
            (&run.dlq, 1),
        ] {
            create_topic(t, p).await;
        }
        let keys = serde_json::json!({
            "keys": [
                {"key": "key-acme", "tenant": "acme"},
                {"key": "key-beta", "tenant": "beta"},
                {"key": "key-gamma", "tenant": "gamma"},
                {"key": "key-slow", "tenant": "slow"},
                {"key": "key-over", "tenant": run.over()},
                {"key": "key-low", "tenant": run.low()},
            ],
            "tenants": {
                "gamma": {"enabled": false},
                "slow": {"rate_per_s": 0.5, "burst": 2},
                run.over(): {"budget_mode": "reject"},
                run.low(): {"budget_mode": "deprioritise"},
            }
        });
        std::fs::write(run.dir.path().join("keys.json"), keys.to_string()).unwrap();
        run
    }

    fn over(&self) -> String {
        format!("over-{}", self.uid)
    }
    fn low(&self) -> String {
        format!("low-{}", self.uid)
    }

    fn env(&self) -> Vec<(&'static str, String)> {
        vec![
            ("AIFAB_RAW_TOPIC", self.raw.clone()),
            ("AIFAB_FEATURES_TOPIC", self.features.clone()),
            ("AIFAB_INFERENCE_TOPIC", self.inference.clone()),
            ("AIFAB_TRAINING_TOPIC", self.training.clone()),
            ("AIFAB_PREDICTIONS_TOPIC", self.predictions.clone()),
            ("AIFAB_DLQ_TOPIC", self.dlq.clone()),
            ("AIFAB_REDIS_PREFIX", self.prefix.clone()),
            ("AIFAB_INGEST_GROUP", format!("{}.ingest", self.prefix)),
            (
                "AIFAB_INGEST_PREDICTIONS_GROUP",
                format!("{}.ingest-predictions", self.prefix),
            ),
            ("AIFAB_FEATURE_GROUP", format!("{}.feature", self.prefix)),
            (
                "AIFAB_FEATURE_CACHE_GROUP",
                format!("{}.feature-cache", self.prefix),
            ),
            (
                "AIFAB_API_KEYS_FILE",
                self.dir.path().join("keys.json").display().to_string(),
            ),
            ("AIFAB_TASK_LABELS", "sms_spam=ham,spam".into()),
            ("AIFAB_MAX_BODY_BYTES", "4096".into()),
            ("AIFAB_MAX_BATCH_ITEMS", "5".into()),
        ]
    }

    async fn ingest(&self) -> (Child, String) {
        let (child, addr) = spawn_service("ingest", &self.env());
        wait_ready(&addr, "ingest").await;
        (child, addr)
    }

    /// Ingest with a 3 ms produce timeout: many POSTs time out, before their records are
    /// taken into a transaction or while it commits.
    async fn ingest_timing_out(&self) -> (Child, String) {
        let mut env = self.env();
        env.push(("AIFAB_PRODUCE_TIMEOUT_MS", "3".into()));
        let (child, addr) = spawn_service("ingest", &env);
        wait_ready(&addr, "ingest").await;
        (child, addr)
    }

    async fn feature(&self) -> (Child, String) {
        let model = self.dir.path().join("tiny");
        aifab_model::testing::write_tiny_bert(&model, 3).unwrap();
        let mut env = self.env();
        env.push(("AIFAB_MODEL_DIR", model.display().to_string()));
        env.push(("AIFAB_MAX_TOKENS", "32".into()));
        let (child, addr) = spawn_service("feature", &env);
        wait_ready(&addr, "feature").await;
        (child, addr)
    }

    async fn cleanup(&self) {
        for t in [
            &self.raw,
            &self.features,
            &self.inference,
            &self.training,
            &self.predictions,
            &self.dlq,
        ] {
            delete_topic(t).await;
        }
    }
}

async fn post(
    addr: &str,
    path: &str,
    key: Option<&str>,
    body: &str,
    extra: &[(&str, &str)],
) -> HttpResponse {
    let auth = key.map(|k| format!("Bearer {k}"));
    let mut headers: Vec<(&str, &str)> = vec![("Content-Type", "application/json")];
    if let Some(a) = &auth {
        headers.push(("Authorization", a));
    }
    headers.extend_from_slice(extra);
    http_request(addr, "POST", path, &headers, body.as_bytes())
        .await
        .expect("POST")
}

async fn get(addr: &str, path: &str, key: Option<&str>) -> HttpResponse {
    let auth = key.map(|k| format!("Bearer {k}"));
    let headers: Vec<(&str, &str)> = auth.iter().map(|a| ("Authorization", a.as_str())).collect();
    http_request(addr, "GET", path, &headers, b"")
        .await
        .expect("GET")
}

#[track_caller]
fn expect_error(r: &HttpResponse, status: u16, kind: &str, reason_has: &str) {
    assert_eq!(r.status, status, "{kind}: {}", r.body);
    let v = r.json();
    assert_eq!(v["error"], kind, "{}", r.body);
    let reason = v["reason"].as_str().unwrap();
    assert!(
        reason.contains(reason_has),
        "reason {reason:?} lacks {reason_has:?}"
    );
}

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
        r#"field "label": "eggs" is not a label of task "sms_spam" (expected one of "ham", "spam")"#,
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
    let six = format!(r#"{{"inputs":[{}]}}"#, vec![r#"{"text":"t"}"#; 6].join(","));
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

/// (year, month) of a day count since 1970-01-01.
/// The sha256 of a key, as an operator computes it (`printf %s "$KEY" | sha256sum`).
fn sha256_hex(bytes: &[u8]) -> String {
    use std::io::Write;
    let mut child = std::process::Command::new("sha256sum")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("sha256sum");
    child.stdin.take().unwrap().write_all(bytes).unwrap();
    let out = child.wait_with_output().unwrap();
    String::from_utf8(out.stdout)
        .unwrap()
        .split_whitespace()
        .next()
        .unwrap()
        .to_string()
}

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
    use sha2::Digest as _;
    let run = Run::new().await;
    let (_ingest, addr) = run.ingest().await;
    let hex = |b: &[u8]| {
        sha2::Sha256::digest(b)
            .iter()
            .map(|x| format!("{x:02x}"))
            .collect::<String>()
    };
    let body = r#"{"id":"u-1","text":"left undecided"}"#;
    let rkey = format!(
        "{}:ingest:idem:acme:infer:{}",
        run.prefix,
        hex(b"k-undecided")
    );
    let undecided = |until_ms: i64| {
        serde_json::json!({"state": "undecided", "body_sha256": hex(body.as_bytes()), "until_ms": until_ms, "ids": ["u-1"]})
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
        serde_json::json!({"state": "sending", "body_sha256": hex(body.as_bytes()), "until_ms": until_ms}).to_string()
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
            "POST /v1/infer HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer key-acme\r\nIdempotency-Key: hang-{i}\r\n\
             Content-Type: application/json\r\nContent-Length: {}\r\n\r\n",
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
