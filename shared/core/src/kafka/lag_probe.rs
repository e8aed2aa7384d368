//! The lag probe: a `read_committed` consumer that looks past a group's position so that
//! transaction markers and aborted records are not counted as lag.

use std::time::{Duration, Instant};

use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::{Message, Offset, TopicPartitionList};

use super::{consumer_config, settled_lag, PartitionOffsets};

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
    ///
    /// [`group_offsets`]: super::group_offsets
    pub fn settle(&mut self, group: &str, topic: &str, offsets: &mut [PartitionOffsets]) {
        let now = Instant::now();
        let starts = self.plan(group, topic, offsets, now);
        if !starts.is_empty() {
            let seen = self.probe(topic, &starts);
            if let Err(e) = &seen {
                tracing::debug!(
                    %group,
                    %topic,
                    error = %format!("{e:#}"),
                    "lag probe failed; using a new probe client"
                );
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
    use crate::kafka::partition_lag;

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
}
