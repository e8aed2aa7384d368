//! loadgen's command line: the scenario, the workers, the outputs, and the parsers for
//! durations (`500ms`, `30s`, `2m`) and tenants (`NAME=WEIGHT,...`).

use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, ValueEnum};
use serde::Serialize;

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum, Serialize)]
#[serde(rename_all = "kebab-case")]
pub(crate) enum Scenario {
    /// `--rate` for the whole run.
    Steady,
    /// Linear from `--ramp-from` × rate to the rate over the run.
    Ramp,
    /// `--rate`, with `--burst-factor` × rate for the last `--burst-len` seconds of every
    /// `--burst-every` seconds.
    Burst,
    /// Several tenants (`--tenants NAME=WEIGHT,...`) sharing `--rate` by weight, each its
    /// own steady stream.
    MultiTenant,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub(crate) enum Arrivals {
    /// Evenly spaced (deterministic): the k-th arrival when the expected count reaches k + ½.
    Uniform,
    /// A Poisson process with the scenario's rate (seeded by `--seed`).
    Poisson,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub(crate) enum WorkerKind {
    /// Start workers serving a tiny random BERT (fast: measures the pipeline, not the model).
    Tiny,
    /// Start workers serving `--model-dir` (default all-MiniLM-L6-v2) with `--head-dir`
    /// (default: a random 2-label head).
    Model,
    /// Start nothing: load `--topic` for an already running worker serving `--task`.
    None,
}

#[derive(Parser, Debug)]
#[command(
    about = "Open-loop load generator: requests at a fixed arrival rate to Kafka, \
             latency from intended send time to committed prediction."
)]
pub struct Args {
    /// Arrival pattern.
    #[arg(long, value_enum, default_value = "steady")]
    pub(crate) scenario: Scenario,
    /// Requests per second: the steady rate, the ramp's peak, the burst's base rate, or
    /// the tenants' total.
    #[arg(long, default_value_t = 100.0)]
    pub(crate) rate: f64,
    /// Length of the run (or of each saturation step): seconds, or with a unit (500ms, 30s, 2m).
    #[arg(long, default_value = "20s", value_parser = parse_duration)]
    pub(crate) duration: Duration,
    /// Ramp start as a fraction of --rate.
    #[arg(long, default_value_t = 0.1)]
    pub(crate) ramp_from: f64,
    /// Burst rate as a multiple of --rate.
    #[arg(long, default_value_t = 5.0)]
    pub(crate) burst_factor: f64,
    /// Period of bursts.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    pub(crate) burst_every: Duration,
    /// Length of each burst (at the end of every period).
    #[arg(long, default_value = "1s", value_parser = parse_duration)]
    pub(crate) burst_len: Duration,
    /// Tenants and their weights (multi-tenant scenario; other scenarios use the first name only).
    #[arg(long, default_value = "acme=6,beta=3,gamma=1", value_parser = parse_tenants)]
    pub(crate) tenants: Tenants,
    /// Spacing of arrivals.
    #[arg(long, value_enum, default_value = "uniform")]
    pub(crate) arrivals: Arrivals,
    #[arg(long, default_value_t = 1)]
    pub(crate) seed: u64,

    /// Which workers to start (each run gets a fresh input topic and group).
    #[arg(long, value_enum, default_value = "tiny")]
    pub(crate) worker: WorkerKind,
    /// Worker replicas to start.
    #[arg(long, default_value_t = 1)]
    pub(crate) workers: usize,
    /// Partitions of the fresh input topic.
    #[arg(long, default_value_t = 8)]
    pub(crate) partitions: i32,
    /// The workers' max batch size.
    #[arg(long, default_value_t = 32)]
    pub(crate) worker_batch: usize,
    /// Encoder for --worker model.
    #[arg(long, env = "AIFAB_MODEL_DIR")]
    pub(crate) model_dir: Option<PathBuf>,
    /// Head for --worker model (default: a random head with labels ham/spam).
    #[arg(long)]
    pub(crate) head_dir: Option<PathBuf>,
    /// Input topic of an already running worker (needs --worker none).
    #[arg(long)]
    pub(crate) topic: Option<String>,
    /// Task of the requests (--worker none; spawned workers get a fresh task).
    #[arg(long, default_value = "default")]
    pub(crate) task: String,
    /// Where the workers write predictions.
    #[arg(long, default_value = aifab_core::topics::PREDICTIONS.name)]
    pub(crate) predictions_topic: String,

    /// After the last scheduled send, how long to wait for the missing predictions; what
    /// is still missing then is lost.
    #[arg(long, default_value = "30s", value_parser = parse_duration)]
    pub(crate) drain_timeout: Duration,
    /// Write the report as JSON here.
    #[arg(long)]
    pub(crate) json: Option<PathBuf>,
    /// Draw rates and latencies over time (or, with --saturate, p99 and throughput per
    /// rate) into this PNG.
    #[arg(long)]
    pub(crate) plot: Option<PathBuf>,
    /// Search for the highest rate whose p99 stays under --p99-target-ms.
    #[arg(long, requires = "p99_target_ms")]
    pub(crate) saturate: bool,
    /// Saturation target for end-to-end p99, in milliseconds.
    #[arg(long)]
    pub(crate) p99_target_ms: Option<f64>,
    /// Saturation: rate multiplier while steps pass.
    #[arg(long, default_value_t = 1.5)]
    pub(crate) step_factor: f64,
    /// Saturation: bisection steps between the last passing and first failing rate.
    #[arg(long, default_value_t = 2)]
    pub(crate) refine: usize,
    /// Saturation: never offer more than this.
    #[arg(long, default_value_t = 100_000.0)]
    pub(crate) max_rate: f64,
    /// No progress bar.
    #[arg(long)]
    pub(crate) no_progress: bool,
}

impl Args {
    /// The checks clap cannot express.
    pub fn check(&self) -> anyhow::Result<()> {
        anyhow::ensure!(
            self.rate > 0.0 && self.rate.is_finite(),
            "--rate must be positive"
        );
        anyhow::ensure!(
            self.burst_len < self.burst_every,
            "--burst-len must be shorter than --burst-every"
        );
        anyhow::ensure!(
            (0.0..=1.0).contains(&self.ramp_from),
            "--ramp-from is a fraction in 0..=1"
        );
        Ok(())
    }
}

pub(crate) fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let (num, mul) = if let Some(n) = s.strip_suffix("ms") {
        (n, 0.001)
    } else if let Some(n) = s.strip_suffix('s') {
        (n, 1.0)
    } else if let Some(n) = s.strip_suffix('m') {
        (n, 60.0)
    } else {
        (s, 1.0)
    };
    let v: f64 = num
        .trim()
        .parse()
        .map_err(|_| format!("expected a duration like 30, 30s, 500ms or 2m; got {s:?}"))?;
    if !(v.is_finite() && v > 0.0) {
        return Err(format!("duration must be positive; got {s:?}"));
    }
    Ok(Duration::from_secs_f64(v * mul))
}

#[derive(Clone, Debug, PartialEq)]
pub(crate) struct Tenants(pub(crate) Vec<(String, f64)>);

pub(crate) fn parse_tenants(s: &str) -> Result<Tenants, String> {
    let mut out = Vec::new();
    for part in s.split(',').filter(|p| !p.trim().is_empty()) {
        let (name, w) = part.split_once('=').unwrap_or((part, "1"));
        let w: f64 = w
            .trim()
            .parse()
            .map_err(|_| format!("tenant weight of {name:?} is not a number: {w:?}"))?;
        if !(w.is_finite() && w > 0.0) {
            return Err(format!(
                "tenant weight of {name:?} must be positive; got {w}"
            ));
        }
        out.push((name.trim().to_string(), w));
    }
    if out.is_empty() {
        return Err("expected NAME=WEIGHT[,NAME=WEIGHT...]".into());
    }
    Ok(Tenants(out))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_and_tenants_parse() {
        assert_eq!(parse_duration("30").unwrap(), Duration::from_secs(30));
        assert_eq!(parse_duration("500ms").unwrap(), Duration::from_millis(500));
        assert_eq!(parse_duration("2m").unwrap(), Duration::from_secs(120));
        assert!(parse_duration("-1s").is_err() && parse_duration("soon").is_err());
        assert_eq!(
            parse_tenants("a=2,b").unwrap(),
            Tenants(vec![("a".into(), 2.0), ("b".into(), 1.0)])
        );
        assert!(parse_tenants("a=0").is_err());
    }
}
