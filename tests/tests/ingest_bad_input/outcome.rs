//! What must come out: every valid message forwarded exactly once (to the features
//! topic, then to inference requests or training examples), every invalid one
//! dead-lettered exactly once with its kind and reason.

use super::*;

/// Each valid message reaches `features.in` once, keyed by id, with its traceparent;
/// then inference requests (unlabelled) or training examples (labelled), once each.
pub(crate) async fn every_valid_one_forwarded_once(t: &Topics, sent: &Sent) {
    let valid_labelled = &sent.valid_labelled;
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
}

/// Refusals for a missing or unknown API key: counted, dead-lettered only as a sample.
pub(crate) fn unauthenticated(kind: &str) -> bool {
    matches!(kind, "missing_api_key" | "bad_api_key")
}

/// Each invalid message is in the DLQ once, with its kind and a reason naming the field:
/// Kafka ones with their source partition, offset and key, HTTP ones with the body as sent.
/// Unauthenticated requests are the exception: their bodies are never read, and ingest
/// (sampling one per kind per hour here) dead-letters one of each kind, without a body.
pub(crate) async fn every_invalid_one_dead_lettered_once(t: &Topics, sent: &Sent) {
    let (kafka_expect, kafka_dlq_expect, http_bad) =
        (&sent.kafka_expect, &sent.kafka_dlq_expect, &sent.http_bad);
    let strangers = http_bad.iter().filter(|b| unauthenticated(b.kind)).count();
    let expected = kafka_expect.len() + http_bad.len() - strangers + 2;
    let mut dlq = TopicReader::new(&t.dlq);
    dlq.read_until(Duration::from_secs(120), "the dead letters", |r| {
        r.len() >= expected
    })
    .await;
    dlq.read_to_end(Duration::from_secs(60)).await;
    assert_eq!(
        dlq.records.len(),
        expected,
        "one dead letter per invalid message and per kind of stranger, nothing else"
    );
    let mut stranger_kinds: BTreeMap<String, usize> = BTreeMap::new();
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
            None if unauthenticated(&dl.error_kind) => {
                assert!(original.is_empty(), "an unauthenticated body is never read");
                assert!(dl.reason.contains("body not read"), "{}", dl.reason);
                *stranger_kinds.entry(dl.error_kind.clone()).or_default() += 1;
                continue;
            }
            None => {
                let k = http_bad
                    .iter()
                    .position(|b| contains(&original, marker_of(&b.body).as_bytes()))
                    .unwrap_or_else(|| {
                        panic!(
                            "an HTTP dead letter no test request made: {}",
                            String::from_utf8_lossy(&original)
                        )
                    });
                *http_hits.entry(k).or_default() += 1;
                assert_eq!(original, http_bad[k].body.as_bytes(), "the body as sent");
                (http_bad[k].kind, http_bad[k].reason.clone())
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
        http_bad.len() - strangers,
        "every refused authenticated HTTP request dead-lettered"
    );
    assert_eq!(
        stranger_kinds,
        [
            ("bad_api_key".to_string(), 1),
            ("missing_api_key".to_string(), 1)
        ]
        .into(),
        "one sampled dead letter per kind of stranger"
    );
    assert!(http_hits.values().all(|n| *n == 1));
    eprintln!("dead letters by kind: {by_kind:?}");
}
