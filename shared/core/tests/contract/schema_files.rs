//! (a) Schema files: each message's file compiles, has the common header, describes
//! every property and is self-contained.

use std::collections::BTreeSet;

use aifab_core::messages::{self, schema_file_for};
use aifab_core::schema;
use serde_json::Value;

use crate::schemas_dir;

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
