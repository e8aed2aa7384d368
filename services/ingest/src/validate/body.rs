//! An HTTP body taken apart: one item, or a batch under the route's field; items get the
//! key's tenant and the schema filled in, then are checked as records.

use std::collections::HashMap;

use aifab_core::messages::{IngestRecord, Message as _};
use serde_json::{Map, Value};

use super::record::{check_record, parse_json, record_too_large};
use super::{ErrorKind, Rejection, Rules};

/// The two POST routes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route {
    /// `POST /v1/infer`: unlabelled texts; a batch is `{"inputs": [...]}`.
    Infer,
    /// `POST /v1/examples`: labelled texts; a batch is `{"examples": [...]}`.
    Examples,
}

impl Route {
    pub fn name(self) -> &'static str {
        match self {
            Route::Infer => "infer",
            Route::Examples => "examples",
        }
    }
    pub fn batch_field(self) -> &'static str {
        match self {
            Route::Infer => "inputs",
            Route::Examples => "examples",
        }
    }
}

/// A parsed HTTP body: the records, and whether it was a batch.
#[derive(Debug, Clone, PartialEq)]
pub struct Parsed {
    pub records: Vec<IngestRecord>,
    pub batch: bool,
}

/// An HTTP body for `route`, sent with an API key of `tenant`. Items may leave out
/// `schema` and `tenant` (filled in); a `tenant` other than the key's is refused (403).
/// Ids are not assigned here.
pub fn http_body(
    bytes: &[u8],
    route: Route,
    tenant: &str,
    rules: &Rules,
) -> Result<Parsed, Rejection> {
    let with_tenant = |r: Rejection| r.with_tenant(Some(tenant));
    let value = parse_json(bytes, "body").map_err(with_tenant)?;
    let Value::Object(mut obj) = value else {
        return Err(with_tenant(Rejection::new(
            ErrorKind::WrongType,
            format!(
                "body: expected a JSON object (one item, or {{\"{}\": [...]}} for a batch)",
                route.batch_field()
            ),
        )));
    };
    let field = route.batch_field();
    let (items, batch): (Vec<(String, Value)>, bool) = match obj.remove(field) {
        None => (vec![(String::new(), Value::Object(obj))], false),
        Some(list) => {
            if let Some(extra) = obj.keys().next() {
                return Err(with_tenant(Rejection::new(
                    ErrorKind::UnexpectedField,
                    format!("unexpected field \"{extra}\": a batch body has only \"{field}\""),
                )));
            }
            let Value::Array(list) = list else {
                return Err(with_tenant(Rejection::new(
                    ErrorKind::WrongType,
                    format!("field \"{field}\": expected an array of items"),
                )));
            };
            if list.is_empty() {
                return Err(with_tenant(Rejection::new(
                    ErrorKind::InvalidValue,
                    format!("field \"{field}\": [] has fewer than 1 item"),
                )));
            }
            if list.len() > rules.max_batch_items {
                return Err(with_tenant(Rejection::new(
                    ErrorKind::BatchTooLarge,
                    format!(
                        "field \"{field}\": {} items, more than the maximum of {} per request",
                        list.len(),
                        rules.max_batch_items
                    ),
                )));
            }
            (
                list.into_iter()
                    .enumerate()
                    .map(|(i, v)| (format!("{field}[{i}]."), v))
                    .collect(),
                true,
            )
        }
    };
    let mut records = Vec::with_capacity(items.len());
    let mut seen_ids: HashMap<String, String> = HashMap::new();
    for (name, item) in items {
        let Value::Object(mut item) = item else {
            return Err(with_tenant(Rejection::new(
                ErrorKind::WrongType,
                format!(
                    "field \"{}\": expected an object",
                    name.trim_end_matches('.')
                ),
            )));
        };
        fill_item(&mut item, route, tenant, &name)?;
        // Only a body longer than a record can hold an item that is.
        if bytes.len() > rules.max_record_bytes {
            let len = serde_json::to_vec(&item)
                .map(|v| v.len())
                .unwrap_or(usize::MAX);
            if len > rules.max_record_bytes {
                let what = if name.is_empty() {
                    "body".to_string()
                } else {
                    name.trim_end_matches('.').to_string()
                };
                return Err(with_tenant(record_too_large(&what, len, rules)));
            }
        }
        let rec = check_record(Value::Object(item), rules, &name).map_err(with_tenant)?;
        if let Some(id) = &rec.id {
            if let Some(first) = seen_ids.insert(id.clone(), name.clone()) {
                return Err(with_tenant(Rejection::new(
                    ErrorKind::DuplicateId,
                    format!("field \"{name}id\": \"{id}\" repeats {first}id of the same request"),
                )));
            }
        }
        records.push(rec);
    }
    Ok(Parsed { records, batch })
}

/// Fill in `schema` and `tenant`; check the route's label rule.
fn fill_item(
    item: &mut Map<String, Value>,
    route: Route,
    tenant: &str,
    name: &str,
) -> Result<(), Rejection> {
    item.entry("schema")
        .or_insert_with(|| Value::String(IngestRecord::SCHEMA.into()));
    match item.get("tenant") {
        None => {
            item.insert("tenant".into(), Value::String(tenant.into()));
        }
        Some(Value::String(t)) if t == tenant => {}
        Some(other) => {
            return Err(Rejection::new(
                ErrorKind::ForbiddenTenant,
                format!(
                    "field \"{name}tenant\": this API key belongs to tenant \"{tenant}\", \
                     found {other}"
                ),
            )
            .with_tenant(Some(tenant)))
        }
    }
    match (route, item.contains_key("label")) {
        (Route::Infer, true) => Err(Rejection::new(
            ErrorKind::UnexpectedField,
            format!(
                "unexpected field \"{name}label\": /v1/infer takes unlabelled texts; send \
                 labelled ones to /v1/examples"
            ),
        )
        .with_tenant(Some(tenant))),
        (Route::Examples, false) => Err(Rejection::new(
            ErrorKind::MissingField,
            format!(
                "missing field \"{name}label\": /v1/examples takes labelled texts; send \
                 unlabelled ones to /v1/infer"
            ),
        )
        .with_tenant(Some(tenant))),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::super::testing::{rejects, rules};
    use super::*;

    #[test]
    fn http_single_and_batch_bodies() {
        let p = http_body(
            br#"{"text":"hello","task":"sms_spam"}"#,
            Route::Infer,
            "acme",
            &rules(),
        )
        .unwrap();
        assert!(!p.batch);
        assert_eq!(p.records[0].tenant, "acme");
        let p = http_body(
            br#"{"inputs":[{"text":"a"},{"text":"b","id":"i2","tenant":"acme"}]}"#,
            Route::Infer,
            "acme",
            &rules(),
        )
        .unwrap();
        assert!(p.batch);
        assert_eq!(p.records.len(), 2);
        let p = http_body(
            br#"{"examples":[{"text":"a","label":"ham","task":"sms_spam"}]}"#,
            Route::Examples,
            "acme",
            &rules(),
        )
        .unwrap();
        assert_eq!(p.records[0].label.as_deref(), Some("ham"));
    }

    #[test]
    fn http_errors_name_the_field_and_map_to_statuses() {
        let r = rules();
        let e = rejects(
            http_body(
                br#"{"inputs":[{"text":"a"},{"txt":"b"}]}"#,
                Route::Infer,
                "acme",
                &r,
            ),
            ErrorKind::MissingField,
            "missing field \"inputs[1].text\"",
        );
        assert_eq!((e.status, e.tenant.as_deref()), (400, Some("acme")));
        rejects(
            http_body(
                br#"{"inputs":[{"text":"a","deadline_ms":-1}]}"#,
                Route::Infer,
                "acme",
                &r,
            ),
            ErrorKind::InvalidValue,
            "field \"inputs[0].deadline_ms\"",
        );
        let e = rejects(
            http_body(br#"{"text":"a","tenant":"beta"}"#, Route::Infer, "acme", &r),
            ErrorKind::ForbiddenTenant,
            "belongs to tenant \"acme\", found \"beta\"",
        );
        assert_eq!(e.status, 403);
        let e = rejects(
            http_body(
                br#"{"inputs":[{"text":"a"},{"text":"b"},{"text":"c"},{"text":"d"}]}"#,
                Route::Infer,
                "acme",
                &r,
            ),
            ErrorKind::BatchTooLarge,
            "4 items, more than the maximum of 3",
        );
        assert_eq!(e.status, 413);
        rejects(
            http_body(br#"{"inputs":[]}"#, Route::Infer, "acme", &r),
            ErrorKind::InvalidValue,
            "fewer than 1 item",
        );
        rejects(
            http_body(br#"{"inputs":{}}"#, Route::Infer, "acme", &r),
            ErrorKind::WrongType,
            "expected an array",
        );
        rejects(
            http_body(br#"{"inputs":[1]}"#, Route::Infer, "acme", &r),
            ErrorKind::WrongType,
            "field \"inputs[0]\"",
        );
        rejects(
            http_body(br#"{"inputs":[],"x":1}"#, Route::Infer, "acme", &r),
            ErrorKind::UnexpectedField,
            "\"x\"",
        );
        rejects(
            http_body(br#"{"text":"a","label":"ham"}"#, Route::Infer, "acme", &r),
            ErrorKind::UnexpectedField,
            "label",
        );
        rejects(
            http_body(br#"{"text":"a"}"#, Route::Examples, "acme", &r),
            ErrorKind::MissingField,
            "missing field \"label\"",
        );
        rejects(
            http_body(
                br#"{"examples":[{"text":"a","label":"nope","task":"sms_spam"}]}"#,
                Route::Examples,
                "acme",
                &r,
            ),
            ErrorKind::UnknownLabel,
            "field \"examples[0].label\"",
        );
        let e = rejects(
            http_body(
                br#"{"inputs":[{"text":"a","id":"x"},{"text":"b","id":"x"}]}"#,
                Route::Infer,
                "acme",
                &r,
            ),
            ErrorKind::DuplicateId,
            "field \"inputs[1].id\": \"x\" repeats inputs[0].id",
        );
        assert_eq!(e.status, 409);
        rejects(
            http_body(b"[1]", Route::Infer, "acme", &r),
            ErrorKind::WrongType,
            "expected a JSON object",
        );
        rejects(
            http_body(b"\xc3\x28", Route::Infer, "acme", &r),
            ErrorKind::NotUtf8,
            "body: not UTF-8",
        );
        rejects(
            http_body(b"{", Route::Infer, "acme", &r),
            ErrorKind::NotJson,
            "body: not JSON",
        );
        rejects(
            http_body(
                br#"{"schema":"ingest.raw/v9","text":"a"}"#,
                Route::Infer,
                "acme",
                &r,
            ),
            ErrorKind::WrongSchema,
            "ingest.raw/v9",
        );
    }
}
