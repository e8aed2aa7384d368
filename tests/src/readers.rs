//! read_committed readers of a topic for assertions: [`PredictionReader`] follows the
//! predictions from a test's start, [`TopicReader`] reads a whole topic. Both are
//! [`aifab_core::tail::Tail`]s with what tests check on top.

use std::collections::{BTreeMap, HashSet};
use std::time::{Duration, Instant};

use aifab_core::messages::Prediction;
use aifab_core::tail::{is_transient, Start, Tail, TailRecord};

use crate::stack::kafka_brokers;

/// How long a reader may go without progress before it replaces its client.
const STUCK_AFTER: Duration = Duration::from_secs(10);

fn open(brokers: &str, topic: &str, start: Start) -> Tail {
    open_as(brokers, "aifab-tests", topic, start)
}

fn open_as(brokers: &str, client_id: &str, topic: &str, start: Start) -> Tail {
    Tail::open(brokers, client_id, topic, start)
        .unwrap_or_else(|e| panic!("reading {topic}: {e} (is scripts/stack-up running?)"))
}

/// Reads `aifab.predictions` (read_committed) from the offsets it had when created, so a
/// test sees only predictions produced after it started.
pub struct PredictionReader {
    tail: Tail,
    pub seen: Vec<Prediction>,
    /// When each of `seen` was read (same index).
    pub received: Vec<Instant>,
    /// Where each of `seen` was read from: (partition, offset) (same index).
    pub positions: Vec<(i32, i64)>,
}

impl PredictionReader {
    pub fn new() -> Self {
        Self::on(aifab_core::topics::PREDICTIONS.name)
    }

    /// A reader of another predictions topic, from its current end.
    pub fn on(topic: &str) -> Self {
        Self::on_brokers(&kafka_brokers(), topic)
    }

    /// A reader of `topic` on the broker at `brokers`, from its current end.
    pub fn on_brokers(brokers: &str, topic: &str) -> Self {
        Self::as_client(brokers, "aifab-tests", topic)
    }

    /// [`PredictionReader::on_brokers`] as `client_id` (its group is `<client_id>-tail-*`:
    /// what a broker's group ACLs see).
    pub fn as_client(brokers: &str, client_id: &str, topic: &str) -> Self {
        PredictionReader {
            tail: open_as(brokers, client_id, topic, Start::Latest),
            seen: Vec::new(),
            received: Vec::new(),
            positions: Vec::new(),
        }
    }

    /// The reader has made no progress for a while. If records it has not read are there
    /// (or it cannot even ask), replace its client with one that reads on from the same
    /// offsets (see [`Tail::reconnect`]). A reader merely waiting for an open transaction
    /// is replaced needlessly, which costs nothing.
    fn unstick(&mut self) {
        let behind = self.tail.progress().into_iter().find(|p| !p.caught_up());
        if let Some(p) = behind {
            eprintln!("the predictions reader is not being fed ({p}); using a new client");
            self.tail
                .reconnect()
                .unwrap_or_else(|e| panic!("a new predictions client: {e}"));
        }
    }

    /// Read what is available within ~`budget`, keeping predictions whose id starts with `prefix`.
    pub fn read(&mut self, prefix: &str, budget: Duration) {
        let deadline = Instant::now() + budget;
        while Instant::now() < deadline {
            match self.tail.poll(Duration::from_millis(50)) {
                None => continue,
                // A broker restart (tests/tests/faults.rs) surfaces as transport errors
                // until the client reconnects; the consumer resumes where it was.
                Some(Err(e)) if is_transient(&e) => {
                    eprintln!("reading predictions: {e}; continuing")
                }
                Some(Err(e)) => panic!("reading predictions: {e}"),
                Some(Ok(r)) => {
                    let p: Prediction =
                        aifab_core::messages::decode(r.value()).expect("valid prediction");
                    if p.id.starts_with(prefix) {
                        self.seen.push(p);
                        self.received.push(Instant::now());
                        self.positions.push((r.partition, r.offset));
                    }
                }
            }
        }
    }

    /// [`PredictionReader::read`] for a reader that follows a stream for long: when it has
    /// made no progress since `last_progress` for a while, its client is replaced as
    /// [`PredictionReader::read_until`] does.
    pub fn follow(&mut self, prefix: &str, budget: Duration, last_progress: &mut Instant) {
        let before = self.seen.len();
        self.read(prefix, budget);
        if self.seen.len() > before {
            *last_progress = Instant::now();
        } else if last_progress.elapsed() > STUCK_AFTER {
            self.unstick();
            *last_progress = Instant::now();
        }
    }

    /// Read until predictions for `distinct` different ids (with `prefix`) have arrived;
    /// false if `timeout` passed first.
    pub fn read_until(&mut self, prefix: &str, distinct: usize, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        let mut ids: HashSet<String> = self.seen.iter().map(|p| p.id.clone()).collect();
        let mut last_progress = Instant::now();
        while ids.len() < distinct {
            if Instant::now() >= deadline {
                return false;
            }
            let before = self.seen.len();
            self.read(prefix, Duration::from_millis(200));
            ids.extend(self.seen[before..].iter().map(|p| p.id.clone()));
            if self.seen.len() > before {
                last_progress = Instant::now();
            } else if last_progress.elapsed() > STUCK_AFTER {
                self.unstick();
                last_progress = Instant::now();
            }
        }
        true
    }

    /// Read until the reader has consumed to the end of every partition: with
    /// read_committed that waits for open transactions to end, so nothing is missed.
    /// False if `timeout` passed first.
    pub fn read_to_end(&mut self, prefix: &str, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        let mut last_progress = Instant::now();
        loop {
            let before = self.tail.positions();
            self.read(prefix, Duration::from_millis(300));
            if self.caught_up() {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            if self.tail.positions() != before {
                last_progress = Instant::now();
            } else if last_progress.elapsed() > STUCK_AFTER {
                self.unstick();
                last_progress = Instant::now();
            }
        }
    }

    /// True once the reader has consumed up to the current end of every partition.
    pub fn caught_up(&self) -> bool {
        self.tail.caught_up()
    }

    /// The reader's position and the high watermark of every partition, for failure
    /// messages: a reader behind the watermarks is not being fed; one at them has read
    /// everything committed.
    pub fn describe(&self) -> String {
        self.tail.describe()
    }

    /// For up to `limit` ids read more than once: each copy's partition, offset, batch
    /// and producing time, to tell a record written twice from one read twice.
    pub fn duplicates_report(&self, limit: usize) -> String {
        let mut by_id: BTreeMap<&str, Vec<usize>> = BTreeMap::new();
        for (i, p) in self.seen.iter().enumerate() {
            by_id.entry(p.id.as_str()).or_default().push(i);
        }
        by_id
            .into_iter()
            .filter(|(_, copies)| copies.len() > 1)
            .take(limit)
            .map(|(id, copies)| {
                let where_: Vec<String> = copies
                    .iter()
                    .map(|&i| {
                        let (p, o) = self.positions[i];
                        format!(
                            "p{p}@{o} batch {:?} at {}",
                            self.seen[i].batch_id, self.seen[i].produced_at_ms
                        )
                    })
                    .collect();
                format!("{id}: {}", where_.join("; "))
            })
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// Predictions per request id.
    pub fn counts(&self) -> BTreeMap<String, usize> {
        let mut c = BTreeMap::new();
        for p in &self.seen {
            *c.entry(p.id.clone()).or_insert(0) += 1;
        }
        c
    }
}

impl Default for PredictionReader {
    fn default() -> Self {
        Self::new()
    }
}

/// One record read by [`TopicReader`].
#[derive(Debug, Clone)]
pub struct ReadRecord {
    pub partition: i32,
    pub offset: i64,
    pub key: Option<Vec<u8>>,
    pub payload: Vec<u8>,
    pub headers: Vec<(String, Vec<u8>)>,
}

impl From<TailRecord> for ReadRecord {
    fn from(r: TailRecord) -> Self {
        ReadRecord {
            partition: r.partition,
            offset: r.offset,
            key: r.key,
            payload: r.payload.unwrap_or_default(),
            headers: r
                .headers
                .into_iter()
                .map(|h| (h.key, h.value.unwrap_or_default()))
                .collect(),
        }
    }
}

impl ReadRecord {
    pub fn key_str(&self) -> String {
        String::from_utf8_lossy(self.key.as_deref().unwrap_or_default()).to_string()
    }
    pub fn header(&self, name: &str) -> Option<String> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| String::from_utf8_lossy(v).to_string())
    }
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.payload).expect("record is JSON")
    }
}

/// Reads a whole topic from the beginning, read_committed (as downstream consumers do).
pub struct TopicReader {
    tail: Tail,
    pub records: Vec<ReadRecord>,
}

impl TopicReader {
    pub fn new(topic: &str) -> Self {
        TopicReader {
            tail: open(&kafka_brokers(), topic, Start::Beginning),
            records: Vec::new(),
        }
    }

    /// Read what arrives within `budget`.
    pub fn read(&mut self, budget: Duration) {
        let read = self
            .tail
            .read(budget)
            .unwrap_or_else(|e| panic!("reading {}: {e}", self.tail.topic()));
        self.records.extend(read.into_iter().map(ReadRecord::from));
    }

    /// Read until `done(records)` holds, or panic after `timeout` saying how many were read.
    pub async fn read_until(
        &mut self,
        timeout: Duration,
        what: &str,
        done: impl Fn(&[ReadRecord]) -> bool,
    ) {
        let deadline = tokio::time::Instant::now() + timeout;
        while !done(&self.records) {
            assert!(
                tokio::time::Instant::now() < deadline,
                "timed out after {timeout:?} waiting for {what} on {} ({} records read)",
                self.tail.topic(),
                self.records.len()
            );
            self.read(Duration::from_millis(200));
        }
    }

    /// Read until this reader has consumed to the end of every partition (read_committed:
    /// waits for open transactions), then a little more.
    pub async fn read_to_end(&mut self, timeout: Duration) {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            self.read(Duration::from_millis(300));
            if self.tail.caught_up() {
                return;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "{} never settled ({})",
                self.tail.topic(),
                self.tail.describe()
            );
        }
    }
}

#[cfg(test)]
mod unit {
    use super::*;
    use aifab_core::tail::RecordHeader;

    #[test]
    fn a_read_record_keeps_what_tests_look_at() {
        let r = ReadRecord::from(TailRecord {
            partition: 1,
            offset: 9,
            key: Some(b"k".to_vec()),
            payload: None,
            headers: vec![
                RecordHeader {
                    key: "tenant".into(),
                    value: Some(b"acme".to_vec()),
                },
                RecordHeader {
                    key: "none".into(),
                    value: None,
                },
            ],
            timestamp_ms: None,
        });
        assert_eq!(
            (r.partition, r.offset, r.key_str()),
            (1, 9, "k".to_string())
        );
        assert!(r.payload.is_empty());
        assert_eq!(r.header("tenant").as_deref(), Some("acme"));
        assert_eq!(r.header("none").as_deref(), Some(""));
        assert_eq!(r.header("other"), None);
    }
}
