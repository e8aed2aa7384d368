//! [`run_at_least_once`]: for consumers whose only effects are idempotent writes elsewhere
//! (Redis): handle a batch, then commit its offsets. A crash in between replays the
//! batch, which rewrites the same values.

use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::consumer::LoopConsumer;
use super::metric_names::{self, full};
use super::offsets::NextOffsets;
use super::{poll_batch, Consumed, LoopSettings};
use crate::backoff::{sleep_or_cancelled, Backoff};

/// Longest one blocking consumer call waits (reading committed offsets, seeking).
const CALL_TIMEOUT: Duration = Duration::from_secs(30);

/// The handler of a [`run_at_least_once`] loop.
#[allow(async_fn_in_trait)]
pub trait Handler {
    /// Handle a batch; an error means "try again later" (nothing is committed).
    async fn handle(&mut self, batch: &[Consumed]) -> anyhow::Result<()>;
}

/// Run an at-least-once loop until `shutdown` (blocking: call it on its own thread):
/// handle each batch, then commit its offsets synchronously.
pub fn run_at_least_once<H: Handler>(
    settings: LoopSettings,
    mut handler: H,
    runtime: tokio::runtime::Handle,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let svc = settings.service;
    let mut consumer = loop {
        match LoopConsumer::new(settings.consumer(CALL_TIMEOUT))
            .and_then(|c| c.subscribe().map(|()| c))
        {
            Ok(c) => break c,
            Err(e) => {
                tracing::warn!(error = %format!("{e:#}"), "creating the consumer failed; retrying");
                if sleep_or_cancelled(&shutdown, Duration::from_secs(2)) {
                    return Ok(());
                }
            }
        }
    };
    tracing::info!(topic = %settings.input_topic, group = %settings.group, "consuming (at least once)");
    let (messages, retries) = (
        full(svc, metric_names::MESSAGES),
        full(svc, metric_names::RETRIES),
    );
    let mut backoff = Backoff::for_dependencies();
    while !shutdown.is_cancelled() {
        let batch = poll_batch(&mut consumer, &settings);
        if batch.is_empty() {
            consumer.commit_idle();
            settings.heartbeat.idle();
            continue;
        }
        if let Err(e) = runtime.block_on(handler.handle(&batch)) {
            metrics::counter!(retries.clone(), "reason" => "handler").increment(1);
            settings
                .heartbeat
                .trouble(format_args!("batch failed: {e:#}"));
            let delay = backoff.next_delay_jittered();
            tracing::warn!(error = %format!("{e:#}"), retry_in = ?delay, topic = %settings.input_topic,
                "batch failed; rewinding to the committed offsets to retry");
            sleep_or_cancelled(&shutdown, delay);
            consumer.rewind(&shutdown)?;
            continue;
        }
        backoff.reset();
        let next = NextOffsets::after(batch.iter().map(|m| (m.partition, m.offset)));
        let offsets = consumer.offsets_to_commit(&next, true);
        match consumer.commit(&offsets) {
            Ok(()) => settings.heartbeat.progress(),
            // A rebalance took the partitions: the new owner repeats the batch (idempotent).
            Err(e) => {
                tracing::warn!(error = %e, topic = %settings.input_topic, "offset commit failed")
            }
        }
        metrics::counter!(messages.clone()).increment(batch.len() as u64);
    }
    consumer.unsubscribe();
    Ok(())
}
