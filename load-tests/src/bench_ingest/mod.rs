//! Ingest + feature throughput over the local broker, next to a bare rdkafka producer
//! writing the same payloads to the same broker in the same run.
//!
//! 1. The bare producer: `--messages` `ingest.raw/v1` records with 30-word texts, keyed
//!    by id, written with the platform's producer settings (idempotent, acks=all, lz4)
//!    into a fresh raw topic; messages per second from the first send to the last ack.
//! 2. The pipeline: release `aifab-ingest` and `aifab-feature` started on that topic
//!    (fresh output topics, groups and Redis prefix; the real tokenizer); it validates,
//!    claims ids in Redis, writes `features.in` transactionally, tokenizes, checks the
//!    dedupe cache, writes `inference.requests` transactionally and keeps online
//!    features. Its throughput is the messages divided by the time from the first
//!    accepted record (its broker timestamp) to the last inference request, so
//!    process start-up and group joins are not counted; every message must come out
//!    exactly once, none dead-lettered.
//!
//! 3. The relay: the same two transactional hops with no stage work, the floor the
//!    design's two stages stand on: two of the platform's exactly-once loops
//!    (`aifab_core::pipeline::run_transactional`) copying each record's key and bytes
//!    raw → mid → out, on threads of this process. Its throughput is measured like the
//!    pipeline's; `relay_vs_producer` bounds what any ingest + feature can reach here.
//!
//! Ends with `key value` lines: producer_msgs_per_s, ingest_msgs_per_s,
//! feature_msgs_per_s, ingest_feature_msgs_per_s, the CPU time each service spent per
//! message (ingest_cpu_us_per_msg, feature_cpu_us_per_msg: throughput per core does not
//! depend on what else the machine runs), the broker's CPU per message in each phase and
//! Redis's in the pipeline (broker_cpu_us_per_msg_producer / _pipeline,
//! redis_cpu_us_per_msg_pipeline: all of them share the same cores), relay_msgs_per_s,
//! relay_cpu_us_per_msg, broker_cpu_us_per_msg_relay, relay_vs_producer, and last
//! `ingest_vs_producer <ratio>`.

mod cpu;
mod kafka;
mod pipeline;
mod producer;
mod redis_keys;
mod relay;
mod texts;
mod topics;

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::Parser;

use self::cpu::StackPids;
use self::pipeline::{ingest_and_feature, PipelineFigures, PipelineSetup};
use self::producer::{bare_producer, ProducerFigures};
use self::redis_keys::forget_redis_keys;
use self::relay::{relay_phase, RelayFigures};
use self::texts::payloads;
use self::topics::Topics;

#[derive(Parser)]
#[command(about = "Ingest + feature throughput vs a bare rdkafka producer on the same broker.")]
pub struct Args {
    /// Messages to push.
    #[arg(long, default_value_t = 200_000)]
    pub(crate) messages: usize,
    /// Words per text.
    #[arg(long, default_value_t = 30)]
    pub(crate) words: usize,
    /// Partitions of every bench topic.
    #[arg(long, default_value_t = 4)]
    pub(crate) partitions: i32,
    /// Model directory holding tokenizer.json (default: AIFAB_MODEL_DIR or the fetch-model cache).
    #[arg(long, env = "AIFAB_MODEL_DIR")]
    pub(crate) model_dir: Option<PathBuf>,
    #[arg(long, env = "AIFAB_KAFKA_BROKERS", default_value = aifab_core::config::DEFAULT_KAFKA_BROKERS)]
    pub(crate) brokers: String,
    #[arg(
        long,
        env = "AIFAB_REDIS_URL",
        default_value = aifab_core::config::DEFAULT_REDIS_URL
    )]
    pub(crate) redis_url: String,
    /// Directory of the aifab-ingest / aifab-feature binaries (default: next to this one).
    #[arg(long)]
    pub(crate) bin_dir: Option<PathBuf>,
    /// Skip the relay phase (the two hops with no stage work).
    #[arg(long)]
    pub(crate) no_relay: bool,
    /// Longest the pipeline may take, seconds.
    #[arg(long, default_value_t = 900)]
    pub(crate) timeout_s: u64,
}

fn uuid_ish() -> String {
    format!("{}-{}", std::process::id(), aifab_core::now_ms())
}

/// The three phases on fresh topics, then the `key value` lines.
pub async fn run(args: Args) -> anyhow::Result<()> {
    let model_dir = args.model_dir.clone().unwrap_or_else(|| {
        PathBuf::from(std::env::var("HOME").unwrap_or_default())
            .join(".cache/aifab/models/all-minilm-l6-v2")
    });
    anyhow::ensure!(
        model_dir.join("tokenizer.json").is_file(),
        "no tokenizer.json in {} (run scripts/fetch-model)",
        model_dir.display()
    );
    let bin_dir = match &args.bin_dir {
        Some(d) => d.clone(),
        None => std::env::current_exe()?
            .parent()
            .context("exe dir")?
            .to_path_buf(),
    };
    let run = format!("bench.ingest.{}", uuid_ish());
    let n = args.messages;
    let topics = Topics::new(&run);
    topics.create(&args.brokers, args.partitions).await?;

    let payloads = payloads(n, args.words);
    let bytes: usize = payloads.iter().map(|p| p.bytes.len()).sum();
    eprintln!(
        "{n} payloads of {} words, {} bytes on average",
        args.words,
        bytes / n.max(1)
    );

    // The broker and Redis share the cores with the services: their CPU per message shows
    // what each phase costs the machine as a whole, not only the services' share.
    let pids = StackPids::find();
    let producer = bare_producer(
        &args.brokers,
        &topics,
        args.partitions,
        &payloads,
        pids.broker,
    )?;
    let timeout = Duration::from_secs(args.timeout_s);
    let setup = PipelineSetup {
        brokers: &args.brokers,
        bin_dir: &bin_dir,
        model_dir: &model_dir,
        run: &run,
        topics: &topics,
        timeout,
    };
    let pipeline = ingest_and_feature(&setup, n, pids).await?;
    let relay = if args.no_relay {
        None
    } else {
        Some(relay_phase(&args.brokers, &run, &topics, n, timeout, pids.broker).await?)
    };

    if let Err(e) = forget_redis_keys(&args.redis_url, &run).await {
        eprintln!("could not delete the run's Redis keys ({run}:*): {e:#}");
    }
    topics.delete(&args.brokers).await?;
    print_summary(&args, &producer, &pipeline, relay.as_ref());
    Ok(())
}

/// The `key value` lines stdout ends with (scripts read them: keys stay as they are).
fn print_summary(
    args: &Args,
    producer: &ProducerFigures,
    p: &PipelineFigures,
    relay: Option<&RelayFigures>,
) {
    let producer_rate = producer.msgs_per_s;
    println!("messages {}", args.messages);
    println!("words_per_text {}", args.words);
    println!("producer_msgs_per_s {producer_rate:.0}");
    println!("ingest_msgs_per_s {:.0}", p.ingest_msgs_per_s);
    println!("feature_msgs_per_s {:.0}", p.feature_msgs_per_s);
    println!(
        "ingest_feature_msgs_per_s {:.0}",
        p.ingest_feature_msgs_per_s
    );
    println!("ingest_cpu_us_per_msg {:.1}", p.ingest_cpu_us_per_msg);
    println!("feature_cpu_us_per_msg {:.1}", p.feature_cpu_us_per_msg);
    println!(
        "broker_cpu_us_per_msg_producer {:.1}",
        producer.broker_cpu_us_per_msg
    );
    println!(
        "broker_cpu_us_per_msg_pipeline {:.1}",
        p.broker_cpu_us_per_msg
    );
    println!(
        "redis_cpu_us_per_msg_pipeline {:.1}",
        p.redis_cpu_us_per_msg
    );
    if let Some(r) = relay {
        println!("relay_msgs_per_s {:.0}", r.msgs_per_s);
        println!("relay_cpu_us_per_msg {:.1}", r.cpu_us_per_msg);
        println!("broker_cpu_us_per_msg_relay {:.1}", r.broker_cpu_us_per_msg);
        println!("relay_vs_producer {:.2}", r.msgs_per_s / producer_rate);
    }
    println!(
        "cpus {}",
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1)
    );
    println!(
        "ingest_vs_producer {:.2}",
        p.ingest_feature_msgs_per_s / producer_rate
    );
}
