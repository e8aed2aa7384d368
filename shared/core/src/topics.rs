//! Names of every Kafka topic and NATS subject, in one place.
//!
//! `schemas/` has one JSON Schema per topic/subject. `scripts/stack-up` creates the
//! topics below with these partition counts by parsing the `name: "...", partitions: N`
//! pairs out of this file, so keep each `Topic { .. }` literal in that shape.

/// A Kafka topic and the number of partitions it is created with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Topic {
    pub name: &'static str,
    pub partitions: i32,
    /// The schema (`name/version`) every value on this topic carries.
    pub schema: &'static str,
}

/// Raw records from external producers (kcat, any client): validated by ingest.
pub const INGEST_RAW: Topic = Topic {
    name: "aifab.ingest.raw",
    partitions: 4,
    schema: "ingest.raw/v1",
};
/// Records ingest accepted (ids assigned, tenant resolved), waiting for features.
pub const FEATURES_IN: Topic = Topic {
    name: "aifab.features.in",
    partitions: 4,
    schema: "ingest.raw/v1",
};
/// Tokenized requests for the inference workers. Partition count caps worker replicas.
pub const INFERENCE_REQUESTS: Topic = Topic {
    name: "aifab.inference.requests",
    partitions: 8,
    schema: "inference.request/v1",
};
/// Labelled examples for the trainer.
pub const TRAINING_EXAMPLES: Topic = Topic {
    name: "aifab.training.examples",
    partitions: 4,
    schema: "training.example/v1",
};
/// One prediction (or expiry/error outcome) per inference request.
pub const PREDICTIONS: Topic = Topic {
    name: "aifab.predictions",
    partitions: 4,
    schema: "prediction/v1",
};
/// Device time and tokens per tenant per batch, for the cost accountant.
pub const USAGE: Topic = Topic {
    name: "aifab.usage",
    partitions: 4,
    schema: "usage/v1",
};
/// Everything no stage could accept, with the original bytes and the reason.
pub const DLQ: Topic = Topic {
    name: "aifab.dlq",
    partitions: 1,
    schema: "dead_letter/v1",
};

/// Every state change and who made it (budgets, training, model promotions). One
/// partition: one order for the whole history.
pub const AUDIT: Topic = Topic {
    name: "aifab.audit",
    partitions: 1,
    schema: "audit.event/v1",
};

pub const TOPICS: [Topic; 8] = [
    INGEST_RAW,
    FEATURES_IN,
    INFERENCE_REQUESTS,
    TRAINING_EXAMPLES,
    PREDICTIONS,
    USAGE,
    DLQ,
    AUDIT,
];

/// NATS subjects (control plane: small, fan-out, latest wins).
pub mod subjects {
    pub const MODEL_PUBLISHED: &str = "aifab.model.published";
    pub const MODEL_PROMOTED: &str = "aifab.model.promoted";
    pub const MODEL_ROLLED_BACK: &str = "aifab.model.rolled_back";
    pub const MODEL_ALL: &str = "aifab.model.*";
    pub const TRAIN_REQUEST: &str = "aifab.train.request";
    pub const TRAIN_PROGRESS: &str = "aifab.train.progress";
    pub const BUDGET_SET: &str = "aifab.budget.set";
    pub const BUDGET_WARNING: &str = "aifab.budget.warning";
    pub const BUDGET_EXCEEDED: &str = "aifab.budget.exceeded";
    /// Periodic `budget.event/v1` with kind `status`: where every budget stands now.
    pub const BUDGET_STATUS: &str = "aifab.budget.status";
    pub const BUDGET_ALL: &str = "aifab.budget.*";
    pub const LAG_ALL: &str = "aifab.lag.*";
    pub const ALERTS_ALL: &str = "aifab.alerts.*";
    pub const SCALE_ALL: &str = "aifab.scale.*";
    pub const REPLICAS_ALL: &str = "aifab.replicas.*";

    /// `aifab.lag.<group>`: one lag reading per consumer group.
    pub fn lag(group: &str) -> String {
        format!("aifab.lag.{}", token(group))
    }
    /// `aifab.alerts.<rule>`.
    pub fn alert(rule: &str) -> String {
        format!("aifab.alerts.{}", token(rule))
    }
    /// `aifab.scale.<service>`: the autoscaler's decisions for one service.
    pub fn scale(service: &str) -> String {
        format!("aifab.scale.{}", token(service))
    }
    /// `aifab.replicas.<service>`: how many replicas an actuator is running.
    pub fn replicas(service: &str) -> String {
        format!("aifab.replicas.{}", token(service))
    }

    /// NATS tokens may not contain `.`, `*`, `>` or whitespace; group names may.
    fn token(s: &str) -> String {
        s.chars()
            .map(|c| {
                if c == '.' || c == '*' || c == '>' || c.is_whitespace() {
                    '_'
                } else {
                    c
                }
            })
            .collect()
    }
}

/// Consumer group names, one per consuming service.
pub mod groups {
    pub const INGEST: &str = "aifab-ingest";
    pub const FEATURE: &str = "aifab-feature";
    pub const INFERENCE_WORKER: &str = "aifab-inference-worker";
    pub const TRAINER: &str = "aifab-trainer";
    pub const MONITOR: &str = "aifab-monitor";
    pub const COST_ACCOUNTANT: &str = "aifab-cost-accountant";
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subject_tokens_are_escaped() {
        assert_eq!(
            subjects::lag("aifab-inference-worker"),
            "aifab.lag.aifab-inference-worker"
        );
        assert_eq!(subjects::lag("a.b c"), "aifab.lag.a_b_c");
    }

    #[test]
    fn topic_names_are_unique_and_prefixed() {
        let mut names: Vec<_> = TOPICS.iter().map(|t| t.name).collect();
        names.sort();
        names.dedup();
        assert_eq!(names.len(), TOPICS.len());
        assert!(TOPICS
            .iter()
            .all(|t| t.name.starts_with("aifab.") && t.partitions > 0));
    }
}
