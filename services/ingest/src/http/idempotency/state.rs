//! An Idempotency-Key's life as pure decisions over the record stored under it in Redis
//! (the reads and writes are in the parent module).
//!
//! `pending` (claimed, short TTL: nothing sent yet) → `sending` (set just before the
//! records go to Kafka, with `until_ms`, the ids' in-flight time) → `undecided` (the send
//! timed out; the write is settling, its ids noted) → `done` (the answer, replayed to every
//! retry). A request whose answer created nothing releases the key instead, so a retry
//! starts afresh. A `sending` or `undecided` key past its `until_ms` was left by a request
//! that stopped: its records may have been written, so it answers `outcome_unknown`.

use aifab_core::pipeline::Outcome;
use axum::http::StatusCode;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::http::answer::Answer;
use crate::validate::Code;

/// Where a key's request is. Stored as the lowercase name (`"state": "pending"`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum State {
    Pending,
    Sending,
    Undecided,
    Done,
}

/// The JSON stored under a key.
///
/// The fields are in alphabetical order and absent ones are left out: the values were
/// written with `json!` before (serde_json without `preserve_order` sorts keys), and the
/// bytes stay those. They matter beyond reading: a request changes the key only while it
/// still holds the exact value the request wrote.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Record {
    /// `done`: the answer's body.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub body: Option<Value>,
    /// SHA-256 (hex) of the request body the key was first used with.
    pub body_sha256: String,
    /// The request that claimed the key (a UUIDv7): tells its values from those of a
    /// later request with the same key and body.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub by: Option<String>,
    /// `undecided`: the ids whose write is settling.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ids: Option<Vec<String>>,
    /// `done`: the answer's `Location`, if it had one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub location: Option<String>,
    pub state: State,
    /// `done`: the answer's status.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<u16>,
    /// `sending`, `undecided`: when the request's ids stop being in flight; a key still in
    /// one of those states by then was left by a request that stopped.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub until_ms: Option<i64>,
}

impl Record {
    /// A fresh claim by request `by`.
    pub fn pending(body_sha256: &str, by: &str) -> Record {
        Record {
            body: None,
            body_sha256: body_sha256.to_string(),
            by: Some(by.to_string()),
            ids: None,
            location: None,
            state: State::Pending,
            status: None,
            until_ms: None,
        }
    }

    /// The records are about to be sent; their ids are in flight until `until_ms`.
    pub fn sending(&self, until_ms: i64) -> Record {
        self.in_flight(State::Sending, until_ms, None)
    }

    /// The send timed out with the records in a transaction: the key waits for the
    /// outcome, and names the ids in case it is never learnt.
    pub fn undecided(&self, until_ms: i64, ids: &[String]) -> Record {
        self.in_flight(State::Undecided, until_ms, Some(ids.to_vec()))
    }

    fn in_flight(&self, state: State, until_ms: i64, ids: Option<Vec<String>>) -> Record {
        Record {
            body: None,
            body_sha256: self.body_sha256.clone(),
            by: self.by.clone(),
            ids,
            location: None,
            state,
            status: None,
            until_ms: Some(until_ms),
        }
    }

    /// The final answer, replayed to every retry with the key.
    pub fn done(body_sha256: &str, answer: &Answer) -> Record {
        Record {
            body: Some(answer.body.clone()),
            body_sha256: body_sha256.to_string(),
            by: None,
            ids: None,
            location: answer.header("location").map(str::to_string),
            state: State::Done,
            status: Some(answer.status.as_u16()),
            until_ms: None,
        }
    }

    /// The value stored in Redis.
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).expect("a record serializes")
    }
}

/// What a request finds when it claims a key.
#[derive(Debug, Clone, PartialEq)]
pub enum Claim {
    /// Nobody held it: this request owns it now.
    Owned,
    /// Held for another body (or by a value that cannot be read): 422.
    Reused,
    /// The stored answer, replayed.
    Replay(Answer),
    /// Its request is still at work: 409 in_progress.
    InProgress,
    /// Left `sending` or `undecided` by a request that stopped: `outcome_unknown`, with
    /// the ids when the key names them.
    Abandoned { ids: Vec<String> },
}

/// The claim of a key by a request with this body: `held` is the value the key held
/// (`None`: it was free and this request's value is set).
pub fn on_claim(held: Option<&str>, body_sha256: &str, now_ms: i64) -> Claim {
    let Some(held) = held else {
        return Claim::Owned;
    };
    let Some(record) = serde_json::from_str::<Record>(held)
        .ok()
        .filter(|r| r.body_sha256 == body_sha256)
    else {
        return Claim::Reused;
    };
    let stale = record.until_ms.is_some_and(|u| now_ms >= u);
    match record.state {
        State::Done => Claim::Replay(replay(record)),
        State::Sending | State::Undecided if stale => Claim::Abandoned {
            ids: record.ids.unwrap_or_default(),
        },
        State::Pending | State::Sending | State::Undecided => Claim::InProgress,
    }
}

fn replay(record: Record) -> Answer {
    let status = StatusCode::from_u16(record.status.unwrap_or(200))
        .unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let answer = Answer::new(status, record.body.unwrap_or(Value::Null))
        .with_header("idempotent-replayed", "true");
    match record.location {
        Some(loc) => answer.with_header("location", loc),
        None => answer,
    }
}

impl Claim {
    /// The answer the request gets without going further (`None`: it owns the key).
    pub fn answer(self) -> Option<Answer> {
        match self {
            Claim::Owned => None,
            Claim::Reused => Some(Answer::error(
                StatusCode::UNPROCESSABLE_ENTITY,
                Code::IdempotencyKeyReused,
                "this Idempotency-Key was used with a different request body",
            )),
            Claim::Replay(answer) => Some(answer),
            Claim::InProgress => Some(Answer::in_progress(
                "a request with this Idempotency-Key is still being processed; retry shortly",
            )),
            Claim::Abandoned { ids } => Some(Answer::outcome_unknown(
                "the request with this Idempotency-Key stopped first",
                &ids,
            )),
        }
    }
}

/// What becomes of a claimed key once its request is decided.
#[derive(Debug, Clone, PartialEq)]
pub enum Finish {
    /// Kept with this final record.
    Store(Record),
    /// Deleted: nothing was created, so a retry with the key should try again (left
    /// `sending` or `undecided`, it would answer in_progress, then outcome_unknown).
    Release,
}

/// A request that got its answer: a 2xx is stored for replays, anything else released.
pub fn on_finish(body_sha256: &str, answer: &Answer) -> Finish {
    if answer.is_success() {
        Finish::Store(Record::done(body_sha256, answer))
    } else {
        Finish::Release
    }
}

/// An undecided write whose outcome is known: written stores the answer the request
/// would have had, not written releases the key, and unknown stores `outcome_unknown`
/// with the ids, so that a retry gets that again rather than new ids written a second time.
pub fn on_settle(body_sha256: &str, outcome: &Outcome, success: &Answer, ids: &[String]) -> Finish {
    match outcome {
        Outcome::Written => on_finish(body_sha256, success),
        Outcome::NotWritten(_) => Finish::Release,
        Outcome::Unknown(why) => Finish::Store(Record::done(
            body_sha256,
            &Answer::outcome_unknown(why, ids),
        )),
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    const SHA: &str = "5ha";

    fn accepted_one() -> Answer {
        Answer::new(
            StatusCode::ACCEPTED,
            json!({"ids": ["a"], "accepted": 1, "id": "a"}),
        )
        .with_header("location", "/v1/predictions/a")
    }

    /// Every record is stored byte for byte as the `json!` values written before it was
    /// typed, and those read back as the same record.
    #[test]
    fn records_keep_the_stored_json() {
        let pending = Record::pending(SHA, "r1");
        let sending = pending.sending(9);
        let undecided = sending.undecided(9, &["a".into(), "b".into()]);
        let done = Record::done(SHA, &accepted_one());
        let cases = [
            (
                &pending,
                json!({"state": "pending", "body_sha256": SHA, "by": "r1"}),
                r#"{"body_sha256":"5ha","by":"r1","state":"pending"}"#,
            ),
            (
                &sending,
                json!({"state": "sending", "body_sha256": SHA, "until_ms": 9, "by": "r1"}),
                r#"{"body_sha256":"5ha","by":"r1","state":"sending","until_ms":9}"#,
            ),
            (
                &undecided,
                json!({"state": "undecided", "body_sha256": SHA, "until_ms": 9, "by": "r1",
                       "ids": ["a", "b"]}),
                concat!(
                    r#"{"body_sha256":"5ha","by":"r1","ids":["a","b"],"#,
                    r#""state":"undecided","until_ms":9}"#
                ),
            ),
            (
                &done,
                json!({"state": "done", "body_sha256": SHA, "status": 202,
                       "body": {"ids": ["a"], "accepted": 1, "id": "a"},
                       "location": "/v1/predictions/a"}),
                concat!(
                    r#"{"body":{"accepted":1,"id":"a","ids":["a"]},"body_sha256":"5ha","#,
                    r#""location":"/v1/predictions/a","state":"done","status":202}"#
                ),
            ),
        ];
        for (record, old, bytes) in cases {
            assert_eq!(record.to_json(), old.to_string());
            assert_eq!(record.to_json(), bytes);
            assert_eq!(&serde_json::from_str::<Record>(bytes).unwrap(), record);
        }
        // A batch's answer has no Location.
        let batch = Answer::new(StatusCode::ACCEPTED, json!({"ids": ["a"], "accepted": 1}));
        assert_eq!(
            Record::done(SHA, &batch).to_json(),
            r#"{"body":{"accepted":1,"ids":["a"]},"body_sha256":"5ha","state":"done","status":202}"#
        );
    }

    #[test]
    fn transitions_keep_the_body_hash_and_the_claimer() {
        let undecided = Record::pending(SHA, "r1")
            .sending(50)
            .undecided(50, &["x".into()]);
        assert_eq!(undecided.state, State::Undecided);
        assert_eq!(
            (undecided.body_sha256.as_str(), undecided.by.as_deref()),
            (SHA, Some("r1"))
        );
        assert_eq!(
            (undecided.until_ms, undecided.ids),
            (Some(50), Some(vec!["x".to_string()]))
        );
    }

    #[test]
    fn a_free_key_is_owned() {
        assert_eq!(on_claim(None, SHA, 0), Claim::Owned);
        assert_eq!(Claim::Owned.answer(), None);
    }

    #[test]
    fn a_key_at_work_answers_in_progress_until_its_in_flight_time_passes() {
        let pending = Record::pending(SHA, "r1");
        let sending = pending.sending(1_000);
        let undecided = sending.undecided(1_000, &["a".into()]);
        for record in [&pending, &sending, &undecided] {
            assert_eq!(
                on_claim(Some(&record.to_json()), SHA, 999),
                Claim::InProgress,
                "{record:?}"
            );
        }
        let a = Claim::InProgress.answer().unwrap();
        assert_eq!(
            (a.status, a.header("retry-after")),
            (StatusCode::CONFLICT, Some("1"))
        );
        assert_eq!(a.body["error"], "in_progress");
        // A pending key never goes stale: it expires instead (its TTL is short).
        let old_pending = Record {
            until_ms: Some(1),
            ..pending
        };
        assert_eq!(
            on_claim(Some(&old_pending.to_json()), SHA, 5_000),
            Claim::InProgress
        );
    }

    /// A retry of a key whose request stopped while sending, or while its write was
    /// undecided, learns that the records may have been written, with the ids if known.
    #[test]
    fn a_key_left_in_flight_by_a_stopped_request_answers_outcome_unknown() {
        let sending = Record::pending(SHA, "r1").sending(1_000);
        assert_eq!(
            on_claim(Some(&sending.to_json()), SHA, 1_000),
            Claim::Abandoned { ids: vec![] }
        );
        let undecided = sending.undecided(1_000, &["a".into(), "b".into()]);
        let claim = on_claim(Some(&undecided.to_json()), SHA, 1_001);
        assert_eq!(
            claim,
            Claim::Abandoned {
                ids: vec!["a".into(), "b".into()]
            }
        );
        let a = claim.answer().unwrap();
        assert_eq!(a.status, StatusCode::CONFLICT);
        assert_eq!(a.body["error"], "outcome_unknown");
        assert_eq!(a.body["ids"], json!(["a", "b"]));
        assert!(a.body["reason"]
            .as_str()
            .unwrap()
            .starts_with("the request with this Idempotency-Key stopped first"));
        // As the test crate writes one, without `by`.
        let written = json!({"state": "undecided", "body_sha256": SHA, "until_ms": 5,
                             "ids": ["u-1"]});
        assert_eq!(
            on_claim(Some(&written.to_string()), SHA, 5),
            Claim::Abandoned {
                ids: vec!["u-1".into()]
            }
        );
    }

    #[test]
    fn a_done_key_replays_its_answer() {
        let done = Record::done(SHA, &accepted_one()).to_json();
        let Claim::Replay(a) = on_claim(Some(&done), SHA, i64::MAX) else {
            panic!("not a replay")
        };
        assert_eq!(a.status, StatusCode::ACCEPTED);
        assert_eq!(a.body, accepted_one().body);
        assert_eq!(
            a.headers,
            vec![
                ("idempotent-replayed", "true".to_string()),
                ("location", "/v1/predictions/a".to_string())
            ]
        );
        assert_eq!(Claim::Replay(a.clone()).answer(), Some(a));
        // Without a status it replays as 200, as it always did.
        let bare = json!({"state": "done", "body_sha256": SHA, "body": {"ok": 1}}).to_string();
        let Claim::Replay(a) = on_claim(Some(&bare), SHA, 0) else {
            panic!("not a replay")
        };
        assert_eq!((a.status, a.header("location")), (StatusCode::OK, None));
    }

    #[test]
    fn another_body_or_an_unreadable_value_is_a_reused_key() {
        let records = [
            Record::pending("other", "r1"),
            Record::pending("other", "r1").sending(i64::MAX),
            Record::pending("other", "r1").undecided(0, &[]),
            Record::done("other", &accepted_one()),
        ];
        for r in &records {
            assert_eq!(on_claim(Some(&r.to_json()), SHA, 1), Claim::Reused, "{r:?}");
        }
        for odd in [
            "not json",
            "{}",
            r#"{"state":"pending"}"#,
            r#"{"state":"paused","body_sha256":"5ha"}"#,
        ] {
            assert_eq!(on_claim(Some(odd), SHA, 1), Claim::Reused, "{odd}");
        }
        let a = Claim::Reused.answer().unwrap();
        assert_eq!(a.status, StatusCode::UNPROCESSABLE_ENTITY);
        assert_eq!(a.body["error"], "idempotency_key_reused");
    }

    #[test]
    fn only_a_success_is_stored_when_a_request_finishes() {
        assert_eq!(
            on_finish(SHA, &accepted_one()),
            Finish::Store(Record::done(SHA, &accepted_one()))
        );
        for failed in [
            Answer::unavailable("kafka: down"),
            Answer::error(
                StatusCode::BAD_REQUEST,
                crate::validate::ErrorKind::NotJson,
                "x",
            ),
            Answer::in_progress("wait"),
        ] {
            assert_eq!(on_finish(SHA, &failed), Finish::Release, "{failed:?}");
        }
    }

    #[test]
    fn a_settled_write_stores_its_answer_releases_the_key_or_stores_outcome_unknown() {
        let ids = ["a".to_string()];
        let success = accepted_one();
        assert_eq!(
            on_settle(SHA, &Outcome::Written, &success, &ids),
            Finish::Store(Record::done(SHA, &success))
        );
        assert_eq!(
            on_settle(SHA, &Outcome::NotWritten("aborted".into()), &success, &ids),
            Finish::Release
        );
        let Finish::Store(unknown) =
            on_settle(SHA, &Outcome::Unknown("fenced".into()), &success, &ids)
        else {
            panic!("an unknown outcome is stored")
        };
        assert_eq!((unknown.state, unknown.status), (State::Done, Some(409)));
        // Every retry gets it again, rather than its records written a second time.
        let Claim::Replay(a) = on_claim(Some(&unknown.to_json()), SHA, 0) else {
            panic!("not a replay")
        };
        assert_eq!(a.status, StatusCode::CONFLICT);
        assert_eq!(a.body["error"], "outcome_unknown");
        assert_eq!(a.body["ids"], json!(["a"]));
        assert!(a.body["reason"].as_str().unwrap().starts_with("fenced: "));
    }
}
