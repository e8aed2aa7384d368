//! Worker-kill chaos on the local stack: `--requests` inference requests in a fresh topic,
//! one inference worker (tiny random BERT) SIGKILLed `--kills` times mid-stream and
//! restarted each time under the same instance id (as a supervisor restarts a replica,
//! so the restart fences the dead one's open transaction), the last one left to finish;
//! then every committed prediction is counted with a read_committed reader.
//!
//! The fixtures are the ones `tests/tests/inference_worker.rs` uses (`aifab_tests`).
//! Ends with `requests <n> lost <n> duplicated <n>`; exits 1 if any was lost or duplicated.

use std::time::{Duration, Instant};

use aifab_tests::{delivery, produce_requests, sigkill, unique, PredictionReader, WorkerRun};
use clap::Parser;

#[derive(Parser)]
#[command(about = "SIGKILL an inference worker repeatedly mid-stream; count lost and duplicated predictions.")]
struct Args {
    /// Requests produced to the fresh input topic before the worker starts.
    #[arg(long, default_value_t = 20_000)]
    requests: usize,
    /// SIGKILLs, evenly spread over the stream (by predictions read).
    #[arg(long, default_value_t = 5)]
    kills: usize,
    /// Partitions of the input topic.
    #[arg(long, default_value_t = 4)]
    partitions: i32,
    /// The worker's max batch size.
    #[arg(long, default_value_t = 16)]
    batch: usize,
    /// Longest to wait for each phase (kill point, the final drain), seconds.
    #[arg(long, default_value_t = 300)]
    timeout_s: u64,
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let n = args.requests;
    let timeout = Duration::from_secs(args.timeout_s);
    let run = WorkerRun::new(args.partitions).await;
    let prefix = unique("chaos");
    let mut reader = tokio::task::spawn_blocking(PredictionReader::new).await?;
    let t = Instant::now();
    produce_requests(&run.topic, &run.task, &prefix, 0..n).await;
    eprintln!("produced {n} requests to {} in {:.1}s", run.topic, t.elapsed().as_secs_f64());

    let started = Instant::now();
    let instance = format!("chaos-{}", &prefix[prefix.len() - 8..]);
    let (mut worker, _) = run.start(&instance, args.batch, &[]);
    let mut kills = 0;
    for k in 1..=args.kills {
        let at = k * n / (args.kills + 1);
        if !reader.read_until(&prefix, at, timeout) {
            eprintln!("only {} distinct predictions after {timeout:?}; no more kills", reader.counts().len());
            break;
        }
        sigkill(&mut worker);
        worker.wait().await?;
        kills += 1;
        eprintln!(
            "kill {k}: SIGKILL at {} distinct predictions ({:.1}s), restarting {instance}",
            reader.counts().len(),
            started.elapsed().as_secs_f64()
        );
        worker = run.start(&instance, args.batch, &[]).0;
    }
    if !reader.read_until(&prefix, n, timeout) {
        eprintln!("only {} of {n} requests predicted after {timeout:?}", reader.counts().len());
    }
    let drained = run.wait_drained(timeout).await;
    if !drained {
        eprintln!("the worker group did not reach lag 0 within {timeout:?}");
    }
    // read_committed: reading to the end waits out open transactions, so every committed
    // prediction (a duplicate too) is counted.
    if !reader.read_to_end(&prefix, Duration::from_secs(90)) {
        eprintln!("the predictions topic never settled");
    }
    let elapsed = started.elapsed().as_secs_f64();
    aifab_tests::sigterm(&worker);
    let _ = tokio::time::timeout(Duration::from_secs(30), worker.wait()).await;
    aifab_tests::delete_topic(&run.topic).await;

    let ids: Vec<String> = (0..n).map(|i| format!("{prefix}-{i}")).collect();
    let d = delivery(ids.iter().map(String::as_str), &reader.counts());
    println!("kills {kills}");
    println!("committed_predictions {}", reader.seen.len());
    println!("elapsed_s {elapsed:.1}");
    println!("requests {} lost {} duplicated {}", d.requests, d.lost, d.duplicated);
    if d.lost > 0 || d.duplicated > 0 {
        std::process::exit(1);
    }
    Ok(())
}
