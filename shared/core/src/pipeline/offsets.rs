//! Which offsets a loop commits: pure rules over the per-partition offsets of its one
//! input topic, so they are tested without a broker.

use std::collections::BTreeMap;

use rdkafka::{Offset, TopicPartitionList};

/// An offset per partition of the loop's input topic: the next one to read.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct NextOffsets(BTreeMap<i32, i64>);

impl NextOffsets {
    /// One past the last of `(partition, offset)` per partition.
    pub fn after<I: IntoIterator<Item = (i32, i64)>>(consumed: I) -> Self {
        let mut next = NextOffsets::default();
        for (p, o) in consumed {
            next.advance(p, o);
        }
        next
    }

    /// Take in one more consumed offset.
    pub fn advance(&mut self, partition: i32, offset: i64) {
        let e = self.0.entry(partition).or_insert(offset + 1);
        *e = (*e).max(offset + 1);
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn get(&self, partition: i32) -> Option<i64> {
        self.0.get(&partition).copied()
    }

    /// These offsets, each moved up to the consumer's `position` where that is further.
    /// Only sound when every message polled is in what is being committed: then the
    /// position is past them and past transaction control records only. Committing it
    /// keeps a drained group's lag at 0 on a topic written transactionally, whose
    /// partitions end with a commit marker, instead of 1 per partition forever.
    pub fn or_position(&self, position: &NextOffsets) -> NextOffsets {
        let mut out = self.clone();
        for (p, next) in out.0.iter_mut() {
            if let Some(pos) = position.get(*p) {
                *next = (*next).max(pos);
            }
        }
        out
    }

    /// While idle (nothing polled since the last commit), the partitions whose position
    /// moved past what was `committed`: only over control records, so commit them too.
    pub fn idle_commits(position: &NextOffsets, committed: &NextOffsets) -> NextOffsets {
        NextOffsets(
            position
                .0
                .iter()
                .filter(|(p, pos)| committed.get(**p).is_some_and(|done| **pos > done))
                .map(|(p, pos)| (*p, *pos))
                .collect(),
        )
    }

    /// Remember `newer` (offsets just committed) over these.
    pub fn merge(&mut self, newer: &NextOffsets) {
        self.0.extend(newer.0.iter().map(|(p, o)| (*p, *o)));
    }

    /// The offsets of `topic` in an rdkafka list (absolute offsets only).
    pub fn of_list(topic: &str, tpl: &TopicPartitionList) -> NextOffsets {
        NextOffsets(
            tpl.elements_for_topic(topic)
                .iter()
                .filter_map(|e| match e.offset() {
                    Offset::Offset(o) => Some((e.partition(), o)),
                    _ => None,
                })
                .collect(),
        )
    }

    /// As an rdkafka list for `topic`.
    pub fn to_list(&self, topic: &str) -> TopicPartitionList {
        let mut tpl = TopicPartitionList::with_capacity(self.0.len());
        for (p, o) in &self.0 {
            tpl.add_partition_offset(topic, *p, Offset::Offset(*o))
                .expect("an absolute offset is always valid");
        }
        tpl
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn offsets(pairs: &[(i32, i64)]) -> NextOffsets {
        NextOffsets(pairs.iter().copied().collect())
    }

    #[test]
    fn next_offsets_are_one_past_the_last_per_partition() {
        let next = NextOffsets::after([(0, 5), (1, 9), (0, 7), (2, 1)]);
        assert_eq!(next, offsets(&[(0, 8), (1, 10), (2, 2)]));
    }

    #[test]
    fn the_position_counts_only_where_further_and_only_for_committed_partitions() {
        let next = offsets(&[(0, 8), (1, 10)]);
        let position = offsets(&[(0, 9), (1, 7), (2, 50)]);
        assert_eq!(next.or_position(&position), offsets(&[(0, 9), (1, 10)]));
    }

    #[test]
    fn idle_commits_are_positions_past_what_was_committed() {
        let committed = offsets(&[(0, 8), (1, 10)]);
        let position = offsets(&[(0, 9), (1, 10), (2, 4)]);
        assert_eq!(
            NextOffsets::idle_commits(&position, &committed),
            offsets(&[(0, 9)]),
            "partition 2 was never committed by this loop: its position says nothing"
        );
    }

    #[test]
    fn lists_round_trip_for_one_topic() {
        let next = offsets(&[(0, 3), (4, 1)]);
        let tpl = next.to_list("t");
        assert_eq!(tpl.count(), 2);
        assert_eq!(NextOffsets::of_list("t", &tpl), next);
        assert!(NextOffsets::of_list("other", &tpl).is_empty());
        let mut merged = offsets(&[(0, 1), (1, 1)]);
        merged.merge(&next);
        assert_eq!(merged, offsets(&[(0, 3), (1, 1), (4, 1)]));
    }
}
