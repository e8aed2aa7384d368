//! Kafka consume → transform → produce loops, the two ways services need them.
//!
//! - [`run_transactional`]: exactly once. Each batch's output records **and** its input
//!   offsets (`send_offsets_to_transaction`) commit in one Kafka transaction, so a record
//!   consumed once yields its outputs once however often the service dies; downstream
//!   reads `read_committed`. Used by ingest (`aifab.ingest.raw` → `aifab.features.in` /
//!   `aifab.dlq`) and feature (`aifab.features.in` → `aifab.inference.requests` /
//!   `aifab.training.examples` / `aifab.predictions` / `aifab.dlq`).
//! - [`run_at_least_once`]: for consumers whose only effects are idempotent writes
//!   elsewhere (Redis): handle a batch, then commit its offsets. A crash in between
//!   replays the batch, which rewrites the same values.
//!
//! Both run on their own OS thread (librdkafka calls block) and call the async stage on
//! a tokio runtime handle. A batch is up to `max_batch` messages, or what arrived within
//! `max_wait` of its first message. Rebalance callbacks run only inside `poll`, so a
//! batch never straddles a rebalance: messages of partitions revoked while the batch was
//! being collected are dropped (their new owner reads them from the committed offset),
//! and a transaction whose group generation went stale is fenced by the broker (KIP-447)
//! and aborted.
//!
//! A stage error (Redis down, say) is transient: the batch is dropped, the consumer
//! rewinds to its committed offsets and the loop backs off and tries again. Nothing is
//! committed for a batch that was not fully handled.

use std::collections::{BTreeMap, HashSet};
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance};
use rdkafka::error::KafkaError;
use rdkafka::message::{Header, Headers, OwnedHeaders};
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use rdkafka::{ClientContext, Message, Offset, TopicPartitionList};
use tokio_util::sync::CancellationToken;

use crate::backoff::{sleep_or_cancelled, Backoff};
use crate::kafka::{self, retry_transactional, send_waiting};
use crate::messages::{encode, DeadLetter, SourceRef, DEAD_LETTER_KEY_MAX_BYTES};
use crate::supervise::Heartbeat;
use crate::telemetry::metric_name;

const TXN_TIMEOUT: Duration = Duration::from_secs(30);

/// One consumed Kafka message, owned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Consumed {
    pub topic: String,
    pub partition: i32,
    pub offset: i64,
    pub key: Option<Vec<u8>>,
    /// The value; empty for a null (tombstone) value.
    pub payload: Vec<u8>,
    pub headers: Vec<(String, Vec<u8>)>,
    /// The record's timestamp (ms since the epoch), when it has one.
    pub timestamp_ms: Option<i64>,
}

impl Consumed {
    /// The first header called `name`.
    pub fn header(&self, name: &str) -> Option<&[u8]> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_slice())
    }

    /// Where this message came from, for dead letters.
    pub fn source(&self) -> SourceRef {
        SourceRef {
            topic: self.topic.clone(),
            partition: self.partition,
            offset: self.offset,
        }
    }

    pub fn from_message<M: Message>(m: &M) -> Self {
        Consumed {
            topic: m.topic().to_string(),
            partition: m.partition(),
            offset: m.offset(),
            key: m.key().map(<[u8]>::to_vec),
            payload: m.payload().unwrap_or_default().to_vec(),
            headers: m
                .headers()
                .map(|h| {
                    h.iter()
                        .map(|h| (h.key.to_string(), h.value.unwrap_or_default().to_vec()))
                        .collect()
                })
                .unwrap_or_default(),
            timestamp_ms: m.timestamp().to_millis(),
        }
    }
}

/// One record to produce.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    pub topic: String,
    pub key: Vec<u8>,
    pub payload: Vec<u8>,
    pub headers: Vec<(String, Vec<u8>)>,
}

impl Record {
    pub fn new(topic: impl Into<String>, key: impl Into<Vec<u8>>, payload: Vec<u8>) -> Self {
        Record {
            topic: topic.into(),
            key: key.into(),
            payload,
            headers: Vec::new(),
        }
    }

    pub fn header(mut self, name: impl Into<String>, value: impl Into<Vec<u8>>) -> Self {
        self.headers.push((name.into(), value.into()));
        self
    }

    /// rdkafka headers for this record.
    pub fn owned_headers(&self) -> OwnedHeaders {
        let mut h = OwnedHeaders::new_with_capacity(self.headers.len());
        for (k, v) in &self.headers {
            h = h.insert(Header {
                key: k,
                value: Some(v),
            });
        }
        h
    }

    /// The rdkafka record to send.
    pub fn base_record(&self) -> BaseRecord<'_, [u8], [u8]> {
        BaseRecord::to(&self.topic)
            .key(self.key.as_slice())
            .payload(self.payload.as_slice())
            .headers(self.owned_headers())
    }
}

/// A dead letter for a consumed message: the original bytes and key (base64, bounded as
/// [`DeadLetter::new`] says), where it came from, which stage refused it, why. Keyed like
/// the original; its headers kept up to [`DEAD_LETTER_HEADER_MAX_BYTES`] in all.
pub fn dead_letter(
    dlq_topic: &str,
    stage: &str,
    msg: &Consumed,
    error_kind: crate::dead_letter::ErrorKind,
    reason: &str,
    tenant: Option<String>,
) -> Record {
    let dl = DeadLetter::new(
        &msg.payload,
        msg.key.as_deref(),
        Some(msg.source()),
        stage,
        error_kind,
        reason,
        tenant,
    );
    let mut budget = DEAD_LETTER_HEADER_MAX_BYTES;
    let headers = msg
        .headers
        .iter()
        .filter(|(k, v)| match budget.checked_sub(k.len() + v.len()) {
            Some(left) => {
                budget = left;
                true
            }
            None => false,
        })
        .cloned()
        .collect();
    let key = msg.key.as_deref().unwrap_or_default();
    Record {
        topic: dlq_topic.to_string(),
        key: key[..key.len().min(DEAD_LETTER_KEY_MAX_BYTES)].to_vec(),
        payload: encode(&dl),
        headers,
    }
}

/// Most header bytes (names and values) a dead letter copies from its original: with the
/// original's bytes bounded, this keeps the whole record well under Kafka's 1 MB default.
pub const DEAD_LETTER_HEADER_MAX_BYTES: usize = 64 * 1024;

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

/// The transform of a [`run_transactional`] loop.
#[allow(async_fn_in_trait)]
pub trait Transform {
    /// What [`Transform::committed`] gets back once a batch committed (e.g. counters that
    /// must not count a batch twice). Dropped unused when the batch's transaction aborts.
    type Done;

    /// Turn a batch into the records to produce. An error means "try again later": the
    /// batch is not committed and will be consumed again. It may run while the previous
    /// batch's transaction is still committing, so keep per-batch state in `Done`.
    async fn transform(&mut self, batch: &[Consumed]) -> anyhow::Result<(Vec<Record>, Self::Done)>;

    /// Called after the batch's outputs and offsets committed.
    async fn committed(&mut self, _done: Self::Done) {}
}

/// The handler of a [`run_at_least_once`] loop.
#[allow(async_fn_in_trait)]
pub trait Handler {
    /// Handle a batch; an error means "try again later" (nothing is committed).
    async fn handle(&mut self, batch: &[Consumed]) -> anyhow::Result<()>;
}

/// The next offset a loop expects per input partition, to drop messages the consumer
/// hands over a second time. After a broker restart librdkafka has been seen to deliver a
/// partition's messages again from an earlier offset with no rewind or rebalance of the
/// loop's own (a seek made just before a session timeout, applied after the partition was
/// assigned again), which would process and commit them twice. Only the loop's own rewind
/// and a revocation make an earlier offset legitimate again: both forget the partition.
/// One loop reads one topic, so partitions are enough of a key.
#[derive(Debug, Default)]
pub struct Positions(std::collections::HashMap<i32, i64>);

impl Positions {
    /// Whether a message at `offset` of `partition` is new; if so, the one after it is
    /// now expected next.
    pub fn admit(&mut self, partition: i32, offset: i64) -> bool {
        let next = self.0.entry(partition).or_insert(offset);
        if offset < *next {
            return false;
        }
        *next = offset + 1;
        true
    }

    pub fn forget(&mut self, partition: i32) {
        self.0.remove(&partition);
    }

    pub fn clear(&mut self) {
        self.0.clear();
    }
}

/// Records partitions revoked by rebalances, so the loop can drop collected messages.
#[derive(Default)]
pub struct RebalanceTracker {
    revoked: Mutex<Vec<(String, i32)>>,
}

impl RebalanceTracker {
    fn take_revoked(&self) -> Vec<(String, i32)> {
        std::mem::take(&mut *self.revoked.lock().expect("rebalance lock"))
    }
}

impl ClientContext for RebalanceTracker {}

impl ConsumerContext for RebalanceTracker {
    fn pre_rebalance(&self, _: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Revoke(tpl) = rebalance {
            let mut revoked = self.revoked.lock().expect("rebalance lock");
            for e in tpl.elements() {
                revoked.push((e.topic().to_string(), e.partition()));
            }
            tracing::info!(partitions = tpl.count(), "partitions revoked");
        }
    }

    fn post_rebalance(&self, _: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Assign(tpl) = rebalance {
            tracing::info!(partitions = tpl.count(), "partitions assigned");
        }
    }
}

type LoopConsumer = BaseConsumer<RebalanceTracker>;

fn consumer(settings: &LoopSettings) -> anyhow::Result<LoopConsumer> {
    let config =
        crate::kafka::consumer_config(&settings.brokers, &settings.client_id, &settings.group);
    let consumer: LoopConsumer = config
        .create_with_context(RebalanceTracker::default())
        .context("creating the Kafka consumer")?;
    consumer
        .subscribe(&[&settings.input_topic])
        .with_context(|| format!("subscribing to {}", settings.input_topic))?;
    Ok(consumer)
}

/// Most value bytes in one batch. `max_batch` counts messages, and a batch of large ones
/// (up to the broker's 1 MB each) would otherwise hold gigabytes, with its outputs.
const BATCH_MAX_BYTES: usize = 64 << 20;

/// Collect one batch: wait up to 100 ms for a first message (so shutdown is seen), then
/// take more until `max_batch`, [`BATCH_MAX_BYTES`] or `max_wait` after the first.
fn poll_batch(
    consumer: &LoopConsumer,
    settings: &LoopSettings,
    positions: &mut Positions,
) -> Vec<Consumed> {
    let mut batch: Vec<Consumed> = Vec::new();
    let mut bytes = 0usize;
    let mut first_at: Option<Instant> = None;
    while batch.len() < settings.max_batch && bytes < BATCH_MAX_BYTES {
        let wait = match first_at {
            None => Duration::from_millis(100),
            Some(t) => match settings.max_wait.checked_sub(t.elapsed()) {
                Some(left) => left,
                None => break,
            },
        };
        let polled = consumer.poll(wait);
        // Messages collected before a revocation belong to their partitions' next owner.
        let revoked: HashSet<(String, i32)> =
            consumer.context().take_revoked().into_iter().collect();
        if !revoked.is_empty() {
            let before = batch.len();
            batch.retain(|m| !revoked.contains(&(m.topic.clone(), m.partition)));
            if before != batch.len() {
                tracing::info!(
                    dropped = before - batch.len(),
                    "dropped collected messages of revoked partitions"
                );
            }
            for (_, p) in revoked.iter().filter(|(t, _)| *t == settings.input_topic) {
                positions.forget(*p);
            }
        }
        match polled {
            None => {
                if first_at.is_none() {
                    break;
                }
            }
            Some(Err(e)) => {
                settings
                    .heartbeat
                    .trouble(format_args!("consumer error: {e}"));
                tracing::warn!(error = %e, topic = %settings.input_topic, "consumer error");
                break;
            }
            Some(Ok(m)) if !positions.admit(m.partition(), m.offset()) => {
                metrics::counter!(metric_name(
                    settings.service,
                    "pipeline_redeliveries_dropped_total"
                ))
                .increment(1);
            }
            Some(Ok(m)) => {
                bytes += m.payload_len();
                batch.push(Consumed::from_message(&m));
                first_at.get_or_insert_with(Instant::now);
            }
        }
    }
    batch
}

/// The offset after the last message of each partition in the batch.
pub fn next_offsets(batch: &[Consumed]) -> anyhow::Result<TopicPartitionList> {
    let mut next: BTreeMap<(&str, i32), i64> = BTreeMap::new();
    for m in batch {
        let e = next
            .entry((m.topic.as_str(), m.partition))
            .or_insert(m.offset + 1);
        *e = (*e).max(m.offset + 1);
    }
    let mut tpl = TopicPartitionList::new();
    for ((topic, p), o) in next {
        tpl.add_partition_offset(topic, p, Offset::Offset(o))?;
    }
    Ok(tpl)
}

/// The offsets to commit for a batch: one past its last message per partition, or the
/// consumer's position when that is further. The position only moves past messages the
/// loop has polled (all of them are in the batch) and past transaction control records;
/// committing it keeps a drained group's lag at 0 on a topic written transactionally,
/// whose partitions end with a commit marker, instead of 1 per partition forever.
fn commit_offsets(
    consumer: &LoopConsumer,
    batch: &[Consumed],
) -> anyhow::Result<TopicPartitionList> {
    let mut tpl = next_offsets(batch)?;
    if let Ok(position) = consumer.position() {
        let ahead: Vec<(String, i32, i64)> = tpl
            .elements()
            .iter()
            .filter_map(|e| {
                let Offset::Offset(next) = e.offset() else {
                    return None;
                };
                match position
                    .find_partition(e.topic(), e.partition())
                    .map(|p| p.offset())
                {
                    Some(Offset::Offset(pos)) if pos > next => {
                        Some((e.topic().to_string(), e.partition(), pos))
                    }
                    _ => None,
                }
            })
            .collect();
        for (topic, partition, pos) in ahead {
            tpl.set_partition_offset(&topic, partition, Offset::Offset(pos))?;
        }
    }
    Ok(tpl)
}

/// Offsets this loop committed last, per partition.
type Committed = std::collections::HashMap<(String, i32), i64>;

fn remember(committed: &mut Committed, tpl: &TopicPartitionList) {
    for e in tpl.elements() {
        if let Offset::Offset(o) = e.offset() {
            committed.insert((e.topic().to_string(), e.partition()), o);
        }
    }
}

/// While idle: the loop was handed no message since its last commit, so a position past
/// the committed offset can only have moved over transaction control records. Commit it,
/// so a drained group shows lag 0 (the trailing commit marker is not work left).
fn commit_idle_position(consumer: &LoopConsumer, committed: &mut Committed) {
    let Ok(position) = consumer.position() else {
        return;
    };
    let mut tpl = TopicPartitionList::new();
    for e in position.elements() {
        if let (Offset::Offset(pos), Some(&done)) = (
            e.offset(),
            committed.get(&(e.topic().to_string(), e.partition())),
        ) {
            if pos > done {
                let _ = tpl.add_partition_offset(e.topic(), e.partition(), Offset::Offset(pos));
            }
        }
    }
    if tpl.count() > 0 && consumer.commit(&tpl, CommitMode::Sync).is_ok() {
        remember(committed, &tpl);
    }
}

/// Restart every assigned partition from its committed offset. While the broker is away
/// the offsets cannot be read: wait for it (or for shutdown) rather than exit.
fn rewind(
    consumer: &LoopConsumer,
    positions: &mut Positions,
    shutdown: &CancellationToken,
) -> anyhow::Result<()> {
    positions.clear();
    let Some(tpl) = kafka::committed_positions_retrying(consumer, TXN_TIMEOUT, None, || {
        shutdown.is_cancelled()
    })
    .map_err(|e| anyhow::anyhow!("reading committed offsets to rewind: {e}"))?
    else {
        return Ok(());
    };
    // Messages polled while waiting were dropped; the seek below reads them again.
    consumer.context().take_revoked();
    if tpl.count() > 0 {
        consumer.seek_partitions(tpl, TXN_TIMEOUT)?;
    }
    Ok(())
}

fn is_fatal(e: &KafkaError) -> bool {
    crate::kafka::txn_action(e) == crate::kafka::TxnAction::Fatal
}

/// A transactional producer with its transactions initialised (waiting for the broker
/// while it is away); `None` when shutdown came first. Its `init_transactions` fences a
/// predecessor with the same transactional id and settles its open transaction.
fn transactional_producer(
    settings: &LoopSettings,
    shutdown: &CancellationToken,
) -> anyhow::Result<Option<BaseProducer>> {
    let producer: BaseProducer = kafka::transactional_producer_config(
        &settings.brokers,
        &settings.client_id,
        &settings.client_id,
    )
    .create()
    .context("creating the transactional producer")?;
    Ok(kafka::init_transactions_retrying(&producer, TXN_TIMEOUT, shutdown)?.then_some(producer))
}

/// Produce `records` and commit them with the batch's offsets in one transaction.
fn commit_batch(
    producer: &std::sync::Arc<BaseProducer>,
    retries_metric: &str,
    cgm: &std::sync::Arc<rdkafka::consumer::ConsumerGroupMetadata>,
    records: &[Record],
    offsets: &TopicPartitionList,
) -> Result<(), KafkaError> {
    producer.begin_transaction()?;
    for r in records {
        send_waiting(producer, r.base_record())?;
    }
    retry_transactional(producer, retries_metric, "send_offsets", || {
        kafka::send_offsets_bounded(producer, offsets, cgm, TXN_TIMEOUT)
    })?;
    retry_transactional(producer, retries_metric, "commit", || {
        kafka::commit_transaction(producer, TXN_TIMEOUT)
    })
}

/// Longest the loop waits for a batch's commit thread. Each call in it is bounded (retries
/// for `kafka::TXN_RETRY_BUDGET`, send_offsets by `kafka::SEND_OFFSETS_BOUND`), so this
/// only catches a librdkafka call stuck some other way: the producer is then replaced and
/// the thread left with the old one.
const COMMIT_BOUND: Duration = Duration::from_secs(180);

/// A batch whose transaction is committing on a helper thread.
struct InFlight<D> {
    /// The commit thread's result; it hangs up without one if the thread panicked.
    result: std::sync::mpsc::Receiver<Result<(), KafkaError>>,
    done: D,
    offsets: TopicPartitionList,
    messages: usize,
    records: usize,
    started: Instant,
}

/// Run an exactly-once consume-transform-produce loop until `shutdown` (blocking: call it
/// on its own thread). The batch in flight when shutdown fires is finished and committed.
/// Returns an error only on a fatal producer error (fenced by a newer instance with the
/// same transactional id, say): the service should exit and be restarted.
///
/// Batch N's transaction commits on a helper thread while batch N+1 is polled and
/// transformed; N+1's transaction begins only after N's settled, and if N's failed, N+1
/// is dropped too and both are consumed again from the committed offsets.
pub fn run_transactional<T: Transform>(
    settings: LoopSettings,
    mut stage: T,
    runtime: tokio::runtime::Handle,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let svc = settings.service;
    let retries_metric = metric_name(svc, "pipeline_transaction_retries_total");
    let Some(producer) = transactional_producer(&settings, &shutdown)? else {
        return Ok(());
    };
    let mut producer = std::sync::Arc::new(producer);
    let consumer = consumer(&settings)?;
    tracing::info!(topic = %settings.input_topic, group = %settings.group, "consuming (transactional)");
    let mut backoff = Backoff::for_dependencies();
    let mut committed = Committed::new();
    let mut positions = Positions::default();
    let mut inflight: Option<InFlight<T::Done>> = None;
    let heartbeat = settings.heartbeat.clone();

    // Wait for the batch in flight; false when its transaction failed (and was aborted,
    // or the producer replaced).
    let settle = |f: InFlight<T::Done>,
                  stage: &mut T,
                  committed: &mut Committed,
                  producer: &mut std::sync::Arc<BaseProducer>|
     -> anyhow::Result<bool> {
        let result = match f.result.recv_timeout(COMMIT_BOUND) {
            Ok(r) => r,
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {
                tracing::error!(bound = ?COMMIT_BOUND, "the batch's commit is stuck in librdkafka; abandoning the producer");
                Err(KafkaError::Canceled)
            }
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => Err(KafkaError::Canceled),
        };
        match result {
            Ok(()) => {
                remember(committed, &f.offsets);
                runtime.block_on(stage.committed(f.done));
                metrics::counter!(metric_name(svc, "pipeline_messages_total"))
                    .increment(f.messages as u64);
                metrics::counter!(metric_name(svc, "pipeline_records_produced_total"))
                    .increment(f.records as u64);
                metrics::histogram!(metric_name(svc, "pipeline_batch_seconds"))
                    .record(f.started.elapsed().as_secs_f64());
                heartbeat.progress();
                Ok(true)
            }
            Err(e) if is_fatal(&e) => {
                anyhow::bail!("fatal Kafka transaction error (fenced by a newer instance, or a broken producer): {e}")
            }
            Err(e) => {
                metrics::counter!(metric_name(svc, "pipeline_retries_total"), "reason" => "transaction").increment(1);
                heartbeat.trouble(format_args!("transaction failed: {e}"));
                tracing::warn!(error = %e, "transaction failed; aborting and rewinding to the committed offsets");
                let aborted = if kafka::needs_new_producer(&e) {
                    Err(e)
                } else {
                    let p: &BaseProducer = producer;
                    retry_transactional(p, &retries_metric, "abort", || {
                        kafka::abort_transaction(p, TXN_TIMEOUT)
                    })
                };
                match aborted {
                    Ok(()) => Ok(false),
                    Err(abort) if is_fatal(&abort) => {
                        anyhow::bail!("abort failed fatally: {abort}")
                    }
                    // The producer's state is unknown: start again with a new one.
                    Err(abort) => {
                        metrics::counter!(metric_name(svc, "pipeline_producer_restarts_total"))
                            .increment(1);
                        tracing::warn!(error = %abort, "the transaction could not be ended; replacing the producer");
                        match transactional_producer(&settings, &shutdown)? {
                            Some(p) => *producer = std::sync::Arc::new(p),
                            None => tracing::info!("shut down while replacing the producer"),
                        }
                        Ok(false)
                    }
                }
            }
        }
    };

    while !shutdown.is_cancelled() {
        let batch = poll_batch(&consumer, &settings, &mut positions);
        if batch.is_empty() {
            match inflight.take() {
                Some(f) => {
                    if !settle(f, &mut stage, &mut committed, &mut producer)? {
                        sleep_or_cancelled(
                            &shutdown,
                            backoff.next_delay_jittered().min(Duration::from_secs(2)),
                        );
                        rewind(&consumer, &mut positions, &shutdown)?;
                    }
                }
                None => {
                    commit_idle_position(&consumer, &mut committed);
                    settings.heartbeat.idle();
                }
            }
            continue;
        }
        let started = Instant::now();
        let out = runtime.block_on(stage.transform(&batch));
        // The previous batch decides whether this one stands.
        if let Some(f) = inflight.take() {
            if !settle(f, &mut stage, &mut committed, &mut producer)? {
                sleep_or_cancelled(
                    &shutdown,
                    backoff.next_delay_jittered().min(Duration::from_secs(2)),
                );
                rewind(&consumer, &mut positions, &shutdown)?;
                continue;
            }
        }
        let (records, done) = match out {
            Ok(r) => r,
            Err(e) => {
                metrics::counter!(metric_name(svc, "pipeline_retries_total"), "reason" => "stage")
                    .increment(1);
                settings
                    .heartbeat
                    .trouble(format_args!("batch failed: {e:#}"));
                let delay = backoff.next_delay_jittered();
                tracing::warn!(error = %format!("{e:#}"), retry_in = ?delay, messages = batch.len(),
                    "batch failed; rewinding to the committed offsets to retry");
                sleep_or_cancelled(&shutdown, delay);
                rewind(&consumer, &mut positions, &shutdown)?;
                continue;
            }
        };
        let Some(cgm) = consumer.group_metadata() else {
            tracing::warn!("consumer has no group metadata yet; consuming the batch again");
            rewind(&consumer, &mut positions, &shutdown)?;
            continue;
        };
        backoff.reset();
        let offsets = commit_offsets(&consumer, &batch)?;
        let (p, o, retries) = (producer.clone(), offsets.clone(), retries_metric.clone());
        let n_records = records.len();
        let (tx, result) = std::sync::mpsc::sync_channel(1);
        let cgm = std::sync::Arc::new(cgm);
        std::thread::Builder::new()
            .name(format!("{svc}-commit"))
            .spawn(move || {
                let _ = tx.send(commit_batch(&p, &retries, &cgm, &records, &o));
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
        if !settle(f, &mut stage, &mut committed, &mut producer)? {
            tracing::warn!("the last batch's transaction failed; it will be consumed again");
        }
    }
    tracing::info!(topic = %settings.input_topic, "stopping the transactional loop");
    consumer.unsubscribe();
    Ok(())
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
    let consumer = loop {
        match consumer(&settings) {
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
    let mut backoff = Backoff::for_dependencies();
    let mut committed = Committed::new();
    let mut positions = Positions::default();
    while !shutdown.is_cancelled() {
        let batch = poll_batch(&consumer, &settings, &mut positions);
        if batch.is_empty() {
            commit_idle_position(&consumer, &mut committed);
            settings.heartbeat.idle();
            continue;
        }
        if let Err(e) = runtime.block_on(handler.handle(&batch)) {
            metrics::counter!(metric_name(svc, "pipeline_retries_total"), "reason" => "handler")
                .increment(1);
            settings
                .heartbeat
                .trouble(format_args!("batch failed: {e:#}"));
            let delay = backoff.next_delay_jittered();
            tracing::warn!(error = %format!("{e:#}"), retry_in = ?delay, topic = %settings.input_topic,
                "batch failed; rewinding to the committed offsets to retry");
            sleep_or_cancelled(&shutdown, delay);
            rewind(&consumer, &mut positions, &shutdown)?;
            continue;
        }
        backoff.reset();
        let offsets = commit_offsets(&consumer, &batch)?;
        match consumer.commit(&offsets, CommitMode::Sync) {
            Ok(()) => {
                remember(&mut committed, &offsets);
                settings.heartbeat.progress();
            }
            // A rebalance took the partitions: the new owner repeats the batch (idempotent).
            Err(e) => {
                tracing::warn!(error = %e, topic = %settings.input_topic, "offset commit failed")
            }
        }
        metrics::counter!(metric_name(svc, "pipeline_messages_total"))
            .increment(batch.len() as u64);
    }
    consumer.unsubscribe();
    Ok(())
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

/// Produces sets of records atomically, for callers that are not consuming Kafka (an
/// HTTP handler, say): each [`AtomicProducer::send`] call's records all commit or none
/// do. Calls arriving within a couple of milliseconds of each other share one Kafka
/// transaction ("group commit"), so throughput does not pay one transaction per call;
/// if that transaction fails every call in it gets the error and none of their records
/// become visible to `read_committed` consumers, so a caller can report failure and let
/// its client retry without leaving half a batch behind.
///
/// A call that times out is told which of two things happened: its records were never
/// taken into a transaction (nothing will be written), or they were and the outcome is
/// not known yet ([`SendError::Undecided`], with a receiver for it): a caller that
/// released its claims on a retry-able failure must wait for that outcome, or a retry
/// could write the same records a second time.
#[derive(Clone)]
pub struct AtomicProducer {
    tx: std::sync::mpsc::SyncSender<AtomicJob>,
    /// KiB of records the thread may still take ([`ATOMIC_QUEUE_KIB`] in all).
    queued: Arc<tokio::sync::Semaphore>,
}

/// What became of a job's records, as the producer thread reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Written,
    /// Nothing of them was or will be written.
    NotWritten(String),
    /// The commit was under way when the producer failed (its commit call kept timing
    /// out, or the producer was fenced mid-commit): the records may or may not be
    /// written, and nothing the producer can ask will tell.
    Unknown(String),
}

/// Why an [`AtomicProducer::send`] did not report a commit.
#[derive(Debug)]
pub enum SendError {
    /// Nothing of the call's records was or will be written.
    NotWritten(String),
    /// The caller cannot be told yet: the records are in a transaction that had not
    /// finished within the timeout, or its commit's outcome is unknown. The receiver gets
    /// the final [`Outcome`] within [`ATOMIC_ANSWER_BOUND`] of the call; it is dropped
    /// unanswered only if the producer thread stops, which is [`Outcome::Unknown`] too.
    Undecided {
        reason: String,
        outcome: tokio::sync::oneshot::Receiver<Outcome>,
    },
}

impl std::fmt::Display for SendError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SendError::NotWritten(r) => write!(f, "{r}"),
            SendError::Undecided { reason, .. } => {
                write!(f, "{reason} (the records may still be written)")
            }
        }
    }
}

/// A job's state, so a caller's timeout and the producer thread agree on whether the job
/// made it into a transaction: whichever moves it out of `QUEUED` first decides.
const JOB_QUEUED: u8 = 0;
const JOB_TAKEN: u8 = 1;
const JOB_ABANDONED: u8 = 2;

struct AtomicJob {
    records: Vec<Record>,
    reply: tokio::sync::oneshot::Sender<Outcome>,
    state: Arc<AtomicU8>,
    /// Its share of [`ATOMIC_QUEUE_KIB`], given back when the job is dropped.
    _queued: tokio::sync::OwnedSemaphorePermit,
}

/// Most record bytes (in KiB) queued for or held by the producer thread. A job a caller
/// gave up on stays queued until the thread reaches it, which during a Kafka outage is
/// not soon: counting jobs alone, 10,000 of up to a megabyte each could pile up.
const ATOMIC_QUEUE_KIB: usize = 256 * 1024;

/// A job's size in KiB (at least 1), for [`ATOMIC_QUEUE_KIB`].
fn queued_kib(records: &[Record]) -> u32 {
    let bytes: usize = records
        .iter()
        .map(|r| {
            r.payload.len()
                + r.key.len()
                + r.headers
                    .iter()
                    .map(|(k, v)| k.len() + v.len())
                    .sum::<usize>()
        })
        .sum();
    bytes.div_ceil(1024).clamp(1, ATOMIC_QUEUE_KIB) as u32
}

/// The caller's side of the race: give the job up unless the producer took it first.
fn abandon(state: &AtomicU8) -> bool {
    state
        .compare_exchange(
            JOB_QUEUED,
            JOB_ABANDONED,
            Ordering::AcqRel,
            Ordering::Acquire,
        )
        .is_ok()
}

impl AtomicJob {
    /// Take the job into the transaction being built, unless its caller gave up first.
    fn take(&self) -> bool {
        !self.reply.is_closed()
            && self
                .state
                .compare_exchange(JOB_QUEUED, JOB_TAKEN, Ordering::AcqRel, Ordering::Acquire)
                .is_ok()
    }
}

/// Most records in one group-committed transaction.
const GROUP_MAX_RECORDS: usize = 5_000;
/// How long a transaction waits for more callers after the first.
const GROUP_LINGER: Duration = Duration::from_millis(2);

/// Longest one commit or abort call of the atomic producer waits. Shorter than
/// [`kafka::TXN_RETRY_BUDGET`], so a call that times out is made again within the budget
/// (a commit that timed out may be committing: it must be retried, not aborted).
const ATOMIC_CALL_TIMEOUT: Duration = Duration::from_secs(10);

/// Longest the producer thread takes to answer a job it took: the commit, retried for
/// [`kafka::TXN_RETRY_BUDGET`] and then one more call and the backoff before it (at most
/// 11 s), then the same again for an abort, plus room for the records' own sends.
pub const ATOMIC_ANSWER_BOUND: Duration = Duration::from_secs(
    2 * (kafka::TXN_RETRY_BUDGET.as_secs() + ATOMIC_CALL_TIMEOUT.as_secs() + 11) + 30,
);

impl AtomicProducer {
    /// Start the producer thread. `transactional_id` must be stable per replica (a restart
    /// fences its predecessor) and differ from every other producer's. The receiver is
    /// answered when the thread ends: before `shutdown` only on a fatal error (fenced by
    /// another replica with the same id, say) or a panic, after which every send fails, so
    /// the service should exit and be restarted. The thread is not joined: a process
    /// exiting with a transaction stuck on a dead broker does not wait for it.
    pub fn start(
        service: &'static str,
        brokers: &str,
        transactional_id: &str,
        shutdown: CancellationToken,
    ) -> anyhow::Result<(Self, tokio::sync::oneshot::Receiver<anyhow::Result<()>>)> {
        let (tx, rx) = std::sync::mpsc::sync_channel::<AtomicJob>(10_000);
        let (ended_tx, ended) = tokio::sync::oneshot::channel();
        let brokers = brokers.to_string();
        let id = transactional_id.to_string();
        std::thread::Builder::new()
            .name("atomic-producer".into())
            .spawn(move || {
                let run = std::panic::AssertUnwindSafe(|| {
                    atomic_loop(service, &brokers, &id, rx, shutdown)
                });
                let result = std::panic::catch_unwind(run)
                    .unwrap_or_else(|_| Err(anyhow::anyhow!("the producer thread panicked")));
                if let Err(e) = &result {
                    tracing::error!(error = %format!("{e:#}"), "atomic producer stopped");
                }
                let _ = ended_tx.send(result);
            })
            .context("starting the atomic producer thread")?;
        let queued = Arc::new(tokio::sync::Semaphore::new(ATOMIC_QUEUE_KIB));
        Ok((AtomicProducer { tx, queued }, ended))
    }

    /// Produce `records` in one transaction, waiting up to `timeout` for its commit.
    pub async fn send(&self, records: Vec<Record>, timeout: Duration) -> Result<(), SendError> {
        let (reply, mut rx) = tokio::sync::oneshot::channel();
        let state = Arc::new(AtomicU8::new(JOB_QUEUED));
        let queued = self
            .queued
            .clone()
            .try_acquire_many_owned(queued_kib(&records))
            .map_err(|_| {
                SendError::NotWritten(format!(
                    "producer queue full (overloaded: {} MiB of records waiting)",
                    ATOMIC_QUEUE_KIB / 1024
                ))
            })?;
        self.tx
            .try_send(AtomicJob {
                records,
                reply,
                state: state.clone(),
                _queued: queued,
            })
            .map_err(|e| {
                SendError::NotWritten(match e {
                    std::sync::mpsc::TrySendError::Full(_) => {
                        "producer queue full (overloaded)".to_string()
                    }
                    std::sync::mpsc::TrySendError::Disconnected(_) => {
                        "producer stopped".to_string()
                    }
                })
            })?;
        match tokio::time::timeout(timeout, &mut rx).await {
            Ok(Ok(Outcome::Written)) => Ok(()),
            Ok(Ok(Outcome::NotWritten(e))) => Err(SendError::NotWritten(e)),
            Ok(Ok(Outcome::Unknown(reason))) => {
                // Answered already: the receiver the caller waits on holds the same answer.
                let (tx, outcome) = tokio::sync::oneshot::channel();
                let _ = tx.send(Outcome::Unknown(reason.clone()));
                Err(SendError::Undecided { reason, outcome })
            }
            // The producer thread ended without answering: if it had taken the job, the
            // outcome is unknown (the closed receiver says so to whoever waits on it).
            Ok(Err(_)) if state.load(Ordering::Acquire) == JOB_TAKEN => Err(SendError::Undecided {
                reason: "producer stopped".into(),
                outcome: rx,
            }),
            Ok(Err(_)) => Err(SendError::NotWritten("producer stopped".into())),
            Err(_) => {
                let reason = format!("Kafka did not acknowledge within {timeout:?}");
                if abandon(&state) {
                    Err(SendError::NotWritten(reason))
                } else {
                    Err(SendError::Undecided {
                        reason,
                        outcome: rx,
                    })
                }
            }
        }
    }
}

/// What a failed transaction means for its jobs. Only a commit that was under way when the
/// producer gave up on it (fenced, or timing out past the retry budget) can have
/// committed: a new producer's `init_transactions` completes a commit the coordinator had
/// begun. Any other failure, before the commit or one the commit reports as needing an
/// abort, leaves nothing visible.
fn failed_outcome(committing: bool, e: &KafkaError) -> Outcome {
    if committing && kafka::needs_new_producer(e) {
        Outcome::Unknown(format!("Kafka transaction commit did not complete: {e}"))
    } else {
        Outcome::NotWritten(format!("Kafka transaction failed: {e}"))
    }
}

fn atomic_loop(
    service: &'static str,
    brokers: &str,
    id: &str,
    rx: std::sync::mpsc::Receiver<AtomicJob>,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    use std::sync::mpsc::RecvTimeoutError;
    let make = || -> anyhow::Result<Option<BaseProducer>> {
        let p: BaseProducer = crate::kafka::transactional_producer_config(brokers, id, id)
            .create()
            .context("creating the transactional producer")?;
        Ok(kafka::init_transactions_retrying(&p, TXN_TIMEOUT, &shutdown)?.then_some(p))
    };
    let Some(mut producer) = make()? else {
        return Ok(());
    };
    loop {
        let first = match rx.recv_timeout(Duration::from_millis(200)) {
            Ok(j) => j,
            Err(RecvTimeoutError::Timeout) => continue,
            Err(RecvTimeoutError::Disconnected) => return Ok(()),
        };
        let mut jobs = vec![first];
        let mut n = jobs[0].records.len();
        let until = Instant::now() + GROUP_LINGER;
        while n < GROUP_MAX_RECORDS {
            match rx.recv_timeout(until.saturating_duration_since(Instant::now())) {
                Ok(j) => {
                    n += j.records.len();
                    jobs.push(j);
                }
                Err(_) => break,
            }
        }
        // A caller that gave up waiting was told nothing was written: keep it so.
        jobs.retain(AtomicJob::take);
        if jobs.is_empty() {
            continue;
        }
        let retries_metric = metric_name(service, "atomic_transaction_retries_total");
        let mut committing = false;
        let result = (|| -> Result<(), KafkaError> {
            producer.begin_transaction()?;
            for r in jobs.iter().flat_map(|j| j.records.iter()) {
                send_waiting(&producer, r.base_record())?;
            }
            committing = true;
            // A commit that timed out must be made again, not aborted: the coordinator may
            // be committing it already.
            retry_transactional(&producer, &retries_metric, "commit", || {
                kafka::commit_transaction(&producer, ATOMIC_CALL_TIMEOUT)
            })
        })();
        let e = match result {
            Ok(()) => {
                metrics::counter!(metric_name(service, "atomic_transactions_total"), "result" => "ok").increment(1);
                for j in jobs {
                    let _ = j.reply.send(Outcome::Written);
                }
                continue;
            }
            Err(e) => e,
        };
        let outcome = failed_outcome(committing, &e);
        let result = if matches!(outcome, Outcome::Unknown(_)) {
            "unknown"
        } else {
            "failed"
        };
        metrics::counter!(metric_name(service, "atomic_transactions_total"), "result" => result)
            .increment(1);
        tracing::warn!(error = %e, calls = jobs.len(), outcome = ?outcome, "transaction failed");
        let broken = kafka::needs_new_producer(&e)
            || retry_transactional(&producer, &retries_metric, "abort", || {
                kafka::abort_transaction(&producer, ATOMIC_CALL_TIMEOUT)
            })
            .is_err();
        for j in jobs {
            let _ = j.reply.send(outcome.clone());
        }
        if broken {
            // Its transaction could not be ended: a new producer under the same id settles it.
            tracing::warn!(
                "recreating the transactional producer: its transaction could not be ended"
            );
            match make()? {
                Some(p) => producer = p,
                None => return Ok(()),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dead_letter::ErrorKind;
    use base64::Engine as _;
    use rdkafka::types::RDKafkaErrorCode;

    fn job() -> (AtomicJob, tokio::sync::oneshot::Receiver<Outcome>) {
        let (reply, rx) = tokio::sync::oneshot::channel();
        let state = Arc::new(AtomicU8::new(JOB_QUEUED));
        let queued = Arc::new(tokio::sync::Semaphore::new(1))
            .try_acquire_owned()
            .unwrap();
        (
            AtomicJob {
                records: Vec::new(),
                reply,
                state,
                _queued: queued,
            },
            rx,
        )
    }

    #[test]
    fn a_job_is_either_taken_or_abandoned_never_both() {
        let (j, _rx) = job();
        assert!(j.take(), "a queued job is taken");
        assert!(
            !abandon(&j.state),
            "so its caller's timeout finds it undecided"
        );
        let (j, _rx) = job();
        assert!(
            abandon(&j.state),
            "a caller that gives up first abandons it"
        );
        assert!(!j.take(), "so the producer skips it: nothing is written");
        let (j, rx) = job();
        drop(rx);
        assert!(!j.take(), "a caller that went away entirely is skipped too");
    }

    #[test]
    fn queued_jobs_are_counted_by_their_bytes() {
        let r = |n: usize| Record::new("t", vec![0; 10], vec![0; n]).header("h", vec![0; 14]);
        assert_eq!(queued_kib(&[]), 1, "every job takes a share");
        assert_eq!(queued_kib(&[r(990)]), 1, "1,015 bytes");
        assert_eq!(queued_kib(&[r(1_000)]), 2, "1,025 bytes");
        assert_eq!(queued_kib(&[r(2_000), r(2_000)]), 4, "4,050 bytes");
        assert_eq!(
            queued_kib(&vec![r(1 << 20); 300]),
            ATOMIC_QUEUE_KIB as u32,
            "never more than the whole queue"
        );
    }

    #[test]
    fn only_a_commit_the_producer_gave_up_on_has_an_unknown_outcome() {
        // `Canceled` stands for every error that makes the producer be replaced (a fenced
        // or timed-out `Transaction` error cannot be built outside librdkafka).
        let gave_up = KafkaError::Canceled;
        let flush_timed_out = KafkaError::Flush(RDKafkaErrorCode::OperationTimedOut);
        let delivery = KafkaError::MessageProduction(RDKafkaErrorCode::MessageTimedOut);
        assert!(matches!(
            failed_outcome(true, &gave_up),
            Outcome::Unknown(_)
        ));
        assert!(
            matches!(failed_outcome(false, &gave_up), Outcome::NotWritten(_)),
            "the commit never started"
        );
        assert!(
            matches!(
                failed_outcome(true, &flush_timed_out),
                Outcome::NotWritten(_)
            ),
            "flushing, before EndTxn"
        );
        assert!(
            matches!(failed_outcome(true, &delivery), Outcome::NotWritten(_)),
            "a commit that needs an abort"
        );
        assert!(matches!(
            failed_outcome(false, &delivery),
            Outcome::NotWritten(_)
        ));
    }

    fn msg(topic: &str, partition: i32, offset: i64) -> Consumed {
        Consumed {
            topic: topic.into(),
            partition,
            offset,
            key: Some(b"k".to_vec()),
            payload: vec![0xff, b'x'],
            headers: vec![("tenant".into(), b"acme".to_vec())],
            timestamp_ms: None,
        }
    }

    #[test]
    fn a_partition_delivered_again_from_an_earlier_offset_is_dropped() {
        let mut p = Positions::default();
        assert!(
            p.admit(3, 0) && p.admit(3, 1) && p.admit(3, 5),
            "offsets may skip (transaction markers)"
        );
        assert!(!p.admit(3, 0) && !p.admit(3, 5), "already taken");
        assert!(
            p.admit(3, 6) && p.admit(1, 0),
            "new offsets, and other partitions, pass"
        );
    }

    #[test]
    fn a_rewind_or_revocation_makes_earlier_offsets_legitimate() {
        let mut p = Positions::default();
        assert!(p.admit(0, 10) && p.admit(1, 10));
        p.forget(0);
        assert!(
            p.admit(0, 3),
            "revoked and assigned again: starts from the committed offset"
        );
        assert!(!p.admit(1, 3));
        p.clear();
        assert!(p.admit(1, 3), "after the loop's own rewind");
    }

    #[test]
    fn next_offsets_are_one_past_the_last_per_partition() {
        let batch = [
            msg("t", 0, 5),
            msg("t", 1, 9),
            msg("t", 0, 7),
            msg("u", 0, 1),
        ];
        let tpl = next_offsets(&batch).unwrap();
        assert_eq!(
            tpl.find_partition("t", 0).unwrap().offset(),
            Offset::Offset(8)
        );
        assert_eq!(
            tpl.find_partition("t", 1).unwrap().offset(),
            Offset::Offset(10)
        );
        assert_eq!(
            tpl.find_partition("u", 0).unwrap().offset(),
            Offset::Offset(2)
        );
        assert_eq!(tpl.count(), 3);
    }

    #[test]
    fn dead_letters_keep_bytes_source_and_reason() {
        let r = dead_letter(
            "dlq",
            "ingest",
            &msg("raw", 2, 41),
            ErrorKind::NotUtf8,
            "not UTF-8",
            None,
        );
        assert_eq!(
            (r.topic.as_str(), r.key.as_slice()),
            ("dlq", b"k".as_slice())
        );
        assert_eq!(r.headers, vec![("tenant".to_string(), b"acme".to_vec())]);
        let dl: DeadLetter = crate::messages::decode(&r.payload).unwrap();
        assert_eq!(dl.original_base64, "/3g=");
        assert_eq!(dl.key_base64.as_deref(), Some("aw=="));
        assert_eq!(
            dl.source,
            Some(SourceRef {
                topic: "raw".into(),
                partition: 2,
                offset: 41
            })
        );
        assert_eq!(
            (dl.stage.as_str(), dl.error_kind.as_str()),
            ("ingest", "not_utf8")
        );
        let v: serde_json::Value = serde_json::from_slice(&r.payload).unwrap();
        crate::schema::validate("dead_letter/v1", &v).unwrap();
        assert_eq!(dl.original_len, None, "kept whole");
    }

    #[test]
    fn a_dead_letter_of_the_largest_record_fits_in_one_kafka_record() {
        // A record as large as a broker takes by default (1 MB), with a quoted 1 MB value in
        // its reason and a megabyte of headers: the dead letter must still be producible.
        let mut m = msg("raw", 0, 7);
        m.payload = vec![b'x'; 1_000_000];
        m.key = Some(vec![b'k'; 256 * 1024]);
        m.headers = (0..100)
            .map(|i| (format!("h{i}"), vec![b'v'; 10_000]))
            .collect();
        let reason = format!("field \"schema\": found \"{}\"", "y".repeat(1_000_000));
        let r = dead_letter("dlq", "ingest", &m, ErrorKind::WrongSchema, &reason, None);
        let header_bytes: usize = r.headers.iter().map(|(k, v)| k.len() + v.len()).sum();
        assert!(
            header_bytes <= DEAD_LETTER_HEADER_MAX_BYTES && !r.headers.is_empty(),
            "{header_bytes}"
        );
        let size = r.payload.len() + r.key.len() + header_bytes;
        assert!(size < 600 * 1024, "{size} bytes");
        assert_eq!(r.key.len(), crate::messages::DEAD_LETTER_KEY_MAX_BYTES);
        let dl: DeadLetter = crate::messages::decode(&r.payload).unwrap();
        assert_eq!(dl.original_len, Some(1_000_000));
        let kept = base64::engine::general_purpose::STANDARD
            .decode(&dl.original_base64)
            .unwrap();
        assert_eq!(kept.len(), crate::messages::DEAD_LETTER_ORIGINAL_MAX_BYTES);
        assert!(
            dl.reason.starts_with("field \"schema\"")
                && dl.reason.ends_with("(reason cut at 4096 characters)")
        );
        let v: serde_json::Value = serde_json::from_slice(&r.payload).unwrap();
        crate::schema::validate("dead_letter/v1", &v).unwrap();
    }

    #[test]
    fn a_reason_is_cut_on_a_character_boundary() {
        let reason = "é".repeat(5_000);
        let dl = DeadLetter::new(b"", None, None, "ingest", ErrorKind::NotJson, &reason, None);
        assert!(
            dl.reason.starts_with(&"é".repeat(4_096)) && !dl.reason.starts_with(&"é".repeat(4_097))
        );
    }
}
