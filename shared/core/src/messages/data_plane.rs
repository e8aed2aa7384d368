//! Data-plane messages: the Kafka records a request and its answer travel as, from
//! ingest to prediction, with usage and dead letters on the side.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::{tag, SchemaTag};

/// `aifab.ingest.raw` (from any producer) and `aifab.features.in` (accepted by ingest).
///
/// External producers need nothing but this shape. A record with a `label` is a
/// training example; without one it is an inference request.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IngestRecord {
    pub schema: SchemaTag<IngestRecord>,
    /// Request id chosen by the producer (idempotency and join key). Ingest assigns a
    /// UUIDv7 when it is absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    pub tenant: String,
    pub text: String,
    /// Task / model name; the default task when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub task: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub label: Option<String>,
    /// Answer wanted within this many milliseconds of `received_at_ms`; later is `expired`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deadline_ms: Option<u64>,
    /// Set by ingest when it accepts the record.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub received_at_ms: Option<i64>,
    /// Free-form string attributes carried through to the prediction.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub attributes: BTreeMap<String, String>,
}
message!(IngestRecord, "ingest.raw/v1");

/// How text longer than the model's max length was cut.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Truncation {
    None,
    Head,
    Tail,
}

/// `aifab.inference.requests`: one text to classify, tokenized by the feature service.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InferenceRequest {
    pub schema: SchemaTag<InferenceRequest>,
    pub id: String,
    pub tenant: String,
    pub task: String,
    pub text: String,
    /// Token ids including special tokens, after truncation: workers use them as is.
    pub input_ids: Vec<u32>,
    /// `input_ids.len()`: what the token-budget batcher counts.
    pub token_count: u32,
    pub truncation: Truncation,
    pub received_at_ms: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deadline_ms: Option<u64>,
    /// Lower is served first when a tenant is deprioritised for budget (0 = normal).
    #[serde(default)]
    pub priority: u8,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub attributes: BTreeMap<String, String>,
}
message!(InferenceRequest, "inference.request/v1");

/// `aifab.training.examples`: one labelled text.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrainingExample {
    pub schema: SchemaTag<TrainingExample>,
    pub id: String,
    pub tenant: String,
    pub task: String,
    pub text: String,
    pub label: String,
    pub received_at_ms: i64,
}
message!(TrainingExample, "training.example/v1");

/// What happened to a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// Computed; `label` and `scores` are set.
    Ok,
    /// Its deadline passed before compute; nothing computed.
    Expired,
    /// Answered from the dedupe cache without inference.
    Cached,
}

/// Which rollout arm served a prediction.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Arm {
    Production,
    Canary,
    Shadow,
}

/// `aifab.predictions`: exactly one per request (plus shadow ones, marked so).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Prediction {
    pub schema: SchemaTag<Prediction>,
    pub id: String,
    pub tenant: String,
    pub task: String,
    pub outcome: Outcome,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub label: Option<String>,
    /// Softmax score per label.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub scores: BTreeMap<String, f32>,
    pub model_version: String,
    pub arm: Arm,
    /// The batch that computed this (absent when nothing was computed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub batch_id: Option<String>,
    /// Rows in the batch that computed this (0 when not computed).
    pub batch_size: u32,
    /// From `received_at_ms` to the start of compute.
    pub queue_ms: f64,
    pub compute_ms: f64,
    pub received_at_ms: i64,
    pub produced_at_ms: i64,
    /// The worker (or service) that produced this.
    pub worker: String,
}
message!(Prediction, "prediction/v1");

/// `aifab.usage`: device time and tokens charged to one tenant for one batch.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UsageRecord {
    pub schema: SchemaTag<UsageRecord>,
    /// Unique per (batch, tenant): the cost accountant's idempotency key.
    pub usage_id: String,
    pub batch_id: String,
    pub worker: String,
    pub tenant: String,
    pub task: String,
    pub model_version: String,
    /// `cpu`, `cuda`, ...: selects the price.
    pub device_kind: String,
    pub rows: u32,
    pub tokens: u64,
    /// The batch's compute time shared out by this tenant's token count.
    pub device_seconds: f64,
    /// Seconds the worker sat idle since its previous batch (the whole of it, reported
    /// once per batch on the batch's first tenant's record; zero on the others).
    #[serde(default)]
    pub idle_seconds: f64,
    pub at_ms: i64,
}
message!(UsageRecord, "usage/v1");

/// Where a dead letter came from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SourceRef {
    pub topic: String,
    pub partition: i32,
    pub offset: i64,
}

/// `aifab.dlq`: input no stage could accept, kept whole with the reason.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeadLetter {
    pub schema: SchemaTag<DeadLetter>,
    /// The original bytes, base64 (standard alphabet): they may not be UTF-8. At most
    /// [`DEAD_LETTER_ORIGINAL_MAX_BYTES`] of them; `original_len` says when it was cut.
    pub original_base64: String,
    /// The original's full length in bytes, present only when `original_base64` holds
    /// just its first [`DEAD_LETTER_ORIGINAL_MAX_BYTES`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub original_len: Option<u64>,
    /// The original key, base64, when there was one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_base64: Option<String>,
    /// Kafka source, or absent for HTTP.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<SourceRef>,
    /// The stage that refused it: `ingest`, `feature`, `inference-worker`, ...
    pub stage: String,
    /// Machine-readable kind of failure: an [`ErrorKind`](crate::dead_letter::ErrorKind)'s
    /// string (kept a string so a reader never refuses a dead letter).
    pub error_kind: String,
    /// Human-readable: what was expected and what was found.
    pub reason: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tenant: Option<String>,
    pub at_ms: i64,
}
message!(DeadLetter, "dead_letter/v1");

/// Most bytes of the original a dead letter keeps. A dead letter must fit in one Kafka
/// record whatever it refuses: base64 makes the original a third longer, and a broker or
/// producer refusing the dead letter would stop the stage that writes it.
pub const DEAD_LETTER_ORIGINAL_MAX_BYTES: usize = 256 * 1024;

/// Longest reason a dead letter keeps, in characters (a reason may quote the bad value).
pub const DEAD_LETTER_REASON_MAX_CHARS: usize = 4096;

/// Most bytes of the original's key a dead letter keeps (twice: in `key_base64` and as
/// its own record key). Request ids are short; a key this long is itself bad input.
pub const DEAD_LETTER_KEY_MAX_BYTES: usize = 4096;

impl DeadLetter {
    /// A dead letter for `original`, refused now by `stage`, within the size bounds above.
    pub fn new(
        original: &[u8],
        key: Option<&[u8]>,
        source: Option<SourceRef>,
        stage: &str,
        error_kind: crate::dead_letter::ErrorKind,
        reason: &str,
        tenant: Option<String>,
    ) -> Self {
        use base64::Engine as _;
        let b64 = base64::engine::general_purpose::STANDARD;
        let kept = &original[..original.len().min(DEAD_LETTER_ORIGINAL_MAX_BYTES)];
        let reason = match reason.char_indices().nth(DEAD_LETTER_REASON_MAX_CHARS) {
            Some((cut, _)) => format!(
                "{}… (reason cut at {DEAD_LETTER_REASON_MAX_CHARS} characters)",
                &reason[..cut]
            ),
            None => reason.to_string(),
        };
        DeadLetter {
            schema: tag(),
            original_base64: b64.encode(kept),
            original_len: (kept.len() < original.len()).then_some(original.len() as u64),
            key_base64: key.map(|k| b64.encode(&k[..k.len().min(DEAD_LETTER_KEY_MAX_BYTES)])),
            source,
            stage: stage.to_string(),
            error_kind: error_kind.as_str().to_string(),
            reason,
            tenant: tenant.map(|t| t.chars().take(256).collect()),
            at_ms: crate::now_ms(),
        }
    }
}
