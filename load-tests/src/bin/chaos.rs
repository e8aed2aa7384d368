//! Worker-kill chaos on the local stack: `--requests` inference requests in a fresh topic,
//! one inference worker (tiny random BERT) SIGKILLed `--kills` times mid-stream and
//! restarted each time under the same instance id (as a supervisor restarts a replica,
//! so the restart fences the dead one's open transaction), the last one left to finish;
//! then every committed prediction is counted with a read_committed reader.
//!
//! The scenario is `aifab_tests::kill_chaos`, the one `tests/tests/inference_worker.rs`
//! runs (with a second worker identity finishing the stream).
//! Ends with `requests <n> lost <n> duplicated <n>`; exits 1 if any was lost or duplicated.

use std::time::Duration;

use aifab_tests::{kill_chaos, unique, KillPlan, WorkerRun};
use clap::Parser;

#[derive(Parser)]
#[command(
    about = "SIGKILL an inference worker repeatedly mid-stream; count lost and duplicated predictions."
)]
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
    let run = WorkerRun::new(args.partitions).await;
    let plan = KillPlan {
        requests: args.requests,
        kills: args.kills,
        batch: args.batch,
        instance: {
            let id = unique("chaos");
            format!("chaos-{}", &id[id.len() - 8..])
        },
        finisher: None,
        timeout: Duration::from_secs(args.timeout_s),
    };
    let report = kill_chaos(&run, &plan).await;
    let mut last = report.last;
    aifab_tests::sigterm(&last);
    let _ = tokio::time::timeout(Duration::from_secs(30), last.wait()).await;
    aifab_tests::delete_topic(&run.topic).await;

    let d = report.delivery;
    println!("kills {}", report.kills);
    println!("committed_predictions {}", report.predictions.len());
    println!("elapsed_s {:.1}", report.elapsed.as_secs_f64());
    println!(
        "requests {} lost {} duplicated {}",
        d.requests, d.lost, d.duplicated
    );
    if d.lost > 0 || d.duplicated > 0 {
        std::process::exit(1);
    }
    Ok(())
}
