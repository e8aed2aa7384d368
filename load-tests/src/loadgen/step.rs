//! One step of a run: a schedule offered to the target while its predictions are
//! collected, and the step's figures.

use std::time::{Duration, Instant};

use aifab_tests::PredictionReader;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use serde::Serialize;

use super::accounting::{Accounting, Latency, Stages, TenantStats, Window};
use super::args::{Args, Scenario};
use super::collect::{Clock, Collector};
use super::schedule::{schedule, Shape};
use super::target::Target;
use super::traffic::send_schedule;

#[derive(Clone, Debug, Serialize)]
pub(crate) struct Step {
    pub(crate) scenario: Scenario,
    /// `--rate` of this step (for ramp the peak, for burst the base).
    pub(crate) rate: f64,
    pub(crate) duration_s: f64,
    /// Scheduled requests per second, on average.
    pub(crate) offered_rate: f64,
    pub(crate) requests: usize,
    pub(crate) sent: usize,
    pub(crate) send_errors: usize,
    /// Longest a send went out after its intended time (the producer falling behind).
    pub(crate) max_send_lag_ms: f64,
    pub(crate) predicted: usize,
    pub(crate) lost: usize,
    pub(crate) duplicated: usize,
    pub(crate) throughput: f64,
    pub(crate) latency: Latency,
    pub(crate) stages: Stages,
    pub(crate) tenants: Vec<TenantStats>,
    pub(crate) windows: Vec<Window>,
    /// Saturation: p99 under the target and nothing lost.
    pub(crate) passed: Option<bool>,
}

pub(crate) async fn run_step(
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
    let tenant_names: Vec<String> = shape.tenants.iter().map(|(t, _)| t.clone()).collect();

    // Position the reader at the current end before anything is sent.
    let topic = target.predictions_topic.clone();
    let reader = tokio::task::spawn_blocking(move || PredictionReader::on(&topic)).await?;
    let clock = Clock {
        t0: Instant::now() + Duration::from_millis(200),
        wall0_ms: aifab_core::now_ms() + 200,
    };
    let pb = progress_bar(n, show);
    let collector = Collector::spawn(
        reader,
        Accounting::new(&arrivals),
        format!("{prefix}-"),
        clock,
    );
    let sent = send_schedule(
        target,
        &arrivals,
        &tenant_names,
        &prefix,
        clock,
        &pb,
        &collector.distinct,
    )
    .await;
    let end_of_schedule = clock.t0 + Duration::from_secs_f64(shape.duration_s);
    collector.drain_until(end_of_schedule.max(Instant::now()) + args.drain_timeout);
    let acc = collector.finish(&pb).await?;
    pb.finish_and_clear();

    let d = acc.delivery();
    let latency = acc.latency(|_| true);
    Ok(Step {
        scenario: shape.scenario,
        rate: shape.rate,
        duration_s: shape.duration_s,
        offered_rate: n as f64 / shape.duration_s,
        requests: n,
        sent: sent.sent,
        send_errors: sent.send_errors,
        max_send_lag_ms: sent.max_lag.as_secs_f64() * 1000.0,
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

fn progress_bar(n: usize, show: bool) -> ProgressBar {
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
    pb
}

pub(crate) fn log_step(s: &Step) {
    eprintln!(
        "  p50 by stage: queue {:.1} ms, compute {:.1} ms, commit+read {:.1} ms; \
         max send lag {:.1} ms",
        s.stages.queue.p50_ms,
        s.stages.compute.p50_ms,
        s.stages.commit_and_read.p50_ms,
        s.max_send_lag_ms
    );
    eprintln!(
        "{:?} rate {:.1}/s: {} requests, {} predicted, throughput {:.1}/s, \
         p50 {:.1} ms p99 {:.1} ms p99.9 {:.1} ms, lost {}, duplicated {}{}",
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
