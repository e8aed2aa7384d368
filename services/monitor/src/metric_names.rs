//! Every metric the monitor exports, by name. Call sites and tests use these constants;
//! [`ALL`] lists them for checks that dashboards only query metrics that exist.

/// Whether an SLO rule is firing (1) or resolved (0), by `rule`.
pub const ALERT_FIRING: &str = "aifab_monitor_alert_firing";
/// Dead letters seen on the DLQ topic.
pub const DEAD_LETTERS_TOTAL: &str = "aifab_monitor_dead_letters_total";
/// Dead letters by the `stage` that refused them and their `error_kind`.
pub const DEAD_LETTERS_BY_STAGE_TOTAL: &str = "aifab_monitor_dead_letters_by_stage_total";
/// Predictions seen, by `task`, `model_version`, `tenant` and `outcome`.
pub const PREDICTIONS_TOTAL: &str = "aifab_monitor_predictions_total";
/// End-to-end latency of each prediction (received to produced), by `task`.
pub const E2E_LATENCY_SECONDS: &str = "aifab_monitor_e2e_latency_seconds";
/// Records on the predictions or DLQ topic that did not decode, by `topic`.
pub const DECODE_ERRORS_TOTAL: &str = "aifab_monitor_decode_errors_total";
/// Latency percentiles over the rolling window, by `scope`, `key` and `quantile`.
pub const WINDOW_LATENCY_SECONDS: &str = "aifab_monitor_window_latency_seconds";
/// Throughput over the rolling window, by `scope` and `key`.
pub const WINDOW_PREDICTIONS_PER_SECOND: &str = "aifab_monitor_window_predictions_per_second";
/// Share of expired predictions over the rolling window, by `scope` and `key`.
pub const WINDOW_ERROR_RATIO: &str = "aifab_monitor_window_error_ratio";
/// Dead letters per second over the rolling window.
pub const WINDOW_DEAD_LETTERS_PER_SECOND: &str = "aifab_monitor_window_dead_letters_per_second";
/// Total lag of a consumer group on a topic, by `group` and `topic`.
pub const CONSUMER_LAG_RECORDS: &str = "aifab_monitor_consumer_lag_records";
/// How fast that lag changes (negative: draining), by `group` and `topic`.
pub const CONSUMER_LAG_RATE_RECORDS_PER_SECOND: &str =
    "aifab_monitor_consumer_lag_rate_records_per_second";
/// Lag of one partition, by `group`, `topic` and `partition`.
pub const CONSUMER_LAG_PARTITION_RECORDS: &str = "aifab_monitor_consumer_lag_partition_records";
/// A registered model version's evaluation metric, by `task`, `version` and `metric`.
pub const MODEL_METRIC_RATIO: &str = "aifab_monitor_model_metric_ratio";
/// Which version a registry alias names (1) or named before (0), by `task`, `alias`, `version`.
pub const MODEL_ALIAS_INFO: &str = "aifab_monitor_model_alias_info";

/// Every name above.
pub const ALL: &[&str] = &[
    ALERT_FIRING,
    DEAD_LETTERS_TOTAL,
    DEAD_LETTERS_BY_STAGE_TOTAL,
    PREDICTIONS_TOTAL,
    E2E_LATENCY_SECONDS,
    DECODE_ERRORS_TOTAL,
    WINDOW_LATENCY_SECONDS,
    WINDOW_PREDICTIONS_PER_SECOND,
    WINDOW_ERROR_RATIO,
    WINDOW_DEAD_LETTERS_PER_SECOND,
    CONSUMER_LAG_RECORDS,
    CONSUMER_LAG_RATE_RECORDS_PER_SECOND,
    CONSUMER_LAG_PARTITION_RECORDS,
    MODEL_METRIC_RATIO,
    MODEL_ALIAS_INFO,
];

#[cfg(test)]
mod tests {
    #[test]
    fn names_are_unique_prefixed_and_valid() {
        let problems = aifab_core::telemetry::catalogue_problems("monitor", super::ALL);
        assert!(problems.is_empty(), "{problems:#?}");
    }
}
