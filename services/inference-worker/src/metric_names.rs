//! Every metric the inference worker exports under its own name; the engine's
//! (`aifab_inference_worker_pipeline_*`) are listed in `aifab_core::pipeline::metric_names`.

/// Batches run, by `reason` (`full`, `tokens`, `deadline`, `wait`).
pub const BATCHES: &str = "aifab_inference_worker_batches_total";
/// Requests answered, by `outcome` (`ok`, `expired`).
pub const REQUESTS: &str = "aifab_inference_worker_requests_total";
/// Messages consumed and waiting for a batch.
pub const QUEUE_DEPTH: &str = "aifab_inference_worker_queue_depth";
/// Rows computed per committed batch.
pub const BATCH_SIZE: &str = "aifab_inference_worker_batch_size";
/// Seconds the model took per committed batch.
pub const COMPUTE_SECONDS: &str = "aifab_inference_worker_compute_seconds";
/// Batches that shared one transaction.
pub const BATCHES_PER_TRANSACTION: &str = "aifab_inference_worker_batches_per_transaction";
/// Requests dead-lettered, by `kind`.
pub const DEAD_LETTERS: &str = "aifab_inference_worker_dead_letters_total";
/// Models swapped in.
pub const MODEL_SWAPS: &str = "aifab_inference_worker_model_swaps_total";
/// Production changes followed by checking the registry, their NATS event missed.
pub const MODEL_RECONCILED: &str = "aifab_inference_worker_model_reconciled_total";
/// Models that failed to load.
pub const MODEL_LOAD_FAILURES: &str = "aifab_inference_worker_model_load_failures_total";
/// Model versions refused: not in the registry, or files that do not match its digest.
pub const MODEL_VERIFICATION_FAILURES: &str =
    "aifab_inference_worker_model_verification_failures_total";

/// Every name above.
pub const ALL: &[&str] = &[
    BATCHES,
    REQUESTS,
    QUEUE_DEPTH,
    BATCH_SIZE,
    COMPUTE_SECONDS,
    BATCHES_PER_TRANSACTION,
    DEAD_LETTERS,
    MODEL_SWAPS,
    MODEL_RECONCILED,
    MODEL_LOAD_FAILURES,
    MODEL_VERIFICATION_FAILURES,
];

#[cfg(test)]
mod tests {
    #[test]
    fn names_are_unique_prefixed_and_valid() {
        let problems = aifab_core::telemetry::catalogue_problems("inference-worker", super::ALL);
        assert!(problems.is_empty(), "{problems:#?}");
    }
}
