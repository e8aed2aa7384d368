//! The local supervisor behind `aifab up`: runs every service as a child process, restarts
//! crashed ones with backoff, and on SIGTERM/Ctrl-C stops them all gracefully.
//!
//! The inference worker is a replica set, the local actuator of the autoscaler: it follows
//! the decisions on `aifab.scale.inference-worker` (starting replicas, or SIGTERM-ing the
//! highest-numbered ones so they drain), and publishes how many run on
//! `aifab.replicas.inference-worker` on every change and every few seconds. Replica `i`
//! listens on a stable port (8083, then 8090, 8091, ...) and has a stable instance id
//! (`<host>-inference-worker-<i>`), so a restarted replica fences its dead predecessor's
//! open Kafka transaction at once.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use aifab_core::backoff::Backoff;
use aifab_core::messages::{decode, encode, tag, ReplicaReport, ScaleDecision};
use aifab_core::topics::subjects;
use anyhow::Context;
use futures::StreamExt;
use tokio::process::{Child, Command};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::local::LocalService;

/// A child that stayed up this long is healthy again: its restart backoff resets.
const STABLE_AFTER: Duration = Duration::from_secs(30);
/// Replica reports go out at least this often.
const REPORT_EVERY: Duration = Duration::from_secs(5);

/// The service run as scalable replicas.
pub const SCALED_SERVICE: &str = "inference-worker";
/// Ports of replicas 1, 2, ... (replica 0 keeps the service's own port).
pub const EXTRA_REPLICA_PORT: u16 = 8090;

/// How the scaled service's replicas are run.
#[derive(Debug, Clone, PartialEq)]
pub struct ReplicaSetConfig {
    /// The service (binary `aifab-<service>`).
    pub service: String,
    /// The name in `aifab.scale.<name>` and `aifab.replicas.<name>`.
    pub scale_name: String,
    /// One port per possible replica; their count is the most replicas.
    pub ports: Vec<u16>,
    /// Replicas before any decision arrives.
    pub initial: u32,
    /// Instance ids are `<prefix>-<i>`.
    pub instance_prefix: String,
    /// Environment for every replica.
    pub env: Vec<(String, String)>,
}

impl ReplicaSetConfig {
    /// The default: replica 0 on the service's port, the rest from 8090 on, as many as
    /// the input topic has partitions. `AIFAB_WORKER_REPLICAS` sets the initial count,
    /// `AIFAB_WORKER_MAX_REPLICAS` the maximum.
    pub fn local_default(service: &LocalService) -> Self {
        let env_u32 = |k: &str| std::env::var(k).ok().and_then(|v| v.parse::<u32>().ok());
        let max = env_u32("AIFAB_WORKER_MAX_REPLICAS")
            .unwrap_or(aifab_core::topics::INFERENCE_REQUESTS.partitions as u32)
            .max(1);
        let ports = std::iter::once(service.port)
            .chain((0..max - 1).map(|i| EXTRA_REPLICA_PORT + i as u16))
            .collect();
        let host = std::fs::read_to_string("/etc/hostname")
            .map(|h| h.trim().to_string())
            .ok()
            .filter(|h| !h.is_empty())
            .unwrap_or_else(|| "local".into());
        ReplicaSetConfig {
            service: service.name.to_string(),
            scale_name: service.name.to_string(),
            ports,
            initial: env_u32("AIFAB_WORKER_REPLICAS").unwrap_or(1).min(max),
            instance_prefix: format!("{host}-{}", service.name),
            env: Vec::new(),
        }
    }

    pub fn max(&self) -> u32 {
        self.ports.len() as u32
    }
}

struct Managed {
    /// Display and log name: `ingest`, `inference-worker`, `inference-worker-2`.
    name: String,
    binary: String,
    env: Vec<(String, String)>,
    child: Option<Child>,
    /// When SIGTERM was sent to a replica being scaled away.
    stopping: Option<Instant>,
    wanted: bool,
    started_at: Instant,
    backoff: Backoff,
    restart_at: Option<Instant>,
    restarts: u32,
}

impl Managed {
    fn new(name: String, binary: String, env: Vec<(String, String)>, wanted: bool) -> Self {
        Managed {
            name,
            binary,
            env,
            child: None,
            stopping: None,
            wanted,
            started_at: Instant::now(),
            backoff: Backoff::new(Duration::from_millis(500), Duration::from_secs(30)),
            restart_at: wanted.then(Instant::now),
            restarts: 0,
        }
    }

    fn running(&self) -> bool {
        self.child.is_some() && self.stopping.is_none()
    }
}

/// Variables that carry brokers and credentials: with `--env-dir`, a service gets them
/// from its own file only.
const INHERITED_CREDENTIALS: &[&str] = &[
    "AIFAB_KAFKA_",
    "AIFAB_NATS_",
    "AIFAB_REDIS_",
    "AIFAB_ADMIN_TOKEN_FILE",
    "AIFAB_READ_TOKEN_FILE",
];

pub struct Supervisor {
    bin_dir: PathBuf,
    log_dir: PathBuf,
    procs: Vec<Managed>,
    replicas: Option<ReplicaSetConfig>,
    /// Replica slots, index = replica number.
    slots: Vec<Managed>,
    env: Vec<(String, String)>,
    /// Per service (`ingest`, `inference-worker`, ...): the settings of its env file.
    service_env: std::collections::HashMap<String, Vec<(String, String)>>,
    nats_url: String,
}

impl Supervisor {
    /// Supervise `services`; the inference worker among them becomes a replica set with
    /// [`ReplicaSetConfig::local_default`].
    pub fn new(bin_dir: &Path, log_dir: &Path, services: &[LocalService]) -> anyhow::Result<Self> {
        std::fs::create_dir_all(log_dir)
            .with_context(|| format!("creating {}", log_dir.display()))?;
        for s in services {
            let bin = bin_dir.join(s.binary());
            anyhow::ensure!(
                bin.exists(),
                "{} not found; build the services first: {} (scripts/aifab does)",
                bin.display(),
                build_command(bin_dir)
            );
        }
        let replicas = services
            .iter()
            .find(|s| s.name == SCALED_SERVICE)
            .map(ReplicaSetConfig::local_default);
        Ok(Supervisor {
            bin_dir: bin_dir.to_path_buf(),
            log_dir: log_dir.to_path_buf(),
            procs: services
                .iter()
                .filter(|s| s.name != SCALED_SERVICE)
                .map(|s| {
                    Managed::new(
                        s.name.to_string(),
                        s.binary(),
                        vec![("AIFAB_HTTP_ADDR".into(), s.addr())],
                        true,
                    )
                })
                .collect(),
            replicas,
            slots: Vec::new(),
            env: Vec::new(),
            service_env: Default::default(),
            nats_url: std::env::var("AIFAB_NATS_URL")
                .unwrap_or_else(|_| aifab_core::config::DEFAULT_NATS_URL.into()),
        })
    }

    /// Run the replica set with `cfg` (replacing the default one).
    pub fn with_replica_set(mut self, cfg: ReplicaSetConfig) -> anyhow::Result<Self> {
        let bin = self.bin_dir.join(format!("aifab-{}", cfg.service));
        anyhow::ensure!(bin.exists(), "{} not found", bin.display());
        anyhow::ensure!(
            !cfg.ports.is_empty(),
            "a replica set needs at least one port"
        );
        self.replicas = Some(cfg);
        Ok(self)
    }

    /// Environment for every child.
    pub fn with_env(mut self, key: &str, value: &str) -> Self {
        self.env.push((key.into(), value.into()));
        self
    }

    /// Give each service the settings of `<dir>/<service>.env` (KEY=value lines, as
    /// `scripts/stack-up --secure` writes them: its own credentials and secret files).
    /// Every supervised service must have one: a service started with another's
    /// credentials would be refused by the brokers or, worse, allowed too much.
    pub fn with_env_dir(mut self, dir: &Path) -> anyhow::Result<Self> {
        let services = self
            .procs
            .iter()
            .map(|m| m.binary.clone())
            .chain(self.replicas.iter().map(|r| format!("aifab-{}", r.service)));
        for binary in services {
            let service = binary.trim_start_matches("aifab-").to_string();
            let path = dir.join(format!("{service}.env"));
            let vars = dotenvy::from_path_iter(&path)
                .with_context(|| format!("no env file for {service}: {}", path.display()))?
                .collect::<Result<Vec<_>, _>>()
                .with_context(|| format!("reading {}", path.display()))?;
            self.service_env.insert(binary, vars);
        }
        Ok(self)
    }

    pub fn with_nats_url(mut self, url: &str) -> Self {
        self.nats_url = url.into();
        self
    }

    pub fn replica_set(&self) -> Option<&ReplicaSetConfig> {
        self.replicas.as_ref()
    }

    fn spawn(&self, m: &Managed) -> anyhow::Result<Child> {
        let log_path = self.log_dir.join(format!("{}.log", m.name));
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
            .with_context(|| format!("opening {}", log_path.display()))?;
        let mut cmd = Command::new(self.bin_dir.join(&m.binary));
        if self.service_env.contains_key(&m.binary) {
            // The service's own file decides its brokers and credentials: none of the
            // operator's may leak into it.
            for (k, _) in std::env::vars() {
                if INHERITED_CREDENTIALS.iter().any(|p| k.starts_with(p)) {
                    cmd.env_remove(k);
                }
            }
        }
        cmd.envs(self.env.iter().cloned())
            .envs(
                self.service_env
                    .get(&m.binary)
                    .into_iter()
                    .flatten()
                    .cloned(),
            )
            .envs(m.env.iter().cloned())
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log);
        cmd.spawn()
            .with_context(|| format!("starting {}", m.binary))
    }

    /// Make the replica slots match `desired`.
    fn resize(&mut self, desired: u32) {
        let Some(cfg) = &self.replicas else { return };
        let desired = desired.min(cfg.max());
        while (self.slots.len() as u32) < desired {
            let i = self.slots.len();
            let name = if i == 0 {
                cfg.service.clone()
            } else {
                format!("{}-{i}", cfg.service)
            };
            let mut env = cfg.env.clone();
            env.push((
                "AIFAB_HTTP_ADDR".into(),
                format!("127.0.0.1:{}", cfg.ports[i]),
            ));
            env.push((
                "AIFAB_INSTANCE_ID".into(),
                format!("{}-{i}", cfg.instance_prefix),
            ));
            self.slots.push(Managed::new(
                name,
                format!("aifab-{}", cfg.service),
                env,
                false,
            ));
        }
        for (i, m) in self.slots.iter_mut().enumerate() {
            let want = (i as u32) < desired;
            if want && !m.wanted {
                m.backoff.reset();
                m.restart_at = Some(Instant::now());
            }
            if !want {
                m.restart_at = None;
            }
            m.wanted = want;
        }
    }

    /// Replicas running (started and not being stopped).
    fn running_replicas(&self) -> u32 {
        self.slots
            .iter()
            .filter(|m| m.wanted && m.running())
            .count() as u32
    }

    /// Reap, restart, start and stop one managed process.
    fn tend(&self, m: &mut Managed, now: Instant, grace: Duration) -> anyhow::Result<()> {
        if let Some(child) = m.child.as_mut() {
            if let Some(status) = child.try_wait()? {
                m.child = None;
                if m.stopping.take().is_some() {
                    tracing::info!(service = %m.name, %status, "replica stopped");
                } else if m.wanted {
                    if now.duration_since(m.started_at) > STABLE_AFTER {
                        m.backoff.reset();
                    }
                    let delay = m.backoff.next_delay();
                    tracing::warn!(service = %m.name, %status, restart_in = ?delay,
                        log = %self.log_dir.join(format!("{}.log", m.name)).display(),
                        "service exited; restarting");
                    m.restart_at = Some(now + delay);
                }
            }
        }
        if !m.wanted {
            if let Some(child) = m.child.as_mut() {
                match m.stopping {
                    None => {
                        if let Some(pid) = child.id() {
                            let _ = std::process::Command::new("kill")
                                .arg("-TERM")
                                .arg(pid.to_string())
                                .status();
                        }
                        tracing::info!(service = %m.name, "scaling down: stopping replica");
                        m.stopping = Some(now);
                    }
                    Some(t) if now.duration_since(t) > grace => {
                        tracing::warn!(service = %m.name, "did not stop in time; killing");
                        let _ = child.start_kill();
                    }
                    Some(_) => {}
                }
            }
            return Ok(());
        }
        if m.child.is_none() && m.restart_at.is_some_and(|t| t <= now) {
            match self.spawn(m) {
                Ok(child) => {
                    if m.restarts > 0 {
                        tracing::info!(service = %m.name, restarts = m.restarts, "restarted");
                    }
                    m.restarts += 1;
                    m.child = Some(child);
                    m.started_at = now;
                    m.restart_at = None;
                }
                Err(e) => {
                    let delay = m.backoff.next_delay();
                    tracing::error!(service = %m.name, error = %e, retry_in = ?delay, "cannot start");
                    m.restart_at = Some(now + delay);
                }
            }
        }
        Ok(())
    }

    /// Supervise until `shutdown` fires, then stop every child (SIGTERM, then SIGKILL
    /// after `grace`).
    pub async fn run(mut self, shutdown: CancellationToken, grace: Duration) -> anyhow::Result<()> {
        let (desired_tx, desired_rx) =
            watch::channel(self.replicas.as_ref().map(|r| r.initial).unwrap_or(0));
        let nats = match &self.replicas {
            Some(cfg) => {
                let client = aifab_core::nats::connect(&self.nats_url, "supervisor")
                    .await
                    .with_context(|| {
                        format!(
                            "NATS url {}",
                            aifab_core::secret::redact_url(&self.nats_url)
                        )
                    })?;
                let follower = tokio::spawn(follow_decisions(
                    client.clone(),
                    cfg.scale_name.clone(),
                    cfg.max(),
                    desired_tx,
                    shutdown.clone(),
                ));
                tracing::info!(service = %cfg.service, initial = cfg.initial, max = cfg.max(),
                    decisions = %subjects::scale(&cfg.scale_name), "replica set follows scale decisions");
                Some((client, follower))
            }
            None => None,
        };
        let (nats, mut follower) = nats.unzip();
        // Why the supervisor stopped on its own, if it did.
        let mut failure: Option<anyhow::Error> = None;
        let mut reported: Option<(u32, Instant)> = None;
        loop {
            let now = Instant::now();
            let desired = *desired_rx.borrow();
            self.resize(desired);
            let mut procs = std::mem::take(&mut self.procs);
            let mut slots = std::mem::take(&mut self.slots);
            for m in procs.iter_mut().chain(slots.iter_mut()) {
                self.tend(m, now, grace)?;
            }
            self.procs = procs;
            self.slots = slots;

            if let (Some(client), Some(cfg)) = (&nats, &self.replicas) {
                let running = self.running_replicas();
                let due = match reported {
                    None => true,
                    Some((n, at)) => n != running || now.duration_since(at) >= REPORT_EVERY,
                };
                if due {
                    if reported.is_none_or(|(n, _)| n != running) {
                        tracing::info!(service = %cfg.service, replicas = running, desired, "replicas");
                    }
                    let report = ReplicaReport {
                        schema: tag(),
                        service: cfg.scale_name.clone(),
                        replicas: running,
                        actuator: "local".into(),
                        at_ms: aifab_core::now_ms(),
                    };
                    if let Err(e) = client
                        .publish(subjects::replicas(&cfg.scale_name), encode(&report).into())
                        .await
                    {
                        tracing::debug!(error = %e, "publishing the replica report failed");
                    }
                    reported = Some((running, now));
                }
            }
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_millis(250)) => {}
                _ = shutdown.cancelled() => break,
                // Only ends early on an error (or a panic): never lose it.
                r = async { follower.as_mut().expect("guarded").await }, if follower.is_some() => {
                    if shutdown.is_cancelled() {
                        break;
                    }
                    let e = match r {
                        Ok(Ok(())) => anyhow::anyhow!("the scale-decision follower stopped"),
                        Ok(Err(e)) => e,
                        Err(join) => anyhow::anyhow!("the scale-decision follower panicked: {join}"),
                    };
                    tracing::error!(
                        error = %format!("{e:#}"),
                        "replica set cannot follow scale decisions; stopping every service"
                    );
                    failure = Some(e);
                    break;
                }
            }
        }
        self.stop_all(grace).await;
        if let Some(client) = nats {
            let _ = tokio::time::timeout(Duration::from_secs(2), client.flush()).await;
        }
        match failure {
            Some(e) => Err(e.context("the supervisor stopped")),
            None => Ok(()),
        }
    }

    async fn stop_all(&mut self, grace: Duration) {
        for p in self.procs.iter().chain(self.slots.iter()) {
            if let Some(pid) = p.child.as_ref().and_then(|c| c.id()) {
                let _ = std::process::Command::new("kill")
                    .arg("-TERM")
                    .arg(pid.to_string())
                    .status();
            }
        }
        let deadline = tokio::time::Instant::now() + grace;
        for p in self.procs.iter_mut().chain(self.slots.iter_mut()) {
            if let Some(child) = p.child.as_mut() {
                match tokio::time::timeout_at(deadline, child.wait()).await {
                    Ok(_) => tracing::info!(service = %p.name, "stopped"),
                    Err(_) => {
                        tracing::warn!(service = %p.name, "did not stop in time; killing");
                        let _ = child.kill().await;
                    }
                }
            }
        }
    }
}

/// The command that builds what the local supervisor runs: every binary of the
/// workspace (the CLI and every service), as `scripts/build` (which `scripts/aifab` runs)
/// does, in the profile whose output directory `bin_dir` is.
pub fn build_command(bin_dir: &Path) -> String {
    // target/debug: the dev profile; target/release: --release; target/<p>: --profile <p>.
    let profile = match bin_dir.file_name().and_then(|n| n.to_str()) {
        Some("debug") => String::new(),
        Some("release") => " --release".to_string(),
        Some(profile) => format!(" --profile {profile}"),
        None => " --profile local".to_string(),
    };
    format!("cargo build{profile} --workspace --bins")
}

/// Follow `aifab.scale.<name>`: each decision's desired replicas (clamped to `max`).
/// Returns `Ok` only on shutdown: a failed subscription, or one that ends (the NATS
/// client closed), is an error the supervisor stops on, since the replica set would no
/// longer follow the autoscaler.
async fn follow_decisions(
    client: async_nats::Client,
    name: String,
    max: u32,
    desired: watch::Sender<u32>,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let subject = subjects::scale(&name);
    let mut sub = client
        .subscribe(subject.clone())
        .await
        .with_context(|| format!("subscribing to scale decisions on {subject}"))?;
    loop {
        let msg = tokio::select! {
            m = sub.next() => m,
            _ = shutdown.cancelled() => return Ok(()),
        };
        let Some(msg) = msg else {
            if shutdown.is_cancelled() {
                return Ok(());
            }
            anyhow::bail!(
                "the subscription to scale decisions on {subject} ended (NATS client closed)"
            );
        };
        match decode::<ScaleDecision>(&msg.payload) {
            Ok(d) => {
                let n = d.desired_replicas.min(max);
                if *desired.borrow() != n {
                    tracing::info!(
                        service = %name,
                        desired = n,
                        reason = %d.reason,
                        detail = %d.detail,
                        "scale decision"
                    );
                }
                desired.send_replace(n);
            }
            Err(e) => tracing::warn!(%subject, error = %e, "bad scale decision"),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    /// The supervisor's hint is the build `scripts/aifab` runs (through `scripts/build`),
    /// and that build has every service the supervisor starts.
    #[test]
    fn the_build_command_names_what_scripts_aifab_builds() {
        let cmd = super::build_command(Path::new("/x/target/release"));
        assert_eq!(cmd, "cargo build --release --workspace --bins");
        let debug = super::build_command(Path::new("/x/target/debug"));
        assert!(
            !debug.contains("--release") && !debug.contains("--profile"),
            "{debug}"
        );
        let local = super::build_command(Path::new("/x/target/local"));
        assert_eq!(local, "cargo build --profile local --workspace --bins");
        assert!(
            repo_file("scripts/aifab").contains("\"$root/scripts/build\""),
            "scripts/aifab builds through scripts/build"
        );
        assert!(
            repo_file("scripts/build").contains(&format!("exec {local}")),
            "scripts/build builds with the same profile and packages"
        );
        // --workspace: every service the supervisor runs is a package of the workspace.
        let members = repo_file("Cargo.toml");
        for s in crate::local::SERVICES {
            let dir = format!("services/{}", s.name);
            assert!(members.contains(&format!("\"{dir}\"")), "{dir} is a member");
            let manifest = repo_file(&format!("{dir}/Cargo.toml"));
            assert!(
                manifest.contains(&format!("name = \"{}\"", s.binary())),
                "{dir} builds {}",
                s.binary()
            );
        }
    }

    fn repo_file(path: &str) -> String {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
        std::fs::read_to_string(root.join(path)).unwrap_or_else(|e| panic!("{path}: {e}"))
    }
}
