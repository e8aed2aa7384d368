//! Training jobs: one at a time per trigger, on a blocking thread; the head is trained,
//! evaluated and written to the artifact store, registered as the candidate, promoted
//! when the gate allows, and announced on NATS with progress along the way.

use std::sync::{Arc, Mutex};

use aifab_core::artifacts::ArtifactStore;
use aifab_core::audit::{AuditLog, Change};
use aifab_core::messages::{
    encode, tag, Actor, AuditAction, ModelEvent, ModelEventKind, TrainProgress, TrainStage,
};
use aifab_core::registry::{
    promotion_gate, GateDecision, ModelRecord, Registry, CANDIDATE, PRODUCTION,
};
use aifab_core::topics::subjects;
use rdkafka::consumer::{CommitMode, Consumer, StreamConsumer};
use tokio::sync::mpsc;

use crate::dataset::{split, Example, TrainingWindow};
use crate::job::{artifact_files, write_artifact, JobOutput, Progress, Trainer};
use crate::metric_names;
use crate::Config;

/// A job's output with the encoder it was trained on.
struct FinishedJob {
    output: JobOutput,
    encoder: String,
    encoder_sha256: String,
}

/// What training jobs use: the loaded encoder, the window, the registry, the artifact
/// store, NATS for events, and the examples consumer (whose offsets a job commits).
pub(crate) struct Jobs {
    pub trainer: Arc<Mutex<Trainer>>,
    pub window: Arc<Mutex<TrainingWindow>>,
    pub registry: Registry,
    pub store: ArtifactStore,
    pub nats: async_nats::Client,
    pub consumer: Arc<StreamConsumer>,
    pub config: Config,
    /// Where each registration and promotion is recorded before it is made.
    pub audit: AuditLog,
}

/// How a training job ended (the `result` label of its counter).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum JobResult {
    Ok,
    Failed,
}

impl JobResult {
    fn as_str(self) -> &'static str {
        match self {
            JobResult::Ok => "ok",
            JobResult::Failed => "failed",
        }
    }

    fn count(self) {
        metrics::counter!(metric_names::JOBS_TOTAL, "result" => self.as_str()).increment(1);
    }
}

impl Jobs {
    /// Run a job for each task triggered, one at a time, until the triggers end.
    pub async fn run(
        mut self,
        mut triggers: mpsc::UnboundedReceiver<String>,
    ) -> anyhow::Result<()> {
        while let Some(task) = triggers.recv().await {
            let examples = {
                let mut w = self.window.lock().expect("window lock");
                w.mark_trained(&task);
                w.examples(&task)
            };
            if examples.len() < 10 {
                tracing::warn!(%task, examples = examples.len(),
                    "too few examples to train; skipping");
                continue;
            }
            match self.train_one(&task, examples).await {
                Ok(version) => {
                    JobResult::Ok.count();
                    tracing::info!(%task, %version, "training job done");
                    // Mark what the window has seen, so a restart does not count it as new.
                    if let Ok(pos) = self.consumer.position() {
                        let _ = self.consumer.commit(&pos, CommitMode::Async);
                    }
                }
                Err(e) => {
                    JobResult::Failed.count();
                    tracing::error!(%task, error = %format!("{e:#}"), "training job failed");
                    let msg = progress_message(
                        &task,
                        TrainStage::Failed,
                        0,
                        0,
                        None,
                        Some(format!("{e:#}")),
                    );
                    let _ = self
                        .nats
                        .publish(subjects::TRAIN_PROGRESS, encode(&msg).into())
                        .await;
                }
            }
        }
        Ok(())
    }

    /// Train, evaluate, write the artifact, register, gate, announce. Returns the version.
    async fn train_one(&mut self, task: &str, examples: Vec<Example>) -> anyhow::Result<String> {
        let Jobs {
            trainer,
            registry,
            store,
            nats,
            config,
            audit,
            ..
        } = self;
        let (train, eval) = split(&examples, config.eval_fraction, config.seed);
        let version = registry.next_version(task).await?;
        let (ptx, mut prx) = mpsc::unbounded_channel::<Progress>();
        let t = trainer.clone();
        let job = tokio::task::spawn_blocking(move || {
            let mut t = t.lock().expect("trainer lock");
            t.run(&train, &eval, |p| {
                let _ = ptx.send(p);
            })
            .map(|output| FinishedJob {
                output,
                encoder: t.encoder_name.clone(),
                encoder_sha256: t.encoder_sha256.clone(),
            })
        });
        // Forward progress to NATS while the job runs (throttled to one event per epoch/batch).
        let nats2 = nats.clone();
        let task2 = task.to_string();
        let forward = tokio::spawn(async move {
            while let Some(p) = prx.recv().await {
                let msg = match p {
                    Progress::Embedding { done, total } => progress_message(
                        &task2,
                        TrainStage::Embedding,
                        done as u64,
                        total as u64,
                        None,
                        None,
                    ),
                    Progress::Epoch(e) => progress_message(
                        &task2,
                        TrainStage::Training,
                        e.epoch as u64,
                        e.max_epochs as u64,
                        Some(e.validation_loss),
                        None,
                    ),
                    Progress::Evaluating => {
                        progress_message(&task2, TrainStage::Evaluating, 0, 1, None, None)
                    }
                };
                let _ = nats2
                    .publish(subjects::TRAIN_PROGRESS, encode(&msg).into())
                    .await;
            }
        });
        let FinishedJob {
            output: out,
            encoder,
            encoder_sha256,
        } = job.await??;
        let _ = forward.await;

        let files = {
            let t = trainer.lock().expect("trainer lock");
            artifact_files(task, &version, &t, &out)?
        };
        let location = write_artifact(store, task, &version, &files).await?;
        // The digest of what workers serve (the head and its labels), for them to check.
        let served = [aifab_model::head::HEAD_FILE, aifab_model::head::LABELS_FILE];
        let artifact_sha256 = aifab_core::artifacts::files_sha256(
            files
                .iter()
                .filter(|(name, _)| served.contains(&name.as_str()))
                .map(|(name, bytes)| (name.as_str(), bytes.as_slice())),
        );
        let mut metrics_map = std::collections::BTreeMap::new();
        metrics_map.insert("accuracy".to_string(), out.evaluation.accuracy);
        metrics_map.insert("macro_f1".to_string(), out.evaluation.macro_f1);
        let record = ModelRecord {
            task: task.to_string(),
            version: version.clone(),
            artifact_uri: location.uri(),
            encoder,
            encoder_sha256,
            artifact_sha256: Some(artifact_sha256),
            labels: out.head.labels().to_vec(),
            metrics: metrics_map.clone(),
            train_examples: out.report.train_examples + out.report.validation_examples,
            eval_examples: out.evaluation.examples,
            created_at_ms: aifab_core::now_ms(),
        };
        let me = Actor::service(crate::SPEC.name);
        let published = format!(
            "candidate, macro-F1 {:.4} on {} held-out examples",
            out.evaluation.macro_f1, out.evaluation.examples
        );
        let change = Change::new(AuditAction::ModelPublished, me.clone(), published);
        audit.record(change.task(task).version(&version)).await?;
        registry.put(&record).await?;
        registry.set_candidate(task, &version).await?;
        publish_event(nats, ModelEventKind::Published, &record, Some(CANDIDATE)).await?;

        let production_f1 = match registry.resolve(task, PRODUCTION).await? {
            Some(p) => p.metrics.get("macro_f1").copied(),
            None => None,
        };
        match promotion_gate(
            out.evaluation.macro_f1,
            production_f1,
            config.promotion_tolerance,
            config.promotion_floor,
        ) {
            GateDecision::Promote { reason } => {
                let change = Change::new(AuditAction::ModelPromoted, me, reason.clone());
                audit.record(change.task(task).version(&version)).await?;
                registry.set_production(task, &version).await?;
                publish_event(nats, ModelEventKind::Promoted, &record, Some(PRODUCTION)).await?;
                tracing::info!(%task, %version, %reason, "promoted to production");
            }
            GateDecision::Reject { reason } => {
                metrics::counter!(metric_names::PROMOTIONS_REJECTED_TOTAL).increment(1);
                tracing::warn!(%task, %version, %reason, "not promoted: stays candidate");
            }
        }
        let done = progress_message(task, TrainStage::Done, 1, 1, None, Some(version.clone()));
        nats.publish(subjects::TRAIN_PROGRESS, encode(&done).into())
            .await?;
        Ok(version)
    }
}

/// A `train.progress/v1` message for `task`, stamped now.
fn progress_message(
    task: &str,
    stage: TrainStage,
    done: u64,
    total: u64,
    loss: Option<f64>,
    detail: Option<String>,
) -> TrainProgress {
    TrainProgress {
        schema: tag(),
        task: task.to_string(),
        stage,
        done,
        total,
        validation_loss: loss,
        detail,
        at_ms: aifab_core::now_ms(),
    }
}

/// Announce a model event (published, promoted, rolled back) on its NATS subject.
pub async fn publish_event(
    nats: &async_nats::Client,
    kind: ModelEventKind,
    record: &ModelRecord,
    alias: Option<&str>,
) -> anyhow::Result<()> {
    let subject = match kind {
        ModelEventKind::Published => subjects::MODEL_PUBLISHED,
        ModelEventKind::Promoted => subjects::MODEL_PROMOTED,
        ModelEventKind::RolledBack => subjects::MODEL_ROLLED_BACK,
    };
    let event = ModelEvent {
        schema: tag(),
        kind,
        task: record.task.clone(),
        version: record.version.clone(),
        artifact_uri: record.artifact_uri.clone(),
        alias: alias.map(String::from),
        metrics: record.metrics.clone(),
        at_ms: aifab_core::now_ms(),
    };
    nats.publish(subject, encode(&event).into()).await?;
    nats.flush().await?;
    Ok(())
}
