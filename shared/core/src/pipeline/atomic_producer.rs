//! [`AtomicProducer`]: exactly-once production for callers that consume nothing (an HTTP
//! handler, say): each call's records all commit or none do, and calls arriving together
//! share one transaction.

use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use rdkafka::error::KafkaError;
use tokio_util::sync::CancellationToken;

use super::metric_names::{self, full, TxnMetrics};
use super::record::Record;
use super::txn::{TxnProducer, TxnSettings};
use crate::kafka;

/// Longest `init_transactions` blocks before it is made again.
const INIT_TIMEOUT: Duration = Duration::from_secs(30);

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
    let settings = TxnSettings {
        brokers: brokers.to_string(),
        client_id: id.to_string(),
        transactional_id: id.to_string(),
        init_timeout: INIT_TIMEOUT,
        call_timeout: ATOMIC_CALL_TIMEOUT,
    };
    let Some(mut producer) = TxnProducer::start(settings, TxnMetrics::atomic(service), &shutdown)?
    else {
        return Ok(());
    };
    let transactions = full(service, metric_names::ATOMIC_TRANSACTIONS);
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
        let txn = producer.txn().clone();
        let mut committing = false;
        let result = (|| -> Result<(), KafkaError> {
            txn.begin()?;
            for r in jobs.iter().flat_map(|j| j.records.iter()) {
                txn.send(r)?;
            }
            committing = true;
            // A commit that timed out must be made again, not aborted: the coordinator may
            // be committing it already.
            txn.commit()
        })();
        let e = match result {
            Ok(()) => {
                metrics::counter!(transactions.clone(), "result" => "ok").increment(1);
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
        metrics::counter!(transactions.clone(), "result" => result).increment(1);
        tracing::warn!(error = %e, calls = jobs.len(), outcome = ?outcome, "transaction failed");
        // The outcome is decided: answer before the abort or a new producer's start,
        // which may wait for the broker.
        for j in jobs {
            let _ = j.reply.send(outcome.clone());
        }
        if !producer.recover(&e, true, &shutdown)? {
            return Ok(());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
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
}
