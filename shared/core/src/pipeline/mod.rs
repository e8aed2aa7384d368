//! Kafka consume → transform → produce, exactly once, on one engine.
//!
//! The engine is two parts every exactly-once path shares:
//! - [`consumer::LoopConsumer`]: a group consumer on one topic that drops what a rebalance
//!   revoked and what the broker hands over twice, and commits or rewinds its offsets;
//! - [`txn::TxnProducer`]: a transactional producer whose calls are retried while they
//!   time out, and which aborts, or replaces itself, when a transaction fails.
//!
//! Three loops drive them:
//! - [`run_transactional`] (ingest, feature): each batch's outputs and input offsets
//!   commit in one transaction; batch N commits while N+1 is transformed;
//! - [`run_at_least_once`]: handle a batch (idempotent writes elsewhere), then commit;
//! - [`AtomicProducer`] (ingest's HTTP API): sets of records, all or none, group-committed.
//!
//! The inference worker drives the same two parts with its own batcher
//! (`services/inference-worker/src/worker.rs`): its batches wait for deadlines and share
//! a transaction under backlog, but poll, commit, abort and rewind the same way.
//!
//! Loops run on their own OS thread (librdkafka calls block) and call async stages on a
//! tokio runtime handle. A batch never straddles a rebalance: callbacks run only inside
//! `poll`, messages of revoked partitions are dropped (their new owner reads them from the
//! committed offset), and a transaction whose group generation went stale is fenced by
//! the broker (KIP-447) and aborted. A stage error (Redis down, say) is transient: the
//! batch is dropped, the consumer rewinds to its committed offsets and the loop backs off
//! and tries again. Nothing is committed for a batch that was not fully handled.

mod at_least_once;
mod atomic_producer;
pub mod consumer;
mod exactly_once;
pub mod metric_names;
pub mod offsets;
pub mod rebalance;
mod record;
pub mod txn;

use std::time::{Duration, Instant};

use anyhow::Context as _;

pub use at_least_once::{run_at_least_once, Handler};
pub use atomic_producer::{AtomicProducer, Outcome, SendError, ATOMIC_ANSWER_BOUND};
pub use exactly_once::{run_transactional, Transform};
pub use rebalance::Positions;
pub use record::{
    dead_letter, dead_letter_of, Consumed, Record, Refused, DEAD_LETTER_HEADER_MAX_BYTES,
};

use crate::supervise::Heartbeat;
use consumer::{ConsumerSettings, LoopConsumer, Polled};

/// Where and how a loop consumes.
#[derive(Debug, Clone)]
pub struct LoopSettings {
    /// The service's name: metric names (`aifab_<service>_pipeline_*`) and logs.
    pub service: &'static str,
    pub brokers: String,
    pub group: String,
    pub input_topic: String,
    /// Kafka client id; for [`run_transactional`] also the transactional id, which must be
    /// stable per replica so a restarted replica fences its dead predecessor at once.
    pub client_id: String,
    /// Most messages in one batch.
    pub max_batch: usize,
    /// Longest a batch waits to fill after its first message.
    pub max_wait: Duration,
    /// Beaten on each committed batch and each poll that found nothing waiting (not right
    /// after a failed batch: see [`Heartbeat::idle`]), so a loop whose batches keep failing
    /// goes stale ([`crate::service::Service::heartbeat`]).
    pub heartbeat: Heartbeat,
}

impl LoopSettings {
    /// A secondary loop's settings: one that keeps a store in step with a topic
    /// ([`run_at_least_once`]) beside the service's main loop (feature's dedupe-cache
    /// filler, ingest's predictions store). Batches of up to 2000 messages, filled for at
    /// most 20 ms: what it writes trails the topic by little, whatever the main loop's
    /// settings.
    pub fn secondary(
        service: &'static str,
        brokers: String,
        group: String,
        input_topic: String,
        client_id: String,
        heartbeat: Heartbeat,
    ) -> Self {
        LoopSettings {
            service,
            brokers,
            group,
            input_topic,
            client_id,
            max_batch: 2000,
            max_wait: Duration::from_millis(20),
            heartbeat,
        }
    }

    fn consumer(&self, call_timeout: Duration) -> ConsumerSettings {
        ConsumerSettings {
            service: self.service,
            brokers: self.brokers.clone(),
            client_id: self.client_id.clone(),
            group: self.group.clone(),
            topic: self.input_topic.clone(),
            call_timeout,
            heartbeat: self.heartbeat.clone(),
        }
    }
}

/// Most value bytes in one batch. `max_batch` counts messages, and a batch of large ones
/// (up to the broker's 1 MB each) would otherwise hold gigabytes, with its outputs.
const BATCH_MAX_BYTES: usize = 64 << 20;

/// How long a loop waits for a batch's first message (so shutdown is seen).
const FIRST_WAIT: Duration = Duration::from_millis(100);
/// While messages keep arriving, the clock is read once per this many (each read is a
/// `clock_gettime`: cheap, but a profile of the relay found a tenth of its time in them).
const CLOCK_EVERY: u32 = 64;

/// The wait for a batch's next poll: `None` closes the batch. `deadline` is when the batch
/// closes (unset before its first message); `unclocked` counts the messages taken since
/// the clock was last read, 0 after a poll that found nothing. While messages flow, the
/// next poll does not wait and the clock is not read.
fn next_wait(
    deadline: Option<Instant>,
    unclocked: u32,
    now: impl FnOnce() -> Instant,
) -> Option<Duration> {
    match deadline {
        None => Some(FIRST_WAIT),
        Some(_) if unclocked > 0 && unclocked < CLOCK_EVERY => Some(Duration::ZERO),
        Some(d) => d
            .checked_duration_since(now())
            .filter(|left| !left.is_zero()),
    }
}

/// Collect one batch: wait up to [`FIRST_WAIT`] for a first message, then take more until
/// `max_batch`, [`BATCH_MAX_BYTES`] or `max_wait` after the first.
fn poll_batch(consumer: &mut LoopConsumer, settings: &LoopSettings) -> Vec<Consumed> {
    let mut batch: Vec<Consumed> = Vec::with_capacity(settings.max_batch.min(1024));
    let mut bytes = 0usize;
    let mut deadline: Option<Instant> = None;
    let mut unclocked = 0u32;
    while batch.len() < settings.max_batch && bytes < BATCH_MAX_BYTES {
        let Some(wait) = next_wait(deadline, unclocked, Instant::now) else {
            break;
        };
        if !wait.is_zero() {
            unclocked = 0;
        }
        let polled = consumer.poll(wait, |revoked| {
            let before = batch.len();
            batch.retain(|m| !revoked.contains(&m.partition));
            if before != batch.len() {
                tracing::info!(
                    dropped = before - batch.len(),
                    "dropped collected messages of revoked partitions"
                );
            }
        });
        match polled {
            Polled::Nothing if deadline.is_none() => break,
            Polled::Nothing => unclocked = 0,
            // Counted like a message taken, so that a replay of many cannot hold the
            // batch open past its deadline unclocked.
            Polled::Redelivered => unclocked = unclocked.saturating_add(1),
            Polled::Failed => break,
            Polled::Message(m) => {
                bytes += m.payload.len();
                batch.push(m);
                deadline.get_or_insert_with(|| Instant::now() + settings.max_wait);
                unclocked = unclocked.saturating_add(1);
            }
        }
    }
    batch
}

/// Start a loop on its own OS thread; the returned handle resolves when it ends.
pub fn spawn_loop<F>(
    name: &str,
    f: F,
) -> anyhow::Result<tokio::task::JoinHandle<anyhow::Result<()>>>
where
    F: FnOnce() -> anyhow::Result<()> + Send + 'static,
{
    let thread = std::thread::Builder::new()
        .name(name.to_string())
        .spawn(f)
        .with_context(|| format!("starting thread {name}"))?;
    let name = name.to_string();
    Ok(tokio::task::spawn_blocking(move || match thread.join() {
        Ok(r) => r,
        Err(_) => Err(anyhow::anyhow!("{name} panicked")),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_batch_waits_for_its_first_message_then_only_while_time_is_left() {
        let t0 = Instant::now();
        let never = || -> Instant { panic!("the clock is not read here") };
        assert_eq!(next_wait(None, 0, never), Some(FIRST_WAIT));
        let deadline = Some(t0 + Duration::from_millis(20));
        assert_eq!(
            next_wait(deadline, 1, never),
            Some(Duration::ZERO),
            "flowing"
        );
        assert_eq!(
            next_wait(deadline, CLOCK_EVERY - 1, never),
            Some(Duration::ZERO)
        );
        let five_in = || t0 + Duration::from_millis(15);
        assert_eq!(
            next_wait(deadline, CLOCK_EVERY, five_in),
            Some(Duration::from_millis(5))
        );
        assert_eq!(
            next_wait(deadline, 0, five_in),
            Some(Duration::from_millis(5)),
            "idle"
        );
        let late = || t0 + Duration::from_millis(25);
        assert_eq!(next_wait(deadline, 0, late), None, "closed");
        assert_eq!(
            next_wait(deadline, CLOCK_EVERY, || t0 + Duration::from_millis(20)),
            None
        );
    }
}
