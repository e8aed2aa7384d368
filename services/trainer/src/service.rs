//! The trainer's edges: examples from Kafka into the window, triggers from NATS, HTTP and
//! the example count, jobs on a blocking thread, results into the registry and NATS.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use aifab_core::artifacts::ArtifactStore;
use aifab_core::backoff::Backoff;
use aifab_core::messages::{
    decode, encode, tag, ModelEvent, ModelEventKind, TrainProgress, TrainRequest, TrainStage,
    TrainingExample,
};
use aifab_core::registry::{
    promotion_gate, GateDecision, ModelRecord, Registry, CANDIDATE, PRODUCTION,
};
use aifab_core::service::Service;
use aifab_core::supervise::{Heartbeat, STALE_AFTER};
use aifab_core::topics::subjects;
use anyhow::Context;
use axum::extract::{Path, State};
use axum::routing::{get, post};
use axum::Json;
use futures::StreamExt;
use rdkafka::consumer::{CommitMode, Consumer, StreamConsumer};
use rdkafka::{Message, Offset, TopicPartitionList};
use tokio::sync::mpsc;

use crate::dataset::{split, Example, TrainingWindow};
use crate::job::{artifact_files, write_artifact, Progress, Trainer};
use crate::train::TrainConfig;
use crate::{Config, SPEC};

#[derive(Clone)]
struct AppState {
    window: Arc<Mutex<TrainingWindow>>,
    triggers: mpsc::UnboundedSender<String>,
}

pub async fn run(config: Config) -> anyhow::Result<()> {
    let mut svc = Service::init(SPEC, &config.serve, &config.brokers).await?;
    let train_config = TrainConfig {
        seed: config.seed,
        ..TrainConfig::default()
    };
    let model_dir = PathBuf::from(&config.model_dir);
    let max_len = config.max_len;
    let trainer =
        tokio::task::spawn_blocking(move || Trainer::load(&model_dir, max_len, train_config))
            .await??;
    let trainer = Arc::new(Mutex::new(trainer));
    // A store that is misconfigured or unreachable is a start-up error, not a failure
    // discovered after the first training job.
    let store = ArtifactStore::open(config.artifact_store_url(), &config.s3.config())?;
    store
        .probe()
        .await
        .context("checking the artifact store (--artifact-store)")?;
    tracing::info!(store = %store.root(), "artifact store");

    let window = Arc::new(Mutex::new(TrainingWindow::new(config.window)));
    let (tx, rx) = mpsc::unbounded_channel::<String>();
    let state = AppState {
        window: window.clone(),
        triggers: tx.clone(),
    };
    let api = axum::Router::new()
        .route("/v1/train/{task}", post(train_now))
        .route("/v1/window", get(window_sizes))
        .with_state(state);
    svc.serve(api).await?;

    let nats = svc.nats()?;
    let redis = svc.redis()?;
    let consumer: Arc<StreamConsumer> = Arc::new(
        aifab_core::kafka::consumer_config(
            &config.brokers.kafka_brokers,
            "aifab-trainer",
            &config.group,
        )
        .create()
        .context("creating the Kafka consumer")?,
    );
    let shutdown = svc.shutdown.clone();

    let heartbeat = svc.heartbeat("examples-consumer", STALE_AFTER);
    let examples = consume_examples(
        consumer.clone(),
        config.clone(),
        window.clone(),
        tx.clone(),
        heartbeat,
        shutdown.clone(),
    );
    svc.supervise("examples-consumer", examples);
    svc.supervise(
        "train-requests",
        listen_for_requests(nats.clone(), tx.clone(), shutdown.clone()),
    );
    let jobs_shutdown = shutdown.clone();
    svc.supervise("train-jobs", async move {
        let registry = tokio::select! {
            conn = redis.get() => Registry::new(conn?),
            _ = jobs_shutdown.cancelled() => return Ok(()),
        };
        tokio::select! {
            r = run_jobs(rx, trainer, window, registry, store, nats, consumer, config) => r,
            // A job in progress runs on a blocking thread; it is not waited for.
            _ = jobs_shutdown.cancelled() => Ok(()),
        }
    });

    // Until SIGTERM, or until a loop fails (then exit non-zero to be restarted).
    shutdown.cancelled().await;
    svc.finish().await
}

async fn train_now(
    State(s): State<AppState>,
    Path(task): Path<String>,
) -> (axum::http::StatusCode, Json<serde_json::Value>) {
    let examples = s.window.lock().expect("window lock").len(&task);
    if examples == 0 {
        return (
            axum::http::StatusCode::NOT_FOUND,
            Json(serde_json::json!({"error": format!("no examples for task {task:?}")})),
        );
    }
    let _ = s.triggers.send(task.clone());
    (
        axum::http::StatusCode::ACCEPTED,
        Json(serde_json::json!({"task": task, "examples": examples})),
    )
}

async fn window_sizes(State(s): State<AppState>) -> Json<serde_json::Value> {
    let sizes = s.window.lock().expect("window lock").sizes();
    Json(serde_json::json!({ "examples": sizes }))
}

/// Replay the topic from the beginning: records before the group's committed offsets are
/// history (they fill the window), later ones are new (they count towards a trigger).
/// Until the topic exists and the group coordinator answers (a broker that is still
/// starting), the assignment is retried with backoff; the heartbeat says why meanwhile.
async fn consume_examples(
    consumer: Arc<StreamConsumer>,
    config: Config,
    window: Arc<Mutex<TrainingWindow>>,
    triggers: mpsc::UnboundedSender<String>,
    heartbeat: Heartbeat,
    shutdown: tokio_util::sync::CancellationToken,
) -> anyhow::Result<()> {
    let topic = config.input_topic.clone();
    let mut backoff = Backoff::for_dependencies();
    let committed = loop {
        let (c, t) = (consumer.clone(), topic.clone());
        let why = match tokio::task::spawn_blocking(move || assign_from_beginning(&c, &t))
            .await
            .context("assigning the examples topic")?
        {
            Ok(Some(committed)) => break committed,
            Ok(None) => format!("topic {topic} does not exist yet"),
            Err(e) => format!("assigning {topic}: {e:#}"),
        };
        heartbeat.trouble(&why);
        let delay = backoff.next_delay_jittered();
        tracing::warn!(%topic, attempt = backoff.attempt(), retry_in = ?delay, reason = %why, "cannot read training examples yet; retrying");
        tokio::select! {
            _ = tokio::time::sleep(delay) => {}
            _ = shutdown.cancelled() => return Ok(()),
        }
    };
    tracing::info!(%topic, partitions_with_history = committed.len(), "replaying training examples");
    heartbeat.progress();
    let mut stream = consumer.stream();
    loop {
        let msg = tokio::select! {
            m = stream.next() => match m { Some(m) => m, None => anyhow::bail!("the examples consumer's stream ended") },
            _ = tokio::time::sleep(IDLE_BEAT) => {
                heartbeat.idle();
                continue;
            }
            _ = shutdown.cancelled() => return Ok(()),
        };
        let msg = match msg {
            Ok(m) => m,
            Err(e) => {
                heartbeat.trouble(format_args!("consumer error: {e}"));
                tracing::warn!(error = %e, "consumer error");
                continue;
            }
        };
        heartbeat.progress();
        match decode::<TrainingExample>(msg.payload().unwrap_or_default()) {
            Ok(ex) => {
                let fresh = committed
                    .get(&msg.partition())
                    .is_none_or(|c| msg.offset() >= *c);
                let due = {
                    let mut w = window.lock().expect("window lock");
                    w.push(
                        &ex.task,
                        Example {
                            text: ex.text,
                            label: ex.label,
                        },
                        fresh,
                    );
                    config.train_every > 0 && w.new_examples(&ex.task) >= config.train_every
                };
                metrics::counter!("aifab_trainer_examples_total").increment(1);
                if due {
                    window.lock().expect("window lock").mark_trained(&ex.task);
                    let _ = triggers.send(ex.task);
                }
            }
            Err(e) => {
                metrics::counter!("aifab_trainer_bad_examples_total").increment(1);
                tracing::warn!(partition = msg.partition(), offset = msg.offset(), error = %e, "skipping undecodable training example");
            }
        }
    }
}

/// How often a quiet examples consumer reports that it is alive.
const IDLE_BEAT: Duration = Duration::from_secs(5);

/// Assign every partition of `topic` from the beginning; the group's committed offsets
/// by partition. `None` while the topic does not exist.
fn assign_from_beginning(
    consumer: &StreamConsumer,
    topic: &str,
) -> anyhow::Result<Option<HashMap<i32, i64>>> {
    let md = consumer
        .fetch_metadata(Some(topic), Duration::from_secs(10))
        .context("metadata")?;
    let partitions = md
        .topics()
        .iter()
        .find(|t| t.name() == topic)
        .map(|t| t.partitions())
        .unwrap_or_default();
    if partitions.is_empty() {
        return Ok(None);
    }
    let mut tpl = TopicPartitionList::new();
    for p in partitions {
        tpl.add_partition(topic, p.id());
    }
    let committed = consumer
        .committed_offsets(tpl, Duration::from_secs(10))
        .context("the group's committed offsets")?;
    let mut assign = TopicPartitionList::new();
    let mut out = HashMap::new();
    for e in committed.elements() {
        if let Offset::Offset(o) = e.offset() {
            out.insert(e.partition(), o);
        }
        assign.add_partition_offset(topic, e.partition(), Offset::Beginning)?;
    }
    consumer.assign(&assign)?;
    Ok(Some(out))
}

async fn listen_for_requests(
    nats: async_nats::Client,
    triggers: mpsc::UnboundedSender<String>,
    shutdown: tokio_util::sync::CancellationToken,
) -> anyhow::Result<()> {
    let mut sub = nats
        .subscribe(subjects::TRAIN_REQUEST)
        .await
        .context("subscribing to train requests")?;
    loop {
        let msg = tokio::select! {
            m = sub.next() => match m { Some(m) => m, None => anyhow::bail!("the NATS subscription to {} ended", subjects::TRAIN_REQUEST) },
            _ = shutdown.cancelled() => return Ok(()),
        };
        match decode::<TrainRequest>(&msg.payload) {
            Ok(r) => {
                tracing::info!(task = %r.task, by = r.requested_by.as_deref().unwrap_or("?"), "train request");
                let _ = triggers.send(r.task);
            }
            Err(e) => tracing::warn!(error = %e, "ignoring malformed train request"),
        }
    }
}

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

#[allow(clippy::too_many_arguments)]
async fn run_jobs(
    mut triggers: mpsc::UnboundedReceiver<String>,
    trainer: Arc<Mutex<Trainer>>,
    window: Arc<Mutex<TrainingWindow>>,
    mut registry: Registry,
    store: ArtifactStore,
    nats: async_nats::Client,
    consumer: Arc<StreamConsumer>,
    config: Config,
) -> anyhow::Result<()> {
    while let Some(task) = triggers.recv().await {
        let examples = {
            let mut w = window.lock().expect("window lock");
            w.mark_trained(&task);
            w.examples(&task)
        };
        if examples.len() < 10 {
            tracing::warn!(%task, examples = examples.len(), "too few examples to train; skipping");
            continue;
        }
        match train_one(
            &task,
            examples,
            &trainer,
            &mut registry,
            &store,
            &nats,
            &config,
        )
        .await
        {
            Ok(version) => {
                metrics::counter!("aifab_trainer_jobs_total", "result" => "ok").increment(1);
                tracing::info!(%task, %version, "training job done");
                // Mark what the window has seen, so a restart does not count it as new.
                if let Ok(pos) = consumer.position() {
                    let _ = consumer.commit(&pos, CommitMode::Async);
                }
            }
            Err(e) => {
                metrics::counter!("aifab_trainer_jobs_total", "result" => "failed").increment(1);
                tracing::error!(%task, error = %format!("{e:#}"), "training job failed");
                let msg = progress_message(
                    &task,
                    TrainStage::Failed,
                    0,
                    0,
                    None,
                    Some(format!("{e:#}")),
                );
                let _ = nats
                    .publish(subjects::TRAIN_PROGRESS, encode(&msg).into())
                    .await;
            }
        }
    }
    Ok(())
}

/// Train, evaluate, write the artifact, register, gate, announce. Returns the version.
async fn train_one(
    task: &str,
    examples: Vec<Example>,
    trainer: &Arc<Mutex<Trainer>>,
    registry: &mut Registry,
    store: &ArtifactStore,
    nats: &async_nats::Client,
    config: &Config,
) -> anyhow::Result<String> {
    let (train, eval) = split(&examples, config.eval_fraction, config.seed);
    let version = registry.next_version(task).await?;
    let (ptx, mut prx) = mpsc::unbounded_channel::<Progress>();
    let t = trainer.clone();
    let job = tokio::task::spawn_blocking(move || {
        let mut t = t.lock().expect("trainer lock");
        t.run(&train, &eval, |p| {
            let _ = ptx.send(p);
        })
        .map(|out| (out, t.encoder_name.clone(), t.encoder_sha256.clone()))
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
    let (out, encoder, encoder_sha256) = job.await??;
    let _ = forward.await;

    let files = {
        let t = trainer.lock().expect("trainer lock");
        artifact_files(task, &version, &t, &out)?
    };
    let location = write_artifact(store, task, &version, &files).await?;
    let mut metrics_map = std::collections::BTreeMap::new();
    metrics_map.insert("accuracy".to_string(), out.evaluation.accuracy);
    metrics_map.insert("macro_f1".to_string(), out.evaluation.macro_f1);
    let record = ModelRecord {
        task: task.to_string(),
        version: version.clone(),
        artifact_uri: location.uri(),
        encoder,
        encoder_sha256,
        labels: out.head.labels().to_vec(),
        metrics: metrics_map.clone(),
        train_examples: out.report.train_examples + out.report.validation_examples,
        eval_examples: out.evaluation.examples,
        created_at_ms: aifab_core::now_ms(),
    };
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
            registry.set_production(task, &version).await?;
            publish_event(nats, ModelEventKind::Promoted, &record, Some(PRODUCTION)).await?;
            tracing::info!(%task, %version, %reason, "promoted to production");
        }
        GateDecision::Reject { reason } => {
            metrics::counter!("aifab_trainer_promotions_rejected_total").increment(1);
            tracing::warn!(%task, %version, %reason, "not promoted: stays candidate");
        }
    }
    let done = progress_message(task, TrainStage::Done, 1, 1, None, Some(version.clone()));
    nats.publish(subjects::TRAIN_PROGRESS, encode(&done).into())
        .await?;
    Ok(version)
}

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
