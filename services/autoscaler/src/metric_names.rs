//! Every metric the autoscaler exports, by name. Call sites and tests use these constants;
//! [`ALL`] lists them for checks that dashboards only query metrics that exist.

/// The replicas the last decision wants, by `service`.
pub const DESIRED_REPLICAS: &str = "aifab_autoscaler_desired_replicas";
/// The policy's recommendation before stabilization, cooldowns and the budget, by `service`.
pub const RECOMMENDED_REPLICAS: &str = "aifab_autoscaler_recommended_replicas";
/// The replicas running when the last decision was made, by `service`.
pub const CURRENT_REPLICAS: &str = "aifab_autoscaler_current_replicas";
/// Decisions made, by `service` and `reason`.
pub const DECISIONS_TOTAL: &str = "aifab_autoscaler_decisions_total";
/// The most replicas the budget allows, by `service` (when a budget is known).
pub const BUDGET_CAP_REPLICAS: &str = "aifab_autoscaler_budget_cap_replicas";
/// The per-replica service rate the aifab policy uses, by `service`.
pub const REPLICA_RATE_RECORDS_PER_SECOND: &str =
    "aifab_autoscaler_replica_rate_records_per_second";
/// The arrival rate the aifab policy estimates, by `service`.
pub const ARRIVAL_RATE_RECORDS_PER_SECOND: &str =
    "aifab_autoscaler_arrival_rate_records_per_second";
/// Decisions applied through an actuator, by `actuator` and `result` (`ok`, `error`).
pub const ACTUATIONS_TOTAL: &str = "aifab_autoscaler_actuations_total";

/// Every name above.
pub const ALL: &[&str] = &[
    DESIRED_REPLICAS,
    RECOMMENDED_REPLICAS,
    CURRENT_REPLICAS,
    DECISIONS_TOTAL,
    BUDGET_CAP_REPLICAS,
    REPLICA_RATE_RECORDS_PER_SECOND,
    ARRIVAL_RATE_RECORDS_PER_SECOND,
    ACTUATIONS_TOTAL,
];

#[cfg(test)]
mod tests {
    #[test]
    fn names_are_unique_prefixed_and_valid() {
        let problems = aifab_core::telemetry::catalogue_problems("autoscaler", super::ALL);
        assert!(problems.is_empty(), "{problems:#?}");
    }
}
