//! Does a flood of strangers starve paying tenants? One ingest of its own (fresh topics
//! and Redis prefix on the local stack); a valid tenant POSTs `/v1/infer` at a steady
//! rate, alone and while strangers (no API key, or a made-up one) POST at `--flood-rate`,
//! in alternating rounds (alone first) so both conditions share the machine's moods.
//! Prints `key value` lines: the valid tenant's success rate and latency percentiles in
//! both conditions, their ratios, what the flood achieved, and how many dead letters the
//! strangers cost.

use std::sync::Arc;
use std::time::{Duration, Instant};

use aifab_tests::{create_topic, delete_topic, spawn_service, unique, wait_ready, TopicReader};
use clap::Parser;
use hdrhistogram::Histogram;
use tokio::sync::Semaphore;

#[derive(Debug, Clone, Parser)]
#[command(about = "A valid tenant's latency and success with and without a flood of strangers")]
pub struct Args {
    /// Seconds each round (alone, or under the flood) lasts.
    #[arg(long, default_value_t = 10)]
    pub seconds: u64,
    /// Rounds of each condition, alternating: alone, flooded, alone, flooded, ...
    #[arg(long, default_value_t = 3)]
    pub rounds: u32,
    /// The valid tenant's requests per second.
    #[arg(long, default_value_t = 50)]
    pub rate: u32,
    /// Unauthenticated requests per second offered during the flood.
    #[arg(long, default_value_t = 4000)]
    pub flood_rate: u32,
    /// Which strangers: without a key, with a made-up key (each new, so each costs ingest
    /// a key lookup), or half and half.
    #[arg(long, value_enum, default_value_t = Strangers::Both)]
    pub strangers: Strangers,
    /// The strangers' thread's nice value (0-19; 0: the same priority as everything else;
    /// Linux only). At 19 the generator yields the CPU to ingest, whose work answering the
    /// strangers keeps its priority, and to Kafka and Redis where they run as processes
    /// at normal priority on the same machine (`scripts/stack-up`): nearer a flood from
    /// another host.
    #[arg(long, default_value_t = 19, value_parser = clap::value_parser!(i32).range(0..=19))]
    pub flood_nice: i32,
    /// Most unauthenticated requests in flight at once (the flood is bounded).
    #[arg(long, default_value_t = 128)]
    pub flood_in_flight: usize,
    /// Write the figures as JSON here too.
    #[arg(long)]
    pub json: Option<std::path::PathBuf>,
}

/// Which strangers flood.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Strangers {
    NoKey,
    MadeUpKey,
    Both,
}

impl Strangers {
    /// Whether the `n`th stranger sends a made-up key.
    fn made_up_key(self, n: u64) -> bool {
        match self {
            Strangers::NoKey => false,
            Strangers::MadeUpKey => true,
            Strangers::Both => n.is_multiple_of(2),
        }
    }
}

/// What one tenant saw in one run.
#[derive(Debug, Default)]
struct TenantRun {
    sent: u64,
    ok: u64,
    latency_us: Option<Histogram<u64>>,
}

impl FloodRun {
    fn count(&mut self, status: u16) {
        match status {
            401 => self.unauthorized += 1,
            429 => self.throttled += 1,
            _ => self.other += 1,
        }
    }
}

impl TenantRun {
    /// Both runs as one.
    fn add(&mut self, other: TenantRun) -> anyhow::Result<()> {
        self.sent += other.sent;
        self.ok += other.ok;
        match (&mut self.latency_us, other.latency_us) {
            (Some(h), Some(o)) => h.add(o)?,
            (None, o) => self.latency_us = o,
            (_, None) => {}
        }
        Ok(())
    }

    fn success(&self) -> f64 {
        self.ok as f64 / self.sent.max(1) as f64
    }

    fn percentile_ms(&self, q: f64) -> f64 {
        self.latency_us
            .as_ref()
            .map(|h| h.value_at_quantile(q) as f64 / 1000.0)
            .unwrap_or(f64::NAN)
    }
}

/// What the strangers did.
#[derive(Debug, Default)]
struct FloodRun {
    sent: u64,
    unauthorized: u64,
    /// 429: a made-up key not even looked up.
    throttled: u64,
    /// Anything else (a 2xx would be a stranger let in).
    other: u64,
    elapsed: Duration,
}

fn client() -> anyhow::Result<reqwest::Client> {
    aifab_core::artifacts::install_tls_provider();
    Ok(reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(30))
        .build()?)
}

/// The valid tenant: `rate` POSTs a second for `seconds`, each timed send to answer.
async fn tenant(
    addr: &str,
    key: &str,
    rate: u32,
    seconds: u64,
    tag: &str,
) -> anyhow::Result<TenantRun> {
    let client = client()?;
    let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / rate.max(1) as f64));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let total = rate as u64 * seconds;
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..total {
        tick.tick().await;
        let (client, url, key) = (
            client.clone(),
            format!("http://{addr}/v1/infer"),
            key.to_string(),
        );
        let body =
            serde_json::json!({"id": format!("{tag}-{i}"), "text": format!("steady request {i}")});
        tasks.spawn(async move {
            let start = Instant::now();
            let ok = client
                .post(url)
                .header("x-api-key", key)
                .json(&body)
                .send()
                .await
                .is_ok_and(|r| r.status() == reqwest::StatusCode::ACCEPTED);
            (ok, start.elapsed())
        });
    }
    let mut run = TenantRun {
        latency_us: Some(Histogram::new(3)?),
        ..TenantRun::default()
    };
    while let Some(r) = tasks.join_next().await {
        let (ok, took) = r?;
        run.sent += 1;
        if ok {
            run.ok += 1;
            if let Some(h) = run.latency_us.as_mut() {
                h.record(took.as_micros() as u64)?;
            }
        }
    }
    Ok(run)
}

/// Strangers: `rate` POSTs a second (without a key, with a made-up key, a new
/// one each time, so each costs ingest a Redis lookup), at most `in_flight` at once,
/// until `stop`.
async fn flood(
    addr: &str,
    rate: u32,
    in_flight: usize,
    strangers: Strangers,
    stop: Instant,
) -> anyhow::Result<FloodRun> {
    let client = client()?;
    let slots = Arc::new(Semaphore::new(in_flight));
    let body = Arc::new(serde_json::json!({"text": "x".repeat(1000)}).to_string());
    // Requests go out in batches every millisecond: a timer per request cannot keep up.
    let per_ms = (rate as f64 / 1000.0).max(0.001);
    let started = Instant::now();
    let mut run = FloodRun::default();
    let mut tasks = tokio::task::JoinSet::new();
    let mut tick = tokio::time::interval(Duration::from_millis(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    while Instant::now() < stop {
        tick.tick().await;
        let due = (started.elapsed().as_secs_f64() * 1000.0 * per_ms) as u64;
        while run.sent < due {
            let Ok(permit) = slots.clone().try_acquire_owned() else {
                break;
            };
            let (client, url, body) = (
                client.clone(),
                format!("http://{addr}/v1/infer"),
                body.clone(),
            );
            let made_up = strangers
                .made_up_key(run.sent)
                .then(|| format!("stranger-{}", run.sent));
            tasks.spawn(async move {
                let mut req = client.post(url).header("content-type", "application/json");
                if let Some(key) = made_up {
                    req = req.header("x-api-key", key);
                }
                let status = req.body(body.to_string()).send().await.map(|r| r.status());
                drop(permit);
                status.map(|s| s.as_u16()).unwrap_or(0)
            });
            run.sent += 1;
        }
        while let Some(done) = tasks.try_join_next() {
            run.count(done?);
        }
    }
    while let Some(done) = tasks.join_next().await {
        run.count(done?);
    }
    run.elapsed = started.elapsed();
    Ok(run)
}

pub async fn run(args: Args) -> anyhow::Result<()> {
    let id = unique("flood");
    // Topics of its own, predictions too: on the shared one, ingest's predictions store
    // would copy the whole topic's history into Redis.
    let (raw, features, dlq, predictions) = (
        format!("{id}.raw"),
        format!("{id}.features"),
        format!("{id}.dlq"),
        format!("{id}.predictions"),
    );
    for (t, p) in [(&raw, 2), (&features, 2), (&dlq, 1), (&predictions, 1)] {
        create_topic(t, p).await;
    }
    let dir = tempfile::tempdir()?;
    // The tenant's key as production keeps it: a salted hash (`aifab keys create`).
    let (key, entry) = aifab_core::api_keys::create("steady");
    let keys = serde_json::json!({
        "keys": [entry],
        "tenants": {"steady": {"rate_per_s": 100000.0, "burst": 100000}},
    });
    std::fs::write(dir.path().join("keys.json"), keys.to_string())?;
    let env = vec![
        ("AIFAB_RAW_TOPIC", raw.clone()),
        ("AIFAB_FEATURES_TOPIC", features.clone()),
        ("AIFAB_DLQ_TOPIC", dlq.clone()),
        ("AIFAB_PREDICTIONS_TOPIC", predictions.clone()),
        ("AIFAB_REDIS_PREFIX", id.clone()),
        ("AIFAB_INGEST_GROUP", format!("{id}.ingest")),
        (
            "AIFAB_INGEST_PREDICTIONS_GROUP",
            format!("{id}.ingest-predictions"),
        ),
        (
            "AIFAB_API_KEYS_FILE",
            dir.path().join("keys.json").display().to_string(),
        ),
    ];
    let (mut ingest, addr) = spawn_service("ingest", &env);
    wait_ready(&addr, "ingest").await;

    // Warm up (connections, caches, the producer's transaction), then the rounds.
    let key = key.as_str();
    tenant(&addr, key, args.rate, 3, &format!("{id}-warm")).await?;
    let (mut alone, mut flooded, mut strangers) = (
        TenantRun::default(),
        TenantRun::default(),
        FloodRun::default(),
    );
    for round in 0..args.rounds.max(1) {
        let tag = format!("{id}-alone-{round}");
        alone.add(tenant(&addr, key, args.rate, args.seconds, &tag).await?)?;
        let stop = Instant::now() + Duration::from_secs(args.seconds);
        let tag = format!("{id}-flood-{round}");
        // The strangers on a runtime (threads) of their own: queued behind them in one
        // scheduler, the tenant's answers would wait here, not in ingest.
        let strangers_thread = {
            let nice = args.flood_nice;
            let (addr, rate, in_flight, kind) = (
                addr.clone(),
                args.flood_rate,
                args.flood_in_flight,
                args.strangers,
            );
            std::thread::spawn(move || {
                if nice > 0 {
                    lower_priority(nice);
                }
                tokio::runtime::Builder::new_multi_thread()
                    .worker_threads(1)
                    .enable_all()
                    .build()?
                    .block_on(flood(&addr, rate, in_flight, kind, stop))
            })
        };
        let tenant_run = tenant(&addr, key, args.rate, args.seconds, &tag).await;
        let flood_run = tokio::task::spawn_blocking(move || strangers_thread.join())
            .await?
            .map_err(|_| anyhow::anyhow!("the flood thread panicked"))?;
        flooded.add(tenant_run?)?;
        let f = flood_run?;
        strangers.sent += f.sent;
        strangers.unauthorized += f.unauthorized;
        strangers.throttled += f.throttled;
        strangers.other += f.other;
        strangers.elapsed += f.elapsed;
    }

    let mut dead_letters = TopicReader::new(&dlq);
    dead_letters.read_to_end(Duration::from_secs(30)).await;
    let _ = ingest.start_kill();
    let _ = ingest.wait().await;
    for t in [&raw, &features, &dlq, &predictions] {
        delete_topic(t).await;
    }

    let figures = serde_json::json!({
        "tenant_rate_per_s": args.rate,
        "strangers": clap::ValueEnum::to_possible_value(&args.strangers)
            .map(|v| v.get_name().to_string()),
        "flood_nice": args.flood_nice,
        "seconds": args.seconds,
        "rounds": args.rounds,
        "alone_success": alone.success(),
        "alone_p50_ms": alone.percentile_ms(0.5),
        "alone_p99_ms": alone.percentile_ms(0.99),
        "flooded_success": flooded.success(),
        "flooded_p50_ms": flooded.percentile_ms(0.5),
        "flooded_p99_ms": flooded.percentile_ms(0.99),
        "p99_ratio": flooded.percentile_ms(0.99) / alone.percentile_ms(0.99),
        "success_ratio": flooded.success() / alone.success().max(f64::MIN_POSITIVE),
        "flood_sent": strangers.sent,
        "flood_per_s": strangers.sent as f64 / strangers.elapsed.as_secs_f64(),
        "flood_401": strangers.unauthorized,
        "flood_429": strangers.throttled,
        "flood_other": strangers.other,
        "dead_letters": dead_letters.records.len(),
    });
    for (k, v) in figures.as_object().expect("an object") {
        println!("{k} {v}");
    }
    if let Some(path) = &args.json {
        std::fs::write(path, serde_json::to_string_pretty(&figures)?)?;
    }
    Ok(())
}

/// Lower the calling thread's CPU priority to `nice` (on Linux a nice value is per thread).
#[cfg(target_os = "linux")]
fn lower_priority(nice: i32) {
    // SAFETY: gettid and setpriority take no pointers; a failure only leaves the priority.
    let failed = unsafe {
        let tid = libc::syscall(libc::SYS_gettid) as libc::id_t;
        libc::setpriority(libc::PRIO_PROCESS, tid, nice) != 0
    };
    if failed {
        eprintln!("flood: could not lower the strangers' priority; they run at normal priority");
    }
}

#[cfg(not(target_os = "linux"))]
fn lower_priority(_nice: i32) {
    eprintln!("flood: --flood-nice works on Linux only; the strangers run at normal priority");
}
