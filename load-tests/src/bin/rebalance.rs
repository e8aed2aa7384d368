//! What a scale event costs, measured on the local stack: with requests arriving at a
//! steady `--rate` on a fresh 8-partition topic and one inference worker serving them,
//! a second worker joins and later leaves (SIGTERM), `--rounds` times, for each group
//! protocol in `--protocols`:
//!
//! - `eager`: librdkafka's default assignors (range, roundrobin): every member gives up
//!   all its partitions at each change;
//! - `cooperative`: `partition.assignment.strategy=cooperative-sticky`: only moved
//!   partitions pause;
//! - `consumer`: Kafka 4's consumer-group protocol (`group.protocol=consumer`, KIP-848):
//!   the broker computes assignments incrementally, no group-wide barrier.
//!
//! Per event it reads the predictions' production times (worker clocks, same host) and
//! reports the longest gap after the join or leave (the pause), against the longest gap of
//! a quiet stretch (the baseline), and the new worker's time from its start to its first
//! prediction. Ends with `key value` lines (medians over the rounds), e.g.
//! `rebalance_eager_join_pause_s`, `rebalance_eager_leave_pause_s`,
//! `rebalance_eager_first_batch_s`, `rebalance_baseline_gap_s`.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use aifab_core::messages::encode;
use aifab_tests::{request, sigterm, unique, wait_ready, PredictionReader, Timeline, WorkerRun};
use anyhow::{bail, Context};
use clap::Parser;
use rdkafka::producer::{FutureProducer, FutureRecord};

#[derive(Parser)]
#[command(
    about = "Measure the pause a worker joining or leaving the group causes, per group protocol."
)]
struct Args {
    /// Requests per second offered while measuring.
    #[arg(long, default_value_t = 100.0)]
    rate: f64,
    /// Join + leave rounds per protocol.
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    /// Seconds after each event in which its pause is looked for (and quiet before the next).
    #[arg(long, default_value_t = 15.0)]
    settle_s: f64,
    /// Protocols to measure, comma-separated: eager, cooperative, consumer.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "eager,cooperative,consumer"
    )]
    protocols: Vec<String>,
    /// The workers' max batch size.
    #[arg(long, default_value_t = 16)]
    batch: usize,
    /// Serve this encoder (e.g. ~/.cache/aifab/models/all-minilm-l6-v2, with a random head)
    /// instead of the tiny test model: the first batch then includes a real model load.
    #[arg(long)]
    model_dir: Option<std::path::PathBuf>,
}

/// Sets the flag when dropped (also while unwinding from an error or a panic).
struct StopOnDrop(Arc<AtomicBool>);

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// The worker settings that select a protocol.
fn protocol_env(protocol: &str) -> anyhow::Result<Vec<(&'static str, String)>> {
    Ok(match protocol {
        "eager" => vec![],
        "cooperative" => vec![(
            "AIFAB_KAFKA_PROP_PARTITION_ASSIGNMENT_STRATEGY",
            "cooperative-sticky".into(),
        )],
        "consumer" => vec![("AIFAB_KAFKA_PROP_GROUP_PROTOCOL", "consumer".into())],
        other => bail!("unknown protocol {other:?} (eager, cooperative, consumer)"),
    })
}

/// One protocol's events, in seconds.
#[derive(Debug, Default)]
struct Measured {
    join_pause: Vec<f64>,
    leave_pause: Vec<f64>,
    first_batch: Vec<f64>,
    baseline_gap: Vec<f64>,
}

fn median(xs: &[f64]) -> f64 {
    let mut v = xs.to_vec();
    v.sort_by(f64::total_cmp);
    if v.is_empty() {
        return f64::NAN;
    }
    v[v.len() / 2]
}

async fn measure(args: &Args, protocol: &str) -> anyhow::Result<Measured> {
    let env = protocol_env(protocol)?;
    let heads = tempfile::tempdir()?;
    let run = match &args.model_dir {
        None => WorkerRun::new(8).await,
        Some(dir) => {
            // all-MiniLM-L6-v2's hidden size; the head's weights do not matter here.
            aifab_model::testing::write_random_head(heads.path(), 384, &["a", "b"], 1)?;
            WorkerRun::with_model(8, dir, heads.path(), "v1").await
        }
    };
    let prefix = unique(&format!("rebalance-{protocol}"));
    let settle = Duration::from_secs_f64(args.settle_s);

    let (mut a, addr_a) = run.start(&format!("{prefix}-a"), args.batch, &env);
    wait_ready(&addr_a, "worker a").await;

    let stop = Arc::new(AtomicBool::new(false));
    // The reader stops on its own flag: after the producer, once it has read everything
    // (or on any error, when the guard drops: the runtime must not wait for it forever).
    let stop_reading = Arc::new(AtomicBool::new(false));
    let _stop_on_drop = StopOnDrop(stop_reading.clone());
    let read_count = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let producing = {
        let (brokers, topic, task, prefix, stop) = (
            run.endpoints.kafka.clone(),
            run.topic.clone(),
            run.task.clone(),
            prefix.clone(),
            stop.clone(),
        );
        let rate = args.rate;
        tokio::spawn(async move {
            let p: FutureProducer = aifab_core::kafka::producer_config(&brokers, "aifab-rebalance")
                .create()
                .expect("producer");
            let start = Instant::now();
            let mut sent = 0usize;
            let mut tick = tokio::time::interval(Duration::from_millis(10));
            while !stop.load(Ordering::Relaxed) {
                tick.tick().await;
                let due = (start.elapsed().as_secs_f64() * rate) as usize;
                while sent < due {
                    let req = request(&task, &prefix, sent);
                    let payload = encode(&req);
                    // Fire and forget: the idempotent producer retries; a loss would show
                    // as a gap, never as a shorter pause.
                    let _ = p.send_result(FutureRecord::to(&topic).key(&req.id).payload(&payload));
                    sent += 1;
                }
            }
            sent
        })
    };
    let reading = {
        let (brokers, prefix, stop, count) = (
            run.endpoints.kafka.clone(),
            prefix.clone(),
            stop_reading.clone(),
            read_count.clone(),
        );
        tokio::task::spawn_blocking(move || {
            let mut reader =
                PredictionReader::on_brokers(&brokers, aifab_core::topics::PREDICTIONS.name);
            let mut last = Instant::now();
            let deadline = Instant::now() + Duration::from_secs(3600);
            while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
                reader.follow(&prefix, Duration::from_millis(200), &mut last);
                count.store(reader.seen.len(), Ordering::Relaxed);
            }
            reader
        })
    };

    let t0 = now_ms();
    let at = |ms: i64| (ms - t0) as f64 / 1000.0;
    tokio::time::sleep(settle).await;
    let mut events = Vec::new(); // (round, joined_at, left_at, name)
    for round in 0..args.rounds {
        let quiet = at(now_ms());
        let name = format!("{prefix}-b{round}");
        let joined = at(now_ms());
        let (mut b, _) = run.start(&name, args.batch, &env);
        tokio::time::sleep(settle).await;
        let left = at(now_ms());
        sigterm(&b);
        tokio::time::timeout(Duration::from_secs(60), b.wait())
            .await
            .context("worker b exits after SIGTERM")??;
        tokio::time::sleep(settle).await;
        events.push((quiet, joined, left, name));
    }
    stop.store(true, Ordering::Relaxed);
    let sent = producing.await?;
    // Let the reader catch up (bounded), so the last window does not end in a false gap.
    let caught_up = Instant::now() + Duration::from_secs(30);
    while read_count.load(Ordering::Relaxed) < sent && Instant::now() < caught_up {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    stop_reading.store(true, Ordering::Relaxed);
    let reader = reading.await?;
    sigterm(&a);
    tokio::time::timeout(Duration::from_secs(60), a.wait())
        .await
        .context("worker a exits after SIGTERM")??;

    let produced: Vec<f64> = reader.seen.iter().map(|p| at(p.produced_at_ms)).collect();
    eprintln!(
        "{protocol}: {sent} sent, {} predictions read",
        produced.len()
    );
    let timeline = Timeline::new(produced);
    let mut m = Measured::default();
    let s = args.settle_s;
    for (quiet, joined, left, name) in events {
        // A quiet stretch before the join (the first round's starts after worker a settled).
        m.baseline_gap
            .push(timeline.longest_stall(quiet - s / 2.0, quiet).secs);
        m.join_pause
            .push(timeline.longest_stall(joined, joined + s).secs);
        m.leave_pause
            .push(timeline.longest_stall(left, left + s).secs);
        let first = reader
            .seen
            .iter()
            .filter(|p| p.worker == name)
            .map(|p| at(p.produced_at_ms))
            .reduce(f64::min);
        match first {
            Some(t) if t - joined > s => {
                let took = t - joined;
                eprintln!("{protocol}: {name} took {took:.1} s to serve: its pause fell outside the window");
                m.first_batch.push(t - joined);
            }
            Some(t) => m.first_batch.push(t - joined),
            None => eprintln!("{protocol}: {name} never served a batch"),
        }
    }
    eprintln!("{protocol}: {m:?}");
    Ok(m)
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let mut lines = Vec::new();
    let mut baseline = Vec::new();
    for protocol in &args.protocols {
        let m = measure(&args, protocol).await?;
        baseline.extend(m.baseline_gap.iter().copied());
        lines.push((
            format!("rebalance_{protocol}_join_pause_s"),
            median(&m.join_pause),
        ));
        lines.push((
            format!("rebalance_{protocol}_leave_pause_s"),
            median(&m.leave_pause),
        ));
        lines.push((
            format!("rebalance_{protocol}_first_batch_s"),
            median(&m.first_batch),
        ));
        lines.push((
            format!("rebalance_{protocol}_join_pause_max_s"),
            m.join_pause.iter().copied().fold(0.0, f64::max),
        ));
        lines.push((
            format!("rebalance_{protocol}_leave_pause_max_s"),
            m.leave_pause.iter().copied().fold(0.0, f64::max),
        ));
    }
    lines.push(("rebalance_baseline_gap_s".into(), median(&baseline)));
    for (k, v) in lines {
        println!("{k} {v:.2}");
    }
    Ok(())
}
