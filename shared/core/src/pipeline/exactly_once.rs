//! [`run_transactional`]: the exactly-once consume → transform → produce loop of ingest
//! and feature. Each batch's output records **and** its input offsets commit in one Kafka
//! transaction, so a record consumed once yields its outputs once however often the
//! service dies; downstream reads `read_committed`.
//!
//! Batch N's transaction commits on a helper thread while batch N+1 is polled and
//! transformed; N+1's transaction begins only after N's settled, and if N's failed, N+1
//! is dropped too and both are consumed again from the committed offsets.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use rdkafka::error::KafkaError;
use tokio_util::sync::CancellationToken;

use super::consumer::LoopConsumer;
use super::metric_names::{self, full, TxnMetrics};
use super::offsets::NextOffsets;
use super::record::Record;
use super::txn::{Txn, TxnProducer, TxnSettings};
use super::{poll_batch, LoopSettings};
use crate::backoff::{sleep_or_cancelled, Backoff};

/// Longest one transactional call of these loops blocks before it is made again.
const TXN_TIMEOUT: Duration = Duration::from_secs(30);

/// Longest the loop waits for a batch's commit thread. Each call in it is bounded (retries
/// for `kafka::TXN_RETRY_BUDGET`, send_offsets by `kafka::SEND_OFFSETS_BOUND`), so this
/// only catches a librdkafka call stuck some other way: the producer is then replaced and
/// the thread left with the old one.
const COMMIT_BOUND: Duration = Duration::from_secs(180);

/// The transform of a [`run_transactional`] loop.
#[allow(async_fn_in_trait)]
pub trait Transform {
    /// What [`Transform::committed`] gets back once a batch committed (e.g. counters that
    /// must not count a batch twice). Dropped unused when the batch's transaction aborts.
    type Done;

    /// Turn a batch into the records to produce. An error means "try again later": the
    /// batch is not committed and will be consumed again. It may run while the previous
    /// batch's transaction is still committing, so keep per-batch state in `Done`.
    async fn transform(
        &mut self,
        batch: &[super::Consumed],
    ) -> anyhow::Result<(Vec<Record>, Self::Done)>;

    /// Called after the batch's outputs and offsets committed.
    async fn committed(&mut self, _done: Self::Done) {}
}

/// A batch whose transaction is committing on a helper thread.
struct InFlight<D> {
    /// The commit thread's result; it hangs up without one if the thread panicked.
    result: std::sync::mpsc::Receiver<Result<(), KafkaError>>,
    done: D,
    offsets: NextOffsets,
    messages: usize,
    records: usize,
    started: Instant,
}

/// The names this loop counts in, built once.
struct Names {
    messages: String,
    records: String,
    batch_seconds: String,
    retries: String,
}

/// Run an exactly-once consume-transform-produce loop until `shutdown` (blocking: call it
/// on its own thread). The batch in flight when shutdown fires is finished and committed.
/// Returns an error only when the loop cannot go on at all (a producer or consumer that
/// cannot be made): the service should exit and be restarted.
pub fn run_transactional<T: Transform>(
    settings: LoopSettings,
    mut stage: T,
    runtime: tokio::runtime::Handle,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let svc = settings.service;
    let Some(mut producer) = TxnProducer::start(
        TxnSettings {
            brokers: settings.brokers.clone(),
            client_id: settings.client_id.clone(),
            transactional_id: settings.client_id.clone(),
            init_timeout: TXN_TIMEOUT,
            call_timeout: TXN_TIMEOUT,
        },
        TxnMetrics::pipeline(svc),
        &shutdown,
    )?
    else {
        return Ok(());
    };
    let mut consumer = LoopConsumer::new(settings.consumer(TXN_TIMEOUT))?;
    consumer.subscribe()?;
    tracing::info!(topic = %settings.input_topic, group = %settings.group, "consuming (transactional)");
    let names = Names {
        messages: full(svc, metric_names::MESSAGES),
        records: full(svc, metric_names::RECORDS_PRODUCED),
        batch_seconds: full(svc, metric_names::BATCH_SECONDS),
        retries: full(svc, metric_names::RETRIES),
    };
    let mut backoff = Backoff::for_dependencies();
    let mut inflight: Option<InFlight<T::Done>> = None;
    let heartbeat = settings.heartbeat.clone();

    // Wait for the batch in flight; false when its transaction failed (and was aborted,
    // or the producer replaced).
    let settle = |f: InFlight<T::Done>,
                  stage: &mut T,
                  consumer: &mut LoopConsumer,
                  producer: &mut TxnProducer|
     -> anyhow::Result<bool> {
        let result = match f.result.recv_timeout(COMMIT_BOUND) {
            Ok(r) => r,
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {
                tracing::error!(
                    bound = ?COMMIT_BOUND,
                    "the batch's commit is stuck in librdkafka; abandoning the producer"
                );
                Err(KafkaError::Canceled)
            }
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => Err(KafkaError::Canceled),
        };
        match result {
            Ok(()) => {
                consumer.committed(&f.offsets);
                runtime.block_on(stage.committed(f.done));
                metrics::counter!(names.messages.clone()).increment(f.messages as u64);
                metrics::counter!(names.records.clone()).increment(f.records as u64);
                metrics::histogram!(names.batch_seconds.clone())
                    .record(f.started.elapsed().as_secs_f64());
                heartbeat.progress();
                Ok(true)
            }
            Err(e) => {
                metrics::counter!(names.retries.clone(), "reason" => "transaction").increment(1);
                heartbeat.trouble(format_args!("transaction failed: {e}"));
                tracing::warn!(error = %e, "transaction failed; rewinding to the committed offsets");
                // A producer not replaced because of shutdown: the loop ends next anyway.
                producer.recover(&e, true, &shutdown)?;
                Ok(false)
            }
        }
    };
    // After a failed transaction: back off a little, then consume again what it held.
    let retry = |consumer: &mut LoopConsumer, backoff: &mut Backoff| -> anyhow::Result<()> {
        sleep_or_cancelled(
            &shutdown,
            backoff.next_delay_jittered().min(Duration::from_secs(2)),
        );
        consumer.rewind(&shutdown)
    };

    while !shutdown.is_cancelled() {
        let batch = poll_batch(&mut consumer, &settings);
        if batch.is_empty() {
            match inflight.take() {
                Some(f) => {
                    if !settle(f, &mut stage, &mut consumer, &mut producer)? {
                        retry(&mut consumer, &mut backoff)?;
                    }
                }
                None => {
                    consumer.commit_idle();
                    settings.heartbeat.idle();
                }
            }
            continue;
        }
        let started = Instant::now();
        let out = runtime.block_on(stage.transform(&batch));
        // The previous batch decides whether this one stands.
        if let Some(f) = inflight.take() {
            if !settle(f, &mut stage, &mut consumer, &mut producer)? {
                retry(&mut consumer, &mut backoff)?;
                continue;
            }
        }
        let (records, done) = match out {
            Ok(r) => r,
            Err(e) => {
                metrics::counter!(names.retries.clone(), "reason" => "stage").increment(1);
                settings
                    .heartbeat
                    .trouble(format_args!("batch failed: {e:#}"));
                let delay = backoff.next_delay_jittered();
                tracing::warn!(error = %format!("{e:#}"), retry_in = ?delay, messages = batch.len(),
                    "batch failed; rewinding to the committed offsets to retry");
                sleep_or_cancelled(&shutdown, delay);
                consumer.rewind(&shutdown)?;
                continue;
            }
        };
        let Some(group) = consumer.group_metadata() else {
            tracing::warn!("consumer has no group metadata yet; consuming the batch again");
            consumer.rewind(&shutdown)?;
            continue;
        };
        backoff.reset();
        let next = NextOffsets::after(batch.iter().map(|m| (m.partition, m.offset)));
        // Every message polled is in this batch: the position may stand in.
        let offsets = consumer.offsets_to_commit(&next, true);
        let (txn, o, topic) = (
            producer.txn().clone(),
            offsets.clone(),
            settings.input_topic.clone(),
        );
        let n_records = records.len();
        let (tx, result) = std::sync::mpsc::sync_channel(1);
        let group = Arc::new(group);
        std::thread::Builder::new()
            .name(format!("{svc}-commit"))
            .spawn(move || {
                let _ = tx.send(commit_batch(&txn, &topic, &group, &records, &o));
            })
            .context("starting a commit thread")?;
        inflight = Some(InFlight {
            result,
            done,
            offsets,
            messages: batch.len(),
            records: n_records,
            started,
        });
    }
    if let Some(f) = inflight.take() {
        if !settle(f, &mut stage, &mut consumer, &mut producer)? {
            tracing::warn!("the last batch's transaction failed; it will be consumed again");
        }
    }
    tracing::info!(topic = %settings.input_topic, "stopping the transactional loop");
    consumer.unsubscribe();
    Ok(())
}

/// Produce `records` and commit them with the batch's offsets in one transaction.
fn commit_batch(
    txn: &Txn,
    topic: &str,
    group: &Arc<rdkafka::consumer::ConsumerGroupMetadata>,
    records: &[Record],
    offsets: &NextOffsets,
) -> Result<(), KafkaError> {
    txn.begin()?;
    for r in records {
        txn.send(r)?;
    }
    txn.commit_with_offsets(topic, offsets, group)
}
