//! Every metric the feature service exports under its own name, in one place: call sites
//! and tests use these constants, and [`ALL`] lists them for checks that dashboards and
//! alerts only query metrics that exist. (The `aifab_feature_pipeline_*` and
//! `aifab_feature_check_up` series come from aifab-core's loops and health checks.)

/// Records turned into outputs, by `kind` (`training`, `inference`, `cached`).
pub const RECORDS_TOTAL: &str = "aifab_feature_records_total";
/// Dedupe cache lookups, by `result` (`hit`, `miss`).
pub const DEDUPE_TOTAL: &str = "aifab_feature_dedupe_total";
/// Computed predictions stored in the dedupe cache.
pub const DEDUPE_STORED_TOTAL: &str = "aifab_feature_dedupe_stored_total";
/// Records dead-lettered, by `kind`.
pub const DEAD_LETTERS_TOTAL: &str = "aifab_feature_dead_letters_total";
/// Tokens of the inference requests sent, special tokens included.
pub const TOKENS_TOTAL: &str = "aifab_feature_tokens_total";
/// Inference requests whose text was truncated.
pub const TRUNCATED_TOTAL: &str = "aifab_feature_truncated_total";
/// Batches whose online features could not be written to Redis.
pub const ONLINE_WRITE_FAILURES_TOTAL: &str = "aifab_feature_online_write_failures_total";

/// Every name above.
pub const ALL: &[&str] = &[
    RECORDS_TOTAL,
    DEDUPE_TOTAL,
    DEDUPE_STORED_TOTAL,
    DEAD_LETTERS_TOTAL,
    TOKENS_TOTAL,
    TRUNCATED_TOTAL,
    ONLINE_WRITE_FAILURES_TOTAL,
];

#[cfg(test)]
mod tests {
    #[test]
    fn names_are_unique_prefixed_and_valid() {
        let problems = aifab_core::telemetry::catalogue_problems("feature", super::ALL);
        assert!(problems.is_empty(), "{problems:#?}");
    }
}
