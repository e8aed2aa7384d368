//! (f) The code's catalogues agree with the schemas: every topic's schema exists, and
//! the dead-letter kinds are the schema's list.

use aifab_core::messages::{self, schema_file_for};
use aifab_core::{schema, topics};

use crate::{read_json, schemas_dir};

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
