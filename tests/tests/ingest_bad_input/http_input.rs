//! The requests posted to ingest: 100 single texts, 20 batches of 10 (5 without ids)
//! and 10 batches of 10 examples, all answered 202; 260 refused ones of 8 kinds; and
//! later 40 duplicates, answered 409.

use super::*;

/// POST `body` to `path` on ingest with an API key (or none).
async fn send(addr: &str, key: Option<&str>, path: &str, body: &str) -> HttpResponse {
    let auth = key.map(|k| format!("Bearer {k}"));
    let headers: Vec<(&str, &str)> = auth.iter().map(|a| ("Authorization", a.as_str())).collect();
    http_request(addr, "POST", path, &headers, body.as_bytes())
        .await
        .expect("POST")
}

/// The valid requests: (API key, path, body).
fn valid_requests(
    valid_labelled: &mut BTreeMap<String, bool>,
) -> Vec<(&'static str, &'static str, String)> {
    let mut http_valid = Vec::new();
    for i in 0..100 {
        let key = if i % 2 == 0 { "key-acme" } else { "key-beta" };
        valid_labelled.insert(format!("v-h-s-{i}"), false);
        let body = json!({
            "text": format!("hello world {i}"), "task": "sms_spam", "id": format!("v-h-s-{i}"),
        });
        http_valid.push((key, "/v1/infer", body.to_string()));
    }
    for b in 0..20 {
        let items: Vec<serde_json::Value> = (0..10)
            .map(|k| {
                if b < 5 {
                    let ident = format!("~vhb{b}.{k}~");
                    valid_labelled.insert(ident.clone(), false);
                    json!({"text": format!("a lazy dog {ident}")})
                } else {
                    valid_labelled.insert(format!("v-h-b-{b}-{k}"), false);
                    json!({"text": format!("a lazy dog {b} {k}"), "id": format!("v-h-b-{b}-{k}")})
                }
            })
            .collect();
        http_valid.push((
            "key-acme",
            "/v1/infer",
            json!({"inputs": items}).to_string(),
        ));
    }
    for b in 0..10 {
        let items: Vec<serde_json::Value> = (0..10)
            .map(|k| {
                valid_labelled.insert(format!("v-h-e-{b}-{k}"), true);
                json!({
                    "text": format!("good film {b} {k}"), "task": "sms_spam", "label": "ham",
                    "id": format!("v-h-e-{b}-{k}"),
                })
            })
            .collect();
        http_valid.push((
            "key-beta",
            "/v1/examples",
            json!({"examples": items}).to_string(),
        ));
    }
    http_valid
}

/// The requests ingest must refuse, each with a marker in its body.
fn bad_requests() -> Vec<BadRequest> {
    let bad = |key, path, body: String, status, kind, reason: &str| BadRequest {
        key,
        path,
        body,
        status,
        kind,
        reason: reason.to_string(),
    };
    let mut http_bad = Vec::new();
    for i in 0..50 {
        let m = marker("badkey", i);
        http_bad.push(bad(
            Some("key-wrong"),
            "/v1/infer",
            json!({"text": m}).to_string(),
            401,
            "bad_api_key",
            "unknown API key",
        ));
    }
    for i in 0..30 {
        let m = marker("nokey", i);
        http_bad.push(bad(
            None,
            "/v1/infer",
            json!({"text": m}).to_string(),
            401,
            "missing_api_key",
            "missing API key",
        ));
        let m = marker("big", i);
        let items: Vec<_> = (0..11)
            .map(|k| json!({"text": format!("{m} {k}")}))
            .collect();
        http_bad.push(bad(
            Some("key-acme"),
            "/v1/infer",
            json!({"inputs": items}).to_string(),
            413,
            "batch_too_large",
            r#"field "inputs": 11 items, more than the maximum of 10"#,
        ));
        let m = marker("forbid", i);
        http_bad.push(bad(
            Some("key-acme"),
            "/v1/infer",
            json!({"text": m, "tenant": "beta"}).to_string(),
            403,
            "forbidden_tenant",
            r#"field "tenant": this API key belongs to tenant "acme", found "beta""#,
        ));
        let m = marker("nojson", i);
        http_bad.push(bad(
            Some("key-acme"),
            "/v1/infer",
            format!(r#"{{"text": "{m}""#),
            400,
            "not_json",
            "body: not JSON",
        ));
        let m = marker("notext", i);
        http_bad.push(bad(
            Some("key-beta"),
            "/v1/infer",
            json!({"task": "sms_spam", "attributes": {"m": m}}).to_string(),
            400,
            "missing_field",
            r#"missing field "text""#,
        ));
        let m = marker("label", i);
        http_bad.push(bad(
            Some("key-beta"),
            "/v1/examples",
            json!({"text": m, "task": "sms_spam", "label": "eggs"}).to_string(),
            400,
            "unknown_label",
            r#"field "label": "eggs" is not a label of task "sms_spam""#,
        ));
        let m = marker("type", i);
        http_bad.push(bad(
            Some("key-acme"),
            "/v1/infer",
            json!({"text": 5, "attributes": {"m": m}}).to_string(),
            400,
            "wrong_type",
            r#"field "text": 5 is not of type "string""#,
        ));
    }
    http_bad
}

/// Post the valid requests (each answered 202), then the refused ones (each answered
/// with its status, error kind and reason).
pub(crate) async fn post_all(addr: &str, sent: &mut Sent) {
    let http_valid = valid_requests(&mut sent.valid_labelled);
    assert_eq!(sent.valid_labelled.len(), 1000);
    let answers: Vec<HttpResponse> = futures::stream::iter(
        http_valid
            .iter()
            .map(|(k, p, b)| send(addr, Some(*k), p, b)),
    )
    .buffered(8)
    .collect()
    .await;
    for (a, (_, _, body)) in answers.iter().zip(&http_valid) {
        assert_eq!(a.status, 202, "valid request {body} → {}", a.body);
    }
    let http_bad = bad_requests();
    let answers: Vec<HttpResponse> =
        futures::stream::iter(http_bad.iter().map(|b| send(addr, b.key, b.path, &b.body)))
            .buffered(8)
            .collect()
            .await;
    for (a, b) in answers.iter().zip(&http_bad) {
        assert_eq!(a.status, b.status, "{} → {}", b.body, a.body);
        let v = a.json();
        assert_eq!(v["error"], b.kind, "{}", a.body);
        assert!(
            v["reason"].as_str().unwrap().contains(b.reason.as_str()),
            "{} lacks {}",
            a.body,
            b.reason
        );
    }
    sent.http_bad.extend(http_bad);
}

/// 40 requests reusing the ids of accepted ones, each answered 409 `duplicate_id`.
pub(crate) async fn post_duplicates(addr: &str, sent: &mut Sent) {
    let dup_http: Vec<BadRequest> = (0..40)
        .map(|i| {
            let key = if i % 2 == 0 { "key-acme" } else { "key-beta" };
            let tenant = if i % 2 == 0 { "acme" } else { "beta" };
            let m = marker("dup", i);
            BadRequest {
                key: Some(key),
                path: "/v1/infer",
                body: json!({"text": m, "id": format!("v-h-s-{i}")}).to_string(),
                status: 409,
                kind: "duplicate_id",
                reason: format!(
                    "field \"id\": \"v-h-s-{i}\" was already used by an earlier request of \
                     tenant \"{tenant}\""
                ),
            }
        })
        .collect();
    for b in &dup_http {
        let a = send(addr, b.key, b.path, &b.body).await;
        assert_eq!(a.status, b.status, "{} → {}", b.body, a.body);
        assert_eq!(a.json()["error"], b.kind);
        assert!(
            a.body.contains(&b.reason.replace('"', "\\\"")),
            "{} lacks {}",
            a.body,
            b.reason
        );
    }
    sent.http_bad.extend(dup_http);
}
