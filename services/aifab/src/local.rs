//! Where the local stack lives: the repo's scripts, the service binaries, run/log dirs.

use std::path::{Path, PathBuf};

use anyhow::Context;

/// A service the local supervisor runs, with its default HTTP port.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LocalService {
    pub name: &'static str,
    pub port: u16,
}

impl LocalService {
    pub fn binary(&self) -> String {
        format!("aifab-{}", self.name)
    }
    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }
}

/// Every service, in start order (consumers after the producers they feed are fine:
/// Kafka holds the data meanwhile).
pub const SERVICES: &[LocalService] = &[
    LocalService {
        name: "ingest",
        port: 8080,
    },
    LocalService {
        name: "feature",
        port: 8081,
    },
    LocalService {
        name: "trainer",
        port: 8082,
    },
    LocalService {
        name: "inference-worker",
        port: 8083,
    },
    LocalService {
        name: "monitor",
        port: 8084,
    },
    LocalService {
        name: "cost-accountant",
        port: 8085,
    },
    LocalService {
        name: "autoscaler",
        port: 8086,
    },
];

/// The local monitor's base URL (its dashboard feeds `aifab status`).
pub fn monitor_url() -> String {
    let monitor = SERVICES
        .iter()
        .find(|s| s.name == "monitor")
        .expect("the monitor is a local service");
    format!("http://{}", monitor.addr())
}

/// `$AIFAB_HOME` or `~/.aifab`: pid files, logs.
pub fn home() -> PathBuf {
    std::env::var_os("AIFAB_HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(std::env::var("HOME").unwrap_or_else(|_| ".".into())).join(".aifab")
        })
}

pub fn run_dir() -> PathBuf {
    home().join("run")
}

pub fn log_dir() -> PathBuf {
    home().join("logs")
}

/// The directory holding the service binaries: the one this CLI runs from.
pub fn bin_dir() -> anyhow::Result<PathBuf> {
    let exe = std::env::current_exe().context("locating the aifab binary")?;
    Ok(exe
        .parent()
        .context("aifab binary has no parent dir")?
        .to_path_buf())
}

/// The repository checkout (for `scripts/stack-up`): `$AIFAB_REPO`, else the first
/// ancestor of the current dir or of the binary that has `scripts/stack-up`.
pub fn repo_root() -> anyhow::Result<PathBuf> {
    if let Some(p) = std::env::var_os("AIFAB_REPO") {
        return Ok(PathBuf::from(p));
    }
    let starts = [std::env::current_dir().ok(), bin_dir().ok()];
    for start in starts.into_iter().flatten() {
        if let Some(found) = start
            .ancestors()
            .find(|d| d.join("scripts/stack-up").exists())
        {
            return Ok(found.to_path_buf());
        }
    }
    anyhow::bail!(
        "cannot find the aifab checkout (scripts/stack-up); run from it or set AIFAB_REPO"
    )
}

/// Run one of the repo's scripts, inheriting the terminal, and fail on a non-zero exit.
pub fn run_script(root: &Path, script: &str, args: &[&str]) -> anyhow::Result<()> {
    let path = root.join("scripts").join(script);
    let status = std::process::Command::new("bash")
        .arg(&path)
        .args(args)
        .status()
        .with_context(|| format!("running {}", path.display()))?;
    anyhow::ensure!(status.success(), "{} failed ({status})", path.display());
    Ok(())
}
