//! aifab inference-worker: consumes `aifab.inference.requests` in a consumer group,
//! batches requests dynamically through candle, and produces `aifab.predictions` and
//! `aifab.usage` exactly once (Kafka transactions). Model versions hot-swap between
//! batches on NATS `aifab.model.*`.
//!
//! Modules: [`worker`] (the consume/batch/produce loop), [`model_slot`] (current model and
//! hot swap), [`outputs`] (predictions and usage records, pure).

mod arms;
mod compute;
pub mod metric_names;
pub mod model_slot;
pub mod outputs;
mod queue;
pub mod verify;
pub mod worker;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use aifab_core::config::{BrokerArgs, ModelArgs, ServeArgs};
use aifab_core::service::{Needs, Service, ServiceSpec};
use aifab_model::batcher::BatchLimits;
use anyhow::Context;

use crate::model_slot::{FollowPolicy, ModelSlot};
use crate::worker::{Worker, WorkerSettings};

pub const SPEC: ServiceSpec = ServiceSpec {
    name: "inference-worker",
    default_port: 8083,
    needs: Needs::ALL,
};

/// Command-line and environment configuration.
#[derive(Debug, Clone, clap::Parser)]
#[command(
    name = "aifab-inference-worker",
    version,
    about = "Batches inference requests dynamically through candle and produces predictions and usage, exactly once."
)]
pub struct Config {
    #[command(flatten)]
    pub brokers: BrokerArgs,
    #[command(flatten)]
    pub serve: ServeArgs,

    #[command(flatten)]
    pub model: ModelArgs,

    /// Classification head to serve at start (head.safetensors + labels.json). Without
    /// it the worker serves the registry's `production` version of --task (from Redis),
    /// and is not ready and consumes nothing until one exists.
    #[arg(long, env = "AIFAB_HEAD_DIR")]
    pub head_dir: Option<PathBuf>,

    /// Version name of --head-dir (default: the directory's name).
    #[arg(long, env = "AIFAB_MODEL_VERSION")]
    pub model_version: Option<String>,

    /// Where heads of s3:// registry versions are downloaded before loading (local
    /// artifact URIs are read in place).
    #[arg(long, env = "AIFAB_ARTIFACT_CACHE_DIR", default_value_t = aifab_core::artifacts::default_cache_dir())]
    pub artifact_cache_dir: String,

    #[command(flatten)]
    pub s3: aifab_core::artifacts::S3Args,

    /// The task (model name) this worker serves; requests for other tasks are dead-lettered.
    #[arg(long, env = "AIFAB_TASK", default_value = "default")]
    pub task: String,

    /// Serve registry versions whose record has no artifact SHA-256 (written by an older
    /// trainer). Off by default: a version is served only if its files match the digest.
    #[arg(long, env = "AIFAB_ALLOW_UNVERIFIED_MODELS")]
    pub allow_unverified_models: bool,

    /// Seconds between checks of the registry's production version, so a promotion or
    /// rollback whose NATS event was missed is followed anyway (0: no checks once a model
    /// is served; `--follow latest` and `--head-dir` never check).
    #[arg(long, env = "AIFAB_MODEL_RECONCILE_S", default_value_t = 5.0)]
    pub model_reconcile_s: f64,

    /// Which model events switch the served version.
    #[arg(long, env = "AIFAB_FOLLOW", value_enum, default_value = "production")]
    pub follow: FollowPolicy,

    /// Device: `cpu`, `cuda` or `cuda:N` (CUDA needs a build with --features cuda).
    #[arg(long, env = "AIFAB_DEVICE", default_value = "cpu")]
    pub device: String,

    /// Most requests in one batch.
    #[arg(long, env = "AIFAB_MAX_BATCH_SIZE", default_value_t = 32)]
    pub max_batch_size: usize,

    /// Most padded tokens (longest row × rows) in one batch.
    #[arg(long, env = "AIFAB_MAX_BATCH_TOKENS", default_value_t = 4096)]
    pub max_batch_tokens: usize,

    /// Longest the first request in line waits for its batch to fill, in milliseconds.
    #[arg(long, env = "AIFAB_MAX_WAIT_MS", default_value_t = 5)]
    pub max_wait_ms: u64,

    /// Most consumed requests held in memory before polling pauses.
    #[arg(long, env = "AIFAB_MAX_QUEUE", default_value_t = 512)]
    pub max_queue: usize,

    /// Under backlog, consecutive batches share one Kafka transaction for up to this
    /// many milliseconds (fewer commits; outputs become visible at the commit).
    #[arg(long, env = "AIFAB_MAX_TXN_MS", default_value_t = 250)]
    pub max_txn_ms: u64,

    /// Consumer group.
    #[arg(long, env = "AIFAB_WORKER_GROUP", default_value = aifab_core::topics::groups::INFERENCE_WORKER)]
    pub group: String,

    /// Input topic.
    #[arg(long, env = "AIFAB_INPUT_TOPIC", default_value = aifab_core::topics::INFERENCE_REQUESTS.name)]
    pub input_topic: String,

    /// This instance's name: the worker field of predictions and the Kafka transactional
    /// id. Keep it stable across restarts of the same replica, so a restarted worker fences
    /// its dead predecessor's open transaction at once. Default: `<hostname>-<http port>`.
    #[arg(long, env = "AIFAB_INSTANCE_ID")]
    pub instance_id: Option<String>,
}

/// Start the service and run until SIGTERM/SIGINT.
pub async fn run(config: Config) -> anyhow::Result<()> {
    let mut svc = Service::init(SPEC, &config.serve, &config.brokers).await?;
    svc.check_topics(&[
        &config.input_topic,
        aifab_core::topics::PREDICTIONS.name,
        aifab_core::topics::USAGE.name,
        aifab_core::topics::DLQ.name,
    ]);
    // A device that is not there is a start-up error, not a fallback.
    let spec: aifab_model::DeviceSpec = config.device.parse()?;
    let device =
        aifab_model::select(spec).with_context(|| format!("--device {}", config.device))?;
    let device_kind = if device.is_cuda() { "cuda" } else { "cpu" }.to_string();
    tracing::info!(device = %config.device, kind = %device_kind, "inference device");
    let model_dir = PathBuf::from(&config.model.model_dir);
    let encoder =
        tokio::task::spawn_blocking(move || aifab_model::Encoder::load(&model_dir, &device))
            .await?
            .with_context(|| {
                format!(
                    "loading the encoder from {} (run scripts/fetch-model?)",
                    config.model.model_dir
                )
            })?;
    let fetch = model_slot::ArtifactFetch {
        cache_dir: PathBuf::from(&config.artifact_cache_dir),
        s3: config.s3.config(),
    };
    let slot = Arc::new(
        ModelSlot::with_fetch(Arc::new(encoder), svc.readiness.clone(), fetch)
            .allow_unverified(config.allow_unverified_models)
            .with_alerts(svc.nats()?),
    );
    if let Some(dir) = config.head_dir.clone() {
        let version = config.model_version.clone().unwrap_or_else(|| {
            dir.file_name()
                .map(|n| n.to_string_lossy().to_string())
                .unwrap_or_default()
        });
        let s = slot.clone();
        let d = dir.clone();
        if let Err(e) = tokio::task::spawn_blocking(move || s.load(&d, &version)).await? {
            // Stay up and say why: readiness shows it, and a model event can still fix it.
            svc.readiness
                .set("model", false, format!("{}: {e:#}", dir.display()));
            tracing::error!(dir = %dir.display(), error = %format!("{e:#}"), "initial model failed to load");
        }
    }
    svc.serve(axum::Router::new()).await?;

    // No head given: serve the registry's production version, as soon as there is one,
    // and (following production) keep checking it.
    if config.head_dir.is_none() {
        let every = match config.follow {
            // At least every 0.5 s (a smaller value would poll Redis in a loop).
            FollowPolicy::Production if config.model_reconcile_s > 0.0 => {
                Duration::try_from_secs_f64(config.model_reconcile_s.max(0.5))
                    .context("--model-reconcile-s: not a number of seconds")?
            }
            FollowPolicy::Production => Duration::ZERO,
            FollowPolicy::Latest => Duration::ZERO,
        };
        let load = model_slot::follow_production(
            svc.redis()?,
            slot.clone(),
            config.task.clone(),
            model_slot::Reconcile::every(every),
            svc.shutdown.clone(),
        );
        svc.supervise_until_done("production-model", async move {
            load.await;
            Ok(())
        });
    }

    let rollout = model_slot::follow_rollout(
        svc.redis()?,
        slot.clone(),
        config.task.clone(),
        svc.shutdown.clone(),
    );
    svc.supervise("rollout-follower", async move {
        rollout.await;
        Ok(())
    });
    let events = model_slot::follow_events(
        svc.nats()?,
        svc.redis()?,
        slot.clone(),
        config.task.clone(),
        config.follow,
        svc.shutdown.clone(),
    );
    svc.supervise("model-events", events);

    let settings = WorkerSettings {
        brokers: config.brokers.kafka_brokers.clone(),
        group: config.group.clone(),
        input_topic: config.input_topic.clone(),
        instance_id: config.instance_id.clone().unwrap_or_else(|| {
            aifab_core::service::default_instance_id(
                SPEC.name,
                svc.http_addr().map(|a| a.port()).unwrap_or(0),
            )
        }),
        task: config.task.clone(),
        device_kind,
        limits: BatchLimits {
            max_batch_size: config.max_batch_size,
            max_batch_tokens: config.max_batch_tokens,
            max_wait: Duration::from_millis(config.max_wait_ms),
        },
        max_queue: config.max_queue.max(config.max_batch_size),
        max_txn: Duration::from_millis(config.max_txn_ms),
        heartbeat: svc.heartbeat("batch-loop", aifab_core::supervise::STALE_AFTER),
    };
    let worker = Worker::new(settings, slot, svc.shutdown.clone())?;
    svc.supervise_thread("batch-loop", move || worker.run())?;
    // Until SIGTERM, or until a loop fails (then exit non-zero to be restarted).
    svc.shutdown.cancelled().await;
    svc.finish().await
}
