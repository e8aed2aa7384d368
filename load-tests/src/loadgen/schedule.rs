//! The arrival schedule (pure): the offered load's shape by scenario, and the intended
//! send time of every request of a run, fixed before the first send (open loop).

use super::args::{Arrivals, Scenario};

/// The shape of the offered load.
#[derive(Clone, Debug)]
pub(crate) struct Shape {
    pub(crate) scenario: Scenario,
    pub(crate) rate: f64,
    pub(crate) duration_s: f64,
    pub(crate) ramp_from: f64,
    pub(crate) burst_factor: f64,
    pub(crate) burst_every_s: f64,
    pub(crate) burst_len_s: f64,
    /// Tenants and weights; only multi-tenant uses more than the first.
    pub(crate) tenants: Vec<(String, f64)>,
}

#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) struct Arrival {
    /// Intended send time, seconds from the start of the run.
    pub(crate) at_s: f64,
    /// Index into the shape's tenants.
    pub(crate) tenant: usize,
}

impl Shape {
    /// Total offered rate at `t` seconds.
    pub(crate) fn rate_at(&self, t: f64) -> f64 {
        match self.scenario {
            Scenario::Steady | Scenario::MultiTenant => self.rate,
            Scenario::Ramp => {
                self.rate
                    * (self.ramp_from
                        + (1.0 - self.ramp_from) * (t / self.duration_s).clamp(0.0, 1.0))
            }
            Scenario::Burst => {
                let phase = t.rem_euclid(self.burst_every_s);
                if phase >= self.burst_every_s - self.burst_len_s {
                    self.rate * self.burst_factor
                } else {
                    self.rate
                }
            }
        }
    }

    /// (tenant index, share of the total rate) of the streams to generate.
    pub(crate) fn streams(&self) -> Vec<(usize, f64)> {
        if self.scenario == Scenario::MultiTenant {
            let total: f64 = self.tenants.iter().map(|(_, w)| w).sum();
            self.tenants
                .iter()
                .enumerate()
                .map(|(i, (_, w))| (i, w / total))
                .collect()
        } else {
            vec![(0, 1.0)]
        }
    }

    pub(crate) fn peak_rate(&self) -> f64 {
        match self.scenario {
            Scenario::Burst => self.rate * self.burst_factor.max(1.0),
            _ => self.rate,
        }
    }
}

/// Intended send times of the whole run, sorted: each stream's expected count Λ(t) (the
/// integral of its rate) is advanced in small steps, and an arrival falls where Λ
/// crosses the next threshold — k + ½ for uniform spacing, a running sum of Exp(1)
/// draws for a Poisson process.
pub(crate) fn schedule(shape: &Shape, arrivals: Arrivals, seed: u64) -> Vec<Arrival> {
    use rand::{Rng, SeedableRng};
    let mut out = Vec::new();
    // Steps short enough that the rate is constant within one (bursts start on them)
    // and at most a few arrivals fall in each.
    let dt = (0.001f64).min(0.25 / shape.peak_rate().max(1e-9)).max(1e-6);
    for (tenant, share) in shape.streams() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed.wrapping_add(tenant as u64 * 7919));
        let next_threshold = |rng: &mut rand::rngs::StdRng, last: f64| match arrivals {
            Arrivals::Uniform => last + 1.0,
            Arrivals::Poisson => last - (1.0 - rng.random::<f64>()).ln(),
        };
        let mut threshold = match arrivals {
            Arrivals::Uniform => 0.5,
            Arrivals::Poisson => next_threshold(&mut rng, 0.0),
        };
        let mut lambda = 0.0;
        let mut t = 0.0;
        while t < shape.duration_s {
            let step = dt.min(shape.duration_s - t);
            let r = shape.rate_at(t + step / 2.0) * share;
            let end = lambda + r * step;
            while threshold <= end && r > 0.0 {
                out.push(Arrival {
                    at_s: t + (threshold - lambda) / r,
                    tenant,
                });
                threshold = next_threshold(&mut rng, threshold);
            }
            lambda = end;
            t += step;
        }
    }
    out.sort_by(|a, b| a.at_s.total_cmp(&b.at_s));
    out
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub(crate) fn shape(scenario: Scenario, rate: f64, duration_s: f64) -> Shape {
        Shape {
            scenario,
            rate,
            duration_s,
            ramp_from: 0.1,
            burst_factor: 5.0,
            burst_every_s: 10.0,
            burst_len_s: 1.0,
            tenants: vec![
                ("acme".into(), 6.0),
                ("beta".into(), 3.0),
                ("gamma".into(), 1.0),
            ],
        }
    }

    fn count_in(a: &[Arrival], from: f64, to: f64) -> usize {
        a.iter().filter(|x| x.at_s >= from && x.at_s < to).count()
    }

    #[test]
    fn steady_is_evenly_spaced_at_the_rate() {
        let a = schedule(&shape(Scenario::Steady, 200.0, 10.0), Arrivals::Uniform, 1);
        assert_eq!(a.len(), 2000);
        assert!(
            (a[0].at_s - 0.0025).abs() < 1e-6,
            "first at half a gap: {}",
            a[0].at_s
        );
        for w in a.windows(2) {
            assert!((w[1].at_s - w[0].at_s - 0.005).abs() < 1e-6);
        }
        assert!(a.iter().all(|x| x.tenant == 0 && x.at_s < 10.0));
    }

    #[test]
    fn high_rates_are_exact_too() {
        let a = schedule(
            &shape(Scenario::Steady, 20_000.0, 2.0),
            Arrivals::Uniform,
            1,
        );
        assert_eq!(a.len(), 40_000);
        assert!(a.windows(2).all(|w| w[1].at_s >= w[0].at_s));
    }

    #[test]
    fn ramp_rises_linearly_from_a_tenth_to_the_rate() {
        let a = schedule(&shape(Scenario::Ramp, 100.0, 20.0), Arrivals::Uniform, 1);
        // ∫ 100 (0.1 + 0.9 t/20) dt over 20 s = 100 · 20 · 0.55 = 1100.
        assert!((a.len() as i64 - 1100).abs() <= 1, "{}", a.len());
        assert!((count_in(&a, 0.0, 1.0) as f64 - 100.0 * (0.1 + 0.9 * 0.5 / 20.0)).abs() <= 1.0);
        assert!((count_in(&a, 19.0, 20.0) as f64 - 100.0 * (0.1 + 0.9 * 19.5 / 20.0)).abs() <= 1.0);
    }

    #[test]
    fn bursts_multiply_the_rate_at_the_end_of_each_period() {
        let a = schedule(&shape(Scenario::Burst, 100.0, 20.0), Arrivals::Uniform, 1);
        assert_eq!(count_in(&a, 0.0, 9.0), 900);
        assert_eq!(count_in(&a, 9.0, 10.0), 500);
        assert_eq!(count_in(&a, 19.0, 20.0), 500);
        assert_eq!(a.len(), 2 * (900 + 500));
    }

    #[test]
    fn tenants_share_the_rate_by_weight() {
        let a = schedule(
            &shape(Scenario::MultiTenant, 100.0, 10.0),
            Arrivals::Uniform,
            1,
        );
        let per = |t| a.iter().filter(|x| x.tenant == t).count();
        assert_eq!((per(0), per(1), per(2)), (600, 300, 100));
        assert!(
            a.windows(2).all(|w| w[1].at_s >= w[0].at_s),
            "merged in time order"
        );
    }

    #[test]
    fn poisson_has_the_rate_on_average_and_is_seeded() {
        let s = shape(Scenario::Steady, 500.0, 20.0);
        let a = schedule(&s, Arrivals::Poisson, 7);
        assert!((a.len() as f64 - 10_000.0).abs() < 400.0, "{}", a.len()); // 4 sigma
        assert_eq!(a, schedule(&s, Arrivals::Poisson, 7));
        assert_ne!(a, schedule(&s, Arrivals::Poisson, 8));
        // Exponential gaps: about e^-1 of them exceed the mean gap.
        let long = a
            .windows(2)
            .filter(|w| w[1].at_s - w[0].at_s > 1.0 / 500.0)
            .count() as f64
            / a.len() as f64;
        assert!((long - (-1f64).exp()).abs() < 0.03, "{long}");
    }
}
