//! Models are verified before they are served: the worker loads a version only as the
//! registry records it (its `artifact_uri`, never one a NATS event names) and only when
//! the fetched files have the record's `artifact_sha256`. A refusal is logged, counted
//! (`aifab_inference_worker_model_verification_failures_total`) and alerted on NATS
//! (`aifab.alerts.model_verification`); the worker keeps serving what it had.

use std::path::Path;

use aifab_core::messages::{encode, tag, Alert, AlertState, Severity};
use aifab_core::registry::ModelRecord;
use aifab_model::head::{HEAD_FILE, LABELS_FILE};

use crate::metric_names;

/// The alert rule of a refused model.
pub const RULE: &str = "model_verification";

/// Why a version was not served.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error("{task}/{version}: the registry has no such version (a forged or stale event)")]
    NotInRegistry { task: String, version: String },
    #[error(
        "{task}/{version}: the artifact's SHA-256 is {got}, the registry says {want}: \
         tampered with or replaced; not served"
    )]
    DigestMismatch {
        task: String,
        version: String,
        want: String,
        got: String,
    },
    #[error(
        "{task}/{version}: the registry record has no artifact SHA-256; not served \
         (--allow-unverified-models serves such records)"
    )]
    NoDigest { task: String, version: String },
}

/// Whether files with digest `got` may be served as `record`.
pub fn check(record: &ModelRecord, got: &str, allow_unverified: bool) -> Result<(), Refusal> {
    match &record.artifact_sha256 {
        Some(want) if want.eq_ignore_ascii_case(got) => Ok(()),
        Some(want) => Err(Refusal::DigestMismatch {
            task: record.task.clone(),
            version: record.version.clone(),
            want: want.clone(),
            got: got.to_string(),
        }),
        None if allow_unverified => Ok(()),
        None => Err(Refusal::NoDigest {
            task: record.task.clone(),
            version: record.version.clone(),
        }),
    }
}

/// The digest of the served files of the head in `dir`.
pub fn head_sha256(dir: &Path) -> std::io::Result<String> {
    aifab_core::artifacts::dir_sha256(dir, &[HEAD_FILE, LABELS_FILE])
}

/// Log, count and alert a refusal.
pub async fn report(refusal: &Refusal, alerts: Option<&async_nats::Client>) {
    metrics::counter!(metric_names::MODEL_VERIFICATION_FAILURES).increment(1);
    tracing::error!(error = %refusal, "model refused; keeping the version being served");
    let Some(nats) = alerts else { return };
    let alert = Alert {
        schema: tag(),
        rule: RULE.into(),
        state: AlertState::Firing,
        severity: Severity::Critical,
        value: 1.0,
        threshold: 0.0,
        message: refusal.to_string(),
        at_ms: aifab_core::now_ms(),
    };
    let subject = aifab_core::topics::subjects::alert(RULE);
    if let Err(e) = nats.publish(subject, encode(&alert).into()).await {
        tracing::warn!(error = %e, "could not publish the model verification alert");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(sha: Option<&str>) -> ModelRecord {
        ModelRecord {
            task: "spam".into(),
            version: "v2".into(),
            artifact_uri: "file:///a".into(),
            encoder: "e".into(),
            encoder_sha256: "0".into(),
            artifact_sha256: sha.map(str::to_string),
            labels: vec![],
            metrics: Default::default(),
            train_examples: 0,
            eval_examples: 0,
            created_at_ms: 0,
        }
    }

    #[test]
    fn only_the_recorded_digest_is_served_and_records_without_one_only_when_allowed() {
        assert_eq!(check(&record(Some("AB")), "ab", false), Ok(()));
        assert!(matches!(
            check(&record(Some("ab")), "cd", true),
            Err(Refusal::DigestMismatch { .. })
        ));
        assert!(matches!(
            check(&record(None), "cd", false),
            Err(Refusal::NoDigest { .. })
        ));
        assert_eq!(check(&record(None), "cd", true), Ok(()));
    }
}
