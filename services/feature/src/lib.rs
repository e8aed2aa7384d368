//! aifab feature: turns accepted records (`aifab.features.in`) into tokenized inference
//! requests (`aifab.inference.requests`) and training examples
//! (`aifab.training.examples`), answers repeated texts from a Redis dedupe cache
//! (`aifab.predictions`, outcome `cached`), and keeps per-tenant online features in Redis.
//!
//! Modules: [`stage`] (the transactional transform), [`tokenize`] (tokenizer and
//! truncation policy), [`dedupe`] (cached answers and the cache filler), [`online`]
//! (online feature counts), [`keys`] (the Redis key layout), [`metric_names`] (every metric
//! it exports).
//!
//! The binary (`main.rs`) only parses [`Config`] and calls [`run`].

pub mod dedupe;
pub mod keys;
pub mod metric_names;
pub mod online;
pub mod stage;
pub mod tokenize;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use aifab_core::config::{BrokerArgs, ModelArgs, ServeArgs};
use aifab_core::pipeline::{self, LoopSettings};
use aifab_core::service::{Needs, Service, ServiceSpec};
use aifab_core::supervise::STALE_AFTER;
use aifab_core::topics;
use anyhow::Context as _;

use crate::keys::DedupeScope;
use crate::tokenize::{FeatureTokenizer, TruncationPolicy};

pub const SPEC: ServiceSpec = ServiceSpec {
    name: "feature",
    default_port: 8081,
    needs: Needs {
        kafka: true,
        nats: false,
        redis: true,
    },
};

/// `--model-dir` as this service reads it: only the tokenizer.
const MODEL_DIR_HELP: &str = "The model directory holding tokenizer.json (or the tokenizer.json \
    file itself); see scripts/fetch-model";

/// Command-line and environment configuration.
#[derive(Debug, Clone, clap::Parser)]
#[command(
    name = "aifab-feature",
    version,
    about = "Tokenizes accepted records into inference requests and training examples; dedupe \
             cache and per-tenant online features in Redis.",
    mut_arg("model_dir", |a| a.help(MODEL_DIR_HELP))
)]
pub struct Config {
    #[command(flatten)]
    pub brokers: BrokerArgs,
    #[command(flatten)]
    pub serve: ServeArgs,

    #[command(flatten)]
    pub model: ModelArgs,

    /// Most tokens per text, special tokens included.
    #[arg(long, env = "AIFAB_MAX_TOKENS", default_value_t = 128)]
    pub max_tokens: usize,

    /// What to do with a text over --max-tokens: keep its start (head), keep its end
    /// (tail), or dead-letter it (reject). The request records which cut was made.
    #[arg(long, env = "AIFAB_TRUNCATION", value_enum, default_value = "head")]
    pub truncation: TruncationPolicy,

    /// How long a computed prediction answers repeats of its text, seconds (0 = no dedupe cache).
    #[arg(long, env = "AIFAB_DEDUPE_TTL_S", default_value_t = 3600)]
    pub dedupe_ttl_s: u64,

    /// Who shares cached answers: the same tenant only, or everyone.
    #[arg(long, env = "AIFAB_DEDUPE_SCOPE", value_enum, default_value = "tenant")]
    pub dedupe_scope: DedupeScope,

    /// Prefix of every Redis key this service reads or writes.
    #[arg(long, env = "AIFAB_REDIS_PREFIX", default_value = "aifab")]
    pub redis_prefix: String,

    /// Input topic (records accepted by ingest).
    #[arg(long, env = "AIFAB_FEATURES_TOPIC", default_value = topics::FEATURES_IN.name)]
    pub features_topic: String,

    /// Output topic of tokenized inference requests.
    #[arg(long, env = "AIFAB_INFERENCE_TOPIC", default_value = topics::INFERENCE_REQUESTS.name)]
    pub inference_topic: String,

    /// Output topic of training examples.
    #[arg(long, env = "AIFAB_TRAINING_TOPIC", default_value = topics::TRAINING_EXAMPLES.name)]
    pub training_topic: String,

    /// Predictions topic: cached answers are written to it, and computed ones read from it to fill the cache.
    #[arg(long, env = "AIFAB_PREDICTIONS_TOPIC", default_value = topics::PREDICTIONS.name)]
    pub predictions_topic: String,

    /// Dead-letter topic.
    #[arg(long, env = "AIFAB_DLQ_TOPIC", default_value = topics::DLQ.name)]
    pub dlq_topic: String,

    /// Consumer group of the feature stage.
    #[arg(long, env = "AIFAB_FEATURE_GROUP", default_value = topics::groups::FEATURE)]
    pub group: String,

    /// Consumer group of the cache filler (reads the predictions topic).
    #[arg(
        long,
        env = "AIFAB_FEATURE_CACHE_GROUP",
        default_value = "aifab-feature-cache"
    )]
    pub cache_group: String,

    /// Task of records that name none.
    #[arg(long, env = "AIFAB_DEFAULT_TASK", default_value = "default")]
    pub default_task: String,

    /// This replica's name, part of its Kafka transactional id. Keep it stable across
    /// restarts of the same replica. Default: `<hostname>-<http port>`.
    #[arg(long, env = "AIFAB_INSTANCE_ID")]
    pub instance_id: Option<String>,

    /// Most messages per consumed batch (one transaction each).
    #[arg(long, env = "AIFAB_CONSUME_BATCH", default_value_t = 10_000)]
    pub consume_batch: usize,

    /// Longest a consumed batch waits to fill, milliseconds.
    #[arg(long, env = "AIFAB_CONSUME_WAIT_MS", default_value_t = 20)]
    pub consume_wait_ms: u64,
}

/// Start the service and run until SIGTERM/SIGINT.
pub async fn run(config: Config) -> anyhow::Result<()> {
    let mut svc = Service::init(SPEC, &config.serve, &config.brokers).await?;
    svc.check_topics(&[
        &config.features_topic,
        &config.inference_topic,
        &config.training_topic,
        &config.predictions_topic,
        &config.dlq_topic,
    ]);
    let path = PathBuf::from(&config.model.model_dir);
    let tokenizer = FeatureTokenizer::load(&path, config.max_tokens, config.truncation)
        .with_context(|| {
            format!(
                "loading the tokenizer from {} (run scripts/fetch-model, or set AIFAB_MODEL_DIR)",
                path.display()
            )
        })?;
    tracing::info!(
        path = %path.display(),
        max_tokens = config.max_tokens,
        truncation = ?config.truncation,
        "tokenizer loaded"
    );
    let redis = svc.redis()?;
    let keys = keys::Keys::new(&config.redis_prefix);
    svc.serve(axum::Router::new()).await?;
    let instance = config.instance_id.clone().unwrap_or_else(|| {
        aifab_core::service::default_instance_id(
            SPEC.name,
            config.serve.http_addr_or(SPEC.default_port).port(),
        )
    });

    let runtime = tokio::runtime::Handle::current();
    let stage = stage::FeatureStage {
        settings: stage::StageSettings {
            inference_topic: config.inference_topic.clone(),
            training_topic: config.training_topic.clone(),
            predictions_topic: config.predictions_topic.clone(),
            dlq_topic: config.dlq_topic.clone(),
            default_task: config.default_task.clone(),
            dedupe_ttl_s: config.dedupe_ttl_s,
            dedupe_scope: config.dedupe_scope,
            worker_name: format!("feature-{instance}"),
        },
        tokenizer: Arc::new(tokenizer),
        redis: redis.clone(),
        keys: keys.clone(),
    };
    let stage_settings = LoopSettings {
        service: SPEC.name,
        brokers: config.brokers.kafka_brokers.clone(),
        group: config.group.clone(),
        input_topic: config.features_topic.clone(),
        client_id: format!("aifab-feature-{instance}"),
        max_batch: config.consume_batch.max(1),
        max_wait: Duration::from_millis(config.consume_wait_ms),
        heartbeat: svc.heartbeat("feature-loop", STALE_AFTER),
    };
    let (rt, token) = (runtime.clone(), svc.shutdown.clone());
    svc.supervise_thread("feature-loop", move || {
        pipeline::run_transactional(stage_settings, stage, rt, token)
    })?;

    if config.dedupe_ttl_s > 0 {
        let fill = dedupe::CacheFill {
            redis,
            keys,
            ttl_s: config.dedupe_ttl_s,
        };
        let settings = LoopSettings::secondary(
            SPEC.name,
            config.brokers.kafka_brokers.clone(),
            config.cache_group.clone(),
            config.predictions_topic.clone(),
            format!("aifab-feature-cache-{instance}"),
            svc.heartbeat("cache-loop", STALE_AFTER),
        );
        let (rt, token) = (runtime, svc.shutdown.clone());
        svc.supervise_thread("cache-loop", move || {
            pipeline::run_at_least_once(settings, fill, rt, token)
        })?;
    }

    // Until SIGTERM, or until a loop fails (then exit non-zero to be restarted).
    svc.shutdown.cancelled().await;
    svc.finish().await
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    use super::*;

    #[test]
    fn model_dir_help_says_only_the_tokenizer_is_read() {
        let cmd = Config::command();
        cmd.clone().debug_assert();
        let arg = cmd
            .get_arguments()
            .find(|a| a.get_id() == "model_dir")
            .expect("--model-dir");
        assert_eq!(
            arg.get_help().map(|h| h.to_string()),
            Some(MODEL_DIR_HELP.into())
        );
    }
}
