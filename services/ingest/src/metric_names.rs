//! Every metric ingest exports under its own name, in one place: call sites and tests
//! use these constants, and [`ALL`] lists them for checks that dashboards and alerts only
//! query metrics that exist. (The `aifab_ingest_pipeline_*` and `aifab_ingest_check_up`
//! series come from aifab-core's loops and health checks.)

/// HTTP requests answered, by `route` and `status`.
pub const HTTP_REQUESTS_TOTAL: &str = "aifab_ingest_http_requests_total";
/// Time to answer an HTTP request, by `route`.
pub const HTTP_REQUEST_SECONDS: &str = "aifab_ingest_http_request_seconds";
/// POST bodies refused for their size (413, not dead-lettered).
pub const HTTP_BODY_TOO_LARGE_TOTAL: &str = "aifab_ingest_http_body_too_large_total";
/// Timed-out writes settled later, by `outcome` (`written`, `not_written`, `unknown`).
pub const HTTP_UNDECIDED_WRITES_TOTAL: &str = "aifab_ingest_http_undecided_writes_total";
/// Answers replayed for a repeated Idempotency-Key.
pub const IDEMPOTENT_REPLAYS_TOTAL: &str = "aifab_ingest_idempotent_replays_total";
/// Records accepted and written, by `source` (`http`, `kafka`) and `route`.
pub const RECORDS_TOTAL: &str = "aifab_ingest_records_total";
/// Inputs refused and dead-lettered, by `source` and `kind`.
pub const DEAD_LETTERS_TOTAL: &str = "aifab_ingest_dead_letters_total";
/// HTTP requests refused for a missing or unknown API key (401), by `kind`; only a sample
/// of them is dead-lettered.
pub const HTTP_UNAUTHENTICATED_TOTAL: &str = "aifab_ingest_http_unauthenticated_total";
/// Requests answered 429 because too many not-yet-seen API keys arrived at once (their
/// Redis lookups are limited by `--unseen-key-lookups-per-s`).
pub const HTTP_KEY_LOOKUPS_THROTTLED_TOTAL: &str = "aifab_ingest_http_key_lookups_throttled_total";
/// Dead letters of refused HTTP requests that could not be written.
pub const DEAD_LETTER_FAILURES_TOTAL: &str = "aifab_ingest_dead_letter_failures_total";
/// HTTP requests refused by a tenant's rate limit (429).
pub const RATE_LIMITED_TOTAL: &str = "aifab_ingest_rate_limited_total";
/// Requests refused because their tenant is over budget, by `source`.
pub const BUDGET_REJECTED_TOTAL: &str = "aifab_ingest_budget_rejected_total";
/// Budget-exceeded events recorded from NATS.
pub const BUDGET_EVENTS_TOTAL: &str = "aifab_ingest_budget_events_total";
/// Budget events on NATS that did not decode.
pub const BUDGET_EVENTS_INVALID_TOTAL: &str = "aifab_ingest_budget_events_invalid_total";
/// Raw-topic batches tried again, by `reason` (`id_in_flight`: an HTTP request holds an id).
pub const RAW_WAITS_TOTAL: &str = "aifab_ingest_raw_waits_total";
/// Predictions stored for `GET /v1/predictions/{id}`.
pub const PREDICTIONS_STORED_TOTAL: &str = "aifab_ingest_predictions_stored_total";
/// Records on the predictions topic that did not decode.
pub const PREDICTIONS_INVALID_TOTAL: &str = "aifab_ingest_predictions_invalid_total";

/// Every name above.
pub const ALL: &[&str] = &[
    HTTP_REQUESTS_TOTAL,
    HTTP_REQUEST_SECONDS,
    HTTP_BODY_TOO_LARGE_TOTAL,
    HTTP_UNDECIDED_WRITES_TOTAL,
    IDEMPOTENT_REPLAYS_TOTAL,
    RECORDS_TOTAL,
    DEAD_LETTERS_TOTAL,
    DEAD_LETTER_FAILURES_TOTAL,
    HTTP_UNAUTHENTICATED_TOTAL,
    HTTP_KEY_LOOKUPS_THROTTLED_TOTAL,
    RATE_LIMITED_TOTAL,
    BUDGET_REJECTED_TOTAL,
    BUDGET_EVENTS_TOTAL,
    BUDGET_EVENTS_INVALID_TOTAL,
    RAW_WAITS_TOTAL,
    PREDICTIONS_STORED_TOTAL,
    PREDICTIONS_INVALID_TOTAL,
];

#[cfg(test)]
mod tests {
    #[test]
    fn names_are_unique_prefixed_and_valid() {
        let problems = aifab_core::telemetry::catalogue_problems("ingest", super::ALL);
        assert!(problems.is_empty(), "{problems:#?}");
    }
}
