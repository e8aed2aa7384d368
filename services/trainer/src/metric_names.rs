//! Every metric the trainer exports, by name. Call sites and tests use these constants;
//! [`ALL`] lists them for checks that dashboards only query metrics that exist.

/// Training examples taken into the window.
pub const EXAMPLES_TOTAL: &str = "aifab_trainer_examples_total";
/// Records on the examples topic that did not decode (skipped).
pub const BAD_EXAMPLES_TOTAL: &str = "aifab_trainer_bad_examples_total";
/// Training jobs run, by `result` (`ok`, `failed`).
pub const JOBS_TOTAL: &str = "aifab_trainer_jobs_total";
/// Trained versions the promotion gate kept as candidates.
pub const PROMOTIONS_REJECTED_TOTAL: &str = "aifab_trainer_promotions_rejected_total";

/// Every name above.
pub const ALL: &[&str] = &[
    EXAMPLES_TOTAL,
    BAD_EXAMPLES_TOTAL,
    JOBS_TOTAL,
    PROMOTIONS_REJECTED_TOTAL,
];

#[cfg(test)]
mod tests {
    #[test]
    fn names_are_unique_prefixed_and_valid() {
        let problems = aifab_core::telemetry::catalogue_problems("trainer", super::ALL);
        assert!(problems.is_empty(), "{problems:#?}");
    }
}
