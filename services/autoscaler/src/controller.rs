//! The controller: one lag reading, with the replica count and budget last heard, in;
//! one scale decision out (the policy decides; this keeps its inputs and state).

use aifab_core::messages::{tag, LagReading, ScaleDecision, ScaleInputs};

use crate::budget::BudgetTracker;
use crate::metric_names;
use crate::policy::{decide, Decision, Observation, PolicyConfig, PolicyState};

/// Everything one evaluation needs, and what it decided last.
pub struct Controller {
    pub service: String,
    pub policy: PolicyConfig,
    pub state: PolicyState,
    pub budget: BudgetTracker,
    /// The actuator's last replica count.
    pub current: Option<u32>,
    pub last_desired: Option<u32>,
    pub topic: Option<String>,
}

impl Controller {
    pub fn new(
        service: &str,
        policy: PolicyConfig,
        budget_tenant: &str,
        budget_max_age_ms: i64,
        topic: Option<String>,
    ) -> Self {
        Controller {
            service: service.to_string(),
            policy,
            state: PolicyState::default(),
            budget: BudgetTracker::new(budget_tenant, budget_max_age_ms),
            current: None,
            last_desired: None,
            topic,
        }
    }

    /// Decide from one lag reading (`now_ms` is the local clock, for budget periods).
    /// None when the reading is about another topic.
    pub fn on_lag(&mut self, reading: &LagReading, now_ms: i64) -> Option<ScaleDecision> {
        if self.topic.as_deref().is_some_and(|t| t != reading.topic) {
            return None;
        }
        let current = self
            .current
            .or(self.last_desired)
            .unwrap_or(self.policy.min_replicas);
        let budget = self.budget.view(now_ms);
        let obs = Observation {
            at_ms: reading.at_ms,
            total_lag: reading.total_lag,
            lag_rate_per_s: reading.lag_rate_per_s,
            partitions: reading.partitions.len() as u32,
            produced_total: Some(reading.partitions.iter().map(|p| p.high_watermark).sum()),
            consumed_total: Some(
                reading
                    .partitions
                    .iter()
                    .map(|p| p.high_watermark - p.lag)
                    .sum(),
            ),
            current_replicas: current,
            budget,
        };
        let d = decide(&self.policy, &mut self.state, &obs);
        self.last_desired = Some(d.desired);
        export_decision(&self.service, current, &d);
        Some(ScaleDecision {
            schema: tag(),
            service: self.service.clone(),
            current_replicas: current,
            desired_replicas: d.desired,
            reason: d.reason.as_str().to_string(),
            detail: d.detail,
            inputs: ScaleInputs {
                total_lag: reading.total_lag.max(0),
                lag_rate_per_s: reading.lag_rate_per_s,
                partitions: obs.partitions,
                burn_rate_per_hour: budget.map(|b| b.burn_rate_per_hour.max(0.0)),
                remaining_budget: budget.map(|b| b.remaining),
            },
            at_ms: aifab_core::now_ms(),
        })
    }
}

/// A decision's gauges and counter on `/metrics`.
fn export_decision(service: &str, current: u32, d: &Decision) {
    let svc = || service.to_string();
    metrics::gauge!(metric_names::DESIRED_REPLICAS, "service" => svc()).set(d.desired as f64);
    metrics::gauge!(metric_names::RECOMMENDED_REPLICAS, "service" => svc())
        .set(d.recommended as f64);
    metrics::gauge!(metric_names::CURRENT_REPLICAS, "service" => svc()).set(current as f64);
    metrics::counter!(metric_names::DECISIONS_TOTAL,
        "service" => svc(), "reason" => d.reason.as_str())
    .increment(1);
    if let Some(cap) = d.budget_cap {
        metrics::gauge!(metric_names::BUDGET_CAP_REPLICAS, "service" => svc())
            .set(cap.min(10_000) as f64);
    }
    if let Some(r) = d.replica_rate_per_s {
        metrics::gauge!(metric_names::REPLICA_RATE_RECORDS_PER_SECOND, "service" => svc()).set(r);
    }
    if let Some(r) = d.arrival_rate_per_s {
        metrics::gauge!(metric_names::ARRIVAL_RATE_RECORDS_PER_SECOND, "service" => svc()).set(r);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use aifab_core::messages::{BudgetEvent, BudgetEventKind, PartitionLag};

    use crate::budget;
    use crate::policy::PolicyKind;

    fn reading(at_ms: i64, highs: &[i64], lags: &[i64]) -> LagReading {
        LagReading {
            schema: tag(),
            group: "g".into(),
            topic: "t".into(),
            partitions: highs
                .iter()
                .zip(lags)
                .enumerate()
                .map(|(i, (h, l))| PartitionLag {
                    partition: i as i32,
                    committed: Some(h - l),
                    high_watermark: *h,
                    lag: *l,
                })
                .collect(),
            total_lag: lags.iter().sum(),
            lag_rate_per_s: 0.0,
            at_ms,
        }
    }

    #[test]
    fn a_lag_reading_becomes_a_decision_with_its_inputs() {
        let mut policy = PolicyConfig::new(PolicyKind::Aifab);
        policy.replica_cost_per_hour = 2.0;
        let mut c = Controller::new("inference-worker", policy, "all", 60_000, None);
        let now = budget::period_end_ms("2026-11-29").unwrap() - 3_600_000; // 1 h left today
        let d = c
            .on_lag(&reading(now, &[1000, 1000], &[400, 400]), now)
            .unwrap();
        assert_eq!(
            d.desired_replicas, 2,
            "800 lag at 100/replica capped at 2 partitions: {d:?}"
        );
        assert_eq!(d.inputs.partitions, 2);
        assert_eq!(d.inputs.remaining_budget, None);
        aifab_core::schema::validate("scale.decision/v1", &serde_json::to_value(&d).unwrap())
            .unwrap();

        // A budget of 3 left for the last hour at 2/h per replica: 1 replica.
        c.budget.observe(BudgetEvent {
            schema: tag(),
            kind: BudgetEventKind::Status,
            tenant: "all".into(),
            period: "2026-11-29".into(),
            budget: 10.0,
            spent: 7.0,
            burn_rate_per_hour: 1.0,
            currency: "USD".into(),
            at_ms: now,
        });
        c.current = Some(2);
        let d = c
            .on_lag(&reading(now + 5000, &[2000, 2000], &[900, 900]), now + 5000)
            .unwrap();
        assert_eq!(
            (d.desired_replicas, d.reason.as_str()),
            (1, "budget_cap"),
            "{d:?}"
        );
        assert_eq!(d.inputs.remaining_budget, Some(3.0));
        assert_eq!(d.inputs.burn_rate_per_hour, Some(1.0));

        // Readings of another topic are not ours when a topic is set.
        c.topic = Some("other".into());
        assert!(c.on_lag(&reading(now + 10_000, &[1], &[1]), now).is_none());
    }
}
