//! Rewinding a consumer to its group's committed offsets (after a failed batch or
//! transaction), retried while the broker is away.

use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::{Offset, TopicPartitionList};

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
                tracing::warn!(
                    error = %e,
                    retry_in = ?delay,
                    "reading committed offsets to rewind failed; retrying"
                );
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
pub fn serve_consumer<C: rdkafka::consumer::ConsumerContext>(
    consumer: &BaseConsumer<C>,
    delay: Duration,
) {
    let until = Instant::now() + delay;
    while let Some(left) = until
        .checked_duration_since(Instant::now())
        .filter(|d| !d.is_zero())
    {
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
