//! One record checked against `ingest.raw/v1` and the [`Rules`]: a raw Kafka value, or
//! an item of an HTTP body once [`super::body`] has filled it in.

use aifab_core::messages::{IngestRecord, Message as _};
use aifab_core::schema;
use serde_json::Value;

use super::{kind_of, ErrorKind, Rejection, Rules};

/// Bytes → a JSON value, or why not.
pub(super) fn parse_json(bytes: &[u8], what: &str) -> Result<Value, Rejection> {
    let text = std::str::from_utf8(bytes).map_err(|e| {
        Rejection::new(
            ErrorKind::NotUtf8,
            format!(
                "{what}: not UTF-8: invalid byte at position {}",
                e.valid_up_to()
            ),
        )
    })?;
    serde_json::from_str(text)
        .map_err(|e| Rejection::new(ErrorKind::NotJson, format!("{what}: not JSON: {e}")))
}

/// Check a JSON object against `ingest.raw/v1` and the rules; `name` prefixes field names
/// (`inputs[3].`) for batch items.
pub(super) fn check_record(
    value: Value,
    rules: &Rules,
    name: &str,
) -> Result<IngestRecord, Rejection> {
    let tenant = value
        .get("tenant")
        .and_then(Value::as_str)
        .map(str::to_string);
    let reject = |kind: ErrorKind, reason: String| {
        Err(Rejection::new(kind, reason).with_tenant(tenant.as_deref()))
    };
    match value.get("schema") {
        None if value.is_object() => {
            return reject(
                ErrorKind::MissingSchema,
                format!(
                    "missing field \"{name}schema\": expected \"{}\"",
                    IngestRecord::SCHEMA
                ),
            )
        }
        Some(Value::String(s)) if s == IngestRecord::SCHEMA => {}
        Some(other) => {
            return reject(
                ErrorKind::WrongSchema,
                format!(
                    "field \"{name}schema\": expected \"{}\", found {other}",
                    IngestRecord::SCHEMA
                ),
            )
        }
        None => {}
    }
    // Fast path: most records are valid, and a yes/no check is cheaper than collecting errors.
    let valid = schema::validator(IngestRecord::SCHEMA).is_some_and(|v| v.is_valid(&value));
    if let Err(violations) = if valid {
        Ok(())
    } else {
        schema::validate(IngestRecord::SCHEMA, &value)
    } {
        let kind = kind_of(&violations[0]);
        let text = schema::describe(&violations);
        let text = if name.is_empty() {
            text
        } else {
            text.replace("field \"", &format!("field \"{name}"))
                .replace("message: ", &format!("{}: ", name.trim_end_matches('.')))
        };
        return reject(kind, text);
    }
    let mut rec: IngestRecord = serde_json::from_value(value).map_err(|e| {
        Rejection::new(ErrorKind::InvalidValue, format!("{name}: {e}"))
            .with_tenant(tenant.as_deref())
    })?;
    let chars = rec.text.chars().count();
    if chars > rules.max_text_chars {
        return reject(
            ErrorKind::TextTooLong,
            format!(
                "field \"{name}text\": {chars} characters long, more than the maximum of {}",
                rules.max_text_chars
            ),
        );
    }
    if rec.text.trim().is_empty() {
        return reject(
            ErrorKind::EmptyText,
            format!("field \"{name}text\": only whitespace; expected some text"),
        );
    }
    let task = rec
        .task
        .get_or_insert_with(|| rules.default_task.clone())
        .clone();
    if let (Some(label), Some(labels)) = (&rec.label, rules.labels.get(&task)) {
        if !labels.contains(label) {
            let expected = labels
                .iter()
                .map(|l| format!("\"{l}\""))
                .collect::<Vec<_>>()
                .join(", ");
            return reject(
                ErrorKind::UnknownLabel,
                format!(
                    "field \"{name}label\": \"{label}\" is not a label of task \"{task}\" \
                     (expected one of {expected})"
                ),
            );
        }
    }
    Ok(rec)
}

/// One value from `aifab.ingest.raw`: parsed, checked against the schema and the rules.
/// The caller sets `id` (when absent) and `received_at_ms`.
pub fn raw_record(bytes: &[u8], rules: &Rules) -> Result<IngestRecord, Rejection> {
    if bytes.len() > rules.max_record_bytes {
        return Err(record_too_large("message", bytes.len(), rules));
    }
    let value = parse_json(bytes, "message")?;
    if !value.is_object() {
        let found = match &value {
            Value::Array(_) => "an array",
            Value::String(_) => "a string",
            Value::Number(_) => "a number",
            Value::Bool(_) => "a boolean",
            _ => "null",
        };
        return Err(Rejection::new(
            ErrorKind::WrongType,
            format!(
                "message: expected a JSON object with schema \"{}\", found {found}",
                IngestRecord::SCHEMA
            ),
        ));
    }
    check_record(value, rules, "")
}

pub(super) fn record_too_large(what: &str, len: usize, rules: &Rules) -> Rejection {
    Rejection::new(
        ErrorKind::RecordTooLarge,
        format!(
            "{what}: {len} bytes long, more than the maximum of {} bytes per record",
            rules.max_record_bytes
        ),
    )
}

#[cfg(test)]
mod tests {
    use super::super::testing::{rejects, rules};
    use super::super::{http_body, Route};
    use super::*;

    fn raw(s: &str) -> Result<IngestRecord, Rejection> {
        raw_record(s.as_bytes(), &rules())
    }

    #[test]
    fn valid_raw_records_get_the_default_task() {
        let r = raw(r#"{"schema":"ingest.raw/v1","tenant":"acme","text":"hi there"}"#).unwrap();
        assert_eq!(r.task.as_deref(), Some("default"));
        let r = raw(concat!(
            r#"{"schema":"ingest.raw/v1","tenant":"acme","text":"win","#,
            r#""task":"sms_spam","label":"spam","id":"x"}"#
        ))
        .unwrap();
        assert_eq!(
            (r.label.as_deref(), r.id.as_deref()),
            (Some("spam"), Some("x"))
        );
        // A task with no configured labels takes any label.
        raw(concat!(
            r#"{"schema":"ingest.raw/v1","tenant":"acme","text":"x","#,
            r#""task":"other","label":"whatever"}"#
        ))
        .unwrap();
    }

    #[test]
    fn records_longer_than_the_limit_are_refused_before_parsing() {
        let small = Rules {
            max_record_bytes: 100,
            ..rules()
        };
        let attrs = format!(r#"{{"pad":"{}"}}"#, "p".repeat(100));
        let long = format!(
            r#"{{"schema":"ingest.raw/v1","tenant":"acme","text":"x","attributes":{attrs}}}"#
        );
        let e = rejects(
            raw_record(long.as_bytes(), &small),
            ErrorKind::RecordTooLarge,
            "more than the maximum of 100 bytes",
        );
        assert_eq!(e.status, 413);
        // Not even parsed: invalid bytes over the limit are refused for their length.
        rejects(
            raw_record(&[0xff; 101], &small),
            ErrorKind::RecordTooLarge,
            "101 bytes long",
        );
        raw_record(
            br#"{"schema":"ingest.raw/v1","tenant":"acme","text":"x"}"#,
            &small,
        )
        .unwrap();

        // Over HTTP the limit is per item: a batch of small items may be longer than it.
        let item = r#"{"text":"a short text"}"#;
        let batch = format!(r#"{{"inputs":[{item},{item},{item}]}}"#);
        let small = Rules {
            max_record_bytes: 70,
            ..small
        };
        assert_eq!(
            http_body(batch.as_bytes(), Route::Infer, "acme", &small)
                .unwrap()
                .records
                .len(),
            3
        );
        let big = format!(r#"{{"inputs":[{item},{{"text":"{}"}}]}}"#, "t".repeat(60));
        let e = rejects(
            http_body(big.as_bytes(), Route::Infer, "acme", &small),
            ErrorKind::RecordTooLarge,
            "inputs[1]: ",
        );
        assert_eq!(e.tenant.as_deref(), Some("acme"));
    }

    #[test]
    fn every_kind_of_bad_raw_input_is_named() {
        rejects(
            raw_record(b"\xff\xfe{}", &rules()),
            ErrorKind::NotUtf8,
            "not UTF-8: invalid byte at position 0",
        );
        rejects(raw("{nope"), ErrorKind::NotJson, "not JSON");
        rejects(raw("[1,2]"), ErrorKind::WrongType, "expected a JSON object");
        rejects(
            raw(r#"{"tenant":"acme","text":"x"}"#),
            ErrorKind::MissingSchema,
            "missing field \"schema\"",
        );
        rejects(
            raw(r#"{"schema":"ingest.raw/v2","tenant":"acme","text":"x"}"#),
            ErrorKind::WrongSchema,
            "expected \"ingest.raw/v1\", found \"ingest.raw/v2\"",
        );
        rejects(
            raw(r#"{"schema":"prediction/v1","tenant":"acme","text":"x"}"#),
            ErrorKind::WrongSchema,
            "prediction/v1",
        );
        let e = rejects(
            raw(r#"{"schema":"ingest.raw/v1","text":"x"}"#),
            ErrorKind::MissingField,
            "missing field \"tenant\"",
        );
        assert_eq!(e.status, 400);
        rejects(
            raw(r#"{"schema":"ingest.raw/v1","tenant":"acme","text":"x","deadline_ms":"soon"}"#),
            ErrorKind::WrongType,
            "field \"deadline_ms\": \"soon\" is not of type \"integer\"",
        );
        rejects(
            raw(r#"{"schema":"ingest.raw/v1","tenant":"acme","text":""}"#),
            ErrorKind::EmptyText,
            "field \"text\"",
        );
        rejects(
            raw(r#"{"schema":"ingest.raw/v1","tenant":"acme","text":"   "}"#),
            ErrorKind::EmptyText,
            "only whitespace",
        );
        let long = format!(
            r#"{{"schema":"ingest.raw/v1","tenant":"acme","text":"{}"}}"#,
            "a".repeat(20_001)
        );
        rejects(
            raw(&long),
            ErrorKind::TextTooLong,
            "more than the maximum of 20000",
        );
        rejects(
            raw(r#"{"schema":"ingest.raw/v1","tenant":"acme","text":"x","colour":"red"}"#),
            ErrorKind::UnexpectedField,
            "unexpected field \"colour\"",
        );
        rejects(
            raw(r#"{"schema":"ingest.raw/v1","tenant":"acme corp","text":"x"}"#),
            ErrorKind::InvalidValue,
            "field \"tenant\"",
        );
        let e = rejects(
            raw(concat!(
                r#"{"schema":"ingest.raw/v1","tenant":"acme","text":"x","task":"sms_spam","#,
                r#""label":"spamm"}"#
            )),
            ErrorKind::UnknownLabel,
            concat!(
                r#"field "label": "spamm" is not a label of task "sms_spam" "#,
                r#"(expected one of "ham", "spam")"#
            ),
        );
        assert_eq!(e.tenant.as_deref(), Some("acme"));
    }

    #[test]
    fn a_lower_text_limit_applies() {
        let r = Rules {
            max_text_chars: 5,
            ..rules()
        };
        let e = raw_record(
            br#"{"schema":"ingest.raw/v1","tenant":"acme","text":"abcdef"}"#,
            &r,
        )
        .unwrap_err();
        assert_eq!(e.kind, ErrorKind::TextTooLong);
        assert!(
            e.reason
                .contains("6 characters long, more than the maximum of 5"),
            "{}",
            e.reason
        );
    }
}
