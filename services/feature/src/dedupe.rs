//! The dedupe cache: a repeated text within `--dedupe-ttl-s` is answered from the
//! prediction computed for it before, without inference.
//!
//! How the cache learns predictions (no coupling to any other service's storage):
//!
//! 1. When the feature stage sends a request to inference it puts the request's dedupe
//!    hash in a `dedupe-key` header; the worker copies request headers onto its
//!    predictions.
//! 2. [`CacheFill`] consumes `aifab.predictions` (its own consumer group, read_committed).
//!    A computed (`ok`, non-shadow) prediction with a `dedupe-key` header is stored under
//!    `<p>:feature:dedupe:<hash>` for the TTL: one Redis write per prediction, and none
//!    per request on the way in.
//! 3. The feature stage looks up every new text's hash first; a hit becomes a
//!    `prediction/v1` with outcome `cached` written straight to `aifab.predictions` in
//!    the same transaction as the batch's other outputs, and no inference request.

use std::collections::BTreeMap;

use aifab_core::messages::{decode, tag, Arm, IngestRecord, Outcome, Prediction};
use aifab_core::pipeline::{Consumed, Handler};
use aifab_core::redis_store::RedisHandle;
use anyhow::Context as _;

use crate::keys::Keys;
use crate::metric_names;

/// The header of inference requests (and so of their predictions) naming the dedupe hash.
pub const DEDUPE_HEADER: &str = "dedupe-key";

/// The dedupe hash in a prediction's header, if it is one this service could have made
/// (64 hex digits): anything else is not used as a key.
pub fn dedupe_key(m: &Consumed) -> Option<&str> {
    let v = std::str::from_utf8(m.header(DEDUPE_HEADER)?).ok()?;
    (v.len() == 64 && v.bytes().all(|b| b.is_ascii_hexdigit())).then_some(v)
}

/// The answer for `rec` (id `id`, task `task`) from a cached prediction.
pub fn cached_prediction(
    cached: &Prediction,
    rec: &IngestRecord,
    id: &str,
    task: &str,
    worker: &str,
    now_ms: i64,
) -> Prediction {
    let received = rec.received_at_ms.unwrap_or(now_ms);
    Prediction {
        schema: tag(),
        id: id.to_string(),
        tenant: rec.tenant.clone(),
        task: task.to_string(),
        outcome: Outcome::Cached,
        label: cached.label.clone(),
        scores: cached.scores.clone(),
        model_version: cached.model_version.clone(),
        arm: cached.arm,
        batch_id: None,
        batch_size: 0,
        queue_ms: now_ms.saturating_sub(received).max(0) as f64,
        compute_ms: 0.0,
        received_at_ms: received,
        produced_at_ms: now_ms,
        worker: worker.to_string(),
    }
}

/// Whether a prediction may fill the cache: computed, a real answer, with a label, by the
/// production model. A canary's answer would be served for every repeat of its text,
/// whichever arm the repeat's own id falls in, and skew the canary's share and evaluation.
pub fn cacheable(p: &Prediction) -> bool {
    p.outcome == Outcome::Ok && p.arm == Arm::Production && p.label.is_some()
}

/// Fills the cache from `aifab.predictions` (an at-least-once handler: writes are idempotent).
pub struct CacheFill {
    pub redis: RedisHandle,
    pub keys: Keys,
    pub ttl_s: u64,
}

impl Handler for CacheFill {
    async fn handle(&mut self, batch: &[Consumed]) -> anyhow::Result<()> {
        let mut conn = self.redis.try_get().context("redis is not connected")?;
        // By hash: the last answer for a text wins.
        let mut preds: BTreeMap<&str, &[u8]> = BTreeMap::new();
        for m in batch {
            let Some(hash) = dedupe_key(m) else { continue };
            if decode::<Prediction>(&m.payload).is_ok_and(|p| cacheable(&p)) {
                preds.insert(hash, &m.payload);
            }
        }
        if preds.is_empty() {
            return Ok(());
        }
        let mut pipe = redis::pipe();
        for (hash, payload) in &preds {
            pipe.cmd("SET")
                .arg(self.keys.dedupe(hash))
                .arg(*payload)
                .arg("EX")
                .arg(self.ttl_s.max(1))
                .ignore();
        }
        pipe.exec_async(&mut conn)
            .await
            .context("storing cache entries")?;
        let stored = preds.len() as u64;
        metrics::counter!(metric_names::DEDUPE_STORED_TOTAL).increment(stored);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn computed() -> Prediction {
        Prediction {
            schema: tag(),
            id: "first".into(),
            tenant: "acme".into(),
            task: "t".into(),
            outcome: Outcome::Ok,
            label: Some("spam".into()),
            scores: [("spam".to_string(), 0.9f32), ("ham".to_string(), 0.1)].into(),
            model_version: "v3".into(),
            arm: Arm::Production,
            batch_id: Some("w-1".into()),
            batch_size: 8,
            queue_ms: 3.0,
            compute_ms: 12.0,
            received_at_ms: 1,
            produced_at_ms: 2,
            worker: "w".into(),
        }
    }

    #[test]
    fn cached_answers_copy_the_label_and_say_so() {
        let rec = IngestRecord {
            schema: tag(),
            id: Some("second".into()),
            tenant: "acme".into(),
            text: "x".into(),
            task: Some("t".into()),
            label: None,
            deadline_ms: None,
            received_at_ms: Some(1_000),
            attributes: Default::default(),
        };
        let p = cached_prediction(&computed(), &rec, "second", "t", "feature-1", 1_250);
        assert_eq!(
            (p.id.as_str(), p.outcome, p.label.as_deref()),
            ("second", Outcome::Cached, Some("spam"))
        );
        assert_eq!(
            (p.model_version.as_str(), p.batch_id.clone(), p.batch_size),
            ("v3", None, 0)
        );
        assert_eq!(
            (p.queue_ms, p.compute_ms, p.worker.as_str()),
            (250.0, 0.0, "feature-1")
        );
        assert_eq!(p.scores, computed().scores);
        let v = serde_json::to_value(&p).unwrap();
        aifab_core::schema::validate("prediction/v1", &v).unwrap();
    }

    #[test]
    fn only_a_well_formed_dedupe_header_is_used_as_a_key() {
        let with = |v: &[u8]| Consumed {
            topic: "p".into(),
            partition: 0,
            offset: 0,
            key: None,
            payload: Vec::new(),
            headers: vec![
                ("tenant".into(), b"acme".to_vec()),
                (DEDUPE_HEADER.into(), v.to_vec()),
            ],
            timestamp_ms: None,
        };
        let hash = crate::keys::dedupe_hash(crate::keys::DedupeScope::Tenant, "acme", "t", "hi");
        assert_eq!(dedupe_key(&with(hash.as_bytes())), Some(hash.as_str()));
        assert_eq!(dedupe_key(&with(b"abc")), None, "too short");
        assert_eq!(
            dedupe_key(&with(format!("{}:x", &hash[..62]).as_bytes())),
            None,
            "not hex"
        );
        let none = Consumed {
            headers: Vec::new(),
            ..with(b"")
        };
        assert_eq!(dedupe_key(&none), None);
    }

    #[test]
    fn only_computed_answers_fill_the_cache() {
        assert!(cacheable(&computed()));
        assert!(!cacheable(&Prediction {
            outcome: Outcome::Cached,
            ..computed()
        }));
        assert!(!cacheable(&Prediction {
            outcome: Outcome::Expired,
            label: None,
            ..computed()
        }));
        assert!(!cacheable(&Prediction {
            arm: Arm::Shadow,
            ..computed()
        }));
        assert!(!cacheable(&Prediction {
            arm: Arm::Canary,
            ..computed()
        }));
    }
}
