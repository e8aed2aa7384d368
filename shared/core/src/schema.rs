//! The message contract's JSON Schemas (`schemas/*.json`), embedded, compiled once, and a
//! validator whose errors name the field that is wrong.
//!
//! The schema files are compiled into the binary (`include_str!`), so no service reads the
//! repository at run time. [`crate::messages`] holds the matching Rust types; the contract
//! test (`tests/contract/`) checks that the two agree.
//!
//! ```
//! use aifab_core::schema;
//! let bad = serde_json::json!({"schema": "ingest.raw/v1", "text": "hi"});
//! let errors = schema::validate("ingest.raw/v1", &bad).unwrap_err();
//! assert_eq!(errors[0].to_string(), r#"missing field "tenant""#);
//! assert_eq!(errors[0].path, "/tenant");
//! ```

use std::collections::BTreeMap;
use std::fmt;
use std::sync::LazyLock;

use jsonschema::error::{TypeKind, ValidationErrorKind};
use jsonschema::{ValidationError, Validator};
use serde_json::Value;

/// Embed `schemas/<file>` under its message name.
macro_rules! embed {
    ($($name:literal => $file:literal,)*) => {
        &[$(($name, include_str!(concat!("../../../schemas/", $file)))),*]
    };
}

/// `(name/version, schema text)` for every schema file under `schemas/`.
const SCHEMAS: &[(&str, &str)] = embed![
    "ingest.raw/v1" => "ingest.raw.v1.json",
    "inference.request/v1" => "inference.request.v1.json",
    "training.example/v1" => "training.example.v1.json",
    "prediction/v1" => "prediction.v1.json",
    "usage/v1" => "usage.v1.json",
    "dead_letter/v1" => "dead_letter.v1.json",
    "model.event/v1" => "model.event.v1.json",
    "lag.reading/v1" => "lag.reading.v1.json",
    "alert/v1" => "alert.v1.json",
    "budget.event/v1" => "budget.event.v1.json",
    "budget.set/v1" => "budget.set.v1.json",
    "scale.decision/v1" => "scale.decision.v1.json",
    "train.request/v1" => "train.request.v1.json",
    "train.progress/v1" => "train.progress.v1.json",
    "replicas.report/v1" => "replicas.report.v1.json",
    "audit.event/v1" => "audit.event.v1.json",
];

/// The JSON Schema text of a message (`name/version`, e.g. `inference.request/v1`).
pub fn schema_json(name: &str) -> Option<&'static str> {
    SCHEMAS
        .iter()
        .find(|(n, _)| *n == name)
        .map(|(_, text)| *text)
}

/// Every embedded schema's `name/version`.
pub fn all_schema_names() -> impl Iterator<Item = &'static str> {
    SCHEMAS.iter().map(|(name, _)| *name)
}

/// Compile one schema (Draft 2020-12). Errors say which schema and why.
pub fn compile(name: &str, text: &str) -> Result<Validator, String> {
    let schema: Value =
        serde_json::from_str(text).map_err(|e| format!("schema {name}: not JSON: {e}"))?;
    jsonschema::draft202012::new(&schema)
        .map_err(|e| format!("schema {name}: does not compile: {e}"))
}

struct Compiled {
    validator: Validator,
    /// The schema itself, to quote the description of a `pattern` a value fails.
    schema: Value,
}

static VALIDATORS: LazyLock<BTreeMap<&'static str, Compiled>> = LazyLock::new(|| {
    SCHEMAS
        .iter()
        .map(|(name, text)| {
            // The contract test compiles every embedded schema, so this cannot fail in a
            // tested build.
            let validator = compile(name, text).unwrap_or_else(|e| panic!("{e}"));
            let schema = serde_json::from_str(text).expect("compiled, so JSON");
            (*name, Compiled { validator, schema })
        })
        .collect()
});

/// The compiled validator of a message schema (compiled once, on first use).
pub fn validator(name: &str) -> Option<&'static Validator> {
    VALIDATORS.get(name).map(|c| &c.validator)
}

/// One way a JSON value breaks its schema.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SchemaViolation {
    /// JSON pointer of the offending field, e.g. `/tenant`, `/inputs/total_lag`,
    /// `/partitions/0/lag`; `""` for the message as a whole. For a missing or unexpected
    /// field it is where that field is (or would be).
    pub path: String,
    /// A readable sentence that names the field, e.g. `missing field "tenant"`,
    /// `field "token_count": "three" is not of type "integer"`, `unexpected field "colour"`.
    pub message: String,
}

impl fmt::Display for SchemaViolation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for SchemaViolation {}

/// Join violations into one line (for DLQ reasons, logs and HTTP 4xx bodies).
pub fn describe(violations: &[SchemaViolation]) -> String {
    violations
        .iter()
        .map(|v| v.message.as_str())
        .collect::<Vec<_>>()
        .join("; ")
}

/// Validate `value` against the schema `name` (`name/version`).
///
/// An unknown schema name is reported as a violation of the `schema` field.
pub fn validate(name: &str, value: &Value) -> Result<(), Vec<SchemaViolation>> {
    let Some(compiled) = VALIDATORS.get(name) else {
        return Err(vec![SchemaViolation {
            path: "/schema".into(),
            message: format!(
                "field \"schema\": unknown schema \"{name}\" (known: {})",
                all_schema_names().collect::<Vec<_>>().join(", ")
            ),
        }]);
    };
    collect(&compiled.validator, Some(&compiled.schema), value)
}

/// Validate `value` with a compiled validator, reporting every violation.
pub fn validate_with(validator: &Validator, value: &Value) -> Result<(), Vec<SchemaViolation>> {
    collect(validator, None, value)
}

fn collect(
    validator: &Validator,
    schema: Option<&Value>,
    value: &Value,
) -> Result<(), Vec<SchemaViolation>> {
    let mut out = Vec::new();
    for error in validator.iter_errors(value) {
        violations_of(&error, schema, &mut out);
    }
    if out.is_empty() {
        Ok(())
    } else {
        out.dedup();
        Err(out)
    }
}

/// Turn one jsonschema error into violations (one per missing/unexpected property).
fn violations_of(
    error: &ValidationError<'_>,
    schema: Option<&Value>,
    out: &mut Vec<SchemaViolation>,
) {
    let at = error.instance_path().as_str();
    let instance = error.instance();
    match error.kind() {
        ValidationErrorKind::Required { property } => {
            let prop = property
                .as_str()
                .map(str::to_owned)
                .unwrap_or_else(|| property.to_string());
            let path = child(at, &prop);
            out.push(SchemaViolation {
                message: format!("missing field \"{}\"", field_name(&path)),
                path,
            });
        }
        ValidationErrorKind::AdditionalProperties { unexpected }
        | ValidationErrorKind::UnevaluatedProperties { unexpected } => {
            for prop in unexpected {
                let path = child(at, prop);
                out.push(SchemaViolation {
                    message: format!("unexpected field \"{}\"", field_name(&path)),
                    path,
                });
            }
        }
        kind => {
            let reason = match kind {
                ValidationErrorKind::Type {
                    kind: TypeKind::Single(t),
                } => {
                    format!("{} is not of type \"{t}\"", short(instance))
                }
                ValidationErrorKind::Type {
                    kind: TypeKind::Multiple(ts),
                } => format!(
                    "{} is not of type {}",
                    short(instance),
                    ts.iter()
                        .map(|t| format!("\"{t}\""))
                        .collect::<Vec<_>>()
                        .join(" or ")
                ),
                ValidationErrorKind::Constant { expected_value } => {
                    format!("expected {expected_value}, found {}", short(instance))
                }
                ValidationErrorKind::Enum { options } => {
                    let options = options
                        .as_array()
                        .map(|a| {
                            a.iter()
                                .map(Value::to_string)
                                .collect::<Vec<_>>()
                                .join(", ")
                        })
                        .unwrap_or_else(|| options.to_string());
                    format!("{} is not one of {options}", short(instance))
                }
                ValidationErrorKind::MinLength { limit } => {
                    format!(
                        "{} is shorter than {limit} character{}",
                        short(instance),
                        plural(*limit)
                    )
                }
                ValidationErrorKind::MaxLength { limit } => format!(
                    "{} is {} characters long, more than the maximum of {limit}",
                    short(instance),
                    instance.as_str().map_or(0, |s| s.chars().count())
                ),
                ValidationErrorKind::MinItems { limit } => {
                    format!(
                        "{} has fewer than {limit} item{}",
                        short(instance),
                        plural(*limit)
                    )
                }
                ValidationErrorKind::MinProperties { limit } => {
                    format!(
                        "{} has fewer than {limit} entr{}",
                        short(instance),
                        if *limit == 1 { "y" } else { "ies" }
                    )
                }
                ValidationErrorKind::Pattern { pattern } => {
                    // Say in words what the pattern wants, from the description next to it.
                    let keyword = error.schema_path().as_str();
                    let parent = keyword.strip_suffix("/pattern").unwrap_or(keyword);
                    match schema
                        .and_then(|s| s.pointer(parent))
                        .and_then(|n| n["description"].as_str())
                    {
                        Some(wanted) => format!(
                            "{} does not match the pattern {pattern} ({})",
                            short(instance),
                            wanted.trim_end_matches('.')
                        ),
                        None => format!("{} does not match the pattern {pattern}", short(instance)),
                    }
                }
                ValidationErrorKind::PropertyNames { error } => {
                    format!("has an invalid key: {error}")
                }
                _ => error.to_string(),
            };
            let message = if at.is_empty() {
                format!("message: {reason}")
            } else {
                format!("field \"{}\": {reason}", field_name(at))
            };
            out.push(SchemaViolation {
                path: at.to_owned(),
                message,
            });
        }
    }
}

fn plural(n: u64) -> &'static str {
    if n == 1 {
        ""
    } else {
        "s"
    }
}

/// `parent` JSON pointer plus one property.
fn child(parent: &str, prop: &str) -> String {
    format!("{parent}/{}", prop.replace('~', "~0").replace('/', "~1"))
}

/// A JSON pointer as a field name people read: `/inputs/total_lag` → `inputs.total_lag`,
/// `/partitions/0/lag` → `partitions[0].lag`.
fn field_name(pointer: &str) -> String {
    let mut out = String::new();
    for segment in pointer.split('/').skip(1) {
        let segment = segment.replace("~1", "/").replace("~0", "~");
        if !segment.is_empty() && segment.bytes().all(|b| b.is_ascii_digit()) {
            out.push_str(&format!("[{segment}]"));
        } else {
            if !out.is_empty() {
                out.push('.');
            }
            out.push_str(&segment);
        }
    }
    out
}

/// A value as JSON, cut short so a 20 000-character text does not flood a log line.
fn short(value: &Value) -> String {
    const MAX: usize = 60;
    let text = value.to_string();
    if text.chars().count() <= MAX {
        return text;
    }
    let head: String = text.chars().take(MAX).collect();
    match value {
        Value::String(_) => format!("{head}…\""),
        _ => format!("{head}…"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn request() -> Value {
        json!({
            "schema": "inference.request/v1",
            "id": "r1",
            "tenant": "acme",
            "task": "sms_spam",
            "text": "hello",
            "input_ids": [101, 7592, 102],
            "token_count": 3,
            "truncation": "none",
            "received_at_ms": 1,
        })
    }

    fn errors(value: Value) -> Vec<String> {
        validate("inference.request/v1", &value)
            .unwrap_err()
            .iter()
            .map(|v| format!("{} @ {}", v, v.path))
            .collect()
    }

    #[test]
    fn every_schema_is_embedded_compiles_and_is_listed() {
        assert_eq!(
            all_schema_names().count(),
            crate::messages::ALL_SCHEMAS.len()
        );
        for name in crate::messages::ALL_SCHEMAS {
            assert!(schema_json(name).is_some(), "{name} not embedded");
            assert!(validator(name).is_some(), "{name} has no validator");
        }
        assert!(schema_json("nope/v1").is_none());
    }

    #[test]
    fn valid_value_passes() {
        assert_eq!(validate("inference.request/v1", &request()), Ok(()));
    }

    #[test]
    fn missing_field_is_named() {
        let mut v = request();
        v.as_object_mut().unwrap().remove("tenant");
        assert_eq!(errors(v), [r#"missing field "tenant" @ /tenant"#]);
    }

    #[test]
    fn wrong_type_is_named() {
        let mut v = request();
        v["token_count"] = json!("three");
        assert_eq!(
            errors(v),
            [r#"field "token_count": "three" is not of type "integer" @ /token_count"#]
        );
    }

    #[test]
    fn additional_property_is_named() {
        let mut v = request();
        v["colour"] = json!("blue");
        v["size"] = json!(1);
        let mut got = errors(v);
        got.sort();
        assert_eq!(
            got,
            [
                r#"unexpected field "colour" @ /colour"#,
                r#"unexpected field "size" @ /size"#
            ]
        );
    }

    #[test]
    fn empty_string_is_named() {
        let mut v = request();
        v["text"] = json!("");
        assert_eq!(
            errors(v),
            [r#"field "text": "" is shorter than 1 character @ /text"#]
        );
    }

    #[test]
    fn wrong_schema_and_enum_say_what_was_expected() {
        let mut v = request();
        v["schema"] = json!("prediction/v1");
        v["truncation"] = json!("middle");
        let got = errors(v);
        assert!(
            got.contains(
                &concat!(
                    r#"field "schema": expected "inference.request/v1", "#,
                    r#"found "prediction/v1" @ /schema"#
                )
                .to_string()
            ),
            "{got:?}"
        );
        assert!(
            got.contains(
                &concat!(
                    r#"field "truncation": "middle" is not one of "none", "head", "tail" "#,
                    r#"@ /truncation"#
                )
                .to_string()
            ),
            "{got:?}"
        );
    }

    #[test]
    fn nested_fields_are_named_by_their_path() {
        let mut v = request();
        v["input_ids"] = json!([101, -1, 102]);
        assert_eq!(
            errors(v),
            [r#"field "input_ids[1]": -1 is less than the minimum of 0 @ /input_ids/1"#]
        );
        let dl = json!({
            "schema": "dead_letter/v1",
            "original_base64": "",
            "source": {"topic": "t", "partition": 0},
            "stage": "ingest",
            "error_kind": "not_json",
            "reason": "not JSON",
            "at_ms": 0,
        });
        let got: Vec<String> = validate("dead_letter/v1", &dl)
            .unwrap_err()
            .iter()
            .map(ToString::to_string)
            .collect();
        assert_eq!(got, [r#"missing field "source.offset""#]);
    }

    #[test]
    fn long_values_are_cut_short() {
        let v = json!({"schema": "ingest.raw/v1", "tenant": "acme", "text": "a".repeat(20_001)});
        let got = validate("ingest.raw/v1", &v).unwrap_err();
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].path, "/text");
        assert!(
            got[0].message.starts_with(r#"field "text": "aaaa"#),
            "{}",
            got[0]
        );
        assert!(
            got[0]
                .message
                .ends_with("is 20001 characters long, more than the maximum of 20000"),
            "{}",
            got[0]
        );
        assert!(got[0].message.len() < 200, "{}", got[0]);
    }

    #[test]
    fn root_problems_and_unknown_schemas() {
        let got = validate("ingest.raw/v1", &json!([1, 2])).unwrap_err();
        assert_eq!(
            got[0].to_string(),
            r#"message: [1,2] is not of type "object""#
        );
        assert_eq!(got[0].path, "");
        let got = validate("nope/v1", &json!({})).unwrap_err();
        assert!(got[0]
            .to_string()
            .starts_with(r#"field "schema": unknown schema "nope/v1""#));
    }

    #[test]
    fn patterns_are_explained_in_words() {
        let v = json!({"schema": "ingest.raw/v1", "tenant": "acme corp!", "text": "hi"});
        let got = validate("ingest.raw/v1", &v).unwrap_err();
        assert_eq!(got.len(), 1);
        assert!(
            got[0]
                .message
                .starts_with(r#"field "tenant": "acme corp!" does not match the pattern ^"#),
            "{}",
            got[0]
        );
        assert!(
            got[0].message.ends_with(
                "(A tenant or task name: 1 to 64 characters, letters, digits, `_`, `.` or `-`, \
                 starting with a letter or digit)"
            ),
            "{}",
            got[0]
        );
        // Without the schema at hand it still names the field and the pattern.
        let got = validate_with(validator("ingest.raw/v1").unwrap(), &v).unwrap_err();
        assert!(got[0].message.ends_with("{0,63}$"), "{}", got[0]);
    }

    #[test]
    fn describe_joins() {
        let mut v = request();
        v.as_object_mut().unwrap().remove("tenant");
        v["colour"] = json!(1);
        let text = describe(&validate("inference.request/v1", &v).unwrap_err());
        assert!(
            text.contains(r#"missing field "tenant""#) && text.contains("; "),
            "{text}"
        );
    }

    #[test]
    fn field_names() {
        assert_eq!(field_name(""), "");
        assert_eq!(field_name("/tenant"), "tenant");
        assert_eq!(field_name("/inputs/total_lag"), "inputs.total_lag");
        assert_eq!(field_name("/partitions/0/lag"), "partitions[0].lag");
        assert_eq!(field_name("/attributes/a~1b"), "attributes.a/b");
    }
}
