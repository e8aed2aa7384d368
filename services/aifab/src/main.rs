use std::time::Duration;

use aifab::local::{self, SERVICES};
use anyhow::Context;
use clap::{Parser, Subcommand};

/// aifab: production management for AI models. Operator CLI and local stack supervisor.
#[derive(Debug, Parser)]
#[command(name = "aifab", version, propagate_version = true)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// The whole loop on the local stack: bring it up, train on a labelled data set
    /// (default: the built-in SMS Spam Collection), stream its test split through Kafka,
    /// and report accuracy, throughput, latency and cost.
    Demo(aifab::demo::DemoArgs),
    /// Start the local stack (Kafka, NATS, Redis) and every service, and supervise them:
    /// crashed services restart with backoff; Ctrl-C or SIGTERM stops everything.
    Up {
        /// Do not run scripts/stack-up (the brokers are managed elsewhere).
        #[arg(long, env = "AIFAB_NO_STACK")]
        no_stack: bool,
        /// Return once every service is ready, leaving the supervisor in the background
        /// (stop it with `aifab down`).
        #[arg(long, short)]
        detach: bool,
        /// Seconds to wait for every service to become ready.
        #[arg(long, default_value_t = 120)]
        ready_timeout_s: u64,
        /// Once ready, redraw the status table (services, lag, throughput, models,
        /// spend) every N seconds.
        #[arg(long, default_value_t = 2)]
        live_every_s: u64,
    },
    /// Stop the supervisor and its services (and with --stack, Kafka/NATS/Redis too).
    Down {
        /// Also stop the local brokers (scripts/stack-down).
        #[arg(long)]
        stack: bool,
    },
    /// Every service's readiness, then throughput, latency, lag per consumer group,
    /// replicas, model versions and spend vs budget from the monitor's dashboard
    /// (exit status 1 unless every service is ready).
    Status(aifab::status::StatusArgs),
    /// Train a classification head: offline from JSONL files, or by asking the trainer.
    Train(aifab::train::TrainArgs),
    /// Replay an arrival trace through fixed, KEDA-style and aifab's budget-aware scaling
    /// and report SLO-violation seconds, worker-hours and cost (table, PNG, one line each).
    Simulate(aifab::simulate::SimulateArgs),
    /// Spend, budgets, burn rate and cost per 1,000 predictions; `costs budget` sets a budget.
    Costs(aifab::costs::CostsArgs),
    /// The model registry: list, show, promote, roll back.
    Models(aifab::models::ModelsArgs),
    /// Write JSON lines (a file or stdin) to a topic, each checked against its schema.
    Produce(aifab::stream::ProduceArgs),
    /// Print a topic's messages as JSON lines (read_committed, no consumer group).
    Consume(aifab::stream::ConsumeArgs),
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    aifab_core::artifacts::install_tls_provider();
    aifab_core::telemetry::init_cli_logging(&std::env::var("AIFAB_LOG").unwrap_or_else(|_| "info".into()));
    match cli.command {
        Cmd::Up { no_stack, detach, ready_timeout_s, live_every_s } => up(no_stack, detach, ready_timeout_s, live_every_s.max(1)).await,
        Cmd::Down { stack } => down(stack).await,
        Cmd::Train(args) => aifab::train::run(args).await,
        Cmd::Simulate(args) => aifab::simulate::run(args),
        Cmd::Costs(args) => aifab::costs::run(args).await,
        Cmd::Models(args) => aifab::models::run(args).await,
        Cmd::Demo(args) => aifab::demo::run(args).await,
        Cmd::Produce(args) => aifab::stream::produce(args).await,
        Cmd::Consume(args) => aifab::stream::consume(args).await,
        Cmd::Status(args) => {
            let ready = aifab::status::run(SERVICES, args).await?;
            std::process::exit(if ready { 0 } else { 1 });
        }
    }
}

fn pid_file() -> std::path::PathBuf {
    local::run_dir().join("supervisor.pid")
}

async fn up(no_stack: bool, detach: bool, ready_timeout_s: u64, live_every_s: u64) -> anyhow::Result<()> {
    if let Some(pid) = running_supervisor() {
        println!("aifab is already up (supervisor pid {pid})");
        return print_status_until_ready(Duration::from_secs(ready_timeout_s)).await;
    }
    if !no_stack {
        let root = local::repo_root()?;
        local::run_script(&root, "stack-up", &[])?;
        // feature, trainer and the worker read the encoder from the model cache.
        local::run_script(&root, "fetch-model", &[])?;
    }
    if detach {
        // Re-run ourselves in the foreground mode, in a new session, logging to a file.
        std::fs::create_dir_all(local::log_dir())?;
        let log_path = local::log_dir().join("supervisor.log");
        let log = std::fs::OpenOptions::new().create(true).append(true).open(&log_path)?;
        let exe = std::env::current_exe()?;
        std::process::Command::new("setsid")
            .arg(exe)
            .args(["up", "--no-stack"])
            .stdin(std::process::Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("starting the supervisor in the background")?;
        println!("supervisor started in the background; log: {}", log_path.display());
        return print_status_until_ready(Duration::from_secs(ready_timeout_s)).await;
    }

    std::fs::create_dir_all(local::run_dir())?;
    std::fs::write(pid_file(), std::process::id().to_string())?;
    let supervisor = aifab::supervisor::Supervisor::new(&local::bin_dir()?, &local::log_dir(), SERVICES)?;
    let shutdown = aifab_core::shutdown::on_signal();
    let report = tokio::spawn({
        let shutdown = shutdown.clone();
        async move {
            tokio::select! {
                r = print_status_until_ready(Duration::from_secs(ready_timeout_s)) => {
                    if let Err(e) = r { eprintln!("{e:#}"); }
                    println!("logs: {} — stop with Ctrl-C or `aifab down`", local::log_dir().display());
                    // From here on the table stays live (redrawn on a terminal, printed on
                    // changes otherwise) until the supervisor stops.
                    aifab::status::live(SERVICES, &local::monitor_url(), Duration::from_secs(live_every_s), &shutdown).await;
                }
                _ = shutdown.cancelled() => {}
            }
        }
    });
    supervisor.run(shutdown, Duration::from_secs(40)).await?;
    report.abort();
    let _ = std::fs::remove_file(pid_file());
    Ok(())
}

/// Poll until every service is ready, then print the table; on timeout print it and fail.
async fn print_status_until_ready(timeout: Duration) -> anyhow::Result<()> {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let (table, ready) = aifab::status::table(SERVICES).await;
        if ready {
            print!("{table}");
            println!("all {} services up", SERVICES.len());
            return Ok(());
        }
        if tokio::time::Instant::now() > deadline {
            print!("{table}");
            anyhow::bail!("not every service became ready within {timeout:?}; logs in {}", local::log_dir().display());
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// The pid of a live supervisor, from its pid file.
fn running_supervisor() -> Option<u32> {
    let pid: u32 = std::fs::read_to_string(pid_file()).ok()?.trim().parse().ok()?;
    std::path::Path::new(&format!("/proc/{pid}")).exists().then_some(pid)
}

async fn down(stack: bool) -> anyhow::Result<()> {
    match running_supervisor() {
        Some(pid) => {
            let _ = std::process::Command::new("kill").arg("-TERM").arg(pid.to_string()).status();
            let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
            while running_supervisor().is_some() {
                anyhow::ensure!(tokio::time::Instant::now() < deadline, "supervisor {pid} did not stop within 60s");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            println!("services stopped");
        }
        None => println!("no supervisor running"),
    }
    if stack {
        local::run_script(&local::repo_root()?, "stack-down", &[])?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_cli_definition_is_consistent() {
        use clap::CommandFactory;
        super::Cli::command().debug_assert();
    }
}
