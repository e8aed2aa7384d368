//! The consuming half of every loop: one group consumer on one topic that drops what
//! rebalances and redeliveries make stale, and commits, or rewinds to, its offsets.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerGroupMetadata};
use rdkafka::error::KafkaError;
use rdkafka::Message;
use tokio_util::sync::CancellationToken;

use super::metric_names::{self, full};
use super::offsets::NextOffsets;
use super::rebalance::{Positions, RebalanceTracker};
use super::record::Consumed;
use crate::kafka;
use crate::supervise::Heartbeat;

/// Who a loop's consumer is and what it reads.
#[derive(Debug, Clone)]
pub struct ConsumerSettings {
    /// The service's name, for metric names (`aifab_<service>_pipeline_*`).
    pub service: &'static str,
    pub brokers: String,
    pub client_id: String,
    pub group: String,
    pub topic: String,
    /// Longest one blocking call waits (reading committed offsets, seeking).
    pub call_timeout: Duration,
    /// Told of consumer errors ([`Heartbeat::trouble`]).
    pub heartbeat: Heartbeat,
}

/// What one [`LoopConsumer::poll`] found.
#[derive(Debug)]
pub enum Polled {
    /// Nothing arrived within the timeout.
    Nothing,
    /// A consumer error (logged, and told to the heartbeat): stop collecting for now.
    Failed,
    /// A message handed over a second time, dropped (see [`Positions`]).
    Redelivered,
    Message(Consumed),
}

/// A group consumer with the loop's bookkeeping.
pub struct LoopConsumer {
    settings: ConsumerSettings,
    /// `settings.topic`, shared with every message consumed.
    topic: Arc<str>,
    consumer: BaseConsumer<RebalanceTracker>,
    positions: Positions,
    /// What this loop committed last per partition (for [`LoopConsumer::commit_idle`]).
    committed: NextOffsets,
    redeliveries_metric: String,
    restarts_metric: String,
}

impl LoopConsumer {
    /// Create the consumer; it reads nothing until [`LoopConsumer::subscribe`].
    pub fn new(settings: ConsumerSettings) -> anyhow::Result<Self> {
        let consumer = create(&settings)?;
        Ok(LoopConsumer {
            redeliveries_metric: full(settings.service, metric_names::REDELIVERIES_DROPPED),
            restarts_metric: full(settings.service, metric_names::CONSUMER_RESTARTS),
            topic: Arc::from(settings.topic.as_str()),
            settings,
            consumer,
            positions: Positions::default(),
            committed: NextOffsets::default(),
        })
    }

    pub fn subscribe(&self) -> anyhow::Result<()> {
        self.consumer
            .subscribe(&[&self.settings.topic])
            .with_context(|| format!("subscribing to {}", self.settings.topic))
    }

    pub fn unsubscribe(&self) {
        self.consumer.unsubscribe();
    }

    pub fn topic(&self) -> &str {
        &self.settings.topic
    }

    /// Poll once for up to `timeout`. Rebalance callbacks run only inside a poll: the
    /// partitions it revoked go to `on_revoked` first, and the caller drops what it
    /// collected of them (their next owner, maybe this loop again, reads them from the
    /// committed offset).
    pub fn poll(&mut self, timeout: Duration, on_revoked: impl FnOnce(&HashSet<i32>)) -> Polled {
        let polled = self.consumer.poll(timeout);
        let revoked = self.consumer.context().take_revoked(&self.settings.topic);
        if !revoked.is_empty() {
            for p in &revoked {
                self.positions.forget(*p);
            }
            on_revoked(&revoked);
        }
        match polled {
            None => Polled::Nothing,
            Some(Err(e)) => {
                self.settings
                    .heartbeat
                    .trouble(format_args!("consumer error: {e}"));
                tracing::warn!(error = %e, topic = %self.settings.topic, "consumer error");
                Polled::Failed
            }
            Some(Ok(m)) if !self.positions.admit(m.partition(), m.offset()) => {
                metrics::counter!(self.redeliveries_metric.clone()).increment(1);
                tracing::debug!(
                    partition = m.partition(),
                    offset = m.offset(),
                    "dropped a message delivered again"
                );
                Polled::Redelivered
            }
            Some(Ok(m)) => Polled::Message(Consumed::from_message(&m, &self.topic)),
        }
    }

    /// The group's generation, sent with a transaction's offsets (KIP-447 fencing);
    /// present once the consumer has joined.
    pub fn group_metadata(&self) -> Option<ConsumerGroupMetadata> {
        self.consumer.group_metadata()
    }

    /// What to commit for messages up to `next`. `all_polled` says every message polled
    /// so far is among them: only then may the consumer's position stand in where it is
    /// further (see [`NextOffsets::or_position`]).
    pub fn offsets_to_commit(&self, next: &NextOffsets, all_polled: bool) -> NextOffsets {
        match all_polled.then(|| self.position()).flatten() {
            Some(position) => next.or_position(&position),
            None => next.clone(),
        }
    }

    /// Note offsets a transaction committed.
    pub fn committed(&mut self, offsets: &NextOffsets) {
        self.committed.merge(offsets);
    }

    /// Commit `offsets` outside any transaction (at-least-once loops).
    pub fn commit(&mut self, offsets: &NextOffsets) -> Result<(), KafkaError> {
        self.consumer
            .commit(&offsets.to_list(&self.settings.topic), CommitMode::Sync)?;
        self.committed(offsets);
        Ok(())
    }

    /// While idle (nothing polled since the last commit and nothing held): a position
    /// past the committed offset can only have moved over transaction control records.
    /// Commit it, so a drained group shows lag 0 (the trailing marker is not work left).
    pub fn commit_idle(&mut self) {
        let Some(position) = self.position() else {
            return;
        };
        let ahead = NextOffsets::idle_commits(&position, &self.committed);
        if !ahead.is_empty() {
            // Best effort: a failure leaves the lag at 1, and the next idle poll tries again.
            let _ = self.commit(&ahead);
        }
    }

    /// Restart every assigned partition from its committed offset: after a failed batch
    /// or transaction, whose messages are then consumed again. The caller drops what it
    /// holds. While the broker is away the offsets cannot be read: wait for it for
    /// [`kafka::TXN_RETRY_BUDGET`], then replace the consumer (after a broker restart
    /// librdkafka's consumer can lose its group coordinator for good); a new one rejoins
    /// the group and starts every partition it is assigned from the committed offset.
    pub fn rewind(&mut self, shutdown: &CancellationToken) -> anyhow::Result<()> {
        self.positions.clear();
        let give_up_at = Instant::now() + kafka::TXN_RETRY_BUDGET;
        // Several tries within the budget: the first can time out only because a
        // revocation waits to be served, which happens between tries.
        let per_try = self.settings.call_timeout.min(kafka::TXN_RETRY_BUDGET / 3);
        let tpl = match kafka::committed_positions_retrying(
            &self.consumer,
            per_try,
            Some(give_up_at),
            || shutdown.is_cancelled(),
        ) {
            Ok(Some(tpl)) => tpl,
            Ok(None) => return Ok(()),
            Err(e) => return self.replace(e),
        };
        // Messages polled while waiting were dropped; the seek below reads them again.
        self.consumer.context().take_revoked(&self.settings.topic);
        tracing::info!(offsets = ?NextOffsets::of_list(&self.settings.topic, &tpl),
            "rewinding to the committed offsets");
        if tpl.count() > 0 {
            self.consumer
                .seek_partitions(tpl, self.settings.call_timeout)
                .context("seeking to the committed offsets")?;
        }
        Ok(())
    }

    fn replace(&mut self, e: KafkaError) -> anyhow::Result<()> {
        metrics::counter!(self.restarts_metric.clone()).increment(1);
        tracing::error!(error = %e, "the consumer cannot read its committed offsets; replacing it");
        let fresh = create(&self.settings)?;
        fresh
            .subscribe(&[&self.settings.topic])
            .context("subscribing")?;
        let old = std::mem::replace(&mut self.consumer, fresh);
        // Closing a consumer whose coordinator is unreachable can block: not on this thread.
        std::thread::Builder::new()
            .name("old-consumer".into())
            .spawn(move || drop(old))
            .context("closing the old consumer")?;
        self.positions.clear();
        Ok(())
    }

    /// The consumer's position on its assigned partitions, when it can say.
    fn position(&self) -> Option<NextOffsets> {
        let tpl = self.consumer.position().ok()?;
        Some(NextOffsets::of_list(&self.settings.topic, &tpl))
    }
}

fn create(settings: &ConsumerSettings) -> anyhow::Result<BaseConsumer<RebalanceTracker>> {
    kafka::consumer_config(&settings.brokers, &settings.client_id, &settings.group)
        .create_with_context(RebalanceTracker::default())
        .context("creating the Kafka consumer")
}
