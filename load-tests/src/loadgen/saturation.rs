//! The saturation search (pure): which rate to offer next, from which rates passed.

/// Step the rate up by `factor` while steps pass; once one fails, bisect between the
/// highest passing and the lowest failing rate `refine` times (while they differ by
/// more than 5%). If the first rate fails, step down by `factor` (at most 8 times)
/// to find a passing one.
#[derive(Clone, Debug)]
pub(crate) struct Saturation {
    factor: f64,
    refine_left: usize,
    max_rate: f64,
    down_left: usize,
    /// Highest passing rate so far.
    good: Option<f64>,
    /// Lowest failing rate so far.
    bad: Option<f64>,
}

impl Saturation {
    pub(crate) fn new(factor: f64, refine: usize, max_rate: f64) -> Self {
        assert!(factor > 1.0, "step factor must exceed 1");
        Saturation {
            factor,
            refine_left: refine,
            max_rate,
            down_left: 8,
            good: None,
            bad: None,
        }
    }

    /// Record that `rate` passed (`ok`) or failed; the next rate to try, or None when done.
    pub(crate) fn next(&mut self, rate: f64, ok: bool) -> Option<f64> {
        if ok {
            self.good = Some(self.good.map_or(rate, |g: f64| g.max(rate)));
        } else {
            self.bad = Some(self.bad.map_or(rate, |b: f64| b.min(rate)));
        }
        match (self.good, self.bad) {
            (Some(g), None) => {
                let up = g * self.factor;
                if g >= self.max_rate {
                    None
                } else {
                    Some(up.min(self.max_rate))
                }
            }
            (None, Some(b)) => {
                if self.down_left == 0 {
                    return None;
                }
                self.down_left -= 1;
                Some(b / self.factor)
            }
            (Some(g), Some(b)) => {
                if self.refine_left == 0 || b <= g * 1.05 {
                    return None;
                }
                self.refine_left -= 1;
                Some((g + b) / 2.0)
            }
            (None, None) => unreachable!(),
        }
    }

    /// The highest rate that passed.
    pub(crate) fn result(&self) -> Option<f64> {
        self.good
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn saturation_steps_up_then_bisects_and_reports_the_best_pass() {
        let mut s = Saturation::new(2.0, 2, 1e6);
        // Capacity: p99 under target up to 700/s.
        let ok = |r: f64| r <= 700.0;
        let mut rate = 100.0;
        let mut tried = vec![];
        while let Some(next) = {
            tried.push(rate);
            s.next(rate, ok(rate))
        } {
            rate = next;
        }
        assert_eq!(tried, vec![100.0, 200.0, 400.0, 800.0, 600.0, 700.0]);
        assert_eq!(s.result(), Some(700.0));
    }

    #[test]
    fn saturation_steps_down_when_the_first_rate_fails_and_stops_at_the_cap() {
        let mut s = Saturation::new(2.0, 0, 1e6);
        assert_eq!(s.next(400.0, false), Some(200.0));
        assert_eq!(s.next(200.0, false), Some(100.0));
        assert_eq!(s.next(100.0, true), None); // no refinement asked
        assert_eq!(s.result(), Some(100.0));

        let mut capped = Saturation::new(2.0, 2, 300.0);
        assert_eq!(capped.next(200.0, true), Some(300.0));
        assert_eq!(capped.next(300.0, true), None);
        assert_eq!(capped.result(), Some(300.0));
    }
}
