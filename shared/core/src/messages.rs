//! Typed messages: the one source in code of the contract in `schemas/`.
//!
//! Every Kafka value and NATS payload is JSON with a `schema` field (`name/version`).
//! Each type here has a schema file `schemas/<name>.v<version>.json`; the contract test
//! (`tests/contract.rs`) checks that what these types serialize validates against it.
//!
//! Timestamps are milliseconds since the Unix epoch (`*_ms`), durations are seconds or
//! milliseconds as their suffix says.

use std::collections::BTreeMap;

use serde::{de::DeserializeOwned, Deserialize, Serialize};

/// Implemented by every message: the `schema` value it carries and where its schema lives.
pub trait Message: Serialize + DeserializeOwned {
    /// `name/version`, e.g. `inference.request/v1`.
    const SCHEMA: &'static str;

    /// The file under `schemas/` holding this message's JSON Schema.
    fn schema_file() -> String {
        schema_file_for(Self::SCHEMA)
    }
}

/// `inference.request/v1` → `inference.request.v1.json`.
pub fn schema_file_for(schema: &str) -> String {
    format!("{}.json", schema.replace('/', "."))
}

macro_rules! message {
    ($ty:ty, $schema:literal) => {
        impl Message for $ty {
            const SCHEMA: &'static str = $schema;
        }
    };
}

/// A `schema` field that always holds `T::SCHEMA`; deserializing checks it.
///
/// Keeping it a zero-sized marker means nobody can build a message with the wrong tag.
pub struct SchemaTag<T>(std::marker::PhantomData<T>);

// Hand-written so they hold for every `T` (derives would demand `T: Clone` and so on).
impl<T> Clone for SchemaTag<T> {
    fn clone(&self) -> Self {
        *self
    }
}
impl<T> Copy for SchemaTag<T> {}
impl<T> PartialEq for SchemaTag<T> {
    fn eq(&self, _: &Self) -> bool {
        true
    }
}
impl<T> Eq for SchemaTag<T> {}
impl<T> Default for SchemaTag<T> {
    fn default() -> Self {
        SchemaTag(std::marker::PhantomData)
    }
}
impl<T: Message> std::fmt::Debug for SchemaTag<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:?}", T::SCHEMA)
    }
}

impl<T: Message> Serialize for SchemaTag<T> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(T::SCHEMA)
    }
}

impl<'de, T: Message> Deserialize<'de> for SchemaTag<T> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let found = String::deserialize(d)?;
        if found == T::SCHEMA {
            Ok(SchemaTag(std::marker::PhantomData))
        } else {
            Err(serde::de::Error::custom(format!(
                "schema: expected \"{}\", found \"{found}\"",
                T::SCHEMA
            )))
        }
    }
}

pub fn tag<T>() -> SchemaTag<T> {
    SchemaTag(std::marker::PhantomData)
}

// ---------------------------------------------------------------- data plane (Kafka)

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

// ---------------------------------------------------------------- control plane (NATS)

/// What happened to a model version.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ModelEventKind {
    Published,
    Promoted,
    RolledBack,
}

/// `aifab.model.published` / `.promoted` / `.rolled_back`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelEvent {
    pub schema: SchemaTag<ModelEvent>,
    pub kind: ModelEventKind,
    pub task: String,
    pub version: String,
    /// Where the artifact lives (`file:///...`, `s3://...`).
    pub artifact_uri: String,
    /// The alias this event moved, when it moved one (`production`, `candidate`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub alias: Option<String>,
    /// Headline evaluation metrics (accuracy, macro_f1, ...).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub metrics: BTreeMap<String, f64>,
    pub at_ms: i64,
}
message!(ModelEvent, "model.event/v1");

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PartitionLag {
    pub partition: i32,
    /// Committed offset of the group, or absent when it never committed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub committed: Option<i64>,
    pub high_watermark: i64,
    pub lag: i64,
}

/// `aifab.lag.<group>`: a consumer group's lag on one topic.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LagReading {
    pub schema: SchemaTag<LagReading>,
    pub group: String,
    pub topic: String,
    pub partitions: Vec<PartitionLag>,
    pub total_lag: i64,
    /// Change of `total_lag` per second since the previous reading (negative: draining).
    pub lag_rate_per_s: f64,
    pub at_ms: i64,
}
message!(LagReading, "lag.reading/v1");

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AlertState {
    Firing,
    Resolved,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Severity {
    Info,
    Warning,
    Critical,
}

/// `aifab.alerts.<rule>`: an SLO rule started or stopped firing.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Alert {
    pub schema: SchemaTag<Alert>,
    pub rule: String,
    pub state: AlertState,
    pub severity: Severity,
    pub value: f64,
    pub threshold: f64,
    pub message: String,
    pub at_ms: i64,
}
message!(Alert, "alert/v1");

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BudgetEventKind {
    /// Spend crossed the warning fraction (80%) of the budget.
    Warning,
    /// Spend reached the budget.
    Exceeded,
    /// Where a budget stands now (not a threshold crossing): published periodically on
    /// `aifab.budget.status` for every budget, so the autoscaler can project spend to the
    /// period's end before any threshold is crossed.
    Status,
}

/// `aifab.budget.warning` / `aifab.budget.exceeded`: at most once per tenant per period;
/// `aifab.budget.status`: periodically, for every budget set.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BudgetEvent {
    pub schema: SchemaTag<BudgetEvent>,
    pub kind: BudgetEventKind,
    pub tenant: String,
    /// The budget period, e.g. `2026-11` or `2026-11-29`.
    pub period: String,
    pub budget: f64,
    pub spent: f64,
    /// Spend per hour over the recent window.
    pub burn_rate_per_hour: f64,
    pub currency: String,
    pub at_ms: i64,
}
message!(BudgetEvent, "budget.event/v1");

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BudgetPeriod {
    Day,
    Month,
}

/// `aifab.budget.set`: set a tenant's budget for a period kind.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BudgetSet {
    pub schema: SchemaTag<BudgetSet>,
    pub tenant: String,
    pub period: BudgetPeriod,
    pub amount: f64,
    pub currency: String,
    pub at_ms: i64,
}
message!(BudgetSet, "budget.set/v1");

/// The inputs a scale decision was made from, published with it for audit.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScaleInputs {
    pub total_lag: i64,
    pub lag_rate_per_s: f64,
    pub partitions: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub burn_rate_per_hour: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub remaining_budget: Option<f64>,
}

/// `aifab.scale.<service>`: the autoscaler's decision; an actuator applies it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScaleDecision {
    pub schema: SchemaTag<ScaleDecision>,
    pub service: String,
    pub current_replicas: u32,
    pub desired_replicas: u32,
    /// Machine-readable: `lag`, `stabilizing`, `cooldown`, `budget_cap`, `max_replicas`, ...
    pub reason: String,
    /// Human-readable explanation.
    pub detail: String,
    pub inputs: ScaleInputs,
    pub at_ms: i64,
}
message!(ScaleDecision, "scale.decision/v1");

/// `aifab.train.request`: train a task now.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrainRequest {
    pub schema: SchemaTag<TrainRequest>,
    pub task: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub requested_by: Option<String>,
    pub at_ms: i64,
}
message!(TrainRequest, "train.request/v1");

/// Where a training job is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TrainStage {
    Embedding,
    Training,
    Evaluating,
    Done,
    Failed,
}

/// `aifab.train.progress`: a training job's progress, for progress bars and dashboards.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrainProgress {
    pub schema: SchemaTag<TrainProgress>,
    pub task: String,
    pub stage: TrainStage,
    /// Units done and total in this stage (texts embedded, epochs run).
    pub done: u64,
    pub total: u64,
    /// Validation loss of the last epoch (training stage).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub validation_loss: Option<f64>,
    /// The version registered (done stage) or the error (failed stage).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
    pub at_ms: i64,
}
message!(TrainProgress, "train.progress/v1");

/// `aifab.replicas.<service>`: how many replicas an actuator runs now.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReplicaReport {
    pub schema: SchemaTag<ReplicaReport>,
    pub service: String,
    pub replicas: u32,
    /// `local`, `docker`, `kubernetes`.
    pub actuator: String,
    pub at_ms: i64,
}
message!(ReplicaReport, "replicas.report/v1");

/// Every message schema, for tools that list or validate them all.
pub const ALL_SCHEMAS: &[&str] = &[
    IngestRecord::SCHEMA,
    InferenceRequest::SCHEMA,
    TrainingExample::SCHEMA,
    Prediction::SCHEMA,
    UsageRecord::SCHEMA,
    DeadLetter::SCHEMA,
    ModelEvent::SCHEMA,
    LagReading::SCHEMA,
    Alert::SCHEMA,
    BudgetEvent::SCHEMA,
    BudgetSet::SCHEMA,
    ScaleDecision::SCHEMA,
    TrainRequest::SCHEMA,
    TrainProgress::SCHEMA,
    ReplicaReport::SCHEMA,
];

/// Decode a message, with an error that names the field and says what was wrong.
pub fn decode<T: Message>(bytes: &[u8]) -> Result<T, DecodeError> {
    let text = std::str::from_utf8(bytes).map_err(|e| DecodeError::NotUtf8 {
        valid_up_to: e.valid_up_to(),
    })?;
    let value: serde_json::Value =
        serde_json::from_str(text).map_err(|e| DecodeError::NotJson(e.to_string()))?;
    match value.get("schema") {
        None => return Err(DecodeError::MissingSchema),
        Some(serde_json::Value::String(s)) if s != T::SCHEMA => {
            return Err(DecodeError::WrongSchema {
                expected: T::SCHEMA,
                found: s.clone(),
            })
        }
        Some(serde_json::Value::String(_)) => {}
        Some(other) => {
            return Err(DecodeError::WrongSchema {
                expected: T::SCHEMA,
                found: other.to_string(),
            })
        }
    }
    serde_json::from_value(value).map_err(|e| DecodeError::Invalid(e.to_string()))
}

/// Encode a message as its JSON bytes.
pub fn encode<T: Message>(msg: &T) -> Vec<u8> {
    // Serialization of these plain structs cannot fail (no maps with non-string keys).
    serde_json::to_vec(msg).expect("message serializes")
}

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum DecodeError {
    #[error("not UTF-8: invalid byte at position {valid_up_to}")]
    NotUtf8 { valid_up_to: usize },
    #[error("not JSON: {0}")]
    NotJson(String),
    #[error("missing field `schema`: expected a string like \"name/v1\"")]
    MissingSchema,
    #[error("schema: expected \"{expected}\", found {found}")]
    WrongSchema {
        expected: &'static str,
        found: String,
    },
    #[error("{0}")]
    Invalid(String),
}

impl DecodeError {
    /// Short machine-readable kind for DLQ records and metrics labels.
    pub fn kind(&self) -> crate::dead_letter::ErrorKind {
        use crate::dead_letter::ErrorKind;
        match self {
            DecodeError::NotUtf8 { .. } => ErrorKind::NotUtf8,
            DecodeError::NotJson(_) => ErrorKind::NotJson,
            DecodeError::MissingSchema => ErrorKind::MissingSchema,
            DecodeError::WrongSchema { .. } => ErrorKind::WrongSchema,
            DecodeError::Invalid(_) => ErrorKind::InvalidMessage,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request() -> InferenceRequest {
        InferenceRequest {
            schema: tag(),
            id: "r1".into(),
            tenant: "acme".into(),
            task: "sms_spam".into(),
            text: "hello".into(),
            input_ids: vec![101, 7592, 102],
            token_count: 3,
            truncation: Truncation::None,
            received_at_ms: 1,
            deadline_ms: None,
            priority: 0,
            attributes: BTreeMap::new(),
        }
    }

    #[test]
    fn round_trips_and_carries_schema() {
        let bytes = encode(&request());
        let v: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
        assert_eq!(v["schema"], "inference.request/v1");
        assert_eq!(decode::<InferenceRequest>(&bytes).unwrap(), request());
    }

    #[test]
    fn decode_errors_say_what_is_wrong() {
        assert_eq!(
            decode::<InferenceRequest>(b"\xff\xfe").unwrap_err().kind(),
            crate::dead_letter::ErrorKind::NotUtf8
        );
        assert_eq!(
            decode::<InferenceRequest>(b"{nope").unwrap_err().kind(),
            crate::dead_letter::ErrorKind::NotJson
        );
        let wrong = br#"{"schema":"prediction/v1"}"#;
        let err = decode::<InferenceRequest>(wrong).unwrap_err();
        assert!(
            err.to_string()
                .contains("expected \"inference.request/v1\""),
            "{err}"
        );
        let missing = br#"{"schema":"inference.request/v1","id":"x"}"#;
        let err = decode::<InferenceRequest>(missing).unwrap_err();
        assert!(err.to_string().contains("missing field `tenant`"), "{err}");
    }

    #[test]
    fn schema_file_names() {
        assert_eq!(InferenceRequest::schema_file(), "inference.request.v1.json");
        assert_eq!(ALL_SCHEMAS.len(), 15);
    }
}
