//! `aifab simulate`: replay an arrival trace through the worker pool under three
//! policies — fixed replicas, KEDA-style lag scaling, and aifab's budget-aware policy —
//! and report SLO-violation seconds, worker-hours and cost, as a table, a PNG plot, and
//! finally one line per policy:
//!
//! ```text
//! policy <name> slo_violation_s <x> worker_hours <x> cost <x> scale_events_per_h <x>
//!   max_scale_events_in_an_hour <n>
//! ```
//!
//! The KEDA and aifab policies are `aifab_autoscaler::policy`, the code the live
//! autoscaler runs.

mod decision_log;
pub mod engine;
pub mod plot;
pub mod service_model;
pub mod trace;

use std::path::PathBuf;

use aifab_autoscaler::policy::{PolicyConfig, PolicyKind};

use self::engine::{simulate, Run, SimConfig, SimResult};
use self::service_model::ServiceModel;
use self::trace::TraceOptions;

/// `aifab simulate`.
#[derive(Debug, Clone, clap::Args)]
pub struct SimulateArgs {
    /// `synthetic`, or a trace file: the GenAI GPU-utilisation CSV or the v2023 pod list
    /// (JSONL or CSV). The format is detected from the first line.
    #[arg(long)]
    pub trace: String,
    /// A budget for the whole run, in currency units: the aifab policy never exceeds it
    /// (the others ignore it; the table says whether they stayed within).
    #[arg(long)]
    pub budget: Option<f64>,
    /// What one worker costs per hour.
    #[arg(long, default_value_t = 0.20)]
    pub price_per_worker_hour: f64,
    /// Arrivals per second in the trace's busiest minute (default: about 73% of what 8
    /// workers serve).
    #[arg(long, default_value_t = 450.0)]
    pub peak_rps: f64,
    /// Simulated seconds (default: the trace's own span; synthetic and pods: 86400).
    #[arg(long)]
    pub duration_s: Option<u64>,
    /// Pod traces: seconds over which a pod's burst of requests arrives.
    #[arg(long, default_value_t = 30.0)]
    pub burst_s: f64,
    /// Random seed for the arrivals (the same arrivals for every policy).
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// A worker's throughput by batch size, `BATCH:SEQ_PER_S,...`, interpolated in
    /// log2(batch). Default: the worker benchmark through Kafka (`load-tests/bench-pipeline`,
    /// all-MiniLM-L6-v2 on a 2-core CPU: `pipeline_b1` 42.4, `pipeline_b32` 77.2 seq/s).
    #[arg(long, default_value = "1:42.4,32:77.2")]
    pub service_rates: String,
    /// Fixed cost added to every batch, milliseconds (the pipeline figures include the
    /// Kafka transaction already).
    #[arg(long, default_value_t = 0.0)]
    pub batch_overhead_ms: f64,
    /// The worker's largest batch.
    #[arg(long, default_value_t = 32)]
    pub max_batch: u32,
    /// Partitions of the request topic (the most useful workers).
    #[arg(long, default_value_t = 8)]
    pub partitions: u32,
    /// Seconds from starting a worker to it consuming.
    #[arg(long, default_value_t = 15.0)]
    pub startup_s: f64,
    /// Seconds every worker pauses when the group changes.
    #[arg(long, default_value_t = 3.0)]
    pub rebalance_s: f64,
    /// Seconds between lag readings (and decisions).
    #[arg(long, default_value_t = 5.0)]
    pub interval_s: f64,
    /// The latency SLO: p99 end-to-end, milliseconds.
    #[arg(long, default_value_t = 1000.0)]
    pub slo_ms: f64,
    /// Replicas of the fixed policy (default: enough for the peak at 80% utilisation).
    #[arg(long)]
    pub fixed_replicas: Option<u32>,
    /// KEDA `lagThreshold` (also aifab's fallback before it has rates).
    #[arg(long, default_value_t = 100.0)]
    pub lag_per_replica: f64,
    /// aifab: utilisation to provision for.
    #[arg(long, default_value_t = 0.85)]
    pub target_utilization: f64,
    /// aifab: scale down only to a count that stays at or under this utilisation.
    #[arg(long, default_value_t = 0.7)]
    pub scale_down_utilization: f64,
    /// aifab: seconds to drain a backlog in.
    #[arg(long, default_value_t = 15.0)]
    pub drain_s: f64,
    /// aifab: scale-down stabilization window, seconds.
    #[arg(long, default_value_t = 120.0)]
    pub stabilization_s: f64,
    /// aifab: a burst above the replicas the budget sustains to the end is allowed when
    /// this many seconds of it are affordable on top of them (0: no bursts).
    #[arg(long, default_value_t = 3600.0)]
    pub budget_burst_s: f64,
    /// aifab: at most this many scale events (replica changes) in any hour, paced;
    /// scale-downs wait for room for themselves and a scale-up, scale-ups only at the limit
    /// (0: no limit; use 4 or more).
    #[arg(long, default_value_t = 0)]
    pub max_scale_events_per_hour: u32,
    /// aifab: time constant of the arrival-rate estimate's rise, seconds.
    #[arg(long, default_value_t = 4.0)]
    pub arrival_rise_s: f64,
    /// KEDA/HPA: scale-down stabilization window, seconds.
    #[arg(long, default_value_t = 300.0)]
    pub keda_stabilization_s: f64,
    /// Where to write the PNG (default: simulate-<trace>.png in the current directory).
    #[arg(long)]
    pub plot: Option<PathBuf>,
    /// Do not write a PNG.
    #[arg(long)]
    pub no_plot: bool,
}

impl SimulateArgs {
    pub fn sim_config(&self) -> anyhow::Result<SimConfig> {
        let service = ServiceModel::parse(
            &self.service_rates,
            self.batch_overhead_ms / 1000.0,
            self.max_batch,
        )
        .map_err(|e| anyhow::anyhow!("--service-rates: {e}"))?;
        anyhow::ensure!(self.partitions > 0, "--partitions must be at least 1");
        anyhow::ensure!(self.interval_s > 0.0, "--interval-s must be positive");
        Ok(SimConfig {
            partitions: self.partitions,
            service,
            startup_s: self.startup_s,
            rebalance_s: self.rebalance_s,
            interval_s: self.interval_s,
            slo_ms: self.slo_ms,
            price_per_worker_hour: self.price_per_worker_hour,
            budget: self.budget,
        })
    }

    /// The three runs: fixed, keda, aifab.
    pub fn runs(&self, cfg: &SimConfig) -> Vec<(String, Run)> {
        let sat = cfg.service.saturated_rate();
        let fixed = self.fixed_replicas.unwrap_or_else(|| {
            ((self.peak_rps / (sat * 0.8)).ceil() as u32).clamp(1, cfg.partitions)
        });
        let mut keda = PolicyConfig::new(PolicyKind::Keda);
        keda.max_replicas = cfg.partitions;
        keda.lag_per_replica = self.lag_per_replica;
        keda.scale_down_stabilization_s = self.keda_stabilization_s;
        let mut aifab = PolicyConfig::new(PolicyKind::Aifab);
        aifab.max_replicas = cfg.partitions;
        aifab.lag_per_replica = self.lag_per_replica;
        aifab.replica_rate_per_s = sat;
        aifab.startup_s = self.startup_s;
        aifab.target_utilization = self.target_utilization;
        aifab.scale_down_utilization = self.scale_down_utilization;
        aifab.drain_s = self.drain_s;
        aifab.scale_down_stabilization_s = self.stabilization_s;
        aifab.replica_cost_per_hour = self.price_per_worker_hour;
        aifab.budget_burst_s = self.budget_burst_s;
        aifab.max_scale_events_per_hour = self.max_scale_events_per_hour;
        aifab.arrival_rise_s = self.arrival_rise_s;
        vec![
            ("fixed".into(), Run::Fixed(fixed)),
            ("keda".into(), Run::Policy(keda)),
            ("aifab".into(), Run::Policy(aifab)),
        ]
    }
}

/// Run every policy on the trace (in parallel threads).
pub fn run_all(args: &SimulateArgs) -> anyhow::Result<(trace::Trace, SimConfig, Vec<SimResult>)> {
    let opts = TraceOptions {
        peak_rps: args.peak_rps,
        duration_s: args.duration_s,
        burst_s: args.burst_s,
        seed: args.seed,
    };
    let trace = trace::load(&args.trace, &opts)?;
    let cfg = args.sim_config()?;
    let arrivals = trace.arrivals(args.seed);
    let runs = args.runs(&cfg);
    let results = std::thread::scope(|s| {
        let handles: Vec<_> = runs
            .iter()
            .map(|(name, run)| {
                let (arrivals, cfg) = (&arrivals, &cfg);
                s.spawn(move || simulate(name, arrivals, cfg, run))
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("simulation thread"))
            .collect::<Vec<_>>()
    });
    Ok((trace, cfg, results))
}

/// The policy lines the command ends with.
pub fn policy_line(r: &SimResult) -> String {
    format!(
        "policy {} slo_violation_s {} worker_hours {:.2} cost {:.2} scale_events_per_h {:.1} \
         max_scale_events_in_an_hour {}",
        r.name,
        r.slo_violation_s,
        r.worker_hours,
        r.cost,
        r.scale_events_per_hour(),
        r.max_scale_events_in_an_hour
    )
}

pub fn run(args: SimulateArgs) -> anyhow::Result<()> {
    let started = std::time::Instant::now();
    let (trace, cfg, results) = run_all(&args)?;
    let requests = results.first().map(|r| r.requests).unwrap_or(0);
    println!(
        "trace    {} — {} ({})",
        trace.name,
        trace.kind.describe(),
        trace.note
    );
    println!(
        "load     {} s simulated, peak minute {:.0} req/s, mean {:.1} req/s, {} requests",
        trace.duration_s(),
        args.peak_rps,
        trace.mean_rps(),
        requests
    );
    println!(
        "workers  {} at batch 1 … {:.0}/s saturated (batch {}, +{} ms per batch); \
         {} partitions; start-up {} s; rebalance {} s; decisions every {} s",
        cfg.service
            .points
            .first()
            .map(|p| format!("{:.0}/s", p.1))
            .unwrap_or_default(),
        cfg.service.saturated_rate(),
        cfg.service.max_batch,
        args.batch_overhead_ms,
        cfg.partitions,
        cfg.startup_s,
        cfg.rebalance_s,
        cfg.interval_s
    );
    println!(
        "slo      p99 ≤ {} ms; price {:.2} per worker-hour; budget {}",
        args.slo_ms,
        args.price_per_worker_hour,
        args.budget
            .map(|b| format!("{b:.2}"))
            .unwrap_or_else(|| "none".into())
    );
    if let Some((_, Run::Fixed(n))) = args.runs(&cfg).first() {
        println!(
            "policies fixed = {n} replicas; keda = lag/{} per replica, HPA defaults; \
             aifab = rate-based, budget-aware",
            args.lag_per_replica
        );
    }
    println!();
    println!(
        "{:<10} {:>11} {:>12} {:>9} {:>8} {:>8} {:>9} {:>10} {:>7} {:>8} {:>5} {:>7} {:>9}",
        "POLICY",
        "SLO_VIOL_S",
        "WORKER_H",
        "COST",
        "P50_MS",
        "P99_MS",
        "MAX_REPL",
        "MEAN_REPL",
        "SCALES",
        "SCALES/H",
        "MAX/H",
        "BUDGET",
        "RATE/REPL"
    );
    for r in &results {
        let budget = match args.budget {
            None => "-",
            Some(b) if r.cost <= b + 1e-9 => "within",
            Some(_) => "OVER",
        };
        let learned = r
            .learned_rate
            .map(|x| format!("{x:.1}/s"))
            .unwrap_or_else(|| "-".into());
        println!(
            "{:<10} {:>11} {:>12.2} {:>9.2} {:>8.0} {:>8.0} {:>9} {:>10.2} {:>7} {:>8.1} {:>5} {:>7} {:>9}",
            r.name,
            r.slo_violation_s,
            r.worker_hours,
            r.cost,
            r.p50_ms,
            r.p99_ms,
            r.max_replicas,
            r.mean_replicas,
            r.scale_events,
            r.scale_events_per_hour(),
            r.max_scale_events_in_an_hour,
            budget,
            learned
        );
    }
    if let (Some(k), Some(a)) = (
        results.iter().find(|r| r.name == "keda"),
        results.iter().find(|r| r.name == "aifab"),
    ) {
        let saved = 100.0 * (1.0 - a.worker_hours / k.worker_hours.max(1e-9));
        println!();
        println!(
            "aifab vs keda: {saved:.1}% fewer worker-hours; SLO-violation seconds {} vs {}{}",
            a.slo_violation_s,
            k.slo_violation_s,
            args.budget
                .map(|b| format!("; aifab cost {:.2} of budget {b:.2}", a.cost))
                .unwrap_or_default()
        );
    }
    if !args.no_plot {
        let path = args.plot.clone().unwrap_or_else(|| {
            let stem = std::path::Path::new(&trace.name)
                .file_stem()
                .map(|s| s.to_string_lossy().to_string())
                .unwrap_or_default();
            PathBuf::from(format!("simulate-{stem}.png"))
        });
        plot::write(&path, &trace.name, &results)?;
        println!("plot: {}", path.display());
    }
    eprintln!("(simulated in {:.1} s)", started.elapsed().as_secs_f64());
    for r in &results {
        println!("{}", policy_line(r));
    }
    Ok(())
}
