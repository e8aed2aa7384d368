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
//! Ends with `key value` lines (see `report::print_summary`).

mod accounting;
mod args;
mod collect;
mod plot;
mod report;
mod saturation;
mod schedule;
mod step;
mod target;
mod traffic;

use anyhow::Context;

pub use self::args::Args;
use self::args::WorkerKind;
use self::report::{print_summary, Report, SaturationReport};
use self::saturation::Saturation;
use self::schedule::Shape;
use self::step::{log_step, run_step};
use self::target::start_target;

/// The whole run: the target, the step (or the saturation search's steps), the report.
pub async fn run(args: Args) -> anyhow::Result<()> {
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
            if let Some(w) = &target.workers {
                if !w.run.wait_drained(args.drain_timeout).await {
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

    target.stop().await;
    Ok(())
}
