//! The producer calls of a consume-transform-produce loop, made to survive a broker that
//! goes away: transactional calls retried within a budget or bounded, commits and aborts
//! that flush or purge in short steps, sends that wait for queue space.

use std::time::{Duration, Instant};

use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use rdkafka::TopicPartitionList;

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
                tracing::warn!(
                    error = %e,
                    retry_in = ?delay,
                    "transaction {call} failed; retrying"
                );
                let until = Instant::now() + delay;
                while let Some(left) = until
                    .checked_duration_since(Instant::now())
                    .filter(|d| !d.is_zero())
                {
                    producer.poll(left.min(Duration::from_millis(50)));
                }
            }
            Err(e) if txn_action(&e) == TxnAction::Retry => {
                tracing::warn!(
                    error = %e,
                    budget = ?TXN_RETRY_BUDGET,
                    "transaction {call} kept failing; giving up on this producer"
                );
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
    matches!(e, KafkaError::Canceled)
        || matches!(txn_action(e), TxnAction::Fatal | TxnAction::Retry)
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
            tracing::error!(
                bound = ?SEND_OFFSETS_BOUND,
                "send_offsets_to_transaction is stuck; abandoning the producer"
            );
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
    producer.abort_transaction(
        deadline
            .saturating_duration_since(Instant::now())
            .max(PRODUCER_POLL_STEP),
    )
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
            Err(e) if txn_action(&e) == TxnAction::Fatal => {
                anyhow::bail!("initialising Kafka transactions: {e}")
            }
            Err(e) => {
                let delay = backoff.next_delay_jittered();
                tracing::warn!(
                    error = %e,
                    retry_in = ?delay,
                    "initialising Kafka transactions failed; retrying"
                );
                if crate::backoff::sleep_or_cancelled(shutdown, delay) {
                    return Ok(false);
                }
            }
        }
    }
}

/// Queue `record`, waiting for space while the producer's queue is full.
pub fn send_waiting(
    producer: &BaseProducer,
    mut record: BaseRecord<'_, [u8], [u8]>,
) -> Result<(), KafkaError> {
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
    producer.commit_transaction(
        deadline
            .saturating_duration_since(Instant::now())
            .max(PRODUCER_POLL_STEP),
    )
}
