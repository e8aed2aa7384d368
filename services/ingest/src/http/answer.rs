//! What the API answers: a status, a JSON body and extra headers, built by plain
//! functions (stored for Idempotency-Key replays) and turned into a response at the edge.

use axum::http::{HeaderName, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::{json, Value};

use crate::validate::{Code, ErrorKind, Rejection};

/// One HTTP answer, before it becomes a response.
#[derive(Debug, Clone, PartialEq)]
pub struct Answer {
    pub status: StatusCode,
    pub body: Value,
    /// Headers besides `content-type`, lowercase names.
    pub headers: Vec<(&'static str, String)>,
}

impl Answer {
    pub fn new(status: StatusCode, body: Value) -> Self {
        Answer {
            status,
            body,
            headers: Vec::new(),
        }
    }

    /// An error body, `{"error": <code>, "reason": <reason>}`; a 401 says how to
    /// authenticate.
    pub fn error(status: StatusCode, code: impl Into<Code>, reason: &str) -> Self {
        let answer = Answer::new(
            status,
            json!({"error": code.into().as_str(), "reason": reason}),
        );
        if status == StatusCode::UNAUTHORIZED {
            answer.with_header("www-authenticate", "Bearer realm=\"aifab\"")
        } else {
            answer
        }
    }

    /// The answer to a refused input: its kind, reason and status.
    pub fn refused(r: &Rejection) -> Self {
        let status = StatusCode::from_u16(r.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        Answer::error(status, r.kind, &r.reason)
    }

    /// 503: Kafka or Redis cannot take the request now; retry in a second.
    pub fn unavailable(what: &str) -> Self {
        Answer::error(StatusCode::SERVICE_UNAVAILABLE, Code::Unavailable, what)
            .with_header("retry-after", "1")
    }

    /// 409 in_progress: what the request needs is held by an earlier one not decided yet.
    pub fn in_progress(reason: &str) -> Self {
        Answer::error(StatusCode::CONFLICT, ErrorKind::InProgress, reason)
            .with_header("retry-after", "1")
    }

    /// The final answer of a request whose records may or may not have been written.
    pub fn outcome_unknown(why: &str, ids: &[String]) -> Self {
        let reason = format!(
            "{why}: the records may or may not have been written, and will not be written again \
             with these ids or this Idempotency-Key; GET /v1/predictions/{{id}} answers 200 for \
             those that were"
        );
        let mut answer = Answer::error(StatusCode::CONFLICT, ErrorKind::OutcomeUnknown, &reason);
        answer.body["ids"] = json!(ids);
        answer
    }

    pub fn with_header(mut self, name: &'static str, value: impl Into<String>) -> Self {
        self.headers.push((name, value.into()));
        self
    }

    /// The value of one of its extra headers.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| *k == name)
            .map(|(_, v)| v.as_str())
    }

    pub fn is_success(&self) -> bool {
        self.status.is_success()
    }
}

impl IntoResponse for Answer {
    fn into_response(self) -> Response {
        let mut r = (self.status, axum::Json(self.body)).into_response();
        for (k, v) in self.headers {
            // Every name here is a constant and every value plain text: skipping one that
            // would not fit a header beats failing the answer.
            if let (Ok(k), Ok(v)) = (
                HeaderName::from_bytes(k.as_bytes()),
                HeaderValue::from_str(&v),
            ) {
                r.headers_mut().insert(k, v);
            }
        }
        r
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_name_their_code_and_a_401_says_how_to_authenticate() {
        let a = Answer::error(
            StatusCode::UNAUTHORIZED,
            ErrorKind::BadApiKey,
            "unknown API key",
        );
        assert_eq!(
            a.body,
            json!({"error": "bad_api_key", "reason": "unknown API key"})
        );
        assert_eq!(a.header("www-authenticate"), Some("Bearer realm=\"aifab\""));
        let a = Answer::error(StatusCode::NOT_FOUND, Code::NotFound, "no");
        assert!(a.headers.is_empty());
        assert!(!a.is_success());
    }

    #[test]
    fn refusals_keep_their_status_and_waits_say_when_to_retry() {
        let r = Rejection::new(ErrorKind::BatchTooLarge, "too many");
        let a = Answer::refused(&r);
        assert_eq!(a.status, StatusCode::PAYLOAD_TOO_LARGE);
        assert_eq!(a.body["error"], "batch_too_large");
        let a = Answer::unavailable("redis: down");
        assert_eq!(
            (a.status, a.header("retry-after")),
            (StatusCode::SERVICE_UNAVAILABLE, Some("1"))
        );
        assert_eq!(a.body["error"], "unavailable");
        let a = Answer::in_progress("wait");
        assert_eq!(
            (a.status, a.body["error"].as_str()),
            (StatusCode::CONFLICT, Some("in_progress"))
        );
    }

    #[test]
    fn outcome_unknown_carries_the_ids() {
        let a = Answer::outcome_unknown("kafka: gave up", &["a".into(), "b".into()]);
        assert_eq!(a.status, StatusCode::CONFLICT);
        assert_eq!(a.body["error"], "outcome_unknown");
        assert_eq!(a.body["ids"], json!(["a", "b"]));
        assert!(a.body["reason"]
            .as_str()
            .unwrap()
            .starts_with("kafka: gave up: the records may or may not have been written"));
    }

    #[test]
    fn responses_carry_the_extra_headers() {
        let r = Answer::new(StatusCode::ACCEPTED, json!({"id": "x"}))
            .with_header("location", "/v1/predictions/x")
            .with_header("bad header", "dropped")
            .into_response();
        assert_eq!(r.status(), StatusCode::ACCEPTED);
        assert_eq!(r.headers()["location"], "/v1/predictions/x");
        assert_eq!(r.headers()["content-type"], "application/json");
        assert!(!r.headers().contains_key("bad header"));
    }
}
