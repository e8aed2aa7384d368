//! Rolling windows of end-to-end latency (hdrhistogram) and throughput, per model, per
//! tenant and overall, plus dead letters. Pure: the clock is an argument.

use std::collections::{BTreeMap, VecDeque};

use hdrhistogram::Histogram;

pub use aifab_core::dashboard::WindowStats;

/// What a window is kept for.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Key {
    All,
    Model { task: String, version: String },
    Tenant(String),
}

#[derive(Debug, Clone)]
struct Stats {
    latency_ms: Histogram<u64>,
    count: u64,
    errors: u64,
}

impl Stats {
    fn new() -> Self {
        Stats {
            // 1 ms .. 1 h at 2 significant figures: a few KB per histogram.
            latency_ms: Histogram::new_with_bounds(1, 3_600_000, 2).expect("valid bounds"),
            count: 0,
            errors: 0,
        }
    }
}

#[derive(Debug)]
struct Slot {
    start_ms: i64,
    stats: BTreeMap<Key, Stats>,
    dead_letters: u64,
}

/// Predictions and dead letters over the last `window_ms`, in `slots` slices.
#[derive(Debug)]
pub struct Windows {
    window_ms: i64,
    slot_ms: i64,
    slots: VecDeque<Slot>,
    started_ms: Option<i64>,
}

impl Windows {
    pub fn new(window_ms: i64, slots: u32) -> Self {
        let window_ms = window_ms.max(1000);
        Windows {
            window_ms,
            slot_ms: (window_ms / slots.max(1) as i64).max(100),
            slots: VecDeque::new(),
            started_ms: None,
        }
    }

    pub fn window_ms(&self) -> i64 {
        self.window_ms
    }

    fn slot(&mut self, now_ms: i64) -> &mut Slot {
        self.started_ms.get_or_insert(now_ms);
        let start = now_ms - now_ms.rem_euclid(self.slot_ms);
        if self.slots.back().is_none_or(|s| s.start_ms < start) {
            self.slots.push_back(Slot {
                start_ms: start,
                stats: BTreeMap::new(),
                dead_letters: 0,
            });
        }
        self.expire(now_ms);
        self.slots.back_mut().expect("just pushed")
    }

    fn expire(&mut self, now_ms: i64) {
        while self
            .slots
            .front()
            .is_some_and(|s| s.start_ms + self.slot_ms <= now_ms - self.window_ms)
        {
            self.slots.pop_front();
        }
    }

    /// Record one prediction: its latency, whether it failed, its model and tenant.
    pub fn record(
        &mut self,
        now_ms: i64,
        latency_ms: f64,
        error: bool,
        task: &str,
        version: &str,
        tenant: &str,
    ) {
        let slot = self.slot(now_ms);
        let v = latency_ms.round().clamp(1.0, 3_600_000.0) as u64;
        for key in [
            Key::All,
            Key::Model {
                task: task.to_string(),
                version: version.to_string(),
            },
            Key::Tenant(tenant.to_string()),
        ] {
            let s = slot.stats.entry(key).or_insert_with(Stats::new);
            s.latency_ms.saturating_record(v);
            s.count += 1;
            s.errors += error as u64;
        }
    }

    pub fn record_dead_letter(&mut self, now_ms: i64) {
        self.slot(now_ms).dead_letters += 1;
    }

    /// Seconds the window covers now (less than the window right after start).
    fn span_s(&self, now_ms: i64) -> f64 {
        let since = self.started_ms.map(|s| now_ms - s).unwrap_or(0);
        (since.min(self.window_ms).max(1000)) as f64 / 1000.0
    }

    fn in_window(&self, now_ms: i64) -> impl Iterator<Item = &Slot> {
        let from = now_ms - self.window_ms;
        self.slots
            .iter()
            .filter(move |s| s.start_ms + self.slot_ms > from)
    }

    /// Stats per key over the window ending at `now_ms`.
    pub fn stats(&mut self, now_ms: i64) -> BTreeMap<Key, WindowStats> {
        self.expire(now_ms);
        let mut merged: BTreeMap<Key, Stats> = BTreeMap::new();
        for slot in self.in_window(now_ms) {
            for (k, s) in &slot.stats {
                let m = merged.entry(k.clone()).or_insert_with(Stats::new);
                let _ = m.latency_ms.add(&s.latency_ms);
                m.count += s.count;
                m.errors += s.errors;
            }
        }
        let span = self.span_s(now_ms);
        merged
            .into_iter()
            .map(|(k, s)| {
                let q = |p: f64| (s.count > 0).then(|| s.latency_ms.value_at_quantile(p) as f64);
                (
                    k,
                    WindowStats {
                        count: s.count,
                        per_second: s.count as f64 / span,
                        errors: s.errors,
                        error_rate: if s.count > 0 {
                            s.errors as f64 / s.count as f64
                        } else {
                            0.0
                        },
                        p50_ms: q(0.5),
                        p90_ms: q(0.9),
                        p99_ms: q(0.99),
                        max_ms: (s.count > 0).then(|| s.latency_ms.max() as f64),
                    },
                )
            })
            .collect()
    }

    /// Dead letters per second over the window.
    pub fn dead_letters_per_s(&mut self, now_ms: i64) -> f64 {
        self.expire(now_ms);
        let n: u64 = self.in_window(now_ms).map(|s| s.dead_letters).sum();
        n as f64 / self.span_s(now_ms)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_throughput_and_errors_per_key() {
        let mut w = Windows::new(60_000, 6);
        let t0 = 1_000_000;
        for i in 0..1000u64 {
            let tenant = if i % 4 == 0 { "beta" } else { "acme" };
            let version = if i < 500 { "v1" } else { "v2" };
            // Latencies 1..=1000 ms; every 100th expired.
            w.record(
                t0 + (i as i64) * 60,
                (i + 1) as f64,
                i % 100 == 0,
                "spam",
                version,
                tenant,
            );
        }
        let now = t0 + 60_000;
        let s = w.stats(now);
        let all = &s[&Key::All];
        assert_eq!(all.count, 1000);
        assert!((all.per_second - 1000.0 / 60.0).abs() < 1e-9);
        assert_eq!(all.errors, 10);
        assert!((all.error_rate - 0.01).abs() < 1e-12);
        let p99 = all.p99_ms.unwrap();
        assert!((985.0..=1000.0).contains(&p99), "p99 {p99}");
        let p50 = all.p50_ms.unwrap();
        assert!((495.0..=505.0).contains(&p50), "p50 {p50}");
        assert_eq!(s[&Key::Tenant("beta".into())].count, 250);
        let spam_v2 = Key::Model {
            task: "spam".into(),
            version: "v2".into(),
        };
        assert_eq!(s[&spam_v2].count, 500);
        assert!(s[&spam_v2].p50_ms.unwrap() > 700.0);
    }

    #[test]
    fn old_slots_leave_the_window() {
        let mut w = Windows::new(10_000, 5);
        w.record(0, 5.0, false, "t", "v", "a");
        w.record_dead_letter(0);
        w.record(9_000, 7.0, false, "t", "v", "a");
        assert_eq!(w.stats(9_500)[&Key::All].count, 2);
        assert!(
            (w.dead_letters_per_s(9_500) - 1.0 / 9.5).abs() < 1e-9,
            "1 in the 9.5 s seen so far"
        );
        // At 12 s the first 2 s slot [0, 2000) is out.
        assert_eq!(w.stats(12_000)[&Key::All].count, 1);
        assert_eq!(w.dead_letters_per_s(12_000), 0.0);
        assert!(w.stats(30_000).is_empty());
    }

    #[test]
    fn a_young_window_divides_by_the_time_it_has() {
        let mut w = Windows::new(60_000, 6);
        for i in 0..20 {
            w.record(1_000 + i * 100, 10.0, false, "t", "v", "a");
        }
        // 20 predictions in the first ~3 s: ~6.7/s, not 20/60.
        let s = w.stats(4_000);
        assert!((s[&Key::All].per_second - 20.0 / 3.0).abs() < 1e-9);
    }
}
