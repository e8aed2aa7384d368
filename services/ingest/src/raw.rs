//! The Kafka path: `aifab.ingest.raw` → `aifab.features.in` (accepted, with `id`, `task`
//! and `received_at_ms` filled in) or `aifab.dlq` (refused, with the original bytes, the
//! source topic/partition/offset, the kind and a reason naming the field).
//!
//! Runs as a [`aifab_core::pipeline::Transform`] inside a transactional loop: a batch's
//! accepted records, its dead letters and its input offsets commit together.
//!
//! Duplicate ids: a producer-chosen id is claimed in Redis per tenant
//! (`<p>:ingest:id:<tenant>:<id>`, shared with the HTTP path) with the record's source
//! (`kafka:<topic>:<partition>:<offset>`) as the holder. When the same record is
//! consumed again after an aborted transaction or a crash it finds its own claim and
//! passes; any other record with that id is a duplicate, except while an HTTP request
//! holds the id in flight (its write may yet fail and release it): the batch is then
//! tried again until that request is decided (`aifab_ingest_raw_waits_total`). Records
//! without an id get a fresh UUIDv7 and need no claim.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;

use aifab_core::messages::IngestRecord;
use aifab_core::pipeline::{dead_letter, Consumed, Record, Transform};
use aifab_core::redis_store::RedisHandle;
use anyhow::Context as _;

use crate::budget::{BudgetBoard, Exceeded};
use crate::features::features_record;
use crate::metric_names;
use crate::store::{self, Keys};
use crate::tenants::{BudgetMode, Registry, TenantSettings};
use crate::validate::{self, ErrorKind, Rejection, Rules};

#[derive(Debug, Clone)]
pub struct RawSettings {
    pub features_topic: String,
    pub dlq_topic: String,
    pub id_ttl_s: u64,
    pub deprioritised_priority: u8,
}

pub struct RawStage {
    pub settings: RawSettings,
    pub rules: Rules,
    pub registry: Arc<Registry>,
    pub budget: Arc<BudgetBoard>,
    pub redis: RedisHandle,
    pub keys: Keys,
}

/// A batch's metric counts, added once it commits: an aborted batch is consumed again
/// and would count twice.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct RawCounts {
    pub accepted: u64,
    pub dead_letters: BTreeMap<ErrorKind, u64>,
}

/// The verdict on one record before ids are claimed.
enum Verdict {
    Accept {
        rec: IngestRecord,
        priority: Option<u8>,
    },
    Refuse(Rejection),
}

/// Tenant checks for one accepted-so-far record: known, enabled, within budget.
pub fn tenant_verdict(
    tenant: &str,
    settings: Option<&TenantSettings>,
    exceeded: Option<&Exceeded>,
    deprioritised_priority: u8,
) -> Result<Option<u8>, Rejection> {
    let Some(s) = settings else {
        return Err(Rejection::new(
            ErrorKind::UnknownTenant,
            format!("field \"tenant\": \"{tenant}\" is not a known tenant (no API key or tenant settings for it)"),
        ));
    };
    if !s.enabled {
        return Err(Rejection::new(
            ErrorKind::TenantDisabled,
            format!("field \"tenant\": tenant \"{tenant}\" is disabled"),
        )
        .with_tenant(Some(tenant)));
    }
    match (exceeded, s.budget_mode) {
        (None, _) => Ok(None),
        (Some(ex), BudgetMode::Reject) => Err(Rejection::new(
            ErrorKind::BudgetExceeded,
            format!(
                "{}; its records are rejected until the period ends",
                ex.describe(tenant)
            ),
        )
        .with_tenant(Some(tenant))),
        (Some(_), BudgetMode::Deprioritise) => Ok(Some(deprioritised_priority)),
    }
}

impl Transform for RawStage {
    type Done = RawCounts;

    async fn transform(&mut self, batch: &[Consumed]) -> anyhow::Result<(Vec<Record>, RawCounts)> {
        let mut conn = self.redis.try_get().context("redis is not connected")?;
        let parsed: Vec<Result<IngestRecord, Rejection>> = batch
            .iter()
            .map(|m| validate::raw_record(&m.payload, &self.rules))
            .collect();

        // Tenant settings and budget state, once per tenant in the batch.
        let tenants: BTreeSet<&str> = parsed
            .iter()
            .filter_map(|r| r.as_ref().ok())
            .map(|r| r.tenant.as_str())
            .collect();
        let mut settings: HashMap<&str, Option<TenantSettings>> = HashMap::new();
        let mut exceeded: HashMap<&str, Option<Exceeded>> = HashMap::new();
        for t in tenants {
            let s = self
                .registry
                .tenant(&mut conn, t)
                .await
                .context("looking up a tenant")?;
            if s.is_some() {
                exceeded.insert(
                    t,
                    self.budget
                        .exceeded(&mut conn, t)
                        .await
                        .context("reading budget state")?,
                );
            }
            settings.insert(t, s);
        }

        let now = aifab_core::now_ms();
        let mut verdicts: Vec<Verdict> = Vec::with_capacity(batch.len());
        for r in &parsed {
            verdicts.push(match r {
                Err(rej) => Verdict::Refuse(rej.clone()),
                Ok(rec) => {
                    let t = rec.tenant.as_str();
                    match tenant_verdict(
                        t,
                        settings.get(t).and_then(Option::as_ref),
                        exceeded.get(t).and_then(Option::as_ref),
                        self.settings.deprioritised_priority,
                    ) {
                        Err(rej) => Verdict::Refuse(rej.with_tenant(Some(t))),
                        Ok(priority) => {
                            let mut rec = rec.clone();
                            rec.received_at_ms = Some(now);
                            Verdict::Accept { rec, priority }
                        }
                    }
                }
            });
        }

        // Claim producer-chosen ids.
        let mut claim_of: Vec<(usize, String, String)> = Vec::new();
        for (i, v) in verdicts.iter().enumerate() {
            if let Verdict::Accept { rec, .. } = v {
                if let Some(id) = &rec.id {
                    let m = &batch[i];
                    claim_of.push((
                        i,
                        self.keys.request_id(&rec.tenant, id),
                        format!("kafka:{}:{}:{}", m.topic, m.partition, m.offset),
                    ));
                }
            }
        }
        let claims: Vec<(String, String)> = claim_of
            .iter()
            .map(|(_, k, v)| (k.clone(), v.clone()))
            .collect();
        let holders = store::claim(&mut conn, &claims, self.settings.id_ttl_s)
            .await
            .context("claiming request ids")?;
        let now = aifab_core::now_ms();
        for ((i, _, mine), holder) in claim_of.iter().zip(holders) {
            if let Some(h) = holder {
                // An HTTP request still writing the id may yet release it: only its outcome
                // says whether this record is a duplicate. The batch is tried again (its own
                // claims stay and pass); a write is decided within its in-flight time.
                if &h != mine && store::held(&h, now) == store::Held::InFlight {
                    metrics::counter!(metric_names::RAW_WAITS_TOTAL, "reason" => "id_in_flight")
                        .increment(1);
                    let m = &batch[*i];
                    anyhow::bail!(
                        "the id of the record at {}:{}:{} is being written by an HTTP request; \
                         the batch waits for its outcome",
                        m.topic,
                        m.partition,
                        m.offset
                    );
                }
                if &h != mine {
                    if let Verdict::Accept { rec, .. } = &verdicts[*i] {
                        let by = match store::held(&h, now) {
                            store::Held::Unknown => {
                                "an earlier request, whose write may or may not have committed,"
                            }
                            _ => "an earlier record",
                        };
                        let rej = Rejection::new(
                            ErrorKind::DuplicateId,
                            format!(
                                "field \"id\": \"{}\" was already used by {by} of tenant \"{}\"",
                                rec.id.as_deref().unwrap_or_default(),
                                rec.tenant
                            ),
                        )
                        .with_tenant(Some(&rec.tenant));
                        verdicts[*i] = Verdict::Refuse(rej);
                    }
                }
            }
        }

        let mut out = Vec::with_capacity(batch.len());
        let mut counts = RawCounts::default();
        for (m, v) in batch.iter().zip(verdicts) {
            match v {
                Verdict::Accept { mut rec, priority } => {
                    counts.accepted += 1;
                    rec.id
                        .get_or_insert_with(|| uuid::Uuid::now_v7().to_string());
                    out.push(features_record(
                        &self.settings.features_topic,
                        &rec,
                        priority,
                        m.header("traceparent"),
                    ));
                }
                Verdict::Refuse(rej) => {
                    *counts.dead_letters.entry(rej.kind).or_default() += 1;
                    tracing::debug!(partition = m.partition, offset = m.offset, kind = %rej.kind, reason = %rej.reason,
                        "dead-lettering a raw record");
                    out.push(dead_letter(
                        &self.settings.dlq_topic,
                        "ingest",
                        m,
                        rej.kind,
                        &rej.reason,
                        rej.tenant,
                    ));
                }
            }
        }
        Ok((out, counts))
    }

    async fn committed(&mut self, counts: RawCounts) {
        metrics::counter!(metric_names::RECORDS_TOTAL, "source" => "kafka", "route" => "raw")
            .increment(counts.accepted);
        for (&kind, &n) in &counts.dead_letters {
            let labels = [("source", "kafka"), ("kind", kind.as_str())];
            metrics::counter!(metric_names::DEAD_LETTERS_TOTAL, &labels).increment(n);
        }
        let refused: u64 = counts.dead_letters.values().sum();
        if refused > 0 {
            tracing::info!(
                refused,
                accepted = counts.accepted,
                "dead-lettered raw records"
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(mode: BudgetMode, enabled: bool) -> TenantSettings {
        TenantSettings {
            rate_per_s: 1.0,
            burst: 1.0,
            budget_mode: mode,
            enabled,
        }
    }

    #[test]
    fn tenant_checks() {
        let e = tenant_verdict("ghost", None, None, 9).unwrap_err();
        assert_eq!(e.kind, ErrorKind::UnknownTenant);
        assert!(
            e.reason.contains("\"ghost\" is not a known tenant"),
            "{}",
            e.reason
        );
        assert_eq!(
            tenant_verdict("a", Some(&s(BudgetMode::Reject, false)), None, 9)
                .unwrap_err()
                .kind,
            ErrorKind::TenantDisabled
        );
        assert_eq!(
            tenant_verdict("a", Some(&s(BudgetMode::Reject, true)), None, 9),
            Ok(None)
        );
        let ex = Exceeded {
            period: "2026-11".into(),
            until_ms: 1,
            budget: 1.0,
            spent: 2.0,
            currency: "USD".into(),
        };
        let e = tenant_verdict("a", Some(&s(BudgetMode::Reject, true)), Some(&ex), 9).unwrap_err();
        assert_eq!((e.kind, e.status), (ErrorKind::BudgetExceeded, 429));
        assert_eq!(
            tenant_verdict("a", Some(&s(BudgetMode::Deprioritise, true)), Some(&ex), 9),
            Ok(Some(9))
        );
    }
}
