//! Pure validation: raw Kafka values and HTTP bodies → accepted
//! [`IngestRecord`](aifab_core::messages::IngestRecord)s, or a
//! [`Rejection`] with a machine-readable kind, a reason that names the field, and the
//! HTTP status it maps to. No I/O here: checks that need Redis (unknown tenant, duplicate
//! id, budget) are made by the callers with the kinds defined below.
//!
//! [`record`] checks one record (a raw Kafka value, or an item of an HTTP body) against
//! the schema and the [`Rules`]; [`body`] takes an HTTP body apart into its items.

pub mod body;
pub mod record;

use std::collections::BTreeMap;

use aifab_core::schema::SchemaViolation;

pub use body::{http_body, Parsed, Route};
pub use record::raw_record;

pub use aifab_core::dead_letter::ErrorKind;

/// The `error` of an HTTP error body: a refusal (whose kind a dead letter also carries) or
/// one of the API's own answers that refuse nothing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Code {
    Refused(ErrorKind),
    /// Ingest failed inside; the client retries with the same Idempotency-Key.
    Internal,
    /// Kafka or Redis cannot take the request now (503).
    Unavailable,
    /// An Idempotency-Key sent again with a different body (422).
    IdempotencyKeyReused,
    /// The body could not be read off the connection.
    BadBody,
    /// No such request for this tenant (404).
    NotFound,
    /// Too many not-yet-seen API keys at once; this one was not looked up (429).
    KeyLookupsThrottled,
}

impl Code {
    pub fn as_str(self) -> &'static str {
        match self {
            Code::Refused(k) => k.as_str(),
            Code::Internal => "internal",
            Code::Unavailable => "unavailable",
            Code::IdempotencyKeyReused => "idempotency_key_reused",
            Code::BadBody => "bad_body",
            Code::NotFound => "not_found",
            Code::KeyLookupsThrottled => "key_lookups_throttled",
        }
    }
}

impl From<ErrorKind> for Code {
    fn from(k: ErrorKind) -> Code {
        Code::Refused(k)
    }
}

/// Why an input was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejection {
    pub kind: ErrorKind,
    /// Human-readable: names the field, says what was expected and what was found.
    pub reason: String,
    /// The HTTP status this maps to.
    pub status: u16,
    /// The tenant, when it is known.
    pub tenant: Option<String>,
}

impl Rejection {
    pub fn new(kind: ErrorKind, reason: impl Into<String>) -> Self {
        Rejection {
            kind,
            reason: reason.into(),
            status: status_of(kind),
            tenant: None,
        }
    }

    pub fn with_tenant(mut self, tenant: Option<&str>) -> Self {
        self.tenant = tenant.map(str::to_string);
        self
    }
}

/// The HTTP status of each kind.
pub fn status_of(kind: ErrorKind) -> u16 {
    match kind {
        ErrorKind::MissingApiKey | ErrorKind::BadApiKey => 401,
        ErrorKind::ForbiddenTenant | ErrorKind::TenantDisabled => 403,
        ErrorKind::DuplicateId => 409,
        ErrorKind::BatchTooLarge | ErrorKind::BodyTooLarge | ErrorKind::RecordTooLarge => 413,
        ErrorKind::RateLimited | ErrorKind::BudgetExceeded => 429,
        _ => 400,
    }
}

/// The kind of one schema violation.
pub fn kind_of(v: &SchemaViolation) -> ErrorKind {
    let m = v.message.as_str();
    if v.path == "/schema" {
        ErrorKind::WrongSchema
    } else if m.starts_with("missing field") {
        ErrorKind::MissingField
    } else if m.starts_with("unexpected field") {
        ErrorKind::UnexpectedField
    } else if m.contains(" is not of type ") {
        ErrorKind::WrongType
    } else if v.path == "/text" && m.contains("is shorter than") {
        ErrorKind::EmptyText
    } else if v.path == "/text" && m.contains("more than the maximum") {
        ErrorKind::TextTooLong
    } else {
        ErrorKind::InvalidValue
    }
}

/// What is accepted beyond the schema.
#[derive(Debug, Clone)]
pub struct Rules {
    /// Task used when a record names none.
    pub default_task: String,
    /// Labels per task; a task not listed accepts any label.
    pub labels: BTreeMap<String, Vec<String>>,
    /// Longest text, in characters (at most the schema's 20000).
    pub max_text_chars: usize,
    /// Most items in one HTTP batch.
    pub max_batch_items: usize,
    /// Longest record (a raw Kafka value, or one HTTP item as JSON), in bytes: what ingest
    /// and feature derive from it must still fit in one Kafka record.
    pub max_record_bytes: usize,
}

/// The most `max_record_bytes` may be: feature's inference request repeats the record
/// and adds its token ids, and must stay under Kafka's 1 MB default record size.
pub const MAX_RECORD_BYTES_LIMIT: usize = 512 * 1024;

impl Default for Rules {
    fn default() -> Self {
        Rules {
            default_task: "default".into(),
            labels: BTreeMap::new(),
            max_text_chars: 20_000,
            max_batch_items: 256,
            max_record_bytes: 256 * 1024,
        }
    }
}

/// Parse `--task-labels`: `task=label,label;task=label,...`.
pub fn parse_task_labels(s: &str) -> Result<BTreeMap<String, Vec<String>>, String> {
    let mut out = BTreeMap::new();
    for part in s.split(';').map(str::trim).filter(|p| !p.is_empty()) {
        let (task, labels) = part
            .split_once('=')
            .ok_or_else(|| format!("task labels: expected `task=label,label`, found {part:?}"))?;
        let labels: Vec<String> = labels
            .split(',')
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .map(str::to_string)
            .collect();
        if task.trim().is_empty() || labels.is_empty() {
            return Err(format!(
                "task labels: expected `task=label,label`, found {part:?}"
            ));
        }
        out.insert(task.trim().to_string(), labels);
    }
    Ok(out)
}

/// Rules and assertions the tests of every validation module share.
#[cfg(test)]
pub(crate) mod testing {
    use super::*;

    pub fn rules() -> Rules {
        Rules {
            labels: [(
                "sms_spam".to_string(),
                vec!["ham".to_string(), "spam".to_string()],
            )]
            .into(),
            max_batch_items: 3,
            ..Rules::default()
        }
    }

    #[track_caller]
    pub fn rejects(
        r: Result<impl std::fmt::Debug, Rejection>,
        kind: ErrorKind,
        reason_has: &str,
    ) -> Rejection {
        let e = r.expect_err("should be rejected");
        assert_eq!(e.kind, kind, "{e:?}");
        assert!(
            e.reason.contains(reason_has),
            "reason {:?} lacks {reason_has:?}",
            e.reason
        );
        e
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn task_labels_flag() {
        let m = parse_task_labels("sms_spam=ham,spam; topic = a , b ,c").unwrap();
        assert_eq!(m["sms_spam"], ["ham", "spam"]);
        assert_eq!(m["topic"], ["a", "b", "c"]);
        assert!(parse_task_labels("").unwrap().is_empty());
        assert!(parse_task_labels("nolabels").is_err());
        assert!(parse_task_labels("t=").is_err());
    }

    #[test]
    fn statuses() {
        assert_eq!(status_of(ErrorKind::BadApiKey), 401);
        assert_eq!(status_of(ErrorKind::TenantDisabled), 403);
        assert_eq!(status_of(ErrorKind::BudgetExceeded), 429);
        assert_eq!(status_of(ErrorKind::NotJson), 400);
    }
}
