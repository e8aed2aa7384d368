//! Pure validation: raw Kafka values and HTTP bodies → accepted [`IngestRecord`]s, or a
//! [`Rejection`] with a machine-readable kind, a reason that names the field, and the
//! HTTP status it maps to. No I/O here: checks that need Redis (unknown tenant, duplicate
//! id, budget) are made by the callers with the kinds defined below.

use std::collections::{BTreeMap, HashMap};

use aifab_core::messages::{IngestRecord, Message as _};
use aifab_core::schema::{self, SchemaViolation};
use serde_json::{Map, Value};

pub use aifab_core::dead_letter::ErrorKind;

/// The `error` of an HTTP error body: a refusal (whose kind a dead letter also carries) or
/// one of the API's own answers that refuse nothing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Code {
    Refused(ErrorKind),
    /// Ingest failed inside; the client retries with the same Idempotency-Key.
    Internal,
    /// Kafka or Redis cannot take the request now (503).
    Unavailable,
    /// An Idempotency-Key sent again with a different body (422).
    IdempotencyKeyReused,
    /// The body could not be read off the connection.
    BadBody,
    /// No such request for this tenant (404).
    NotFound,
}

impl Code {
    pub fn as_str(self) -> &'static str {
        match self {
            Code::Refused(k) => k.as_str(),
            Code::Internal => "internal",
            Code::Unavailable => "unavailable",
            Code::IdempotencyKeyReused => "idempotency_key_reused",
            Code::BadBody => "bad_body",
            Code::NotFound => "not_found",
        }
    }
}

impl From<ErrorKind> for Code {
    fn from(k: ErrorKind) -> Code {
        Code::Refused(k)
    }
}

/// Why an input was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejection {
    pub kind: ErrorKind,
    /// Human-readable: names the field, says what was expected and what was found.
    pub reason: String,
    /// The HTTP status this maps to.
    pub status: u16,
    /// The tenant, when it is known.
    pub tenant: Option<String>,
}

impl Rejection {
    pub fn new(kind: ErrorKind, reason: impl Into<String>) -> Self {
        Rejection {
            kind,
            reason: reason.into(),
            status: status_of(kind),
            tenant: None,
        }
    }

    pub fn with_tenant(mut self, tenant: Option<&str>) -> Self {
        self.tenant = tenant.map(str::to_string);
        self
    }
}

/// The HTTP status of each kind.
pub fn status_of(kind: ErrorKind) -> u16 {
    match kind {
        ErrorKind::MissingApiKey | ErrorKind::BadApiKey => 401,
        ErrorKind::ForbiddenTenant | ErrorKind::TenantDisabled => 403,
        ErrorKind::DuplicateId => 409,
        ErrorKind::BatchTooLarge | ErrorKind::BodyTooLarge | ErrorKind::RecordTooLarge => 413,
        ErrorKind::RateLimited | ErrorKind::BudgetExceeded => 429,
        _ => 400,
    }
}

/// The kind of one schema violation.
pub fn kind_of(v: &SchemaViolation) -> ErrorKind {
    let m = v.message.as_str();
    if v.path == "/schema" {
        ErrorKind::WrongSchema
    } else if m.starts_with("missing field") {
        ErrorKind::MissingField
    } else if m.starts_with("unexpected field") {
        ErrorKind::UnexpectedField
    } else if m.contains(" is not of type ") {
        ErrorKind::WrongType
    } else if v.path == "/text" && m.contains("is shorter than") {
        ErrorKind::EmptyText
    } else if v.path == "/text" && m.contains("more than the maximum") {
        ErrorKind::TextTooLong
    } else {
        ErrorKind::InvalidValue
    }
}

/// What is accepted beyond the schema.
#[derive(Debug, Clone)]
pub struct Rules {
    /// Task used when a record names none.
    pub default_task: String,
    /// Labels per task; a task not listed accepts any label.
    pub labels: BTreeMap<String, Vec<String>>,
    /// Longest text, in characters (at most the schema's 20000).
    pub max_text_chars: usize,
    /// Most items in one HTTP batch.
    pub max_batch_items: usize,
    /// Longest record (a raw Kafka value, or one HTTP item as JSON), in bytes: what ingest
    /// and feature derive from it must still fit in one Kafka record.
    pub max_record_bytes: usize,
}

/// The most `max_record_bytes` may be: feature's inference request repeats the record
/// and adds its token ids, and must stay under Kafka's 1 MB default record size.
pub const MAX_RECORD_BYTES_LIMIT: usize = 512 * 1024;

impl Default for Rules {
    fn default() -> Self {
        Rules {
            default_task: "default".into(),
            labels: BTreeMap::new(),
            max_text_chars: 20_000,
            max_batch_items: 256,
            max_record_bytes: 256 * 1024,
        }
    }
}

/// Parse `--task-labels`: `task=label,label;task=label,...`.
pub fn parse_task_labels(s: &str) -> Result<BTreeMap<String, Vec<String>>, String> {
    let mut out = BTreeMap::new();
    for part in s.split(';').map(str::trim).filter(|p| !p.is_empty()) {
        let (task, labels) = part
            .split_once('=')
            .ok_or_else(|| format!("task labels: expected `task=label,label`, found {part:?}"))?;
        let labels: Vec<String> = labels
            .split(',')
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .map(str::to_string)
            .collect();
        if task.trim().is_empty() || labels.is_empty() {
            return Err(format!(
                "task labels: expected `task=label,label`, found {part:?}"
            ));
        }
        out.insert(task.trim().to_string(), labels);
    }
    Ok(out)
}

/// Bytes → a JSON value, or why not.
fn parse_json(bytes: &[u8], what: &str) -> Result<Value, Rejection> {
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
fn check_record(value: Value, rules: &Rules, name: &str) -> Result<IngestRecord, Rejection> {
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
                format!("field \"{name}label\": \"{label}\" is not a label of task \"{task}\" (expected one of {expected})"),
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

fn record_too_large(what: &str, len: usize, rules: &Rules) -> Rejection {
    Rejection::new(
        ErrorKind::RecordTooLarge,
        format!(
            "{what}: {len} bytes long, more than the maximum of {} bytes per record",
            rules.max_record_bytes
        ),
    )
}

/// The two POST routes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route {
    /// `POST /v1/infer`: unlabelled texts; a batch is `{"inputs": [...]}`.
    Infer,
    /// `POST /v1/examples`: labelled texts; a batch is `{"examples": [...]}`.
    Examples,
}

impl Route {
    pub fn name(self) -> &'static str {
        match self {
            Route::Infer => "infer",
            Route::Examples => "examples",
        }
    }
    pub fn batch_field(self) -> &'static str {
        match self {
            Route::Infer => "inputs",
            Route::Examples => "examples",
        }
    }
}

/// A parsed HTTP body: the records, and whether it was a batch.
#[derive(Debug, Clone, PartialEq)]
pub struct Parsed {
    pub records: Vec<IngestRecord>,
    pub batch: bool,
}

/// An HTTP body for `route`, sent with an API key of `tenant`. Items may leave out
/// `schema` and `tenant` (filled in); a `tenant` other than the key's is refused (403).
/// Ids are not assigned here.
pub fn http_body(
    bytes: &[u8],
    route: Route,
    tenant: &str,
    rules: &Rules,
) -> Result<Parsed, Rejection> {
    let with_tenant = |r: Rejection| r.with_tenant(Some(tenant));
    let value = parse_json(bytes, "body").map_err(with_tenant)?;
    let Value::Object(mut obj) = value else {
        return Err(with_tenant(Rejection::new(
            ErrorKind::WrongType,
            format!(
                "body: expected a JSON object (one item, or {{\"{}\": [...]}} for a batch)",
                route.batch_field()
            ),
        )));
    };
    let field = route.batch_field();
    let (items, batch): (Vec<(String, Value)>, bool) = match obj.remove(field) {
        None => (vec![(String::new(), Value::Object(obj))], false),
        Some(list) => {
            if let Some(extra) = obj.keys().next() {
                return Err(with_tenant(Rejection::new(
                    ErrorKind::UnexpectedField,
                    format!("unexpected field \"{extra}\": a batch body has only \"{field}\""),
                )));
            }
            let Value::Array(list) = list else {
                return Err(with_tenant(Rejection::new(
                    ErrorKind::WrongType,
                    format!("field \"{field}\": expected an array of items"),
                )));
            };
            if list.is_empty() {
                return Err(with_tenant(Rejection::new(
                    ErrorKind::InvalidValue,
                    format!("field \"{field}\": [] has fewer than 1 item"),
                )));
            }
            if list.len() > rules.max_batch_items {
                return Err(with_tenant(Rejection::new(
                    ErrorKind::BatchTooLarge,
                    format!(
                        "field \"{field}\": {} items, more than the maximum of {} per request",
                        list.len(),
                        rules.max_batch_items
                    ),
                )));
            }
            (
                list.into_iter()
                    .enumerate()
                    .map(|(i, v)| (format!("{field}[{i}]."), v))
                    .collect(),
                true,
            )
        }
    };
    let mut records = Vec::with_capacity(items.len());
    let mut seen_ids: HashMap<String, String> = HashMap::new();
    for (name, item) in items {
        let Value::Object(mut item) = item else {
            return Err(with_tenant(Rejection::new(
                ErrorKind::WrongType,
                format!(
                    "field \"{}\": expected an object",
                    name.trim_end_matches('.')
                ),
            )));
        };
        fill_item(&mut item, route, tenant, &name)?;
        // Only a body longer than a record can hold an item that is.
        if bytes.len() > rules.max_record_bytes {
            let len = serde_json::to_vec(&item)
                .map(|v| v.len())
                .unwrap_or(usize::MAX);
            if len > rules.max_record_bytes {
                let what = if name.is_empty() {
                    "body".to_string()
                } else {
                    name.trim_end_matches('.').to_string()
                };
                return Err(with_tenant(record_too_large(&what, len, rules)));
            }
        }
        let rec = check_record(Value::Object(item), rules, &name).map_err(with_tenant)?;
        if let Some(id) = &rec.id {
            if let Some(first) = seen_ids.insert(id.clone(), name.clone()) {
                return Err(with_tenant(Rejection::new(
                    ErrorKind::DuplicateId,
                    format!("field \"{name}id\": \"{id}\" repeats {first}id of the same request"),
                )));
            }
        }
        records.push(rec);
    }
    Ok(Parsed { records, batch })
}

/// Fill in `schema` and `tenant`; check the route's label rule.
fn fill_item(
    item: &mut Map<String, Value>,
    route: Route,
    tenant: &str,
    name: &str,
) -> Result<(), Rejection> {
    item.entry("schema")
        .or_insert_with(|| Value::String(IngestRecord::SCHEMA.into()));
    match item.get("tenant") {
        None => {
            item.insert("tenant".into(), Value::String(tenant.into()));
        }
        Some(Value::String(t)) if t == tenant => {}
        Some(other) => {
            return Err(Rejection::new(
                ErrorKind::ForbiddenTenant,
                format!("field \"{name}tenant\": this API key belongs to tenant \"{tenant}\", found {other}"),
            )
            .with_tenant(Some(tenant)))
        }
    }
    match (route, item.contains_key("label")) {
        (Route::Infer, true) => Err(Rejection::new(
            ErrorKind::UnexpectedField,
            format!("unexpected field \"{name}label\": /v1/infer takes unlabelled texts; send labelled ones to /v1/examples"),
        )
        .with_tenant(Some(tenant))),
        (Route::Examples, false) => Err(Rejection::new(
            ErrorKind::MissingField,
            format!("missing field \"{name}label\": /v1/examples takes labelled texts; send unlabelled ones to /v1/infer"),
        )
        .with_tenant(Some(tenant))),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rules() -> Rules {
        Rules {
            labels: [(
                "sms_spam".to_string(),
                vec!["ham".to_string(), "spam".to_string()],
            )]
            .into(),
            max_batch_items: 3,
            ..Rules::default()
        }
    }

    fn raw(s: &str) -> Result<IngestRecord, Rejection> {
        raw_record(s.as_bytes(), &rules())
    }

    #[track_caller]
    fn rejects(
        r: Result<impl std::fmt::Debug, Rejection>,
        kind: ErrorKind,
        reason_has: &str,
    ) -> Rejection {
        let e = r.expect_err("should be rejected");
        assert_eq!(e.kind, kind, "{e:?}");
        assert!(
            e.reason.contains(reason_has),
            "reason {:?} lacks {reason_has:?}",
            e.reason
        );
        e
    }

    #[test]
    fn valid_raw_records_get_the_default_task() {
        let r = raw(r#"{"schema":"ingest.raw/v1","tenant":"acme","text":"hi there"}"#).unwrap();
        assert_eq!(r.task.as_deref(), Some("default"));
        let r = raw(r#"{"schema":"ingest.raw/v1","tenant":"acme","text":"win","task":"sms_spam","label":"spam","id":"x"}"#)
            .unwrap();
        assert_eq!(
            (r.label.as_deref(), r.id.as_deref()),
            (Some("spam"), Some("x"))
        );
        // A task with no configured labels takes any label.
        raw(r#"{"schema":"ingest.raw/v1","tenant":"acme","text":"x","task":"other","label":"whatever"}"#).unwrap();
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
            raw(
                r#"{"schema":"ingest.raw/v1","tenant":"acme","text":"x","task":"sms_spam","label":"spamm"}"#,
            ),
            ErrorKind::UnknownLabel,
            r#"field "label": "spamm" is not a label of task "sms_spam" (expected one of "ham", "spam")"#,
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

    #[test]
    fn http_single_and_batch_bodies() {
        let p = http_body(
            br#"{"text":"hello","task":"sms_spam"}"#,
            Route::Infer,
            "acme",
            &rules(),
        )
        .unwrap();
        assert!(!p.batch);
        assert_eq!(p.records[0].tenant, "acme");
        let p = http_body(
            br#"{"inputs":[{"text":"a"},{"text":"b","id":"i2","tenant":"acme"}]}"#,
            Route::Infer,
            "acme",
            &rules(),
        )
        .unwrap();
        assert!(p.batch);
        assert_eq!(p.records.len(), 2);
        let p = http_body(
            br#"{"examples":[{"text":"a","label":"ham","task":"sms_spam"}]}"#,
            Route::Examples,
            "acme",
            &rules(),
        )
        .unwrap();
        assert_eq!(p.records[0].label.as_deref(), Some("ham"));
    }

    #[test]
    fn http_errors_name_the_field_and_map_to_statuses() {
        let r = rules();
        let e = rejects(
            http_body(
                br#"{"inputs":[{"text":"a"},{"txt":"b"}]}"#,
                Route::Infer,
                "acme",
                &r,
            ),
            ErrorKind::MissingField,
            "missing field \"inputs[1].text\"",
        );
        assert_eq!((e.status, e.tenant.as_deref()), (400, Some("acme")));
        rejects(
            http_body(
                br#"{"inputs":[{"text":"a","deadline_ms":-1}]}"#,
                Route::Infer,
                "acme",
                &r,
            ),
            ErrorKind::InvalidValue,
            "field \"inputs[0].deadline_ms\"",
        );
        let e = rejects(
            http_body(br#"{"text":"a","tenant":"beta"}"#, Route::Infer, "acme", &r),
            ErrorKind::ForbiddenTenant,
            "belongs to tenant \"acme\", found \"beta\"",
        );
        assert_eq!(e.status, 403);
        let e = rejects(
            http_body(
                br#"{"inputs":[{"text":"a"},{"text":"b"},{"text":"c"},{"text":"d"}]}"#,
                Route::Infer,
                "acme",
                &r,
            ),
            ErrorKind::BatchTooLarge,
            "4 items, more than the maximum of 3",
        );
        assert_eq!(e.status, 413);
        rejects(
            http_body(br#"{"inputs":[]}"#, Route::Infer, "acme", &r),
            ErrorKind::InvalidValue,
            "fewer than 1 item",
        );
        rejects(
            http_body(br#"{"inputs":{}}"#, Route::Infer, "acme", &r),
            ErrorKind::WrongType,
            "expected an array",
        );
        rejects(
            http_body(br#"{"inputs":[1]}"#, Route::Infer, "acme", &r),
            ErrorKind::WrongType,
            "field \"inputs[0]\"",
        );
        rejects(
            http_body(br#"{"inputs":[],"x":1}"#, Route::Infer, "acme", &r),
            ErrorKind::UnexpectedField,
            "\"x\"",
        );
        rejects(
            http_body(br#"{"text":"a","label":"ham"}"#, Route::Infer, "acme", &r),
            ErrorKind::UnexpectedField,
            "label",
        );
        rejects(
            http_body(br#"{"text":"a"}"#, Route::Examples, "acme", &r),
            ErrorKind::MissingField,
            "missing field \"label\"",
        );
        rejects(
            http_body(
                br#"{"examples":[{"text":"a","label":"nope","task":"sms_spam"}]}"#,
                Route::Examples,
                "acme",
                &r,
            ),
            ErrorKind::UnknownLabel,
            "field \"examples[0].label\"",
        );
        let e = rejects(
            http_body(
                br#"{"inputs":[{"text":"a","id":"x"},{"text":"b","id":"x"}]}"#,
                Route::Infer,
                "acme",
                &r,
            ),
            ErrorKind::DuplicateId,
            "field \"inputs[1].id\": \"x\" repeats inputs[0].id",
        );
        assert_eq!(e.status, 409);
        rejects(
            http_body(b"[1]", Route::Infer, "acme", &r),
            ErrorKind::WrongType,
            "expected a JSON object",
        );
        rejects(
            http_body(b"\xc3\x28", Route::Infer, "acme", &r),
            ErrorKind::NotUtf8,
            "body: not UTF-8",
        );
        rejects(
            http_body(b"{", Route::Infer, "acme", &r),
            ErrorKind::NotJson,
            "body: not JSON",
        );
        rejects(
            http_body(
                br#"{"schema":"ingest.raw/v9","text":"a"}"#,
                Route::Infer,
                "acme",
                &r,
            ),
            ErrorKind::WrongSchema,
            "ingest.raw/v9",
        );
    }

    #[test]
    fn task_labels_flag() {
        let m = parse_task_labels("sms_spam=ham,spam; topic = a , b ,c").unwrap();
        assert_eq!(m["sms_spam"], ["ham", "spam"]);
        assert_eq!(m["topic"], ["a", "b", "c"]);
        assert!(parse_task_labels("").unwrap().is_empty());
        assert!(parse_task_labels("nolabels").is_err());
        assert!(parse_task_labels("t=").is_err());
    }

    #[test]
    fn statuses() {
        assert_eq!(status_of(ErrorKind::BadApiKey), 401);
        assert_eq!(status_of(ErrorKind::TenantDisabled), 403);
        assert_eq!(status_of(ErrorKind::BudgetExceeded), 429);
        assert_eq!(status_of(ErrorKind::NotJson), 400);
    }
}
