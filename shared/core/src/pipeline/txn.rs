//! The producing half of every exactly-once path: one transactional producer, the calls
//! of a transaction (each retried while it times out), and what to do when one fails:
//! abort, or replace the producer.
//!
//! A transactional call that times out (the broker is away) is made again, for up to
//! [`kafka::TXN_RETRY_BUDGET`], as librdkafka requires: aborting a commit in progress
//! would leave the producer stuck between the two. On an abortable error the transaction
//! is aborted. A fatal error means this producer is fenced: after a broker outage longer
//! than `transaction.timeout.ms` the coordinator aborts the open transaction and bumps the
//! producer epoch. Then, and when a call kept timing out or an abort failed, the producer
//! is replaced by a new one under the same transactional id, whose `init_transactions`
//! settles whatever transaction the old one left, like a restarted process would.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use rdkafka::consumer::ConsumerGroupMetadata;
use rdkafka::error::KafkaError;
use rdkafka::producer::{BaseProducer, Producer};
use tokio_util::sync::CancellationToken;

use super::metric_names::TxnMetrics;
use super::offsets::NextOffsets;
use super::record::Record;
use crate::kafka::{self, retry_transactional};

/// The calls of one producer's transactions. Cheap to clone onto a commit thread.
#[derive(Clone)]
pub struct Txn {
    producer: Arc<BaseProducer>,
    metrics: Arc<TxnMetrics>,
    /// Longest one call blocks (a call that times out is made again).
    timeout: Duration,
}

impl Txn {
    pub fn begin(&self) -> Result<(), KafkaError> {
        self.producer.begin_transaction()
    }

    /// Queue a record into the open transaction, waiting while the queue is full.
    pub fn send(&self, record: &Record) -> Result<(), KafkaError> {
        kafka::send_waiting(&self.producer, record.base_record())
    }

    /// Commit the open transaction with the input `offsets` of `topic`
    /// (`send_offsets_to_transaction`, fenced by the group's generation `group`).
    pub fn commit_with_offsets(
        &self,
        topic: &str,
        offsets: &NextOffsets,
        group: &Arc<ConsumerGroupMetadata>,
    ) -> Result<(), KafkaError> {
        let tpl = offsets.to_list(topic);
        retry_transactional(
            &self.producer,
            &self.metrics.retries,
            "send_offsets",
            || kafka::send_offsets_bounded(&self.producer, &tpl, group, self.timeout),
        )?;
        self.commit()
    }

    /// Commit the open transaction (no input offsets: a producer that consumes nothing).
    pub fn commit(&self) -> Result<(), KafkaError> {
        retry_transactional(&self.producer, &self.metrics.retries, "commit", || {
            kafka::commit_transaction(&self.producer, self.timeout)
        })
    }

    fn abort(&self) -> Result<(), KafkaError> {
        retry_transactional(&self.producer, &self.metrics.retries, "abort", || {
            kafka::abort_transaction(&self.producer, self.timeout)
        })
    }

    /// Serve delivery reports (committed transactions waited for them already).
    pub fn serve(&self) {
        self.producer.poll(Duration::ZERO);
    }
}

/// Where a transactional producer connects, as which transactional id.
#[derive(Debug, Clone)]
pub struct TxnSettings {
    pub brokers: String,
    pub client_id: String,
    /// Stable per replica, so a restarted replica fences its dead predecessor at once;
    /// different from every other producer's.
    pub transactional_id: String,
    /// Longest `init_transactions` blocks before it is made again.
    pub init_timeout: Duration,
    /// Longest any other call blocks before it is made again.
    pub call_timeout: Duration,
}

/// A transactional producer that replaces itself when it breaks.
pub struct TxnProducer {
    settings: TxnSettings,
    txn: Txn,
    fenced: FenceWindow,
}

/// Fenced this many times within [`FENCE_WINDOW`], a producer is replaced; once more and
/// the loop exits. A broker outage longer than `transaction.timeout.ms` fences a producer
/// once, and its replacement carries on; two live instances sharing a transactional id
/// fence each other over and over, and replacing forever would hide that (every
/// transaction aborted, nothing served) where exiting shows it.
pub const FENCES_TOLERATED: usize = 2;
pub const FENCE_WINDOW: Duration = Duration::from_secs(120);

/// When a producer was last fenced: decides whether the next fence is one too many.
#[derive(Debug, Default)]
struct FenceWindow {
    recent: std::collections::VecDeque<std::time::Instant>,
}

impl FenceWindow {
    /// Note a fence at `now`; true when it is more than [`FENCES_TOLERATED`] within
    /// [`FENCE_WINDOW`].
    fn note(&mut self, now: std::time::Instant) -> bool {
        while self
            .recent
            .front()
            .is_some_and(|t| now.saturating_duration_since(*t) > FENCE_WINDOW)
        {
            self.recent.pop_front();
        }
        self.recent.push_back(now);
        self.recent.len() > FENCES_TOLERATED
    }
}

impl TxnProducer {
    /// A producer with its transactions initialised (waiting for the broker while it is
    /// away); `None` when shutdown came first. Its `init_transactions` fences a predecessor
    /// with the same transactional id and settles its open transaction.
    pub fn start(
        settings: TxnSettings,
        metrics: TxnMetrics,
        shutdown: &CancellationToken,
    ) -> anyhow::Result<Option<Self>> {
        let Some(producer) = create(&settings, shutdown)? else {
            return Ok(None);
        };
        let txn = Txn {
            producer: Arc::new(producer),
            metrics: Arc::new(metrics),
            timeout: settings.call_timeout,
        };
        Ok(Some(TxnProducer {
            settings,
            txn,
            fenced: FenceWindow::default(),
        }))
    }

    /// The calls of the current producer.
    pub fn txn(&self) -> &Txn {
        &self.txn
    }

    /// After `e` failed a transaction: abort it (`open`: one was begun, or may have been),
    /// or replace the producer when it is fenced, stuck or cannot abort. Either way nothing
    /// of the transaction becomes visible; the caller consumes its inputs again. `false`
    /// when shutdown came before a needed new producer was ready (the old one stays, and
    /// the caller should stop); an error only when a new producer cannot be made at all.
    pub fn recover(
        &mut self,
        e: &KafkaError,
        open: bool,
        shutdown: &CancellationToken,
    ) -> anyhow::Result<bool> {
        if kafka::needs_new_producer(e) {
            if kafka::txn_action(e) == kafka::TxnAction::Fatal
                && self.fenced.note(std::time::Instant::now())
            {
                anyhow::bail!(
                    "the transactional producer {} was fenced {} times within {:?}: another \
                     running instance probably uses the same transactional id (give each \
                     replica its own instance id); exiting",
                    self.settings.transactional_id,
                    FENCES_TOLERATED + 1,
                    FENCE_WINDOW
                );
            }
            return self.replace(e, shutdown);
        }
        // Begin itself failing leaves the producer in the abortable state of the
        // transaction before: a `Transaction` error always has one to abort.
        if open || matches!(e, KafkaError::Transaction(_)) {
            metrics::counter!(self.txn.metrics.aborted.clone()).increment(1);
            if let Err(abort) = self.txn.abort() {
                return self.replace(&abort, shutdown);
            }
            tracing::info!("transaction aborted");
        }
        Ok(true)
    }

    /// Make a new producer under the same transactional id. Its `init_transactions`
    /// fences what is left of the old producer's transaction (or completes a commit the
    /// coordinator had begun), so nothing of it changes after this returns. On shutdown
    /// first, the old producer stays (the loop is ending) and the answer is `false`.
    fn replace(&mut self, e: &KafkaError, shutdown: &CancellationToken) -> anyhow::Result<bool> {
        metrics::counter!(self.txn.metrics.restarts.clone()).increment(1);
        tracing::warn!(error = %e, "the transactional producer is fenced or broken; replacing it");
        match create(&self.settings, shutdown)? {
            Some(p) => {
                self.txn.producer = Arc::new(p);
                tracing::info!("new transactional producer ready");
                Ok(true)
            }
            None => {
                tracing::info!("shut down while replacing the producer");
                Ok(false)
            }
        }
    }
}

fn create(
    settings: &TxnSettings,
    shutdown: &CancellationToken,
) -> anyhow::Result<Option<BaseProducer>> {
    let producer: BaseProducer = kafka::transactional_producer_config(
        &settings.brokers,
        &settings.client_id,
        &settings.transactional_id,
    )
    .create()
    .context("creating the transactional producer")?;
    Ok(
        kafka::init_transactions_retrying(&producer, settings.init_timeout, shutdown)?
            .then_some(producer),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Instant;

    #[test]
    fn fences_are_tolerated_unless_they_repeat_within_the_window() {
        let t0 = Instant::now();
        let mut w = FenceWindow::default();
        assert!(!w.note(t0), "one outage: replace");
        assert!(!w.note(t0 + Duration::from_secs(10)));
        assert!(
            w.note(t0 + Duration::from_secs(20)),
            "a third within the window: exit"
        );

        let mut spread = FenceWindow::default();
        for i in 0..10 {
            let at = t0 + FENCE_WINDOW * i + Duration::from_secs(1) * i;
            assert!(!spread.note(at), "fence {i} long after the one before");
        }
    }
}
