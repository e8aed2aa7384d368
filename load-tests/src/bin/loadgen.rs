//! Open-loop load generator: inference requests (`inference.request/v1`) produced to Kafka
//! at arrival times fixed in advance by a scenario, predictions read back read_committed.
//!
//! Open loop: each request's send time comes from the schedule (the clock), never from a
//! previous completion, and its latency is measured from that *intended* send time to
//! the moment its committed prediction is read. A stalled pipeline therefore shows up
//! as latency of everything scheduled during the stall (no coordinated omission); if the
//! producer itself falls behind, the requests it sends late carry the lateness in their
//! latency too.
//!
//! Accounting per request id: lost = no committed prediction within `--drain-timeout`
//! after the last scheduled send; duplicated = more than one committed prediction.
//!
//! `--saturate` runs steps of `--duration` each: it starts at `--rate`, multiplies the
//! rate by `--step-factor` while a step passes (p99 ≤ `--p99-target-ms` and nothing
//! lost), then bisects between the highest passing and lowest failing rate `--refine`
//! times (while they differ by more than 5%), and reports the highest passing rate.
//!
//! Ends with `key value` lines (see `print_summary`).

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use aifab_core::messages::encode;
use aifab_tests::{delivery_of_counts, Delivery, PredictionReader, WorkerRun};
use anyhow::Context;
use clap::{Parser, ValueEnum};
use hdrhistogram::Histogram;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use rdkafka::consumer::Consumer;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use serde::Serialize;

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum, Serialize)]
#[serde(rename_all = "kebab-case")]
enum Scenario {
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
enum Arrivals {
    /// Evenly spaced (deterministic): the k-th arrival when the expected count reaches k + ½.
    Uniform,
    /// A Poisson process with the scenario's rate (seeded by `--seed`).
    Poisson,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum WorkerKind {
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
    about = "Open-loop load generator: requests at a fixed arrival rate to Kafka, latency from intended send time to committed prediction."
)]
struct Args {
    /// Arrival pattern.
    #[arg(long, value_enum, default_value = "steady")]
    scenario: Scenario,
    /// Requests per second: the steady rate, the ramp's peak, the burst's base rate, or
    /// the tenants' total.
    #[arg(long, default_value_t = 100.0)]
    rate: f64,
    /// Length of the run (or of each saturation step): seconds, or with a unit (500ms, 30s, 2m).
    #[arg(long, default_value = "20s", value_parser = parse_duration)]
    duration: Duration,
    /// Ramp start as a fraction of --rate.
    #[arg(long, default_value_t = 0.1)]
    ramp_from: f64,
    /// Burst rate as a multiple of --rate.
    #[arg(long, default_value_t = 5.0)]
    burst_factor: f64,
    /// Period of bursts.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    burst_every: Duration,
    /// Length of each burst (at the end of every period).
    #[arg(long, default_value = "1s", value_parser = parse_duration)]
    burst_len: Duration,
    /// Tenants and their weights (multi-tenant scenario; other scenarios use the first name only).
    #[arg(long, default_value = "acme=6,beta=3,gamma=1", value_parser = parse_tenants)]
    tenants: Tenants,
    /// Spacing of arrivals.
    #[arg(long, value_enum, default_value = "uniform")]
    arrivals: Arrivals,
    #[arg(long, default_value_t = 1)]
    seed: u64,

    /// Which workers to start (each run gets a fresh input topic and group).
    #[arg(long, value_enum, default_value = "tiny")]
    worker: WorkerKind,
    /// Worker replicas to start.
    #[arg(long, default_value_t = 1)]
    workers: usize,
    /// Partitions of the fresh input topic.
    #[arg(long, default_value_t = 8)]
    partitions: i32,
    /// The workers' max batch size.
    #[arg(long, default_value_t = 32)]
    worker_batch: usize,
    /// Encoder for --worker model.
    #[arg(long, env = "AIFAB_MODEL_DIR")]
    model_dir: Option<PathBuf>,
    /// Head for --worker model (default: a random head with labels ham/spam).
    #[arg(long)]
    head_dir: Option<PathBuf>,
    /// Input topic of an already running worker (needs --worker none).
    #[arg(long)]
    topic: Option<String>,
    /// Task of the requests (--worker none; spawned workers get a fresh task).
    #[arg(long, default_value = "default")]
    task: String,
    /// Where the workers write predictions.
    #[arg(long, default_value = aifab_core::topics::PREDICTIONS.name)]
    predictions_topic: String,

    /// After the last scheduled send, how long to wait for the missing predictions; what
    /// is still missing then is lost.
    #[arg(long, default_value = "30s", value_parser = parse_duration)]
    drain_timeout: Duration,
    /// Write the report as JSON here.
    #[arg(long)]
    json: Option<PathBuf>,
    /// Draw rates and latencies over time (or, with --saturate, p99 and throughput per
    /// rate) into this PNG.
    #[arg(long)]
    plot: Option<PathBuf>,
    /// Search for the highest rate whose p99 stays under --p99-target-ms.
    #[arg(long, requires = "p99_target_ms")]
    saturate: bool,
    /// Saturation target for end-to-end p99, in milliseconds.
    #[arg(long)]
    p99_target_ms: Option<f64>,
    /// Saturation: rate multiplier while steps pass.
    #[arg(long, default_value_t = 1.5)]
    step_factor: f64,
    /// Saturation: bisection steps between the last passing and first failing rate.
    #[arg(long, default_value_t = 2)]
    refine: usize,
    /// Saturation: never offer more than this.
    #[arg(long, default_value_t = 100_000.0)]
    max_rate: f64,
    /// No progress bar.
    #[arg(long)]
    no_progress: bool,
}

fn parse_duration(s: &str) -> Result<Duration, String> {
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
struct Tenants(Vec<(String, f64)>);

fn parse_tenants(s: &str) -> Result<Tenants, String> {
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

// ------------------------------------------------------------------ arrival schedule (pure)

/// The shape of the offered load.
#[derive(Clone, Debug)]
struct Shape {
    scenario: Scenario,
    rate: f64,
    duration_s: f64,
    ramp_from: f64,
    burst_factor: f64,
    burst_every_s: f64,
    burst_len_s: f64,
    /// Tenants and weights; only multi-tenant uses more than the first.
    tenants: Vec<(String, f64)>,
}

#[derive(Clone, Copy, Debug, PartialEq)]
struct Arrival {
    /// Intended send time, seconds from the start of the run.
    at_s: f64,
    /// Index into the shape's tenants.
    tenant: usize,
}

impl Shape {
    /// Total offered rate at `t` seconds.
    fn rate_at(&self, t: f64) -> f64 {
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
    fn streams(&self) -> Vec<(usize, f64)> {
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

    fn peak_rate(&self) -> f64 {
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
fn schedule(shape: &Shape, arrivals: Arrivals, seed: u64) -> Vec<Arrival> {
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

// ------------------------------------------------------------------ accounting (pure)

/// What came back for each scheduled request, by index.
#[derive(Clone, Debug)]
struct Accounting {
    intended_s: Vec<f64>,
    tenant: Vec<usize>,
    /// Committed predictions read per request.
    counts: Vec<u32>,
    /// When the first prediction was read, seconds from the start of the run.
    first_s: Vec<Option<f64>>,
    /// The first prediction's own account: (queue_ms, compute_ms, ms from the worker
    /// producing it to it being read: the transaction commit and the read).
    stages: Vec<Option<(f64, f64, f64)>>,
    distinct: usize,
}

/// Where the time went, from the first prediction of each request (worker clocks are
/// this machine's).
#[derive(Clone, Debug, Default, Serialize)]
struct Stages {
    /// Intended send → the worker starts the batch's compute (Kafka produce, consume,
    /// the batcher's wait and the queue ahead).
    queue: Latency,
    /// The batch's compute.
    compute: Latency,
    /// The worker producing the prediction → read here (transaction commit, read_committed fetch).
    commit_and_read: Latency,
}

#[derive(Clone, Debug, Default, Serialize)]
struct Latency {
    p50_ms: f64,
    p90_ms: f64,
    p99_ms: f64,
    p999_ms: f64,
    max_ms: f64,
    mean_ms: f64,
}

#[derive(Clone, Debug, Serialize)]
struct TenantStats {
    tenant: String,
    requests: usize,
    lost: usize,
    duplicated: usize,
    latency: Latency,
}

#[derive(Clone, Debug, Serialize)]
struct Window {
    /// Start of the one-second window, seconds from the start of the run.
    t_s: f64,
    /// Requests scheduled in the window.
    offered: usize,
    /// First predictions read in the window.
    completed: usize,
    /// Latency of the requests scheduled in the window (0 when none came back).
    p50_ms: f64,
    p99_ms: f64,
}

impl Accounting {
    fn new(arrivals: &[Arrival]) -> Self {
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
    fn record(&mut self, i: usize, received_s: f64) {
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
    fn record_stages(&mut self, i: usize, queue_ms: f64, compute_ms: f64, after_produce_ms: f64) {
        if let Some(slot @ None) = self.stages.get_mut(i) {
            *slot = Some((queue_ms, compute_ms, after_produce_ms.max(0.0)));
        }
    }

    fn stages(&self) -> Stages {
        let col = |f: fn(&(f64, f64, f64)) -> f64| latency_of(self.stages.iter().flatten().map(f));
        Stages {
            queue: col(|s| s.0),
            compute: col(|s| s.1),
            commit_and_read: col(|s| s.2),
        }
    }

    /// End-to-end latency of request `i` (intended send → first committed prediction read).
    fn latency_ms(&self, i: usize) -> Option<f64> {
        self.first_s[i].map(|f| ((f - self.intended_s[i]) * 1000.0).max(0.0))
    }

    fn delivery(&self) -> Delivery {
        delivery_of_counts(self.counts.iter().map(|c| *c as usize))
    }

    fn latency(&self, filter: impl Fn(usize) -> bool) -> Latency {
        latency_of(
            (0..self.counts.len())
                .filter(|i| filter(*i))
                .filter_map(|i| self.latency_ms(i)),
        )
    }

    fn tenants(&self, names: &[String]) -> Vec<TenantStats> {
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
    fn throughput(&self) -> f64 {
        let start = self.intended_s.first().copied().unwrap_or(0.0);
        let end = self.first_s.iter().flatten().copied().fold(start, f64::max);
        if end > start {
            self.distinct as f64 / (end - start)
        } else {
            0.0
        }
    }

    /// One-second windows from 0 to the last prediction read.
    fn windows(&self) -> Vec<Window> {
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
fn latency_of(ms: impl Iterator<Item = f64>) -> Latency {
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
fn index_of(id: &str, prefix_dash: &str) -> Option<usize> {
    id.strip_prefix(prefix_dash)?.parse().ok()
}

// ------------------------------------------------------------------ saturation search (pure)

/// Step the rate up by `factor` while steps pass; once one fails, bisect between the
/// highest passing and the lowest failing rate `refine` times (while they differ by
/// more than 5%). If the first rate fails, step down by `factor` (at most 8 times)
/// to find a passing one.
#[derive(Clone, Debug)]
struct Saturation {
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
    fn new(factor: f64, refine: usize, max_rate: f64) -> Self {
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
    fn next(&mut self, rate: f64, ok: bool) -> Option<f64> {
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
    fn result(&self) -> Option<f64> {
        self.good
    }
}

// ------------------------------------------------------------------ running a step

#[derive(Clone, Debug, Serialize)]
struct Step {
    scenario: Scenario,
    /// `--rate` of this step (for ramp the peak, for burst the base).
    rate: f64,
    duration_s: f64,
    /// Scheduled requests per second, on average.
    offered_rate: f64,
    requests: usize,
    sent: usize,
    send_errors: usize,
    /// Longest a send went out after its intended time (the producer falling behind).
    max_send_lag_ms: f64,
    predicted: usize,
    lost: usize,
    duplicated: usize,
    throughput: f64,
    latency: Latency,
    stages: Stages,
    tenants: Vec<TenantStats>,
    windows: Vec<Window>,
    /// Saturation: p99 under the target and nothing lost.
    passed: Option<bool>,
}

struct Target {
    topic: String,
    task: String,
    predictions_topic: String,
    /// The workers when this run started them.
    workers: Option<(WorkerRun, Vec<tokio::process::Child>)>,
    producer: FutureProducer,
    run_id: String,
}

async fn run_step(
    args: &Args,
    target: &Target,
    shape: &Shape,
    step_no: usize,
    show: bool,
) -> anyhow::Result<Step> {
    let arrivals = schedule(shape, args.arrivals, args.seed.wrapping_add(step_no as u64));
    anyhow::ensure!(
        !arrivals.is_empty(),
        "the schedule is empty: raise --rate or --duration"
    );
    let n = arrivals.len();
    let prefix = format!("load-{}-s{step_no}", target.run_id);
    let prefix_dash = format!("{prefix}-");
    let tenant_names: Vec<String> = shape.tenants.iter().map(|(t, _)| t.clone()).collect();

    // Position the reader at the current end before anything is sent.
    let topic = target.predictions_topic.clone();
    let mut reader = tokio::task::spawn_blocking(move || PredictionReader::on(&topic)).await?;
    let t0 = Instant::now() + Duration::from_millis(200);
    let wall0_ms = aifab_core::now_ms() + 200;

    let pb = if show {
        ProgressBar::new(n as u64)
    } else {
        ProgressBar::with_draw_target(Some(n as u64), ProgressDrawTarget::hidden())
    };
    pb.set_style(
        ProgressStyle::with_template(
            "{spinner} {elapsed_precise} sent {pos}/{len} [{bar:30}] {msg}",
        )
        .expect("template")
        .progress_chars("=> "),
    );

    // Reader thread: records every prediction of this step until all came back, or the
    // drain deadline (set once sending is done) passes; then reads to the end of the
    // topic so committed duplicates are counted too.
    let distinct = Arc::new(AtomicUsize::new(0));
    let drain_deadline: Arc<std::sync::Mutex<Option<Instant>>> =
        Arc::new(std::sync::Mutex::new(None));
    let stop_now = Arc::new(AtomicBool::new(false));
    let acc = Accounting::new(&arrivals);
    let reader_task = {
        let (distinct, drain_deadline, prefix_dash) = (
            distinct.clone(),
            drain_deadline.clone(),
            prefix_dash.clone(),
        );
        let stop_now = stop_now.clone();
        tokio::task::spawn_blocking(move || {
            let mut acc = acc;
            let mut done = 0;
            let take = |reader: &PredictionReader, acc: &mut Accounting, done: &mut usize| {
                for k in *done..reader.seen.len() {
                    let p = &reader.seen[k];
                    if let Some(i) = index_of(&p.id, &prefix_dash) {
                        let at = reader.received[k]
                            .saturating_duration_since(t0)
                            .as_secs_f64();
                        acc.record(i, at);
                        let read_wall_ms = wall0_ms as f64 + at * 1000.0;
                        acc.record_stages(
                            i,
                            p.queue_ms,
                            p.compute_ms,
                            read_wall_ms - p.produced_at_ms as f64,
                        );
                    }
                }
                *done = reader.seen.len();
            };
            loop {
                reader.read(&prefix_dash, Duration::from_millis(100));
                take(&reader, &mut acc, &mut done);
                distinct.store(acc.distinct, Ordering::Relaxed);
                if acc.distinct == n || stop_now.load(Ordering::Relaxed) {
                    break;
                }
                if drain_deadline
                    .lock()
                    .unwrap()
                    .is_some_and(|d| Instant::now() >= d)
                {
                    break;
                }
            }
            reader.read_to_end(&prefix_dash, Duration::from_secs(30));
            take(&reader, &mut acc, &mut done);
            acc
        })
    };

    // Sender: open loop, each request at its scheduled instant.
    let mut deliveries = Vec::with_capacity(n);
    let mut send_errors = 0usize;
    let mut max_lag = Duration::ZERO;
    let t0_tokio = tokio::time::Instant::from_std(t0);
    for (i, a) in arrivals.iter().enumerate() {
        let at = t0_tokio + Duration::from_secs_f64(a.at_s);
        tokio::time::sleep_until(at).await;
        max_lag = max_lag.max(tokio::time::Instant::now().saturating_duration_since(at));
        let mut req = aifab_tests::request(&target.task, &prefix, i);
        req.tenant = tenant_names[a.tenant].clone();
        req.received_at_ms = wall0_ms + (a.at_s * 1000.0) as i64;
        let payload = encode(&req);
        let headers = OwnedHeaders::new().insert(Header {
            key: "tenant",
            value: Some(req.tenant.as_bytes()),
        });
        let mut record = FutureRecord::to(&target.topic)
            .key(&req.id)
            .payload(&payload)
            .headers(headers);
        loop {
            match target.producer.send_result(record) {
                Ok(f) => {
                    deliveries.push(f);
                    break;
                }
                // librdkafka's local queue is full: it has no "room again" notification,
                // so back off briefly; the lateness counts against this request's latency.
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), r)) => {
                    record = r;
                    tokio::time::sleep(Duration::from_millis(1)).await;
                }
                Err((e, _)) => {
                    send_errors += 1;
                    eprintln!("send {}: {e}", req.id);
                    break;
                }
            }
        }
        if i % 32 == 0 {
            pb.set_position(i as u64);
            pb.set_message(format!("predicted {}", distinct.load(Ordering::Relaxed)));
        }
    }
    pb.set_position(n as u64);
    let mut sent = 0;
    for d in deliveries {
        match d.await {
            Ok(Ok(_)) => sent += 1,
            Ok(Err((e, _))) => {
                send_errors += 1;
                eprintln!("delivery: {e}");
            }
            Err(_) => send_errors += 1,
        }
    }
    let end_of_schedule = t0 + Duration::from_secs_f64(shape.duration_s);
    *drain_deadline.lock().unwrap() =
        Some(end_of_schedule.max(Instant::now()) + args.drain_timeout);

    let mut reader_task = reader_task;
    let mut tick = tokio::time::interval(Duration::from_millis(250));
    let acc = loop {
        tokio::select! {
            r = &mut reader_task => break r?,
            _ = tick.tick() => pb.set_message(format!("predicted {} (draining)", distinct.load(Ordering::Relaxed))),
            _ = tokio::signal::ctrl_c() => { stop_now.store(true, Ordering::Relaxed); }
        }
    };
    pb.finish_and_clear();

    let d = acc.delivery();
    let latency = acc.latency(|_| true);
    Ok(Step {
        scenario: shape.scenario,
        rate: shape.rate,
        duration_s: shape.duration_s,
        offered_rate: n as f64 / shape.duration_s,
        requests: n,
        sent,
        send_errors,
        max_send_lag_ms: max_lag.as_secs_f64() * 1000.0,
        predicted: acc.distinct,
        lost: d.lost,
        duplicated: d.duplicated,
        throughput: acc.throughput(),
        tenants: acc.tenants(&tenant_names),
        windows: acc.windows(),
        stages: acc.stages(),
        latency,
        passed: None,
    })
}

fn log_step(s: &Step) {
    eprintln!(
        "  p50 by stage: queue {:.1} ms, compute {:.1} ms, commit+read {:.1} ms; max send lag {:.1} ms",
        s.stages.queue.p50_ms, s.stages.compute.p50_ms, s.stages.commit_and_read.p50_ms, s.max_send_lag_ms
    );
    eprintln!(
        "{:?} rate {:.1}/s: {} requests, {} predicted, throughput {:.1}/s, p50 {:.1} ms p99 {:.1} ms p99.9 {:.1} ms, lost {}, duplicated {}{}",
        s.scenario,
        s.rate,
        s.requests,
        s.predicted,
        s.throughput,
        s.latency.p50_ms,
        s.latency.p99_ms,
        s.latency.p999_ms,
        s.lost,
        s.duplicated,
        match s.passed {
            Some(true) => " → pass",
            Some(false) => " → fail",
            None => "",
        }
    );
}

// ------------------------------------------------------------------ set-up

async fn start_target(
    args: &Args,
    run_id: &str,
    keep: &mut Option<tempfile::TempDir>,
) -> anyhow::Result<Target> {
    let brokers = aifab_tests::kafka_brokers();
    let producer: FutureProducer =
        aifab_core::kafka::producer_config(&brokers, "aifab-loadgen").create()?;
    let predictions_topic = args.predictions_topic.clone();
    if args.worker == WorkerKind::None {
        let topic = args
            .topic
            .clone()
            .context("--worker none needs --topic (the running worker's input topic)")?;
        let (b, t) = (brokers.clone(), topic.clone());
        let partitions = tokio::task::spawn_blocking(move || -> anyhow::Result<usize> {
            let c = aifab_core::kafka::metadata_client(&b, "aifab-loadgen")?;
            let md = c.fetch_metadata(Some(&t), Duration::from_secs(10))?;
            Ok(md
                .topics()
                .first()
                .filter(|m| m.error().is_none())
                .map_or(0, |m| m.partitions().len()))
        })
        .await??;
        anyhow::ensure!(
            partitions > 0,
            "topic {topic} does not exist on {brokers} (expected the running worker's input topic)"
        );
        return Ok(Target {
            topic,
            task: args.task.clone(),
            predictions_topic,
            workers: None,
            producer,
            run_id: run_id.into(),
        });
    }
    anyhow::ensure!(
        args.topic.is_none(),
        "started workers get a fresh input topic: drop --topic, or pass --worker none"
    );
    let run = match args.worker {
        WorkerKind::Tiny => WorkerRun::new(args.partitions).await,
        _ => {
            let model_dir = args.model_dir.clone().unwrap_or_else(|| {
                PathBuf::from(std::env::var("HOME").unwrap_or_default())
                    .join(".cache/aifab/models/all-minilm-l6-v2")
            });
            let head = match &args.head_dir {
                Some(h) => h.clone(),
                None => {
                    let dir = tempfile::tempdir()?;
                    let hidden = hidden_size(&model_dir)?;
                    aifab_model::testing::write_random_head(
                        dir.path(),
                        hidden,
                        &["ham", "spam"],
                        1,
                    )?;
                    let p = dir.path().to_path_buf();
                    *keep = Some(dir);
                    p
                }
            };
            WorkerRun::with_model(args.partitions, &model_dir, &head, "load").await
        }
    };
    let mut children = Vec::new();
    for k in 0..args.workers.max(1) {
        let (child, addr) = run.start(
            &format!("loadgen-{run_id}-{k}"),
            args.worker_batch,
            &[("AIFAB_LOG", "error".into())],
        );
        aifab_tests::wait_ready(&addr, "inference worker").await;
        children.push(child);
    }
    eprintln!(
        "{} worker(s) ({:?}) ready on {} ({} partitions)",
        children.len(),
        args.worker,
        run.topic,
        args.partitions
    );
    Ok(Target {
        topic: run.topic.clone(),
        task: run.task.clone(),
        predictions_topic,
        workers: Some((run, children)),
        producer,
        run_id: run_id.into(),
    })
}

fn hidden_size(model_dir: &Path) -> anyhow::Result<usize> {
    let p = model_dir.join("config.json");
    let v: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(&p)
            .with_context(|| format!("reading {} (scripts/fetch-model)", p.display()))?,
    )?;
    v["hidden_size"]
        .as_u64()
        .map(|h| h as usize)
        .with_context(|| format!("{} has no hidden_size", p.display()))
}

// ------------------------------------------------------------------ report

#[derive(Serialize)]
struct Report<'a> {
    scenario: Scenario,
    arrivals: &'a str,
    topic: &'a str,
    predictions_topic: &'a str,
    worker: String,
    steps: &'a [Step],
    #[serde(skip_serializing_if = "Option::is_none")]
    saturation: Option<SaturationReport>,
}

#[derive(Serialize)]
struct SaturationReport {
    p99_target_ms: f64,
    /// Highest rate whose p99 stayed under the target with nothing lost (None: none did).
    max_rate: Option<f64>,
}

fn print_summary(steps: &[Step], sat: Option<&SaturationReport>) {
    if let Some(sat) = sat {
        for (k, s) in steps.iter().enumerate() {
            println!("step{k}_rate {:.1}", s.rate);
            println!("step{k}_p99_ms {:.1}", s.latency.p99_ms);
            println!("step{k}_throughput {:.1}", s.throughput);
            println!("step{k}_lost {}", s.lost);
            println!("step{k}_send_errors {}", s.send_errors);
        }
        println!("p99_target_ms {:.1}", sat.p99_target_ms);
        println!(
            "saturation_rate {}",
            sat.max_rate.map_or("none".into(), |r| format!("{r:.1}"))
        );
        return;
    }
    let s = &steps[0];
    println!(
        "scenario {}",
        serde_json::to_value(s.scenario)
            .unwrap()
            .as_str()
            .unwrap_or("?")
    );
    println!("offered_rate {:.1}", s.offered_rate);
    println!("requests {}", s.requests);
    println!("send_errors {}", s.send_errors);
    println!("throughput {:.1}", s.throughput);
    println!("p50_ms {:.1}", s.latency.p50_ms);
    println!("p90_ms {:.1}", s.latency.p90_ms);
    println!("p99_ms {:.1}", s.latency.p99_ms);
    println!("p999_ms {:.1}", s.latency.p999_ms);
    println!("max_ms {:.1}", s.latency.max_ms);
    println!("queue_p50_ms {:.1}", s.stages.queue.p50_ms);
    println!("compute_p50_ms {:.1}", s.stages.compute.p50_ms);
    println!(
        "commit_and_read_p50_ms {:.1}",
        s.stages.commit_and_read.p50_ms
    );
    if s.tenants.len() > 1 {
        for t in &s.tenants {
            println!("tenant_{}_requests {}", t.tenant, t.requests);
            println!("tenant_{}_p99_ms {:.1}", t.tenant, t.latency.p99_ms);
        }
    }
    println!("lost {}", s.lost);
    println!("duplicated {}", s.duplicated);
}

// ------------------------------------------------------------------ plot

mod plot {
    use super::Step;
    use plotters::prelude::*;
    use std::path::Path;

    type Area<'a> = DrawingArea<BitMapBackend<'a>, plotters::coord::Shift>;
    const BLACK: RGBColor = RGBColor(0, 0, 0);
    pub const C: [RGBColor; 4] = [
        RGBColor(120, 120, 120),
        RGBColor(220, 80, 40),
        RGBColor(30, 110, 200),
        RGBColor(40, 160, 60),
    ];

    fn e<E: std::fmt::Debug>(e: E) -> anyhow::Error {
        anyhow::anyhow!("plot: {e:?}")
    }

    /// Text from font8x8's bitmap glyphs (no system fonts), top-left at (x, y).
    fn text(area: &Area, x: i32, y: i32, s: &str, scale: i32) {
        for (n, ch) in s.chars().enumerate() {
            let glyph = font8x8::legacy::BASIC_LEGACY
                .get(ch as usize)
                .copied()
                .unwrap_or([0; 8]);
            for (row, bits) in glyph.iter().enumerate() {
                for col in 0..8 {
                    if bits & (1 << col) != 0 {
                        let (px, py) = (x + (n as i32 * 8 + col) * scale, y + row as i32 * scale);
                        for dy in 0..scale {
                            for dx in 0..scale {
                                let _ = area.draw_pixel((px + dx, py + dy), &BLACK);
                            }
                        }
                    }
                }
            }
        }
    }

    fn nice_max(v: f64) -> f64 {
        if v <= 0.0 {
            return 1.0;
        }
        let mag = 10f64.powf(v.log10().floor());
        [1.0, 2.0, 2.5, 5.0, 10.0]
            .iter()
            .map(|m| m * mag)
            .find(|m| v <= *m)
            .unwrap_or(10.0 * mag)
    }

    type Series<'s> = (&'s str, RGBColor, Vec<(f64, f64)>);

    fn panel(
        root: &Area,
        area: &Area,
        title: &str,
        x_unit: &str,
        series: &[Series],
    ) -> anyhow::Result<()> {
        let pts = || series.iter().flat_map(|(_, _, p)| p.iter());
        let x_max = nice_max(pts().map(|p| p.0).fold(0.0, f64::max));
        let y_max = nice_max(pts().map(|p| p.1).fold(0.0, f64::max) * 1.05);
        let mut chart = ChartBuilder::on(area)
            .margin_top(30)
            .margin_bottom(24)
            .margin_left(70)
            .margin_right(24)
            .build_cartesian_2d(0f64..x_max, 0f64..y_max)
            .map_err(e)?;
        let grey = RGBColor(225, 225, 225);
        for k in 0..=5 {
            let y = y_max * k as f64 / 5.0;
            chart
                .draw_series(LineSeries::new([(0.0, y), (x_max, y)], &grey))
                .map_err(e)?;
            let (px, py) = chart.backend_coord(&(0.0, y));
            let label = format!("{y:.0}");
            text(root, px - 8 * label.len() as i32 - 6, py - 4, &label, 1);
            let x = x_max * k as f64 / 5.0;
            let (px, py) = chart.backend_coord(&(x, 0.0));
            let label = format!("{x:.0}{x_unit}");
            text(root, px - 4 * label.len() as i32, py + 6, &label, 1);
        }
        chart
            .draw_series(LineSeries::new([(0.0, 0.0), (0.0, y_max)], &BLACK))
            .map_err(e)?;
        chart
            .draw_series(LineSeries::new([(0.0, 0.0), (x_max, 0.0)], &BLACK))
            .map_err(e)?;
        for (_, color, p) in series {
            chart
                .draw_series(LineSeries::new(p.iter().copied(), color.stroke_width(2)))
                .map_err(e)?;
            if p.len() < 20 {
                chart
                    .draw_series(p.iter().map(|q| Circle::new(*q, 4, color.filled())))
                    .map_err(e)?;
            }
        }
        let (x0, y0) = chart.backend_coord(&(0.0, y_max));
        text(root, x0, y0 - 24, title, 2);
        let mut lx = x0 + 16 * title.len() as i32 + 30;
        for (name, color, _) in series {
            root.draw(&Rectangle::new(
                [(lx, y0 - 22), (lx + 18, y0 - 10)],
                color.filled(),
            ))
            .map_err(e)?;
            text(root, lx + 24, y0 - 20, name, 1);
            lx += 24 + 8 * name.len() as i32 + 24;
        }
        Ok(())
    }

    /// Over time for one run: offered and completed per second; p50 and p99 of the
    /// requests scheduled in each second.
    pub fn run(path: &Path, header: &str, s: &Step) -> anyhow::Result<()> {
        let root = BitMapBackend::new(path, (1200, 800)).into_drawing_area();
        root.fill(&WHITE).map_err(e)?;
        text(&root, 10, 8, header, 2);
        let panels = root.margin(30, 0, 0, 0).split_evenly((2, 1));
        let w = &s.windows;
        let offered = w.iter().map(|w| (w.t_s, w.offered as f64)).collect();
        let completed = w.iter().map(|w| (w.t_s, w.completed as f64)).collect();
        panel(
            &root,
            &panels[0],
            "requests/s",
            "s",
            &[("offered", C[0], offered), ("completed", C[2], completed)],
        )?;
        let lat = w.iter().filter(|w| w.offered > 0);
        let p50 = lat.clone().map(|w| (w.t_s, w.p50_ms)).collect();
        let p99 = lat.map(|w| (w.t_s, w.p99_ms)).collect();
        panel(
            &root,
            &panels[1],
            "latency ms (by intended send)",
            "s",
            &[("p50", C[2], p50), ("p99", C[1], p99)],
        )?;
        root.present()
            .map_err(|err| anyhow::anyhow!("writing {}: {err}", path.display()))
    }

    /// Saturation: p99 (and the target) and throughput against the offered rate.
    pub fn saturation(
        path: &Path,
        header: &str,
        steps: &[Step],
        target_ms: f64,
    ) -> anyhow::Result<()> {
        let root = BitMapBackend::new(path, (1200, 800)).into_drawing_area();
        root.fill(&WHITE).map_err(e)?;
        text(&root, 10, 8, header, 2);
        let panels = root.margin(30, 0, 0, 0).split_evenly((2, 1));
        let mut by_rate: Vec<&Step> = steps.iter().collect();
        by_rate.sort_by(|a, b| a.offered_rate.total_cmp(&b.offered_rate));
        let x_end = by_rate.last().map_or(1.0, |s| s.offered_rate);
        let p99 = by_rate
            .iter()
            .map(|s| (s.offered_rate, s.latency.p99_ms))
            .collect();
        let p50 = by_rate
            .iter()
            .map(|s| (s.offered_rate, s.latency.p50_ms))
            .collect();
        let target = vec![(0.0, target_ms), (x_end, target_ms)];
        panel(
            &root,
            &panels[0],
            "latency ms vs offered/s",
            "",
            &[
                ("p99", C[1], p99),
                ("p50", C[2], p50),
                ("target", C[0], target),
            ],
        )?;
        let thr = by_rate
            .iter()
            .map(|s| (s.offered_rate, s.throughput))
            .collect();
        let ideal = vec![(0.0, 0.0), (x_end, x_end)];
        panel(
            &root,
            &panels[1],
            "throughput/s vs offered/s",
            "",
            &[("throughput", C[3], thr), ("offered", C[0], ideal)],
        )?;
        root.present()
            .map_err(|err| anyhow::anyhow!("writing {}: {err}", path.display()))
    }
}

// ------------------------------------------------------------------ main

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    anyhow::ensure!(
        args.rate > 0.0 && args.rate.is_finite(),
        "--rate must be positive"
    );
    anyhow::ensure!(
        args.burst_len < args.burst_every,
        "--burst-len must be shorter than --burst-every"
    );
    anyhow::ensure!(
        (0.0..=1.0).contains(&args.ramp_from),
        "--ramp-from is a fraction in 0..=1"
    );
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    rt.block_on(run(args))
}

async fn run(args: Args) -> anyhow::Result<()> {
    let run_id = format!(
        "{:x}",
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)?
            .as_millis()
    );
    let mut head_tmp = None;
    let mut target = start_target(&args, &run_id, &mut head_tmp).await?;
    let shape_at = |rate: f64| Shape {
        scenario: args.scenario,
        rate,
        duration_s: args.duration.as_secs_f64(),
        ramp_from: args.ramp_from,
        burst_factor: args.burst_factor,
        burst_every_s: args.burst_every.as_secs_f64(),
        burst_len_s: args.burst_len.as_secs_f64(),
        tenants: args.tenants.0.clone(),
    };
    let show = !args.no_progress;
    let mut steps = Vec::new();
    let mut sat_report = None;
    if args.saturate {
        let target_ms = args.p99_target_ms.expect("clap requires it");
        let mut search = Saturation::new(args.step_factor, args.refine, args.max_rate);
        let mut rate = args.rate;
        loop {
            let mut step = run_step(&args, &target, &shape_at(rate), steps.len(), show).await?;
            let ok = step.latency.p99_ms <= target_ms && step.lost == 0 && step.send_errors == 0;
            step.passed = Some(ok);
            log_step(&step);
            steps.push(step);
            // Start the next step on an empty backlog (our own workers only).
            if let Some((run, _)) = &target.workers {
                if !run.wait_drained(args.drain_timeout).await {
                    eprintln!(
                        "the workers still had a backlog after {:?}; stopping",
                        args.drain_timeout
                    );
                    break;
                }
            }
            match search.next(rate, ok) {
                Some(r) => rate = r,
                None => break,
            }
        }
        sat_report = Some(SaturationReport {
            p99_target_ms: target_ms,
            max_rate: search.result(),
        });
    } else {
        let step = run_step(&args, &target, &shape_at(args.rate), 0, show).await?;
        log_step(&step);
        steps.push(step);
    }

    let worker = match args.worker {
        WorkerKind::None => "external".to_string(),
        k => format!(
            "{} {} worker(s), max batch {}",
            args.workers.max(1),
            format!("{k:?}").to_lowercase(),
            args.worker_batch
        ),
    };
    let arrivals = format!("{:?}", args.arrivals).to_lowercase();
    let report = Report {
        scenario: args.scenario,
        arrivals: &arrivals,
        topic: &target.topic,
        predictions_topic: &target.predictions_topic,
        worker: worker.clone(),
        steps: &steps,
        saturation: sat_report,
    };
    if let Some(p) = &args.json {
        std::fs::write(p, serde_json::to_string_pretty(&report)?)
            .with_context(|| format!("writing {}", p.display()))?;
        eprintln!("wrote {}", p.display());
    }
    if let Some(p) = &args.plot {
        let header = format!(
            "aifab loadgen: {:?} {:.0}/s {arrivals}, {worker}",
            args.scenario, args.rate
        );
        match &report.saturation {
            Some(s) => plot::saturation(p, &header, &steps, s.p99_target_ms)?,
            None => plot::run(p, &header, &steps[0])?,
        }
        eprintln!("wrote {}", p.display());
    }
    print_summary(&steps, report.saturation.as_ref());

    if let Some((run, children)) = target.workers.as_mut() {
        for c in children.iter_mut() {
            aifab_tests::sigterm(c);
        }
        for c in children.iter_mut() {
            let _ = c.wait().await;
        }
        aifab_tests::delete_topic(&run.topic).await;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shape(scenario: Scenario, rate: f64, duration_s: f64) -> Shape {
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

    #[test]
    fn plots_draw_without_system_fonts() {
        let arrivals = schedule(&shape(Scenario::Steady, 50.0, 3.0), Arrivals::Uniform, 1);
        let mut acc = Accounting::new(&arrivals);
        for (i, a) in arrivals.iter().enumerate() {
            acc.record(i, a.at_s + 0.02);
        }
        let step = Step {
            scenario: Scenario::Steady,
            rate: 50.0,
            duration_s: 3.0,
            offered_rate: 50.0,
            requests: arrivals.len(),
            sent: arrivals.len(),
            send_errors: 0,
            max_send_lag_ms: 0.0,
            predicted: acc.distinct,
            lost: 0,
            duplicated: 0,
            throughput: acc.throughput(),
            latency: acc.latency(|_| true),
            stages: acc.stages(),
            tenants: acc.tenants(&["acme".into()]),
            windows: acc.windows(),
            passed: Some(true),
        };
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = (dir.path().join("run.png"), dir.path().join("sat.png"));
        plot::run(&a, "test", &step).unwrap();
        let mut faster = step.clone();
        faster.offered_rate = 100.0;
        plot::saturation(&b, "test", &[step, faster], 30.0).unwrap();
        for p in [a, b] {
            assert!(
                std::fs::read(&p).unwrap().starts_with(b"\x89PNG"),
                "{} is a PNG",
                p.display()
            );
        }
    }
}
