//! The feature stage: `aifab.features.in` → `aifab.inference.requests` (tokenized),
//! `aifab.training.examples` (labelled records), `aifab.predictions` (answers from the
//! dedupe cache) and `aifab.dlq` (anything it cannot use), all in one Kafka transaction
//! per batch with the input offsets.

use std::collections::BTreeMap;
use std::sync::Arc;

use aifab_core::dead_letter::ErrorKind;
use aifab_core::messages::{
    decode, encode, tag, InferenceRequest, IngestRecord, Prediction, TrainingExample,
};
use aifab_core::pipeline::{dead_letter, Consumed, Record, Transform};
use aifab_core::redis_store::RedisHandle;
use anyhow::Context as _;

use crate::dedupe::{cached_prediction, DEDUPE_HEADER};
use crate::keys::{dedupe_hash, DedupeScope, Keys};
use crate::metric_names::{
    DEAD_LETTERS_TOTAL, DEDUPE_TOTAL, ONLINE_WRITE_FAILURES_TOTAL, RECORDS_TOTAL, TOKENS_TOTAL,
    TRUNCATED_TOTAL,
};
use crate::online::Deltas;
use crate::tokenize::FeatureTokenizer;

/// Keys per dedupe `MGET`.
const DEDUPE_MGET_KEYS: usize = 1_000;

#[derive(Debug, Clone)]
pub struct StageSettings {
    pub inference_topic: String,
    pub training_topic: String,
    pub predictions_topic: String,
    pub dlq_topic: String,
    pub default_task: String,
    /// 0 turns the dedupe cache off.
    pub dedupe_ttl_s: u64,
    pub dedupe_scope: DedupeScope,
    /// The `worker` name of cached predictions.
    pub worker_name: String,
}

pub struct FeatureStage {
    pub settings: StageSettings,
    pub tokenizer: Arc<FeatureTokenizer>,
    pub redis: RedisHandle,
    pub keys: Keys,
}

/// A batch's metric counts. Added once the batch commits: an aborted batch is consumed
/// again and would count twice (and one update per batch keeps the metrics registry off
/// the per-message path).
#[derive(Debug, Default, PartialEq, Eq)]
pub struct BatchCounts {
    pub training: u64,
    pub inference: u64,
    pub cached: u64,
    pub dedupe_misses: u64,
    pub tokens: u64,
    pub truncated: u64,
    pub dead_letters: BTreeMap<ErrorKind, u64>,
}

impl BatchCounts {
    fn dead_letter(&mut self, kind: ErrorKind) {
        *self.dead_letters.entry(kind).or_default() += 1;
    }

    fn record(&self) {
        let add = |name: &'static str, label: (&'static str, &'static str), n: u64| {
            if n > 0 {
                metrics::counter!(name, label.0 => label.1).increment(n);
            }
        };
        add(RECORDS_TOTAL, ("kind", "training"), self.training);
        add(RECORDS_TOTAL, ("kind", "inference"), self.inference);
        add(RECORDS_TOTAL, ("kind", "cached"), self.cached);
        add(DEDUPE_TOTAL, ("result", "hit"), self.cached);
        add(DEDUPE_TOTAL, ("result", "miss"), self.dedupe_misses);
        for (&kind, &n) in &self.dead_letters {
            add(DEAD_LETTERS_TOTAL, ("kind", kind.as_str()), n);
        }
        if self.tokens > 0 {
            metrics::counter!(TOKENS_TOTAL).increment(self.tokens);
        }
        if self.truncated > 0 {
            metrics::counter!(TRUNCATED_TOTAL).increment(self.truncated);
        }
    }
}

/// What a committed batch leaves to do: its online-feature counts and metric counts.
#[derive(Debug, Default)]
pub struct BatchDone {
    pub deltas: Deltas,
    pub counts: BatchCounts,
}

/// A decoded record this stage can use: id and receipt time present.
pub fn accept(m: &Consumed) -> Result<IngestRecord, (ErrorKind, String)> {
    // One pass for the usual case (ingest wrote it); the slower decode explains a failure.
    let rec: IngestRecord = match serde_json::from_slice(&m.payload) {
        Ok(r) => r,
        Err(_) => decode(&m.payload).map_err(|e| (e.kind(), e.to_string()))?,
    };
    if rec.id.as_deref().is_none_or(str::is_empty) {
        return Err((
            ErrorKind::MissingField,
            "missing field \"id\": records on the features topic carry the id ingest assigned"
                .into(),
        ));
    }
    if rec.received_at_ms.is_none() {
        return Err((
            ErrorKind::MissingField,
            "missing field \"received_at_ms\": records on the features topic carry ingest's \
             receipt time"
                .into(),
        ));
    }
    if rec.text.is_empty() {
        return Err((
            ErrorKind::EmptyText,
            "field \"text\": \"\" is shorter than 1 character".into(),
        ));
    }
    Ok(rec)
}

/// `priority` from the record's header (set by ingest for deprioritised tenants).
pub fn priority_of(m: &Consumed) -> u8 {
    m.header("priority")
        .and_then(|v| std::str::from_utf8(v).ok())
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(0)
}

fn with_trace(r: Record, m: &Consumed, tenant: &str) -> Record {
    r.header("tenant", tenant)
        .traceparent(m.header("traceparent"))
}

impl Transform for FeatureStage {
    /// The batch's online-feature and metric counts, written once it commits.
    type Done = BatchDone;

    async fn transform(&mut self, batch: &[Consumed]) -> anyhow::Result<(Vec<Record>, BatchDone)> {
        let s = &self.settings;
        let now = aifab_core::now_ms();
        let mut deltas = Deltas::default();
        let mut counts = BatchCounts::default();
        let mut out: Vec<Record> = Vec::with_capacity(batch.len());
        // Unlabelled records waiting for the cache and the tokenizer: (message, record, task, hash).
        let mut infer: Vec<(&Consumed, IngestRecord, String, Option<String>)> = Vec::new();
        for m in batch {
            let rec = match accept(m) {
                Ok(r) => r,
                Err((kind, reason)) => {
                    counts.dead_letter(kind);
                    let tenant = serde_json::from_slice::<serde_json::Value>(&m.payload)
                        .ok()
                        .and_then(|v| v["tenant"].as_str().map(str::to_string));
                    out.push(dead_letter(
                        &s.dlq_topic,
                        "feature",
                        m,
                        kind,
                        &reason,
                        tenant,
                    ));
                    continue;
                }
            };
            let id = rec.id.clone().unwrap_or_default();
            let task = rec.task.clone().unwrap_or_else(|| s.default_task.clone());
            match &rec.label {
                Some(label) => {
                    let ex = TrainingExample {
                        schema: tag(),
                        id: id.clone(),
                        tenant: rec.tenant.clone(),
                        task,
                        text: rec.text.clone(),
                        label: label.clone(),
                        received_at_ms: rec.received_at_ms.unwrap_or(now),
                    };
                    deltas.tenant(&rec.tenant, now).examples += 1;
                    counts.training += 1;
                    out.push(with_trace(
                        Record::new(&s.training_topic, id, encode(&ex)),
                        m,
                        &rec.tenant,
                    ));
                }
                None => {
                    let hash = (s.dedupe_ttl_s > 0)
                        .then(|| dedupe_hash(s.dedupe_scope, &rec.tenant, &task, &rec.text));
                    infer.push((m, rec, task, hash));
                }
            }
        }

        // The dedupe cache: one round trip for every lookup in the batch.
        let mut hits: Vec<Option<Prediction>> = vec![None; infer.len()];
        let hashed: Vec<usize> = (0..infer.len()).filter(|&i| infer[i].3.is_some()).collect();
        if !hashed.is_empty() {
            let mut conn = self.redis.try_get().context("redis is not connected")?;
            // MGETs rather than a GET per text: Redis spends less per key that way (most
            // lookups miss), and chunks keep any one command short for other clients.
            let mut pipe = redis::pipe();
            for chunk in hashed.chunks(DEDUPE_MGET_KEYS) {
                let keys: Vec<String> = chunk
                    .iter()
                    .map(|&i| self.keys.dedupe(infer[i].3.as_deref().unwrap_or_default()))
                    .collect();
                pipe.cmd("MGET").arg(keys);
            }
            let found: Vec<Vec<Option<Vec<u8>>>> = pipe
                .query_async(&mut conn)
                .await
                .context("dedupe lookups")?;
            for (&i, f) in hashed.iter().zip(found.into_iter().flatten()) {
                hits[i] = f.and_then(|bytes| decode::<Prediction>(&bytes).ok());
            }
        }

        let texts: Vec<&str> = infer
            .iter()
            .zip(&hits)
            .filter(|(_, h)| h.is_none())
            .map(|((_, rec, _, _), _)| rec.text.as_str())
            .collect();
        let mut tokens = self.tokenizer.encode_batch(&texts).into_iter();
        for ((m, rec, task, hash), hit) in infer.iter().zip(hits) {
            let id = rec.id.clone().unwrap_or_default();
            if let Some(cached) = hit {
                counts.cached += 1;
                let d = deltas.tenant(&rec.tenant, now);
                d.requests += 1;
                d.cached += 1;
                let p = cached_prediction(&cached, rec, &id, task, &s.worker_name, now);
                out.push(with_trace(
                    Record::new(&s.predictions_topic, id, encode(&p)),
                    m,
                    &rec.tenant,
                ));
                continue;
            }
            if s.dedupe_ttl_s > 0 {
                counts.dedupe_misses += 1;
            }
            match tokens.next().expect("one tokenization per miss") {
                Err(e) => {
                    counts.dead_letter(e.kind);
                    out.push(dead_letter(
                        &s.dlq_topic,
                        "feature",
                        m,
                        e.kind,
                        &e.reason,
                        Some(rec.tenant.clone()),
                    ));
                }
                Ok(t) => {
                    let n = t.ids.len() as u32;
                    let truncated = t.truncation != aifab_core::messages::Truncation::None;
                    let req = InferenceRequest {
                        schema: tag(),
                        id: id.clone(),
                        tenant: rec.tenant.clone(),
                        task: task.clone(),
                        text: rec.text.clone(),
                        input_ids: t.ids,
                        token_count: n,
                        truncation: t.truncation,
                        received_at_ms: rec.received_at_ms.unwrap_or(now),
                        deadline_ms: rec.deadline_ms,
                        priority: priority_of(m),
                        attributes: rec.attributes.clone(),
                    };
                    let d = deltas.tenant(&rec.tenant, now);
                    d.requests += 1;
                    d.tokens += n as u64;
                    if truncated {
                        d.truncated += 1;
                        counts.truncated += 1;
                    }
                    counts.tokens += n as u64;
                    counts.inference += 1;
                    let mut r = with_trace(
                        Record::new(&s.inference_topic, id, encode(&req)),
                        m,
                        &rec.tenant,
                    );
                    // The worker copies request headers onto its prediction, which brings
                    // the hash back to the cache fill.
                    if let Some(h) = hash {
                        r = r.header(DEDUPE_HEADER, h.clone());
                    }
                    out.push(r);
                }
            }
        }
        Ok((out, BatchDone { deltas, counts }))
    }

    async fn committed(&mut self, done: BatchDone) {
        done.counts.record();
        let deltas = done.deltas;
        if deltas.is_empty() {
            return;
        }
        let Some(mut conn) = self.redis.try_get() else {
            tracing::warn!("redis not connected; online features of one batch not written");
            return;
        };
        if let Err(e) = deltas.write(&mut conn, &self.keys).await {
            metrics::counter!(ONLINE_WRITE_FAILURES_TOTAL).increment(1);
            tracing::warn!(error = %e, "could not write online features");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(payload: &[u8], headers: Vec<(String, Vec<u8>)>) -> Consumed {
        Consumed {
            topic: "f".into(),
            partition: 0,
            offset: 1,
            key: None,
            payload: payload.to_vec(),
            headers,
            timestamp_ms: None,
        }
    }

    #[test]
    fn records_need_id_and_receipt_time() {
        let ok = br#"{"schema":"ingest.raw/v1","id":"a","tenant":"acme","text":"hi","received_at_ms":5}"#;
        assert_eq!(accept(&msg(ok, vec![])).unwrap().id.as_deref(), Some("a"));
        let no_id = br#"{"schema":"ingest.raw/v1","tenant":"acme","text":"hi","received_at_ms":5}"#;
        assert_eq!(
            accept(&msg(no_id, vec![])).unwrap_err().0,
            ErrorKind::MissingField
        );
        let no_time = br#"{"schema":"ingest.raw/v1","id":"a","tenant":"acme","text":"hi"}"#;
        assert!(accept(&msg(no_time, vec![]))
            .unwrap_err()
            .1
            .contains("received_at_ms"));
        assert_eq!(
            accept(&msg(b"\xff", vec![])).unwrap_err().0,
            ErrorKind::NotUtf8
        );
        assert_eq!(
            accept(&msg(b"{", vec![])).unwrap_err().0,
            ErrorKind::NotJson
        );
        assert_eq!(
            accept(&msg(br#"{"schema":"x/v1"}"#, vec![])).unwrap_err().0,
            ErrorKind::WrongSchema
        );
    }

    #[test]
    fn priority_comes_from_the_header() {
        assert_eq!(priority_of(&msg(b"", vec![])), 0);
        assert_eq!(
            priority_of(&msg(b"", vec![("priority".into(), b"9".to_vec())])),
            9
        );
        assert_eq!(
            priority_of(&msg(b"", vec![("priority".into(), b"high".to_vec())])),
            0
        );
    }
}
