//! Kafka client settings and probes (rdkafka / librdkafka).
//!
//! One place decides the settings the delivery guarantees need: idempotent producers,
//! manual commits, `read_committed` consumers. Services start from these builders and
//! add only what is theirs.

use std::time::{Duration, Instant};

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use rdkafka::{Message, Offset, TopicPartitionList};

use crate::topics::Topic;

/// Settings shared by every client: where, and a client id that names the service.
pub fn base_config(brokers: &str, client_id: &str) -> ClientConfig {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", brokers)
        .set("client.id", client_id)
        // Fail fast on a dead broker address in logs, but keep retrying forever.
        .set("socket.connection.setup.timeout.ms", "5000")
        .set("reconnect.backoff.ms", "200")
        .set("reconnect.backoff.max.ms", "10000")
        // A restarting broker can answer metadata before it lists itself; librdkafka
        // (2.10+) then forgets it and, with no broker left, only goes back to
        // `bootstrap.servers` after this long (5 minutes by default). Until then every
        // request of the client fails or waits: consumers stop fetching and coordinator
        // calls time out, however long the broker has been back.
        .set("metadata.recovery.rebootstrap.trigger.ms", "10000");
    // librdkafka's own debug contexts (`cgrp,eos,fetch`, `all`, ...) for diagnosing a
    // client: they log through the service's log at debug level.
    if let Ok(contexts) = std::env::var("AIFAB_KAFKA_DEBUG") {
        if !contexts.trim().is_empty() {
            c.set("debug", contexts.trim());
        }
    }
    c
}

/// An idempotent producer: retries never duplicate or reorder within a partition.
pub fn producer_config(brokers: &str, client_id: &str) -> ClientConfig {
    let mut c = base_config(brokers, client_id);
    c.set("enable.idempotence", "true")
        .set("acks", "all")
        .set("linger.ms", "5")
        .set("compression.type", "lz4")
        // Keep retrying through a broker restart rather than failing the send.
        .set("message.timeout.ms", "300000");
    c
}

/// A transactional producer (consume-transform-produce). The id must be stable per
/// input assignment so a restarted instance fences its zombie predecessor.
pub fn transactional_producer_config(
    brokers: &str,
    client_id: &str,
    transactional_id: &str,
) -> ClientConfig {
    let mut c = producer_config(brokers, client_id);
    // librdkafka requires message.timeout.ms <= transaction.timeout.ms.
    c.set("transactional.id", transactional_id)
        // Short, so the open transaction of a worker that died for good stops holding
        // back read_committed consumers soon (a restart with the same id fences it at once).
        .set("transaction.timeout.ms", "15000")
        .set("message.timeout.ms", "15000");
    c
}

/// A group consumer that commits by hand and sees only committed transactions.
pub fn consumer_config(brokers: &str, client_id: &str, group: &str) -> ClientConfig {
    let mut c = base_config(brokers, client_id);
    c.set("group.id", group)
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("auto.offset.reset", "earliest")
        .set("isolation.level", "read_committed")
        .set("session.timeout.ms", "10000")
        .set("heartbeat.interval.ms", "1000")
        // A subscribed topic that does not exist yet (a service started before its topics
        // were created) is noticed at the next metadata refresh: 10 s, not librdkafka's 5 min.
        .set("topic.metadata.refresh.interval.ms", "10000");
    c
}

/// Ask the cluster for metadata: the liveness probe for Kafka. Blocking; call from
/// `spawn_blocking`. Returns the number of brokers seen.
pub fn probe(
    client: &BaseConsumer,
    timeout: Duration,
) -> Result<usize, rdkafka::error::KafkaError> {
    let md = client.fetch_metadata(None, timeout)?;
    Ok(md.brokers().len())
}

/// A consumer with no group, for metadata and watermark queries.
pub fn metadata_client(brokers: &str, client_id: &str) -> anyhow::Result<BaseConsumer> {
    Ok(base_config(brokers, client_id).create()?)
}

/// Create topics that do not exist yet (existing ones are left as they are).
pub async fn ensure_topics(brokers: &str, topics: &[Topic]) -> anyhow::Result<()> {
    let admin: AdminClient<DefaultClientContext> = base_config(brokers, "aifab-admin").create()?;
    let new: Vec<NewTopic> = topics
        .iter()
        .map(|t| NewTopic::new(t.name, t.partitions, TopicReplication::Fixed(1)))
        .collect();
    let results = admin
        .create_topics(
            &new,
            &AdminOptions::new().operation_timeout(Some(Duration::from_secs(30))),
        )
        .await?;
    for r in results {
        match r {
            Ok(_) | Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((name, code)) => anyhow::bail!("creating topic {name}: {code}"),
        }
    }
    Ok(())
}

/// Lag of one partition: messages after the group's position up to the high watermark.
///
/// A group that never committed starts at `auto.offset.reset=earliest`, i.e. the low
/// watermark, so everything still retained counts as lag.
pub fn partition_lag(committed: Option<i64>, low_watermark: i64, high_watermark: i64) -> i64 {
    let position = committed.unwrap_or(low_watermark).max(low_watermark);
    (high_watermark - position).max(0)
}

/// Committed offset, watermarks and lag of one partition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartitionOffsets {
    pub partition: i32,
    pub committed: Option<i64>,
    pub low_watermark: i64,
    pub high_watermark: i64,
    pub lag: i64,
}

/// The broker answered that the topic does not exist (yet): an answer, so not a sign
/// that the client asking is broken.
#[derive(Debug)]
pub struct TopicMissing(pub String);

impl std::fmt::Display for TopicMissing {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "topic {} does not exist", self.0)
    }
}

impl std::error::Error for TopicMissing {}

/// Read a group's committed offsets and the topic's watermarks (blocking). A topic that
/// does not exist is a [`TopicMissing`] error.
///
/// `client` must be created with `group.id = group` (it never subscribes, so it does
/// not join the group or disturb its members), as [`consumer_config`] does: being
/// `read_committed`, its high watermark is the last stable offset (librdkafka's watermark
/// query asks with the client's `isolation.level`), so an open transaction is not lag.
/// Each `lag` is [`partition_lag`]: it still counts the control records (transaction
/// markers) after the committed offset; [`LagProbe::settle`] takes them out.
pub fn group_offsets(
    client: &BaseConsumer,
    topic: &str,
    timeout: Duration,
) -> anyhow::Result<Vec<PartitionOffsets>> {
    let md = client.fetch_metadata(Some(topic), timeout)?;
    let Some(t) = md.topics().first() else {
        anyhow::bail!("topic {topic}: no metadata")
    };
    if let Some(err) = t.error() {
        let code = RDKafkaErrorCode::from(err);
        if code == RDKafkaErrorCode::UnknownTopicOrPartition {
            return Err(TopicMissing(topic.to_string()).into());
        }
        anyhow::bail!("topic {topic}: {code:?}");
    }
    let mut tpl = TopicPartitionList::new();
    for p in t.partitions() {
        tpl.add_partition(topic, p.id());
    }
    let committed = client.committed_offsets(tpl, timeout)?;
    let mut out = Vec::new();
    for elem in committed.elements() {
        let (low, high) = client.fetch_watermarks(topic, elem.partition(), timeout)?;
        let committed = match elem.offset() {
            Offset::Offset(o) => Some(o),
            _ => None,
        };
        out.push(PartitionOffsets {
            partition: elem.partition(),
            committed,
            low_watermark: low,
            high_watermark: high,
            lag: partition_lag(committed, low, high),
        });
    }
    out.sort_by_key(|p| p.partition);
    Ok(out)
}

/// Lag of one partition once a probe has looked past the group's position: offsets before
/// `no_data_before` hold no record a `read_committed` consumer is ever handed (transaction
/// markers, which are control records, and records of aborted transactions), so they are
/// not lag. Without a probe's answer it is [`partition_lag`].
///
/// A transactional consumer commits the offset after the last record it processed
/// (`send_offsets_to_transaction`), which is the offset of the commit marker that ends the
/// producer's transaction: at rest `high - committed` is one marker per partition, and
/// after an aborted transaction at the end of a partition its records and its marker too.
pub fn settled_lag(
    committed: Option<i64>,
    low_watermark: i64,
    high_watermark: i64,
    no_data_before: Option<i64>,
) -> i64 {
    let position = committed.unwrap_or(low_watermark).max(low_watermark);
    let first_unread = no_data_before.map_or(position, |o| o.max(position));
    (high_watermark - first_unread).max(0)
}

/// What a probe (a `read_committed` consumer assigned at the group's position) saw of
/// one partition.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ProbeSeen {
    /// The offset of the first record it was handed: data, as librdkafka hands out neither
    /// control records nor the records of aborted transactions.
    pub first_data: Option<i64>,
    /// Its position: the offset after the last record or control record it got past.
    pub position: Option<i64>,
}

impl ProbeSeen {
    /// Offsets from the probe's start up to this one hold no data (see [`settled_lag`]).
    pub fn no_data_before(&self) -> Option<i64> {
        self.first_data.or(self.position)
    }

    /// Whether it has its answer: it met data, or got past everything up to `high`.
    pub fn done(&self, high_watermark: i64) -> bool {
        self.first_data.is_some() || self.position.is_some_and(|p| p >= high_watermark)
    }
}

/// A partition whose lag is at most this is probed whenever its offsets change (cheap: one
/// small fetch). A larger lag is probed only once its offsets have stayed the same for two
/// readings (the group is at rest): under load a few markers are noise.
pub const PROBE_LAG_AT_MOST: i64 = 64;

/// How long one [`LagProbe::settle`] call waits for its probe's answers.
const PROBE_BUDGET: Duration = Duration::from_secs(2);

/// An inconclusive probe (timed out, broker away) of unchanged offsets is retried after this.
const PROBE_RETRY_AFTER: Duration = Duration::from_secs(30);

/// What the probe knows of one partition, for the offsets it was asked about.
#[derive(Debug, Clone, PartialEq)]
struct Probed {
    position: i64,
    high: i64,
    no_data_before: Option<i64>,
    done: bool,
    /// When it was last probed.
    tried: Option<Instant>,
    /// Readings that found these offsets.
    readings: u32,
}

impl Probed {
    fn new(position: i64, high: i64) -> Self {
        Self {
            position,
            high,
            no_data_before: None,
            done: false,
            tried: None,
            readings: 0,
        }
    }
}

/// The probe's consumer: `read_committed`, reading little ahead (it wants the first record).
/// It assigns and never subscribes or commits, so its group never exists on the broker.
fn probe_config(brokers: &str, client_id: &str) -> ClientConfig {
    let mut c = consumer_config(brokers, client_id, &format!("{client_id}.lag-probe"));
    c.set("fetch.wait.max.ms", "100")
        .set("fetch.message.max.bytes", "65536")
        .set("queued.min.messages", "1")
        .set("queued.max.messages.kbytes", "1024");
    c
}

/// Settles lag readings ([`settled_lag`]) with a `read_committed` probe consumer that reads
/// from each lagging partition's committed offset until it meets a data record or the
/// high watermark. One answer is kept per (group, topic, partition) for the committed
/// offset and high watermark it was found for, so a group at rest is probed once.
///
/// Blocking; keep it on the thread that reads offsets.
pub struct LagProbe {
    brokers: String,
    client_id: String,
    consumer: Option<BaseConsumer>,
    known: std::collections::HashMap<(String, String, i32), Probed>,
}

impl LagProbe {
    pub fn new(brokers: &str, client_id: &str) -> Self {
        Self {
            brokers: brokers.to_string(),
            client_id: client_id.to_string(),
            consumer: None,
            known: Default::default(),
        }
    }

    /// Correct each partition's `lag` in `offsets` (from [`group_offsets`]) for what no
    /// consumer of `group` will ever be handed. A partition the probe cannot settle keeps
    /// its lag from offsets alone: never less truthful than without a probe.
    pub fn settle(&mut self, group: &str, topic: &str, offsets: &mut [PartitionOffsets]) {
        let now = Instant::now();
        let starts = self.plan(group, topic, offsets, now);
        if !starts.is_empty() {
            let seen = self.probe(topic, &starts);
            if let Err(e) = &seen {
                tracing::debug!(%group, %topic, error = %format!("{e:#}"), "lag probe failed; using a new probe client");
                self.consumer = None;
            }
            self.record(group, topic, &starts, seen.as_ref().ok(), now);
        }
        self.apply(group, topic, offsets);
    }

    /// Keep what a probe from `starts` saw (nothing, if it failed).
    fn record(
        &mut self,
        group: &str,
        topic: &str,
        starts: &[(i32, i64, i64)],
        seen: Option<&std::collections::BTreeMap<i32, ProbeSeen>>,
        now: Instant,
    ) {
        for &(partition, start, high) in starts {
            let Some(k) = self
                .known
                .get_mut(&(group.to_string(), topic.to_string(), partition))
            else {
                continue;
            };
            if (k.position, k.high) != (start, high) {
                continue;
            }
            k.tried = Some(now);
            if let Some(s) = seen.and_then(|seen| seen.get(&partition)) {
                k.no_data_before = s
                    .no_data_before()
                    .filter(|o| *o >= start)
                    .max(k.no_data_before);
                k.done = s.done(high);
            }
        }
    }

    /// Forget the partitions of (group, topic) pairs no longer watched.
    pub fn retain(&mut self, watched: &std::collections::BTreeSet<(String, String)>) {
        self.known
            .retain(|(g, t, _), _| watched.contains(&(g.clone(), t.clone())));
    }

    /// Note each partition's offsets; the (partition, start, high) to probe now.
    fn plan(
        &mut self,
        group: &str,
        topic: &str,
        offsets: &[PartitionOffsets],
        now: Instant,
    ) -> Vec<(i32, i64, i64)> {
        let mut starts = Vec::new();
        for p in offsets {
            let key = (group.to_string(), topic.to_string(), p.partition);
            let position = p.committed.unwrap_or(p.low_watermark).max(p.low_watermark);
            if p.high_watermark <= position {
                self.known.remove(&key);
                continue;
            }
            let k = self
                .known
                .entry(key)
                .or_insert_with(|| Probed::new(position, p.high_watermark));
            if (k.position, k.high) != (position, p.high_watermark) {
                *k = Probed::new(position, p.high_watermark);
            }
            k.readings = k.readings.saturating_add(1);
            let probe = !k.done
                && match k.tried {
                    // Small lag: at once. Otherwise once the offsets stayed put for a reading.
                    None => p.high_watermark - position <= PROBE_LAG_AT_MOST || k.readings >= 2,
                    Some(t) => now.saturating_duration_since(t) >= PROBE_RETRY_AFTER,
                };
            if probe {
                starts.push((p.partition, position, p.high_watermark));
            }
        }
        starts
    }

    /// Set each partition's lag from its offsets and what the probe found for them.
    fn apply(&self, group: &str, topic: &str, offsets: &mut [PartitionOffsets]) {
        for p in offsets {
            let position = p.committed.unwrap_or(p.low_watermark).max(p.low_watermark);
            let no_data_before = self
                .known
                .get(&(group.to_string(), topic.to_string(), p.partition))
                .filter(|k| (k.position, k.high) == (position, p.high_watermark))
                .and_then(|k| k.no_data_before);
            p.lag = settled_lag(
                p.committed,
                p.low_watermark,
                p.high_watermark,
                no_data_before,
            );
        }
    }

    /// Assign the probe at each start and read until every partition has its answer or
    /// [`PROBE_BUDGET`] has passed.
    fn probe(
        &mut self,
        topic: &str,
        starts: &[(i32, i64, i64)],
    ) -> anyhow::Result<std::collections::BTreeMap<i32, ProbeSeen>> {
        if self.consumer.is_none() {
            self.consumer = Some(probe_config(&self.brokers, &self.client_id).create()?);
        }
        let consumer = self.consumer.as_ref().expect("created above");
        let mut tpl = TopicPartitionList::new();
        let mut seen: std::collections::BTreeMap<i32, ProbeSeen> = Default::default();
        for &(partition, start, _) in starts {
            tpl.add_partition_offset(topic, partition, Offset::Offset(start))?;
            seen.insert(partition, ProbeSeen::default());
        }
        consumer.assign(&tpl)?;
        let deadline = Instant::now() + PROBE_BUDGET;
        let start_of =
            |partition: i32| starts.iter().find(|s| s.0 == partition).map(|s| (s.1, s.2));
        loop {
            let all_done = starts
                .iter()
                .all(|&(partition, _, high)| seen[&partition].done(high));
            let Some(left) = deadline
                .checked_duration_since(Instant::now())
                .filter(|_| !all_done)
            else {
                break;
            };
            match consumer.poll(left.min(Duration::from_millis(20))) {
                Some(Ok(m)) if m.topic() == topic => {
                    if let (Some((start, _)), Some(s)) =
                        (start_of(m.partition()), seen.get_mut(&m.partition()))
                    {
                        if m.offset() >= start && s.first_data.is_none_or(|o| m.offset() < o) {
                            s.first_data = Some(m.offset());
                        }
                    }
                }
                Some(Err(e)) => tracing::debug!(%topic, error = %e, "lag probe poll"),
                _ => {}
            }
            // Control records are never handed out, but polling gets the position past them.
            for e in consumer.position()?.elements_for_topic(topic) {
                if let (Offset::Offset(o), Some((start, _)), Some(s)) = (
                    e.offset(),
                    start_of(e.partition()),
                    seen.get_mut(&e.partition()),
                ) {
                    if o >= start {
                        s.position = Some(o);
                    }
                }
            }
        }
        consumer.unassign()?;
        Ok(seen)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_client_rebootstraps_soon_and_librdkafka_takes_the_settings() {
        let brokers = "127.0.0.1:1";
        let configs = [
            ("producer", producer_config(brokers, "t")),
            (
                "transactional",
                transactional_producer_config(brokers, "t", "t"),
            ),
            ("consumer", consumer_config(brokers, "t", "g")),
        ];
        for (name, c) in configs {
            let trigger: u64 = c
                .get("metadata.recovery.rebootstrap.trigger.ms")
                .expect(name)
                .parse()
                .unwrap();
            assert!(trigger <= 10_000, "{name}: rebootstrap after {trigger} ms");
        }
        // Creating a client checks every property name and value (no connection needed).
        let _: BaseConsumer = consumer_config(brokers, "t", "g")
            .create()
            .expect("consumer settings accepted");
        let _: BaseProducer = transactional_producer_config(brokers, "t", "t")
            .create()
            .expect("producer settings accepted");
        metadata_client(brokers, "t").expect("metadata client settings accepted");
    }

    #[test]
    fn settled_lag_leaves_out_what_no_consumer_is_handed() {
        // Committed at the commit marker (offset 10), high watermark after it: at rest.
        assert_eq!(
            partition_lag(Some(10), 0, 11),
            1,
            "offsets alone count the marker"
        );
        assert_eq!(
            settled_lag(Some(10), 0, 11, Some(11)),
            0,
            "the probe got past the marker: nothing waits"
        );
        assert_eq!(
            settled_lag(Some(10), 0, 11, None),
            1,
            "no answer: offsets alone"
        );
        // Markers and an aborted transaction, then 5 records waiting (data at 20..25).
        assert_eq!(settled_lag(Some(10), 0, 25, Some(20)), 5);
        assert_eq!(
            settled_lag(Some(10), 0, 25, Some(10)),
            15,
            "data right at the commit"
        );
        assert_eq!(
            settled_lag(Some(10), 0, 25, Some(3)),
            15,
            "an answer from before the commit changes nothing"
        );
        assert_eq!(
            settled_lag(Some(10), 0, 25, Some(30)),
            0,
            "data only after the high watermark read"
        );
        assert_eq!(
            settled_lag(None, 4, 9, Some(9)),
            0,
            "never committed: from the low watermark"
        );
        assert_eq!(
            settled_lag(Some(2), 4, 9, Some(6)),
            3,
            "commit below retention"
        );
    }

    #[test]
    fn a_probe_is_done_when_it_meets_data_or_gets_to_the_high_watermark() {
        let nothing = ProbeSeen::default();
        assert_eq!((nothing.no_data_before(), nothing.done(11)), (None, false));
        let past_marker = ProbeSeen {
            first_data: None,
            position: Some(11),
        };
        assert_eq!(
            (past_marker.no_data_before(), past_marker.done(11)),
            (Some(11), true)
        );
        let partway = ProbeSeen {
            first_data: None,
            position: Some(8),
        };
        assert_eq!(
            (partway.no_data_before(), partway.done(11)),
            (Some(8), false),
            "partway: no data before 8, so far"
        );
        let data = ProbeSeen {
            first_data: Some(12),
            position: Some(40),
        };
        assert_eq!(
            (data.no_data_before(), data.done(50)),
            (Some(12), true),
            "the first data record, not where it stopped"
        );
    }

    fn offsets(committed: Option<i64>, high: i64) -> Vec<PartitionOffsets> {
        vec![PartitionOffsets {
            partition: 0,
            committed,
            low_watermark: 0,
            high_watermark: high,
            lag: partition_lag(committed, 0, high),
        }]
    }

    #[test]
    fn the_probe_is_asked_once_per_offsets_and_large_lags_wait_for_rest() {
        let _: BaseConsumer = probe_config("127.0.0.1:1", "t")
            .create()
            .expect("probe settings accepted");
        let mut probe = LagProbe::new("127.0.0.1:1", "t");
        let t0 = Instant::now();
        let at_marker = |p: &LagProbe| p.known[&("g".to_string(), "t".to_string(), 0)].clone();
        // At rest one marker past the commit: probed at once, the answer kept.
        let mut offs = offsets(Some(10), 11);
        let starts = probe.plan("g", "t", &offs, t0);
        assert_eq!(starts, vec![(0, 10, 11)]);
        let seen = [(
            0,
            ProbeSeen {
                first_data: None,
                position: Some(11),
            },
        )]
        .into();
        probe.record("g", "t", &starts, Some(&seen), t0);
        probe.apply("g", "t", &mut offs);
        assert_eq!(offs[0].lag, 0);
        assert!(at_marker(&probe).done);
        let mut again = offsets(Some(10), 11);
        assert!(
            probe
                .plan("g", "t", &again, t0 + PROBE_RETRY_AFTER * 2)
                .is_empty(),
            "settled: not probed again"
        );
        probe.apply("g", "t", &mut again);
        assert_eq!(again[0].lag, 0);
        // New records arrive: the answer was for other offsets.
        let mut moved = offsets(Some(10), 14);
        assert_eq!(probe.plan("g", "t", &moved, t0), vec![(0, 10, 14)]);
        probe.record(
            "g",
            "t",
            &[(0, 10, 14)],
            Some(
                &[(
                    0,
                    ProbeSeen {
                        first_data: Some(11),
                        position: Some(14),
                    },
                )]
                .into(),
            ),
            t0,
        );
        probe.apply("g", "t", &mut moved);
        assert_eq!(
            moved[0].lag, 3,
            "the marker at 10 is not lag, the 3 records after it are"
        );
        // A large lag is probed only once the offsets stayed put for a second reading.
        let big = offsets(Some(10), 10_000);
        assert!(
            probe.plan("g", "t", &big, t0).is_empty(),
            "moving: offsets alone"
        );
        assert_eq!(
            probe.plan("g", "t", &big, t0),
            vec![(0, 10, 10_000)],
            "at rest: probed"
        );
        // A probe that failed or timed out is retried, not at every reading.
        probe.record("g", "t", &[(0, 10, 10_000)], None, t0);
        assert!(probe
            .plan("g", "t", &big, t0 + Duration::from_secs(1))
            .is_empty());
        assert_eq!(probe.plan("g", "t", &big, t0 + PROBE_RETRY_AFTER).len(), 1);
        // Partway is still an answer; caught up forgets the partition; so does an unwatched pair.
        probe.record(
            "g",
            "t",
            &[(0, 10, 10_000)],
            Some(
                &[(
                    0,
                    ProbeSeen {
                        first_data: None,
                        position: Some(500),
                    },
                )]
                .into(),
            ),
            t0,
        );
        let mut partway = big.clone();
        probe.apply("g", "t", &mut partway);
        assert_eq!(partway[0].lag, 9_500);
        assert!(probe
            .plan("g", "t", &offsets(Some(10_000), 10_000), t0)
            .is_empty());
        assert!(probe.known.is_empty());
        probe.plan("g", "t", &offsets(Some(1), 2), t0);
        probe.retain(&[("g".to_string(), "other".to_string())].into());
        assert!(probe.known.is_empty());
    }

    #[test]
    fn lag_counts_from_commit_or_low_watermark() {
        assert_eq!(partition_lag(Some(40), 0, 100), 60);
        assert_eq!(partition_lag(None, 0, 100), 100);
        assert_eq!(
            partition_lag(None, 30, 100),
            70,
            "deleted records are not lag"
        );
        assert_eq!(
            partition_lag(Some(10), 30, 100),
            70,
            "commit below retention"
        );
        assert_eq!(partition_lag(Some(100), 0, 100), 0);
        assert_eq!(partition_lag(Some(120), 0, 100), 0, "never negative");
    }
}

/// What librdkafka says to do after a failed transactional call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TxnAction {
    /// The call timed out or met a passing condition: make the same call again. Aborting
    /// instead (a commit in progress, say) leaves the producer stuck between the two.
    Retry,
    /// The transaction is lost: abort it and consume its inputs again.
    Abort,
    /// The producer is unusable (fenced): replace it, or exit.
    Fatal,
}

pub fn txn_action(e: &KafkaError) -> TxnAction {
    match e {
        KafkaError::Transaction(t) if t.is_fatal() => TxnAction::Fatal,
        KafkaError::Transaction(t) if t.txn_requires_abort() => TxnAction::Abort,
        KafkaError::Transaction(t) if t.is_retriable() => TxnAction::Retry,
        _ => TxnAction::Abort,
    }
}

/// How long [`retry_transactional`] keeps making a call that times out before it gives
/// up on the producer. By then the coordinator has aborted the transaction anyway
/// (`transaction.timeout.ms` is 15 s), and after a broker restart librdkafka can keep a
/// coordinator request queued on a connection it never opens again, so that every retry
/// times out however long the broker has been back. A new producer under the same
/// transactional id settles what the old one left (its `init_transactions` aborts an
/// open transaction and completes one that was committing) and starts clean.
pub const TXN_RETRY_BUDGET: Duration = Duration::from_secs(30);

/// Make the transactional call `call` (`commit`, `abort`, `send_offsets`) until it
/// succeeds, fails for a reason other than a retriable one, or has been retried for
/// [`TXN_RETRY_BUDGET`]. Each retry counts in `retries_metric` (labelled `call`). Between
/// tries the producer's event queue is served: an abort completes only once the delivery
/// reports of the messages it purges have been polled. After it, check the error with
/// [`needs_new_producer`].
pub fn retry_transactional(
    producer: &BaseProducer,
    retries_metric: &str,
    call: &'static str,
    mut f: impl FnMut() -> Result<(), KafkaError>,
) -> Result<(), KafkaError> {
    let mut backoff = crate::backoff::Backoff::for_dependencies();
    let give_up_at = Instant::now() + TXN_RETRY_BUDGET;
    loop {
        match f() {
            Err(e) if txn_action(&e) == TxnAction::Retry && Instant::now() < give_up_at => {
                metrics::counter!(retries_metric.to_string(), "call" => call).increment(1);
                let delay = backoff.next_delay_jittered();
                tracing::warn!(error = %e, retry_in = ?delay, "transaction {call} failed; retrying");
                let until = Instant::now() + delay;
                while let Some(left) = until
                    .checked_duration_since(Instant::now())
                    .filter(|d| !d.is_zero())
                {
                    producer.poll(left.min(Duration::from_millis(50)));
                }
            }
            Err(e) if txn_action(&e) == TxnAction::Retry => {
                tracing::warn!(error = %e, budget = ?TXN_RETRY_BUDGET, "transaction {call} kept failing; giving up on this producer");
                return Err(e);
            }
            other => return other,
        }
    }
}

/// After [`retry_transactional`] failed: whether the producer must be replaced (fenced,
/// a call that timed out for the whole retry budget, or one abandoned as stuck:
/// [`KafkaError::Canceled`]) rather than its transaction aborted.
pub fn needs_new_producer(e: &KafkaError) -> bool {
    matches!(e, KafkaError::Canceled)
        || matches!(txn_action(e), TxnAction::Fatal | TxnAction::Retry)
}

/// Longest one `send_offsets_to_transaction` call may block before the producer is
/// abandoned as stuck in it (a healthy call that times out returns after ~15 s).
pub const SEND_OFFSETS_BOUND: Duration = Duration::from_secs(60);

/// `send_offsets_to_transaction`, on a helper thread, waited for at most
/// [`SEND_OFFSETS_BOUND`]. After a broker restart librdkafka's call can wait for a
/// coordinator forever: its timeout does not cover the coordinator lookup (librdkafka
/// issue 5456). Past the bound the call is left to its thread, which keeps the producer
/// alive until the call returns, if ever, and the error is [`KafkaError::Canceled`]: the
/// caller replaces the producer ([`needs_new_producer`]).
pub fn send_offsets_bounded(
    producer: &std::sync::Arc<BaseProducer>,
    offsets: &TopicPartitionList,
    group: &std::sync::Arc<rdkafka::consumer::ConsumerGroupMetadata>,
    timeout: Duration,
) -> Result<(), KafkaError> {
    let (tx, rx) = std::sync::mpsc::sync_channel(1);
    let (p, o, g) = (producer.clone(), offsets.clone(), group.clone());
    std::thread::Builder::new()
        .name("send-offsets".into())
        .spawn(move || {
            let _ = tx.send(p.send_offsets_to_transaction(&o, &g, timeout));
        })
        .map_err(|_| KafkaError::Canceled)?;
    match rx.recv_timeout(SEND_OFFSETS_BOUND) {
        Ok(result) => result,
        Err(_) => {
            tracing::error!(bound = ?SEND_OFFSETS_BOUND, "send_offsets_to_transaction is stuck; abandoning the producer");
            Err(KafkaError::Canceled)
        }
    }
}

/// How long one wait on the producer's event queue lasts while flushing or waiting for
/// queue space. `BaseProducer::poll` always waits out its whole timeout, even once the
/// event it waited for has come, so this is also the granularity of those waits.
const PRODUCER_POLL_STEP: Duration = Duration::from_millis(1);

/// Abort the open transaction. Messages not sent yet are purged first; the ones in
/// flight must end (acked, failed or timed out) before librdkafka can abort, and their
/// delivery reports are served here: `BaseProducer::abort_transaction` does not poll,
/// so on its own it waits out its timeout whenever a message was in flight.
pub fn abort_transaction(producer: &BaseProducer, timeout: Duration) -> Result<(), KafkaError> {
    let deadline = Instant::now() + timeout;
    producer.purge(rdkafka::producer::PurgeConfig::default().queue());
    while producer.in_flight_count() > 0 && Instant::now() < deadline {
        producer.poll(PRODUCER_POLL_STEP);
    }
    producer.abort_transaction(
        deadline
            .saturating_duration_since(Instant::now())
            .max(PRODUCER_POLL_STEP),
    )
}

/// `init_transactions`, retried while the broker is away. `Ok(false)` when `shutdown`
/// came first; an error when it failed fatally (fenced by a newer instance).
pub fn init_transactions_retrying(
    producer: &BaseProducer,
    timeout: Duration,
    shutdown: &tokio_util::sync::CancellationToken,
) -> anyhow::Result<bool> {
    let mut backoff = crate::backoff::Backoff::for_dependencies();
    loop {
        match producer.init_transactions(timeout) {
            Ok(()) => return Ok(true),
            Err(e) if txn_action(&e) == TxnAction::Fatal => {
                anyhow::bail!("initialising Kafka transactions: {e}")
            }
            Err(e) => {
                let delay = backoff.next_delay_jittered();
                tracing::warn!(error = %e, retry_in = ?delay, "initialising Kafka transactions failed; retrying");
                if crate::backoff::sleep_or_cancelled(shutdown, delay) {
                    return Ok(false);
                }
            }
        }
    }
}

/// [`committed_positions`], retried while the broker is away, serving the consumer between
/// tries ([`serve_consumer`]: it may have a revocation to take first). Gives up with the
/// last error once `give_up_at` has passed, if given; `Ok(None)` when `stop` says so first.
pub fn committed_positions_retrying<C: rdkafka::consumer::ConsumerContext>(
    consumer: &BaseConsumer<C>,
    timeout: Duration,
    give_up_at: Option<Instant>,
    stop: impl Fn() -> bool,
) -> Result<Option<TopicPartitionList>, KafkaError> {
    let mut backoff = crate::backoff::Backoff::for_dependencies();
    loop {
        match committed_positions(consumer, timeout) {
            Ok(tpl) => return Ok(Some(tpl)),
            Err(e) if give_up_at.is_some_and(|t| Instant::now() >= t) => return Err(e),
            Err(e) => {
                let delay = backoff.next_delay_jittered();
                tracing::warn!(error = %e, retry_in = ?delay, "reading committed offsets to rewind failed; retrying");
                if stop() {
                    return Ok(None);
                }
                serve_consumer(consumer, delay);
            }
        }
    }
}

/// Wait `delay` while serving the consumer's callbacks. A consumer whose session timed
/// out (the broker was away) waits for the application to take the revocation in `poll`,
/// and until then its committed-offset lookups time out, however long the broker has been
/// back. Messages polled meanwhile are dropped: the caller seeks to the committed offsets
/// next, which reads them again.
pub fn serve_consumer<C: rdkafka::consumer::ConsumerContext>(
    consumer: &BaseConsumer<C>,
    delay: Duration,
) {
    let until = Instant::now() + delay;
    while let Some(left) = until
        .checked_duration_since(Instant::now())
        .filter(|d| !d.is_zero())
    {
        let _ = consumer.poll(left.min(Duration::from_millis(100)));
    }
}

/// Where to rewind the consumer's assigned partitions to: each one's committed offset
/// (the start of the partition where none was committed yet). A partition whose
/// committed offset could not be read fails the whole call, to be retried: seeking it
/// to the start would consume again everything committed there (a broker that has just
/// restarted answers some offset fetches with a partition-level error).
pub fn committed_positions<C: rdkafka::consumer::ConsumerContext>(
    consumer: &BaseConsumer<C>,
    timeout: Duration,
) -> Result<TopicPartitionList, KafkaError> {
    let committed = consumer.committed(timeout)?;
    let mut tpl = TopicPartitionList::new();
    for e in committed.elements() {
        e.error()?;
        let offset = match e.offset() {
            Offset::Offset(o) => Offset::Offset(o),
            _ => Offset::Beginning,
        };
        tpl.add_partition_offset(e.topic(), e.partition(), offset)?;
    }
    Ok(tpl)
}

/// Queue `record`, waiting for space while the producer's queue is full.
pub fn send_waiting(
    producer: &BaseProducer,
    mut record: BaseRecord<'_, [u8], [u8]>,
) -> Result<(), KafkaError> {
    loop {
        match producer.send(record) {
            Ok(()) => return Ok(()),
            Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back)) => {
                record = back;
                producer.poll(PRODUCER_POLL_STEP);
            }
            Err((e, _)) => return Err(e),
        }
    }
}

/// Commit the open transaction, flushing first in short steps.
///
/// `BaseProducer::commit_transaction` flushes through `BaseProducer::flush`, which polls in
/// 100 ms steps, and each poll waits its full step: any commit with a message still in
/// flight (always, with `linger.ms`) took at least 100 ms, which capped a transactional
/// loop at one batch per 100 ms. Flushed here first, its own flush finds nothing to wait for.
/// A flush that times out is an error to abort on, as it is inside `commit_transaction`.
pub fn commit_transaction(producer: &BaseProducer, timeout: Duration) -> Result<(), KafkaError> {
    let deadline = Instant::now() + timeout;
    while producer.in_flight_count() > 0 {
        if Instant::now() >= deadline {
            return Err(KafkaError::Flush(RDKafkaErrorCode::OperationTimedOut));
        }
        producer.poll(PRODUCER_POLL_STEP);
    }
    producer.commit_transaction(
        deadline
            .saturating_duration_since(Instant::now())
            .max(PRODUCER_POLL_STEP),
    )
}
