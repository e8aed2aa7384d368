//! What came back (pure): per request, the committed predictions read and when, and from
//! that lost, duplicated, latency quantiles from the intended send time, where the time
//! went, per-tenant figures and one-second windows.

use aifab_tests::{delivery_of_counts, Delivery};
use hdrhistogram::Histogram;
use serde::Serialize;

use super::schedule::Arrival;

/// What came back for each scheduled request, by index.
#[derive(Clone, Debug)]
pub(crate) struct Accounting {
    pub(crate) intended_s: Vec<f64>,
    pub(crate) tenant: Vec<usize>,
    /// Committed predictions read per request.
    pub(crate) counts: Vec<u32>,
    /// When the first prediction was read, seconds from the start of the run.
    pub(crate) first_s: Vec<Option<f64>>,
    /// The first prediction's own account: (queue_ms, compute_ms, ms from the worker
    /// producing it to it being read: the transaction commit and the read).
    pub(crate) stages: Vec<Option<(f64, f64, f64)>>,
    pub(crate) distinct: usize,
}

/// Where the time went, from the first prediction of each request (worker clocks are
/// this machine's).
#[derive(Clone, Debug, Default, Serialize)]
pub(crate) struct Stages {
    /// Intended send → the worker starts the batch's compute (Kafka produce, consume,
    /// the batcher's wait and the queue ahead).
    pub(crate) queue: Latency,
    /// The batch's compute.
    pub(crate) compute: Latency,
    /// The worker producing the prediction → read here (transaction commit,
    /// read_committed fetch).
    pub(crate) commit_and_read: Latency,
}

#[derive(Clone, Debug, Default, Serialize)]
pub(crate) struct Latency {
    pub(crate) p50_ms: f64,
    pub(crate) p90_ms: f64,
    pub(crate) p99_ms: f64,
    pub(crate) p999_ms: f64,
    pub(crate) max_ms: f64,
    pub(crate) mean_ms: f64,
}

#[derive(Clone, Debug, Serialize)]
pub(crate) struct TenantStats {
    pub(crate) tenant: String,
    pub(crate) requests: usize,
    pub(crate) lost: usize,
    pub(crate) duplicated: usize,
    pub(crate) latency: Latency,
}

#[derive(Clone, Debug, Serialize)]
pub(crate) struct Window {
    /// Start of the one-second window, seconds from the start of the run.
    pub(crate) t_s: f64,
    /// Requests scheduled in the window.
    pub(crate) offered: usize,
    /// First predictions read in the window.
    pub(crate) completed: usize,
    /// Latency of the requests scheduled in the window (0 when none came back).
    pub(crate) p50_ms: f64,
    pub(crate) p99_ms: f64,
}

impl Accounting {
    pub(crate) fn new(arrivals: &[Arrival]) -> Self {
        Accounting {
            intended_s: arrivals.iter().map(|a| a.at_s).collect(),
            tenant: arrivals.iter().map(|a| a.tenant).collect(),
            counts: vec![0; arrivals.len()],
            first_s: vec![None; arrivals.len()],
            stages: vec![None; arrivals.len()],
            distinct: 0,
        }
    }

    /// A committed prediction for request `i` read at `received_s`; ids outside the run
    /// are ignored.
    pub(crate) fn record(&mut self, i: usize, received_s: f64) {
        let Some(c) = self.counts.get_mut(i) else {
            return;
        };
        *c += 1;
        if *c == 1 {
            self.first_s[i] = Some(received_s);
            self.distinct += 1;
        }
    }

    /// The stages of request `i`'s first prediction (call after `record`).
    pub(crate) fn record_stages(
        &mut self,
        i: usize,
        queue_ms: f64,
        compute_ms: f64,
        after_produce_ms: f64,
    ) {
        if let Some(slot @ None) = self.stages.get_mut(i) {
            *slot = Some((queue_ms, compute_ms, after_produce_ms.max(0.0)));
        }
    }

    pub(crate) fn stages(&self) -> Stages {
        let col = |f: fn(&(f64, f64, f64)) -> f64| latency_of(self.stages.iter().flatten().map(f));
        Stages {
            queue: col(|s| s.0),
            compute: col(|s| s.1),
            commit_and_read: col(|s| s.2),
        }
    }

    /// End-to-end latency of request `i` (intended send → first committed prediction read).
    pub(crate) fn latency_ms(&self, i: usize) -> Option<f64> {
        self.first_s[i].map(|f| ((f - self.intended_s[i]) * 1000.0).max(0.0))
    }

    pub(crate) fn delivery(&self) -> Delivery {
        delivery_of_counts(self.counts.iter().map(|c| *c as usize))
    }

    pub(crate) fn latency(&self, filter: impl Fn(usize) -> bool) -> Latency {
        latency_of(
            (0..self.counts.len())
                .filter(|i| filter(*i))
                .filter_map(|i| self.latency_ms(i)),
        )
    }

    pub(crate) fn tenants(&self, names: &[String]) -> Vec<TenantStats> {
        names
            .iter()
            .enumerate()
            .filter(|(t, _)| self.tenant.contains(t))
            .map(|(t, name)| {
                let d = delivery_of_counts(
                    (0..self.counts.len())
                        .filter(|i| self.tenant[*i] == t)
                        .map(|i| self.counts[i] as usize),
                );
                TenantStats {
                    tenant: name.clone(),
                    requests: d.requests,
                    lost: d.lost,
                    duplicated: d.duplicated,
                    latency: self.latency(|i| self.tenant[i] == t),
                }
            })
            .collect()
    }

    /// Distinct predictions per second from the first intended send to the last first
    /// prediction read.
    pub(crate) fn throughput(&self) -> f64 {
        let start = self.intended_s.first().copied().unwrap_or(0.0);
        let end = self.first_s.iter().flatten().copied().fold(start, f64::max);
        if end > start {
            self.distinct as f64 / (end - start)
        } else {
            0.0
        }
    }

    /// One-second windows from 0 to the last prediction read.
    pub(crate) fn windows(&self) -> Vec<Window> {
        let end = self
            .first_s
            .iter()
            .flatten()
            .chain(self.intended_s.iter())
            .copied()
            .fold(0.0, f64::max);
        let n = end.floor() as usize + 1;
        let mut hist: Vec<Vec<f64>> = vec![Vec::new(); n];
        let mut offered = vec![0usize; n];
        let mut completed = vec![0usize; n];
        for i in 0..self.counts.len() {
            let b = (self.intended_s[i].max(0.0) as usize).min(n - 1);
            offered[b] += 1;
            if let Some(l) = self.latency_ms(i) {
                hist[b].push(l);
            }
            if let Some(f) = self.first_s[i] {
                completed[(f.max(0.0) as usize).min(n - 1)] += 1;
            }
        }
        (0..n)
            .map(|b| {
                let l = latency_of(hist[b].iter().copied());
                Window {
                    t_s: b as f64,
                    offered: offered[b],
                    completed: completed[b],
                    p50_ms: l.p50_ms,
                    p99_ms: l.p99_ms,
                }
            })
            .collect()
    }
}

/// Quantiles of latencies in milliseconds (hdrhistogram in microseconds, 3 significant digits).
pub(crate) fn latency_of(ms: impl Iterator<Item = f64>) -> Latency {
    let mut h =
        Histogram::<u64>::new_with_bounds(1, 24 * 3_600_000_000, 3).expect("histogram bounds");
    for v in ms {
        h.saturating_record((v * 1000.0).round().max(1.0) as u64);
    }
    if h.is_empty() {
        return Latency::default();
    }
    let q = |q: f64| h.value_at_quantile(q) as f64 / 1000.0;
    Latency {
        p50_ms: q(0.5),
        p90_ms: q(0.9),
        p99_ms: q(0.99),
        p999_ms: q(0.999),
        max_ms: h.max() as f64 / 1000.0,
        mean_ms: h.mean() / 1000.0,
    }
}

/// Index of a request id `<prefix>-<i>` of this run (`prefix_dash` is `<prefix>-`).
pub(crate) fn index_of(id: &str, prefix_dash: &str) -> Option<usize> {
    id.strip_prefix(prefix_dash)?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accounting_counts_lost_duplicated_and_latency_from_intended_time() {
        let arrivals: Vec<Arrival> = (0..4)
            .map(|i| Arrival {
                at_s: i as f64,
                tenant: i % 2,
            })
            .collect();
        let mut acc = Accounting::new(&arrivals);
        acc.record(0, 0.010);
        acc.record(1, 1.250);
        acc.record(1, 1.300); // duplicate: latency stays the first one's
        acc.record(3, 3.5);
        acc.record_stages(3, 100.0, 20.0, 380.0);
        acc.record_stages(3, 1.0, 1.0, 1.0); // a duplicate's account is not kept
        acc.record(99, 1.0); // not ours
        acc.record_stages(99, 1.0, 1.0, 1.0);
        let st = acc.stages();
        assert!(
            (st.queue.p50_ms - 100.0).abs() < 0.1
                && (st.commit_and_read.max_ms - 380.0).abs() < 0.5,
            "{st:?}"
        );
        let d = acc.delivery();
        assert_eq!(
            (d.requests, d.lost, d.duplicated, acc.distinct),
            (4, 1, 1, 3)
        );
        assert!((acc.latency_ms(1).unwrap() - 250.0).abs() < 1e-9);
        assert_eq!(acc.latency_ms(2), None);
        let l = acc.latency(|_| true);
        assert!(
            (l.max_ms - 500.0).abs() < 1.0 && (l.p50_ms - 250.0).abs() < 1.0,
            "{l:?}"
        );
        let t = acc.tenants(&["even".into(), "odd".into()]);
        assert_eq!(
            (t[0].requests, t[0].lost, t[1].lost, t[1].duplicated),
            (2, 1, 0, 1)
        );
        // 3 distinct from t=0 to the last first read at 3.5 s.
        assert!((acc.throughput() - 3.0 / 3.5).abs() < 1e-9);
        let w = acc.windows();
        assert_eq!(w.len(), 4);
        assert_eq!(w.iter().map(|w| w.offered).sum::<usize>(), 4);
        assert_eq!(
            w.iter().map(|w| w.completed).collect::<Vec<_>>(),
            vec![1, 1, 0, 1]
        );
    }

    #[test]
    fn a_stall_shows_in_the_latency_of_everything_scheduled_during_it() {
        // 100 requests over 1 s; the pipeline stalls, and all answers arrive at 2 s.
        let arrivals: Vec<Arrival> = (0..100)
            .map(|i| Arrival {
                at_s: i as f64 / 100.0,
                tenant: 0,
            })
            .collect();
        let mut acc = Accounting::new(&arrivals);
        for i in 0..100 {
            acc.record(i, 2.0);
        }
        let l = acc.latency(|_| true);
        assert!(
            (l.p50_ms - 1500.0).abs() < 15.0 && (l.p99_ms - 1990.0).abs() < 15.0,
            "{l:?}"
        );
    }

    #[test]
    fn ids_map_back_to_their_index() {
        let r = aifab_tests::request("t", "load-x-s1", 42);
        assert_eq!(index_of(&r.id, "load-x-s1-"), Some(42));
        assert_eq!(index_of("load-x-s10-42", "load-x-s1-"), None);
    }
}
