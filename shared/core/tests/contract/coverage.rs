//! (e) Coverage: every file under `schemas/` belongs to a message, every message has its
//! examples, and the README names them all and shows valid records.

use std::collections::BTreeSet;

use aifab_core::messages::{self, schema_file_for};
use aifab_core::{schema, topics};
use serde_json::Value;

use crate::examples::{decode_as, examples, Example};
use crate::{reasons, schema_base, schemas_dir};

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
