//! The metrics the engine exports for the service running it, one catalogue: each name
//! is `aifab_<service>_<suffix>` with a suffix below ([`crate::telemetry::metric_name`]).

use crate::telemetry::metric_name;

/// Input messages of committed batches.
pub const MESSAGES: &str = "pipeline_messages_total";
/// Records produced by committed batches.
pub const RECORDS_PRODUCED: &str = "pipeline_records_produced_total";
/// Seconds from a batch's first transform to its commit.
pub const BATCH_SECONDS: &str = "pipeline_batch_seconds";
/// Batches consumed again, by `reason` (`stage`, `handler`, `transaction`).
pub const RETRIES: &str = "pipeline_retries_total";
/// Transactional calls made again after a timeout, by `call`.
pub const TRANSACTION_RETRIES: &str = "pipeline_transaction_retries_total";
/// Transactions aborted (their batches are consumed again).
pub const TRANSACTIONS_ABORTED: &str = "pipeline_transactions_aborted_total";
/// Transactional producers replaced (fenced, or stuck in a call).
pub const PRODUCER_RESTARTS: &str = "pipeline_producer_restarts_total";
/// Consumers replaced (their group coordinator was lost).
pub const CONSUMER_RESTARTS: &str = "pipeline_consumer_restarts_total";
/// Messages the consumer handed over a second time, dropped.
pub const REDELIVERIES_DROPPED: &str = "pipeline_redeliveries_dropped_total";
/// [`crate::pipeline::AtomicProducer`] transactions, by `result` (`ok`, `failed`, `unknown`).
pub const ATOMIC_TRANSACTIONS: &str = "atomic_transactions_total";
/// [`crate::pipeline::AtomicProducer`] calls made again after a timeout, by `call`.
pub const ATOMIC_TRANSACTION_RETRIES: &str = "atomic_transaction_retries_total";
/// [`crate::pipeline::AtomicProducer`] transactions aborted.
pub const ATOMIC_TRANSACTIONS_ABORTED: &str = "atomic_transactions_aborted_total";
/// [`crate::pipeline::AtomicProducer`] producers replaced.
pub const ATOMIC_PRODUCER_RESTARTS: &str = "atomic_producer_restarts_total";

/// Every suffix above.
pub const ALL: &[&str] = &[
    MESSAGES,
    RECORDS_PRODUCED,
    BATCH_SECONDS,
    RETRIES,
    TRANSACTION_RETRIES,
    TRANSACTIONS_ABORTED,
    PRODUCER_RESTARTS,
    CONSUMER_RESTARTS,
    REDELIVERIES_DROPPED,
    ATOMIC_TRANSACTIONS,
    ATOMIC_TRANSACTION_RETRIES,
    ATOMIC_TRANSACTIONS_ABORTED,
    ATOMIC_PRODUCER_RESTARTS,
];

/// The full name of `suffix` for `service` (`inference-worker` → `aifab_inference_worker_…`).
pub fn full(service: &str, suffix: &str) -> String {
    metric_name(service, suffix)
}

/// The names a transactional producer counts in, built once (not per call).
#[derive(Debug, Clone)]
pub struct TxnMetrics {
    pub retries: String,
    pub aborted: String,
    pub restarts: String,
}

impl TxnMetrics {
    /// For a consuming loop's producer.
    pub fn pipeline(service: &str) -> Self {
        TxnMetrics {
            retries: full(service, TRANSACTION_RETRIES),
            aborted: full(service, TRANSACTIONS_ABORTED),
            restarts: full(service, PRODUCER_RESTARTS),
        }
    }

    /// For an [`crate::pipeline::AtomicProducer`].
    pub fn atomic(service: &str) -> Self {
        TxnMetrics {
            retries: full(service, ATOMIC_TRANSACTION_RETRIES),
            aborted: full(service, ATOMIC_TRANSACTIONS_ABORTED),
            restarts: full(service, ATOMIC_PRODUCER_RESTARTS),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_unique_prefixed_and_valid() {
        let names: Vec<String> = ALL.iter().map(|s| full("inference-worker", s)).collect();
        let names: Vec<&str> = names.iter().map(String::as_str).collect();
        let problems = crate::telemetry::catalogue_problems("inference-worker", &names);
        assert!(problems.is_empty(), "{problems:#?}");
    }
}
