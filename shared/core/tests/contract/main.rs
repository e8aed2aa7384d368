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
//!
//! One module per part: `schema_files`, `round_trip` with `data_plane` and `control_plane`,
//! `examples`, `coverage`, `catalogues`; the helpers they share are here.

use std::path::{Path, PathBuf};

use aifab_core::schema;
use serde_json::Value;

mod catalogues;
mod control_plane;
mod coverage;
mod data_plane;
mod examples;
mod round_trip;
mod schema_files;

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

fn schema_base(name: &str) -> String {
    name.replace('/', ".")
}
