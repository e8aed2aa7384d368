//! Consumer lag from Kafka: which (group, topic) pairs are watched (the static list plus
//! discovered groups), the poller thread that reads their offsets, and publishing each
//! reading. The arithmetic is in [`crate::lag`].

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use aifab_core::messages::{encode, LagReading};
use aifab_core::topics::{self, groups, subjects};
use anyhow::Context;
use rdkafka::consumer::{BaseConsumer, Consumer};
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::lag::{self, LagTracker};
use crate::metric_names;

/// A service's consumer group and the topic it reads.
struct KnownGroup {
    group: &'static str,
    topic: &'static str,
}

/// The consumer group each service uses and the topic it reads, for discovered groups
/// that have no members right now.
const KNOWN: &[KnownGroup] = &[
    KnownGroup {
        group: groups::INGEST,
        topic: topics::INGEST_RAW.name,
    },
    KnownGroup {
        group: groups::FEATURE,
        topic: topics::FEATURES_IN.name,
    },
    KnownGroup {
        group: groups::INFERENCE_WORKER,
        topic: topics::INFERENCE_REQUESTS.name,
    },
    KnownGroup {
        group: groups::TRAINER,
        topic: topics::TRAINING_EXAMPLES.name,
    },
    KnownGroup {
        group: groups::MONITOR,
        topic: topics::PREDICTIONS.name,
    },
    KnownGroup {
        group: groups::COST_ACCOUNTANT,
        topic: topics::USAGE.name,
    },
];

/// The watched (group, topic) pairs: the static list plus discovered groups.
struct Watch {
    config: Config,
    static_watch: BTreeSet<(String, String)>,
    discovered: BTreeSet<(String, String)>,
    /// Groups already probed for committed offsets (probing is one request per topic).
    probed: BTreeSet<String>,
    clients: BTreeMap<String, BaseConsumer>,
    /// Failed offset reads in a row per group's client.
    failures: BTreeMap<String, u32>,
}

/// Whether an offsets read reached the broker: a topic not created yet is an answer, and
/// must not count against the client (a group watching only that topic would have its
/// client replaced every few reads).
fn broker_answered<T>(read: &anyhow::Result<T>) -> bool {
    read.as_ref()
        .map_or_else(|e| e.is::<aifab_core::kafka::TopicMissing>(), |_| true)
}

/// Failed reads in a row after which a group's offsets client is replaced: after a broker
/// restart a librdkafka client can go on failing long after the broker is back (as the
/// services' readiness probe does, see `aifab_core::service`).
const READ_FAILURES_BEFORE_NEW_CLIENT: u32 = 3;

impl Watch {
    fn client(&mut self, group: &str) -> anyhow::Result<&BaseConsumer> {
        if !self.clients.contains_key(group) {
            let c: BaseConsumer = aifab_core::kafka::consumer_config(
                &self.config.brokers.kafka_brokers,
                "aifab-monitor-lag",
                group,
            )
            .create()
            .with_context(|| format!("offsets client for group {group}"))?;
            self.clients.insert(group.to_string(), c);
        }
        Ok(&self.clients[group])
    }

    /// Note a read's outcome for `group`; after too many failures in a row its client is
    /// dropped, so the next read makes a new one. On the poller's own thread: dropping a
    /// client waits for its threads.
    fn note_read(&mut self, group: &str, ok: bool) {
        if ok {
            self.failures.remove(group);
            return;
        }
        let n = self.failures.entry(group.to_string()).or_default();
        *n += 1;
        if *n >= READ_FAILURES_BEFORE_NEW_CLIENT {
            self.failures.remove(group);
            if self.clients.remove(group).is_some() {
                tracing::info!(%group, "offset reads keep failing; using a new client");
            }
        }
    }

    fn discover(&mut self, timeout: Duration) -> anyhow::Result<()> {
        let brokers = self.config.brokers.kafka_brokers.clone();
        let list = {
            let c: BaseConsumer =
                aifab_core::kafka::metadata_client(&brokers, "aifab-monitor-groups")?;
            c.fetch_group_list(None, timeout)?
                .groups()
                .iter()
                .filter(|g| g.name().starts_with(&self.config.group_prefix))
                .filter(|g| g.protocol_type().is_empty() || g.protocol_type() == "consumer")
                .map(|g| {
                    let topics: BTreeSet<String> = g
                        .members()
                        .iter()
                        .filter_map(|m| m.assignment())
                        .flat_map(lag::assignment_topics)
                        .collect();
                    (g.name().to_string(), topics)
                })
                .collect::<Vec<_>>()
        };
        let mut found = BTreeSet::new();
        for (group, mut topics) in list {
            topics.retain(|t| t.starts_with(&self.config.topic_prefix));
            for k in KNOWN.iter().filter(|k| k.group == group) {
                topics.insert(k.topic.to_string());
            }
            if topics.is_empty() && !self.probed.contains(&group) {
                // No members and not a known service: look for committed offsets.
                self.probed.insert(group.clone());
                let prefix = self.config.topic_prefix.clone();
                for t in topics::TOPICS
                    .iter()
                    .filter(|t| t.name.starts_with(&prefix))
                {
                    let c = self.client(&group)?;
                    if let Ok(offs) = aifab_core::kafka::group_offsets(c, t.name, timeout) {
                        if offs.iter().any(|p| p.committed.is_some()) {
                            topics.insert(t.name.to_string());
                        }
                    }
                }
            }
            for t in topics {
                found.insert((group.clone(), t));
            }
        }
        // Keep earlier discoveries of groups that still exist but went quiet.
        self.discovered.extend(found);
        Ok(())
    }

    fn pairs(&self) -> BTreeSet<(String, String)> {
        self.static_watch.union(&self.discovered).cloned().collect()
    }
}

/// Read every watched pair's offsets each interval and send the readings; runs on its own
/// thread (librdkafka's calls block) until `token` is cancelled.
pub(crate) fn lag_poller(
    config: Config,
    static_watch: BTreeSet<(String, String)>,
    tx: tokio::sync::mpsc::Sender<LagReading>,
    token: CancellationToken,
) {
    let interval = Duration::from_millis(config.interval_ms.max(100));
    let timeout = Duration::from_secs(5);
    let discover_every = Duration::from_secs(config.discover_every_s.max(1));
    let mut watch = Watch {
        config: config.clone(),
        static_watch,
        discovered: BTreeSet::new(),
        probed: BTreeSet::new(),
        clients: BTreeMap::new(),
        failures: BTreeMap::new(),
    };
    let mut tracker = LagTracker::default();
    // Transactional consumers commit up to, not past, each transaction's commit marker:
    // the probe takes markers (and aborted records) out of the lag, so a group at rest
    // reads 0, not one per partition.
    let mut probe =
        aifab_core::kafka::LagProbe::new(&config.brokers.kafka_brokers, "aifab-monitor-lag");
    let mut last_discovery: Option<std::time::Instant> = None;
    let mut warned = false;
    while !token.is_cancelled() {
        let started = std::time::Instant::now();
        if config.discover && last_discovery.is_none_or(|t| t.elapsed() >= discover_every) {
            match watch.discover(timeout) {
                Ok(()) => last_discovery = Some(std::time::Instant::now()),
                Err(e) => tracing::debug!(error = %format!("{e:#}"), "group discovery failed"),
            }
        }
        let pairs = watch.pairs();
        tracker.retain(&pairs);
        probe.retain(&pairs);
        for (group, topic) in &pairs {
            if token.is_cancelled() {
                return;
            }
            let at = aifab_core::now_ms();
            let result = watch
                .client(group)
                .and_then(|c| aifab_core::kafka::group_offsets(c, topic, timeout));
            watch.note_read(group, broker_answered(&result));
            match result {
                Ok(mut offs) => {
                    warned = false;
                    probe.settle(group, topic, &mut offs);
                    let reading = tracker.observe(group, topic, &offs, at);
                    if tx.blocking_send(reading).is_err() {
                        return;
                    }
                }
                Err(e) => {
                    if !warned {
                        tracing::warn!(%group, %topic, error = %format!("{e:#}"),
                            "reading offsets failed; retrying");
                        warned = true;
                    }
                }
            }
        }
        // Sleep out the interval in small steps so SIGTERM is quick.
        while started.elapsed() < interval && !token.is_cancelled() {
            std::thread::sleep(Duration::from_millis(50).min(interval));
        }
    }
}

/// A reading's gauges on `/metrics`, and the reading on NATS `aifab.lag.<group>`.
pub(crate) async fn publish_lag(nats: &async_nats::Client, r: &LagReading) {
    let labels = [("group", r.group.clone()), ("topic", r.topic.clone())];
    metrics::gauge!(metric_names::CONSUMER_LAG_RECORDS, &labels).set(r.total_lag as f64);
    metrics::gauge!(metric_names::CONSUMER_LAG_RATE_RECORDS_PER_SECOND, &labels)
        .set(r.lag_rate_per_s);
    for p in &r.partitions {
        metrics::gauge!(metric_names::CONSUMER_LAG_PARTITION_RECORDS,
            "group" => r.group.clone(), "topic" => r.topic.clone(),
            "partition" => p.partition.to_string())
        .set(p.lag as f64);
    }
    if let Err(e) = nats
        .publish(subjects::lag(&r.group), encode(r).into())
        .await
    {
        tracing::warn!(error = %e, "publishing a lag reading failed");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser as _;

    #[test]
    fn a_group_client_failing_three_reads_in_a_row_is_replaced() {
        let config = Config::parse_from(["aifab-monitor"]);
        let mut watch = Watch {
            config,
            static_watch: BTreeSet::new(),
            discovered: BTreeSet::new(),
            probed: BTreeSet::new(),
            clients: BTreeMap::new(),
            failures: BTreeMap::new(),
        };
        watch.client("g").unwrap(); // no connection is made until a request
        watch.note_read("g", false);
        watch.note_read("g", false);
        watch.note_read("g", true);
        watch.note_read("g", false);
        watch.note_read("g", false);
        assert!(
            watch.clients.contains_key("g"),
            "a success in between starts the count again"
        );
        watch.note_read("g", false);
        assert!(
            !watch.clients.contains_key("g"),
            "the third failure in a row drops the client"
        );
        let missing: anyhow::Result<()> = Err(aifab_core::kafka::TopicMissing("t".into()).into());
        assert!(
            broker_answered(&missing),
            "a topic that does not exist yet is the broker's answer"
        );
        assert!(!broker_answered::<()>(&Err(anyhow::anyhow!(
            "metadata timed out"
        ))));
        watch.client("g").unwrap();
        watch.note_read("g", false);
        assert!(
            watch.clients.contains_key("g"),
            "the new client starts with no failures"
        );
    }
}
