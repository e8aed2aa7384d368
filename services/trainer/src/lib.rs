//! aifab trainer: keeps a bounded window of labelled examples per task (replayed from
//! Kafka on restart), trains a classification head on encoder embeddings when triggered,
//! evaluates it, registers the version, gates its promotion, and announces it on NATS.
//!
//! Modules: [`dataset`] (examples, window), [`embeddings`] (cached encoder embeddings),
//! [`train`] (the head trainer), [`eval`] (metrics), [`job`] (one training job and its
//! artifact), [`metric_names`] (every metric the trainer exports), [`service`] (the
//! Kafka/NATS/Redis edges: `examples` the examples consumer, `jobs` the training jobs).

pub mod dataset;
pub mod embeddings;
pub mod eval;
mod examples;
pub mod job;
mod jobs;
pub mod metric_names;
pub mod service;
pub mod train;

use std::path::PathBuf;

use aifab_core::config::{BrokerArgs, ModelArgs, ServeArgs};
use aifab_core::service::{Needs, ServiceSpec};

pub const SPEC: ServiceSpec = ServiceSpec {
    name: "trainer",
    default_port: 8082,
    needs: Needs::ALL,
};

/// Command-line and environment configuration.
#[derive(Debug, Clone, clap::Parser)]
#[command(
    name = "aifab-trainer",
    version,
    about = "Trains, evaluates and registers classification heads; publishes model events on NATS."
)]
pub struct Config {
    #[command(flatten)]
    pub brokers: BrokerArgs,
    #[command(flatten)]
    pub serve: ServeArgs,

    #[command(flatten)]
    pub model: ModelArgs,

    /// Where artifacts are written when --artifact-store is not given: `<dir>/<task>/<version>/`.
    #[arg(long, env = "AIFAB_ARTIFACT_DIR", default_value_t = default_artifact_dir())]
    pub artifact_dir: String,

    /// Artifact store URL: a path, `file:///abs/dir` or `s3://bucket/prefix` (S3 or any
    /// S3-compatible store; credentials from AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY,
    /// region from AWS_REGION, endpoint from --artifact-store-endpoint). Versions go to
    /// `<store>/<task>/<version>/`. Default: --artifact-dir.
    #[arg(long, env = "AIFAB_ARTIFACT_STORE")]
    pub artifact_store: Option<String>,

    #[command(flatten)]
    pub s3: aifab_core::artifacts::S3Args,

    /// Examples kept per task (the most recent ones).
    #[arg(long, env = "AIFAB_TRAIN_WINDOW", default_value_t = 20_000)]
    pub window: usize,

    /// Train a task after this many new examples (0: only on request).
    #[arg(long, env = "AIFAB_TRAIN_EVERY", default_value_t = 1000)]
    pub train_every: usize,

    /// Share of the window held out for evaluation.
    #[arg(long, env = "AIFAB_EVAL_FRACTION", default_value_t = 0.2)]
    pub eval_fraction: f64,

    /// A candidate is promoted if its macro-F1 ≥ production's minus this.
    #[arg(long, env = "AIFAB_PROMOTION_TOLERANCE", default_value_t = 0.01)]
    pub promotion_tolerance: f64,

    /// A task's first model is promoted if its macro-F1 reaches this.
    #[arg(long, env = "AIFAB_PROMOTION_FLOOR", default_value_t = 0.5)]
    pub promotion_floor: f64,

    /// Max tokens per text (longer ones are truncated).
    #[arg(long, env = "AIFAB_MAX_LEN", default_value_t = 128)]
    pub max_len: usize,

    /// Seed for splits, shuffling and initialisation.
    #[arg(long, env = "AIFAB_TRAIN_SEED", default_value_t = 42)]
    pub seed: u64,

    /// Topic of labelled examples.
    #[arg(
        long,
        env = "AIFAB_TRAINING_TOPIC",
        default_value = aifab_core::topics::TRAINING_EXAMPLES.name
    )]
    pub input_topic: String,

    /// Consumer group (its committed offsets mark which examples were already seen).
    #[arg(long, env = "AIFAB_TRAINER_GROUP", default_value = aifab_core::topics::groups::TRAINER)]
    pub group: String,
}

impl Config {
    /// The artifact store URL in force: --artifact-store, else --artifact-dir.
    pub fn artifact_store_url(&self) -> &str {
        self.artifact_store
            .as_deref()
            .filter(|s| !s.trim().is_empty())
            .unwrap_or(&self.artifact_dir)
    }
}

pub fn default_artifact_dir() -> String {
    let home = std::env::var("HOME").unwrap_or_else(|_| ".".into());
    PathBuf::from(home)
        .join(".aifab/artifacts")
        .display()
        .to_string()
}

pub use service::run;
