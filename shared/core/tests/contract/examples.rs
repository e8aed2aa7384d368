//! (c) Valid examples validate and decode; (d) invalid examples fail, and every reason
//! names the field the example's file name says is wrong.

use std::path::PathBuf;

use aifab_core::messages::{self, *};
use aifab_core::schema;
use serde_json::Value;

use crate::{examples_dir, read_json, reasons, schema_base};

/// Decode `bytes` as the Rust type of `name`, and encode it back as JSON.
pub(crate) fn decode_as(name: &str, bytes: &[u8]) -> Result<Value, String> {
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
        AuditEvent,
    );
    panic!("no Rust type for schema {name}: add it to decode_as in tests/contract/examples.rs");
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
                "{}: every reason should name the field {field:?} \
                 (one thing wrong per example); got:{}",
                file.display(),
                reasons(&violations)
            );
        }
        checked += 1;
    }
    assert!(checked >= 2 * messages::ALL_SCHEMAS.len());
}

/// A file under `schemas/examples/`: which schema it is an example of, and how.
pub(crate) enum Example {
    Valid {
        name: &'static str,
    },
    Invalid {
        name: &'static str,
        what: String,
        file: PathBuf,
    },
}

/// Every file under `schemas/examples/`, classified; panics on one that fits no pattern.
pub(crate) fn examples() -> Vec<Example> {
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
