//! The message contract: `schemas/*.json` (JSON Schema, Draft 2020-12) and the typed
//! messages in `aifab_core::messages` say the same thing.
//!
//! - every message has a schema file that compiles, carries its name as `schema` const and
//!   is the file embedded in `aifab_core::schema`;
//! - the schema's properties and `required` list are exactly the Rust type's fields and
//!   non-optional fields;
//! - what the Rust types serialize validates, and decodes back to an equal value;
//! - every `*.valid.json` example validates and decodes into its Rust type;
//! - every `*.invalid.<problem>-<field>.json` example fails, and the reason names the field;
//! - every file under `schemas/` is accounted for.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Debug;
use std::path::{Path, PathBuf};

use aifab_core::messages::{self, *};
use aifab_core::schema;
use aifab_core::topics;
use serde_json::Value;

const T0: i64 = 1_764_428_400_000;

fn schemas_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../schemas")
}

fn examples_dir() -> PathBuf {
    schemas_dir().join("examples")
}

fn read_json(path: &Path) -> Value {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: not JSON: {e}", path.display()))
}

fn reasons(violations: &[schema::SchemaViolation]) -> String {
    violations
        .iter()
        .map(|v| format!("\n  - {v}   (at \"{}\")", v.path))
        .collect()
}

// ------------------------------------------------------------------ (a) schema files

#[test]
fn every_message_has_a_compiling_schema_file_tagged_with_its_name() {
    let embedded: BTreeSet<_> = schema::all_schema_names().collect();
    let declared: BTreeSet<_> = messages::ALL_SCHEMAS.iter().copied().collect();
    assert_eq!(
        embedded, declared,
        "schema.rs embeds a different set than messages::ALL_SCHEMAS"
    );
    assert_eq!(
        declared.len(),
        messages::ALL_SCHEMAS.len(),
        "duplicate in ALL_SCHEMAS"
    );

    for name in messages::ALL_SCHEMAS {
        let file = schemas_dir().join(schema_file_for(name));
        assert!(file.is_file(), "{name}: no schema file {}", file.display());
        let text = std::fs::read_to_string(&file).unwrap();
        assert_eq!(
            schema::schema_json(name),
            Some(text.as_str()),
            "{name}: embedded schema differs from {}",
            file.display()
        );
        let s: Value =
            serde_json::from_str(&text).unwrap_or_else(|e| panic!("{name}: not JSON: {e}"));

        // A valid Draft 2020-12 schema that compiles.
        if let Err(e) = jsonschema::draft202012::meta::validate(&s) {
            panic!(
                "{name}: not a valid Draft 2020-12 schema: {e} at {}",
                e.instance_path()
            );
        }
        schema::compile(name, &text).unwrap();
        assert!(schema::validator(name).is_some());

        // The header every file carries.
        assert_eq!(
            s["$schema"], "https://json-schema.org/draft/2020-12/schema",
            "{name}: $schema"
        );
        assert_eq!(
            s["$id"],
            format!("https://aifab.dev/schemas/{}", schema_file_for(name)),
            "{name}: $id"
        );
        for key in ["title", "description"] {
            assert!(
                s[key].as_str().is_some_and(|t| !t.is_empty()),
                "{name}: no {key}"
            );
        }
        assert_eq!(s["type"], "object", "{name}: type");
        assert_eq!(
            s["additionalProperties"], false,
            "{name}: Rust types deny unknown fields"
        );
        assert_eq!(
            s["properties"]["schema"]["const"], *name,
            "{name}: `schema` const"
        );
        let required = s["required"]
            .as_array()
            .unwrap_or_else(|| panic!("{name}: no required"));
        assert!(
            required.contains(&Value::from("schema")),
            "{name}: `schema` not required"
        );

        // Every property (and every property of nested objects) says what it is.
        assert_described(name, "", &s);

        // Self-contained: an external producer needs this one file.
        let mut refs = Vec::new();
        collect_refs(&s, &mut refs);
        for r in refs {
            assert!(r.starts_with("#/"), "{name}: $ref {r:?} leaves the file");
        }
    }
}

fn assert_described(name: &str, at: &str, node: &Value) {
    if let Some(props) = node.get("properties").and_then(Value::as_object) {
        for (key, prop) in props {
            let here = format!("{at}/{key}");
            let described = prop
                .get("description")
                .and_then(Value::as_str)
                .is_some_and(|d| !d.is_empty());
            // `if`/`then` fragments restate constraints of already described properties.
            if !at.ends_with("/if") && !at.ends_with("/then") {
                assert!(described, "{name}: property {here} has no description");
            }
        }
    }
    if let Some(obj) = node.as_object() {
        for (key, child) in obj {
            if key != "properties" && (child.is_object()) {
                assert_described(name, &format!("{at}/{key}"), child);
            }
        }
    }
}

fn collect_refs(node: &Value, out: &mut Vec<String>) {
    match node {
        Value::Object(map) => {
            for (k, v) in map {
                match (k.as_str(), v) {
                    ("$ref", Value::String(r)) => out.push(r.clone()),
                    _ => collect_refs(v, out),
                }
            }
        }
        Value::Array(items) => items.iter().for_each(|v| collect_refs(v, out)),
        _ => {}
    }
}

// ------------------------------------------------------------------ (b) Rust values

/// Serialize, validate, decode back; and check the schema's field lists against the type.
fn check_type<T: Message + PartialEq + Debug>(full: T, minimal: T) {
    let name = T::SCHEMA;
    for (which, value) in [("full", &full), ("minimal", &minimal)] {
        let bytes = encode(value);
        let json: Value = serde_json::from_slice(&bytes).unwrap();
        if let Err(v) = schema::validate(name, &json) {
            panic!(
                "{name} ({which}): what the Rust type serializes breaks the schema:{}\n{json:#}",
                reasons(&v)
            );
        }
        let back: T =
            decode(&bytes).unwrap_or_else(|e| panic!("{name} ({which}): does not decode: {e}"));
        assert_eq!(
            &back, value,
            "{name} ({which}): round trip changed the value"
        );
    }

    let s: Value = serde_json::from_str(schema::schema_json(name).unwrap()).unwrap();

    // The schema's properties are exactly the fields the full value serializes.
    let full_json: Value = serde_json::from_slice(&encode(&full)).unwrap();
    let fields: BTreeSet<String> = full_json.as_object().unwrap().keys().cloned().collect();
    let props: BTreeSet<String> = s["properties"]
        .as_object()
        .unwrap()
        .keys()
        .cloned()
        .collect();
    assert_eq!(
        props, fields,
        "{name}: schema properties vs Rust fields (fill every optional field in the full value)"
    );

    // `required` is exactly the fields the Rust type cannot do without.
    let minimal_json: Value = serde_json::from_slice(&encode(&minimal)).unwrap();
    let mut rust_required = BTreeSet::new();
    for key in minimal_json.as_object().unwrap().keys() {
        let mut without = minimal_json.clone();
        without.as_object_mut().unwrap().remove(key);
        if decode::<T>(&serde_json::to_vec(&without).unwrap()).is_err() {
            rust_required.insert(key.clone());
        }
    }
    let schema_required: BTreeSet<String> = s["required"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap().to_owned())
        .collect();
    assert_eq!(
        schema_required, rust_required,
        "{name}: schema `required` vs the Rust type's non-optional fields"
    );

    // Nested objects follow the same rule where the type has them.
    for (key, sub) in full_json.as_object().unwrap() {
        check_nested(name, key, sub, &s);
    }
}

/// For a nested object (or array of objects) check its schema's properties match.
fn check_nested(name: &str, key: &str, value: &Value, root: &Value) {
    let mut prop = &root["properties"][key];
    if let Some(r) = prop.get("$ref").and_then(Value::as_str) {
        prop = root.pointer(r.trim_start_matches('#')).unwrap();
    }
    let (obj, sub_schema) = match value {
        Value::Array(items) if !items.is_empty() && items[0].is_object() => {
            let mut items_schema = &prop["items"];
            if let Some(r) = items_schema.get("$ref").and_then(Value::as_str) {
                items_schema = root.pointer(r.trim_start_matches('#')).unwrap();
            }
            (&items[0], items_schema)
        }
        Value::Object(_) => (value, prop),
        _ => return,
    };
    // Maps (attributes, scores, metrics) have no fixed properties.
    let Some(props) = sub_schema.get("properties").and_then(Value::as_object) else {
        return;
    };
    let fields: BTreeSet<&String> = obj.as_object().unwrap().keys().collect();
    let props: BTreeSet<&String> = props.keys().collect();
    assert_eq!(
        props, fields,
        "{name}: schema of {key:?} vs the Rust type's fields"
    );
    assert_eq!(
        sub_schema["additionalProperties"], false,
        "{name}: {key:?} must deny unknown fields"
    );
}

fn attrs() -> BTreeMap<String, String> {
    [("channel", "sms"), ("region", "eu-west")]
        .into_iter()
        .map(|(k, v)| (k.into(), v.into()))
        .collect()
}

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

#[test]
fn model_event() {
    let full = ModelEvent {
        schema: tag(),
        kind: ModelEventKind::RolledBack,
        task: "sms_spam".into(),
        version: "sms_spam-20251129-150000".into(),
        artifact_uri: "file:///var/lib/aifab/models/sms_spam/sms_spam-20251129-150000".into(),
        alias: Some("production".into()),
        metrics: [
            ("accuracy".to_string(), 0.981),
            ("macro_f1".to_string(), 0.957),
        ]
        .into_iter()
        .collect(),
        at_ms: T0,
    };
    let minimal = ModelEvent {
        kind: ModelEventKind::Published,
        alias: None,
        metrics: BTreeMap::new(),
        ..full.clone()
    };
    check_type(full, minimal);
}

#[test]
fn lag_reading() {
    let full = LagReading {
        schema: tag(),
        group: "aifab-inference-worker".into(),
        topic: "aifab.inference.requests".into(),
        partitions: vec![
            PartitionLag {
                partition: 0,
                committed: Some(10_400),
                high_watermark: 10_520,
                lag: 120,
            },
            PartitionLag {
                partition: 1,
                committed: None,
                high_watermark: 15,
                lag: 15,
            },
        ],
        total_lag: 135,
        lag_rate_per_s: -12.5,
        at_ms: T0,
    };
    let minimal = LagReading {
        partitions: vec![],
        total_lag: 0,
        lag_rate_per_s: 0.0,
        ..full.clone()
    };
    check_type(full, minimal);
}

#[test]
fn alert() {
    let full = Alert {
        schema: tag(),
        rule: "p99_latency".into(),
        state: AlertState::Firing,
        severity: Severity::Critical,
        value: 812.0,
        threshold: 500.0,
        message: "p99 latency 812 ms is above 500 ms".into(),
        at_ms: T0,
    };
    let minimal = Alert {
        state: AlertState::Resolved,
        severity: Severity::Info,
        value: 120.0,
        ..full.clone()
    };
    check_type(full, minimal);
}

#[test]
fn budget_event() {
    let full = BudgetEvent {
        schema: tag(),
        kind: BudgetEventKind::Exceeded,
        tenant: "acme".into(),
        period: "2025-11-29".into(),
        budget: 50.0,
        spent: 50.01,
        burn_rate_per_hour: 3.75,
        currency: "USD".into(),
        at_ms: T0,
    };
    let minimal = BudgetEvent {
        kind: BudgetEventKind::Warning,
        period: "2025-11".into(),
        ..full.clone()
    };
    check_type(full, minimal);
}

#[test]
fn budget_set() {
    let full = BudgetSet {
        schema: tag(),
        tenant: "acme".into(),
        period: BudgetPeriod::Day,
        amount: 50.0,
        currency: "EUR".into(),
        at_ms: T0,
    };
    let minimal = BudgetSet {
        period: BudgetPeriod::Month,
        amount: 0.0,
        ..full.clone()
    };
    check_type(full, minimal);
}

#[test]
fn scale_decision() {
    let full = ScaleDecision {
        schema: tag(),
        service: "inference-worker".into(),
        current_replicas: 2,
        desired_replicas: 4,
        reason: "lag".into(),
        detail: "lag 12000 records growing 150/s; 4 replicas drain it in 60 s".into(),
        inputs: ScaleInputs {
            total_lag: 12_000,
            lag_rate_per_s: 150.0,
            partitions: 8,
            burn_rate_per_hour: Some(3.75),
            remaining_budget: Some(-1.5),
        },
        at_ms: T0,
    };
    let minimal = ScaleDecision {
        reason: "cooldown".into(),
        inputs: ScaleInputs {
            total_lag: 0,
            lag_rate_per_s: 0.0,
            partitions: 8,
            burn_rate_per_hour: None,
            remaining_budget: None,
        },
        ..full.clone()
    };
    check_type(full, minimal);
}

#[test]
fn train_request() {
    let full = TrainRequest {
        schema: tag(),
        task: "sms_spam".into(),
        requested_by: Some("ops@acme".into()),
        at_ms: T0,
    };
    let minimal = TrainRequest {
        requested_by: None,
        ..full.clone()
    };
    check_type(full, minimal);
}

#[test]
fn train_progress() {
    let full = TrainProgress {
        schema: tag(),
        task: "sms_spam".into(),
        stage: TrainStage::Training,
        done: 12,
        total: 200,
        validation_loss: Some(0.08),
        detail: Some("v3".into()),
        at_ms: T0,
    };
    let minimal = TrainProgress {
        validation_loss: None,
        detail: None,
        stage: TrainStage::Embedding,
        ..full.clone()
    };
    check_type(full, minimal);
}

#[test]
fn replica_report() {
    let full = ReplicaReport {
        schema: tag(),
        service: "inference-worker".into(),
        replicas: 4,
        actuator: "kubernetes".into(),
        at_ms: T0,
    };
    let minimal = ReplicaReport {
        replicas: 0,
        actuator: "local".into(),
        ..full.clone()
    };
    check_type(full, minimal);
}

// ------------------------------------------------------------------ (c) valid examples

/// Decode `bytes` as the Rust type of `name`, and encode it back as JSON.
fn decode_as(name: &str, bytes: &[u8]) -> Result<Value, String> {
    fn go<T: Message>(bytes: &[u8]) -> Result<Value, String> {
        let msg: T = decode(bytes).map_err(|e| e.to_string())?;
        Ok(serde_json::from_slice(&encode(&msg)).unwrap())
    }
    macro_rules! dispatch {
        ($($ty:ty),* $(,)?) => {
            $(if name == <$ty as Message>::SCHEMA { return go::<$ty>(bytes); })*
        };
    }
    dispatch!(
        IngestRecord,
        InferenceRequest,
        TrainingExample,
        Prediction,
        UsageRecord,
        DeadLetter,
        ModelEvent,
        LagReading,
        Alert,
        BudgetEvent,
        BudgetSet,
        ScaleDecision,
        TrainRequest,
        TrainProgress,
        ReplicaReport,
    );
    panic!("no Rust type for schema {name}: add it to decode_as in tests/contract.rs");
}

#[test]
fn valid_examples_validate_and_decode() {
    for name in messages::ALL_SCHEMAS {
        let file = examples_dir().join(format!("{}.valid.json", schema_base(name)));
        let bytes = std::fs::read(&file).unwrap_or_else(|e| panic!("{}: {e}", file.display()));
        let json: Value = serde_json::from_slice(&bytes)
            .unwrap_or_else(|e| panic!("{}: not JSON: {e}", file.display()));
        if let Err(v) = schema::validate(name, &json) {
            panic!("{}: breaks {name}:{}", file.display(), reasons(&v));
        }
        let back = decode_as(name, &bytes)
            .unwrap_or_else(|e| panic!("{}: does not decode as {name}: {e}", file.display()));
        assert_eq!(back, json, "{}: decode + encode changed it", file.display());
    }
}

// ------------------------------------------------------------------ (d) invalid examples

/// Known problems, longest first: `<problem>-<field-with-dashes>`.
const PROBLEMS: &[&str] = &[
    "wrong-type",
    "extra-field",
    "bad-pattern",
    "bad-base64",
    "bad-enum",
    "too-long",
    "too-short",
    "too-large",
    "too-small",
    "negative",
    "missing",
    "empty",
    "wrong",
];

/// `missing-tenant` → `tenant`, `wrong-type-token-count` → `token_count`.
fn field_of(what: &str) -> Option<String> {
    PROBLEMS.iter().find_map(|p| {
        what.strip_prefix(p)
            .and_then(|rest| rest.strip_prefix('-'))
            .filter(|f| !f.is_empty())
            .map(|f| f.replace('-', "_"))
    })
}

/// `text` contains `word` not as part of a longer identifier.
fn names(text: &str, word: &str) -> bool {
    let is_ident = |c: char| c.is_ascii_alphanumeric() || c == '_';
    text.match_indices(word).any(|(i, _)| {
        let before = text[..i].chars().next_back();
        let after = text[i + word.len()..].chars().next();
        !before.is_some_and(is_ident) && !after.is_some_and(is_ident)
    })
}

#[test]
fn invalid_examples_fail_and_name_the_field() {
    let mut checked = 0;
    for (name, what, file) in examples().into_iter().filter_map(|e| match e {
        Example::Invalid { name, what, file } => Some((name, what, file)),
        _ => None,
    }) {
        let field = field_of(&what).unwrap_or_else(|| {
            panic!(
                "{}: name it `<problem>-<field-with-dashes>` with problem one of {PROBLEMS:?}",
                file.display()
            )
        });
        let json = read_json(&file);
        let violations = match schema::validate(name, &json) {
            Ok(()) => panic!(
                "{}: should break {name} (on field {field:?}) but validates",
                file.display()
            ),
            Err(v) => v,
        };
        for v in &violations {
            let on_field = v.path.split('/').any(|seg| seg == field);
            assert!(
                on_field && names(&v.message, &field),
                "{}: every reason should name the field {field:?} (one thing wrong per example); got:{}",
                file.display(),
                reasons(&violations)
            );
        }
        checked += 1;
    }
    assert!(checked >= 2 * messages::ALL_SCHEMAS.len());
}

// ------------------------------------------------------------------ (e) coverage

enum Example {
    Valid {
        name: &'static str,
    },
    Invalid {
        name: &'static str,
        what: String,
        file: PathBuf,
    },
}

fn schema_base(name: &str) -> String {
    name.replace('/', ".")
}

/// Every file under `schemas/examples/`, classified; panics on one that fits no pattern.
fn examples() -> Vec<Example> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(examples_dir()).expect("schemas/examples/ exists") {
        let path = entry.unwrap().path();
        let file = path.file_name().unwrap().to_str().unwrap().to_owned();
        assert!(
            path.is_file(),
            "schemas/examples/{file}: only example files belong here"
        );
        let found = messages::ALL_SCHEMAS.iter().find_map(|name| {
            let rest = file.strip_prefix(&format!("{}.", schema_base(name)))?;
            if rest == "valid.json" {
                return Some(Example::Valid { name });
            }
            let what = rest.strip_prefix("invalid.")?.strip_suffix(".json")?;
            (!what.is_empty() && !what.contains('.')).then(|| Example::Invalid {
                name,
                what: what.to_owned(),
                file: path.clone(),
            })
        });
        out.push(found.unwrap_or_else(|| {
            panic!(
                "schemas/examples/{file}: orphan; examples are <schema>.valid.json or \
                 <schema>.invalid.<problem>-<field>.json for a schema in messages::ALL_SCHEMAS"
            )
        }));
    }
    out
}

#[test]
fn every_file_under_schemas_is_accounted_for() {
    let schema_files: BTreeSet<String> = messages::ALL_SCHEMAS
        .iter()
        .map(|n| schema_file_for(n))
        .collect();
    for entry in std::fs::read_dir(schemas_dir()).unwrap() {
        let path = entry.unwrap().path();
        let file = path.file_name().unwrap().to_str().unwrap().to_owned();
        let known = schema_files.contains(&file)
            || file == "README.md"
            || (file == "examples" && path.is_dir());
        assert!(
            known,
            "schemas/{file}: orphan; not the schema of any message in messages::ALL_SCHEMAS"
        );
    }

    let examples = examples();
    for name in messages::ALL_SCHEMAS {
        let valid = examples
            .iter()
            .filter(|e| matches!(e, Example::Valid { name: n } if n == name))
            .count();
        let invalid = examples
            .iter()
            .filter(|e| matches!(e, Example::Invalid { name: n, .. } if n == name))
            .count();
        assert_eq!(
            valid,
            1,
            "{name}: needs schemas/examples/{}.valid.json",
            schema_base(name)
        );
        assert!(
            invalid >= 2,
            "{name}: needs at least two schemas/examples/{}.invalid.*.json, has {invalid}",
            schema_base(name)
        );
    }

    // The README's table names every schema file and every topic.
    let readme =
        std::fs::read_to_string(schemas_dir().join("README.md")).expect("schemas/README.md");
    for file in &schema_files {
        assert!(
            readme.contains(file.as_str()),
            "schemas/README.md does not mention {file}"
        );
    }
    for topic in topics::TOPICS {
        assert!(
            readme.contains(topic.name),
            "schemas/README.md does not mention topic {}",
            topic.name
        );
    }
}

/// The JSON records the README shows external producers are valid.
#[test]
fn readme_examples_are_valid() {
    let readme = std::fs::read_to_string(schemas_dir().join("README.md")).unwrap();
    let mut seen = 0;
    for line in readme
        .lines()
        .filter(|l| l.trim_start().starts_with("echo '{"))
    {
        let Some(start) = line.find(r#"{"schema":"#) else {
            continue;
        };
        let Some(end) = line.rfind('}') else { continue };
        let json: Value = serde_json::from_str(&line[start..=end])
            .unwrap_or_else(|e| panic!("README line is not JSON: {e}\n{line}"));
        let name = json["schema"].as_str().unwrap();
        if let Err(v) = schema::validate(name, &json) {
            panic!("README example breaks {name}:{}\n{line}", reasons(&v));
        }
        decode_as(name, &line.as_bytes()[start..=end]).unwrap();
        seen += 1;
    }
    assert!(seen >= 1, "schemas/README.md shows no example record");
}

// ------------------------------------------------------------------ (f) topics

#[test]
fn every_topic_has_its_schema() {
    for topic in topics::TOPICS {
        assert!(
            messages::ALL_SCHEMAS.contains(&topic.schema),
            "topic {}: schema {} is not in messages::ALL_SCHEMAS",
            topic.name,
            topic.schema
        );
        assert!(
            schema::schema_json(topic.schema).is_some(),
            "topic {}: {} not embedded",
            topic.name,
            topic.schema
        );
        assert!(
            schemas_dir().join(schema_file_for(topic.schema)).is_file(),
            "topic {}: no schemas/{}",
            topic.name,
            schema_file_for(topic.schema)
        );
    }
}

#[test]
fn field_names_from_example_names() {
    assert_eq!(field_of("missing-tenant").as_deref(), Some("tenant"));
    assert_eq!(
        field_of("wrong-type-token-count").as_deref(),
        Some("token_count")
    );
    assert_eq!(field_of("wrong-schema").as_deref(), Some("schema"));
    assert_eq!(field_of("extra-field-colour").as_deref(), Some("colour"));
    assert_eq!(field_of("bogus"), None);
    assert!(names(r#"missing field "inputs.total_lag""#, "total_lag"));
    assert!(!names(r#"missing field "total_lag_x""#, "total_lag"));
}

#[test]
fn dead_letter_kinds_are_the_schemas() {
    use aifab_core::dead_letter::ErrorKind;
    let schema = read_json(&schemas_dir().join("dead_letter.v1.json"));
    let listed: Vec<&str> = schema["properties"]["error_kind"]["enum"]
        .as_array()
        .expect("error_kind lists its kinds")
        .iter()
        .map(|v| v.as_str().expect("a kind is a string"))
        .collect();
    let ours: Vec<&str> = ErrorKind::ALL.iter().map(|k| k.as_str()).collect();
    assert_eq!(
        listed, ours,
        "schemas/dead_letter.v1.json and ErrorKind::ALL differ"
    );
}
