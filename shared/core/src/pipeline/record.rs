//! The records a loop consumes ([`Consumed`]) and produces ([`Record`]), and the dead
//! letter a stage writes for a consumed record it refuses.

use rdkafka::message::{Header, Headers, OwnedHeaders};
use rdkafka::producer::BaseRecord;
use rdkafka::Message;
use std::sync::Arc;

use crate::dead_letter::ErrorKind;
use crate::messages::{encode, DeadLetter, SourceRef, DEAD_LETTER_KEY_MAX_BYTES};

/// One consumed Kafka message, owned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Consumed {
    /// Shared by every message a loop consumes (one topic), not copied per message.
    pub topic: Arc<str>,
    pub partition: i32,
    pub offset: i64,
    pub key: Option<Vec<u8>>,
    /// The value; empty for a null (tombstone) value.
    pub payload: Vec<u8>,
    pub headers: Vec<(String, Vec<u8>)>,
    /// The record's timestamp (ms since the epoch), when it has one.
    pub timestamp_ms: Option<i64>,
}

impl Consumed {
    /// The first header called `name`.
    pub fn header(&self, name: &str) -> Option<&[u8]> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_slice())
    }

    /// Where this message came from, for dead letters.
    pub fn source(&self) -> SourceRef {
        SourceRef {
            topic: self.topic.to_string(),
            partition: self.partition,
            offset: self.offset,
        }
    }

    /// Own message `m` of `topic` (the loop's one topic, held by the caller so that
    /// messages share it).
    pub fn from_message<M: Message>(m: &M, topic: &Arc<str>) -> Self {
        Consumed {
            topic: topic.clone(),
            partition: m.partition(),
            offset: m.offset(),
            key: m.key().map(<[u8]>::to_vec),
            payload: m.payload().unwrap_or_default().to_vec(),
            headers: m
                .headers()
                .map(|h| {
                    h.iter()
                        .map(|h| (h.key.to_string(), h.value.unwrap_or_default().to_vec()))
                        .collect()
                })
                .unwrap_or_default(),
            timestamp_ms: m.timestamp().to_millis(),
        }
    }
}

/// One record to produce.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    pub topic: String,
    pub key: Vec<u8>,
    pub payload: Vec<u8>,
    pub headers: Vec<(String, Vec<u8>)>,
}

impl Record {
    pub fn new(topic: impl Into<String>, key: impl Into<Vec<u8>>, payload: Vec<u8>) -> Self {
        Record {
            topic: topic.into(),
            key: key.into(),
            payload,
            headers: Vec::new(),
        }
    }

    pub fn header(mut self, name: impl Into<String>, value: impl Into<Vec<u8>>) -> Self {
        self.headers.push((name.into(), value.into()));
        self
    }

    /// Carry the W3C trace context of the input (its `traceparent`, when it has one) to
    /// this output, so a trace follows the record from service to service.
    pub fn traceparent(self, value: Option<&[u8]>) -> Self {
        match value {
            Some(tp) => self.header("traceparent", tp),
            None => self,
        }
    }

    /// rdkafka headers for this record.
    pub fn owned_headers(&self) -> OwnedHeaders {
        let mut h = OwnedHeaders::new_with_capacity(self.headers.len());
        for (k, v) in &self.headers {
            h = h.insert(Header {
                key: k,
                value: Some(v),
            });
        }
        h
    }

    /// The rdkafka record to send.
    pub fn base_record(&self) -> BaseRecord<'_, [u8], [u8]> {
        let r = BaseRecord::to(&self.topic)
            .key(self.key.as_slice())
            .payload(self.payload.as_slice());
        // An empty header list still costs librdkafka an allocation per record.
        if self.headers.is_empty() {
            r
        } else {
            r.headers(self.owned_headers())
        }
    }
}

/// What a dead letter keeps of a refused input: its bytes, key and headers, and where it
/// was consumed.
#[derive(Debug, Clone, Copy)]
pub struct Refused<'a> {
    pub original: &'a [u8],
    pub key: Option<&'a [u8]>,
    pub headers: &'a [(String, Vec<u8>)],
    pub source: &'a SourceRef,
}

/// A dead letter for a consumed message: the original bytes and key (base64, bounded as
/// [`DeadLetter::new`] says), where it came from, which stage refused it, why. Keyed like
/// the original; its headers kept up to [`DEAD_LETTER_HEADER_MAX_BYTES`] in all.
pub fn dead_letter(
    dlq_topic: &str,
    stage: &str,
    msg: &Consumed,
    error_kind: ErrorKind,
    reason: &str,
    tenant: Option<String>,
) -> Record {
    let source = msg.source();
    let refused = Refused {
        original: &msg.payload,
        key: msg.key.as_deref(),
        headers: &msg.headers,
        source: &source,
    };
    dead_letter_of(dlq_topic, stage, refused, error_kind, reason, tenant)
}

/// [`dead_letter`] for an input a stage holds in its own form (the inference worker
/// refuses decoded requests, whose original it serializes again).
pub fn dead_letter_of(
    dlq_topic: &str,
    stage: &str,
    refused: Refused<'_>,
    error_kind: ErrorKind,
    reason: &str,
    tenant: Option<String>,
) -> Record {
    let dl = DeadLetter::new(
        refused.original,
        refused.key,
        Some(refused.source.clone()),
        stage,
        error_kind,
        reason,
        tenant,
    );
    let mut budget = DEAD_LETTER_HEADER_MAX_BYTES;
    let headers = refused
        .headers
        .iter()
        .filter(|(k, v)| match budget.checked_sub(k.len() + v.len()) {
            Some(left) => {
                budget = left;
                true
            }
            None => false,
        })
        .cloned()
        .collect();
    let key = refused.key.unwrap_or_default();
    Record {
        topic: dlq_topic.to_string(),
        key: key[..key.len().min(DEAD_LETTER_KEY_MAX_BYTES)].to_vec(),
        payload: encode(&dl),
        headers,
    }
}

/// Most header bytes (names and values) a dead letter copies from its original: with the
/// original's bytes bounded, this keeps the whole record well under Kafka's 1 MB default.
pub const DEAD_LETTER_HEADER_MAX_BYTES: usize = 64 * 1024;

#[cfg(test)]
mod tests {
    use super::*;
    use base64::Engine as _;

    fn msg(topic: &str, partition: i32, offset: i64) -> Consumed {
        Consumed {
            topic: topic.into(),
            partition,
            offset,
            key: Some(b"k".to_vec()),
            payload: vec![0xff, b'x'],
            headers: vec![("tenant".into(), b"acme".to_vec())],
            timestamp_ms: None,
        }
    }

    #[test]
    fn dead_letters_keep_bytes_source_and_reason() {
        let r = dead_letter(
            "dlq",
            "ingest",
            &msg("raw", 2, 41),
            ErrorKind::NotUtf8,
            "not UTF-8",
            None,
        );
        assert_eq!(
            (r.topic.as_str(), r.key.as_slice()),
            ("dlq", b"k".as_slice())
        );
        assert_eq!(r.headers, vec![("tenant".to_string(), b"acme".to_vec())]);
        let dl: DeadLetter = crate::messages::decode(&r.payload).unwrap();
        assert_eq!(dl.original_base64, "/3g=");
        assert_eq!(dl.key_base64.as_deref(), Some("aw=="));
        assert_eq!(
            dl.source,
            Some(SourceRef {
                topic: "raw".into(),
                partition: 2,
                offset: 41
            })
        );
        assert_eq!(
            (dl.stage.as_str(), dl.error_kind.as_str()),
            ("ingest", "not_utf8")
        );
        let v: serde_json::Value = serde_json::from_slice(&r.payload).unwrap();
        crate::schema::validate("dead_letter/v1", &v).unwrap();
        assert_eq!(dl.original_len, None, "kept whole");
    }

    #[test]
    fn a_dead_letter_of_the_largest_record_fits_in_one_kafka_record() {
        // A record as large as a broker takes by default (1 MB), with a quoted 1 MB value in
        // its reason and a megabyte of headers: the dead letter must still be producible.
        let mut m = msg("raw", 0, 7);
        m.payload = vec![b'x'; 1_000_000];
        m.key = Some(vec![b'k'; 256 * 1024]);
        m.headers = (0..100)
            .map(|i| (format!("h{i}"), vec![b'v'; 10_000]))
            .collect();
        let reason = format!("field \"schema\": found \"{}\"", "y".repeat(1_000_000));
        let r = dead_letter("dlq", "ingest", &m, ErrorKind::WrongSchema, &reason, None);
        let header_bytes: usize = r.headers.iter().map(|(k, v)| k.len() + v.len()).sum();
        assert!(
            header_bytes <= DEAD_LETTER_HEADER_MAX_BYTES && !r.headers.is_empty(),
            "{header_bytes}"
        );
        let size = r.payload.len() + r.key.len() + header_bytes;
        assert!(size < 600 * 1024, "{size} bytes");
        assert_eq!(r.key.len(), crate::messages::DEAD_LETTER_KEY_MAX_BYTES);
        let dl: DeadLetter = crate::messages::decode(&r.payload).unwrap();
        assert_eq!(dl.original_len, Some(1_000_000));
        let kept = base64::engine::general_purpose::STANDARD
            .decode(&dl.original_base64)
            .unwrap();
        assert_eq!(kept.len(), crate::messages::DEAD_LETTER_ORIGINAL_MAX_BYTES);
        assert!(
            dl.reason.starts_with("field \"schema\"")
                && dl.reason.ends_with("(reason cut at 4096 characters)")
        );
        let v: serde_json::Value = serde_json::from_slice(&r.payload).unwrap();
        crate::schema::validate("dead_letter/v1", &v).unwrap();
    }

    #[test]
    fn a_reason_is_cut_on_a_character_boundary() {
        let reason = "é".repeat(5_000);
        let dl = DeadLetter::new(b"", None, None, "ingest", ErrorKind::NotJson, &reason, None);
        assert!(
            dl.reason.starts_with(&"é".repeat(4_096)) && !dl.reason.starts_with(&"é".repeat(4_097))
        );
    }
}
