//! `AIFAB_SIM_DEBUG=DIR`: one CSV of the policy's decisions per simulated run, for tuning
//! a policy against a trace (`DIR/<policy>.csv`).

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::Path;

use aifab_autoscaler::policy::{Decision, Observation};

const HEADER: &str =
    "t_s,lag,replicas,desired,arrivals_per_s,replica_rate_per_s,reason,recommended";

pub struct DecisionLog {
    out: BufWriter<File>,
}

impl DecisionLog {
    /// The log of run `name` when `AIFAB_SIM_DEBUG` names a directory it can be created in.
    pub fn from_env(name: &str) -> Option<Self> {
        let dir = std::env::var_os("AIFAB_SIM_DEBUG")?;
        let file = File::create(Path::new(&dir).join(format!("{name}.csv"))).ok()?;
        let mut out = BufWriter::new(file);
        // A debugging aid: a failed write loses a line, never the simulation.
        let _ = writeln!(out, "{HEADER}");
        Some(DecisionLog { out })
    }

    /// One row: the decision taken at `t_s` on `obs`.
    pub fn write(&mut self, t_s: f64, obs: &Observation, decision: &Decision) {
        let _ = writeln!(self.out, "{}", row(t_s, obs, decision));
    }
}

fn row(t_s: f64, obs: &Observation, d: &Decision) -> String {
    format!(
        "{:.0},{},{},{},{:.1},{:.1},{},{}",
        t_s,
        obs.total_lag,
        obs.current_replicas,
        d.desired,
        d.arrival_rate_per_s.unwrap_or(0.0),
        d.replica_rate_per_s.unwrap_or(0.0),
        d.reason.as_str(),
        d.recommended
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use aifab_autoscaler::policy::Reason;

    #[test]
    fn a_row_has_a_value_per_header_column() {
        let obs = Observation {
            at_ms: 60_000,
            total_lag: 250,
            lag_rate_per_s: 1.0,
            partitions: 8,
            produced_total: None,
            consumed_total: None,
            current_replicas: 2,
            budget: None,
        };
        let d = Decision {
            desired: 3,
            reason: Reason::ArrivalRate,
            detail: String::new(),
            recommended: 4,
            budget_cap: None,
            arrival_rate_per_s: Some(120.04),
            replica_rate_per_s: None,
        };
        let r = row(60.0, &obs, &d);
        assert_eq!(r.split(',').count(), HEADER.split(',').count());
        assert!(r.starts_with("60,250,2,3,120.0,0.0,"), "{r}");
        assert!(r.ends_with(",4"), "{r}");
    }
}
