//! Check (4): the `aifab*` programs services run are the workspace's binaries, copied into
//! the image. The binaries come from `cargo metadata`, cargo's own reading of the
//! manifests (auto-discovered `src/bin/*` and renamed `[[bin]]`s included).

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::model::Compose;

/// The part of `cargo metadata --format-version 1` read here.
#[derive(Debug, Deserialize)]
pub struct Metadata {
    pub workspace_root: PathBuf,
    pub packages: Vec<Package>,
}

#[derive(Debug, Deserialize)]
pub struct Package {
    pub manifest_path: PathBuf,
    pub targets: Vec<Target>,
}

#[derive(Debug, Deserialize)]
pub struct Target {
    pub name: String,
    /// `bin`, `lib`, `test`, ...
    pub kind: Vec<String>,
}

/// `cargo metadata --no-deps` of the workspace at `root`.
pub fn cargo_metadata(root: &Path) -> Metadata {
    // The cargo running the tests, when there is one.
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let out = std::process::Command::new(cargo)
        .args([
            "metadata",
            "--format-version",
            "1",
            "--no-deps",
            "--offline",
        ])
        .current_dir(root)
        .output()
        .expect("running cargo metadata");
    assert!(
        out.status.success(),
        "cargo metadata failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("cargo metadata's JSON")
}

/// Binary names the crates under `services/` build.
pub fn service_binaries(md: &Metadata) -> BTreeSet<String> {
    let services = md.workspace_root.join("services");
    md.packages
        .iter()
        .filter(|p| p.manifest_path.starts_with(&services))
        .flat_map(|p| &p.targets)
        .filter(|t| t.kind.iter().any(|k| k == "bin"))
        .map(|t| t.name.clone())
        .collect()
}

/// (4) Every `aifab*` program a service (or its healthcheck) runs is built by a crate
/// under services/ and copied into the image by the Dockerfile; every service binary of
/// the workspace (all but the `aifab` CLI) is run by some service.
pub fn check_binaries(doc: &Compose, bins: &BTreeSet<String>, dockerfile: &str) -> Vec<String> {
    let dockerfile_words: BTreeSet<&str> = dockerfile
        .split(|c: char| c.is_whitespace() || "\"'=,[]".contains(c))
        .filter(|w| !w.is_empty())
        .collect();
    let mut problems = Vec::new();
    let mut run = BTreeSet::new();
    for (name, svc) in &doc.services {
        let progs = [
            ("command", svc.program()),
            ("healthcheck", svc.healthcheck_program()),
        ];
        for (field, prog) in progs {
            let Some(prog) = prog.filter(|p| p.starts_with("aifab")) else {
                continue;
            };
            run.insert(prog.clone());
            if !bins.contains(&prog) {
                problems.push(format!(
                    "service `{name}`: {field} runs `{prog}`, but no crate under services/ \
                     builds a binary of that name (binaries: {})",
                    bins.iter().cloned().collect::<Vec<_>>().join(", ")
                ));
            }
            if svc.build.is_some() && !dockerfile_words.contains(prog.as_str()) {
                problems.push(format!(
                    "service `{name}`: {field} runs `{prog}`, which the Dockerfile does not \
                     copy into the image (AIFAB_BINS)"
                ));
            }
        }
    }
    for bin in bins.iter().filter(|b| b.as_str() != "aifab") {
        if !run.contains(bin) {
            problems.push(format!(
                "workspace binary `{bin}` is not run by any service in docker-compose.yml"
            ));
        }
    }
    problems
}

#[test]
fn binaries_are_the_bin_targets_of_crates_under_services() {
    let md: Metadata = serde_json::from_value(serde_json::json!({
        "workspace_root": "/ws",
        "packages": [
            {"manifest_path": "/ws/services/cli/Cargo.toml", "targets": [
                {"name": "aifab", "kind": ["bin"]},
                {"name": "aifab_cli", "kind": ["lib"]},
                {"name": "extra", "kind": ["bin"]},
            ]},
            {"manifest_path": "/ws/services/x/Cargo.toml", "targets": [
                {"name": "aifab-x", "kind": ["bin"]},
                {"name": "it", "kind": ["test"]},
            ]},
            {"manifest_path": "/ws/load-tests/Cargo.toml", "targets": [
                {"name": "chaos", "kind": ["bin"]},
            ]},
        ],
    }))
    .unwrap();
    let bins: Vec<String> = service_binaries(&md).into_iter().collect();
    assert_eq!(bins, ["aifab", "aifab-x", "extra"]);
}
