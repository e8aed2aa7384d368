//! What rebalances and redeliveries make stale: partitions revoked since the last poll
//! ([`RebalanceTracker`]) and messages handed over a second time ([`Positions`]).

use std::collections::{HashMap, HashSet};
use std::sync::Mutex;

use rdkafka::consumer::{BaseConsumer, ConsumerContext, Rebalance};
use rdkafka::ClientContext;

/// The next offset a loop expects per input partition, to drop messages the consumer
/// hands over a second time. After a broker restart librdkafka has been seen to deliver a
/// partition's messages again from an earlier offset with no rewind or rebalance of the
/// loop's own (a seek made just before a session timeout, applied after the partition was
/// assigned again), which would process and commit them twice. Only the loop's own rewind
/// and a revocation make an earlier offset legitimate again: both forget the partition.
/// One loop reads one topic, so partitions are enough of a key.
#[derive(Debug, Default)]
pub struct Positions(HashMap<i32, i64>);

impl Positions {
    /// Whether a message at `offset` of `partition` is new; if so, the one after it is
    /// now expected next.
    pub fn admit(&mut self, partition: i32, offset: i64) -> bool {
        let next = self.0.entry(partition).or_insert(offset);
        if offset < *next {
            return false;
        }
        *next = offset + 1;
        true
    }

    pub fn forget(&mut self, partition: i32) {
        self.0.remove(&partition);
    }

    pub fn clear(&mut self) {
        self.0.clear();
    }
}

/// Records partitions revoked by rebalances. Rebalance callbacks run only inside `poll`,
/// so the loop asks after each poll and drops what it collected of those partitions:
/// their next owner reads them again from the committed offset.
#[derive(Default)]
pub struct RebalanceTracker {
    revoked: Mutex<Vec<(String, i32)>>,
}

impl RebalanceTracker {
    /// Partitions of `topic` revoked since the last call (others are forgotten).
    pub fn take_revoked(&self, topic: &str) -> HashSet<i32> {
        // Never held across anything but this take: callbacks and the loop share a thread.
        let revoked = std::mem::take(&mut *self.revoked.lock().expect("rebalance lock"));
        revoked
            .into_iter()
            .filter(|(t, _)| t == topic)
            .map(|(_, p)| p)
            .collect()
    }
}

impl ClientContext for RebalanceTracker {}

impl ConsumerContext for RebalanceTracker {
    fn pre_rebalance(&self, _: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Revoke(tpl) = rebalance {
            let mut revoked = self.revoked.lock().expect("rebalance lock");
            for e in tpl.elements() {
                revoked.push((e.topic().to_string(), e.partition()));
            }
            tracing::info!(partitions = tpl.count(), "partitions revoked");
        }
    }

    fn post_rebalance(&self, _: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Assign(tpl) = rebalance {
            tracing::info!(partitions = tpl.count(), "partitions assigned");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_partition_delivered_again_from_an_earlier_offset_is_dropped() {
        let mut p = Positions::default();
        assert!(
            p.admit(3, 0) && p.admit(3, 1) && p.admit(3, 5),
            "offsets may skip (transaction markers)"
        );
        assert!(!p.admit(3, 0) && !p.admit(3, 5), "already taken");
        assert!(
            p.admit(3, 6) && p.admit(1, 0),
            "new offsets, and other partitions, pass"
        );
    }

    #[test]
    fn a_rewind_or_revocation_makes_earlier_offsets_legitimate() {
        let mut p = Positions::default();
        assert!(p.admit(0, 10) && p.admit(1, 10));
        p.forget(0);
        assert!(
            p.admit(0, 3),
            "revoked and assigned again: starts from the committed offset"
        );
        assert!(!p.admit(1, 3));
        p.clear();
        assert!(p.admit(1, 3), "after the loop's own rewind");
    }

    #[test]
    fn revocations_are_taken_once_and_only_for_the_topic() {
        let t = RebalanceTracker::default();
        t.revoked.lock().unwrap().extend([
            ("in".to_string(), 0),
            ("other".to_string(), 1),
            ("in".to_string(), 2),
        ]);
        assert_eq!(t.take_revoked("in"), HashSet::from([0, 2]));
        assert!(t.take_revoked("in").is_empty(), "taken already");
    }
}
