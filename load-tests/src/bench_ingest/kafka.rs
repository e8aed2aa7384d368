//! The broker side of the benchmark: the admin client, the bare producer's context,
//! waiting for a new topic's leaders, watching a group's progress and reading a whole
//! topic back.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use aifab_core::tail::{Start, Tail, TailRecord};
use rdkafka::admin::AdminClient;
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::BaseConsumer;
use rdkafka::producer::{DeliveryResult, ProducerContext};
use rdkafka::ClientContext;

pub(crate) fn admin(brokers: &str) -> anyhow::Result<AdminClient<DefaultClientContext>> {
    Ok(aifab_core::kafka::base_config(brokers, "aifab-bench-admin").create()?)
}

/// The bare producer's context: a failed delivery is reported, not counted.
pub(crate) struct Counting;
impl ClientContext for Counting {}
impl ProducerContext for Counting {
    type DeliveryOpaque = ();
    fn delivery(&self, r: &DeliveryResult<'_>, _: ()) {
        if let Err((e, _)) = r {
            eprintln!("delivery failed: {e}");
        }
    }
}

/// Wait until the client's metadata names a leader for every partition of a topic just
/// created.
pub(crate) fn wait_for_leaders<C: ClientContext>(
    client: &rdkafka::client::Client<C>,
    topic: &str,
    partitions: usize,
) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok(md) = client.fetch_metadata(Some(topic), Duration::from_secs(5)) {
            if let Some(t) = md.topics().first() {
                if t.error().is_none()
                    && t.partitions().len() == partitions
                    && t.partitions()
                        .iter()
                        .all(|p| p.leader() >= 0 && p.error().is_none())
                {
                    return Ok(());
                }
            }
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "no leaders for {topic} after 30 s"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A group's progress on its input topic, summed over partitions.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct GroupProgress {
    /// Committed offsets: the messages the group has consumed.
    pub(crate) committed: i64,
    pub(crate) high_watermark: i64,
    /// The group has committed on every partition with no lag left.
    pub(crate) done: bool,
}

/// Progress of a stage's group on its input topic, from one client kept for the whole
/// run: new clients every poll would add their connections and group lookups to the
/// broker's CPU the bench measures.
pub(crate) struct GroupWatch {
    client: BaseConsumer,
    topic: String,
}

impl GroupWatch {
    pub(crate) fn new(brokers: &str, group: &str, topic: &str) -> anyhow::Result<Self> {
        let client = aifab_core::kafka::consumer_config(brokers, "aifab-bench", group).create()?;
        Ok(Self {
            client,
            topic: topic.to_string(),
        })
    }

    /// Where the group stands now (nothing yet when the broker cannot tell).
    pub(crate) fn progress(&self) -> GroupProgress {
        match aifab_core::kafka::group_offsets(&self.client, &self.topic, Duration::from_secs(10)) {
            Ok(offs) => GroupProgress {
                committed: offs.iter().map(|p| p.committed.unwrap_or(0)).sum(),
                high_watermark: offs.iter().map(|p| p.high_watermark).sum(),
                done: offs.iter().all(|p| p.committed.is_some() && p.lag == 0),
            },
            Err(_) => GroupProgress::default(),
        }
    }
}

/// What a topic holds: its committed records, their distinct keys, and the first and
/// last record timestamps (ms; `i64::MAX` and `i64::MIN` when there are none).
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct TopicScan {
    pub(crate) records: usize,
    pub(crate) keys: HashSet<String>,
    pub(crate) first_ms: i64,
    pub(crate) last_ms: i64,
}

impl Default for TopicScan {
    fn default() -> Self {
        TopicScan {
            records: 0,
            keys: HashSet::new(),
            first_ms: i64::MAX,
            last_ms: i64::MIN,
        }
    }
}

impl TopicScan {
    fn add(&mut self, r: &TailRecord) {
        self.records += 1;
        if r.key.is_some() {
            self.keys.insert(r.key_str());
        }
        if let Some(ts) = r.timestamp_ms {
            self.first_ms = self.first_ms.min(ts);
            self.last_ms = self.last_ms.max(ts);
        }
    }
}

/// Read `topic` (read_committed) from its beginning until at least `expect` records are in
/// and the reader has caught up with the end, or `timeout` passes.
pub(crate) fn scan(
    brokers: &str,
    topic: &str,
    expect: usize,
    timeout: Duration,
) -> anyhow::Result<TopicScan> {
    let mut tail = Tail::open(brokers, "aifab-bench", topic, Start::Beginning)?;
    let deadline = Instant::now() + timeout;
    let mut scan = TopicScan::default();
    while Instant::now() < deadline {
        let records = tail
            .read(Duration::from_millis(200))
            .map_err(|e| anyhow::anyhow!("reading {topic}: {e}"))?;
        let idle = records.is_empty();
        for r in &records {
            scan.add(r);
        }
        // Only asked when a read came back empty: each ask fetches every watermark.
        if idle && scan.records >= expect && tail.caught_up() {
            break;
        }
    }
    Ok(scan)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(key: Option<&str>, ts: Option<i64>) -> TailRecord {
        TailRecord {
            partition: 0,
            offset: 0,
            key: key.map(|k| k.as_bytes().to_vec()),
            payload: None,
            headers: Vec::new(),
            timestamp_ms: ts,
        }
    }

    #[test]
    fn a_scan_counts_records_distinct_keys_and_the_time_span() {
        let mut s = TopicScan::default();
        for r in [
            record(Some("a"), Some(20)),
            record(Some("a"), Some(10)),
            record(None, None),
            record(Some("b"), Some(30)),
        ] {
            s.add(&r);
        }
        assert_eq!(s.records, 4);
        assert_eq!(s.keys.len(), 2);
        assert_eq!((s.first_ms, s.last_ms), (10, 30));
    }
}
