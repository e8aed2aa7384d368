//! The trainer's edges: examples from Kafka into the window (`examples`), triggers from
//! NATS, HTTP and the example count, jobs on a blocking thread with results into the
//! registry and NATS (`jobs`).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use aifab_core::artifacts::ArtifactStore;
use aifab_core::audit::{AuditLog, Change};
use aifab_core::messages::{decode, Actor, AuditAction, Credential, TrainRequest};
use aifab_core::registry::Registry;
use aifab_core::service::Service;
use aifab_core::supervise::STALE_AFTER;
use aifab_core::topics::subjects;
use anyhow::Context;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Extension, Json};
use futures::StreamExt;
use rdkafka::consumer::StreamConsumer;
use serde::Serialize;
use tokio::sync::mpsc;

use crate::dataset::TrainingWindow;
use crate::examples;
use crate::job::Trainer;
use crate::jobs::Jobs;
use crate::train::TrainConfig;
use crate::{Config, SPEC};

pub use crate::jobs::publish_event;

#[derive(Clone)]
struct AppState {
    window: Arc<Mutex<TrainingWindow>>,
    triggers: mpsc::UnboundedSender<String>,
    audit: AuditLog,
}

/// Start the service and run until SIGTERM/SIGINT.
pub async fn run(config: Config) -> anyhow::Result<()> {
    let mut svc = Service::init(SPEC, &config.serve, &config.brokers).await?;
    svc.check_topics(&[&config.input_topic, &config.brokers.audit_topic]);
    let train_config = TrainConfig {
        seed: config.seed,
        ..TrainConfig::default()
    };
    let model_dir = PathBuf::from(&config.model.model_dir);
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
    let audit = config.brokers.audit_log(SPEC.name)?;
    let jobs_audit = audit.clone();
    let state = AppState {
        window: window.clone(),
        triggers: tx.clone(),
        audit: audit.clone(),
    };
    use aifab_core::access::Role;
    let admin = axum::Router::new()
        .route("/v1/train/{task}", post(train_now))
        .with_state(state.clone());
    let read = axum::Router::new()
        .route("/v1/window", get(window_sizes))
        .with_state(state);
    let api = svc
        .require(Role::Admin, admin)
        .merge(svc.require(Role::Read, read));
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
    let examples = examples::consume_examples(
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
        listen_for_requests(nats.clone(), tx.clone(), audit, shutdown.clone()),
    );
    let jobs_shutdown = shutdown.clone();
    svc.supervise("train-jobs", async move {
        let registry = tokio::select! {
            conn = redis.get() => Registry::new(conn?),
            _ = jobs_shutdown.cancelled() => return Ok(()),
        };
        let jobs = Jobs {
            trainer,
            window,
            registry,
            store,
            nats,
            consumer,
            config,
            audit: jobs_audit,
        };
        tokio::select! {
            r = jobs.run(rx) => r,
            // A job in progress runs on a blocking thread; it is not waited for.
            _ = jobs_shutdown.cancelled() => Ok(()),
        }
    });

    // Until SIGTERM, or until a loop fails (then exit non-zero to be restarted).
    shutdown.cancelled().await;
    svc.finish().await
}

/// `POST /v1/train/{task}` accepted: the task and its examples in the window.
// Fields in name order: the JSON is what `json!` made before (keys sorted).
#[derive(Debug, Serialize)]
struct TrainAccepted {
    examples: usize,
    task: String,
}

/// An HTTP error answer.
#[derive(Debug, Serialize)]
struct ErrorBody {
    error: String,
}

/// `GET /v1/window`: examples in the window per task.
#[derive(Debug, Serialize)]
struct WindowSizes {
    examples: BTreeMap<String, usize>,
}

/// Train `task` now (`404` while the window holds none of its examples; `503` when the
/// audit log cannot record the request).
async fn train_now(
    State(s): State<AppState>,
    Extension(actor): Extension<Actor>,
    Path(task): Path<String>,
) -> Response {
    let examples = s.window.lock().expect("window lock").len(&task);
    if examples == 0 {
        let error = format!("no examples for task {task:?}");
        return (StatusCode::NOT_FOUND, Json(ErrorBody { error })).into_response();
    }
    let detail = format!("{examples} examples in the window");
    let change = Change::new(AuditAction::TrainRequested, actor, detail).task(&task);
    if let Err(e) = s.audit.record(change).await {
        let error = format!("training not requested: {e:#}");
        return (StatusCode::SERVICE_UNAVAILABLE, Json(ErrorBody { error })).into_response();
    }
    let _ = s.triggers.send(task.clone());
    (StatusCode::ACCEPTED, Json(TrainAccepted { examples, task })).into_response()
}

async fn window_sizes(State(s): State<AppState>) -> Json<WindowSizes> {
    let examples = s.window.lock().expect("window lock").sizes();
    Json(WindowSizes { examples })
}

/// Train requests on NATS `aifab.train.request`, each recorded on the audit log first.
async fn listen_for_requests(
    nats: async_nats::Client,
    triggers: mpsc::UnboundedSender<String>,
    audit: AuditLog,
    shutdown: tokio_util::sync::CancellationToken,
) -> anyhow::Result<()> {
    let mut sub = nats
        .subscribe(subjects::TRAIN_REQUEST)
        .await
        .context("subscribing to train requests")?;
    loop {
        let msg = tokio::select! {
            m = sub.next() => match m {
                Some(m) => m,
                None => anyhow::bail!(
                    "the NATS subscription to {} ended",
                    subjects::TRAIN_REQUEST
                ),
            },
            _ = shutdown.cancelled() => return Ok(()),
        };
        // The schema too (task names, a non-empty requested_by): the audit record repeats them.
        let checked = decode::<TrainRequest>(&msg.payload)
            .map_err(|e| e.to_string())
            .and_then(|r| {
                let json = serde_json::to_value(&r).expect("a request serializes");
                match aifab_core::schema::validate("train.request/v1", &json) {
                    Ok(()) => Ok(r),
                    Err(v) => Err(v
                        .iter()
                        .map(|x| x.to_string())
                        .collect::<Vec<_>>()
                        .join("; ")),
                }
            });
        match checked {
            Ok(r) => {
                let by = r.requested_by.as_deref().unwrap_or("?");
                tracing::info!(task = %r.task, by, "train request");
                let actor = Actor {
                    credential: Credential::Nats,
                    address: None,
                    name: r.requested_by.clone(),
                };
                let change = Change::new(AuditAction::TrainRequested, actor, "over NATS");
                match audit.record(change.task(&r.task)).await {
                    Ok(_) => {
                        let _ = triggers.send(r.task);
                    }
                    Err(e) => tracing::warn!(task = %r.task, error = %e,
                        "train request dropped: the audit log did not take it"),
                }
            }
            Err(e) => tracing::warn!(error = %e, "ignoring malformed train request"),
        }
    }
}
