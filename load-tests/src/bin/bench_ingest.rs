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

use std::collections::HashSet;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Parser;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::producer::{
    BaseRecord, DeliveryResult, Producer as _, ProducerContext, ThreadedProducer,
};
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::{ClientContext, Message};

#[derive(Parser)]
#[command(about = "Ingest + feature throughput vs a bare rdkafka producer on the same broker.")]
struct Args {
    /// Messages to push.
    #[arg(long, default_value_t = 200_000)]
    messages: usize,
    /// Words per text.
    #[arg(long, default_value_t = 30)]
    words: usize,
    /// Partitions of every bench topic.
    #[arg(long, default_value_t = 4)]
    partitions: i32,
    /// Model directory holding tokenizer.json (default: AIFAB_MODEL_DIR or the fetch-model cache).
    #[arg(long, env = "AIFAB_MODEL_DIR")]
    model_dir: Option<PathBuf>,
    #[arg(long, env = "AIFAB_KAFKA_BROKERS", default_value = "127.0.0.1:9092")]
    brokers: String,
    #[arg(
        long,
        env = "AIFAB_REDIS_URL",
        default_value = "redis://127.0.0.1:6379"
    )]
    redis_url: String,
    /// Directory of the aifab-ingest / aifab-feature binaries (default: next to this one).
    #[arg(long)]
    bin_dir: Option<PathBuf>,
    /// Skip the relay phase (the two hops with no stage work).
    #[arg(long)]
    no_relay: bool,
    /// Longest the pipeline may take, seconds.
    #[arg(long, default_value_t = 900)]
    timeout_s: u64,
}

const WORDS: &[&str] = &[
    "the", "a", "free", "call", "now", "you", "have", "won", "prize", "claim", "your", "text",
    "reply", "stop", "meeting", "tomorrow", "lunch", "at", "noon", "see", "soon", "love", "home",
    "late", "tonight", "ok", "sure", "thanks", "mobile", "offer", "cash", "week", "urgent",
    "account", "please", "send", "number", "when", "are", "we", "going", "movie", "great", "day",
    "sorry", "missed", "message", "back", "later", "good", "morning", "network", "customer",
    "service", "delivery", "order", "today", "friday", "weekend", "plans", "dinner",
];

/// A deterministic 30-word text per index.
fn text(i: usize, words: usize) -> String {
    let mut x = (i as u64)
        .wrapping_mul(6_364_136_223_846_793_005)
        .wrapping_add(1_442_695_040_888_963_407);
    let mut out = Vec::with_capacity(words);
    for _ in 0..words {
        x ^= x >> 33;
        x = x.wrapping_mul(0xff51_afd7_ed55_8ccd);
        x ^= x >> 33;
        out.push(WORDS[(x % WORDS.len() as u64) as usize]);
    }
    out.join(" ")
}

struct Counting;
impl ClientContext for Counting {}
impl ProducerContext for Counting {
    type DeliveryOpaque = ();
    fn delivery(&self, r: &DeliveryResult<'_>, _: ()) {
        if let Err((e, _)) = r {
            eprintln!("delivery failed: {e}");
        }
    }
}

/// The relay's stage: every record's key and bytes, unchanged, to the next topic.
struct CopyHop {
    to: String,
}

impl aifab_core::pipeline::Transform for CopyHop {
    type Done = ();
    async fn transform(
        &mut self,
        batch: &[aifab_core::pipeline::Consumed],
    ) -> anyhow::Result<(Vec<aifab_core::pipeline::Record>, ())> {
        Ok((
            batch
                .iter()
                .map(|m| {
                    aifab_core::pipeline::Record::new(
                        &self.to,
                        m.key.clone().unwrap_or_default(),
                        m.payload.clone(),
                    )
                })
                .collect(),
            (),
        ))
    }
}

/// Run the relay raw → mid → out until the out hop's group has committed all of mid;
/// returns the CPU seconds this process spent from the first committed offset on.
async fn relay(
    brokers: &str,
    run: &str,
    raw: &str,
    mid: &str,
    out: &str,
    n: usize,
    timeout: Duration,
) -> anyhow::Result<f64> {
    let shutdown = tokio_util::sync::CancellationToken::new();
    let mut loops = Vec::new();
    for (hop, from, to) in [("first", raw, mid), ("second", mid, out)] {
        let settings = aifab_core::pipeline::LoopSettings {
            service: "bench",
            brokers: brokers.to_string(),
            group: format!("{run}.relay-{hop}"),
            input_topic: from.to_string(),
            client_id: format!("{run}.relay-{hop}"),
            // The stages' defaults (AIFAB_CONSUME_BATCH, AIFAB_CONSUME_WAIT_MS).
            max_batch: 10_000,
            max_wait: Duration::from_millis(20),
            heartbeat: Default::default(),
        };
        let (stage, handle, cancel) = (
            CopyHop { to: to.to_string() },
            tokio::runtime::Handle::current(),
            shutdown.clone(),
        );
        loops.push(std::thread::spawn(move || {
            aifab_core::pipeline::run_transactional(settings, stage, handle, cancel)
        }));
    }
    let first = GroupWatch::new(brokers, &format!("{run}.relay-first"), raw)?;
    let second = GroupWatch::new(brokers, &format!("{run}.relay-second"), mid)?;
    let deadline = Instant::now() + timeout;
    let (mut base, mut running) = (None, false);
    let result = loop {
        if Instant::now() > deadline {
            break Err(anyhow::anyhow!(
                "the relay did not finish within {}s",
                timeout.as_secs()
            ));
        }
        if loops.iter().any(|l| l.is_finished()) {
            break Err(anyhow::anyhow!("a relay loop stopped early"));
        }
        let (fp, sp) = tokio::task::block_in_place(|| (first.progress(), second.progress()));
        if fp.0 == 0 {
            base = Some(cpu_seconds(Some(std::process::id())));
        } else if !running {
            running = true;
            eprintln!("relay: running");
        }
        if fp.2 && sp.2 && sp.0 as usize >= n {
            break Ok(cpu_seconds(Some(std::process::id())) - base.unwrap_or_default());
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    shutdown.cancel();
    for l in loops {
        match tokio::task::block_in_place(|| l.join()) {
            Ok(Ok(())) => {}
            Ok(Err(e)) => eprintln!("relay loop: {e:#}"),
            Err(_) => eprintln!("a relay loop panicked"),
        }
    }
    result
}

fn admin(brokers: &str) -> anyhow::Result<AdminClient<DefaultClientContext>> {
    Ok(aifab_core::kafka::base_config(brokers, "aifab-bench-admin").create()?)
}

/// Number of committed records in a topic, and the first/last record timestamps (ms).
fn scan(
    brokers: &str,
    topic: &str,
    expect: usize,
    timeout: Duration,
) -> anyhow::Result<(usize, HashSet<String>, i64, i64)> {
    let group = format!("bench-scan-{}", uuid_ish());
    let c: BaseConsumer =
        aifab_core::kafka::consumer_config(brokers, "aifab-bench", &group).create()?;
    let md = c.fetch_metadata(Some(topic), Duration::from_secs(10))?;
    let mut tpl = rdkafka::TopicPartitionList::new();
    for p in md.topics()[0].partitions() {
        tpl.add_partition_offset(topic, p.id(), rdkafka::Offset::Beginning)?;
    }
    c.assign(&tpl)?;
    let (mut n, mut first, mut last) = (0usize, i64::MAX, i64::MIN);
    let mut keys = HashSet::new();
    let deadline = Instant::now() + timeout;
    let mut idle = 0;
    while Instant::now() < deadline {
        match c.poll(Duration::from_millis(200)) {
            None => {
                idle += 1;
                if n >= expect && idle > 5 {
                    break;
                }
                if expect == 0 && idle > 10 {
                    break;
                }
            }
            Some(Err(e)) => anyhow::bail!("reading {topic}: {e}"),
            Some(Ok(m)) => {
                idle = 0;
                n += 1;
                if let Some(k) = m.key() {
                    keys.insert(String::from_utf8_lossy(k).to_string());
                }
                if let Some(ts) = m.timestamp().to_millis() {
                    first = first.min(ts);
                    last = last.max(ts);
                }
            }
        }
    }
    Ok((n, keys, first, last))
}

/// CPU seconds (user + system) a process has used so far, from /proc.
fn cpu_seconds(pid: Option<u32>) -> f64 {
    let Some(pid) = pid else { return 0.0 };
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return 0.0;
    };
    // Fields after the ")" that ends the command name: utime and stime are the 12th and 13th.
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map(|(_, r)| r.split_whitespace().collect())
        .unwrap_or_default();
    let ticks: f64 = fields
        .get(11)
        .and_then(|v| v.parse::<f64>().ok())
        .unwrap_or(0.0)
        + fields
            .get(12)
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0);
    ticks / 100.0 // USER_HZ is 100 on Linux
}

/// The pid of the first process whose command line contains `pattern` (the local stack's
/// broker and Redis), to count their CPU time too.
fn pid_of(pattern: &str) -> Option<u32> {
    std::fs::read_dir("/proc").ok()?.flatten().find_map(|e| {
        let pid: u32 = e.file_name().to_str()?.parse().ok()?;
        let cmdline = std::fs::read(e.path().join("cmdline")).ok()?;
        String::from_utf8_lossy(&cmdline)
            .contains(pattern)
            .then_some(pid)
    })
}

fn uuid_ish() -> String {
    format!("{}-{}", std::process::id(), aifab_core::now_ms())
}

/// Progress of a stage's group on its input topic, from one client kept for the whole
/// run: new clients every poll would add their connections and group lookups to the
/// broker's CPU the bench measures.
struct GroupWatch {
    client: BaseConsumer,
    topic: String,
}

impl GroupWatch {
    fn new(brokers: &str, group: &str, topic: &str) -> anyhow::Result<Self> {
        let client = aifab_core::kafka::consumer_config(brokers, "aifab-bench", group).create()?;
        Ok(Self {
            client,
            topic: topic.to_string(),
        })
    }

    /// (committed messages, high watermark) summed over partitions, and whether the group
    /// has committed on every partition with no lag left.
    fn progress(&self) -> (i64, i64, bool) {
        match aifab_core::kafka::group_offsets(&self.client, &self.topic, Duration::from_secs(10)) {
            Ok(offs) => (
                offs.iter().map(|p| p.committed.unwrap_or(0)).sum(),
                offs.iter().map(|p| p.high_watermark).sum(),
                offs.iter().all(|p| p.committed.is_some() && p.lag == 0),
            ),
            Err(_) => (0, 0, false),
        }
    }
}

/// Wait until the client's metadata names a leader for every partition of a topic just
/// created.
fn wait_for_leaders<C: ClientContext>(
    client: &rdkafka::client::Client<C>,
    topic: &str,
    partitions: usize,
) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok(md) = client.fetch_metadata(Some(topic), Duration::from_secs(5)) {
            if let Some(t) = md.topics().first() {
                if t.error().is_none()
                    && t.partitions().len() == partitions
                    && t.partitions()
                        .iter()
                        .all(|p| p.leader() >= 0 && p.error().is_none())
                {
                    return Ok(());
                }
            }
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "no leaders for {topic} after 30 s"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Delete the run's Redis keys (id claims, online features). Left to
/// expire, they pile up over runs back to back and the next runs pay for Redis's growing
/// and expiring key space.
async fn forget_redis_keys(url: &str, prefix: &str) -> anyhow::Result<usize> {
    let client = redis::Client::open(url)?;
    let mut conn = client.get_multiplexed_async_connection().await?;
    let mut cursor: u64 = 0;
    let mut deleted = 0;
    loop {
        let (next, keys): (u64, Vec<String>) = redis::cmd("SCAN")
            .arg(cursor)
            .arg("MATCH")
            .arg(format!("{prefix}:*"))
            .arg("COUNT")
            .arg(10_000)
            .query_async(&mut conn)
            .await?;
        if !keys.is_empty() {
            deleted += keys.len();
            redis::cmd("UNLINK")
                .arg(&keys)
                .exec_async(&mut conn)
                .await?;
        }
        if next == 0 {
            return Ok(deleted);
        }
        cursor = next;
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
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
    let topics: Vec<String> = [
        "raw",
        "features",
        "inference",
        "training",
        "predictions",
        "dlq",
        "warmup",
        "relay-mid",
        "relay-out",
    ]
    .iter()
    .map(|t| format!("{run}.{t}"))
    .collect();
    let (raw, features, inference, dlq) = (&topics[0], &topics[1], &topics[2], &topics[5]);
    let new: Vec<NewTopic> = topics
        .iter()
        .map(|t| {
            NewTopic::new(
                t,
                if t.ends_with(".dlq") {
                    1
                } else {
                    args.partitions
                },
                TopicReplication::Fixed(1),
            )
        })
        .collect();
    for r in admin(&args.brokers)?
        .create_topics(&new, &AdminOptions::new())
        .await?
    {
        r.map_err(|(t, e)| anyhow::anyhow!("creating {t}: {e}"))?;
    }

    // ---------------------------------------------------------------- payloads
    let payloads: Vec<(String, Vec<u8>)> = (0..n)
        .map(|i| {
            let id = format!("b-{i}");
            let v = serde_json::json!({"schema": "ingest.raw/v1", "id": id, "tenant": "bench", "task": "default", "text": text(i, args.words)});
            (id, serde_json::to_vec(&v).expect("json"))
        })
        .collect();
    let bytes: usize = payloads.iter().map(|p| p.1.len()).sum();
    eprintln!(
        "{n} payloads of {} words, {} bytes on average",
        args.words,
        bytes / n.max(1)
    );

    // ---------------------------------------------------------------- 1. bare producer
    let producer: ThreadedProducer<Counting> =
        aifab_core::kafka::producer_config(&args.brokers, "aifab-bench-producer")
            .create_with_context(Counting)?;
    // The broker and Redis share the cores with the services: their CPU per message shows
    // what each phase costs the machine as a whole, not only the services' share.
    let (broker_pid, redis_pid) = (pid_of("kafka.Kafka"), pid_of("redis-server"));
    // The clock starts once the producer is ready, as the stages' starts after their group
    // joins: an idempotent producer first gets its producer id from the broker (seen to
    // take up to half a second, most of a 100k-message run), and a topic just created may
    // not have its leaders yet. One message to a warm-up topic covers the first.
    let warm = Instant::now();
    producer
        .send(BaseRecord::<(), _>::to(&topics[6]).payload(&b"warm-up"[..]))
        .map_err(|(e, _)| e)?;
    producer.flush(Duration::from_secs(30))?;
    wait_for_leaders(producer.client(), raw, args.partitions as usize)?;
    eprintln!(
        "bare producer ready after {:.2}s",
        warm.elapsed().as_secs_f64()
    );
    let broker_before_producer = cpu_seconds(broker_pid);
    let t0 = Instant::now();
    for (id, payload) in &payloads {
        let mut record = BaseRecord::to(raw).key(id).payload(payload);
        loop {
            match producer.send(record) {
                Ok(()) => break,
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), r)) => {
                    record = r;
                    std::thread::sleep(Duration::from_millis(1));
                }
                Err((e, _)) => anyhow::bail!("producing: {e}"),
            }
        }
    }
    producer.flush(Duration::from_secs(120))?;
    let producer_s = t0.elapsed().as_secs_f64();
    let producer_rate = n as f64 / producer_s;
    eprintln!("bare producer: {n} messages in {producer_s:.2}s = {producer_rate:.0} msg/s");
    drop(producer);
    let producer_broker_us = (cpu_seconds(broker_pid) - broker_before_producer) * 1e6 / n as f64;

    // ---------------------------------------------------------------- 2. ingest + feature
    let dir = tempfile::tempdir()?;
    let keys = dir.path().join("keys.json");
    std::fs::write(
        &keys,
        r#"{"keys":[{"key":"bench-key","tenant":"bench"}],"tenants":{"bench":{"rate_per_s":0}}}"#,
    )?;
    let env: Vec<(&str, String)> = vec![
        ("AIFAB_KAFKA_BROKERS", args.brokers.clone()),
        ("AIFAB_RAW_TOPIC", raw.clone()),
        ("AIFAB_FEATURES_TOPIC", features.clone()),
        ("AIFAB_INFERENCE_TOPIC", inference.clone()),
        ("AIFAB_TRAINING_TOPIC", topics[3].clone()),
        ("AIFAB_PREDICTIONS_TOPIC", topics[4].clone()),
        ("AIFAB_DLQ_TOPIC", dlq.clone()),
        ("AIFAB_REDIS_PREFIX", run.clone()),
        ("AIFAB_INGEST_GROUP", format!("{run}.ingest")),
        (
            "AIFAB_INGEST_PREDICTIONS_GROUP",
            format!("{run}.ingest-predictions"),
        ),
        ("AIFAB_FEATURE_GROUP", format!("{run}.feature")),
        ("AIFAB_FEATURE_CACHE_GROUP", format!("{run}.feature-cache")),
        ("AIFAB_API_KEYS_FILE", keys.display().to_string()),
        ("AIFAB_MODEL_DIR", model_dir.display().to_string()),
        // Short: keep the bench's claimed ids from lingering in Redis.
        ("AIFAB_ID_TTL_S", "600".into()),
        ("AIFAB_DEDUPE_TTL_S", "600".into()),
        (
            "AIFAB_LOG",
            std::env::var("AIFAB_LOG").unwrap_or_else(|_| "warn".into()),
        ),
    ];
    let (broker_before, redis_before) = (cpu_seconds(broker_pid), cpu_seconds(redis_pid));
    let mut children = Vec::new();
    for service in ["ingest", "feature"] {
        let port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        let mut cmd = tokio::process::Command::new(bin_dir.join(format!("aifab-{service}")));
        cmd.env("AIFAB_HTTP_ADDR", format!("127.0.0.1:{port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .kill_on_drop(true);
        for (k, v) in &env {
            cmd.env(k, v);
        }
        children.push(
            cmd.spawn()
                .with_context(|| format!("starting aifab-{service} from {}", bin_dir.display()))?,
        );
    }
    let started = Instant::now();
    let deadline = started + Duration::from_secs(args.timeout_s);
    // Done when ingest has committed the whole raw topic and feature the whole features topic.
    let ingest_watch = GroupWatch::new(&args.brokers, &format!("{run}.ingest"), raw)?;
    let feature_watch = GroupWatch::new(&args.brokers, &format!("{run}.feature"), features)?;
    let mut last_report = Instant::now();
    // CPU each service had used before its first commit (start-up, tokenizer load): not counted.
    let (mut ingest_base, mut feature_base) = (0.0, 0.0);
    loop {
        anyhow::ensure!(
            Instant::now() < deadline,
            "the pipeline did not finish within {}s",
            args.timeout_s
        );
        for c in children.iter_mut() {
            if let Some(status) = c.try_wait()? {
                anyhow::bail!("a service exited early: {status}");
            }
        }
        let (ip, fp) =
            tokio::task::block_in_place(|| (ingest_watch.progress(), feature_watch.progress()));
        let done = ip.2 && fp.2;
        if ip.0 == 0 {
            ingest_base = cpu_seconds(children[0].id());
        }
        if fp.0 == 0 {
            feature_base = cpu_seconds(children[1].id());
        }
        if done {
            break;
        }
        if last_report.elapsed() > Duration::from_secs(5) {
            last_report = Instant::now();
            eprintln!(
                "{:>5.1}s ingest committed {}/{} of the raw topic, feature {}/{} of the features topic",
                started.elapsed().as_secs_f64(),
                ip.0,
                ip.1,
                fp.0,
                fp.1
            );
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    eprintln!(
        "pipeline drained {:.1}s after start",
        started.elapsed().as_secs_f64()
    );
    // At most one poll interval (250 ms) of work is in the base; small against the run.
    let ingest_us = (cpu_seconds(children[0].id()) - ingest_base) * 1e6 / n as f64;
    let feature_us = (cpu_seconds(children[1].id()) - feature_base) * 1e6 / n as f64;
    // From the services' start: the broker does next to nothing while they load.
    let broker_us = (cpu_seconds(broker_pid) - broker_before) * 1e6 / n as f64;
    let redis_us = (cpu_seconds(redis_pid) - redis_before) * 1e6 / n as f64;
    for c in children.iter() {
        if let Some(pid) = c.id() {
            let _ = std::process::Command::new("kill")
                .arg("-TERM")
                .arg(pid.to_string())
                .status();
        }
    }
    for mut c in children {
        let _ = tokio::time::timeout(Duration::from_secs(30), c.wait()).await;
    }

    let b = args.brokers.clone();
    let (f_t, i_t, d_t) = (features.clone(), inference.clone(), dlq.clone());
    let ((nf, _, f_first, f_last), (ni, ikeys, i_first, i_last), (nd, _, _, _)) =
        tokio::task::spawn_blocking(move || {
            anyhow::Ok((
                scan(&b, &f_t, n, Duration::from_secs(120))?,
                scan(&b, &i_t, n, Duration::from_secs(120))?,
                scan(&b, &d_t, 0, Duration::from_secs(5))?,
            ))
        })
        .await??;
    anyhow::ensure!(nd == 0, "{nd} messages were dead-lettered");
    anyhow::ensure!(nf == n, "features topic has {nf} records, expected {n}");
    anyhow::ensure!(
        ni == n && ikeys.len() == n,
        "inference topic has {ni} records ({} distinct), expected {n}",
        ikeys.len()
    );
    let secs = |a: i64, b: i64| ((b - a).max(1)) as f64 / 1000.0;
    let ingest_rate = n as f64 / secs(f_first, f_last);
    let feature_rate = n as f64 / secs(i_first, i_last);
    let pipeline_rate = n as f64 / secs(f_first, i_last);

    // ---------------------------------------------------------------- 3. the relay
    let relay_figures = if args.no_relay {
        None
    } else {
        let (mid, out) = (&topics[7], &topics[8]);
        let broker_before = cpu_seconds(broker_pid);
        let cpu = relay(
            &args.brokers,
            &run,
            raw,
            mid,
            out,
            n,
            Duration::from_secs(args.timeout_s),
        )
        .await?;
        let broker_us = (cpu_seconds(broker_pid) - broker_before) * 1e6 / n as f64;
        let b = args.brokers.clone();
        let (m_t, o_t) = (mid.clone(), out.clone());
        let ((nm, _, m_first, _), (no, okeys, _, o_last)) =
            tokio::task::spawn_blocking(move || {
                anyhow::Ok((
                    scan(&b, &m_t, n, Duration::from_secs(120))?,
                    scan(&b, &o_t, n, Duration::from_secs(120))?,
                ))
            })
            .await??;
        anyhow::ensure!(
            nm == n && no == n && okeys.len() == n,
            "the relay wrote {nm} and {no} records ({} distinct), expected {n}",
            okeys.len()
        );
        Some((
            n as f64 / secs(m_first, o_last),
            cpu * 1e6 / n as f64,
            broker_us,
        ))
    };

    if let Err(e) = forget_redis_keys(&args.redis_url, &run).await {
        eprintln!("could not delete the run's Redis keys ({run}:*): {e:#}");
    }
    let _ = admin(&args.brokers)?
        .delete_topics(
            &topics.iter().map(String::as_str).collect::<Vec<_>>(),
            &AdminOptions::new(),
        )
        .await;

    println!("messages {n}");
    println!("words_per_text {}", args.words);
    println!("producer_msgs_per_s {producer_rate:.0}");
    println!("ingest_msgs_per_s {ingest_rate:.0}");
    println!("feature_msgs_per_s {feature_rate:.0}");
    println!("ingest_feature_msgs_per_s {pipeline_rate:.0}");
    println!("ingest_cpu_us_per_msg {ingest_us:.1}");
    println!("feature_cpu_us_per_msg {feature_us:.1}");
    println!("broker_cpu_us_per_msg_producer {producer_broker_us:.1}");
    println!("broker_cpu_us_per_msg_pipeline {broker_us:.1}");
    println!("redis_cpu_us_per_msg_pipeline {redis_us:.1}");
    if let Some((rate, cpu_us, broker_us)) = relay_figures {
        println!("relay_msgs_per_s {rate:.0}");
        println!("relay_cpu_us_per_msg {cpu_us:.1}");
        println!("broker_cpu_us_per_msg_relay {broker_us:.1}");
        println!("relay_vs_producer {:.2}", rate / producer_rate);
    }
    println!(
        "cpus {}",
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1)
    );
    println!("ingest_vs_producer {:.2}", pipeline_rate / producer_rate);
    Ok(())
}
