//! Unit tests of the message codec: round trips, decode errors, schema file names.

use std::collections::BTreeMap;

use super::*;

fn request() -> InferenceRequest {
    InferenceRequest {
        schema: tag(),
        id: "r1".into(),
        tenant: "acme".into(),
        task: "sms_spam".into(),
        text: "hello".into(),
        input_ids: vec![101, 7592, 102],
        token_count: 3,
        truncation: Truncation::None,
        received_at_ms: 1,
        deadline_ms: None,
        priority: 0,
        attributes: BTreeMap::new(),
    }
}

#[test]
fn round_trips_and_carries_schema() {
    let bytes = encode(&request());
    let v: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
    assert_eq!(v["schema"], "inference.request/v1");
    assert_eq!(decode::<InferenceRequest>(&bytes).unwrap(), request());
}

#[test]
fn decode_errors_say_what_is_wrong() {
    assert_eq!(
        decode::<InferenceRequest>(b"\xff\xfe").unwrap_err().kind(),
        crate::dead_letter::ErrorKind::NotUtf8
    );
    assert_eq!(
        decode::<InferenceRequest>(b"{nope").unwrap_err().kind(),
        crate::dead_letter::ErrorKind::NotJson
    );
    let wrong = br#"{"schema":"prediction/v1"}"#;
    let err = decode::<InferenceRequest>(wrong).unwrap_err();
    assert!(
        err.to_string()
            .contains("expected \"inference.request/v1\""),
        "{err}"
    );
    let missing = br#"{"schema":"inference.request/v1","id":"x"}"#;
    let err = decode::<InferenceRequest>(missing).unwrap_err();
    assert!(err.to_string().contains("missing field `tenant`"), "{err}");
}

#[test]
fn schema_file_names() {
    assert_eq!(InferenceRequest::schema_file(), "inference.request.v1.json");
    assert_eq!(ALL_SCHEMAS.len(), 16);
}
