//! The one catalogue of refusal kinds: the `error_kind` of every dead letter on
//! `aifab.dlq` and the `error` of every HTTP 4xx body, whichever stage writes it.
//!
//! `schemas/dead_letter.v1.json` lists the same strings; a contract test keeps the two equal,
//! so a new kind is added here and in the schema together.

use serde::{Deserialize, Serialize};

/// Why a stage refused an input. The string form (`as_str`, serde) is the schema's.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    Hash,
    PartialOrd,
    Ord,
    Serialize,
    Deserialize,
    strum::VariantArray,
)]
#[serde(rename_all = "snake_case")]
pub enum ErrorKind {
    // ---- the bytes or the JSON
    /// The value is not UTF-8.
    NotUtf8,
    /// The value is not JSON.
    NotJson,
    /// No `schema` field.
    MissingSchema,
    /// A `schema` other than the one this topic or route carries.
    WrongSchema,
    /// JSON that does not decode as the message (any other contract violation).
    InvalidMessage,
    // ---- fields
    MissingField,
    UnexpectedField,
    WrongType,
    EmptyText,
    TextTooLong,
    /// A record larger than a stage accepts.
    RecordTooLarge,
    InvalidValue,
    /// A training label the task does not have.
    UnknownLabel,
    // ---- who and how much (ingest)
    UnknownTenant,
    DuplicateId,
    /// Not bad input: an id whose earlier request is still being written (HTTP only).
    InProgress,
    /// Not bad input: the request's write may or may not have committed (HTTP only).
    OutcomeUnknown,
    BatchTooLarge,
    MissingApiKey,
    BadApiKey,
    ForbiddenTenant,
    TenantDisabled,
    BudgetExceeded,
    RateLimited,
    BodyTooLarge,
    // ---- feature
    /// More tokens than the model takes, with truncation refused.
    TooManyTokens,
    TokenizeFailed,
    // ---- inference worker
    /// A request for a task this worker does not serve.
    WrongTask,
    /// The model refused the request (it failed alone, not just in its batch).
    ModelRejected,
}

impl ErrorKind {
    /// Every kind, in declaration order.
    pub const ALL: &'static [ErrorKind] = <ErrorKind as strum::VariantArray>::VARIANTS;

    /// The schema's string for this kind (also its metric label).
    pub const fn as_str(self) -> &'static str {
        match self {
            ErrorKind::NotUtf8 => "not_utf8",
            ErrorKind::NotJson => "not_json",
            ErrorKind::MissingSchema => "missing_schema",
            ErrorKind::WrongSchema => "wrong_schema",
            ErrorKind::InvalidMessage => "invalid_message",
            ErrorKind::MissingField => "missing_field",
            ErrorKind::UnexpectedField => "unexpected_field",
            ErrorKind::WrongType => "wrong_type",
            ErrorKind::EmptyText => "empty_text",
            ErrorKind::TextTooLong => "text_too_long",
            ErrorKind::RecordTooLarge => "record_too_large",
            ErrorKind::InvalidValue => "invalid_value",
            ErrorKind::UnknownLabel => "unknown_label",
            ErrorKind::UnknownTenant => "unknown_tenant",
            ErrorKind::DuplicateId => "duplicate_id",
            ErrorKind::InProgress => "in_progress",
            ErrorKind::OutcomeUnknown => "outcome_unknown",
            ErrorKind::BatchTooLarge => "batch_too_large",
            ErrorKind::MissingApiKey => "missing_api_key",
            ErrorKind::BadApiKey => "bad_api_key",
            ErrorKind::ForbiddenTenant => "forbidden_tenant",
            ErrorKind::TenantDisabled => "tenant_disabled",
            ErrorKind::BudgetExceeded => "budget_exceeded",
            ErrorKind::RateLimited => "rate_limited",
            ErrorKind::BodyTooLarge => "body_too_large",
            ErrorKind::TooManyTokens => "too_many_tokens",
            ErrorKind::TokenizeFailed => "tokenize_failed",
            ErrorKind::WrongTask => "wrong_task",
            ErrorKind::ModelRejected => "model_rejected",
        }
    }

    /// The kind a schema string names, if any.
    pub fn parse(s: &str) -> Option<ErrorKind> {
        ErrorKind::ALL.iter().copied().find(|k| k.as_str() == s)
    }
}

impl std::fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl AsRef<str> for ErrorKind {
    fn as_ref(&self) -> &str {
        self.as_str()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn serde_string_is_as_str_and_parse_round_trips() {
        for &k in ErrorKind::ALL {
            assert_eq!(serde_json::to_value(k).unwrap(), k.as_str());
            assert_eq!(ErrorKind::parse(k.as_str()), Some(k));
        }
        assert_eq!(ErrorKind::parse("no_such_kind"), None);
    }
}
