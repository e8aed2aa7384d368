//! Who is asking: the API key from the request's headers, and the tenant it belongs to.

use std::time::Duration;

use axum::http::{HeaderMap, StatusCode};
use redis::aio::ConnectionManager;

use super::answer::Answer;
use super::Api;
use crate::tenants::KeyLookup;
use crate::validate::{Code, ErrorKind, Rejection};

/// The API key: `Authorization: Bearer <key>` or `X-API-Key: <key>`.
pub fn api_key(headers: &HeaderMap) -> Option<String> {
    if let Some(v) = headers.get("authorization").and_then(|v| v.to_str().ok()) {
        let v = v.trim();
        if v.len() > 7 && v[..7].eq_ignore_ascii_case("bearer ") {
            let k = v[7..].trim();
            if !k.is_empty() {
                return Some(k.to_string());
            }
        }
    }
    headers
        .get("x-api-key")
        .and_then(|v| v.to_str().ok())
        .map(str::trim)
        .filter(|k| !k.is_empty())
        .map(str::to_string)
}

/// Who is asking, as far as the headers say.
pub(super) enum Caller {
    Tenant(String),
    Refused(Rejection),
    /// A key ingest has not seen lately, while too many such keys arrive: retry later.
    Throttled(Duration),
}

/// The 429 of a key not looked up (see [`Caller::Throttled`]).
pub(super) fn throttled(wait: Duration) -> Answer {
    metrics::counter!(crate::metric_names::HTTP_KEY_LOOKUPS_THROTTLED_TOTAL).increment(1);
    Answer::error(
        StatusCode::TOO_MANY_REQUESTS,
        Code::KeyLookupsThrottled,
        "too many requests with API keys this ingest has not seen lately; retry shortly",
    )
    .with_header(
        "retry-after",
        crate::ratelimit::retry_after_secs(wait).to_string(),
    )
}

/// The tenant of a request's API key, or why it has none.
pub(super) async fn authenticate(
    api: &Api,
    conn: &mut ConnectionManager,
    headers: &HeaderMap,
) -> redis::RedisResult<Caller> {
    let Some(key) = api_key(headers) else {
        return Ok(Caller::Refused(Rejection::new(
            ErrorKind::MissingApiKey,
            "missing API key: send `Authorization: Bearer <key>` or `X-API-Key: <key>`",
        )));
    };
    Ok(match api.registry.tenant_for_key(conn, &key).await? {
        KeyLookup::Tenant(t) => Caller::Tenant(t),
        KeyLookup::Unknown => {
            Caller::Refused(Rejection::new(ErrorKind::BadApiKey, "unknown API key"))
        }
        KeyLookup::Throttled(wait) => Caller::Throttled(wait),
    })
}

#[cfg(test)]
mod tests {
    use axum::http::HeaderValue;

    use super::*;

    #[test]
    fn api_keys_from_either_header() {
        let mut h = HeaderMap::new();
        assert_eq!(api_key(&h), None);
        h.insert("x-api-key", HeaderValue::from_static(" k1 "));
        assert_eq!(api_key(&h).as_deref(), Some("k1"));
        h.insert("authorization", HeaderValue::from_static("Bearer k2"));
        assert_eq!(api_key(&h).as_deref(), Some("k2"), "Authorization wins");
        h.insert("authorization", HeaderValue::from_static("Basic abc"));
        assert_eq!(api_key(&h).as_deref(), Some("k1"));
        h.insert("authorization", HeaderValue::from_static("bearer   "));
        h.remove("x-api-key");
        assert_eq!(api_key(&h), None);
    }
}
