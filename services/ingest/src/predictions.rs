//! The predictions store behind `GET /v1/predictions/{id}`: consumes `aifab.predictions`
//! (read_committed, so only predictions whose transaction committed) and keeps each one
//! in Redis under `<p>:ingest:prediction:<tenant>:<id>` for `--prediction-ttl-s`
//! (counted from when it was produced). Shadow-arm predictions are not answers and are
//! skipped; so are predictions already older than the TTL (a new consumer group starts
//! at the earliest retained offset and skips the stale ones quickly).
//!
//! At least once: a batch's writes are idempotent (`SET`), so a batch repeated after a
//! crash writes the same values again.

use aifab_core::messages::{decode, Arm, Prediction};
use aifab_core::pipeline::{Consumed, Handler};
use aifab_core::redis_store::RedisHandle;
use anyhow::Context as _;

use crate::metric_names;
use crate::store::Keys;

pub struct PredictionStore {
    pub redis: RedisHandle,
    pub keys: Keys,
    pub ttl_s: u64,
}

/// Seconds a prediction should still be kept, or `None` if it is a shadow one or stale.
pub fn keep_for_s(p: &Prediction, ttl_s: u64, now_ms: i64) -> Option<u64> {
    if p.arm == Arm::Shadow {
        return None;
    }
    let age_s = (now_ms.saturating_sub(p.produced_at_ms).max(0) / 1000) as u64;
    ttl_s.checked_sub(age_s).filter(|left| *left > 0)
}

impl Handler for PredictionStore {
    async fn handle(&mut self, batch: &[Consumed]) -> anyhow::Result<()> {
        let mut conn = self.redis.try_get().context("redis is not connected")?;
        let now = aifab_core::now_ms();
        let mut pipe = redis::pipe();
        let mut n = 0u64;
        for m in batch {
            match decode::<Prediction>(&m.payload) {
                Ok(p) => {
                    if let Some(ttl) = keep_for_s(&p, self.ttl_s, now) {
                        pipe.cmd("SET")
                            .arg(self.keys.prediction(&p.tenant, &p.id))
                            .arg(&m.payload)
                            .arg("EX")
                            .arg(ttl)
                            .ignore();
                        n += 1;
                    }
                }
                Err(e) => {
                    metrics::counter!(metric_names::PREDICTIONS_INVALID_TOTAL).increment(1);
                    tracing::warn!(
                        partition = m.partition,
                        offset = m.offset,
                        error = %e,
                        "skipping an invalid prediction"
                    );
                }
            }
        }
        if n > 0 {
            pipe.exec_async(&mut conn)
                .await
                .context("storing predictions")?;
        }
        metrics::counter!(metric_names::PREDICTIONS_STORED_TOTAL).increment(n);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use aifab_core::messages::{tag, Outcome};

    fn p(arm: Arm, produced_at_ms: i64) -> Prediction {
        Prediction {
            schema: tag(),
            id: "r".into(),
            tenant: "acme".into(),
            task: "t".into(),
            outcome: Outcome::Ok,
            label: Some("a".into()),
            scores: Default::default(),
            model_version: "v1".into(),
            arm,
            batch_id: None,
            batch_size: 1,
            queue_ms: 0.0,
            compute_ms: 0.0,
            received_at_ms: 0,
            produced_at_ms,
            worker: "w".into(),
        }
    }

    #[test]
    fn ttl_counts_from_production_and_shadows_are_skipped() {
        assert_eq!(
            keep_for_s(&p(Arm::Production, 1_000_000), 3600, 1_000_000),
            Some(3600)
        );
        assert_eq!(
            keep_for_s(&p(Arm::Canary, 1_000_000), 3600, 1_000_000 + 600_000),
            Some(3000)
        );
        assert_eq!(
            keep_for_s(&p(Arm::Production, 0), 3600, 3_600_000),
            None,
            "stale"
        );
        assert_eq!(
            keep_for_s(&p(Arm::Shadow, 1_000_000), 3600, 1_000_000),
            None
        );
    }
}
