//! The record ingest writes to `aifab.features.in` for an accepted input, whichever path
//! it came by: keyed by its id, with the tenant, the priority of a deprioritised tenant
//! and the caller's trace context as headers.

use aifab_core::messages::{encode, IngestRecord};
use aifab_core::pipeline::Record;

/// `rec` must have its id by now (both paths assign one first).
pub fn features_record(
    topic: &str,
    rec: &IngestRecord,
    priority: Option<u8>,
    traceparent: Option<&[u8]>,
) -> Record {
    let id = rec.id.clone().unwrap_or_default();
    let mut r = Record::new(topic, id, encode(rec)).header("tenant", rec.tenant.as_str());
    if let Some(p) = priority {
        r = r.header("priority", p.to_string());
    }
    r.traceparent(traceparent)
}

#[cfg(test)]
mod tests {
    use aifab_core::messages::tag;

    use super::*;

    #[test]
    fn records_carry_tenant_priority_and_trace_headers() {
        let rec = IngestRecord {
            schema: tag(),
            id: Some("r1".into()),
            tenant: "acme".into(),
            text: "hi".into(),
            task: Some("t".into()),
            label: None,
            deadline_ms: None,
            received_at_ms: Some(5),
            attributes: Default::default(),
        };
        let r = features_record("f", &rec, Some(9), Some(b"00-ab-cd-01"));
        assert_eq!(r.topic, "f");
        assert_eq!(r.key, b"r1");
        assert_eq!(r.payload, encode(&rec));
        let headers: Vec<(&str, &[u8])> = r
            .headers
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_slice()))
            .collect();
        assert_eq!(
            headers,
            [
                ("tenant", &b"acme"[..]),
                ("priority", b"9"),
                ("traceparent", b"00-ab-cd-01")
            ]
        );
        let plain = features_record("f", &rec, None, None);
        assert_eq!(plain.headers.len(), 1);
    }
}
