//! Lag readings from committed offsets and high watermarks, and which groups to watch.
//! Pure: the Kafka calls live in `lib.rs`.

use std::collections::{BTreeMap, BTreeSet};

use aifab_core::kafka::PartitionOffsets;
use aifab_core::messages::{tag, LagReading, PartitionLag};

/// Turns successive offset snapshots into lag readings with a rate of change.
#[derive(Debug, Default)]
pub struct LagTracker {
    prev: BTreeMap<(String, String), (i64, i64)>,
}

impl LagTracker {
    /// One reading for `group` on `topic` at `at_ms`.
    pub fn observe(
        &mut self,
        group: &str,
        topic: &str,
        offsets: &[PartitionOffsets],
        at_ms: i64,
    ) -> LagReading {
        let total: i64 = offsets.iter().map(|p| p.lag).sum();
        let key = (group.to_string(), topic.to_string());
        let rate = match self.prev.get(&key) {
            Some(&(t, l)) if at_ms > t => (total - l) as f64 * 1000.0 / (at_ms - t) as f64,
            _ => 0.0,
        };
        self.prev.insert(key, (at_ms, total));
        LagReading {
            schema: tag(),
            group: group.to_string(),
            topic: topic.to_string(),
            partitions: offsets
                .iter()
                .map(|p| PartitionLag {
                    partition: p.partition,
                    committed: p.committed.filter(|c| *c >= 0),
                    high_watermark: p.high_watermark.max(0),
                    lag: p.lag.max(0),
                })
                .collect(),
            total_lag: total.max(0),
            lag_rate_per_s: rate,
            at_ms,
        }
    }

    /// Forget pairs no longer watched.
    pub fn retain(&mut self, watched: &BTreeSet<(String, String)>) {
        self.prev.retain(|k, _| watched.contains(k));
    }
}

/// Parse `group=topic,group=topic`.
pub fn parse_watch(spec: &str) -> Result<BTreeSet<(String, String)>, String> {
    spec.split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|pair| {
            let (g, t) = pair
                .split_once('=')
                .ok_or_else(|| format!("watch {pair:?}: expected GROUP=TOPIC"))?;
            if g.trim().is_empty() || t.trim().is_empty() {
                return Err(format!("watch {pair:?}: expected GROUP=TOPIC"));
            }
            Ok((g.trim().to_string(), t.trim().to_string()))
        })
        .collect()
}

/// The topics in a consumer-protocol member assignment (Kafka's `ConsumerProtocolAssignment`:
/// version i16, then an array of (topic string, partitions i32 array), then user data).
pub fn assignment_topics(bytes: &[u8]) -> Vec<String> {
    fn i16_at(b: &[u8], at: usize) -> Option<i16> {
        Some(i16::from_be_bytes(b.get(at..at + 2)?.try_into().ok()?))
    }
    fn i32_at(b: &[u8], at: usize) -> Option<i32> {
        Some(i32::from_be_bytes(b.get(at..at + 4)?.try_into().ok()?))
    }
    let mut out = Vec::new();
    let Some(_version) = i16_at(bytes, 0) else {
        return out;
    };
    let Some(n) = i32_at(bytes, 2) else {
        return out;
    };
    let mut at = 6;
    for _ in 0..n.max(0) {
        let Some(len) = i16_at(bytes, at) else { break };
        at += 2;
        let Some(name) = bytes.get(at..at + len.max(0) as usize) else {
            break;
        };
        at += len.max(0) as usize;
        let Some(parts) = i32_at(bytes, at) else {
            break;
        };
        at += 4 + 4 * parts.max(0) as usize;
        if let Ok(s) = std::str::from_utf8(name) {
            out.push(s.to_string());
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn offs(lags: &[i64]) -> Vec<PartitionOffsets> {
        lags.iter()
            .enumerate()
            .map(|(i, l)| PartitionOffsets {
                partition: i as i32,
                committed: if *l == 100 { None } else { Some(100 - l) },
                low_watermark: 0,
                high_watermark: 100,
                lag: *l,
            })
            .collect()
    }

    #[test]
    fn readings_carry_totals_partitions_and_the_rate() {
        let mut t = LagTracker::default();
        let r = t.observe("g", "t", &offs(&[10, 20]), 1_000);
        assert_eq!((r.total_lag, r.lag_rate_per_s), (30, 0.0));
        assert_eq!(r.partitions[1].committed, Some(80));
        let r = t.observe("g", "t", &offs(&[40, 100]), 3_000);
        assert_eq!(r.total_lag, 140);
        assert_eq!(r.lag_rate_per_s, 55.0, "(140 - 30) / 2 s");
        assert_eq!(r.partitions[1].committed, None, "never committed");
        let r = t.observe("g", "t", &offs(&[0, 0]), 4_000);
        assert_eq!(r.lag_rate_per_s, -140.0, "draining");
        aifab_core::schema::validate("lag.reading/v1", &serde_json::to_value(&r).unwrap()).unwrap();
        // Another group has its own history.
        assert_eq!(t.observe("h", "t", &offs(&[5]), 5_000).lag_rate_per_s, 0.0);
    }

    #[test]
    fn watch_lists() {
        let w = parse_watch("a=x, b=y,").unwrap();
        assert!(w.contains(&("a".into(), "x".into())) && w.len() == 2);
        assert!(parse_watch("nope").unwrap_err().contains("GROUP=TOPIC"));
    }

    #[test]
    fn member_assignments_name_their_topics() {
        let mut b = vec![0, 1]; // version 1
        b.extend(2i32.to_be_bytes());
        for (topic, parts) in [
            ("aifab.inference.requests", vec![0, 1, 2]),
            ("other", vec![7]),
        ] {
            b.extend((topic.len() as i16).to_be_bytes());
            b.extend(topic.as_bytes());
            b.extend((parts.len() as i32).to_be_bytes());
            for p in parts {
                b.extend(i32::to_be_bytes(p));
            }
        }
        b.extend((-1i32).to_be_bytes()); // null user data
        assert_eq!(
            assignment_topics(&b),
            vec!["aifab.inference.requests", "other"]
        );
        assert!(assignment_topics(&[0]).is_empty());
        assert_eq!(
            assignment_topics(&b[..20]),
            Vec::<String>::new(),
            "truncated: nothing half-read"
        );
    }
}
