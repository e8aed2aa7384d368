//! Bad input through ingest and feature over Kafka and HTTP: 1,000 valid
//! and 1,000 invalid messages over 18 kinds of bad input. Every valid message reaches its
//! next topic (`features.in`) exactly once and the one after it (inference requests or
//! training examples) exactly once; every invalid one is in the DLQ exactly once with
//! the right `error_kind` and a reason naming the field (Kafka ones with their source
//! partition and offset, HTTP ones with the body as sent); both services keep running.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::Duration;

use aifab_core::messages::{decode, DeadLetter};
use aifab_tests::*;
use futures::StreamExt as _;
use serde_json::json;

struct Topics {
    raw: String,
    features: String,
    inference: String,
    training: String,
    predictions: String,
    dlq: String,
    prefix: String,
}

/// An invalid input and what its dead letter must say.
struct Expect {
    kind: &'static str,
    reason: String,
}

fn kafka_bad(j: usize) -> Vec<(&'static str, usize, Box<dyn Fn(usize) -> (Vec<u8>, String)>)> {
    let _ = j;
    let rec = |extra: serde_json::Value| {
        let mut v = json!({"schema": "ingest.raw/v1", "tenant": "acme", "text": "the cat sat", "task": "sms_spam"});
        for (k, x) in extra.as_object().unwrap() {
            if x.is_null() {
                v.as_object_mut().unwrap().remove(k);
            } else {
                v[k] = x.clone();
            }
        }
        serde_json::to_vec(&v).unwrap()
    };
    vec![
        (
            "not_json",
            60,
            Box::new(|i| {
                (
                    format!("{{not json {i}").into_bytes(),
                    "message: not JSON".into(),
                )
            }),
        ),
        (
            "not_utf8",
            60,
            Box::new(|i| {
                let mut b = vec![0xff, 0xfe];
                b.extend(format!(" bad bytes {i}").as_bytes());
                (b, "message: not UTF-8: invalid byte at position 0".into())
            }),
        ),
        (
            "wrong_schema",
            40,
            Box::new(move |_| {
                (
                    rec(json!({"schema": "prediction/v1"})),
                    r#"field "schema": expected "ingest.raw/v1", found "prediction/v1""#.into(),
                )
            }),
        ),
        (
            "wrong_schema",
            40,
            Box::new(move |_| {
                (
                    rec(json!({"schema": "ingest.raw/v2"})),
                    r#"expected "ingest.raw/v1", found "ingest.raw/v2""#.into(),
                )
            }),
        ),
        (
            "missing_schema",
            30,
            Box::new(move |_| {
                (
                    rec(json!({"schema": null})),
                    r#"missing field "schema""#.into(),
                )
            }),
        ),
        (
            "missing_field",
            60,
            Box::new(move |_| {
                (
                    rec(json!({"tenant": null})),
                    r#"missing field "tenant""#.into(),
                )
            }),
        ),
        (
            "wrong_type",
            60,
            Box::new(move |_| {
                (
                    rec(json!({"deadline_ms": "soon"})),
                    r#"field "deadline_ms": "soon" is not of type "integer""#.into(),
                )
            }),
        ),
        (
            "empty_text",
            60,
            Box::new(move |_| {
                (
                    rec(json!({"text": ""})),
                    r#"field "text": "" is shorter than 1 character"#.into(),
                )
            }),
        ),
        (
            "text_too_long",
            35,
            Box::new(move |_| {
                (
                    rec(json!({"text": "a".repeat(20_001)})),
                    "is 20001 characters long, more than the maximum of 20000".into(),
                )
            }),
        ),
        // Near the broker's 1 MB: its dead letter keeps the first 256 KiB, or it could not be written.
        (
            "record_too_large",
            5,
            Box::new(move |_| {
                (
                    rec(json!({"attributes": {"pad": "p".repeat(900_000)}})),
                    "bytes long, more than the maximum of 262144 bytes per record".into(),
                )
            }),
        ),
        (
            "unknown_tenant",
            60,
            Box::new(move |_| {
                (
                    rec(json!({"tenant": "ghost"})),
                    r#"field "tenant": "ghost" is not a known tenant"#.into(),
                )
            }),
        ),
        (
            "unknown_label",
            60,
            Box::new(move |_| {
                (rec(json!({"label": "eggs"})), r#"field "label": "eggs" is not a label of task "sms_spam" (expected one of "ham", "spam")"#.into())
            }),
        ),
        (
            "unexpected_field",
            40,
            Box::new(move |_| {
                (
                    rec(json!({"colour": "red"})),
                    r#"unexpected field "colour""#.into(),
                )
            }),
        ),
        (
            "invalid_value",
            30,
            Box::new(move |_| {
                (
                    rec(json!({"tenant": "acme corp"})),
                    r#"field "tenant": "acme corp" does not match"#.into(),
                )
            }),
        ),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_valid_and_a_thousand_invalid_messages_over_kafka_and_http() {
    let id = unique("ingest-bad");
    let t = Topics {
        raw: format!("{id}.raw"),
        features: format!("{id}.features"),
        inference: format!("{id}.inference"),
        training: format!("{id}.training"),
        predictions: format!("{id}.predictions"),
        dlq: format!("{id}.dlq"),
        prefix: id.clone(),
    };
    for (name, p) in [
        (&t.raw, 4),
        (&t.features, 4),
        (&t.inference, 4),
        (&t.training, 2),
        (&t.predictions, 2),
        (&t.dlq, 1),
    ] {
        create_topic(name, p).await;
    }
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("keys.json"),
        json!({"keys": [{"key": "key-acme", "tenant": "acme"}, {"key": "key-beta", "tenant": "beta"}]}).to_string(),
    )
    .unwrap();
    aifab_model::testing::write_tiny_bert(dir.path().join("tiny"), 5).unwrap();
    let env: Vec<(&str, String)> = vec![
        ("AIFAB_RAW_TOPIC", t.raw.clone()),
        ("AIFAB_FEATURES_TOPIC", t.features.clone()),
        ("AIFAB_INFERENCE_TOPIC", t.inference.clone()),
        ("AIFAB_TRAINING_TOPIC", t.training.clone()),
        ("AIFAB_PREDICTIONS_TOPIC", t.predictions.clone()),
        ("AIFAB_DLQ_TOPIC", t.dlq.clone()),
        ("AIFAB_REDIS_PREFIX", t.prefix.clone()),
        ("AIFAB_INGEST_GROUP", format!("{id}.ingest")),
        (
            "AIFAB_INGEST_PREDICTIONS_GROUP",
            format!("{id}.ingest-predictions"),
        ),
        ("AIFAB_FEATURE_GROUP", format!("{id}.feature")),
        ("AIFAB_FEATURE_CACHE_GROUP", format!("{id}.feature-cache")),
        (
            "AIFAB_API_KEYS_FILE",
            dir.path().join("keys.json").display().to_string(),
        ),
        ("AIFAB_TASK_LABELS", "sms_spam=ham,spam".into()),
        ("AIFAB_MAX_BATCH_ITEMS", "10".into()),
        (
            "AIFAB_MODEL_DIR",
            dir.path().join("tiny").display().to_string(),
        ),
        ("AIFAB_MAX_TOKENS", "32".into()),
    ];
    let (mut ingest, ingest_addr) = spawn_service("ingest", &env);
    let (mut feature, feature_addr) = spawn_service("feature", &env);
    wait_ready(&ingest_addr, "ingest").await;
    wait_ready(&feature_addr, "feature").await;

    // ------------------------------------------------------------ valid input, 1,000
    // Identity of each valid message: its id, or (id-less ones) a marker in its text.
    let mut valid_labelled: BTreeMap<String, bool> = BTreeMap::new();
    let mut kafka: Vec<(Option<String>, Vec<u8>, Vec<(String, String)>)> = Vec::new();
    for i in 0..600 {
        let tenant = if i % 2 == 0 { "acme" } else { "beta" };
        let labelled = i % 3 == 0;
        let mut v = json!({"schema": "ingest.raw/v1", "tenant": tenant, "task": "sms_spam", "text": format!("the quick brown fox {i} ~vk{i}~")});
        if labelled {
            v["label"] = json!(if i % 2 == 0 { "ham" } else { "spam" });
        }
        let ident = if i % 6 == 5 {
            format!("~vk{i}~")
        } else {
            v["id"] = json!(format!("v-k-{i}"));
            format!("v-k-{i}")
        };
        valid_labelled.insert(ident.clone(), labelled);
        let key = v["id"].as_str().map(str::to_string);
        kafka.push((
            key,
            serde_json::to_vec(&v).unwrap(),
            vec![(
                "traceparent".into(),
                format!("00-{:032x}-{:016x}-01", i + 1, i + 1),
            )],
        ));
    }
    // Invalid Kafka input (duplicates come later, after their originals).
    let mut kafka_expect: Vec<Expect> = Vec::new();
    let mut bad_records = Vec::new();
    let mut j = 0;
    for (kind, n, make) in kafka_bad(0) {
        for _ in 0..n {
            let (payload, reason) = make(j);
            bad_records.push((Some(format!("bad-{kind}-{j}")), payload, vec![]));
            kafka_expect.push(Expect { kind, reason });
            j += 1;
        }
    }
    // Interleave: valid and invalid in the same batches.
    let mut mixed = Vec::new();
    let mut expect_at: Vec<Option<usize>> = Vec::new();
    let (mut vi, mut bi) = (kafka.into_iter(), bad_records.into_iter().enumerate());
    loop {
        let a = vi.next();
        let b = bi.next();
        if a.is_none() && b.is_none() {
            break;
        }
        if let Some(r) = a {
            mixed.push(r);
            expect_at.push(None);
        }
        if let Some((k, r)) = b {
            mixed.push(r);
            expect_at.push(Some(k));
        }
    }
    let positions = produce_raw(&t.raw, &mixed).await;
    // (partition, offset) → (which expectation, the key it was produced with).
    let mut kafka_dlq_expect: HashMap<(i32, i64), (usize, Option<String>)> = HashMap::new();
    for ((pos, e), r) in positions.iter().zip(&expect_at).zip(&mixed) {
        if let Some(k) = e {
            kafka_dlq_expect.insert(*pos, (*k, r.0.clone()));
        }
    }

    // HTTP: 100 single texts, 20 batches of 10 (5 without ids), 10 batches of 10 examples.
    let mut http_valid: Vec<(&str, &str, String)> = Vec::new();
    for i in 0..100 {
        let key = if i % 2 == 0 { "key-acme" } else { "key-beta" };
        valid_labelled.insert(format!("v-h-s-{i}"), false);
        http_valid.push((key, "/v1/infer", json!({"text": format!("hello world {i}"), "task": "sms_spam", "id": format!("v-h-s-{i}")}).to_string()));
    }
    for b in 0..20 {
        let items: Vec<serde_json::Value> = (0..10)
            .map(|k| {
                if b < 5 {
                    let ident = format!("~vhb{b}.{k}~");
                    valid_labelled.insert(ident.clone(), false);
                    json!({"text": format!("a lazy dog {ident}")})
                } else {
                    valid_labelled.insert(format!("v-h-b-{b}-{k}"), false);
                    json!({"text": format!("a lazy dog {b} {k}"), "id": format!("v-h-b-{b}-{k}")})
                }
            })
            .collect();
        http_valid.push((
            "key-acme",
            "/v1/infer",
            json!({"inputs": items}).to_string(),
        ));
    }
    for b in 0..10 {
        let items: Vec<serde_json::Value> = (0..10)
            .map(|k| {
                valid_labelled.insert(format!("v-h-e-{b}-{k}"), true);
                json!({"text": format!("good film {b} {k}"), "task": "sms_spam", "label": "ham", "id": format!("v-h-e-{b}-{k}")})
            })
            .collect();
        http_valid.push((
            "key-beta",
            "/v1/examples",
            json!({"examples": items}).to_string(),
        ));
    }
    assert_eq!(valid_labelled.len(), 1000);

    // Invalid HTTP input: (api key, path, body, status, kind, reason); a marker in each body.
    let mut http_bad: Vec<(Option<&str>, &str, String, u16, &str, String)> = Vec::new();
    let marker = |kind: &str, i: usize| format!("~{kind}~{i}~");
    for i in 0..50 {
        let m = marker("badkey", i);
        http_bad.push((
            Some("key-wrong"),
            "/v1/infer",
            json!({"text": m}).to_string(),
            401,
            "bad_api_key",
            "unknown API key".into(),
        ));
    }
    for i in 0..30 {
        let m = marker("nokey", i);
        http_bad.push((
            None,
            "/v1/infer",
            json!({"text": m}).to_string(),
            401,
            "missing_api_key",
            "missing API key".into(),
        ));
        let m = marker("big", i);
        let items: Vec<_> = (0..11)
            .map(|k| json!({"text": format!("{m} {k}")}))
            .collect();
        http_bad.push((
            Some("key-acme"),
            "/v1/infer",
            json!({"inputs": items}).to_string(),
            413,
            "batch_too_large",
            r#"field "inputs": 11 items, more than the maximum of 10"#.into(),
        ));
        let m = marker("forbid", i);
        http_bad.push((
            Some("key-acme"),
            "/v1/infer",
            json!({"text": m, "tenant": "beta"}).to_string(),
            403,
            "forbidden_tenant",
            r#"field "tenant": this API key belongs to tenant "acme", found "beta""#.into(),
        ));
        let m = marker("nojson", i);
        http_bad.push((
            Some("key-acme"),
            "/v1/infer",
            format!(r#"{{"text": "{m}""#),
            400,
            "not_json",
            "body: not JSON".into(),
        ));
        let m = marker("notext", i);
        http_bad.push((
            Some("key-beta"),
            "/v1/infer",
            json!({"task": "sms_spam", "attributes": {"m": m}}).to_string(),
            400,
            "missing_field",
            r#"missing field "text""#.into(),
        ));
        let m = marker("label", i);
        http_bad.push((
            Some("key-beta"),
            "/v1/examples",
            json!({"text": m, "task": "sms_spam", "label": "eggs"}).to_string(),
            400,
            "unknown_label",
            r#"field "label": "eggs" is not a label of task "sms_spam""#.into(),
        ));
        let m = marker("type", i);
        http_bad.push((
            Some("key-acme"),
            "/v1/infer",
            json!({"text": 5, "attributes": {"m": m}}).to_string(),
            400,
            "wrong_type",
            r#"field "text": 5 is not of type "string""#.into(),
        ));
    }

    let send = |(key, path, body): (Option<&str>, &str, String)| {
        let addr = ingest_addr.clone();
        let auth = key.map(|k| format!("Bearer {k}"));
        let path = path.to_string();
        async move {
            let headers: Vec<(&str, &str)> =
                auth.iter().map(|a| ("Authorization", a.as_str())).collect();
            http_request(&addr, "POST", &path, &headers, body.as_bytes())
                .await
                .expect("POST")
        }
    };
    let answers: Vec<HttpResponse> = futures::stream::iter(
        http_valid
            .iter()
            .map(|(k, p, b)| send((Some(*k), *p, b.clone()))),
    )
    .buffered(8)
    .collect()
    .await;
    for (a, (_, _, body)) in answers.iter().zip(&http_valid) {
        assert_eq!(a.status, 202, "valid request {body} → {}", a.body);
    }
    let answers: Vec<HttpResponse> = futures::stream::iter(
        http_bad
            .iter()
            .map(|(k, p, b, ..)| send((*k, *p, b.clone()))),
    )
    .buffered(8)
    .collect()
    .await;
    for (a, (_, _, body, status, kind, reason)) in answers.iter().zip(&http_bad) {
        assert_eq!(a.status, *status, "{body} → {}", a.body);
        let v = a.json();
        assert_eq!(v["error"], *kind, "{}", a.body);
        assert!(
            v["reason"].as_str().unwrap().contains(reason.as_str()),
            "{} lacks {reason}",
            a.body
        );
    }

    // Duplicates, after their originals were accepted: 60 over Kafka (same key, so the
    // same partition, behind the original), 40 over HTTP.
    let mut dupes = Vec::new();
    let mut dupe_expect = Vec::new();
    for i in (0..600).filter(|i| i % 6 != 5).take(60) {
        let tenant = if i % 2 == 0 { "acme" } else { "beta" };
        let v = json!({"schema": "ingest.raw/v1", "tenant": tenant, "task": "sms_spam", "id": format!("v-k-{i}"), "text": "a repeat"});
        dupes.push((
            Some(format!("v-k-{i}")),
            serde_json::to_vec(&v).unwrap(),
            vec![],
        ));
        kafka_expect.push(Expect { kind: "duplicate_id", reason: format!(r#"field "id": "v-k-{i}" was already used by an earlier record of tenant "{tenant}""#) });
        dupe_expect.push(kafka_expect.len() - 1);
    }
    for ((pos, k), d) in produce_raw(&t.raw, &dupes)
        .await
        .into_iter()
        .zip(dupe_expect)
        .zip(&dupes)
    {
        kafka_dlq_expect.insert(pos, (k, d.0.clone()));
    }
    let dup_http: Vec<_> = (0..40)
        .map(|i| {
            let key = if i % 2 == 0 { "key-acme" } else { "key-beta" };
            let tenant = if i % 2 == 0 { "acme" } else { "beta" };
            let m = marker("dup", i);
            (Some(key), "/v1/infer", json!({"text": m, "id": format!("v-h-s-{i}")}).to_string(), 409, "duplicate_id",
                format!(r#"field "id": "v-h-s-{i}" was already used by an earlier request of tenant "{tenant}""#))
        })
        .collect();
    for (k, p, b, status, kind, reason) in &dup_http {
        let a = send((*k, *p, b.clone())).await;
        assert_eq!(a.status, *status, "{b} → {}", a.body);
        assert_eq!(a.json()["error"], *kind);
        assert!(
            a.body.contains(&reason.replace('"', "\\\"")),
            "{} lacks {reason}",
            a.body
        );
    }
    http_bad.extend(dup_http);
    assert_eq!(
        kafka_expect.len() + http_bad.len(),
        1000,
        "1,000 invalid messages"
    );
    let kinds: BTreeSet<&str> = kafka_expect
        .iter()
        .map(|e| e.kind)
        .chain(http_bad.iter().map(|b| b.4))
        .collect();
    assert!(kinds.len() >= 12, "kinds of bad input: {kinds:?}");

    // ------------------------------------------------------------ every valid one, once
    // A producer-chosen id identifies a record; an id-less one by the marker in its text.
    let ident_of = |v: &serde_json::Value| -> String {
        let id = v["id"].as_str().unwrap_or_default();
        if valid_labelled.contains_key(id) {
            return id.to_string();
        }
        let text = v["text"].as_str().unwrap_or_default();
        text.find('~')
            .map(|s| text[s..].to_string())
            .unwrap_or_default()
    };
    let mut features = TopicReader::new(&t.features);
    features
        .read_until(Duration::from_secs(120), "1,000 accepted records", |r| {
            r.len() >= 1000
        })
        .await;
    features.read_to_end(Duration::from_secs(60)).await;
    let mut seen: BTreeMap<String, usize> = BTreeMap::new();
    let mut id_of_ident: HashMap<String, String> = HashMap::new();
    for r in &features.records {
        let v = r.json();
        assert!(
            v["received_at_ms"].as_i64().is_some() && v["id"].as_str().is_some(),
            "{v}"
        );
        assert_eq!(r.key_str(), v["id"].as_str().unwrap(), "keyed by id");
        let ident = ident_of(&v);
        *seen.entry(ident.clone()).or_default() += 1;
        id_of_ident.insert(ident, v["id"].as_str().unwrap().to_string());
    }
    let extra: Vec<_> = seen
        .keys()
        .filter(|k| !valid_labelled.contains_key(*k))
        .take(5)
        .collect();
    assert!(extra.is_empty(), "accepted something invalid: {extra:?}");
    let twice: Vec<_> = seen.iter().filter(|(_, n)| **n != 1).take(5).collect();
    assert!(twice.is_empty(), "accepted more than once: {twice:?}");
    assert_eq!(seen.len(), 1000, "every valid message accepted");
    // traceparent travels with the record.
    assert!(features.records.iter().any(|r| r
        .header("traceparent")
        .is_some_and(|h| h.starts_with("00-"))));

    let mut inference = TopicReader::new(&t.inference);
    let mut training = TopicReader::new(&t.training);
    let want_inf = valid_labelled.values().filter(|l| !**l).count();
    let want_train = valid_labelled.len() - want_inf;
    inference
        .read_until(Duration::from_secs(120), "inference requests", |r| {
            r.len() >= want_inf
        })
        .await;
    training
        .read_until(Duration::from_secs(60), "training examples", |r| {
            r.len() >= want_train
        })
        .await;
    inference.read_to_end(Duration::from_secs(60)).await;
    training.read_to_end(Duration::from_secs(60)).await;
    let once = |records: &[ReadRecord], labelled: bool| {
        let mut got: BTreeMap<String, usize> = BTreeMap::new();
        for r in records {
            *got.entry(r.key_str()).or_default() += 1;
        }
        let want: BTreeSet<String> = valid_labelled
            .iter()
            .filter(|(_, l)| **l == labelled)
            .map(|(ident, _)| id_of_ident[ident].clone())
            .collect();
        assert_eq!(got.keys().cloned().collect::<BTreeSet<_>>(), want);
        assert!(
            got.values().all(|n| *n == 1),
            "a record was forwarded twice"
        );
    };
    once(&inference.records, false);
    once(&training.records, true);
    for r in &inference.records {
        let req: aifab_core::messages::InferenceRequest = decode(&r.payload).unwrap();
        assert_eq!(req.token_count as usize, req.input_ids.len());
        assert_eq!(
            (req.input_ids[0], *req.input_ids.last().unwrap()),
            (2, 3),
            "[CLS] … [SEP]"
        );
    }

    // ------------------------------------------------------------ every invalid one, once, with its reason
    let mut dlq = TopicReader::new(&t.dlq);
    dlq.read_until(Duration::from_secs(120), "1,000 dead letters", |r| {
        r.len() >= 1000
    })
    .await;
    dlq.read_to_end(Duration::from_secs(60)).await;
    assert_eq!(
        dlq.records.len(),
        1000,
        "one dead letter per invalid message, nothing else"
    );
    let mut kafka_hits: HashMap<usize, usize> = HashMap::new();
    let mut http_hits: HashMap<usize, usize> = HashMap::new();
    let mut by_kind: BTreeMap<String, usize> = BTreeMap::new();
    for r in &dlq.records {
        let dl: DeadLetter = decode(&r.payload).expect("a valid dead letter");
        assert_eq!(dl.stage, "ingest");
        *by_kind.entry(dl.error_kind.clone()).or_default() += 1;
        let original = base64_decode(&dl.original_base64);
        if let Some(len) = dl.original_len {
            assert_eq!(
                dl.error_kind, "record_too_large",
                "only a record that long is kept cut"
            );
            assert!(
                len > 900_000 && original.len() == 256 * 1024,
                "{len} bytes, {} kept",
                original.len()
            );
        }
        let (expected_kind, expected_reason) = match &dl.source {
            Some(src) => {
                assert_eq!(src.topic, t.raw);
                let (k, key) = kafka_dlq_expect
                    .get(&(src.partition, src.offset))
                    .cloned()
                    .unwrap_or_else(|| {
                        panic!("dead letter for a valid record at {src:?}: {}", dl.reason)
                    });
                *kafka_hits.entry(k).or_default() += 1;
                assert_eq!(
                    dl.key_base64.as_deref().map(base64_decode),
                    key.map(String::into_bytes),
                    "the original key"
                );
                (kafka_expect[k].kind, kafka_expect[k].reason.clone())
            }
            None => {
                let k = http_bad
                    .iter()
                    .position(|b| contains(&original, marker_of(&b.2).as_bytes()))
                    .unwrap_or_else(|| {
                        panic!(
                            "an HTTP dead letter no test request made: {}",
                            String::from_utf8_lossy(&original)
                        )
                    });
                *http_hits.entry(k).or_default() += 1;
                assert_eq!(original, http_bad[k].2.as_bytes(), "the body as sent");
                (http_bad[k].4, http_bad[k].5.clone())
            }
        };
        assert_eq!(dl.error_kind, expected_kind, "{}", dl.reason);
        assert!(
            dl.reason.contains(&expected_reason),
            "reason {:?} lacks {expected_reason:?}",
            dl.reason
        );
    }
    assert_eq!(
        kafka_hits.len(),
        kafka_expect.len(),
        "every invalid Kafka record dead-lettered"
    );
    assert!(kafka_hits.values().all(|n| *n == 1));
    assert_eq!(
        http_hits.len(),
        http_bad.len(),
        "every refused HTTP request dead-lettered"
    );
    assert!(http_hits.values().all(|n| *n == 1));
    eprintln!("dead letters by kind: {by_kind:?}");

    // ------------------------------------------------------------ both services still running
    for (child, addr, name) in [
        (&mut ingest, &ingest_addr, "ingest"),
        (&mut feature, &feature_addr, "feature"),
    ] {
        assert!(child.try_wait().unwrap().is_none(), "{name} exited");
        assert_eq!(
            http_get(addr, "/healthz").await.unwrap().0,
            200,
            "{name} /healthz"
        );
        assert_eq!(
            http_get(addr, "/readyz").await.unwrap().0,
            200,
            "{name} /readyz"
        );
    }
    let (_, metrics) = http_get(&ingest_addr, "/metrics").await.unwrap();
    assert!(
        metrics.contains("aifab_ingest_dead_letters_total"),
        "{metrics}"
    );
    for name in [
        &t.raw,
        &t.features,
        &t.inference,
        &t.training,
        &t.predictions,
        &t.dlq,
    ] {
        delete_topic(name).await;
    }
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

/// The `~kind~n~` marker in a test body.
fn marker_of(body: &str) -> String {
    let start = body.find('~').expect("a marker");
    let rest = &body[start + 1..];
    let a = rest.find('~').unwrap();
    let b = rest[a + 1..].find('~').unwrap();
    body[start..start + 1 + a + 1 + b + 1].to_string()
}

#[test]
fn markers_are_found() {
    assert_eq!(marker_of(r#"{"text":"~nokey~12~"}"#), "~nokey~12~");
    assert_eq!(marker_of(r#"{"text":"~big~3~ 7"}"#), "~big~3~");
}
