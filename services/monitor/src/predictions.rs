//! End-to-end latency and throughput: consumes `aifab.predictions` and `aifab.dlq` into
//! the rolling window, with a counter per prediction and dead letter on `/metrics`.

use std::sync::{Arc, Mutex};

use aifab_core::messages::{decode, DeadLetter, Outcome, Prediction};
use anyhow::Context;
use futures::StreamExt;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::Message;
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::metric_names;
use crate::window::Windows;

/// The `outcome` label of a prediction (its wire name).
fn outcome_label(o: Outcome) -> &'static str {
    match o {
        Outcome::Ok => "ok",
        Outcome::Expired => "expired",
        Outcome::Cached => "cached",
    }
}

/// Consume predictions and dead letters into the rolling window and their counters.
pub(crate) async fn consume_predictions(
    config: Config,
    windows: Arc<Mutex<Windows>>,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let mut cc = aifab_core::kafka::consumer_config(
        &config.brokers.kafka_brokers,
        "aifab-monitor",
        &config.group,
    );
    // Statistics, not a pipeline stage: start at the end and let the client commit.
    cc.set("auto.offset.reset", "latest")
        .set("enable.auto.commit", "true")
        .set("enable.auto.offset.store", "true");
    let consumer: StreamConsumer = cc.create().context("creating the predictions consumer")?;
    consumer
        .subscribe(&[&config.predictions_topic, &config.dlq_topic])
        .context("subscribing to predictions")?;
    let mut stream = consumer.stream();
    loop {
        let msg = tokio::select! {
            _ = shutdown.cancelled() => return Ok(()),
            m = stream.next() => m,
        };
        let m = match msg.context("the predictions consumer's stream ended")? {
            Ok(m) => m,
            Err(e) => {
                tracing::debug!(error = %e, "predictions consumer error");
                continue;
            }
        };
        let now = aifab_core::now_ms();
        let payload = m.payload().unwrap_or_default();
        if m.topic() == config.dlq_topic {
            metrics::counter!(metric_names::DEAD_LETTERS_TOTAL).increment(1);
            if let Ok(dl) = decode::<DeadLetter>(payload) {
                metrics::counter!(metric_names::DEAD_LETTERS_BY_STAGE_TOTAL,
                    "stage" => dl.stage, "error_kind" => dl.error_kind)
                .increment(1);
            }
            windows
                .lock()
                .expect("windows lock")
                .record_dead_letter(now);
            continue;
        }
        match decode::<Prediction>(payload) {
            Ok(p) => {
                let latency_ms = p.produced_at_ms.saturating_sub(p.received_at_ms).max(0) as f64;
                let error = p.outcome == Outcome::Expired;
                metrics::counter!(metric_names::PREDICTIONS_TOTAL,
                    "task" => p.task.clone(), "model_version" => p.model_version.clone(),
                    "tenant" => p.tenant.clone(), "outcome" => outcome_label(p.outcome))
                .increment(1);
                metrics::histogram!(metric_names::E2E_LATENCY_SECONDS, "task" => p.task.clone())
                    .record(latency_ms / 1000.0);
                windows.lock().expect("windows lock").record(
                    now,
                    latency_ms,
                    error,
                    &p.task,
                    &p.model_version,
                    &p.tenant,
                );
            }
            Err(e) => {
                let topic = m.topic().to_string();
                metrics::counter!(metric_names::DECODE_ERRORS_TOTAL, "topic" => topic).increment(1);
                tracing::debug!(error = %e, "undecodable prediction");
            }
        }
    }
}
