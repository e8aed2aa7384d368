use std::io::IsTerminal;
use std::time::Duration;

use aifab::local::{self, SERVICES};
use aifab::status::Health;
use aifab_core::telemetry;
use anyhow::Context;
use clap::{Parser, Subcommand};

/// The log filter of `aifab up` when its stderr is a file, unless AIFAB_LOG / RUST_LOG
/// say otherwise.
const SUPERVISOR_LOG_FILTER: &str = "error,aifab=info";
/// While services start, a line on what is still awaited this often.
const PROGRESS_EVERY: Duration = Duration::from_secs(10);

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
        /// Give each service the settings in `<DIR>/<service>.env` (its own credentials:
        /// `scripts/stack-up --secure` writes them to $AIFAB_DATA_DIR/secrets/env).
        #[arg(long, env = "AIFAB_SERVICE_ENV_DIR")]
        env_dir: Option<std::path::PathBuf>,
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
    /// Tenants' API keys: `keys create` makes one and stores only its salted hash.
    Keys(aifab::keys::KeysArgs),
    /// The model registry: list, show, promote, roll back.
    Models(aifab::models::ModelsArgs),
    /// Write JSON lines (a file or stdin) to a topic, each checked against its schema.
    Produce(aifab::stream::ProduceArgs),
    /// Print a topic's messages as JSON lines (read_committed, no consumer group).
    Consume(aifab::stream::ConsumeArgs),
    /// Create aifab's topics with the replication you set (`topics ensure`) or check
    /// partitions, replicas and min.insync.replicas of those that exist (`topics check`).
    Topics(aifab::topics::TopicsArgs),
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    aifab_core::artifacts::install_tls_provider();
    // A bad AIFAB_KAFKA_PROP_* / properties file stops the CLI with its message first.
    aifab_core::kafka::process_props()?;
    let env = |k: &str| std::env::var(k).ok();
    let default_filter = match cli.command {
        // The supervisor's own log file (`up --detach` sends it to supervisor.log): its
        // restarts, replica changes and scale decisions.
        Cmd::Up { .. } if !std::io::stderr().is_terminal() => SUPERVISOR_LOG_FILTER,
        // A person's terminal: results, then only aifab's warnings and libraries' errors.
        _ => telemetry::CLI_LOG_FILTER,
    };
    telemetry::init_cli_logging(&telemetry::cli_log_filter(
        env("AIFAB_LOG").as_deref(),
        env("RUST_LOG").as_deref(),
        default_filter,
    ));
    match cli.command {
        Cmd::Up {
            no_stack,
            detach,
            ready_timeout_s,
            live_every_s,
            env_dir,
        } => {
            up(
                no_stack,
                detach,
                ready_timeout_s,
                live_every_s.max(1),
                env_dir,
            )
            .await
        }
        Cmd::Down { stack } => down(stack).await,
        Cmd::Train(args) => aifab::train::run(args).await,
        Cmd::Keys(args) => aifab::keys::run(args),
        Cmd::Simulate(args) => aifab::simulate::run(args),
        Cmd::Costs(args) => aifab::costs::run(args).await,
        Cmd::Models(args) => aifab::models::run(args).await,
        Cmd::Demo(args) => aifab::demo::run(args).await,
        Cmd::Produce(args) => aifab::stream::produce(args).await,
        Cmd::Consume(args) => aifab::stream::consume(args).await,
        Cmd::Topics(args) => {
            let ok = aifab::topics::run(args).await?;
            std::process::exit(if ok { 0 } else { 1 });
        }
        Cmd::Status(args) => {
            let ready = aifab::status::run(SERVICES, args).await?;
            std::process::exit(if ready { 0 } else { 1 });
        }
    }
}

fn pid_file() -> std::path::PathBuf {
    local::run_dir().join("supervisor.pid")
}

async fn up(
    no_stack: bool,
    detach: bool,
    ready_timeout_s: u64,
    live_every_s: u64,
    env_dir: Option<std::path::PathBuf>,
) -> anyhow::Result<()> {
    if let Some(pid) = running_supervisor() {
        println!("aifab is already up (supervisor pid {pid})");
        return print_status_until_ready(Duration::from_secs(ready_timeout_s)).await;
    }
    if !no_stack {
        let root = local::repo_root()?;
        println!("starting the local stack: Kafka, NATS, Redis (scripts/stack-up; the first time installs them)");
        local::run_script(&root, "stack-up", &[])?;
        // feature, trainer and the worker read the encoder from the model cache.
        println!("checking the model cache (scripts/fetch-model)");
        local::run_script(&root, "fetch-model", &[])?;
    }
    if detach {
        // Re-run ourselves in the foreground mode, in a new session, logging to a file.
        std::fs::create_dir_all(local::log_dir())?;
        let log_path = local::log_dir().join("supervisor.log");
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)?;
        let exe = std::env::current_exe()?;
        std::process::Command::new("setsid")
            .arg(exe)
            .args(["up", "--no-stack"])
            .args(
                env_dir
                    .iter()
                    .flat_map(|d| [std::ffi::OsStr::new("--env-dir"), d.as_os_str()]),
            )
            .stdin(std::process::Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("starting the supervisor in the background")?;
        println!(
            "supervisor started in the background; log: {}",
            log_path.display()
        );
        return print_status_until_ready(Duration::from_secs(ready_timeout_s)).await;
    }

    let mut supervisor =
        aifab::supervisor::Supervisor::new(&local::bin_dir()?, &local::log_dir(), SERVICES)?;
    if let Some(dir) = &env_dir {
        supervisor = supervisor.with_env_dir(dir)?;
    }
    std::fs::create_dir_all(local::run_dir())?;
    std::fs::write(pid_file(), std::process::id().to_string())?;
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
                    let every = Duration::from_secs(live_every_s);
                    aifab::status::live(SERVICES, &local::monitor_url(), every, &shutdown).await;
                }
                _ = shutdown.cancelled() => {}
            }
        }
    });
    let result = supervisor.run(shutdown, Duration::from_secs(40)).await;
    report.abort();
    let _ = std::fs::remove_file(pid_file());
    result
}

/// Poll until every service is ready, then print the table; on timeout print it and fail.
/// Meanwhile, every [`PROGRESS_EVERY`], a line says which services are still awaited.
async fn print_status_until_ready(timeout: Duration) -> anyhow::Result<()> {
    let start = tokio::time::Instant::now();
    let deadline = start + timeout;
    let client = reqwest::Client::new();
    let mut next_progress = start;
    loop {
        let mut waiting = Vec::new();
        for s in SERVICES {
            let health = aifab::status::probe(&client, &s.addr()).await;
            if !matches!(health, Health::Ready | Health::AwaitingModel(_)) {
                waiting.push((s.name, health));
            }
        }
        let now = tokio::time::Instant::now();
        if waiting.is_empty() || now > deadline {
            let (table, ready) = aifab::status::table(SERVICES).await;
            print!("{table}");
            if ready {
                println!(
                    "all {} services up ({}s)",
                    SERVICES.len(),
                    now.duration_since(start).as_secs()
                );
                return Ok(());
            }
            if now > deadline {
                anyhow::bail!(
                    "not every service became ready within {timeout:?}; logs in {}",
                    local::log_dir().display()
                );
            }
        } else if now >= next_progress {
            if next_progress == start {
                println!(
                    "waiting for {} services to become ready (up to {}s; logs in {})",
                    SERVICES.len(),
                    timeout.as_secs(),
                    local::log_dir().display()
                );
            }
            println!("{}", waiting_line(now.duration_since(start), &waiting));
            next_progress += PROGRESS_EVERY;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// `  12s: waiting for trainer (not up yet), feature (not ready: kafka)`.
fn waiting_line(elapsed: Duration, waiting: &[(&str, Health)]) -> String {
    let what: Vec<String> = waiting
        .iter()
        .map(|(name, health)| match health {
            Health::Down(_) => format!("{name} (not up yet)"),
            Health::NotReady(checks) => {
                // "loop:examples-consumer: starting: ..." names `loop:examples-consumer`.
                let failing: Vec<&str> = checks
                    .iter()
                    .map(|c| {
                        c.split_once(": ")
                            .map_or(c.as_str(), |(name, _)| name)
                            .trim()
                    })
                    .collect();
                format!("{name} (not ready: {})", failing.join(", "))
            }
            Health::Ready | Health::AwaitingModel(_) => name.to_string(),
        })
        .collect();
    format!("{:>5}s: waiting for {}", elapsed.as_secs(), what.join(", "))
}

/// The pid of a live supervisor, from its pid file.
fn running_supervisor() -> Option<u32> {
    let pid: u32 = std::fs::read_to_string(pid_file())
        .ok()?
        .trim()
        .parse()
        .ok()?;
    std::path::Path::new(&format!("/proc/{pid}"))
        .exists()
        .then_some(pid)
}

async fn down(stack: bool) -> anyhow::Result<()> {
    match running_supervisor() {
        Some(pid) => {
            let _ = std::process::Command::new("kill")
                .arg("-TERM")
                .arg(pid.to_string())
                .status();
            let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
            while running_supervisor().is_some() {
                anyhow::ensure!(
                    tokio::time::Instant::now() < deadline,
                    "supervisor {pid} did not stop within 60s"
                );
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
    use std::time::Duration;

    use aifab::status::Health;

    #[test]
    fn the_cli_definition_is_consistent() {
        use clap::CommandFactory;
        super::Cli::command().debug_assert();
    }

    #[test]
    fn the_progress_line_names_what_is_awaited() {
        let waiting = [
            ("trainer", Health::Down("not running".into())),
            (
                "feature",
                Health::NotReady(vec![
                    "kafka: metadata timed out".into(),
                    "redis: refused".into(),
                ]),
            ),
        ];
        let loops = [(
            "trainer",
            Health::NotReady(vec![
                "loop:examples-consumer: starting: topic t does not exist yet".into(),
            ]),
        )];
        assert_eq!(
            super::waiting_line(Duration::from_secs(3), &loops),
            "    3s: waiting for trainer (not ready: loop:examples-consumer)"
        );
        assert_eq!(
            super::waiting_line(Duration::from_secs(12), &waiting),
            "   12s: waiting for trainer (not up yet), feature (not ready: kafka, redis)"
        );
    }
}
