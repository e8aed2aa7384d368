//! (b) Rust values of the data-plane messages (Kafka records).

use std::collections::BTreeMap;

use aifab_core::messages::*;
use aifab_core::schema;
use serde_json::Value;

use crate::examples_dir;
use crate::round_trip::{attrs, check_type, T0};

#[test]
fn ingest_record() {
    check_type(
        IngestRecord {
            schema: tag(),
            id: Some("req-0001".into()),
            tenant: "acme".into(),
            text: "WINNER!! You have been selected to receive a prize.".into(),
            task: Some("sms_spam".into()),
            label: Some("spam".into()),
            deadline_ms: Some(2000),
            received_at_ms: Some(T0),
            attributes: attrs(),
        },
        IngestRecord {
            schema: tag(),
            id: None,
            tenant: "acme".into(),
            text: "hi".into(),
            task: None,
            label: None,
            deadline_ms: None,
            received_at_ms: None,
            attributes: BTreeMap::new(),
        },
    );
}

#[test]
fn inference_request() {
    let full = InferenceRequest {
        schema: tag(),
        id: "0193a7a2-5c1e-7b3f-9d2a-1f4e5c6d7a8b".into(),
        tenant: "acme".into(),
        task: "sms_spam".into(),
        text: "hello, are we still on for lunch?".into(),
        input_ids: vec![101, 7592, 1010, 2024, 102],
        token_count: 5,
        truncation: Truncation::Tail,
        received_at_ms: T0,
        deadline_ms: Some(2000),
        priority: 3,
        attributes: attrs(),
    };
    let minimal = InferenceRequest {
        deadline_ms: None,
        priority: 0,
        attributes: BTreeMap::new(),
        truncation: Truncation::None,
        ..full.clone()
    };
    check_type(full, minimal);
}

#[test]
fn training_example() {
    let full = TrainingExample {
        schema: tag(),
        id: "req-7".into(),
        tenant: "acme".into(),
        task: "sms_spam".into(),
        text: "Free entry in 2 a wkly comp".into(),
        label: "spam".into(),
        received_at_ms: T0,
    };
    check_type(full.clone(), full);
}

#[test]
fn prediction() {
    let full = Prediction {
        schema: tag(),
        id: "req-7".into(),
        tenant: "acme".into(),
        task: "sms_spam".into(),
        outcome: Outcome::Ok,
        label: Some("ham".into()),
        scores: [("ham".to_string(), 0.97f32), ("spam".to_string(), 0.03f32)]
            .into_iter()
            .collect(),
        model_version: "sms_spam-20251129-150000".into(),
        arm: Arm::Canary,
        batch_id: Some("worker-1-42".into()),
        batch_size: 16,
        queue_ms: 12.5,
        compute_ms: 8.25,
        received_at_ms: T0,
        produced_at_ms: T0 + 21,
        worker: "inference-worker-0".into(),
    };
    let minimal = Prediction {
        outcome: Outcome::Expired,
        label: None,
        scores: BTreeMap::new(),
        arm: Arm::Production,
        batch_id: None,
        batch_size: 0,
        queue_ms: 2500.0,
        compute_ms: 0.0,
        ..full.clone()
    };
    check_type(full.clone(), minimal);
    // Shadow and cached answers are predictions too.
    let shadow = Prediction {
        arm: Arm::Shadow,
        outcome: Outcome::Cached,
        ..full
    };
    let json: Value = serde_json::from_slice(&encode(&shadow)).unwrap();
    schema::validate(Prediction::SCHEMA, &json).unwrap();
}

#[test]
fn prediction_ok_needs_label_and_scores() {
    let mut json: Value = serde_json::from_str(
        &std::fs::read_to_string(examples_dir().join("prediction.v1.valid.json")).unwrap(),
    )
    .unwrap();
    json.as_object_mut().unwrap().remove("scores");
    let v = schema::validate(Prediction::SCHEMA, &json).unwrap_err();
    assert_eq!(v[0].to_string(), r#"missing field "scores""#);
}

#[test]
fn usage_record() {
    let full = UsageRecord {
        schema: tag(),
        usage_id: "w0:b4711:acme".into(),
        batch_id: "w0:b4711".into(),
        worker: "inference-worker-0".into(),
        tenant: "acme".into(),
        task: "sms_spam".into(),
        model_version: "sms_spam-20251129-150000".into(),
        device_kind: "cuda".into(),
        rows: 12,
        tokens: 384,
        device_seconds: 0.0061,
        idle_seconds: 0.25,
        at_ms: T0,
    };
    let minimal = UsageRecord {
        idle_seconds: 0.0,
        device_kind: "cpu".into(),
        ..full.clone()
    };
    check_type(full, minimal);
}

#[test]
fn dead_letter() {
    use base64::Engine as _;
    let b64 = base64::engine::general_purpose::STANDARD;
    let full = DeadLetter {
        schema: tag(),
        original_base64: b64.encode(b"\xff\xfe not utf-8"),
        original_len: Some(300_000),
        key_base64: Some(b64.encode(b"req-0002")),
        source: Some(SourceRef {
            topic: "aifab.ingest.raw".into(),
            partition: 2,
            offset: 1834,
        }),
        stage: "ingest".into(),
        error_kind: "not_utf8".into(),
        reason: "not UTF-8: invalid byte at position 0".into(),
        tenant: Some("acme".into()),
        at_ms: T0,
    };
    let minimal = DeadLetter {
        original_base64: String::new(),
        original_len: None,
        key_base64: None,
        source: None,
        tenant: None,
        ..full.clone()
    };
    check_type(full, minimal);
}
