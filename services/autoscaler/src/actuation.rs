//! Applying decisions through an actuator (Docker, Kubernetes) and reporting the replica
//! count it reads back on `aifab.replicas.<service>`.

use std::sync::Arc;
use std::time::Duration;

use aifab_core::messages::{encode, tag, ReplicaReport};
use aifab_core::topics::subjects;

use crate::actuators::Actuator;
use crate::metric_names;

/// How applying a decision went (the `result` label of its counter).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Actuation {
    Ok,
    Error,
}

impl Actuation {
    fn as_str(self) -> &'static str {
        match self {
            Actuation::Ok => "ok",
            Actuation::Error => "error",
        }
    }

    fn count(self, actuator: &Actuator) {
        metrics::counter!(metric_names::ACTUATIONS_TOTAL,
            "actuator" => actuator.name(), "result" => self.as_str())
        .increment(1);
    }
}

/// Apply a decision through the actuator in the background (one at a time; a decision
/// that arrives while one is being applied is skipped: the next reading repeats it).
pub(crate) fn apply(
    actuator: Arc<Actuator>,
    desired: u32,
    current: Option<u32>,
    lock: Arc<tokio::sync::Mutex<()>>,
    nats: async_nats::Client,
    service: String,
) {
    if current == Some(desired) {
        return;
    }
    let Ok(guard) = lock.try_lock_owned() else {
        return;
    };
    tokio::spawn(async move {
        let _guard = guard;
        match actuator.scale(desired).await {
            Ok(n) => {
                Actuation::Ok.count(&actuator);
                tracing::info!(actuator = actuator.name(), replicas = n, "scaled");
                publish_replicas(&nats, &service, n, actuator.name()).await;
            }
            Err(e) => {
                Actuation::Error.count(&actuator);
                tracing::error!(actuator = actuator.name(), desired, error = %format!("{e:#}"),
                    "scaling failed");
            }
        }
    });
}

/// Publish the replica count on `aifab.replicas.<service>`.
async fn publish_replicas(nats: &async_nats::Client, service: &str, replicas: u32, actuator: &str) {
    let report = ReplicaReport {
        schema: tag(),
        service: service.to_string(),
        replicas,
        actuator: actuator.to_string(),
        at_ms: aifab_core::now_ms(),
    };
    if let Err(e) = nats
        .publish(subjects::replicas(service), encode(&report).into())
        .await
    {
        tracing::warn!(error = %e, "publishing the replica report failed");
    }
}

/// Read the actuator's replica count periodically and publish it.
pub(crate) async fn poll_actuator(
    actuator: Arc<Actuator>,
    nats: async_nats::Client,
    service: String,
    every: Duration,
    readiness: aifab_core::health::Readiness,
    shutdown: tokio_util::sync::CancellationToken,
) {
    loop {
        match actuator.replicas().await {
            Ok(n) => {
                readiness.set(
                    "actuator",
                    true,
                    format!("{}: {n} replicas", actuator.name()),
                );
                publish_replicas(&nats, &service, n, actuator.name()).await;
            }
            Err(e) => {
                if readiness.set("actuator", false, format!("{e:#}")) {
                    tracing::warn!(actuator = actuator.name(), error = %format!("{e:#}"),
                        "actuator unreachable");
                }
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(every) => {}
            _ = shutdown.cancelled() => return,
        }
    }
}
