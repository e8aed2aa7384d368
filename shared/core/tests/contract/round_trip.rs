//! (b) Rust values: what a message type serializes validates against its schema, decodes
//! back to an equal value, and has exactly the schema's fields and required fields.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Debug;

use aifab_core::messages::{decode, encode, Message};
use aifab_core::schema;
use serde_json::Value;

use crate::reasons;

/// The timestamp every test value carries.
pub(crate) const T0: i64 = 1_764_428_400_000;

/// Serialize, validate, decode back; and check the schema's field lists against the type.
pub(crate) fn check_type<T: Message + PartialEq + Debug>(full: T, minimal: T) {
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

pub(crate) fn attrs() -> BTreeMap<String, String> {
    [("channel", "sms"), ("region", "eu-west")]
        .into_iter()
        .map(|(k, v)| (k.into(), v.into()))
        .collect()
}
