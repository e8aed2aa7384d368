//! The model the worker serves now, and the hot swap that replaces it.
//!
//! The batch loop takes an `Arc` of the current classifier once per batch, so a batch is
//! computed by exactly one version however the slot changes meanwhile. New versions load
//! in the background (NATS `aifab.model.*`) and replace the slot between batches.

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use aifab_core::artifacts::{fetch_version, S3Config};
use aifab_core::health::Readiness;
use aifab_core::messages::{decode, ModelEvent, ModelEventKind};
use aifab_core::registry::{ModelRecord, Registry, Rollout, CANDIDATE, PRODUCTION};
use aifab_model::head::{HEAD_FILE, LABELS_FILE};
use aifab_model::{ClassificationHead, Classifier, Encoder};
use anyhow::Context;
use futures::StreamExt;
use tokio_util::sync::CancellationToken;

use crate::verify;

/// Which model events move the worker to a new version.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum FollowPolicy {
    /// The registry's `production` alias: promotions and rollbacks.
    Production,
    /// Every newly published version (for single-model setups and tests).
    Latest,
}

/// Does this event move a worker of `task` following `policy`?
pub fn should_follow(event: &ModelEvent, task: &str, policy: FollowPolicy) -> bool {
    if event.task != task {
        return false;
    }
    match (policy, event.kind) {
        (FollowPolicy::Latest, ModelEventKind::Published) => true,
        (_, ModelEventKind::Promoted | ModelEventKind::RolledBack) => {
            event.alias.as_deref().is_none_or(|a| a == "production")
        }
        (FollowPolicy::Production, ModelEventKind::Published) => false,
    }
}

/// Where the worker gets a registry version's head from: local artifact URIs are read in
/// place, s3:// ones are downloaded into `cache_dir` first (`aifab_core::artifacts`).
#[derive(Debug, Clone)]
pub struct ArtifactFetch {
    pub cache_dir: PathBuf,
    pub s3: S3Config,
}

impl Default for ArtifactFetch {
    fn default() -> Self {
        ArtifactFetch {
            cache_dir: PathBuf::from(aifab_core::artifacts::default_cache_dir()),
            s3: S3Config::default(),
        }
    }
}

impl ArtifactFetch {
    /// The local directory holding the head files of the version at `uri`.
    pub async fn head_dir(&self, uri: &str) -> anyhow::Result<PathBuf> {
        let dir = fetch_version(uri, &[HEAD_FILE, LABELS_FILE], &self.cache_dir, &self.s3)
            .await
            .with_context(|| format!("fetching the head of {uri}"))?;
        Ok(dir)
    }
}

pub struct ModelSlot {
    encoder: Arc<Encoder>,
    current: RwLock<Option<Arc<Classifier>>>,
    /// The registry's candidate and how it takes traffic (canary share or shadow).
    candidate: RwLock<Option<(Arc<Classifier>, Rollout)>>,
    readiness: Readiness,
    fetch: ArtifactFetch,
    /// Serve registry records that carry no artifact digest (written before digests).
    allow_unverified: bool,
    /// Where refused models are alerted (`aifab.alerts.model_verification`).
    alerts: Option<async_nats::Client>,
    /// Held while a registry version is read and loaded as production (NATS events and
    /// the registry check), so the two never race each other to the slot.
    loading: tokio::sync::Mutex<()>,
}

impl ModelSlot {
    pub fn new(encoder: Arc<Encoder>, readiness: Readiness) -> Self {
        Self::with_fetch(encoder, readiness, ArtifactFetch::default())
    }

    /// A slot that fetches registry versions' heads with `fetch`.
    pub fn with_fetch(encoder: Arc<Encoder>, readiness: Readiness, fetch: ArtifactFetch) -> Self {
        readiness.register("model", "no model loaded yet");
        ModelSlot {
            encoder,
            current: RwLock::new(None),
            candidate: RwLock::new(None),
            readiness,
            fetch,
            allow_unverified: false,
            alerts: None,
            loading: tokio::sync::Mutex::new(()),
        }
    }

    /// Serve records without an artifact digest (see [`crate::verify`]).
    pub fn allow_unverified(mut self, allow: bool) -> Self {
        self.allow_unverified = allow;
        self
    }

    /// Alert refused models on this NATS client.
    pub fn with_alerts(mut self, nats: async_nats::Client) -> Self {
        self.alerts = Some(nats);
        self
    }

    /// Fetch the version `record` names, verify its digest, then make it current.
    pub async fn load_record(self: &Arc<Self>, record: &ModelRecord) -> anyhow::Result<()> {
        let dir = self.verified_dir(record).await?;
        let (s, v) = (self.clone(), record.version.clone());
        tokio::task::spawn_blocking(move || s.load(dir.path(), &v))
            .await
            .context("model load task")?
    }

    /// Fetch the version `record` names, verify it, and make it the candidate under `rollout`.
    pub async fn set_candidate_record(
        self: &Arc<Self>,
        record: &ModelRecord,
        rollout: Rollout,
    ) -> anyhow::Result<()> {
        let dir = self.verified_dir(record).await?;
        let (s, v) = (self.clone(), record.version.clone());
        tokio::task::spawn_blocking(move || s.set_candidate(Some((dir.path(), &v)), rollout))
            .await
            .context("model load task")?
    }

    /// A private copy of `record`'s head, once the copy matches the record's digest: what
    /// is checked is what is loaded, whatever happens to the fetched files meanwhile.
    async fn verified_dir(&self, record: &ModelRecord) -> anyhow::Result<tempfile::TempDir> {
        let dir = self.fetch.head_dir(&record.artifact_uri).await?;
        let (copy, digest) = tokio::task::spawn_blocking(move || {
            let copy = tempfile::Builder::new().prefix("aifab-head-").tempdir()?;
            for name in [HEAD_FILE, LABELS_FILE] {
                std::fs::copy(dir.join(name), copy.path().join(name))
                    .with_context(|| format!("copying {}", dir.join(name).display()))?;
            }
            let digest = verify::head_sha256(copy.path())?;
            Ok::<_, anyhow::Error>((copy, digest))
        })
        .await
        .context("digest task")??;
        if let Err(refusal) = verify::check(record, &digest, self.allow_unverified) {
            self.refuse(&refusal).await;
            return Err(refusal.into());
        }
        Ok(copy)
    }

    /// Log, count and alert a refused model.
    pub async fn refuse(&self, refusal: &verify::Refusal) {
        verify::report(refusal, self.alerts.as_ref()).await;
    }

    /// Fetch the head of the version at `uri` (download if remote), then make it current.
    pub async fn load_uri(self: &Arc<Self>, uri: &str, version: &str) -> anyhow::Result<()> {
        let dir = self.fetch.head_dir(uri).await?;
        let (s, v) = (self.clone(), version.to_string());
        tokio::task::spawn_blocking(move || s.load(&dir, &v))
            .await
            .context("model load task")?
    }

    pub fn current(&self) -> Option<Arc<Classifier>> {
        self.current.read().expect("model slot lock").clone()
    }

    /// The candidate taking canary or shadow traffic, if any.
    pub fn candidate(&self) -> Option<(Arc<Classifier>, Rollout)> {
        self.candidate.read().expect("model slot lock").clone()
    }

    /// Load a candidate head (blocking) for `rollout`, or clear it with `Rollout::Off`.
    pub fn set_candidate(
        &self,
        head: Option<(&Path, &str)>,
        rollout: Rollout,
    ) -> anyhow::Result<()> {
        let value = match (head, rollout) {
            (_, Rollout::Off) | (None, _) => None,
            (Some((dir, version)), rollout) => {
                let h = ClassificationHead::load(dir)?;
                Some((
                    Arc::new(Classifier::new(
                        self.encoder.clone(),
                        h,
                        version.to_string(),
                    )?),
                    rollout,
                ))
            }
        };
        let changed = value.as_ref().map(|(c, r)| (c.version.clone(), *r));
        *self.candidate.write().expect("model slot lock") = value;
        tracing::info!(candidate = ?changed, "rollout changed");
        Ok(())
    }

    pub fn encoder(&self) -> &Arc<Encoder> {
        &self.encoder
    }

    /// Load a head artifact (blocking) and make it current.
    pub fn load(&self, dir: &Path, version: &str) -> anyhow::Result<()> {
        let head = ClassificationHead::load(dir)?;
        let classifier = Classifier::new(self.encoder.clone(), head, version.to_string())?;
        let previous = self
            .current
            .write()
            .expect("model slot lock")
            .replace(Arc::new(classifier))
            .map(|c| c.version.clone());
        self.readiness
            .set("model", true, format!("version {version}"));
        metrics::counter!(crate::metric_names::MODEL_SWAPS).increment(1);
        tracing::info!(version, previous = previous.as_deref().unwrap_or("none"), dir = %dir.display(), "model loaded");
        Ok(())
    }
}

/// Keep the candidate in step with the registry's `candidate` alias and rollout
/// (`aifab models rollout`), polling Redis every two seconds.
pub async fn follow_rollout(
    redis: aifab_core::redis_store::RedisHandle,
    slot: Arc<ModelSlot>,
    task: String,
    shutdown: CancellationToken,
) {
    let Ok(conn) = redis.get().await else { return };
    let mut registry = Registry::new(conn);
    loop {
        let wanted = async {
            let rollout = registry.rollout(&task).await?;
            let record = if rollout == Rollout::Off {
                None
            } else {
                registry.resolve(&task, CANDIDATE).await?
            };
            Ok::<_, redis::RedisError>((rollout, record))
        }
        .await;
        match wanted {
            Ok((rollout, record)) => {
                let have = slot.candidate().map(|(c, r)| (c.version.clone(), r));
                let want = record
                    .as_ref()
                    .filter(|_| rollout != Rollout::Off)
                    .map(|r| (r.version.clone(), rollout));
                if have != want {
                    let result = match record {
                        Some(r) if rollout != Rollout::Off => {
                            slot.set_candidate_record(&r, rollout).await
                        }
                        _ => slot.set_candidate(None, Rollout::Off),
                    };
                    if let Err(e) = result {
                        tracing::error!(%task, error = %format!("{e:#}"), "candidate failed to load");
                    }
                }
            }
            Err(e) => tracing::warn!(error = %e, "reading the rollout failed; retrying"),
        }
        tokio::select! {
            _ = tokio::time::sleep(std::time::Duration::from_secs(2)) => {}
            _ = shutdown.cancelled() => return,
        }
    }
}

/// How `follow_production` polls the registry.
#[derive(Debug, Clone, Copy)]
pub struct Reconcile {
    /// Between checks once a version is served (0: load once, then leave it to NATS).
    pub every: Duration,
    /// Between checks while nothing is served yet.
    pub waiting: Duration,
    /// Before a version that failed to load or verify is tried again; doubled after each
    /// failure of the same version, up to `retry_failed_max`.
    pub retry_failed: Duration,
    pub retry_failed_max: Duration,
}

impl Reconcile {
    pub fn every(every: Duration) -> Self {
        Reconcile {
            every,
            waiting: Duration::from_secs(2),
            retry_failed: Duration::from_secs(60),
            retry_failed_max: Duration::from_secs(30 * 60),
        }
    }
}

/// A production version that failed to load, and how long to leave it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    pub version: String,
    pub ago: Duration,
    pub wait: Duration,
}

/// What a check of the registry should do, given what is served.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProductionStep {
    /// Served already: nothing.
    Keep,
    /// Load this version (first load, or a change this worker has not followed).
    Load,
    /// It failed recently: wait before trying it again.
    Backoff,
}

/// Decide one check: `serving` is the slot's version, `production` the registry's.
pub fn production_step(
    serving: Option<&str>,
    production: &str,
    failed: Option<&Failure>,
) -> ProductionStep {
    if serving == Some(production) {
        return ProductionStep::Keep;
    }
    match failed {
        Some(f) if f.version == production && f.ago < f.wait => ProductionStep::Backoff,
        _ => ProductionStep::Load,
    }
}

/// How long to leave `version` after it failed (again): the first wait, doubled for each
/// failure in a row of the same version, at most `max`.
pub fn next_wait(
    previous: Option<&Failure>,
    version: &str,
    first: Duration,
    max: Duration,
) -> Duration {
    match previous {
        Some(f) if f.version == version => (f.wait * 2).min(max),
        _ => first,
    }
}

/// Serve the registry's production version of `task`: load it once it exists, then check
/// again every `reconcile.every`, so a promotion or rollback whose NATS event this worker
/// missed (core NATS does not replay: a worker cut off while it was published never hears
/// of it) is followed anyway, within one interval of the worker reaching Redis again.
pub async fn follow_production(
    redis: aifab_core::redis_store::RedisHandle,
    slot: Arc<ModelSlot>,
    task: String,
    reconcile: Reconcile,
    shutdown: CancellationToken,
) {
    let Ok(conn) = redis.get().await else { return };
    let mut registry = Registry::new(conn);
    let mut said_waiting = false;
    // The last failure, and when it happened.
    let mut failed: Option<(Failure, std::time::Instant)> = None;
    loop {
        if slot.current().is_some() && reconcile.every.is_zero() {
            return;
        }
        // One load at a time (NATS events load too), and the registry read under it: a
        // rollback loaded from NATS meanwhile is not replaced by what was read before it.
        let guard = slot.loading.lock().await;
        let serving = slot.current().map(|c| c.version.clone());
        match registry.resolve(&task, PRODUCTION).await {
            Ok(Some(record)) => {
                let last = failed.as_ref().map(|(f, at)| Failure {
                    ago: at.elapsed(),
                    ..f.clone()
                });
                if production_step(serving.as_deref(), &record.version, last.as_ref())
                    == ProductionStep::Load
                {
                    match slot.load_record(&record).await {
                        Ok(()) => {
                            failed = None;
                            if let Some(was) = &serving {
                                metrics::counter!(crate::metric_names::MODEL_RECONCILED)
                                    .increment(1);
                                tracing::warn!(%task, was, now = %record.version,
                                    "production moved without this worker hearing of it on NATS; followed");
                            }
                        }
                        Err(e) => {
                            let wait = next_wait(
                                last.as_ref(),
                                &record.version,
                                reconcile.retry_failed,
                                reconcile.retry_failed_max,
                            );
                            let failure = Failure {
                                version: record.version.clone(),
                                ago: Duration::ZERO,
                                wait,
                            };
                            failed = Some((failure, std::time::Instant::now()));
                            metrics::counter!(crate::metric_names::MODEL_LOAD_FAILURES)
                                .increment(1);
                            // Still nothing served (checked under the load lock): say why.
                            if slot.current().is_none() {
                                slot.readiness.set(
                                    "model",
                                    false,
                                    format!("production model of {task}: {e:#}"),
                                );
                            }
                            tracing::error!(%task, version = %record.version,
                                error = %format!("{e:#}"), retry_in_s = wait.as_secs(),
                                "production model failed to load; keeping what is served");
                        }
                    }
                }
            }
            Ok(None) => {
                if slot.current().is_none() && !said_waiting {
                    slot.readiness.set(
                        "model",
                        false,
                        format!("no production model for task {task:?} yet"),
                    );
                    tracing::warn!(%task, "no production model in the registry yet; waiting");
                    said_waiting = true;
                }
            }
            Err(e) => tracing::warn!(error = %e, "reading the registry failed; retrying"),
        }
        drop(guard);
        let pause = if slot.current().is_some() {
            reconcile.every
        } else {
            reconcile.waiting
        };
        tokio::select! {
            _ = tokio::time::sleep(pause) => {}
            _ = shutdown.cancelled() => return,
        }
    }
}

/// Follow model events on NATS until shutdown, loading each followed version as the
/// registry records it: an event says *which* version, never *where* it is, so a forged
/// event can at most ask for a version the registry already vouches for.
pub async fn follow_events(
    nats: async_nats::Client,
    redis: aifab_core::redis_store::RedisHandle,
    slot: Arc<ModelSlot>,
    task: String,
    policy: FollowPolicy,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let mut sub = nats
        .subscribe(aifab_core::topics::subjects::MODEL_ALL)
        .await?;
    loop {
        let msg = tokio::select! {
            m = sub.next() => match m { Some(m) => m, None => return Ok(()) },
            _ = shutdown.cancelled() => return Ok(()),
        };
        let event = match decode::<ModelEvent>(&msg.payload) {
            Ok(e) => e,
            Err(e) => {
                tracing::warn!(subject = %msg.subject, error = %e, "ignoring malformed model event");
                continue;
            }
        };
        if !should_follow(&event, &task, policy) {
            continue;
        }
        let Some(conn) = redis.try_get() else {
            metrics::counter!(crate::metric_names::MODEL_LOAD_FAILURES).increment(1);
            tracing::error!(version = %event.version,
                "a model event while Redis is not connected: the registry cannot vouch for it; ignored");
            continue;
        };
        let record = Registry::new(conn).get(&event.task, &event.version).await;
        let record = match record {
            Ok(Some(r)) => r,
            Ok(None) => {
                let refusal = verify::Refusal::NotInRegistry {
                    task: event.task.clone(),
                    version: event.version.clone(),
                };
                slot.refuse(&refusal).await;
                continue;
            }
            Err(e) => {
                metrics::counter!(crate::metric_names::MODEL_LOAD_FAILURES).increment(1);
                tracing::error!(version = %event.version, error = %e,
                    "reading the registry for a model event failed; keeping the current model");
                continue;
            }
        };
        if record.artifact_uri != event.artifact_uri {
            tracing::warn!(version = %event.version, event_uri = %event.artifact_uri,
                registry_uri = %record.artifact_uri,
                "a model event names another artifact than the registry; loading the registry's");
        }
        let _loading = slot.loading.lock().await;
        if let Err(e) = slot.load_record(&record).await {
            metrics::counter!(crate::metric_names::MODEL_LOAD_FAILURES).increment(1);
            tracing::error!(
                version = %event.version,
                error = %format!("{e:#}"),
                "new model version failed to load; keeping the current one"
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use aifab_core::messages::tag;

    #[test]
    fn production_is_loaded_when_it_differs_and_a_failure_waits_before_a_retry() {
        let failure = |version: &str, ago: u64| Failure {
            version: version.into(),
            ago: Duration::from_secs(ago),
            wait: Duration::from_secs(60),
        };
        let step =
            |serving, failed: Option<Failure>| production_step(serving, "v2", failed.as_ref());
        assert_eq!(step(Some("v2"), None), ProductionStep::Keep);
        assert_eq!(step(None, None), ProductionStep::Load);
        // A rollback or promotion this worker never heard of.
        assert_eq!(step(Some("v1"), None), ProductionStep::Load);
        // v2 failed 10 s ago: not again yet; after its wait, yes.
        assert_eq!(
            step(Some("v1"), Some(failure("v2", 10))),
            ProductionStep::Backoff
        );
        assert_eq!(step(None, Some(failure("v2", 10))), ProductionStep::Backoff);
        assert_eq!(
            step(Some("v1"), Some(failure("v2", 61))),
            ProductionStep::Load
        );
        // Another version's failure does not hold this one back.
        assert_eq!(
            step(Some("v1"), Some(failure("v3", 1))),
            ProductionStep::Load
        );
    }

    #[test]
    fn a_version_that_keeps_failing_is_tried_less_and_less_often() {
        let (first, max) = (Duration::from_secs(60), Duration::from_secs(1800));
        let mut last: Option<Failure> = None;
        let mut waits = Vec::new();
        for _ in 0..7 {
            let wait = next_wait(last.as_ref(), "v2", first, max);
            waits.push(wait.as_secs());
            last = Some(Failure {
                version: "v2".into(),
                ago: Duration::ZERO,
                wait,
            });
        }
        assert_eq!(waits, vec![60, 120, 240, 480, 960, 1800, 1800]);
        // A new version starts again at the first wait.
        assert_eq!(next_wait(last.as_ref(), "v3", first, max), first);
    }

    fn event(kind: ModelEventKind, task: &str, alias: Option<&str>) -> ModelEvent {
        ModelEvent {
            schema: tag(),
            kind,
            task: task.into(),
            version: "v2".into(),
            artifact_uri: "file:///tmp/x".into(),
            alias: alias.map(Into::into),
            metrics: Default::default(),
            at_ms: 0,
        }
    }

    #[test]
    fn follows_production_moves_only() {
        use FollowPolicy::*;
        use ModelEventKind::*;
        assert!(should_follow(
            &event(Promoted, "spam", Some("production")),
            "spam",
            Production
        ));
        assert!(should_follow(
            &event(RolledBack, "spam", None),
            "spam",
            Production
        ));
        assert!(!should_follow(
            &event(Promoted, "spam", Some("candidate")),
            "spam",
            Production
        ));
        assert!(!should_follow(
            &event(Published, "spam", None),
            "spam",
            Production
        ));
        assert!(should_follow(
            &event(Published, "spam", None),
            "spam",
            Latest
        ));
        assert!(!should_follow(
            &event(Published, "other", None),
            "spam",
            Latest
        ));
    }

    #[tokio::test]
    async fn local_heads_are_read_in_place_and_missing_ones_name_the_uri() {
        let dir = tempfile::tempdir().unwrap();
        let head = dir.path().join("spam/v1");
        aifab_model::testing::write_random_head(&head, 8, &["a", "b"], 1).unwrap();
        let fetch = ArtifactFetch {
            cache_dir: dir.path().join("cache"),
            s3: S3Config::default(),
        };
        let uri = format!("file://{}", head.display());
        assert_eq!(fetch.head_dir(&uri).await.unwrap(), head);
        assert_eq!(
            fetch.head_dir(&head.display().to_string()).await.unwrap(),
            head
        );
        let missing = format!("file://{}", dir.path().join("spam/v2").display());
        let err = format!("{:#}", fetch.head_dir(&missing).await.unwrap_err());
        assert!(err.contains(&missing) && err.contains(HEAD_FILE), "{err}");
        let err = format!("{:#}", fetch.head_dir("gs://bucket/x").await.unwrap_err());
        assert!(err.contains("unsupported scheme"), "{err}");
    }
}
