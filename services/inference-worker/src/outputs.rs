//! What a computed batch turns into: predictions and usage records. Pure functions.

use std::collections::BTreeMap;

use aifab_core::messages::{tag, Arm, InferenceRequest, Outcome, Prediction, UsageRecord};
use aifab_model::Classification;

/// Facts about one batch run that every output of it carries.
#[derive(Debug, Clone)]
pub struct BatchInfo<'a> {
    pub batch_id: &'a str,
    pub worker: &'a str,
    pub task: &'a str,
    pub model_version: &'a str,
    pub device_kind: &'a str,
    /// Rows computed (expired ones excluded).
    pub batch_size: u32,
    /// Wall-clock ms when compute started.
    pub compute_started_ms: i64,
    pub compute_seconds: f64,
    /// Seconds the worker was idle between its previous batch and this one.
    pub idle_seconds: f64,
    pub now_ms: i64,
}

pub fn computed(req: &InferenceRequest, c: Classification, b: &BatchInfo, arm: Arm) -> Prediction {
    Prediction {
        schema: tag(),
        id: req.id.clone(),
        tenant: req.tenant.clone(),
        task: req.task.clone(),
        outcome: Outcome::Ok,
        label: Some(c.label),
        scores: c.scores,
        model_version: b.model_version.to_string(),
        arm,
        batch_id: Some(b.batch_id.to_string()),
        batch_size: b.batch_size,
        queue_ms: b
            .compute_started_ms
            .saturating_sub(req.received_at_ms)
            .max(0) as f64,
        compute_ms: b.compute_seconds * 1000.0,
        received_at_ms: req.received_at_ms,
        produced_at_ms: b.now_ms,
        worker: b.worker.to_string(),
    }
}

pub fn expired(req: &InferenceRequest, b: &BatchInfo) -> Prediction {
    Prediction {
        schema: tag(),
        id: req.id.clone(),
        tenant: req.tenant.clone(),
        task: req.task.clone(),
        outcome: Outcome::Expired,
        label: None,
        scores: BTreeMap::new(),
        model_version: b.model_version.to_string(),
        arm: Arm::Production,
        batch_id: None,
        batch_size: 0,
        queue_ms: b.now_ms.saturating_sub(req.received_at_ms).max(0) as f64,
        compute_ms: 0.0,
        received_at_ms: req.received_at_ms,
        produced_at_ms: b.now_ms,
        worker: b.worker.to_string(),
    }
}

/// One usage record per tenant in the batch; device time is shared by token count.
/// The worker's idle time rides on the first record (tenants sorted by name) so it is
/// reported exactly once.
pub fn usage(computed_rows: &[&InferenceRequest], b: &BatchInfo) -> Vec<UsageRecord> {
    let mut per_tenant: BTreeMap<&str, (u32, u64)> = BTreeMap::new();
    for r in computed_rows {
        let e = per_tenant.entry(r.tenant.as_str()).or_default();
        e.0 += 1;
        e.1 += r.token_count as u64;
    }
    let total_tokens: u64 = per_tenant.values().map(|(_, t)| *t).sum();
    per_tenant
        .into_iter()
        .enumerate()
        .map(|(i, (tenant, (rows, tokens)))| UsageRecord {
            schema: tag(),
            usage_id: format!("{}:{tenant}", b.batch_id),
            batch_id: b.batch_id.to_string(),
            worker: b.worker.to_string(),
            tenant: tenant.to_string(),
            task: b.task.to_string(),
            model_version: b.model_version.to_string(),
            device_kind: b.device_kind.to_string(),
            rows,
            tokens,
            device_seconds: if total_tokens == 0 {
                0.0
            } else {
                b.compute_seconds * tokens as f64 / total_tokens as f64
            },
            idle_seconds: if i == 0 { b.idle_seconds } else { 0.0 },
            at_ms: b.now_ms,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use aifab_core::messages::Truncation;

    fn req(id: &str, tenant: &str, tokens: u32) -> InferenceRequest {
        InferenceRequest {
            schema: tag(),
            id: id.into(),
            tenant: tenant.into(),
            task: "t".into(),
            text: "x".into(),
            input_ids: vec![1; tokens as usize],
            token_count: tokens,
            truncation: Truncation::None,
            received_at_ms: 1_000,
            deadline_ms: None,
            priority: 0,
            attributes: Default::default(),
        }
    }

    /// Regression: a request with `received_at_ms` far in the past (i64::MIN, from outside
    /// input) panicked the batch loop with "attempt to subtract with overflow"; found by
    /// `tests/tests/faults.rs`'s poison-request test.
    #[test]
    fn extreme_receipt_times_do_not_overflow() {
        let mut r = req("r", "acme", 3);
        for at in [i64::MIN, i64::MAX] {
            r.received_at_ms = at;
            let c = Classification {
                label: "a".into(),
                scores: BTreeMap::new(),
            };
            assert!(computed(&r, c, &info(), Arm::Production).queue_ms >= 0.0);
            assert!(expired(&r, &info()).queue_ms >= 0.0);
        }
    }

    fn info() -> BatchInfo<'static> {
        BatchInfo {
            batch_id: "w-1",
            worker: "w",
            task: "t",
            model_version: "v1",
            device_kind: "cpu",
            batch_size: 3,
            compute_started_ms: 1_250,
            compute_seconds: 0.3,
            idle_seconds: 2.0,
            now_ms: 1_600,
        }
    }

    #[test]
    fn device_time_is_shared_by_tokens_and_idle_reported_once() {
        let a1 = req("1", "acme", 10);
        let a2 = req("2", "acme", 20);
        let b = req("3", "beta", 30);
        let u = usage(&[&a1, &b, &a2], &info());
        assert_eq!(u.len(), 2);
        assert_eq!(
            (u[0].tenant.as_str(), u[0].rows, u[0].tokens),
            ("acme", 2, 30)
        );
        assert_eq!(
            (u[1].tenant.as_str(), u[1].rows, u[1].tokens),
            ("beta", 1, 30)
        );
        assert!((u[0].device_seconds - 0.15).abs() < 1e-12);
        assert!((u[0].device_seconds + u[1].device_seconds - 0.3).abs() < 1e-12);
        assert_eq!((u[0].idle_seconds, u[1].idle_seconds), (2.0, 0.0));
        assert_eq!(u[0].usage_id, "w-1:acme");
    }

    #[test]
    fn predictions_carry_version_and_timings() {
        let r = req("1", "acme", 10);
        let c = Classification {
            label: "spam".into(),
            scores: [("spam".to_string(), 0.9), ("ham".to_string(), 0.1)].into(),
        };
        let p = computed(&r, c, &info(), Arm::Production);
        assert_eq!(p.model_version, "v1");
        assert_eq!(p.outcome, Outcome::Ok);
        assert_eq!(p.queue_ms, 250.0);
        assert!((p.compute_ms - 300.0).abs() < 1e-9);
        let e = expired(&r, &info());
        assert_eq!(
            (e.outcome, e.label.clone(), e.batch_size),
            (Outcome::Expired, None, 0)
        );
        for p in [p, e] {
            let v = serde_json::to_value(&p).unwrap();
            aifab_core::schema::validate("prediction/v1", &v).unwrap();
        }
    }
}
