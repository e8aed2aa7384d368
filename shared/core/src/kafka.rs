//! Kafka client settings and probes (rdkafka / librdkafka).
//!
//! One place decides the settings the delivery guarantees need: idempotent producers,
//! manual commits, `read_committed` consumers. Services start from these builders and
//! add only what is theirs.

use std::time::{Duration, Instant};

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use rdkafka::{Offset, TopicPartitionList};

use crate::topics::Topic;

/// Settings shared by every client: where, and a client id that names the service.
pub fn base_config(brokers: &str, client_id: &str) -> ClientConfig {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", brokers)
        .set("client.id", client_id)
        // Fail fast on a dead broker address in logs, but keep retrying forever.
        .set("socket.connection.setup.timeout.ms", "5000")
        .set("reconnect.backoff.ms", "200")
        .set("reconnect.backoff.max.ms", "10000")
        // A restarting broker can answer metadata before it lists itself; librdkafka
        // (2.10+) then forgets it and, with no broker left, only goes back to
        // `bootstrap.servers` after this long (5 minutes by default). Until then every
        // request of the client fails or waits: consumers stop fetching and coordinator
        // calls time out, however long the broker has been back.
        .set("metadata.recovery.rebootstrap.trigger.ms", "10000");
    // librdkafka's own debug contexts (`cgrp,eos,fetch`, `all`, ...) for diagnosing a
    // client: they log through the service's log at debug level.
    if let Ok(contexts) = std::env::var("AIFAB_KAFKA_DEBUG") {
        if !contexts.trim().is_empty() {
            c.set("debug", contexts.trim());
        }
    }
    c
}

/// An idempotent producer: retries never duplicate or reorder within a partition.
pub fn producer_config(brokers: &str, client_id: &str) -> ClientConfig {
    let mut c = base_config(brokers, client_id);
    c.set("enable.idempotence", "true")
        .set("acks", "all")
        .set("linger.ms", "5")
        .set("compression.type", "lz4")
        // Keep retrying through a broker restart rather than failing the send.
        .set("message.timeout.ms", "300000");
    c
}

/// A transactional producer (consume-transform-produce). The id must be stable per
/// input assignment so a restarted instance fences its zombie predecessor.
pub fn transactional_producer_config(
    brokers: &str,
    client_id: &str,
    transactional_id: &str,
) -> ClientConfig {
    let mut c = producer_config(brokers, client_id);
    // librdkafka requires message.timeout.ms <= transaction.timeout.ms.
    c.set("transactional.id", transactional_id)
        // Short, so the open transaction of a worker that died for good stops holding
        // back read_committed consumers soon (a restart with the same id fences it at once).
        .set("transaction.timeout.ms", "15000")
        .set("message.timeout.ms", "15000");
    c
}

/// A group consumer that commits by hand and sees only committed transactions.
pub fn consumer_config(brokers: &str, client_id: &str, group: &str) -> ClientConfig {
    let mut c = base_config(brokers, client_id);
    c.set("group.id", group)
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("auto.offset.reset", "earliest")
        .set("isolation.level", "read_committed")
        .set("session.timeout.ms", "10000")
        .set("heartbeat.interval.ms", "1000");
    c
}

/// Ask the cluster for metadata: the liveness probe for Kafka. Blocking; call from
/// `spawn_blocking`. Returns the number of brokers seen.
pub fn probe(client: &BaseConsumer, timeout: Duration) -> Result<usize, rdkafka::error::KafkaError> {
    let md = client.fetch_metadata(None, timeout)?;
    Ok(md.brokers().len())
}

/// A consumer with no group, for metadata and watermark queries.
pub fn metadata_client(brokers: &str, client_id: &str) -> anyhow::Result<BaseConsumer> {
    Ok(base_config(brokers, client_id).create()?)
}

/// Create topics that do not exist yet (existing ones are left as they are).
pub async fn ensure_topics(brokers: &str, topics: &[Topic]) -> anyhow::Result<()> {
    let admin: AdminClient<DefaultClientContext> = base_config(brokers, "aifab-admin").create()?;
    let new: Vec<NewTopic> = topics
        .iter()
        .map(|t| NewTopic::new(t.name, t.partitions, TopicReplication::Fixed(1)))
        .collect();
    let results = admin
        .create_topics(&new, &AdminOptions::new().operation_timeout(Some(Duration::from_secs(30))))
        .await?;
    for r in results {
        match r {
            Ok(_) | Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((name, code)) => anyhow::bail!("creating topic {name}: {code}"),
        }
    }
    Ok(())
}

/// Lag of one partition: messages after the group's position up to the high watermark.
///
/// A group that never committed starts at `auto.offset.reset=earliest`, i.e. the low
/// watermark, so everything still retained counts as lag.
pub fn partition_lag(committed: Option<i64>, low_watermark: i64, high_watermark: i64) -> i64 {
    let position = committed.unwrap_or(low_watermark).max(low_watermark);
    (high_watermark - position).max(0)
}

/// Committed offset, watermarks and lag of one partition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartitionOffsets {
    pub partition: i32,
    pub committed: Option<i64>,
    pub low_watermark: i64,
    pub high_watermark: i64,
    pub lag: i64,
}

/// The broker answered that the topic does not exist (yet): an answer, so not a sign
/// that the client asking is broken.
#[derive(Debug)]
pub struct TopicMissing(pub String);

impl std::fmt::Display for TopicMissing {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "topic {} does not exist", self.0)
    }
}

impl std::error::Error for TopicMissing {}

/// Read a group's committed offsets and the topic's watermarks (blocking). A topic that
/// does not exist is a [`TopicMissing`] error.
///
/// `client` must be created with `group.id = group` (it never subscribes, so it does
/// not join the group or disturb its members).
pub fn group_offsets(
    client: &BaseConsumer,
    topic: &str,
    timeout: Duration,
) -> anyhow::Result<Vec<PartitionOffsets>> {
    let md = client.fetch_metadata(Some(topic), timeout)?;
    let Some(t) = md.topics().first() else { anyhow::bail!("topic {topic}: no metadata") };
    if let Some(err) = t.error() {
        let code = RDKafkaErrorCode::from(err);
        if code == RDKafkaErrorCode::UnknownTopicOrPartition {
            return Err(TopicMissing(topic.to_string()).into());
        }
        anyhow::bail!("topic {topic}: {code:?}");
    }
    let mut tpl = TopicPartitionList::new();
    for p in t.partitions() {
        tpl.add_partition(topic, p.id());
    }
    let committed = client.committed_offsets(tpl, timeout)?;
    let mut out = Vec::new();
    for elem in committed.elements() {
        let (low, high) = client.fetch_watermarks(topic, elem.partition(), timeout)?;
        let committed = match elem.offset() {
            Offset::Offset(o) => Some(o),
            _ => None,
        };
        out.push(PartitionOffsets {
            partition: elem.partition(),
            committed,
            low_watermark: low,
            high_watermark: high,
            lag: partition_lag(committed, low, high),
        });
    }
    out.sort_by_key(|p| p.partition);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_client_rebootstraps_soon_and_librdkafka_takes_the_settings() {
        let brokers = "127.0.0.1:1";
        let configs = [
            ("producer", producer_config(brokers, "t")),
            ("transactional", transactional_producer_config(brokers, "t", "t")),
            ("consumer", consumer_config(brokers, "t", "g")),
        ];
        for (name, c) in configs {
            let trigger: u64 = c.get("metadata.recovery.rebootstrap.trigger.ms").expect(name).parse().unwrap();
            assert!(trigger <= 10_000, "{name}: rebootstrap after {trigger} ms");
        }
        // Creating a client checks every property name and value (no connection needed).
        let _: BaseConsumer = consumer_config(brokers, "t", "g").create().expect("consumer settings accepted");
        let _: BaseProducer = transactional_producer_config(brokers, "t", "t").create().expect("producer settings accepted");
        metadata_client(brokers, "t").expect("metadata client settings accepted");
    }

    #[test]
    fn lag_counts_from_commit_or_low_watermark() {
        assert_eq!(partition_lag(Some(40), 0, 100), 60);
        assert_eq!(partition_lag(None, 0, 100), 100);
        assert_eq!(partition_lag(None, 30, 100), 70, "deleted records are not lag");
        assert_eq!(partition_lag(Some(10), 30, 100), 70, "commit below retention");
        assert_eq!(partition_lag(Some(100), 0, 100), 0);
        assert_eq!(partition_lag(Some(120), 0, 100), 0, "never negative");
    }
}

/// What librdkafka says to do after a failed transactional call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TxnAction {
    /// The call timed out or met a passing condition: make the same call again. Aborting
    /// instead (a commit in progress, say) leaves the producer stuck between the two.
    Retry,
    /// The transaction is lost: abort it and consume its inputs again.
    Abort,
    /// The producer is unusable (fenced): replace it, or exit.
    Fatal,
}

pub fn txn_action(e: &KafkaError) -> TxnAction {
    match e {
        KafkaError::Transaction(t) if t.is_fatal() => TxnAction::Fatal,
        KafkaError::Transaction(t) if t.txn_requires_abort() => TxnAction::Abort,
        KafkaError::Transaction(t) if t.is_retriable() => TxnAction::Retry,
        _ => TxnAction::Abort,
    }
}

/// How long [`retry_transactional`] keeps making a call that times out before it gives
/// up on the producer. By then the coordinator has aborted the transaction anyway
/// (`transaction.timeout.ms` is 15 s), and after a broker restart librdkafka can keep a
/// coordinator request queued on a connection it never opens again, so that every retry
/// times out however long the broker has been back. A new producer under the same
/// transactional id settles what the old one left (its `init_transactions` aborts an
/// open transaction and completes one that was committing) and starts clean.
pub const TXN_RETRY_BUDGET: Duration = Duration::from_secs(30);

/// Make the transactional call `call` (`commit`, `abort`, `send_offsets`) until it
/// succeeds, fails for a reason other than a retriable one, or has been retried for
/// [`TXN_RETRY_BUDGET`]. Each retry counts in `retries_metric` (labelled `call`). Between
/// tries the producer's event queue is served: an abort completes only once the delivery
/// reports of the messages it purges have been polled. After it, check the error with
/// [`needs_new_producer`].
pub fn retry_transactional(
    producer: &BaseProducer,
    retries_metric: &str,
    call: &'static str,
    mut f: impl FnMut() -> Result<(), KafkaError>,
) -> Result<(), KafkaError> {
    let mut backoff = crate::backoff::Backoff::for_dependencies();
    let give_up_at = Instant::now() + TXN_RETRY_BUDGET;
    loop {
        match f() {
            Err(e) if txn_action(&e) == TxnAction::Retry && Instant::now() < give_up_at => {
                metrics::counter!(retries_metric.to_string(), "call" => call).increment(1);
                let delay = backoff.next_delay_jittered();
                tracing::warn!(error = %e, retry_in = ?delay, "transaction {call} failed; retrying");
                let until = Instant::now() + delay;
                while let Some(left) = until.checked_duration_since(Instant::now()).filter(|d| !d.is_zero()) {
                    producer.poll(left.min(Duration::from_millis(50)));
                }
            }
            Err(e) if txn_action(&e) == TxnAction::Retry => {
                tracing::warn!(error = %e, budget = ?TXN_RETRY_BUDGET, "transaction {call} kept failing; giving up on this producer");
                return Err(e);
            }
            other => return other,
        }
    }
}

/// After [`retry_transactional`] failed: whether the producer must be replaced (fenced,
/// a call that timed out for the whole retry budget, or one abandoned as stuck:
/// [`KafkaError::Canceled`]) rather than its transaction aborted.
pub fn needs_new_producer(e: &KafkaError) -> bool {
    matches!(e, KafkaError::Canceled) || matches!(txn_action(e), TxnAction::Fatal | TxnAction::Retry)
}

/// Longest one `send_offsets_to_transaction` call may block before the producer is
/// abandoned as stuck in it (a healthy call that times out returns after ~15 s).
pub const SEND_OFFSETS_BOUND: Duration = Duration::from_secs(60);

/// `send_offsets_to_transaction`, on a helper thread, waited for at most
/// [`SEND_OFFSETS_BOUND`]. After a broker restart librdkafka's call can wait for a
/// coordinator forever: its timeout does not cover the coordinator lookup (librdkafka
/// issue 5456). Past the bound the call is left to its thread, which keeps the producer
/// alive until the call returns, if ever, and the error is [`KafkaError::Canceled`]: the
/// caller replaces the producer ([`needs_new_producer`]).
pub fn send_offsets_bounded(
    producer: &std::sync::Arc<BaseProducer>,
    offsets: &TopicPartitionList,
    group: &std::sync::Arc<rdkafka::consumer::ConsumerGroupMetadata>,
    timeout: Duration,
) -> Result<(), KafkaError> {
    let (tx, rx) = std::sync::mpsc::sync_channel(1);
    let (p, o, g) = (producer.clone(), offsets.clone(), group.clone());
    std::thread::Builder::new()
        .name("send-offsets".into())
        .spawn(move || {
            let _ = tx.send(p.send_offsets_to_transaction(&o, &g, timeout));
        })
        .map_err(|_| KafkaError::Canceled)?;
    match rx.recv_timeout(SEND_OFFSETS_BOUND) {
        Ok(result) => result,
        Err(_) => {
            tracing::error!(bound = ?SEND_OFFSETS_BOUND, "send_offsets_to_transaction is stuck; abandoning the producer");
            Err(KafkaError::Canceled)
        }
    }
}

/// How long one wait on the producer's event queue lasts while flushing or waiting for
/// queue space. `BaseProducer::poll` always waits out its whole timeout, even once the
/// event it waited for has come, so this is also the granularity of those waits.
const PRODUCER_POLL_STEP: Duration = Duration::from_millis(1);

/// Abort the open transaction. Messages not sent yet are purged first; the ones in
/// flight must end (acked, failed or timed out) before librdkafka can abort, and their
/// delivery reports are served here: `BaseProducer::abort_transaction` does not poll,
/// so on its own it waits out its timeout whenever a message was in flight.
pub fn abort_transaction(producer: &BaseProducer, timeout: Duration) -> Result<(), KafkaError> {
    let deadline = Instant::now() + timeout;
    producer.purge(rdkafka::producer::PurgeConfig::default().queue());
    while producer.in_flight_count() > 0 && Instant::now() < deadline {
        producer.poll(PRODUCER_POLL_STEP);
    }
    producer.abort_transaction(deadline.saturating_duration_since(Instant::now()).max(PRODUCER_POLL_STEP))
}

/// `init_transactions`, retried while the broker is away. `Ok(false)` when `shutdown`
/// came first; an error when it failed fatally (fenced by a newer instance).
pub fn init_transactions_retrying(
    producer: &BaseProducer,
    timeout: Duration,
    shutdown: &tokio_util::sync::CancellationToken,
) -> anyhow::Result<bool> {
    let mut backoff = crate::backoff::Backoff::for_dependencies();
    loop {
        match producer.init_transactions(timeout) {
            Ok(()) => return Ok(true),
            Err(e) if txn_action(&e) == TxnAction::Fatal => anyhow::bail!("initialising Kafka transactions: {e}"),
            Err(e) => {
                let delay = backoff.next_delay_jittered();
                tracing::warn!(error = %e, retry_in = ?delay, "initialising Kafka transactions failed; retrying");
                if crate::backoff::sleep_or_cancelled(shutdown, delay) {
                    return Ok(false);
                }
            }
        }
    }
}

/// [`committed_positions`], retried while the broker is away, serving the consumer between
/// tries ([`serve_consumer`]: it may have a revocation to take first). Gives up with the
/// last error once `give_up_at` has passed, if given; `Ok(None)` when `stop` says so first.
pub fn committed_positions_retrying<C: rdkafka::consumer::ConsumerContext>(
    consumer: &BaseConsumer<C>,
    timeout: Duration,
    give_up_at: Option<Instant>,
    stop: impl Fn() -> bool,
) -> Result<Option<TopicPartitionList>, KafkaError> {
    let mut backoff = crate::backoff::Backoff::for_dependencies();
    loop {
        match committed_positions(consumer, timeout) {
            Ok(tpl) => return Ok(Some(tpl)),
            Err(e) if give_up_at.is_some_and(|t| Instant::now() >= t) => return Err(e),
            Err(e) => {
                let delay = backoff.next_delay_jittered();
                tracing::warn!(error = %e, retry_in = ?delay, "reading committed offsets to rewind failed; retrying");
                if stop() {
                    return Ok(None);
                }
                serve_consumer(consumer, delay);
            }
        }
    }
}

/// Wait `delay` while serving the consumer's callbacks. A consumer whose session timed
/// out (the broker was away) waits for the application to take the revocation in `poll`,
/// and until then its committed-offset lookups time out, however long the broker has been
/// back. Messages polled meanwhile are dropped: the caller seeks to the committed offsets
/// next, which reads them again.
pub fn serve_consumer<C: rdkafka::consumer::ConsumerContext>(consumer: &BaseConsumer<C>, delay: Duration) {
    let until = Instant::now() + delay;
    while let Some(left) = until.checked_duration_since(Instant::now()).filter(|d| !d.is_zero()) {
        let _ = consumer.poll(left.min(Duration::from_millis(100)));
    }
}

/// Where to rewind the consumer's assigned partitions to: each one's committed offset
/// (the start of the partition where none was committed yet). A partition whose
/// committed offset could not be read fails the whole call, to be retried: seeking it
/// to the start would consume again everything committed there (a broker that has just
/// restarted answers some offset fetches with a partition-level error).
pub fn committed_positions<C: rdkafka::consumer::ConsumerContext>(
    consumer: &BaseConsumer<C>,
    timeout: Duration,
) -> Result<TopicPartitionList, KafkaError> {
    let committed = consumer.committed(timeout)?;
    let mut tpl = TopicPartitionList::new();
    for e in committed.elements() {
        e.error()?;
        let offset = match e.offset() {
            Offset::Offset(o) => Offset::Offset(o),
            _ => Offset::Beginning,
        };
        tpl.add_partition_offset(e.topic(), e.partition(), offset)?;
    }
    Ok(tpl)
}

/// Queue `record`, waiting for space while the producer's queue is full.
pub fn send_waiting(producer: &BaseProducer, mut record: BaseRecord<'_, [u8], [u8]>) -> Result<(), KafkaError> {
    loop {
        match producer.send(record) {
            Ok(()) => return Ok(()),
            Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back)) => {
                record = back;
                producer.poll(PRODUCER_POLL_STEP);
            }
            Err((e, _)) => return Err(e),
        }
    }
}

/// Commit the open transaction, flushing first in short steps.
///
/// `BaseProducer::commit_transaction` flushes through `BaseProducer::flush`, which polls in
/// 100 ms steps, and each poll waits its full step: any commit with a message still in
/// flight (always, with `linger.ms`) took at least 100 ms, which capped a transactional
/// loop at one batch per 100 ms. Flushed here first, its own flush finds nothing to wait for.
/// A flush that times out is an error to abort on, as it is inside `commit_transaction`.
pub fn commit_transaction(producer: &BaseProducer, timeout: Duration) -> Result<(), KafkaError> {
    let deadline = Instant::now() + timeout;
    while producer.in_flight_count() > 0 {
        if Instant::now() >= deadline {
            return Err(KafkaError::Flush(RDKafkaErrorCode::OperationTimedOut));
        }
        producer.poll(PRODUCER_POLL_STEP);
    }
    producer.commit_transaction(deadline.saturating_duration_since(Instant::now()).max(PRODUCER_POLL_STEP))
}
