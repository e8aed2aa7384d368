//! Charging usage: consumes `aifab.usage`, charges each record once (the store's Lua
//! script is idempotent), dead-letters records that do not decode, and commits offsets
//! after charging.

use std::time::Duration;

use aifab_core::messages::{decode, encode, DeadLetter, DecodeError, SourceRef, UsageRecord};
use aifab_core::supervise::Heartbeat;
use aifab_core::topics;
use anyhow::Context;
use futures::StreamExt;
use rdkafka::consumer::{CommitMode, Consumer, StreamConsumer};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::Message;
use redis::aio::ConnectionManager;
use tokio_util::sync::CancellationToken;

use crate::app::App;
use crate::config::Config;
use crate::metric_names;

/// What became of a usage record (the `result` label of its counter).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum UsageResult {
    Charged,
    /// Charged before (a replay or a duplicate): nothing charged again.
    Duplicate,
    /// Not a usage record: dead-lettered.
    Invalid,
}

impl UsageResult {
    fn as_str(self) -> &'static str {
        match self {
            UsageResult::Charged => "charged",
            UsageResult::Duplicate => "duplicate",
            UsageResult::Invalid => "invalid",
        }
    }

    fn count(self) {
        metrics::counter!(metric_names::USAGE_RECORDS_TOTAL, "result" => self.as_str())
            .increment(1);
    }
}

/// Consume usage records and charge each once; commit offsets after charging.
pub(crate) async fn charge_loop(
    config: Config,
    app: App,
    heartbeat: Heartbeat,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    // Charging needs Redis: do not consume before it answers.
    let mut conn = tokio::select! {
        c = app.redis.get() => c?,
        _ = shutdown.cancelled() => return Ok(()),
    };
    let brokers = &config.brokers.kafka_brokers;
    let mut cc =
        aifab_core::kafka::consumer_config(brokers, "aifab-cost-accountant", &config.group);
    cc.set("auto.offset.reset", config.start_from.offset_reset());
    let consumer: StreamConsumer = cc.create().context("creating the usage consumer")?;
    consumer
        .subscribe(&[&config.usage_topic])
        .context("subscribing to the usage topic")?;
    let producer: FutureProducer =
        aifab_core::kafka::producer_config(brokers, "aifab-cost-accountant")
            .create()
            .context("creating the DLQ producer")?;
    tracing::info!(topic = %config.usage_topic, group = %config.group, "charging usage");
    let mut stream = consumer.stream();
    let mut last_commit = tokio::time::Instant::now();
    let mut dirty = false;
    loop {
        let msg = tokio::select! {
            _ = shutdown.cancelled() => break,
            _ = tokio::time::sleep(Duration::from_millis(500)) => {
                heartbeat.idle();
                None
            }
            m = stream.next() => Some(m.context("the usage consumer's stream ended")?),
        };
        if let Some(msg) = msg {
            let m = match msg {
                Ok(m) => m,
                Err(e) => {
                    heartbeat.trouble(format_args!("consumer error: {e}"));
                    tracing::warn!(error = %e, "usage consumer error");
                    continue;
                }
            };
            let payload = m.payload().unwrap_or_default();
            match decode::<UsageRecord>(payload) {
                Ok(u) => {
                    // Shut down meanwhile: this record's offset is not stored, the
                    // earlier ones are committed below.
                    let Some(result) = charge(&app, &mut conn, &u, &heartbeat, &shutdown).await
                    else {
                        break;
                    };
                    result.count();
                    heartbeat.progress();
                }
                Err(e) => {
                    UsageResult::Invalid.count();
                    if !dead_letter(&producer, &m, &e, &heartbeat, &shutdown).await {
                        break;
                    }
                }
            }
            if let Err(e) = consumer.store_offset_from_message(&m) {
                tracing::warn!(error = %e, "storing the offset failed");
            }
            dirty = true;
        }
        if dirty && last_commit.elapsed() >= Duration::from_millis(500) {
            if let Err(e) = consumer.commit_consumer_state(CommitMode::Async) {
                tracing::debug!(error = %e, "offset commit failed (retried with the next)");
            }
            dirty = false;
            last_commit = tokio::time::Instant::now();
        }
    }
    drop(stream);
    if dirty {
        if let Err(e) = consumer.commit_consumer_state(CommitMode::Sync) {
            tracing::warn!(error = %e, "final offset commit failed");
        }
    }
    Ok(())
}

/// Charge one usage record, retrying until the store answers: skipping would lose money,
/// and charging is idempotent. `None` when shut down meanwhile.
async fn charge(
    app: &App,
    conn: &mut ConnectionManager,
    u: &UsageRecord,
    heartbeat: &Heartbeat,
    shutdown: &CancellationToken,
) -> Option<UsageResult> {
    let cost = app.prices.cost(u);
    let mut backoff = aifab_core::backoff::Backoff::for_dependencies();
    loop {
        match app.store.charge(conn, u, cost.direct, cost.idle).await {
            Ok(true) => return Some(UsageResult::Charged),
            Ok(false) => return Some(UsageResult::Duplicate),
            Err(e) => {
                heartbeat.trouble(format_args!("charging failed: {e}"));
                let delay = backoff.next_delay_jittered();
                tracing::warn!(error = %e, retry_in = ?delay, "charging failed; retrying");
                tokio::select! {
                    _ = tokio::time::sleep(delay) => {}
                    _ = shutdown.cancelled() => return None,
                }
            }
        }
    }
}

/// Send a record that is not a usage record to the DLQ, retrying until the broker takes
/// it: a later record's offset commits past this one, so giving up would lose it. False
/// when shut down meanwhile (its offset must not be committed then).
async fn dead_letter(
    producer: &FutureProducer,
    m: &impl Message,
    e: &DecodeError,
    heartbeat: &Heartbeat,
    shutdown: &CancellationToken,
) -> bool {
    let payload = m.payload().unwrap_or_default();
    let source = SourceRef {
        topic: m.topic().to_string(),
        partition: m.partition(),
        offset: m.offset(),
    };
    let dl = DeadLetter::new(
        payload,
        m.key(),
        Some(source),
        "cost-accountant",
        e.kind(),
        &explain(payload, e),
        None,
    );
    let key = format!("{}:{}:{}", m.topic(), m.partition(), m.offset());
    let bytes = encode(&dl);
    let mut backoff = aifab_core::backoff::Backoff::for_dependencies();
    loop {
        let record = FutureRecord::to(topics::DLQ.name).key(&key).payload(&bytes);
        match producer.send(record, Duration::from_secs(30)).await {
            Ok(_) => break,
            Err((err, _)) => {
                heartbeat.trouble(format_args!("dead-lettering failed: {err}"));
                let delay = backoff.next_delay_jittered();
                tracing::error!(error = %err, retry_in = ?delay,
                    "dead-lettering a bad usage record failed; retrying");
                tokio::select! {
                    _ = tokio::time::sleep(delay) => {}
                    _ = shutdown.cancelled() => return false,
                }
            }
        }
    }
    tracing::warn!(reason = %e, offset = m.offset(), "bad usage record dead-lettered");
    true
}

/// Why a usage record was refused, naming the field when the schema can tell.
fn explain(payload: &[u8], e: &DecodeError) -> String {
    if let Ok(v) = serde_json::from_slice::<serde_json::Value>(payload) {
        if let Err(violations) = aifab_core::schema::validate("usage/v1", &v) {
            return violations
                .iter()
                .map(|x| x.to_string())
                .collect::<Vec<_>>()
                .join("; ");
        }
    }
    e.to_string()
}
