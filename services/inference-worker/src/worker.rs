//! The consume → batch → compute → produce loop, exactly once.
//!
//! It runs on its own OS thread: librdkafka calls are blocking and so is the model, and a
//! single thread makes the order of events simple to reason about:
//!
//! 1. poll the consumer (rebalance callbacks run only here, between batches, so no batch
//!    ever straddles a revoked partition: queued messages of revoked partitions are
//!    dropped and will be redelivered to their new owner from the committed offset);
//! 2. ask the batch planner what to do;
//! 3. run a batch inside one Kafka transaction: its predictions, usage records, dead
//!    letters and its input offsets (`send_offsets_to_transaction`) commit together or
//!    not at all. Downstream consumers read `read_committed`.
//!
//! A transactional call that times out (the broker is away) is made again, for up to
//! `kafka::TXN_RETRY_BUDGET`; on an abortable error the transaction is aborted and the
//! consumer rewinds to the committed offsets. A fatal one means this producer is fenced:
//! after a broker outage longer than `transaction.timeout.ms` the coordinator aborts the
//! open transaction and bumps the producer epoch. Then, and when a call kept timing out
//! or an abort failed, the worker drops the producer, makes a new one under the same
//! transactional id (whose `init_transactions` settles any transaction left over) and
//! rewinds, like a restarted process would, but without giving up its model or partitions.

use std::collections::{BTreeMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use aifab_core::dead_letter::ErrorKind;
use aifab_core::kafka::{
    abort_transaction, commit_transaction, committed_positions_retrying,
    init_transactions_retrying, needs_new_producer, retry_transactional, send_offsets_bounded,
    send_waiting,
};
use aifab_core::messages::{decode, encode, Arm, DeadLetter, InferenceRequest, SourceRef};
use aifab_core::pipeline::Positions;
use aifab_core::registry::{canary_arm, Rollout};
use aifab_core::supervise::Heartbeat;
use aifab_core::topics;
use aifab_model::batcher::{self, BatchLimits, Pending, Plan};
use aifab_model::{Classification, Classifier};
use anyhow::Context as _;
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext, Rebalance};
use rdkafka::error::KafkaError;
use rdkafka::message::{Header, Headers, OwnedHeaders};
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use rdkafka::{ClientContext, Message, Offset, TopicPartitionList};
use tokio_util::sync::CancellationToken;

use crate::model_slot::ModelSlot;
use crate::outputs::{self, BatchInfo};

/// How long one transactional call may block. A call that times out is made again (see
/// [`retry_transactional`]), so this bounds how long the loop goes without logging or
/// counting that the broker is away, not how long a transaction may take.
const TXN_TIMEOUT: Duration = Duration::from_secs(10);
const TXN_RETRIES: &str = "aifab_inference_worker_transaction_retries_total";
/// Rows whose padding would waste more than this share of a compute group start a new one
/// (for encoders that pad).
const MAX_PADDING_FRACTION: f64 = 0.25;

/// Everything the loop needs, built by `lib.rs` from the config.
pub struct WorkerSettings {
    pub brokers: String,
    pub group: String,
    pub input_topic: String,
    pub instance_id: String,
    pub task: String,
    pub device_kind: String,
    pub limits: BatchLimits,
    /// Most messages held in the queue before polling pauses.
    pub max_queue: usize,
    /// Under backlog, consecutive batches share one transaction for up to this long:
    /// a commit costs a broker round trip per partition, which at batch size 1 would cost
    /// more than the compute.
    pub max_txn: Duration,
    /// Beaten on each committed transaction and each idle poll (nothing waiting), so a
    /// loop whose transactions keep failing goes stale in `/readyz`.
    pub heartbeat: Heartbeat,
}

/// A transaction that has outputs in it but is not committed yet.
struct OpenTxn {
    started: Instant,
    /// Next offset per input partition of every batch in it.
    next_offsets: BTreeMap<i32, i64>,
    batches: u32,
}

/// Records partitions revoked by a rebalance so the loop can drop their queued messages.
#[derive(Default)]
pub struct RebalanceTracker {
    revoked: Mutex<Vec<(String, i32)>>,
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

/// One consumed message waiting in the queue.
struct Queued {
    partition: i32,
    offset: i64,
    key: Option<Vec<u8>>,
    headers: Vec<(String, Vec<u8>)>,
    /// The decoded request, or why it could not be decoded (it goes to the DLQ).
    request: Result<InferenceRequest, (ErrorKind, String, Vec<u8>)>,
    pending: Pending,
}

pub struct Worker {
    settings: WorkerSettings,
    consumer: BaseConsumer<RebalanceTracker>,
    /// Shared only with a `send_offsets_to_transaction` call in flight on its helper thread.
    producer: Arc<BaseProducer>,
    /// Lets the producer's re-initialisation give up on shutdown.
    shutdown: CancellationToken,
    slot: Arc<ModelSlot>,
    queue: Vec<Queued>,
    positions: Positions,
    batch_seq: u64,
    last_batch_end: Instant,
    open_txn: Option<OpenTxn>,
}

impl Worker {
    pub fn new(
        settings: WorkerSettings,
        slot: Arc<ModelSlot>,
        shutdown: CancellationToken,
    ) -> anyhow::Result<Self> {
        let consumer = group_consumer(&settings)?;
        let producer = transactional_producer(&settings)?;
        Ok(Worker {
            settings,
            consumer,
            producer,
            shutdown,
            slot,
            queue: Vec::new(),
            positions: Positions::default(),
            batch_seq: 0,
            last_batch_end: Instant::now(),
            open_txn: None,
        })
    }

    /// Run until the shutdown token fires; the batch in flight then is finished and committed.
    pub fn run(mut self) -> anyhow::Result<()> {
        let shutdown = self.shutdown.clone();
        // Wait for a model before taking any partition: a worker that cannot compute
        // must not hold partitions other workers could serve.
        while self.slot.current().is_none() {
            if shutdown.is_cancelled() {
                return Ok(());
            }
            // Readiness's `model` check says why nothing is consumed meanwhile.
            self.settings.heartbeat.progress();
            std::thread::sleep(Duration::from_millis(100));
        }
        if !init_transactions_retrying(&self.producer, TXN_TIMEOUT, &shutdown)? {
            return Ok(());
        }
        self.consumer
            .subscribe(&[&self.settings.input_topic])
            .context("subscribing")?;
        tracing::info!(topic = %self.settings.input_topic, group = %self.settings.group, "consuming");

        while !shutdown.is_cancelled() {
            let now = Instant::now();
            let plan = batcher::plan(&self.pending(), &self.settings.limits, now);
            match plan {
                Plan::Run {
                    take,
                    expired,
                    reason,
                } => {
                    metrics::counter!("aifab_inference_worker_batches_total", "reason" => reason.as_str()).increment(1);
                    self.run_batch(take, &expired)?;
                    // Under backlog, go on with the next full batch in the same
                    // transaction, without polling (a poll may revoke partitions, and no
                    // open transaction may straddle a revocation).
                    let backlog = self.queue.len() >= self.settings.limits.max_batch_size;
                    let young = self
                        .open_txn
                        .as_ref()
                        .is_some_and(|t| t.started.elapsed() < self.settings.max_txn);
                    if !(backlog && young) {
                        self.commit_open()?;
                        // Keep the group membership alive and take what arrived meanwhile.
                        self.poll(Duration::ZERO);
                    }
                }
                Plan::Wait { until } => {
                    self.commit_open()?;
                    self.poll(
                        until
                            .saturating_duration_since(now)
                            .min(Duration::from_millis(100)),
                    )
                }
                Plan::Idle => {
                    self.commit_open()?;
                    // Not progress right after a failed transaction (its batches are
                    // being fetched again): see `Heartbeat::idle`.
                    self.settings.heartbeat.idle();
                    self.poll(Duration::from_millis(100))
                }
            }
        }
        self.commit_open()?;
        tracing::info!(
            queued = self.queue.len(),
            "stopping: queued messages stay uncommitted for the next owner"
        );
        self.consumer.unsubscribe();
        Ok(())
    }

    fn pending(&self) -> Vec<Pending> {
        self.queue.iter().map(|q| q.pending).collect()
    }

    /// Poll for up to `timeout`, then take whatever else is ready, up to `max_queue`.
    fn poll(&mut self, timeout: Duration) {
        let mut wait = timeout;
        while self.queue.len() < self.settings.max_queue {
            let polled = self.consumer.poll(wait);
            // A poll may have run a rebalance: drop what the revoked partitions had
            // queued before looking at what it returned.
            let revoked = take_revoked(&self.consumer);
            drop_revoked(
                &mut self.queue,
                &mut self.positions,
                &self.settings.input_topic,
                &revoked,
            );
            match polled {
                None => break,
                Some(Err(e)) => {
                    self.settings
                        .heartbeat
                        .trouble(format_args!("consumer error: {e}"));
                    tracing::warn!(error = %e, "consumer error");
                    break;
                }
                Some(Ok(m)) if !self.positions.admit(m.partition(), m.offset()) => {
                    metrics::counter!("aifab_inference_worker_redeliveries_dropped_total")
                        .increment(1);
                    tracing::debug!(
                        partition = m.partition(),
                        offset = m.offset(),
                        "dropped a message delivered again"
                    );
                    wait = Duration::ZERO;
                }
                Some(Ok(m)) => {
                    let q = to_queued(&m, &self.settings.task);
                    self.queue.push(q);
                    wait = Duration::ZERO;
                }
            }
        }
        // Delivery reports of committed batches (commit_transaction waited for them).
        self.producer.poll(Duration::ZERO);
        metrics::gauge!("aifab_inference_worker_queue_depth").set(self.queue.len() as f64);
    }

    /// Compute, produce and commit the first `take` queued messages in one transaction.
    fn run_batch(&mut self, take: usize, expired: &[usize]) -> anyhow::Result<()> {
        let Some(model) = self.slot.current() else {
            return Ok(());
        };
        let rows: Vec<Queued> = self.queue.drain(..take).collect();
        self.batch_seq += 1;
        let batch_id = format!("{}-{}", self.settings.instance_id, self.batch_seq);
        let idle = self.last_batch_end.elapsed().as_secs_f64();
        let expired: HashSet<usize> = expired.iter().copied().collect();

        // Which arm serves each live row: production, or the candidate's canary share
        // (by a stable hash of the request id). In shadow mode the candidate also
        // computes every row, recorded but not served.
        let candidate = self.slot.candidate();
        let live: Vec<usize> = (0..rows.len())
            .filter(|i| !expired.contains(i) && rows[*i].request.is_ok())
            .collect();
        let (canary_rows, production_rows): (Vec<usize>, Vec<usize>) =
            live.iter().partition(|&&i| match &candidate {
                Some((_, Rollout::Canary { share })) => canary_arm(
                    &rows[i].request.as_ref().expect("live rows decoded").id,
                    *share,
                ),
                _ => false,
            });

        // Compute outside the transaction: it can be retried, the transaction cannot.
        let compute_started_ms = aifab_core::now_ms();
        let t = Instant::now();
        let (mut results, mut compute_failures) = classify_rows(&model, &rows, &production_rows);
        let mut canary_results = BTreeMap::new();
        let mut shadow_results = BTreeMap::new();
        if let Some((c, rollout)) = &candidate {
            match rollout {
                Rollout::Canary { .. } if !canary_rows.is_empty() => {
                    let (r, f) = classify_rows(c, &rows, &canary_rows);
                    canary_results = r;
                    compute_failures.extend(f);
                }
                Rollout::Shadow => shadow_results = classify_rows(c, &rows, &live).0,
                _ => {}
            }
        }
        let compute_seconds = t.elapsed().as_secs_f64();
        let computed: Vec<usize> = live
            .iter()
            .copied()
            .filter(|i| results.contains_key(i) || canary_results.contains_key(i))
            .collect();

        let info = BatchInfo {
            batch_id: &batch_id,
            worker: &self.settings.instance_id,
            task: &self.settings.task,
            model_version: &model.version,
            device_kind: &self.settings.device_kind,
            batch_size: results.len() as u32,
            compute_started_ms,
            compute_seconds,
            idle_seconds: idle,
            now_ms: aifab_core::now_ms(),
        };
        // Each arm is its own compute batch of one version, with its own batch id.
        let canary_batch_id = format!("{batch_id}-canary");
        let shadow_batch_id = format!("{batch_id}-shadow");
        let candidate_version = candidate
            .as_ref()
            .map(|(c, _)| c.version.clone())
            .unwrap_or_default();
        let canary_info = BatchInfo {
            batch_id: &canary_batch_id,
            model_version: &candidate_version,
            batch_size: canary_results.len() as u32,
            ..info.clone()
        };
        let shadow_info = BatchInfo {
            batch_id: &shadow_batch_id,
            model_version: &candidate_version,
            batch_size: shadow_results.len() as u32,
            ..info.clone()
        };
        let mut records: Vec<(&'static str, Vec<u8>, Vec<u8>, Vec<(String, Vec<u8>)>)> = Vec::new();
        for (i, row) in rows.iter().enumerate() {
            let source = SourceRef {
                topic: self.settings.input_topic.clone(),
                partition: row.partition,
                offset: row.offset,
            };
            match &row.request {
                Err((kind, reason, original)) => {
                    records.push(dead_letter(row, original, source, *kind, reason));
                }
                Ok(req) if expired.contains(&i) => {
                    metrics::counter!("aifab_inference_worker_requests_total", "outcome" => "expired").increment(1);
                    let p = outputs::expired(req, &info);
                    records.push((
                        topics::PREDICTIONS.name,
                        req.id.clone().into_bytes(),
                        encode(&p),
                        row.headers.clone(),
                    ));
                }
                Ok(req) => {
                    let served = match (results.remove(&i), canary_results.remove(&i)) {
                        (Some(c), _) => Some(outputs::computed(req, c, &info, Arm::Production)),
                        (None, Some(c)) => {
                            Some(outputs::computed(req, c, &canary_info, Arm::Canary))
                        }
                        (None, None) => None,
                    };
                    match served {
                        Some(p) => {
                            metrics::counter!("aifab_inference_worker_requests_total", "outcome" => "ok").increment(1);
                            records.push((
                                topics::PREDICTIONS.name,
                                req.id.clone().into_bytes(),
                                encode(&p),
                                row.headers.clone(),
                            ));
                        }
                        None => {
                            let reason = compute_failures
                                .remove(&i)
                                .unwrap_or_else(|| "not computed".into());
                            let original = serde_json::to_vec(req).unwrap_or_default();
                            records.push(dead_letter(
                                row,
                                &original,
                                source,
                                ErrorKind::ModelRejected,
                                &reason,
                            ));
                        }
                    }
                    if let Some(c) = shadow_results.remove(&i) {
                        let p = outputs::computed(req, c, &shadow_info, Arm::Shadow);
                        records.push((
                            topics::PREDICTIONS.name,
                            req.id.clone().into_bytes(),
                            encode(&p),
                            row.headers.clone(),
                        ));
                    }
                }
            }
        }
        let computed_reqs: Vec<&InferenceRequest> = computed
            .iter()
            .filter_map(|i| rows[*i].request.as_ref().ok())
            .collect();
        for u in outputs::usage(&computed_reqs, &info) {
            records.push((
                topics::USAGE.name,
                u.usage_id.clone().into_bytes(),
                encode(&u),
                Vec::new(),
            ));
        }

        match self.send_in_txn(&records, &rows) {
            Ok(()) => {
                metrics::histogram!("aifab_inference_worker_batch_size")
                    .record(computed.len() as f64);
                metrics::histogram!("aifab_inference_worker_compute_seconds")
                    .record(compute_seconds);
                self.last_batch_end = Instant::now();
                Ok(())
            }
            Err(e) => self.on_txn_error(e, &batch_id),
        }
    }

    /// Put a batch's outputs into the open transaction (beginning one if needed) and
    /// remember its input offsets for the commit.
    fn send_in_txn(
        &mut self,
        records: &[(&'static str, Vec<u8>, Vec<u8>, Vec<(String, Vec<u8>)>)],
        rows: &[Queued],
    ) -> Result<(), KafkaError> {
        if self.open_txn.is_none() {
            // Present whenever the consumer is subscribed; checked before the transaction
            // starts so a missing one needs no abort.
            if self.consumer.group_metadata().is_none() {
                return Err(KafkaError::Subscription(
                    "consumer has no group metadata yet".into(),
                ));
            }
            self.producer.begin_transaction()?;
            self.open_txn = Some(OpenTxn {
                started: Instant::now(),
                next_offsets: BTreeMap::new(),
                batches: 0,
            });
        }
        for (topic, key, payload, headers) in records {
            let mut h = OwnedHeaders::new();
            for (k, v) in headers {
                h = h.insert(Header {
                    key: k,
                    value: Some(v),
                });
            }
            send_waiting(
                &self.producer,
                BaseRecord::to(topic)
                    .key(key.as_slice())
                    .payload(payload.as_slice())
                    .headers(h),
            )?;
        }
        let txn = self.open_txn.as_mut().expect("opened above");
        for r in rows {
            let e = txn.next_offsets.entry(r.partition).or_insert(r.offset + 1);
            *e = (*e).max(r.offset + 1);
        }
        txn.batches += 1;
        Ok(())
    }

    /// Commit the open transaction with its input offsets (`send_offsets_to_transaction`).
    /// A call that timed out (the broker is away) is retried as it is, as librdkafka
    /// requires: aborting a commit in progress would leave the producer stuck between
    /// the two, failing every later transaction.
    fn commit_open(&mut self) -> anyhow::Result<()> {
        let Some(txn) = self.open_txn.take() else {
            return Ok(());
        };
        let result = (|| {
            let cgm = Arc::new(self.consumer.group_metadata().ok_or_else(|| {
                KafkaError::Subscription("consumer has no group metadata".into())
            })?);
            let mut tpl = TopicPartitionList::new();
            for (p, o) in &txn.next_offsets {
                tpl.add_partition_offset(&self.settings.input_topic, *p, Offset::Offset(*o))?;
            }
            retry_transactional(&self.producer, TXN_RETRIES, "send_offsets", || {
                send_offsets_bounded(&self.producer, &tpl, &cgm, TXN_TIMEOUT)
            })?;
            retry_transactional(&self.producer, TXN_RETRIES, "commit", || {
                commit_transaction(&self.producer, TXN_TIMEOUT)
            })
        })();
        match result {
            Ok(()) => {
                tracing::debug!(batches = txn.batches, offsets = ?txn.next_offsets, "transaction committed");
                metrics::histogram!("aifab_inference_worker_batches_per_transaction")
                    .record(txn.batches as f64);
                self.settings.heartbeat.progress();
                Ok(())
            }
            Err(e) => {
                self.open_txn = Some(txn);
                self.on_txn_error(e, "open transaction")
            }
        }
    }

    /// Abortable errors: abort and rewind to the committed offsets (the batches are
    /// consumed again). Fatal ones (fenced), calls that kept timing out and aborts that
    /// failed: a new producer, then the same rewind.
    fn on_txn_error(&mut self, e: KafkaError, what: &str) -> anyhow::Result<()> {
        if needs_new_producer(&e) {
            return self.replace_producer(e);
        }
        metrics::counter!("aifab_inference_worker_transactions_aborted_total").increment(1);
        self.settings
            .heartbeat
            .trouble(format_args!("transaction failed: {e}"));
        tracing::warn!(error = %e, batch = %what, "transaction failed; aborting and rewinding to committed offsets");
        // A transaction exists to abort when one was begun, or when the failed call was a
        // transactional one (begin itself failing leaves the producer in the abortable
        // state of the transaction before).
        if self.open_txn.take().is_some() || matches!(e, KafkaError::Transaction(_)) {
            let producer = &self.producer;
            match retry_transactional(producer, TXN_RETRIES, "abort", || {
                abort_transaction(producer, TXN_TIMEOUT)
            }) {
                Ok(()) => tracing::info!("transaction aborted"),
                Err(abort) => return self.replace_producer(abort),
            }
        }
        self.rewind()
    }

    /// The producer is fenced or broken: make a new one under the same transactional id and
    /// consume the lost transaction's batches again. Its `init_transactions` fences what is
    /// left of the old producer's transaction, so nothing of it is ever committed.
    fn replace_producer(&mut self, e: KafkaError) -> anyhow::Result<()> {
        metrics::counter!("aifab_inference_worker_producer_restarts_total").increment(1);
        tracing::error!(error = %e, "the transactional producer is fenced or broken; replacing it");
        self.open_txn = None;
        self.producer = transactional_producer(&self.settings)?;
        let shutdown = self.shutdown.clone();
        anyhow::ensure!(
            init_transactions_retrying(&self.producer, TXN_TIMEOUT, &shutdown)?,
            "shut down while initialising Kafka transactions"
        );
        tracing::info!("new transactional producer ready");
        self.rewind()
    }

    /// The consumer cannot read its committed offsets (its group coordinator is lost):
    /// join the group again with a new one, which starts every partition it is assigned
    /// from the committed offset, like a restarted process.
    fn replace_consumer(&mut self, e: KafkaError) -> anyhow::Result<()> {
        metrics::counter!("aifab_inference_worker_consumer_restarts_total").increment(1);
        tracing::error!(error = %e, "the consumer cannot read its committed offsets; replacing it");
        let fresh = group_consumer(&self.settings)?;
        fresh
            .subscribe(&[&self.settings.input_topic])
            .context("subscribing")?;
        let old = std::mem::replace(&mut self.consumer, fresh);
        // Closing a consumer whose coordinator is unreachable can block: not on this thread.
        std::thread::Builder::new()
            .name("old-consumer".into())
            .spawn(move || drop(old))
            .context("closing the old consumer")?;
        self.queue.clear();
        self.positions.clear();
        Ok(())
    }

    /// After an abort: forget the queue and restart every assigned partition from its
    /// committed offset, so the aborted batch is consumed again. While the broker is away
    /// the committed offsets cannot be read; the worker waits for it rather than exit.
    fn rewind(&mut self) -> anyhow::Result<()> {
        self.queue.clear();
        self.positions.clear();
        let give_up_at = Instant::now() + aifab_core::kafka::TXN_RETRY_BUDGET;
        let tpl = match committed_positions_retrying(
            &self.consumer,
            TXN_TIMEOUT,
            Some(give_up_at),
            || false,
        ) {
            Ok(Some(tpl)) => tpl,
            Ok(None) => return Ok(()),
            // After a broker restart librdkafka's consumer can lose its group
            // coordinator for good, like the producer its transaction coordinator.
            Err(e) => return self.replace_consumer(e),
        };
        let at: Vec<String> = tpl
            .elements()
            .iter()
            .map(|e| format!("{}:{:?}", e.partition(), e.offset()))
            .collect();
        tracing::info!(offsets = ?at, "rewinding to the committed offsets");
        if tpl.count() > 0 {
            self.consumer.seek_partitions(tpl, TXN_TIMEOUT)?;
        }
        Ok(())
    }
}

fn group_consumer(settings: &WorkerSettings) -> anyhow::Result<BaseConsumer<RebalanceTracker>> {
    aifab_core::kafka::consumer_config(&settings.brokers, &client_id(settings), &settings.group)
        .create_with_context(RebalanceTracker::default())
        .context("creating the Kafka consumer")
}

fn take_revoked(consumer: &BaseConsumer<RebalanceTracker>) -> HashSet<(String, i32)> {
    std::mem::take(&mut *consumer.context().revoked.lock().expect("rebalance lock"))
        .into_iter()
        .collect()
}

/// Forget the queued messages and positions of revoked partitions: their next owner
/// (maybe this worker again) consumes them from the committed offset.
fn drop_revoked(
    queue: &mut Vec<Queued>,
    positions: &mut Positions,
    topic: &str,
    revoked: &HashSet<(String, i32)>,
) {
    if revoked.is_empty() {
        return;
    }
    let before = queue.len();
    queue.retain(|q| !revoked.contains(&(topic.to_string(), q.partition)));
    for (_, p) in revoked.iter().filter(|(t, _)| t == topic) {
        positions.forget(*p);
    }
    tracing::info!(
        dropped = before - queue.len(),
        "dropped queued messages of revoked partitions"
    );
}

fn client_id(settings: &WorkerSettings) -> String {
    format!("aifab-inference-worker-{}", settings.instance_id)
}

/// One transactional id per instance: a restarted instance fences its predecessor's open
/// transaction; zombie instances are fenced by the consumer group generation sent with
/// the offsets (KIP-447).
fn transactional_producer(settings: &WorkerSettings) -> anyhow::Result<Arc<BaseProducer>> {
    let id = client_id(settings);
    let producer: BaseProducer =
        aifab_core::kafka::transactional_producer_config(&settings.brokers, &id, &id)
            .create()
            .context("creating the transactional producer")?;
    Ok(Arc::new(producer))
}

/// Classify the `live` rows in length groups. A group the model rejects is retried row
/// by row so one poison request cannot fail its neighbours.
fn classify_rows(
    model: &Classifier,
    rows: &[Queued],
    live: &[usize],
) -> (BTreeMap<usize, Classification>, BTreeMap<usize, String>) {
    let ids: Vec<&[u32]> = live
        .iter()
        .map(|i| rows[*i].request.as_ref().unwrap().input_ids.as_slice())
        .collect();
    let lengths: Vec<usize> = ids.iter().map(|s| s.len()).collect();
    let mut results = BTreeMap::new();
    let mut failures = BTreeMap::new();
    // Padding is waste only where the encoder pads; a ragged one takes the batch whole.
    let max_padding = if model.encoder.implementation().is_ragged() {
        1.0
    } else {
        MAX_PADDING_FRACTION
    };
    for group in batcher::length_groups(&lengths, max_padding) {
        let batch: Vec<&[u32]> = group.iter().map(|&g| ids[g]).collect();
        match model.classify(&batch) {
            Ok(out) => {
                for (&g, c) in group.iter().zip(out) {
                    results.insert(live[g], c);
                }
            }
            Err(_) => {
                for &g in &group {
                    match model.classify(&[ids[g]]) {
                        Ok(mut out) => {
                            results.insert(live[g], out.remove(0));
                        }
                        Err(e) => {
                            failures.insert(live[g], e.to_string());
                        }
                    }
                }
            }
        }
    }
    (results, failures)
}

fn to_queued<M: Message>(m: &M, task: &str) -> Queued {
    let payload = m.payload().unwrap_or_default();
    let headers: Vec<(String, Vec<u8>)> = m
        .headers()
        .map(|h| {
            h.iter()
                .map(|h| (h.key.to_string(), h.value.unwrap_or_default().to_vec()))
                .collect()
        })
        .unwrap_or_default();
    let now = Instant::now();
    let request = match decode::<InferenceRequest>(payload) {
        Err(e) => Err((e.kind(), e.to_string(), payload.to_vec())),
        Ok(r) if r.task != task => Err((
            ErrorKind::WrongTask,
            format!("task: this worker serves \"{task}\", found \"{}\"", r.task),
            payload.to_vec(),
        )),
        Ok(r) if r.input_ids.is_empty() => Err((
            ErrorKind::MissingField,
            "input_ids: expected at least one token, found none".into(),
            payload.to_vec(),
        )),
        Ok(r) => Ok(r),
    };
    let deadline = request
        .as_ref()
        .ok()
        .and_then(|r| deadline_at(now, aifab_core::now_ms(), r.received_at_ms, r.deadline_ms?));
    let tokens = request.as_ref().map(|r| r.input_ids.len()).unwrap_or(1);
    Queued {
        partition: m.partition(),
        offset: m.offset(),
        key: m.key().map(|k| k.to_vec()),
        headers,
        request,
        pending: Pending {
            tokens,
            enqueued_at: now,
            deadline,
        },
    }
}

fn dead_letter(
    row: &Queued,
    original: &[u8],
    source: SourceRef,
    kind: ErrorKind,
    reason: &str,
) -> (&'static str, Vec<u8>, Vec<u8>, Vec<(String, Vec<u8>)>) {
    metrics::counter!("aifab_inference_worker_dead_letters_total", "kind" => kind.as_str())
        .increment(1);
    tracing::warn!(
        partition = source.partition,
        offset = source.offset,
        kind = %kind,
        reason,
        "dead-lettering request"
    );
    let tenant = row.request.as_ref().ok().map(|r| r.tenant.clone());
    let dl = DeadLetter::new(
        original,
        row.key.as_deref(),
        Some(source),
        "inference-worker",
        kind,
        reason,
        tenant,
    );
    let key = row.key.clone().unwrap_or_default();
    (topics::DLQ.name, key, encode(&dl), row.headers.clone())
}

/// When a request received at `received_at_ms` (wall clock) with `deadline_ms` expires, as
/// an `Instant` given that it is `now` / `now_ms`. The deadline counts from when ingest
/// received the request, not from now. The fields come from outside input, so the
/// arithmetic saturates: a receipt in the future counts as now, one in the far past (or a
/// deadline of 0) has already expired, and a deadline too far ahead to represent is no
/// deadline (`None`) rather than an `Instant` overflow (a panic).
fn deadline_at(
    now: Instant,
    now_ms: i64,
    received_at_ms: i64,
    deadline_ms: u64,
) -> Option<Instant> {
    let age_ms = u64::try_from(now_ms.saturating_sub(received_at_ms)).unwrap_or(0);
    match deadline_ms.checked_sub(age_ms) {
        Some(left) => now.checked_add(Duration::from_millis(left)),
        None => Some(now),
    }
}

#[cfg(test)]
mod deadline_tests {
    use super::*;

    #[test]
    fn deadlines_count_from_receipt() {
        let now = Instant::now();
        assert_eq!(
            deadline_at(now, 10_000, 9_000, 5_000),
            Some(now + Duration::from_millis(4_000))
        );
        assert_eq!(
            deadline_at(now, 10_000, 2_000, 5_000),
            Some(now),
            "already past"
        );
        assert_eq!(
            deadline_at(now, 10_000, 12_000, 5_000),
            Some(now + Duration::from_millis(5_000)),
            "receipt in the future"
        );
    }

    /// Regression: a request with `deadline_ms` u64::MAX (or `received_at_ms` i64::MIN)
    /// panicked the worker ("overflow when adding duration to instant" / subtract with
    /// overflow), a poison message that crash-looped its partition.
    #[test]
    fn extreme_fields_do_not_overflow() {
        let now = Instant::now();
        let now_ms = aifab_core::now_ms();
        assert!(deadline_at(now, now_ms, now_ms, u64::MAX)
            .is_none_or(|d| d > now + Duration::from_secs(86_400)));
        assert!(deadline_at(now, now_ms, i64::MIN, u64::MAX).is_none_or(|d| d > now));
        assert_eq!(deadline_at(now, now_ms, i64::MIN, 1_000), Some(now));
        assert_eq!(
            deadline_at(now, i64::MIN, i64::MAX, 1_000),
            Some(now + Duration::from_millis(1_000))
        );
        assert_eq!(deadline_at(now, now_ms, i64::MAX, 0), Some(now));
    }
}

#[cfg(test)]
mod positions_tests {
    use super::*;
    use aifab_core::messages::tag;

    #[test]
    fn revoking_drops_queued_messages_and_positions_of_that_topic_only() {
        let queued = |partition: i32| Queued {
            partition,
            offset: 0,
            key: None,
            headers: Vec::new(),
            request: Err(("k".into(), "r".into(), Vec::new())),
            pending: Pending {
                tokens: 1,
                enqueued_at: Instant::now(),
                deadline: None,
            },
        };
        let mut queue = vec![queued(0), queued(1), queued(0)];
        let mut p = Positions::default();
        assert!(p.admit(0, 7) && p.admit(1, 7));
        let revoked: HashSet<(String, i32)> =
            [("in".to_string(), 0), ("other".to_string(), 1)].into();
        drop_revoked(&mut queue, &mut p, "in", &revoked);
        assert_eq!(
            queue.iter().map(|q| q.partition).collect::<Vec<_>>(),
            vec![1]
        );
        assert!(p.admit(0, 0), "partition 0 of the input topic forgotten");
        assert!(!p.admit(1, 0), "partition 1 of another topic is not ours");
    }

    #[test]
    fn a_request_keeps_its_headers_for_its_prediction() {
        use rdkafka::message::{OwnedHeaders, OwnedMessage, Timestamp};
        // The feature stage's dedupe cache learns answers from the headers its requests
        // carry (`dedupe-key`), which every output of a row repeats.
        let req = aifab_core::messages::InferenceRequest {
            schema: tag(),
            id: "r-1".into(),
            tenant: "acme".into(),
            task: "t".into(),
            text: "hi".into(),
            input_ids: vec![2, 7, 3],
            token_count: 3,
            truncation: aifab_core::messages::Truncation::None,
            received_at_ms: 1,
            deadline_ms: None,
            priority: 0,
            attributes: Default::default(),
        };
        let headers = OwnedHeaders::new()
            .insert(Header {
                key: "tenant",
                value: Some("acme"),
            })
            .insert(Header {
                key: "dedupe-key",
                value: Some("ab12"),
            });
        let m = OwnedMessage::new(
            Some(encode(&req)),
            Some(b"r-1".to_vec()),
            "in".into(),
            Timestamp::NotAvailable,
            2,
            40,
            Some(headers),
        );
        let q = to_queued(&m, "t");
        assert!(q.request.is_ok());
        assert_eq!((q.partition, q.offset), (2, 40));
        assert_eq!(
            q.headers,
            vec![
                ("tenant".to_string(), b"acme".to_vec()),
                ("dedupe-key".to_string(), b"ab12".to_vec())
            ]
        );
    }
}
