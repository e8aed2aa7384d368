//! Consumer-group lag: a group's committed offsets against the topic's watermarks, and
//! the arithmetic that turns them into lag.

use std::time::Duration;

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::RDKafkaErrorCode;
use rdkafka::{Offset, TopicPartitionList};

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
///
/// [`consumer_config`]: super::consumer_config
/// [`LagProbe::settle`]: super::LagProbe::settle
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

#[cfg(test)]
mod tests {
    use super::*;

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
