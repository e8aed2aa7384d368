//! [`Timeline`]: when each request's first committed prediction was read during a run,
//! turned into rates per phase and the longest stall (broker-loss figures).

/// Seconds from the run's start at which each request was first seen predicted.
#[derive(Debug, Clone, Default)]
pub struct Timeline {
    arrivals: Vec<f64>,
}

/// The longest stretch without a new prediction inside a window.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Stall {
    /// Seconds from the run's start when it began.
    pub from: f64,
    pub secs: f64,
}

impl Timeline {
    pub fn new(mut arrivals: Vec<f64>) -> Self {
        arrivals.sort_by(f64::total_cmp);
        Timeline { arrivals }
    }

    /// Predictions per second in [`from`, `to`).
    pub fn rate(&self, from: f64, to: f64) -> f64 {
        if to <= from {
            return 0.0;
        }
        let n = self
            .arrivals
            .iter()
            .filter(|t| **t >= from && **t < to)
            .count();
        n as f64 / (to - from)
    }

    /// The longest gap between consecutive predictions (or the window's edges) in
    /// [`from`, `to`].
    pub fn longest_stall(&self, from: f64, to: f64) -> Stall {
        let mut edges = vec![from];
        edges.extend(
            self.arrivals
                .iter()
                .copied()
                .filter(|t| *t > from && *t < to),
        );
        edges.push(to);
        edges
            .windows(2)
            .map(|w| Stall {
                from: w[0],
                secs: w[1] - w[0],
            })
            .fold(Stall { from, secs: 0.0 }, |best, s| {
                if s.secs > best.secs {
                    s
                } else {
                    best
                }
            })
    }
}

#[cfg(test)]
mod unit {
    use super::*;

    #[test]
    fn rates_count_arrivals_per_second_in_the_window() {
        let t = Timeline::new(vec![0.5, 0.1, 1.2, 1.4, 1.9, 3.0]);
        assert_eq!(t.rate(0.0, 1.0), 2.0);
        assert_eq!(t.rate(1.0, 2.0), 3.0);
        assert_eq!(t.rate(0.0, 4.0), 1.5);
        assert_eq!(t.rate(2.0, 2.0), 0.0);
    }

    #[test]
    fn the_longest_stall_includes_the_window_edges() {
        let t = Timeline::new(vec![1.0, 1.5, 4.0, 4.2]);
        assert_eq!(
            t.longest_stall(0.0, 5.0),
            Stall {
                from: 1.5,
                secs: 2.5
            }
        );
        // Nothing after 4.2 until the window ends at 8.0.
        let s = t.longest_stall(3.0, 8.0);
        assert_eq!(s.from, 4.2);
        assert!((s.secs - 3.8).abs() < 1e-9);
        assert_eq!(t.longest_stall(5.0, 6.0).secs, 1.0);
    }
}
