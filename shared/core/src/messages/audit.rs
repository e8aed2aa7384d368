//! The audit record: every state change, who made it and through which door. Kafka
//! topic `aifab.audit` (one partition, so one order), written by the service that applies
//! the change before it applies it.

use serde::{Deserialize, Serialize};

use super::SchemaTag;

/// The kind of state change.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AuditAction {
    /// A tenant's budget set (cost-accountant).
    BudgetSet,
    /// A training run asked for (trainer).
    TrainRequested,
    /// A new model version registered as candidate (trainer).
    ModelPublished,
    /// A version made production (trainer's gate, or an operator).
    ModelPromoted,
    /// Production moved back to an earlier version (an operator).
    ModelRolledBack,
    /// The candidate's share of traffic changed: canary, shadow or off (an operator).
    RolloutSet,
}

/// How the one who made the change was let in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Credential {
    /// An HTTP request with the admin token.
    AdminToken,
    /// An HTTP request with the read token (read routes change nothing; listed for
    /// completeness).
    ReadToken,
    /// An HTTP request from loopback to a service with no token for the role.
    Loopback,
    /// A NATS message: the NATS account's publish permission let it in.
    Nats,
    /// The `aifab` CLI writing the registry with its own Redis credential.
    Operator,
    /// The service's own decision (e.g. the trainer's promotion gate).
    Service,
}

/// Who made a change.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Actor {
    pub credential: Credential,
    /// The caller's address (HTTP), `ip:port`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub address: Option<String>,
    /// The name the caller gave (`user@host` from the CLI, a service's name); as claimed,
    /// not proven: `credential` is what was checked.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
}

/// `aifab.audit`: one state change.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuditEvent {
    pub schema: SchemaTag<AuditEvent>,
    pub action: AuditAction,
    /// The service that applied it (`cost-accountant`, `trainer`, `aifab` for the CLI).
    pub service: String,
    pub actor: Actor,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tenant: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub task: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    /// What changed, for people: `month budget 50 USD`, `macro-F1 0.96 ≥ 0.95`.
    pub detail: String,
    pub at_ms: i64,
}
message!(AuditEvent, "audit.event/v1");

impl AuditAction {
    pub fn as_str(self) -> &'static str {
        match self {
            AuditAction::BudgetSet => "budget_set",
            AuditAction::TrainRequested => "train_requested",
            AuditAction::ModelPublished => "model_published",
            AuditAction::ModelPromoted => "model_promoted",
            AuditAction::ModelRolledBack => "model_rolled_back",
            AuditAction::RolloutSet => "rollout_set",
        }
    }
}

impl Credential {
    pub fn as_str(self) -> &'static str {
        match self {
            Credential::AdminToken => "admin_token",
            Credential::ReadToken => "read_token",
            Credential::Loopback => "loopback",
            Credential::Nats => "nats",
            Credential::Operator => "operator",
            Credential::Service => "service",
        }
    }
}

impl Actor {
    /// A service acting on its own decision.
    pub fn service(name: &str) -> Self {
        Actor {
            credential: Credential::Service,
            address: None,
            name: Some(name.to_string()),
        }
    }

    /// `admin_token from 10.0.0.7:51234`, `nats (ops@host)`: for one line of a table.
    pub fn describe(&self) -> String {
        let mut s = self.credential.as_str().to_string();
        if let Some(a) = &self.address {
            s.push_str(" from ");
            s.push_str(a);
        }
        if let Some(n) = &self.name {
            s.push_str(&format!(" ({n})"));
        }
        s
    }
}
