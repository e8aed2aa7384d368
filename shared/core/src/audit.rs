//! Recording state changes on `aifab.audit` ([`AuditEvent`]), each with who made it.
//!
//! The service that applies a change records it first and applies it only once the
//! record is written: a change the audit log cannot take is refused (an HTTP caller gets
//! 503), so the log has no gaps. HTTP handlers take the caller from the request's
//! extensions, where `access` put the credential it checked and the peer's address.

use std::time::Duration;

use anyhow::Context;
use rdkafka::producer::{FutureProducer, FutureRecord};

use crate::messages::{encode, tag, Actor, AuditAction, AuditEvent};
use crate::topics;

/// How long a record may take to reach the brokers before the change is refused.
const RECORD_TIMEOUT: Duration = Duration::from_secs(10);

/// Records written, by outcome (`ok`, `failed`).
pub const AUDIT_RECORDS_TOTAL: &str = "aifab_audit_records_total";

/// One change to record (the log adds the service and the time).
#[derive(Debug, Clone, PartialEq)]
pub struct Change {
    pub action: AuditAction,
    pub actor: Actor,
    pub tenant: Option<String>,
    pub task: Option<String>,
    pub version: Option<String>,
    pub detail: String,
}

impl Change {
    pub fn new(action: AuditAction, actor: Actor, detail: impl Into<String>) -> Self {
        Change {
            action,
            actor,
            tenant: None,
            task: None,
            version: None,
            detail: detail.into(),
        }
    }
    pub fn tenant(mut self, tenant: &str) -> Self {
        self.tenant = Some(tenant.to_string());
        self
    }
    pub fn task(mut self, task: &str) -> Self {
        self.task = Some(task.to_string());
        self
    }
    pub fn version(mut self, version: &str) -> Self {
        self.version = Some(version.to_string());
        self
    }
}

/// A service's writer to the audit topic.
#[derive(Clone)]
pub struct AuditLog {
    producer: FutureProducer,
    topic: String,
    service: String,
}

impl AuditLog {
    /// A writer for `service` (the name its records carry) to `aifab.audit`.
    pub fn new(brokers: &str, service: &str) -> anyhow::Result<Self> {
        Self::with_topic(brokers, service, topics::AUDIT.name)
    }

    pub fn with_topic(brokers: &str, service: &str, topic: &str) -> anyhow::Result<Self> {
        let mut config = crate::kafka::producer_config(brokers, &format!("aifab-{service}-audit"));
        config
            .set("message.timeout.ms", RECORD_TIMEOUT.as_millis().to_string())
            // A topic created after the client looked for it is seen within seconds, not
            // at librdkafka's 5-minute refresh.
            .set("topic.metadata.refresh.interval.ms", "10000");
        let producer = config.create().context("creating the audit producer")?;
        Ok(AuditLog {
            producer,
            topic: topic.to_string(),
            service: service.to_string(),
        })
    }

    /// Write `change` and wait until the brokers have it (all in-sync replicas).
    pub async fn record(&self, change: Change) -> anyhow::Result<AuditEvent> {
        let event = self.event(change, crate::now_ms());
        let payload = encode(&event);
        let key = self.service.as_bytes();
        let sent = self
            .producer
            .send(
                FutureRecord::to(&self.topic).key(key).payload(&payload),
                RECORD_TIMEOUT,
            )
            .await;
        let outcome = if sent.is_ok() { "ok" } else { "failed" };
        metrics::counter!(AUDIT_RECORDS_TOTAL, "outcome" => outcome).increment(1);
        match sent {
            Ok(_) => {
                tracing::info!(action = event.action.as_str(), actor = %event.actor.describe(),
                    detail = %event.detail, "audit: change recorded");
                Ok(event)
            }
            Err((e, _)) => Err(anyhow::anyhow!(
                "the audit log ({}) did not take the record: {e}",
                self.topic
            )),
        }
    }

    fn event(&self, c: Change, at_ms: i64) -> AuditEvent {
        AuditEvent {
            schema: tag(),
            action: c.action,
            service: self.service.clone(),
            actor: c.actor,
            tenant: c.tenant,
            task: c.task,
            version: c.version,
            detail: c.detail,
            at_ms,
        }
    }
}

/// The operator running the CLI, as `user@host` (claimed, from the environment).
pub fn operator_name() -> Option<String> {
    let user = std::env::var("USER")
        .or_else(|_| std::env::var("LOGNAME"))
        .ok()?;
    let host = std::fs::read_to_string("/etc/hostname")
        .ok()
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty());
    Some(match host {
        Some(h) => format!("{user}@{h}"),
        None => user,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::messages::Credential;

    #[test]
    fn records_carry_the_service_and_validate_against_the_schema() {
        let log = AuditLog::new("127.0.0.1:1", "cost-accountant").unwrap();
        let change = Change::new(
            AuditAction::BudgetSet,
            Actor {
                credential: Credential::AdminToken,
                address: Some("10.0.0.7:4000".into()),
                name: None,
            },
            "month budget 5 USD",
        )
        .tenant("acme");
        let ev = log.event(change, 1_764_428_400_000);
        assert_eq!(ev.service, "cost-accountant");
        assert_eq!(ev.tenant.as_deref(), Some("acme"));
        let json = serde_json::to_value(&ev).unwrap();
        assert!(
            crate::schema::validate("audit.event/v1", &json).is_ok(),
            "{json}"
        );
        assert_eq!(
            ev.actor.describe(),
            "admin_token from 10.0.0.7:4000",
            "one line for tables"
        );
    }

    #[tokio::test]
    async fn a_record_the_brokers_never_take_is_an_error() {
        let log = AuditLog::new("127.0.0.1:1", "trainer").unwrap();
        let change = Change::new(AuditAction::TrainRequested, Actor::service("t"), "x");
        // Nothing listens on port 1: the record times out and the change must be refused.
        let err = log.record(change).await.unwrap_err();
        assert!(err.to_string().contains("audit log"), "{err}");
    }
}
