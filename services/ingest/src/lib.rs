//! aifab ingest: the validated entry. Takes texts over HTTP (`POST /v1/infer`,
//! `POST /v1/examples`) and from `aifab.ingest.raw` (any Kafka producer), writes what it
//! accepts to `aifab.features.in` and everything it refuses to `aifab.dlq`, and answers
//! `GET /v1/predictions/{id}` from the predictions it stores.
//!
//! Modules: [`validate`] (pure checks, error kinds and reasons), [`tenants`] (API keys
//! and tenant settings from a file and Redis), [`ratelimit`] (token buckets, pure),
//! [`budget`] (over-budget tenants from NATS), [`raw`] (the Kafka path), [`http`] (the
//! API), [`features`] (the record either path writes), [`predictions`] (the predictions
//! store), [`store`] (the Redis key layout), [`cache`] (Redis answers reused for a while),
//! [`metric_names`] (every metric it exports).
//!
//! The binary (`main.rs`) only parses [`Config`] and calls [`run`].

pub mod budget;
pub mod cache;
pub mod features;
pub mod http;
pub mod metric_names;
pub mod predictions;
pub mod ratelimit;
pub mod raw;
pub mod store;
pub mod tenants;
pub mod validate;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use aifab_core::config::{BrokerArgs, ServeArgs};
use aifab_core::pipeline::{self, AtomicProducer, LoopSettings};
use aifab_core::service::{Needs, Service, ServiceSpec};
use aifab_core::supervise::STALE_AFTER as LOOP_STALE_AFTER;
use aifab_core::topics;
use anyhow::Context as _;

use crate::tenants::{BudgetMode, Registry, StaticTenants, TenantSettings};

pub const SPEC: ServiceSpec = ServiceSpec {
    name: "ingest",
    default_port: 8080,
    needs: Needs::ALL,
};

/// Command-line and environment configuration.
#[derive(Debug, Clone, clap::Parser)]
#[command(
    name = "aifab-ingest",
    version,
    about = "Validated entry: HTTP API and the aifab.ingest.raw topic; accepted records go to \
             aifab.features.in, invalid input to aifab.dlq."
)]
pub struct Config {
    #[command(flatten)]
    pub brokers: BrokerArgs,
    #[command(flatten)]
    pub serve: ServeArgs,

    /// JSON file of API keys and tenant settings (`help` below shows its format). Keys and
    /// tenants can also be added at run time in Redis (see the README).
    // The help text is spelled out because clap would join a doc comment's lines with spaces,
    // and the JSON example does not fit on one line.
    #[arg(
        long,
        env = "AIFAB_API_KEYS_FILE",
        help = concat!(
            "JSON file of API keys and tenant settings: ",
            r#"{"keys":[{"key":"...","tenant":"acme"}],"#,
            r#""tenants":{"acme":{"rate_per_s":100,"burst":200,"budget_mode":"reject"}}}. "#,
            "Keys and tenants can also be added at run time in Redis (see the README)"
        )
    )]
    pub api_keys_file: Option<PathBuf>,

    /// Prefix of every Redis key this service reads or writes.
    #[arg(long, env = "AIFAB_REDIS_PREFIX", default_value = "aifab")]
    pub redis_prefix: String,

    /// Topic of raw records from external producers (input).
    #[arg(long, env = "AIFAB_RAW_TOPIC", default_value = topics::INGEST_RAW.name)]
    pub raw_topic: String,

    /// Topic of accepted records (output; the feature service's input).
    #[arg(long, env = "AIFAB_FEATURES_TOPIC", default_value = topics::FEATURES_IN.name)]
    pub features_topic: String,

    /// Dead-letter topic.
    #[arg(long, env = "AIFAB_DLQ_TOPIC", default_value = topics::DLQ.name)]
    pub dlq_topic: String,

    /// Predictions topic (read to answer GET /v1/predictions/{id}).
    #[arg(long, env = "AIFAB_PREDICTIONS_TOPIC", default_value = topics::PREDICTIONS.name)]
    pub predictions_topic: String,

    /// Consumer group of the raw-topic loop.
    #[arg(long, env = "AIFAB_INGEST_GROUP", default_value = topics::groups::INGEST)]
    pub group: String,

    /// Consumer group of the predictions store.
    #[arg(
        long,
        env = "AIFAB_INGEST_PREDICTIONS_GROUP",
        default_value = "aifab-ingest-predictions"
    )]
    pub predictions_group: String,

    /// This replica's name, part of its Kafka transactional ids. Keep it stable across
    /// restarts of the same replica. Default: `<hostname>-<http port>`.
    #[arg(long, env = "AIFAB_INSTANCE_ID")]
    pub instance_id: Option<String>,

    /// Task given to records that name none.
    #[arg(long, env = "AIFAB_DEFAULT_TASK", default_value = "default")]
    pub default_task: String,

    /// Labels each task accepts, `task=label,label;task=...`; a labelled record for a
    /// listed task with another label is refused (`unknown_label`). Unlisted tasks accept any label.
    #[arg(long, env = "AIFAB_TASK_LABELS", default_value = "", value_parser = validate::parse_task_labels)]
    pub task_labels: std::collections::BTreeMap<String, Vec<String>>,

    /// Longest text in characters (the schema's limit is 20000).
    #[arg(
        long,
        env = "AIFAB_MAX_TEXT_CHARS",
        default_value_t = 20_000,
        value_parser = clap::value_parser!(u64).range(1..=20_000)
    )]
    pub max_text_chars: u64,

    /// Largest HTTP body in bytes (413 above).
    #[arg(long, env = "AIFAB_MAX_BODY_BYTES", default_value_t = 1 << 20)]
    pub max_body_bytes: usize,

    /// Largest record in bytes: a raw Kafka value, or one item of an HTTP body as JSON
    /// (`record_too_large` above: dead-lettered, 413 over HTTP). At most 512 KiB, so what
    /// feature derives from a record fits in a Kafka record of the broker's default 1 MB.
    #[arg(long, env = "AIFAB_MAX_RECORD_BYTES", default_value_t = 256 * 1024,
          value_parser = clap::value_parser!(u64).range(1..=validate::MAX_RECORD_BYTES_LIMIT as u64))]
    pub max_record_bytes: u64,

    /// Most texts in one HTTP batch (413 above).
    #[arg(long, env = "AIFAB_MAX_BATCH_ITEMS", default_value_t = 256)]
    pub max_batch_items: usize,

    /// Default per-tenant rate limit over HTTP, texts per second (0 = unlimited).
    #[arg(long, env = "AIFAB_DEFAULT_RATE_PER_S", default_value_t = 1000.0)]
    pub default_rate_per_s: f64,

    /// Default per-tenant burst, texts.
    #[arg(long, env = "AIFAB_DEFAULT_BURST", default_value_t = 2000.0)]
    pub default_burst: f64,

    /// What happens to a tenant over budget unless its settings say otherwise.
    #[arg(
        long,
        env = "AIFAB_DEFAULT_BUDGET_MODE",
        value_enum,
        default_value = "reject"
    )]
    pub default_budget_mode: BudgetMode,

    /// `priority` of a deprioritised tenant's inference requests (0 = normal; higher is served later).
    #[arg(long, env = "AIFAB_DEPRIORITISED_PRIORITY", default_value_t = 9)]
    pub deprioritised_priority: u8,

    /// How long a request id stays claimed (duplicate-id window), seconds.
    #[arg(long, env = "AIFAB_ID_TTL_S", default_value_t = 86_400)]
    pub id_ttl_s: u64,

    /// How long an Idempotency-Key's response is kept, seconds.
    #[arg(long, env = "AIFAB_IDEMPOTENCY_TTL_S", default_value_t = 86_400)]
    pub idempotency_ttl_s: u64,

    /// How long a prediction stays readable through GET /v1/predictions/{id}, seconds.
    #[arg(long, env = "AIFAB_PREDICTION_TTL_S", default_value_t = 86_400)]
    pub prediction_ttl_s: u64,

    /// Most messages per consumed batch (one transaction each).
    #[arg(long, env = "AIFAB_CONSUME_BATCH", default_value_t = 10_000)]
    pub consume_batch: usize,

    /// Longest a consumed batch waits to fill, milliseconds.
    #[arg(long, env = "AIFAB_CONSUME_WAIT_MS", default_value_t = 20)]
    pub consume_wait_ms: u64,

    /// Dead-letter at most one unauthenticated (401) request per kind per this many
    /// milliseconds (0: none); every one is counted in
    /// `aifab_ingest_http_unauthenticated_total`. A flood of strangers then costs no
    /// Kafka writes.
    #[arg(
        long,
        env = "AIFAB_UNAUTHENTICATED_DEAD_LETTER_EVERY_MS",
        default_value_t = 1000
    )]
    pub unauthenticated_dead_letter_every_ms: u64,

    /// Most Redis lookups a second of API keys ingest has not found valid in the last 10
    /// minutes (new keys added in Redis; made-up keys). Beyond it such a request gets 429 with
    /// Retry-After, so a flood of made-up keys is not a flood of Redis lookups. 0: no limit.
    #[arg(long, env = "AIFAB_UNSEEN_KEY_LOOKUPS_PER_S", default_value_t = 200.0)]
    pub unseen_key_lookups_per_s: f64,

    /// Longest an HTTP POST waits for Kafka to acknowledge its records, milliseconds.
    #[arg(long, env = "AIFAB_PRODUCE_TIMEOUT_MS", default_value_t = 10_000)]
    pub produce_timeout_ms: u64,
}

/// Start the service and run until SIGTERM/SIGINT.
pub async fn run(config: Config) -> anyhow::Result<()> {
    let mut svc = Service::init(SPEC, &config.serve, &config.brokers).await?;
    svc.check_topics(&[
        &config.raw_topic,
        &config.features_topic,
        &config.dlq_topic,
        &config.predictions_topic,
    ]);
    let statics = match &config.api_keys_file {
        Some(path) => StaticTenants::load(path)?,
        None => StaticTenants::default(),
    };
    tracing::info!(keys = statics.key_count(), "API keys loaded from the file");
    let keys = store::Keys::new(&config.redis_prefix);
    let defaults = TenantSettings {
        rate_per_s: config.default_rate_per_s,
        burst: config.default_burst,
        budget_mode: config.default_budget_mode,
        enabled: true,
    };
    let registry = Arc::new(Registry::new(
        statics,
        defaults,
        keys.clone(),
        config.unseen_key_lookups_per_s,
    ));
    let budget = Arc::new(budget::BudgetBoard::new(keys.clone()));
    let redis = svc.redis()?;
    let rules = validate::Rules {
        default_task: config.default_task.clone(),
        labels: config.task_labels.clone(),
        max_text_chars: config.max_text_chars as usize,
        max_batch_items: config.max_batch_items,
        max_record_bytes: config.max_record_bytes as usize,
    };

    // Bind first: the instance id defaults to the port.
    let listener_probe = config.serve.http_addr_or(SPEC.default_port);
    let instance = config.instance_id.clone().unwrap_or_else(|| {
        aifab_core::service::default_instance_id(SPEC.name, listener_probe.port())
    });
    let (producer, producer_thread) = AtomicProducer::start(
        SPEC.name,
        &config.brokers.kafka_brokers,
        &format!("aifab-ingest-http-{instance}"),
        svc.shutdown.clone(),
    )?;
    let http_tasks = tokio_util::task::TaskTracker::new();
    let api = Arc::new(http::Api {
        settings: http::HttpSettings {
            features_topic: config.features_topic.clone(),
            dlq_topic: config.dlq_topic.clone(),
            max_body_bytes: config.max_body_bytes,
            id_ttl_s: config.id_ttl_s,
            idempotency_ttl_s: config.idempotency_ttl_s,
            deprioritised_priority: config.deprioritised_priority,
            produce_timeout: Duration::from_millis(config.produce_timeout_ms),
            default_tenant: defaults,
        },
        rules: rules.clone(),
        registry: registry.clone(),
        budget: budget.clone(),
        limiters: ratelimit::Limiters::default(),
        redis: redis.clone(),
        producer,
        dlq_producer: aifab_core::kafka::producer_config(
            &config.brokers.kafka_brokers,
            &format!("aifab-ingest-dlq-{instance}"),
        )
        .create()
        .context("the dead-letter producer")?,
        unauthenticated_sample: http::refuse::DeadLetterSample::new(Duration::from_millis(
            config.unauthenticated_dead_letter_every_ms,
        )),
        keys: keys.clone(),
        tasks: http_tasks.clone(),
    });
    svc.serve(http::router(api)).await?;

    // Every POST would answer 503 once the producer thread ended: better restarted.
    svc.supervise("http-producer", async move {
        producer_thread
            .await
            .context("HTTP producer thread")?
            .context("HTTP producer")
    });
    let events = budget::follow_events(
        svc.nats()?,
        budget.clone(),
        redis.clone(),
        svc.shutdown.clone(),
    );
    svc.supervise("budget-events", events);

    let runtime = tokio::runtime::Handle::current();
    let raw_stage = raw::RawStage {
        settings: raw::RawSettings {
            features_topic: config.features_topic.clone(),
            dlq_topic: config.dlq_topic.clone(),
            id_ttl_s: config.id_ttl_s,
            deprioritised_priority: config.deprioritised_priority,
        },
        rules,
        registry,
        budget,
        redis: redis.clone(),
        keys: keys.clone(),
    };
    let raw_settings = LoopSettings {
        service: SPEC.name,
        brokers: config.brokers.kafka_brokers.clone(),
        group: config.group.clone(),
        input_topic: config.raw_topic.clone(),
        client_id: format!("aifab-ingest-{instance}"),
        max_batch: config.consume_batch.max(1),
        max_wait: Duration::from_millis(config.consume_wait_ms),
        heartbeat: svc.heartbeat("raw-loop", LOOP_STALE_AFTER),
    };
    let (rt, token) = (runtime.clone(), svc.shutdown.clone());
    svc.supervise_thread("raw-loop", move || {
        pipeline::run_transactional(raw_settings, raw_stage, rt, token)
    })?;

    let store = predictions::PredictionStore {
        redis,
        keys,
        ttl_s: config.prediction_ttl_s,
    };
    let pred_settings = LoopSettings::secondary(
        SPEC.name,
        config.brokers.kafka_brokers.clone(),
        config.predictions_group.clone(),
        config.predictions_topic.clone(),
        format!("aifab-ingest-predictions-{instance}"),
        svc.heartbeat("predictions-loop", LOOP_STALE_AFTER),
    );
    let (rt, token) = (runtime, svc.shutdown.clone());
    svc.supervise_thread("predictions-loop", move || {
        pipeline::run_at_least_once(pred_settings, store, rt, token)
    })?;

    // Until SIGTERM, or until a loop fails (then exit non-zero to be restarted). The loops
    // and the HTTP server drain first (within the grace period); then the requests whose
    // writes are still settling get a grace period of their own.
    svc.shutdown.cancelled().await;
    svc.stop_loops().await;
    let grace = Duration::from_secs(config.serve.shutdown_grace_s);
    // POSTs still running, and undecided writes still settling, get a grace period of their
    // own to finish before the producer goes with the process. One settling can take
    // longer (see `http::settle::SETTLE_WAIT`): its ids are then held as in flight until their
    // in-flight time passes, and count as used after it.
    http_tasks.close();
    if tokio::time::timeout(grace, http_tasks.wait())
        .await
        .is_err()
    {
        tracing::warn!(
            left = http_tasks.len(),
            "HTTP requests still settling after the grace period; their ids stay claimed"
        );
    }
    svc.finish().await
}
