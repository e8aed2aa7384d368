//! `aifab keys create`: a new API key for a tenant, printed once; the keys file
//! (`--api-keys-file` of ingest) gets only its salted hash (`aifab_core::api_keys`).

use std::path::PathBuf;

use anyhow::Context;
use clap::{Args, Subcommand};

#[derive(Debug, Clone, Args)]
pub struct KeysArgs {
    #[command(subcommand)]
    pub command: KeysCmd,
}

#[derive(Debug, Clone, Subcommand)]
pub enum KeysCmd {
    /// Make a key for TENANT: the key is printed once (hand it over; it is not stored),
    /// the salted hash is added to FILE (created when missing), or printed without --file.
    Create {
        #[arg(long)]
        tenant: String,
        /// The API keys file to add the entry to (ingest reads it at start).
        #[arg(long)]
        file: Option<PathBuf>,
    },
}

pub fn run(args: KeysArgs) -> anyhow::Result<()> {
    match args.command {
        KeysCmd::Create { tenant, file } => {
            anyhow::ensure!(
                aifab_core::api_keys::valid_tenant(&tenant),
                "tenant {tenant:?}: 1-64 of A-Z a-z 0-9 _ . -, starting with a letter or digit"
            );
            let (key, entry) = aifab_core::api_keys::create(&tenant);
            let entry_json = serde_json::to_value(&entry)?;
            match &file {
                Some(path) => {
                    add_entry(path, entry_json)?;
                    println!(
                        "added key {} for tenant {tenant} to {} (restart ingest to load it)",
                        entry.key_id,
                        path.display()
                    );
                }
                None => println!(
                    "add this entry under \"keys\" in ingest's API keys file:\n  {entry_json}"
                ),
            }
            println!("the key, shown this once:\n  {key}");
            Ok(())
        }
    }
}

/// Add `entry` to the `keys` array of the JSON file at `path` (written atomically).
fn add_entry(path: &std::path::Path, entry: serde_json::Value) -> anyhow::Result<()> {
    let mut doc: serde_json::Value = match std::fs::read_to_string(path) {
        Ok(text) => serde_json::from_str(&text)
            .with_context(|| format!("{} is not JSON", path.display()))?,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => serde_json::json!({"keys": []}),
        Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
    };
    let keys = doc
        .as_object_mut()
        .context("the keys file is not a JSON object")?
        .entry("keys")
        .or_insert_with(|| serde_json::json!([]))
        .as_array_mut()
        .context("\"keys\" in the keys file is not an array")?;
    keys.push(entry);
    // A private temporary file beside it (0600: the file may hold plain keys), then an
    // atomic rename over it.
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(std::path::Path::new("."));
    let mut tmp = tempfile::NamedTempFile::new_in(dir)
        .with_context(|| format!("a temporary file in {}", dir.display()))?;
    std::io::Write::write_all(
        &mut tmp,
        (serde_json::to_string_pretty(&doc)? + "\n").as_bytes(),
    )?;
    tmp.persist(path)
        .with_context(|| format!("replacing {}", path.display()))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_are_added_to_a_new_or_existing_file_without_the_key() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("keys.json");
        let (key, entry) = aifab_core::api_keys::create("acme");
        add_entry(&path, serde_json::to_value(&entry).unwrap()).unwrap();
        let (_, second) = aifab_core::api_keys::create("beta");
        add_entry(&path, serde_json::to_value(&second).unwrap()).unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        let doc: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(doc["keys"].as_array().unwrap().len(), 2);
        assert_eq!(doc["keys"][0]["tenant"], "acme");
        assert!(!text.contains(key.split_once('.').unwrap().1));
    }
}
