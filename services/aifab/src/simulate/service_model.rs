//! A worker's service-time model: throughput by batch size from the worker benchmark,
//! interpolated in log2(batch), plus a fixed cost per batch.

/// Throughput of one worker by batch size, from the worker benchmark.
#[derive(Debug, Clone, PartialEq)]
pub struct ServiceModel {
    /// (batch size, sequences per second), ascending by batch size.
    pub points: Vec<(u32, f64)>,
    /// Fixed cost of each batch (transaction commit, polling), seconds.
    pub batch_overhead_s: f64,
    pub max_batch: u32,
}

impl ServiceModel {
    /// Parse `1:44,8:84,32:106`.
    pub fn parse(spec: &str, batch_overhead_s: f64, max_batch: u32) -> Result<Self, String> {
        let mut points = Vec::new();
        for p in spec.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let (b, r) = p
                .split_once(':')
                .ok_or_else(|| format!("{p:?}: expected BATCH:SEQ_PER_S"))?;
            let b: u32 = b
                .trim()
                .parse()
                .map_err(|_| format!("{p:?}: bad batch size"))?;
            let r: f64 = r.trim().parse().map_err(|_| format!("{p:?}: bad rate"))?;
            if b == 0 || r <= 0.0 {
                return Err(format!("{p:?}: batch and rate must be positive"));
            }
            points.push((b, r));
        }
        if points.is_empty() {
            return Err("no service rates".into());
        }
        points.sort_by_key(|p| p.0);
        Ok(ServiceModel {
            points,
            batch_overhead_s,
            max_batch: max_batch.max(1),
        })
    }

    /// Throughput (sequences/s) at batch size `b`, interpolated in log2(b).
    pub fn rate(&self, b: u32) -> f64 {
        let x = (b.max(1) as f64).log2();
        let p = &self.points;
        if b <= p[0].0 {
            return p[0].1;
        }
        for w in p.windows(2) {
            if b <= w[1].0 {
                let (x0, x1) = ((w[0].0 as f64).log2(), (w[1].0 as f64).log2());
                return w[0].1 + (w[1].1 - w[0].1) * (x - x0) / (x1 - x0);
            }
        }
        p[p.len() - 1].1
    }

    /// Seconds one batch of `b` takes.
    pub fn batch_time(&self, b: u32) -> f64 {
        b as f64 / self.rate(b) + self.batch_overhead_s
    }

    /// A worker's throughput with full batches (what it does under a backlog).
    pub fn saturated_rate(&self) -> f64 {
        let b = self.max_batch;
        b as f64 / self.batch_time(b)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_service_model_interpolates_the_benchmark() {
        let m = ServiceModel::parse("1:44,8:84,32:106", 0.004, 32).unwrap();
        assert_eq!(m.rate(1), 44.0);
        assert_eq!(m.rate(8), 84.0);
        assert!(
            (m.rate(16) - 95.0).abs() < 1e-9,
            "half-way in log2 between 8 and 32"
        );
        assert_eq!(m.rate(64), 106.0);
        assert!((m.batch_time(32) - (32.0 / 106.0 + 0.004)).abs() < 1e-12);
        assert!(m.saturated_rate() > 100.0 && m.saturated_rate() < 106.0);
        assert!(ServiceModel::parse("1-44", 0.0, 32).is_err());
    }
}
