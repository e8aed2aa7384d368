//! The local supervisor behind `aifab up`: runs every service as a child process, restarts
//! crashed ones with backoff, and on SIGTERM/Ctrl-C stops them all gracefully.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use aifab_core::backoff::Backoff;
use anyhow::Context;
use tokio::process::{Child, Command};
use tokio_util::sync::CancellationToken;

use crate::local::LocalService;

/// A child that stayed up this long is healthy again: its restart backoff resets.
const STABLE_AFTER: Duration = Duration::from_secs(30);

struct Managed {
    service: LocalService,
    child: Option<Child>,
    started_at: Instant,
    backoff: Backoff,
    restart_at: Option<Instant>,
    restarts: u32,
}

pub struct Supervisor {
    bin_dir: PathBuf,
    log_dir: PathBuf,
    procs: Vec<Managed>,
}

impl Supervisor {
    pub fn new(bin_dir: &Path, log_dir: &Path, services: &[LocalService]) -> anyhow::Result<Self> {
        std::fs::create_dir_all(log_dir).with_context(|| format!("creating {}", log_dir.display()))?;
        for s in services {
            let bin = bin_dir.join(s.binary());
            anyhow::ensure!(
                bin.exists(),
                "{} not found; build the services first: cargo build --release --workspace --bins",
                bin.display()
            );
        }
        Ok(Supervisor {
            bin_dir: bin_dir.to_path_buf(),
            log_dir: log_dir.to_path_buf(),
            procs: services
                .iter()
                .map(|s| Managed {
                    service: *s,
                    child: None,
                    started_at: Instant::now(),
                    backoff: Backoff::new(Duration::from_millis(500), Duration::from_secs(30)),
                    restart_at: Some(Instant::now()),
                    restarts: 0,
                })
                .collect(),
        })
    }

    fn spawn(&self, s: &LocalService) -> anyhow::Result<Child> {
        let log_path = self.log_dir.join(format!("{}.log", s.name));
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
            .with_context(|| format!("opening {}", log_path.display()))?;
        let child = Command::new(self.bin_dir.join(s.binary()))
            .env("AIFAB_HTTP_ADDR", s.addr())
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .with_context(|| format!("starting {}", s.binary()))?;
        Ok(child)
    }

    /// Supervise until `shutdown` fires, then stop every child (SIGTERM, then SIGKILL
    /// after `grace`).
    pub async fn run(mut self, shutdown: CancellationToken, grace: Duration) -> anyhow::Result<()> {
        loop {
            let now = Instant::now();
            for i in 0..self.procs.len() {
                // Reap exited children and schedule their restart.
                if let Some(child) = self.procs[i].child.as_mut() {
                    if let Some(status) = child.try_wait()? {
                        let p = &mut self.procs[i];
                        if now.duration_since(p.started_at) > STABLE_AFTER {
                            p.backoff.reset();
                        }
                        let delay = p.backoff.next_delay();
                        tracing::warn!(service = p.service.name, %status, restart_in = ?delay,
                            log = %self.log_dir.join(format!("{}.log", p.service.name)).display(),
                            "service exited; restarting");
                        p.child = None;
                        p.restart_at = Some(now + delay);
                    }
                }
                if self.procs[i].child.is_none() && self.procs[i].restart_at.is_some_and(|t| t <= now) {
                    let service = self.procs[i].service;
                    match self.spawn(&service) {
                        Ok(child) => {
                            let p = &mut self.procs[i];
                            if p.restarts > 0 {
                                tracing::info!(service = service.name, restarts = p.restarts, "restarted");
                            }
                            p.restarts += 1;
                            p.child = Some(child);
                            p.started_at = now;
                            p.restart_at = None;
                        }
                        Err(e) => {
                            let p = &mut self.procs[i];
                            let delay = p.backoff.next_delay();
                            tracing::error!(service = service.name, error = %e, retry_in = ?delay, "cannot start");
                            p.restart_at = Some(now + delay);
                        }
                    }
                }
            }
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_millis(250)) => {}
                _ = shutdown.cancelled() => break,
            }
        }
        self.stop_all(grace).await;
        Ok(())
    }

    async fn stop_all(&mut self, grace: Duration) {
        for p in &self.procs {
            if let Some(pid) = p.child.as_ref().and_then(|c| c.id()) {
                let _ = std::process::Command::new("kill").arg("-TERM").arg(pid.to_string()).status();
            }
        }
        let deadline = tokio::time::Instant::now() + grace;
        for p in &mut self.procs {
            if let Some(child) = p.child.as_mut() {
                match tokio::time::timeout_at(deadline, child.wait()).await {
                    Ok(_) => tracing::info!(service = p.service.name, "stopped"),
                    Err(_) => {
                        tracing::warn!(service = p.service.name, "did not stop in time; killing");
                        let _ = child.kill().await;
                    }
                }
            }
        }
    }
}
