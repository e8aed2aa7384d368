//! The model the worker serves now, and the hot swap that replaces it.
//!
//! The batch loop takes an `Arc` of the current classifier once per batch, so a batch is
//! computed by exactly one version however the slot changes meanwhile. New versions load
//! in the background (NATS `aifab.model.*`) and replace the slot between batches.

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use aifab_core::health::Readiness;
use aifab_core::messages::{decode, ModelEvent, ModelEventKind};
use aifab_core::registry::{Registry, Rollout, CANDIDATE};
use aifab_model::{ClassificationHead, Classifier, Encoder};
use futures::StreamExt;
use tokio_util::sync::CancellationToken;

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

/// `file:///a/b` or `/a/b` → `/a/b`. Other schemes need an object-store fetch first.
pub fn artifact_dir(uri: &str) -> anyhow::Result<PathBuf> {
    if let Some(p) = uri.strip_prefix("file://") {
        return Ok(PathBuf::from(p));
    }
    anyhow::ensure!(!uri.contains("://"), "unsupported artifact URI {uri:?}: expected file:// or a path");
    Ok(PathBuf::from(uri))
}

pub struct ModelSlot {
    encoder: Arc<Encoder>,
    current: RwLock<Option<Arc<Classifier>>>,
    /// The registry's candidate and how it takes traffic (canary share or shadow).
    candidate: RwLock<Option<(Arc<Classifier>, Rollout)>>,
    readiness: Readiness,
}

impl ModelSlot {
    pub fn new(encoder: Arc<Encoder>, readiness: Readiness) -> Self {
        readiness.register("model", "no model loaded yet");
        ModelSlot { encoder, current: RwLock::new(None), candidate: RwLock::new(None), readiness }
    }

    pub fn current(&self) -> Option<Arc<Classifier>> {
        self.current.read().expect("model slot lock").clone()
    }

    /// The candidate taking canary or shadow traffic, if any.
    pub fn candidate(&self) -> Option<(Arc<Classifier>, Rollout)> {
        self.candidate.read().expect("model slot lock").clone()
    }

    /// Load a candidate head (blocking) for `rollout`, or clear it with `Rollout::Off`.
    pub fn set_candidate(&self, head: Option<(&Path, &str)>, rollout: Rollout) -> anyhow::Result<()> {
        let value = match (head, rollout) {
            (_, Rollout::Off) | (None, _) => None,
            (Some((dir, version)), rollout) => {
                let h = ClassificationHead::load(dir)?;
                Some((Arc::new(Classifier::new(self.encoder.clone(), h, version.to_string())?), rollout))
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
        self.readiness.set("model", true, format!("version {version}"));
        metrics::counter!("aifab_inference_worker_model_swaps_total").increment(1);
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
            let record = if rollout == Rollout::Off { None } else { registry.resolve(&task, CANDIDATE).await? };
            Ok::<_, redis::RedisError>((rollout, record))
        }
        .await;
        match wanted {
            Ok((rollout, record)) => {
                let have = slot.candidate().map(|(c, r)| (c.version.clone(), r));
                let want = record.as_ref().filter(|_| rollout != Rollout::Off).map(|r| (r.version.clone(), rollout));
                if have != want {
                    let s = slot.clone();
                    let result = tokio::task::spawn_blocking(move || match record {
                        Some(r) if rollout != Rollout::Off => {
                            let dir = artifact_dir(&r.artifact_uri)?;
                            s.set_candidate(Some((&dir, &r.version)), rollout)
                        }
                        _ => s.set_candidate(None, Rollout::Off),
                    })
                    .await;
                    if let Ok(Err(e)) = result {
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

/// Load the registry's production version of `task` once it exists (polling Redis),
/// unless a model event got there first.
pub async fn load_production(
    redis: aifab_core::redis_store::RedisHandle,
    slot: Arc<ModelSlot>,
    task: String,
    shutdown: CancellationToken,
) {
    let Ok(conn) = redis.get().await else { return };
    let mut registry = aifab_core::registry::Registry::new(conn);
    let mut said_waiting = false;
    while slot.current().is_none() && !shutdown.is_cancelled() {
        match registry.resolve(&task, aifab_core::registry::PRODUCTION).await {
            Ok(Some(record)) => {
                let s = slot.clone();
                let result = tokio::task::spawn_blocking(move || {
                    let dir = artifact_dir(&record.artifact_uri)?;
                    s.load(&dir, &record.version)
                })
                .await;
                match result {
                    Ok(Ok(())) => return,
                    Ok(Err(e)) => {
                        slot.readiness.set("model", false, format!("production model of {task}: {e:#}"));
                        tracing::error!(%task, error = %format!("{e:#}"), "production model failed to load");
                    }
                    Err(e) => tracing::error!(error = %e, "model load task failed"),
                }
            }
            Ok(None) => {
                if !said_waiting {
                    slot.readiness.set("model", false, format!("no production model for task {task:?} yet"));
                    tracing::warn!(%task, "no production model in the registry yet; waiting");
                    said_waiting = true;
                }
            }
            Err(e) => tracing::warn!(error = %e, "reading the registry failed; retrying"),
        }
        tokio::select! {
            _ = tokio::time::sleep(std::time::Duration::from_secs(2)) => {}
            _ = shutdown.cancelled() => return,
        }
    }
}

/// Follow model events on NATS until shutdown, loading each followed version.
pub async fn follow_events(
    nats: async_nats::Client,
    slot: Arc<ModelSlot>,
    task: String,
    policy: FollowPolicy,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let mut sub = nats.subscribe(aifab_core::topics::subjects::MODEL_ALL).await?;
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
        let slot = slot.clone();
        let version = event.version.clone();
        let result = tokio::task::spawn_blocking(move || {
            let dir = artifact_dir(&event.artifact_uri)?;
            slot.load(&dir, &event.version)
        })
        .await?;
        if let Err(e) = result {
            metrics::counter!("aifab_inference_worker_model_load_failures_total").increment(1);
            tracing::error!(version, error = %format!("{e:#}"), "new model version failed to load; keeping the current one");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use aifab_core::messages::tag;

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
        assert!(should_follow(&event(Promoted, "spam", Some("production")), "spam", Production));
        assert!(should_follow(&event(RolledBack, "spam", None), "spam", Production));
        assert!(!should_follow(&event(Promoted, "spam", Some("candidate")), "spam", Production));
        assert!(!should_follow(&event(Published, "spam", None), "spam", Production));
        assert!(should_follow(&event(Published, "spam", None), "spam", Latest));
        assert!(!should_follow(&event(Published, "other", None), "spam", Latest));
    }

    #[test]
    fn artifact_uris() {
        assert_eq!(artifact_dir("file:///a/b").unwrap(), PathBuf::from("/a/b"));
        assert_eq!(artifact_dir("/a/b").unwrap(), PathBuf::from("/a/b"));
        assert!(artifact_dir("s3://bucket/x").is_err());
    }
}
