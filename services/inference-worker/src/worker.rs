//! The consume → batch → compute → produce loop, exactly once.
//!
//! It drives the engine of `aifab_core::pipeline` (a [`LoopConsumer`] and a
//! [`TxnProducer`]) with what is the worker's own: a queue planned into batches by
//! deadline and size, the model and its rollout arms, and the outputs.
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
//!    not at all. Downstream consumers read `read_committed`. Under backlog consecutive
//!    batches share one transaction, for up to `max_txn`.
//!
//! A failed transaction is aborted (or the producer replaced, see
//! `aifab_core::pipeline::txn`) and the consumer rewinds to the committed offsets, like a
//! restarted process would, but without giving up its model or partitions.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use aifab_core::dead_letter::ErrorKind;
use aifab_core::messages::{encode, Arm, InferenceRequest};
use aifab_core::pipeline::consumer::{ConsumerSettings, LoopConsumer, Polled};
use aifab_core::pipeline::metric_names::TxnMetrics;
use aifab_core::pipeline::offsets::NextOffsets;
use aifab_core::pipeline::txn::{TxnProducer, TxnSettings};
use aifab_core::pipeline::{dead_letter_of, Record, Refused};
use aifab_core::supervise::Heartbeat;
use aifab_core::topics;
use aifab_model::batcher::{self, BatchLimits, Pending, Plan};
use rdkafka::error::KafkaError;
use tokio_util::sync::CancellationToken;

use crate::arms;
use crate::compute::{classify_rows, Computed};
use crate::metric_names as m;
use crate::model_slot::ModelSlot;
use crate::outputs::{self, BatchInfo};
use crate::queue::{drop_revoked, Queued};

/// How long one transactional call may block. A call that times out is made again, so
/// this bounds how long the loop goes without logging or counting that the broker is
/// away, not how long a transaction may take.
const TXN_TIMEOUT: Duration = Duration::from_secs(10);
/// The service's name in the engine's metric names.
const SERVICE: &str = "inference-worker";

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

impl WorkerSettings {
    /// One client and transactional id per instance: a restarted instance fences its
    /// predecessor's open transaction; zombie instances are fenced by the consumer group
    /// generation sent with the offsets (KIP-447).
    fn client_id(&self) -> String {
        format!("aifab-inference-worker-{}", self.instance_id)
    }
}

/// A transaction that has outputs in it but is not committed yet.
struct OpenTxn {
    started: Instant,
    /// Next offset per input partition of every batch in it.
    next_offsets: NextOffsets,
    batches: u32,
}

pub struct Worker {
    settings: WorkerSettings,
    consumer: LoopConsumer,
    /// Made once a model is loaded (see [`Worker::run`]).
    producer: Option<TxnProducer>,
    shutdown: CancellationToken,
    slot: Arc<ModelSlot>,
    queue: Vec<Queued>,
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
        let consumer = LoopConsumer::new(ConsumerSettings {
            service: SERVICE,
            brokers: settings.brokers.clone(),
            client_id: settings.client_id(),
            group: settings.group.clone(),
            topic: settings.input_topic.clone(),
            call_timeout: TXN_TIMEOUT,
            heartbeat: settings.heartbeat.clone(),
        })?;
        Ok(Worker {
            settings,
            consumer,
            producer: None,
            shutdown,
            slot,
            queue: Vec::new(),
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
        let id = self.settings.client_id();
        let txn = TxnSettings {
            brokers: self.settings.brokers.clone(),
            client_id: id.clone(),
            transactional_id: id,
            init_timeout: TXN_TIMEOUT,
            call_timeout: TXN_TIMEOUT,
        };
        let Some(producer) = TxnProducer::start(txn, TxnMetrics::pipeline(SERVICE), &shutdown)?
        else {
            return Ok(());
        };
        self.producer = Some(producer);
        self.consumer.subscribe()?;
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
                    metrics::counter!(m::BATCHES, "reason" => reason.as_str()).increment(1);
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
                    // Nothing held and nothing open: what the position passed since the
                    // last commit can only be transaction markers.
                    if self.queue.is_empty() {
                        self.consumer.commit_idle();
                    }
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

    fn producer(&mut self) -> &mut TxnProducer {
        self.producer.as_mut().expect("made before the loop starts")
    }

    /// Poll for up to `timeout`, then take whatever else is ready, up to `max_queue`.
    fn poll(&mut self, timeout: Duration) {
        let mut wait = timeout;
        while self.queue.len() < self.settings.max_queue {
            let queue = &mut self.queue;
            match self
                .consumer
                .poll(wait, |revoked| drop_revoked(queue, revoked))
            {
                Polled::Nothing | Polled::Failed => break,
                Polled::Redelivered => wait = Duration::ZERO,
                Polled::Message(msg) => {
                    self.queue.push(Queued::new(msg, &self.settings.task));
                    wait = Duration::ZERO;
                }
            }
        }
        // Delivery reports of committed batches (commit_transaction waited for them).
        self.producer().txn().serve();
        metrics::gauge!(m::QUEUE_DEPTH).set(self.queue.len() as f64);
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
        let live = rows
            .iter()
            .enumerate()
            .filter_map(|(i, r)| match &r.request {
                Ok(req) if !expired.contains(&i) => Some((i, req.id.as_str())),
                _ => None,
            });
        let candidate = self.slot.candidate();
        let routing = arms::route(live, candidate.as_ref().map(|(_, r)| r));

        // Compute outside the transaction: it can be retried, the transaction cannot.
        let compute_started_ms = aifab_core::now_ms();
        let t = Instant::now();
        let production = classify_rows(&model, &rows, &routing.production);
        let (canary, shadow) = match &candidate {
            Some((c, _)) => (
                classify_rows(c, &rows, &routing.canary),
                classify_rows(c, &rows, &routing.shadow),
            ),
            None => (Computed::default(), Computed::default()),
        };
        let compute_seconds = t.elapsed().as_secs_f64();

        let info = BatchInfo {
            batch_id: &batch_id,
            worker: &self.settings.instance_id,
            task: &self.settings.task,
            model_version: &model.version,
            device_kind: &self.settings.device_kind,
            batch_size: production.results.len() as u32,
            compute_started_ms,
            compute_seconds,
            idle_seconds: idle,
            now_ms: aifab_core::now_ms(),
        };
        // Each arm is its own compute batch of one version, with its own batch id.
        let (canary_id, shadow_id) = (format!("{batch_id}-canary"), format!("{batch_id}-shadow"));
        let candidate_version = candidate
            .as_ref()
            .map(|(c, _)| c.version.clone())
            .unwrap_or_default();
        let arm_info = |batch_id, computed: &Computed| BatchInfo {
            batch_id,
            model_version: &candidate_version,
            batch_size: computed.results.len() as u32,
            ..info.clone()
        };
        let infos = ArmInfos {
            production: &info,
            canary: &arm_info(&canary_id, &canary),
            shadow: &arm_info(&shadow_id, &shadow),
        };
        let (records, served) = batch_records(&rows, &expired, production, canary, shadow, &infos);

        match self.send_in_txn(&records, &rows) {
            Ok(()) => {
                metrics::histogram!(m::BATCH_SIZE).record(served as f64);
                metrics::histogram!(m::COMPUTE_SECONDS).record(compute_seconds);
                self.last_batch_end = Instant::now();
                Ok(())
            }
            Err(e) => self.on_txn_error(e, &batch_id),
        }
    }

    /// Put a batch's outputs into the open transaction (beginning one if needed) and
    /// remember its input offsets for the commit.
    fn send_in_txn(&mut self, records: &[Record], rows: &[Queued]) -> Result<(), KafkaError> {
        if self.open_txn.is_none() {
            // Present whenever the consumer is subscribed; checked before the transaction
            // starts so a missing one needs no abort.
            if self.consumer.group_metadata().is_none() {
                return Err(KafkaError::Subscription(
                    "consumer has no group metadata yet".into(),
                ));
            }
            self.producer().txn().begin()?;
            self.open_txn = Some(OpenTxn {
                started: Instant::now(),
                next_offsets: NextOffsets::default(),
                batches: 0,
            });
        }
        let txn = self.producer().txn().clone();
        for r in records {
            txn.send(r)?;
        }
        let open = self.open_txn.as_mut().expect("opened above");
        for r in rows {
            open.next_offsets
                .advance(r.source.partition, r.source.offset);
        }
        open.batches += 1;
        Ok(())
    }

    /// Commit the open transaction with its input offsets (`send_offsets_to_transaction`).
    fn commit_open(&mut self) -> anyhow::Result<()> {
        let Some(open) = self.open_txn.take() else {
            return Ok(());
        };
        // With nothing left in the queue every message polled is in this transaction, so
        // the consumer's position may stand in (see `LoopConsumer::offsets_to_commit`).
        let offsets = self
            .consumer
            .offsets_to_commit(&open.next_offsets, self.queue.is_empty());
        let txn = self.producer().txn().clone();
        let result = match self.consumer.group_metadata() {
            Some(group) => {
                txn.commit_with_offsets(&self.settings.input_topic, &offsets, &Arc::new(group))
            }
            None => Err(KafkaError::Subscription(
                "consumer has no group metadata".into(),
            )),
        };
        match result {
            Ok(()) => {
                self.consumer.committed(&offsets);
                tracing::debug!(batches = open.batches, offsets = ?offsets, "transaction committed");
                metrics::histogram!(m::BATCHES_PER_TRANSACTION).record(open.batches as f64);
                self.settings.heartbeat.progress();
                Ok(())
            }
            Err(e) => {
                self.open_txn = Some(open);
                self.on_txn_error(e, "open transaction")
            }
        }
    }

    /// Abort (or replace the producer), then rewind to the committed offsets: the
    /// transaction's batches are consumed again.
    fn on_txn_error(&mut self, e: KafkaError, what: &str) -> anyhow::Result<()> {
        self.settings
            .heartbeat
            .trouble(format_args!("transaction failed: {e}"));
        tracing::warn!(error = %e, batch = %what, "transaction failed; rewinding to committed offsets");
        let open = self.open_txn.take().is_some();
        let shutdown = self.shutdown.clone();
        self.producer().recover(&e, open, &shutdown)?;
        self.queue.clear();
        self.consumer.rewind(&shutdown)
    }
}

/// The per-arm facts every output of a batch carries.
struct ArmInfos<'a> {
    production: &'a BatchInfo<'a>,
    canary: &'a BatchInfo<'a>,
    shadow: &'a BatchInfo<'a>,
}

/// A batch's records: a prediction per row (served by production or the canary; expired
/// rows answered as such), shadow predictions, dead letters for rows that could not be
/// served, and usage per tenant. Also the number of rows served by a model.
fn batch_records(
    rows: &[Queued],
    expired: &HashSet<usize>,
    mut production: Computed,
    mut canary: Computed,
    mut shadow: Computed,
    infos: &ArmInfos<'_>,
) -> (Vec<Record>, usize) {
    let prediction =
        |req: &InferenceRequest, p: &aifab_core::messages::Prediction, row: &Queued| {
            let mut r = Record::new(topics::PREDICTIONS.name, req.id.clone(), encode(p));
            r.headers = row.headers.clone();
            r
        };
    let mut records = Vec::with_capacity(rows.len() + 1);
    let mut computed: Vec<&InferenceRequest> = Vec::with_capacity(rows.len());
    for (i, row) in rows.iter().enumerate() {
        let req = match &row.request {
            Err(e) => {
                records.push(refuse(row, &e.original, e.kind, &e.reason));
                continue;
            }
            Ok(req) => req,
        };
        if expired.contains(&i) {
            metrics::counter!(m::REQUESTS, "outcome" => "expired").increment(1);
            records.push(prediction(
                req,
                &outputs::expired(req, infos.production),
                row,
            ));
            continue;
        }
        let served = match (production.results.remove(&i), canary.results.remove(&i)) {
            (Some(c), _) => Some(outputs::computed(req, c, infos.production, Arm::Production)),
            (None, Some(c)) => Some(outputs::computed(req, c, infos.canary, Arm::Canary)),
            (None, None) => None,
        };
        match served {
            Some(p) => {
                metrics::counter!(m::REQUESTS, "outcome" => "ok").increment(1);
                records.push(prediction(req, &p, row));
                computed.push(req);
            }
            None => {
                let reason = production
                    .failures
                    .remove(&i)
                    .or_else(|| canary.failures.remove(&i))
                    .unwrap_or_else(|| "not computed".into());
                let original = serde_json::to_vec(req).unwrap_or_default();
                records.push(refuse(row, &original, ErrorKind::ModelRejected, &reason));
            }
        }
        if let Some(c) = shadow.results.remove(&i) {
            let p = outputs::computed(req, c, infos.shadow, Arm::Shadow);
            records.push(prediction(req, &p, row));
        }
    }
    for u in outputs::usage(&computed, infos.production) {
        records.push(Record::new(
            topics::USAGE.name,
            u.usage_id.clone(),
            encode(&u),
        ));
    }
    (records, computed.len())
}

/// A dead letter for a row the worker cannot serve.
fn refuse(row: &Queued, original: &[u8], kind: ErrorKind, reason: &str) -> Record {
    metrics::counter!(m::DEAD_LETTERS, "kind" => kind.as_str()).increment(1);
    tracing::warn!(
        partition = row.source.partition,
        offset = row.source.offset,
        kind = %kind,
        reason,
        "dead-lettering request"
    );
    let refused = Refused {
        original,
        key: row.key.as_deref(),
        headers: &row.headers,
        source: &row.source,
    };
    let tenant = row.request.as_ref().ok().map(|r| r.tenant.clone());
    dead_letter_of(
        topics::DLQ.name,
        "inference-worker",
        refused,
        kind,
        reason,
        tenant,
    )
}
