//! The worker's queue: consumed requests decoded (or refused) and waiting for a batch,
//! with their deadlines. Pure: tested without a broker.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use aifab_core::dead_letter::ErrorKind;
use aifab_core::messages::{decode, InferenceRequest, SourceRef};
use aifab_core::pipeline::Consumed;
use aifab_model::batcher::Pending;

/// Why a consumed message is not a request this worker can serve: it goes to the DLQ.
#[derive(Debug, Clone, PartialEq)]
pub struct Unservable {
    pub kind: ErrorKind,
    pub reason: String,
    /// The message's bytes, as consumed.
    pub original: Vec<u8>,
}

/// One consumed message waiting in the queue.
#[derive(Debug)]
pub struct Queued {
    pub source: SourceRef,
    pub key: Option<Vec<u8>>,
    pub headers: Vec<(String, Vec<u8>)>,
    /// The decoded request, or why it could not be decoded.
    pub request: Result<InferenceRequest, Unservable>,
    pub pending: Pending,
}

impl Queued {
    /// Decode a consumed message for `task`, its deadline counted from now.
    pub fn new(m: Consumed, task: &str) -> Queued {
        let now = Instant::now();
        let unservable = |kind, reason: String, original: Vec<u8>| {
            Err(Unservable {
                kind,
                reason,
                original,
            })
        };
        let request = match decode::<InferenceRequest>(&m.payload) {
            Err(e) => unservable(e.kind(), e.to_string(), m.payload),
            Ok(r) if r.task != task => unservable(
                ErrorKind::WrongTask,
                format!("task: this worker serves \"{task}\", found \"{}\"", r.task),
                m.payload,
            ),
            Ok(r) if r.input_ids.is_empty() => unservable(
                ErrorKind::MissingField,
                "input_ids: expected at least one token, found none".into(),
                m.payload,
            ),
            Ok(r) => Ok(r),
        };
        let deadline = request
            .as_ref()
            .ok()
            .and_then(|r| deadline_at(now, aifab_core::now_ms(), r.received_at_ms, r.deadline_ms?));
        let tokens = request.as_ref().map(|r| r.input_ids.len()).unwrap_or(1);
        Queued {
            source: SourceRef {
                topic: m.topic.to_string(),
                partition: m.partition,
                offset: m.offset,
            },
            key: m.key,
            headers: m.headers,
            request,
            pending: Pending {
                tokens,
                enqueued_at: now,
                deadline,
            },
        }
    }
}

/// Forget the queued messages of revoked partitions: their next owner (maybe this worker
/// again) consumes them from the committed offset.
pub fn drop_revoked(queue: &mut Vec<Queued>, revoked: &HashSet<i32>) {
    let before = queue.len();
    queue.retain(|q| !revoked.contains(&q.source.partition));
    tracing::info!(
        dropped = before - queue.len(),
        "dropped queued messages of revoked partitions"
    );
}

/// When a request received at `received_at_ms` (wall clock) with `deadline_ms` expires, as
/// an `Instant` given that it is `now` / `now_ms`. The deadline counts from when ingest
/// received the request, not from now. The fields come from outside input, so the
/// arithmetic saturates: a receipt in the future counts as now, one in the far past (or a
/// deadline of 0) has already expired, and a deadline too far ahead to represent is no
/// deadline (`None`) rather than an `Instant` overflow (a panic).
pub fn deadline_at(
    now: Instant,
    now_ms: i64,
    received_at_ms: i64,
    deadline_ms: u64,
) -> Option<Instant> {
    let age_ms = u64::try_from(now_ms.saturating_sub(received_at_ms)).unwrap_or(0);
    match deadline_ms.checked_sub(age_ms) {
        Some(left) => now.checked_add(Duration::from_millis(left)),
        None => Some(now),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use aifab_core::messages::{encode, tag};

    #[test]
    fn deadlines_count_from_receipt() {
        let now = Instant::now();
        assert_eq!(
            deadline_at(now, 10_000, 9_000, 5_000),
            Some(now + Duration::from_millis(4_000))
        );
        assert_eq!(
            deadline_at(now, 10_000, 2_000, 5_000),
            Some(now),
            "already past"
        );
        assert_eq!(
            deadline_at(now, 10_000, 12_000, 5_000),
            Some(now + Duration::from_millis(5_000)),
            "receipt in the future"
        );
    }

    /// Regression: a request with `deadline_ms` u64::MAX (or `received_at_ms` i64::MIN)
    /// panicked the worker ("overflow when adding duration to instant" / subtract with
    /// overflow), a poison message that crash-looped its partition.
    #[test]
    fn extreme_fields_do_not_overflow() {
        let now = Instant::now();
        let now_ms = aifab_core::now_ms();
        assert!(deadline_at(now, now_ms, now_ms, u64::MAX)
            .is_none_or(|d| d > now + Duration::from_secs(86_400)));
        assert!(deadline_at(now, now_ms, i64::MIN, u64::MAX).is_none_or(|d| d > now));
        assert_eq!(deadline_at(now, now_ms, i64::MIN, 1_000), Some(now));
        assert_eq!(
            deadline_at(now, i64::MIN, i64::MAX, 1_000),
            Some(now + Duration::from_millis(1_000))
        );
        assert_eq!(deadline_at(now, now_ms, i64::MAX, 0), Some(now));
    }

    fn consumed(partition: i32, payload: Vec<u8>, headers: Vec<(String, Vec<u8>)>) -> Consumed {
        Consumed {
            topic: "in".into(),
            partition,
            offset: 40,
            key: Some(b"r-1".to_vec()),
            payload,
            headers,
            timestamp_ms: None,
        }
    }

    #[test]
    fn revoking_drops_the_queued_messages_of_those_partitions() {
        let mut queue: Vec<Queued> = [0, 1, 0]
            .into_iter()
            .map(|p| Queued::new(consumed(p, b"{".to_vec(), vec![]), "t"))
            .collect();
        drop_revoked(&mut queue, &HashSet::from([0]));
        assert_eq!(
            queue.iter().map(|q| q.source.partition).collect::<Vec<_>>(),
            vec![1]
        );
    }

    #[test]
    fn what_cannot_be_served_says_why_and_keeps_its_bytes() {
        let q = Queued::new(consumed(0, b"{".to_vec(), vec![]), "t");
        let e = q.request.unwrap_err();
        assert_eq!((e.kind, e.original), (ErrorKind::NotJson, b"{".to_vec()));
        let mut req = request();
        req.task = "other".into();
        let q = Queued::new(consumed(0, encode(&req), vec![]), "t");
        assert_eq!(q.request.unwrap_err().kind, ErrorKind::WrongTask);
        req.task = "t".into();
        req.input_ids.clear();
        let q = Queued::new(consumed(0, encode(&req), vec![]), "t");
        assert_eq!(q.request.unwrap_err().kind, ErrorKind::MissingField);
    }

    fn request() -> InferenceRequest {
        InferenceRequest {
            schema: tag(),
            id: "r-1".into(),
            tenant: "acme".into(),
            task: "t".into(),
            text: "hi".into(),
            input_ids: vec![2, 7, 3],
            token_count: 3,
            truncation: aifab_core::messages::Truncation::None,
            received_at_ms: 1,
            deadline_ms: None,
            priority: 0,
            attributes: Default::default(),
        }
    }

    #[test]
    fn a_request_keeps_its_headers_for_its_prediction() {
        // The feature stage's dedupe cache learns answers from the headers its requests
        // carry (`dedupe-key`), which every output of a row repeats.
        let headers = vec![
            ("tenant".to_string(), b"acme".to_vec()),
            ("dedupe-key".to_string(), b"ab12".to_vec()),
        ];
        let q = Queued::new(consumed(2, encode(&request()), headers.clone()), "t");
        assert!(q.request.is_ok());
        assert_eq!((q.source.partition, q.source.offset), (2, 40));
        assert_eq!(q.headers, headers);
    }
}
