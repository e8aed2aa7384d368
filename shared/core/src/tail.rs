//! Following a topic from a point in it: a read_committed consumer assigned by hand to
//! every partition (no group membership, nothing committed), returning owned records and
//! telling when it has read up to the end. The CLI's `consume` and demo, the benchmarks
//! and the end-to-end tests read topics this way.
//!
//! ```no_run
//! use std::time::Duration;
//! use aifab_core::tail::{Start, Tail};
//!
//! // Only what is produced from now on (blocking: call from `spawn_blocking`).
//! let mut tail = Tail::open("127.0.0.1:9092", "aifab-cli", "aifab.predictions", Start::Latest)?;
//! for r in tail.read(Duration::from_secs(1))? {
//!     println!("p{}@{}: {} bytes", r.partition, r.offset, r.value().len());
//! }
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use std::collections::BTreeMap;
use std::fmt;
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::message::{Headers, Message};
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::{Offset, TopicPartitionList};

/// How long [`Tail::open`] waits for a topic's metadata and for each partition's
/// watermarks (a broker that just started may not have elected every leader yet).
const SETUP_TIMEOUT: Duration = Duration::from_secs(30);
/// One watermark request in [`Tail::progress`].
const WATERMARK_TIMEOUT: Duration = Duration::from_secs(10);

/// Where a [`Tail`] starts reading.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Start {
    /// Every partition's high watermark when the tail is opened: only what comes after.
    Latest,
    /// Every partition's low watermark: everything still retained.
    Beginning,
    /// These partitions only, each from its offset.
    Offsets(BTreeMap<i32, i64>),
    /// The last `n` offsets of every partition (fewer where fewer are retained).
    Last(i64),
}

/// A partition's low and high watermarks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Watermarks {
    pub low: i64,
    pub high: i64,
}

impl Start {
    /// The first offset to read of a partition with `marks` ([`Start::Offsets`] names its
    /// offsets itself and has no watermarks to pick from).
    pub fn offset_in(&self, partition: i32, marks: Watermarks) -> i64 {
        match self {
            Start::Latest => marks.high,
            Start::Beginning => marks.low,
            Start::Offsets(at) => at.get(&partition).copied().unwrap_or(marks.low),
            Start::Last(n) => (marks.high - n).max(marks.low),
        }
    }
}

/// Why a [`Tail`] could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum TailError {
    #[error("creating the consumer: {0}")]
    Client(#[source] KafkaError),
    #[error("reading the metadata of {topic}: {source}")]
    Metadata { topic: String, source: KafkaError },
    #[error("topic {0} does not exist (no partitions)")]
    NoPartitions(String),
    #[error("watermarks of {topic}/{partition}: {source}")]
    Watermarks {
        topic: String,
        partition: i32,
        source: KafkaError,
    },
    #[error("assigning the partitions of {topic}: {source}")]
    Assign { topic: String, source: KafkaError },
}

/// One header of a [`TailRecord`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordHeader {
    pub key: String,
    pub value: Option<Vec<u8>>,
}

/// One record read by a [`Tail`], copied out of the client's buffers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TailRecord {
    pub partition: i32,
    pub offset: i64,
    pub key: Option<Vec<u8>>,
    /// `None` for a record with no value (a tombstone).
    pub payload: Option<Vec<u8>>,
    pub headers: Vec<RecordHeader>,
    /// The record's timestamp (create or log-append time), ms since the epoch.
    pub timestamp_ms: Option<i64>,
}

impl TailRecord {
    /// Copy a message the client returned.
    pub fn from_message(m: &impl Message) -> Self {
        let headers = m
            .headers()
            .map(|h| {
                h.iter()
                    .map(|h| RecordHeader {
                        key: h.key.to_string(),
                        value: h.value.map(<[u8]>::to_vec),
                    })
                    .collect()
            })
            .unwrap_or_default();
        TailRecord {
            partition: m.partition(),
            offset: m.offset(),
            key: m.key().map(<[u8]>::to_vec),
            payload: m.payload().map(<[u8]>::to_vec),
            headers,
            timestamp_ms: m.timestamp().to_millis(),
        }
    }

    /// The value, empty for a tombstone.
    pub fn value(&self) -> &[u8] {
        self.payload.as_deref().unwrap_or_default()
    }

    /// The key as text (lossy), empty when there is none.
    pub fn key_str(&self) -> String {
        String::from_utf8_lossy(self.key.as_deref().unwrap_or_default()).into_owned()
    }

    /// The value of the first header named `name` (empty when the header has none).
    pub fn header(&self, name: &str) -> Option<&[u8]> {
        self.headers
            .iter()
            .find(|h| h.key == name)
            .map(|h| h.value.as_deref().unwrap_or_default())
    }
}

/// How far a [`Tail`] has read one partition against the partition's end.
#[derive(Debug)]
pub struct PartitionProgress {
    pub partition: i32,
    /// The next offset the tail reads.
    pub position: i64,
    /// The partition's high watermark now, or why it could not be had.
    pub high_watermark: Result<i64, KafkaError>,
}

impl PartitionProgress {
    /// Read up to the end. With read_committed the position passes the last record of
    /// an open transaction only once that transaction ends, so a tail caught up on every
    /// partition has seen everything committed before it asked.
    pub fn caught_up(&self) -> bool {
        self.high_watermark
            .as_ref()
            .is_ok_and(|&high| self.position >= high)
    }
}

impl fmt::Display for PartitionProgress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.high_watermark {
            Ok(high) => write!(f, "p{} at {} of {high}", self.partition, self.position),
            Err(e) => write!(f, "p{} at {}: {e}", self.partition, self.position),
        }
    }
}

/// A consumer error that ends once the client reconnects (the broker went away and
/// comes back, or a partition's leader moves): a tail reads on after it.
pub fn is_transient(e: &KafkaError) -> bool {
    use RDKafkaErrorCode as C;
    matches!(
        e.rdkafka_error_code(),
        Some(
            C::BrokerTransportFailure
                | C::AllBrokersDown
                | C::NotLeaderForPartition
                | C::LeaderNotAvailable
        )
    )
}

/// `next` moved on to the client's `positions` where those are further: the client's
/// position passes transaction markers that no record returned shows.
pub fn furthest(
    next: &BTreeMap<i32, i64>,
    positions: impl IntoIterator<Item = (i32, Offset)>,
) -> BTreeMap<i32, i64> {
    let mut at = next.clone();
    for (partition, offset) in positions {
        if let (Offset::Offset(o), Some(n)) = (offset, at.get_mut(&partition)) {
            *n = (*n).max(o);
        }
    }
    at
}

/// A read_committed reader of one topic from a [`Start`]. Blocking: async callers run it
/// in `spawn_blocking`.
pub struct Tail {
    consumer: BaseConsumer,
    brokers: String,
    client_id: String,
    topic: String,
    /// The next offset to read of every assigned partition, past the last record returned.
    next: BTreeMap<i32, i64>,
}

impl Tail {
    /// Assign every partition of `topic` (the ones [`Start::Offsets`] names) from `start`.
    /// Waits up to 30 s for the metadata and for each partition's leader.
    pub fn open(
        brokers: &str,
        client_id: &str,
        topic: &str,
        start: Start,
    ) -> Result<Self, TailError> {
        let consumer = client(brokers, client_id)?;
        let next = match start {
            Start::Offsets(at) => at,
            start => {
                let mut next = BTreeMap::new();
                for partition in partitions(&consumer, topic)? {
                    let marks = watermarks_waiting(&consumer, topic, partition)?;
                    next.insert(partition, start.offset_in(partition, marks));
                }
                next
            }
        };
        let tail = Tail {
            consumer,
            brokers: brokers.to_string(),
            client_id: client_id.to_string(),
            topic: topic.to_string(),
            next,
        };
        tail.assign()?;
        Ok(tail)
    }

    pub fn topic(&self) -> &str {
        &self.topic
    }

    /// The next record, if one arrives within `timeout`. Errors are the client's: after a
    /// [transient](is_transient) one it reads on by itself.
    pub fn poll(&mut self, timeout: Duration) -> Option<Result<TailRecord, KafkaError>> {
        let r = match self.consumer.poll(timeout)? {
            Ok(m) => Ok(TailRecord::from_message(&m)),
            Err(e) => Err(e),
        };
        if let Ok(r) = &r {
            self.next.insert(r.partition, r.offset + 1);
        }
        Some(r)
    }

    /// Every record that arrives within ~`budget`. Transient errors are logged and read
    /// past; any other ends the read with that error.
    pub fn read(&mut self, budget: Duration) -> Result<Vec<TailRecord>, KafkaError> {
        let deadline = Instant::now() + budget;
        let mut records = Vec::new();
        while let Some(left) = deadline.checked_duration_since(Instant::now()) {
            match self.poll(left.min(Duration::from_millis(50))) {
                None => {}
                Some(Ok(r)) => records.push(r),
                Some(Err(e)) if is_transient(&e) => {
                    tracing::warn!(topic = %self.topic, "reading: {e}; reading on")
                }
                Some(Err(e)) => return Err(e),
            }
        }
        Ok(records)
    }

    /// How far the tail has read each partition: past its last record, or further where
    /// the client's position has moved on past transaction markers.
    pub fn positions(&self) -> BTreeMap<i32, i64> {
        let Ok(pos) = self.consumer.position() else {
            return self.next.clone();
        };
        let client: Vec<(i32, Offset)> = pos
            .elements_for_topic(&self.topic)
            .iter()
            .map(|e| (e.partition(), e.offset()))
            .collect();
        furthest(&self.next, client)
    }

    /// Each partition's position against its high watermark now.
    pub fn progress(&self) -> Vec<PartitionProgress> {
        self.positions()
            .into_iter()
            .map(|(partition, position)| PartitionProgress {
                partition,
                position,
                high_watermark: self
                    .consumer
                    .fetch_watermarks(&self.topic, partition, WATERMARK_TIMEOUT)
                    .map(|(_, high)| high),
            })
            .collect()
    }

    /// True once the tail has read up to the current end of every partition (see
    /// [`PartitionProgress::caught_up`]); false when a watermark cannot be had.
    pub fn caught_up(&self) -> bool {
        self.progress().iter().all(PartitionProgress::caught_up)
    }

    /// Each partition's progress in one line, for failure messages: a tail behind the
    /// watermarks is not being fed; one at them has read everything committed.
    pub fn describe(&self) -> String {
        let parts: Vec<String> = self.progress().iter().map(|p| p.to_string()).collect();
        parts.join("; ")
    }

    /// Replace the client with a new one that reads on from [`Tail::positions`]. After a
    /// broker restart a librdkafka client can go on answering "all brokers down", or not
    /// fetch an assigned partition, long after the broker is back (the services replace
    /// theirs the same way, see `crate::service`).
    pub fn reconnect(&mut self) -> Result<(), TailError> {
        let next = self.positions();
        self.consumer = client(&self.brokers, &self.client_id)?;
        self.next = next;
        self.assign()
    }

    fn assign(&self) -> Result<(), TailError> {
        let assign_err = |source| TailError::Assign {
            topic: self.topic.clone(),
            source,
        };
        let mut tpl = TopicPartitionList::new();
        for (&p, &o) in &self.next {
            tpl.add_partition_offset(&self.topic, p, Offset::Offset(o))
                .map_err(assign_err)?;
        }
        self.consumer.assign(&tpl).map_err(assign_err)
    }
}

fn client(brokers: &str, client_id: &str) -> Result<BaseConsumer, TailError> {
    // librdkafka wants a group id; partitions are assigned by hand and nothing is committed.
    let group = format!("{client_id}-tail-{}", uuid::Uuid::new_v4().simple());
    crate::kafka::consumer_config(brokers, client_id, &group)
        // An assign()ed consumer learns its partitions again only from periodic metadata:
        // after a broker restart librdkafka can hold the topic as unknown until then.
        .set("topic.metadata.refresh.interval.ms", "5000")
        .create()
        .map_err(TailError::Client)
}

fn partitions(consumer: &BaseConsumer, topic: &str) -> Result<Vec<i32>, TailError> {
    let md = consumer
        .fetch_metadata(Some(topic), SETUP_TIMEOUT)
        .map_err(|source| TailError::Metadata {
            topic: topic.to_string(),
            source,
        })?;
    let ids: Vec<i32> = md
        .topics()
        .iter()
        .filter(|t| t.name() == topic)
        .flat_map(|t| t.partitions().iter().map(|p| p.id()))
        .collect();
    if ids.is_empty() {
        return Err(TailError::NoPartitions(topic.to_string()));
    }
    Ok(ids)
}

/// A partition's watermarks, asking again while its leader is not elected yet.
fn watermarks_waiting(
    consumer: &BaseConsumer,
    topic: &str,
    partition: i32,
) -> Result<Watermarks, TailError> {
    let deadline = Instant::now() + SETUP_TIMEOUT;
    loop {
        match consumer.fetch_watermarks(topic, partition, WATERMARK_TIMEOUT) {
            Ok((low, high)) => return Ok(Watermarks { low, high }),
            Err(e) if Instant::now() < deadline => {
                tracing::debug!("watermarks of {topic}/{partition}: {e}; asking again");
                // Blocking by design (see `Tail`); the leader election has no event to await.
                std::thread::sleep(Duration::from_millis(200));
            }
            Err(source) => {
                return Err(TailError::Watermarks {
                    topic: topic.to_string(),
                    partition,
                    source,
                })
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rdkafka::message::{Header, OwnedHeaders, OwnedMessage, Timestamp};

    fn message(headers: Option<OwnedHeaders>) -> OwnedMessage {
        OwnedMessage::new(
            Some(b"{\"a\":1}".to_vec()),
            Some(b"k-1".to_vec()),
            "t".into(),
            Timestamp::CreateTime(1_700_000_000_000),
            3,
            42,
            headers,
        )
    }

    #[test]
    fn a_record_copies_the_message() {
        let h = OwnedHeaders::new()
            .insert(Header {
                key: "tenant",
                value: Some("acme"),
            })
            .insert(Header::<&[u8]> {
                key: "empty",
                value: None,
            })
            .insert(Header {
                key: "tenant",
                value: Some("second"),
            });
        let r = TailRecord::from_message(&message(Some(h)));
        assert_eq!((r.partition, r.offset), (3, 42));
        assert_eq!(r.key_str(), "k-1");
        assert_eq!(r.value(), b"{\"a\":1}");
        assert_eq!(r.timestamp_ms, Some(1_700_000_000_000));
        assert_eq!(r.headers.len(), 3);
        // The first header of a name wins; one without a value reads as empty.
        assert_eq!(r.header("tenant"), Some(&b"acme"[..]));
        assert_eq!(r.header("empty"), Some(&b""[..]));
        assert_eq!(r.header("missing"), None);
    }

    #[test]
    fn a_record_without_key_value_headers_or_time() {
        let m = OwnedMessage::new(None, None, "t".into(), Timestamp::NotAvailable, 0, 0, None);
        let r = TailRecord::from_message(&m);
        assert_eq!((r.key.as_deref(), r.payload.as_deref()), (None, None));
        assert_eq!((r.key_str(), r.value()), (String::new(), &b""[..]));
        assert!(r.headers.is_empty());
        assert_eq!(r.timestamp_ms, None);
    }

    #[test]
    fn start_picks_a_watermark_or_the_given_offset() {
        let marks = Watermarks { low: 5, high: 9 };
        assert_eq!(Start::Latest.offset_in(0, marks), 9);
        assert_eq!(Start::Beginning.offset_in(0, marks), 5);
        assert_eq!(Start::Last(3).offset_in(0, marks), 6);
        assert_eq!(
            Start::Last(50).offset_in(0, marks),
            5,
            "no further back than retained"
        );
        let at = Start::Offsets([(1, 7)].into_iter().collect());
        assert_eq!(at.offset_in(1, marks), 7);
        assert_eq!(at.offset_in(2, marks), 5);
    }

    #[test]
    fn positions_only_move_forward() {
        let next: BTreeMap<i32, i64> = [(0, 10), (1, 4), (2, 0)].into_iter().collect();
        let client = [
            (0, Offset::Offset(8)),
            (1, Offset::Offset(6)),
            (2, Offset::Invalid),
            (7, Offset::Offset(99)),
        ];
        let at = furthest(&next, client);
        // Past a transaction marker (p1); never back (p0); unknown positions and
        // partitions not assigned change nothing.
        assert_eq!(at, [(0, 10), (1, 6), (2, 0)].into_iter().collect());
    }

    #[test]
    fn caught_up_needs_a_watermark_and_a_position_at_it() {
        let at = |position, high_watermark| PartitionProgress {
            partition: 0,
            position,
            high_watermark,
        };
        assert!(at(5, Ok(5)).caught_up());
        assert!(at(0, Ok(0)).caught_up());
        assert!(!at(4, Ok(5)).caught_up());
        let down = KafkaError::MetadataFetch(RDKafkaErrorCode::AllBrokersDown);
        assert!(!at(5, Err(down)).caught_up());
        assert_eq!(at(4, Ok(5)).to_string(), "p0 at 4 of 5");
    }

    #[test]
    fn broker_outages_are_transient_other_errors_not() {
        let e = |c| KafkaError::MessageConsumption(c);
        assert!(is_transient(&e(RDKafkaErrorCode::AllBrokersDown)));
        assert!(is_transient(&e(RDKafkaErrorCode::BrokerTransportFailure)));
        assert!(is_transient(&e(RDKafkaErrorCode::NotLeaderForPartition)));
        assert!(!is_transient(&e(RDKafkaErrorCode::UnknownTopicOrPartition)));
        assert!(!is_transient(&KafkaError::Canceled));
    }

    #[test]
    fn opening_at_given_offsets_needs_no_metadata() {
        // Assigning is local to the client: no broker answers on this port.
        let at: BTreeMap<i32, i64> = [(0, 3), (1, 0)].into_iter().collect();
        let tail = Tail::open("127.0.0.1:1", "tail-test", "t", Start::Offsets(at.clone()))
            .expect("assigned without a broker");
        assert_eq!(tail.topic(), "t");
        assert_eq!(tail.positions(), at);
    }
}
