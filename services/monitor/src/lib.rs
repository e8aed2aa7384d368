//! aifab monitor: on an interval, reads committed offsets and high watermarks of every
//! watched consumer group and publishes `aifab.lag.<group>` (per partition and total, with
//! the rate of change); consumes `aifab.predictions` (and `aifab.dlq`) for end-to-end
//! latency percentiles and throughput per model and tenant over a rolling window; SLO
//! rules raise and resolve `aifab.alerts.<rule>`. Everything is on `/metrics`, and
//! `GET /v1/stats` serves the current window.
//!
//! It also serves the dashboard: `GET /` (one self-contained page) polls
//! `GET /v1/dashboard`, which adds to the window and lag readings the autoscaler's
//! decisions and replica reports (NATS `aifab.scale.*`, `aifab.replicas.*`), budget
//! reports (`aifab.budget.*`), the cost accountant's `GET /v1/costs` (`--costs-url`) and
//! the model registry (Redis).
//!
//! - [`dashboard`]: what is collected for the dashboard and its JSON (pure).
//! - [`lag`]: lag readings and rates, watch lists, assignment parsing (pure).
//! - [`window`]: rolling hdrhistogram windows (pure).
//! - [`slo`]: the rules (pure).

pub mod dashboard;
pub mod lag;
pub mod slo;
pub mod window;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use aifab_core::config::{BrokerArgs, ServeArgs};
use aifab_core::messages::{
    decode, encode, Alert, BudgetEvent, DeadLetter, LagReading, Outcome, Prediction, ReplicaReport,
    ScaleDecision,
};
use aifab_core::service::{Needs, Service, ServiceSpec};
use aifab_core::topics::{self, groups, subjects};
use anyhow::Context;
use axum::{extract::State, response::Html, routing::get, Json, Router};
use futures::StreamExt;
use rdkafka::consumer::{BaseConsumer, Consumer, StreamConsumer};
use rdkafka::Message;
use serde::Serialize;
use tokio_util::sync::CancellationToken;

use crate::lag::LagTracker;
use crate::slo::{Measurements, SloConfig, SloEngine};
use crate::window::{Key, WindowStats, Windows};

pub const SPEC: ServiceSpec = ServiceSpec {
    name: "monitor",
    default_port: 8084,
    // Redis holds the model registry the dashboard shows; readiness includes it.
    needs: Needs {
        kafka: true,
        nats: true,
        redis: true,
    },
};

/// Command-line and environment configuration.
#[derive(Debug, Clone, clap::Parser)]
#[command(
    name = "aifab-monitor",
    version,
    about = "Measures consumer lag, latency and throughput; raises SLO alerts; serves the dashboard.",
    long_about = "Measures consumer lag, latency and throughput; raises SLO alerts; serves the dashboard.\n\n\
        GET / is a live dashboard page (throughput, latency percentiles, lag per group, replicas and \
        scale decisions, spend vs budget per tenant, model versions and their metrics); it polls \
        GET /v1/dashboard. GET /v1/stats serves the rolling window alone.\n\n\
        Needs Kafka, NATS and Redis (the model registry): /readyz is 503 while any is unreachable. \
        The cost accountant (--costs-url) is optional: while it is unreachable the dashboard says so \
        and keeps the budget reports it hears on NATS."
)]
pub struct Config {
    #[command(flatten)]
    pub brokers: BrokerArgs,
    #[command(flatten)]
    pub serve: ServeArgs,

    /// Milliseconds between lag readings (and SLO evaluations).
    #[arg(long, env = "AIFAB_MONITOR_INTERVAL_MS", default_value_t = 5000)]
    pub interval_ms: u64,
    /// Groups to watch always, `GROUP=TOPIC,...`.
    #[arg(long, env = "AIFAB_MONITOR_WATCH", default_value = "")]
    pub watch: String,
    /// Also watch every consumer group named `--group-prefix*` on `--topic-prefix*` topics.
    #[arg(long, env = "AIFAB_MONITOR_DISCOVER", default_value_t = true, action = clap::ArgAction::Set)]
    pub discover: bool,
    /// Prefix of discovered groups.
    #[arg(long, env = "AIFAB_MONITOR_GROUP_PREFIX", default_value = "aifab-")]
    pub group_prefix: String,
    /// Prefix of discovered topics.
    #[arg(long, env = "AIFAB_MONITOR_TOPIC_PREFIX", default_value = "aifab.")]
    pub topic_prefix: String,
    /// Seconds between group discoveries.
    #[arg(long, env = "AIFAB_MONITOR_DISCOVER_EVERY_S", default_value_t = 30)]
    pub discover_every_s: u64,
    /// This monitor's consumer group (predictions and dead letters).
    #[arg(long, env = "AIFAB_MONITOR_GROUP", default_value = groups::MONITOR)]
    pub group: String,
    /// Predictions topic.
    #[arg(long, env = "AIFAB_MONITOR_PREDICTIONS_TOPIC", default_value = topics::PREDICTIONS.name)]
    pub predictions_topic: String,
    /// Dead-letter topic.
    #[arg(long, env = "AIFAB_MONITOR_DLQ_TOPIC", default_value = topics::DLQ.name)]
    pub dlq_topic: String,
    /// Rolling window of latency, throughput and DLQ rate, seconds.
    #[arg(long, env = "AIFAB_MONITOR_WINDOW_S", default_value_t = 60)]
    pub window_s: u64,
    /// SLO: p99 end-to-end latency, milliseconds (0: off).
    #[arg(long, env = "AIFAB_SLO_P99_MS", default_value_t = 1000.0)]
    pub slo_p99_ms: f64,
    /// SLO: share of predictions that may fail (expire) (0: off).
    #[arg(long, env = "AIFAB_SLO_ERROR_RATE", default_value_t = 0.01)]
    pub slo_error_rate: f64,
    /// SLO: most lag of any watched group, records (0: off).
    #[arg(long, env = "AIFAB_SLO_MAX_LAG", default_value_t = 10_000)]
    pub slo_max_lag: i64,
    /// SLO: most dead letters per second (0: off).
    #[arg(long, env = "AIFAB_SLO_DLQ_PER_S", default_value_t = 1.0)]
    pub slo_dlq_per_s: f64,
    /// SLO: latency and error rules need this many predictions in the window.
    #[arg(long, env = "AIFAB_SLO_MIN_SAMPLES", default_value_t = 20)]
    pub slo_min_samples: u64,
    /// SLO: consecutive evaluations before a rule fires or resolves.
    #[arg(long, env = "AIFAB_SLO_FOR_EVALS", default_value_t = 2)]
    pub slo_for_evals: u32,

    /// Dashboard: the cost accountant's base URL, for `GET /v1/costs` (today's spend per
    /// tenant). Empty: off (budget reports on NATS still show).
    #[arg(
        long,
        env = "AIFAB_MONITOR_COSTS_URL",
        default_value = "http://127.0.0.1:8085"
    )]
    pub costs_url: String,
    /// Dashboard: milliseconds between fetches of the cost report and the model registry.
    #[arg(
        long,
        env = "AIFAB_MONITOR_DASHBOARD_REFRESH_MS",
        default_value_t = 5000
    )]
    pub dashboard_refresh_ms: u64,
    /// Dashboard: budget reports, replica reports and scale decisions older than this many
    /// seconds are left out.
    #[arg(long, env = "AIFAB_MONITOR_DASHBOARD_MAX_AGE_S", default_value_t = 600)]
    pub dashboard_max_age_s: u64,
    /// Dashboard: model versions shown per task (the newest; aliased versions always).
    #[arg(long, env = "AIFAB_MONITOR_DASHBOARD_VERSIONS", default_value_t = 5)]
    pub dashboard_versions: usize,
}

impl Config {
    pub fn dashboard_limits(&self) -> dashboard::Limits {
        dashboard::Limits {
            max_age_ms: self
                .dashboard_max_age_s
                .saturating_mul(1000)
                .min(i64::MAX as u64) as i64,
            versions_per_task: self.dashboard_versions.max(1),
        }
    }

    pub fn slo(&self) -> SloConfig {
        SloConfig {
            p99_ms: self.slo_p99_ms,
            error_rate: self.slo_error_rate,
            max_lag: self.slo_max_lag,
            dlq_per_s: self.slo_dlq_per_s,
            min_samples: self.slo_min_samples,
            for_evals: self.slo_for_evals,
        }
    }
}

/// The consumer group each service uses and the topic it reads, for discovered groups
/// that have no members right now.
const KNOWN: &[(&str, &str)] = &[
    (groups::INGEST, topics::INGEST_RAW.name),
    (groups::FEATURE, topics::FEATURES_IN.name),
    (groups::INFERENCE_WORKER, topics::INFERENCE_REQUESTS.name),
    (groups::TRAINER, topics::TRAINING_EXAMPLES.name),
    (groups::MONITOR, topics::PREDICTIONS.name),
    (groups::COST_ACCOUNTANT, topics::USAGE.name),
];

/// `GET /v1/stats`.
#[derive(Debug, Clone, Default, Serialize)]
pub struct StatsReport {
    pub window_s: f64,
    pub overall: Option<WindowStats>,
    /// Keyed `task@version`.
    pub models: BTreeMap<String, WindowStats>,
    pub tenants: BTreeMap<String, WindowStats>,
    pub dead_letters_per_s: f64,
    pub lag: Vec<LagReading>,
    pub alerts_firing: Vec<Alert>,
}

struct Shared {
    latest_lag: BTreeMap<(String, String), LagReading>,
    report: StatsReport,
    firing: BTreeMap<String, Alert>,
    dash: dashboard::Collected,
}

type SharedState = Arc<Mutex<Shared>>;

/// Start the service and run until SIGTERM/SIGINT.
pub async fn run(config: Config) -> anyhow::Result<()> {
    let static_watch =
        lag::parse_watch(&config.watch).map_err(|e| anyhow::anyhow!("--watch: {e}"))?;
    let mut svc = Service::init(SPEC, &config.serve, &config.brokers).await?;
    let costs_from = if config.costs_url.trim().is_empty() {
        "off (--costs-url is empty)".to_string()
    } else {
        costs_endpoint(&config.costs_url)
    };
    let shared = Arc::new(Mutex::new(Shared {
        latest_lag: BTreeMap::new(),
        report: StatsReport::default(),
        firing: BTreeMap::new(),
        dash: dashboard::Collected::new(costs_from),
    }));
    let windows = Arc::new(Mutex::new(Windows::new(config.window_s as i64 * 1000, 12)));
    let limits = config.dashboard_limits();
    let api = Router::new()
        .route("/", get(|| async { Html(dashboard::PAGE) }))
        .route(
            "/v1/stats",
            get(|State(s): State<SharedState>| async move {
                Json(s.lock().expect("stats lock").report.clone())
            }),
        )
        .route(
            "/v1/dashboard",
            get(move |State(s): State<SharedState>| async move {
                let d = dashboard::build(
                    &s.lock().expect("stats lock").dash,
                    aifab_core::now_ms(),
                    limits,
                );
                Json(d)
            }),
        )
        .with_state(shared.clone());
    svc.serve(api).await?;
    let nats = svc.nats()?;
    let redis = svc.redis()?;
    svc.supervise(
        "control-listener",
        listen_control(nats.clone(), shared.clone(), svc.shutdown.clone()),
    );
    let refresher = refresh_sources(config.clone(), redis, shared.clone(), svc.shutdown.clone());
    svc.supervise("dashboard-refresher", async move {
        refresher.await;
        Ok(())
    });

    // Lag: blocking librdkafka calls on their own thread, readings sent here.
    let (tx, mut rx) = tokio::sync::mpsc::channel::<LagReading>(256);
    let poller = {
        let config = config.clone();
        let token = svc.shutdown.clone();
        aifab_core::pipeline::spawn_loop("lag-poller", move || {
            lag_poller(config, static_watch, tx, token);
            Ok(())
        })?
    };
    svc.supervise("lag-poller", async move {
        poller.await.context("lag poller thread")?
    });
    svc.supervise(
        "predictions-consumer",
        consume_predictions(config.clone(), windows.clone(), svc.shutdown.clone()),
    );

    let slo = config.slo();
    let mut engine = SloEngine::default();
    let mut tick = tokio::time::interval(Duration::from_millis(config.interval_ms.max(100)));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = svc.shutdown.cancelled() => break,
            Some(reading) = rx.recv() => {
                publish_lag(&nats, &reading).await;
                let mut sh = shared.lock().expect("stats lock");
                sh.dash.on_lag(&reading);
                sh.latest_lag.insert((reading.group.clone(), reading.topic.clone()), reading);
            }
            _ = tick.tick() => {
                let now = aifab_core::now_ms();
                let (stats, dlq) = {
                    let mut w = windows.lock().expect("windows lock");
                    (w.stats(now), w.dead_letters_per_s(now))
                };
                let window_s = config.window_s as f64;
                // The stats lock is held only in this block, never across the awaits below.
                let alerts = {
                    let mut sh = shared.lock().expect("stats lock");
                    let report = build_report(window_s, &stats, dlq, &sh.latest_lag, &sh.firing);
                    let mut lag_by_group: BTreeMap<String, i64> = BTreeMap::new();
                    for r in sh.latest_lag.values() {
                        let e = lag_by_group.entry(r.group.clone()).or_default();
                        *e = (*e).max(r.total_lag);
                    }
                    let all = stats.get(&Key::All);
                    let m = Measurements {
                        window_s,
                        predictions: all.map(|s| s.count).unwrap_or(0),
                        p99_ms: all.and_then(|s| s.p99_ms),
                        error_rate: all.map(|s| s.error_rate).unwrap_or(0.0),
                        lag: lag_by_group,
                        dlq_per_s: dlq,
                    };
                    let alerts = engine.evaluate(&slo, &m, now);
                    for a in &alerts {
                        match a.state {
                            aifab_core::messages::AlertState::Firing => { sh.firing.insert(a.rule.clone(), a.clone()); }
                            aifab_core::messages::AlertState::Resolved => { sh.firing.remove(&a.rule); }
                        }
                        metrics::gauge!("aifab_monitor_alert_firing", "rule" => a.rule.clone())
                            .set(if a.state == aifab_core::messages::AlertState::Firing { 1.0 } else { 0.0 });
                    }
                    sh.report = StatsReport { alerts_firing: sh.firing.values().cloned().collect(), ..report };
                    let report = sh.report.clone();
                    sh.dash.on_report(report, now);
                    alerts
                };
                export_window_metrics(&stats, dlq);
                for a in alerts {
                    tracing::warn!(rule = %a.rule, state = ?a.state, value = a.value, threshold = a.threshold, message = %a.message, "alert");
                    if let Err(e) = nats.publish(subjects::alert(&a.rule), encode(&a).into()).await {
                        tracing::warn!(error = %e, "publishing an alert failed");
                    }
                }
            }
        }
    }
    svc.finish().await
}

pub(crate) fn model_key(task: &str, version: &str) -> String {
    format!("{task}@{version}")
}

fn build_report(
    window_s: f64,
    stats: &BTreeMap<Key, WindowStats>,
    dlq: f64,
    lag: &BTreeMap<(String, String), LagReading>,
    firing: &BTreeMap<String, Alert>,
) -> StatsReport {
    let mut r = StatsReport {
        window_s,
        dead_letters_per_s: dlq,
        ..Default::default()
    };
    for (k, s) in stats {
        match k {
            Key::All => r.overall = Some(s.clone()),
            Key::Model(t, v) => {
                r.models.insert(model_key(t, v), s.clone());
            }
            Key::Tenant(t) => {
                r.tenants.insert(t.clone(), s.clone());
            }
        }
    }
    r.lag = lag.values().cloned().collect();
    r.alerts_firing = firing.values().cloned().collect();
    r
}

fn export_window_metrics(stats: &BTreeMap<Key, WindowStats>, dlq: f64) {
    for (k, s) in stats {
        let (scope, key) = match k {
            Key::All => ("all", "all".to_string()),
            Key::Model(t, v) => ("model", model_key(t, v)),
            Key::Tenant(t) => ("tenant", t.clone()),
        };
        for (q, v) in [("0.5", s.p50_ms), ("0.9", s.p90_ms), ("0.99", s.p99_ms)] {
            if let Some(v) = v {
                metrics::gauge!("aifab_monitor_window_latency_seconds", "scope" => scope, "key" => key.clone(), "quantile" => q)
                    .set(v / 1000.0);
            }
        }
        metrics::gauge!("aifab_monitor_window_predictions_per_second", "scope" => scope, "key" => key.clone()).set(s.per_second);
        metrics::gauge!("aifab_monitor_window_error_ratio", "scope" => scope, "key" => key)
            .set(s.error_rate);
    }
    metrics::gauge!("aifab_monitor_window_dead_letters_per_second").set(dlq);
}

async fn publish_lag(nats: &async_nats::Client, r: &LagReading) {
    let labels = [("group", r.group.clone()), ("topic", r.topic.clone())];
    metrics::gauge!("aifab_monitor_consumer_lag_records", &labels).set(r.total_lag as f64);
    metrics::gauge!(
        "aifab_monitor_consumer_lag_rate_records_per_second",
        &labels
    )
    .set(r.lag_rate_per_s);
    for p in &r.partitions {
        metrics::gauge!("aifab_monitor_consumer_lag_partition_records",
            "group" => r.group.clone(), "topic" => r.topic.clone(), "partition" => p.partition.to_string())
        .set(p.lag as f64);
    }
    if let Err(e) = nats
        .publish(subjects::lag(&r.group), encode(r).into())
        .await
    {
        tracing::warn!(error = %e, "publishing a lag reading failed");
    }
}

/// The watched (group, topic) pairs: the static list plus discovered groups.
struct Watch {
    config: Config,
    static_watch: BTreeSet<(String, String)>,
    discovered: BTreeSet<(String, String)>,
    /// Groups already probed for committed offsets (probing is one request per topic).
    probed: BTreeSet<String>,
    clients: BTreeMap<String, BaseConsumer>,
    /// Failed offset reads in a row per group's client.
    failures: BTreeMap<String, u32>,
}

/// Whether an offsets read reached the broker: a topic not created yet is an answer, and
/// must not count against the client (a group watching only that topic would have its
/// client replaced every few reads).
fn broker_answered<T>(read: &anyhow::Result<T>) -> bool {
    read.as_ref()
        .map_or_else(|e| e.is::<aifab_core::kafka::TopicMissing>(), |_| true)
}

/// Failed reads in a row after which a group's offsets client is replaced: after a broker
/// restart a librdkafka client can go on failing long after the broker is back (as the
/// services' readiness probe does, see `aifab_core::service`).
const READ_FAILURES_BEFORE_NEW_CLIENT: u32 = 3;

impl Watch {
    fn client(&mut self, group: &str) -> anyhow::Result<&BaseConsumer> {
        if !self.clients.contains_key(group) {
            let c: BaseConsumer = aifab_core::kafka::consumer_config(
                &self.config.brokers.kafka_brokers,
                "aifab-monitor-lag",
                group,
            )
            .create()
            .with_context(|| format!("offsets client for group {group}"))?;
            self.clients.insert(group.to_string(), c);
        }
        Ok(&self.clients[group])
    }

    /// Note a read's outcome for `group`; after too many failures in a row its client is
    /// dropped, so the next read makes a new one. On the poller's own thread: dropping a
    /// client waits for its threads.
    fn note_read(&mut self, group: &str, ok: bool) {
        if ok {
            self.failures.remove(group);
            return;
        }
        let n = self.failures.entry(group.to_string()).or_default();
        *n += 1;
        if *n >= READ_FAILURES_BEFORE_NEW_CLIENT {
            self.failures.remove(group);
            if self.clients.remove(group).is_some() {
                tracing::info!(%group, "offset reads keep failing; using a new client");
            }
        }
    }

    fn discover(&mut self, timeout: Duration) -> anyhow::Result<()> {
        let brokers = self.config.brokers.kafka_brokers.clone();
        let list = {
            let c: BaseConsumer =
                aifab_core::kafka::metadata_client(&brokers, "aifab-monitor-groups")?;
            c.fetch_group_list(None, timeout)?
                .groups()
                .iter()
                .filter(|g| g.name().starts_with(&self.config.group_prefix))
                .filter(|g| g.protocol_type().is_empty() || g.protocol_type() == "consumer")
                .map(|g| {
                    let topics: BTreeSet<String> = g
                        .members()
                        .iter()
                        .filter_map(|m| m.assignment())
                        .flat_map(lag::assignment_topics)
                        .collect();
                    (g.name().to_string(), topics)
                })
                .collect::<Vec<_>>()
        };
        let mut found = BTreeSet::new();
        for (group, mut topics) in list {
            topics.retain(|t| t.starts_with(&self.config.topic_prefix));
            for (g, t) in KNOWN {
                if *g == group {
                    topics.insert(t.to_string());
                }
            }
            if topics.is_empty() && !self.probed.contains(&group) {
                // No members and not a known service: look for committed offsets.
                self.probed.insert(group.clone());
                let prefix = self.config.topic_prefix.clone();
                for t in topics::TOPICS
                    .iter()
                    .filter(|t| t.name.starts_with(&prefix))
                {
                    let c = self.client(&group)?;
                    if let Ok(offs) = aifab_core::kafka::group_offsets(c, t.name, timeout) {
                        if offs.iter().any(|p| p.committed.is_some()) {
                            topics.insert(t.name.to_string());
                        }
                    }
                }
            }
            for t in topics {
                found.insert((group.clone(), t));
            }
        }
        // Keep earlier discoveries of groups that still exist but went quiet.
        self.discovered.extend(found);
        Ok(())
    }

    fn pairs(&self) -> BTreeSet<(String, String)> {
        self.static_watch.union(&self.discovered).cloned().collect()
    }
}

fn lag_poller(
    config: Config,
    static_watch: BTreeSet<(String, String)>,
    tx: tokio::sync::mpsc::Sender<LagReading>,
    token: CancellationToken,
) {
    let interval = Duration::from_millis(config.interval_ms.max(100));
    let timeout = Duration::from_secs(5);
    let discover_every = Duration::from_secs(config.discover_every_s.max(1));
    let mut watch = Watch {
        config: config.clone(),
        static_watch,
        discovered: BTreeSet::new(),
        probed: BTreeSet::new(),
        clients: BTreeMap::new(),
        failures: BTreeMap::new(),
    };
    let mut tracker = LagTracker::default();
    // Transactional consumers commit up to, not past, each transaction's commit marker:
    // the probe takes markers (and aborted records) out of the lag, so a group at rest
    // reads 0, not one per partition.
    let mut probe =
        aifab_core::kafka::LagProbe::new(&config.brokers.kafka_brokers, "aifab-monitor-lag");
    let mut last_discovery: Option<std::time::Instant> = None;
    let mut warned = false;
    while !token.is_cancelled() {
        let started = std::time::Instant::now();
        if config.discover && last_discovery.is_none_or(|t| t.elapsed() >= discover_every) {
            match watch.discover(timeout) {
                Ok(()) => last_discovery = Some(std::time::Instant::now()),
                Err(e) => tracing::debug!(error = %format!("{e:#}"), "group discovery failed"),
            }
        }
        let pairs = watch.pairs();
        tracker.retain(&pairs);
        probe.retain(&pairs);
        for (group, topic) in &pairs {
            if token.is_cancelled() {
                return;
            }
            let at = aifab_core::now_ms();
            let result = watch
                .client(group)
                .and_then(|c| aifab_core::kafka::group_offsets(c, topic, timeout));
            watch.note_read(group, broker_answered(&result));
            match result {
                Ok(mut offs) => {
                    warned = false;
                    probe.settle(group, topic, &mut offs);
                    let reading = tracker.observe(group, topic, &offs, at);
                    if tx.blocking_send(reading).is_err() {
                        return;
                    }
                }
                Err(e) => {
                    if !warned {
                        tracing::warn!(%group, %topic, error = %format!("{e:#}"), "reading offsets failed; retrying");
                        warned = true;
                    }
                }
            }
        }
        // Sleep out the interval in small steps so SIGTERM is quick.
        while started.elapsed() < interval && !token.is_cancelled() {
            std::thread::sleep(Duration::from_millis(50).min(interval));
        }
    }
}

async fn consume_predictions(
    config: Config,
    windows: Arc<Mutex<Windows>>,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let mut cc = aifab_core::kafka::consumer_config(
        &config.brokers.kafka_brokers,
        "aifab-monitor",
        &config.group,
    );
    // Statistics, not a pipeline stage: start at the end and let the client commit.
    cc.set("auto.offset.reset", "latest")
        .set("enable.auto.commit", "true")
        .set("enable.auto.offset.store", "true");
    let consumer: StreamConsumer = cc.create().context("creating the predictions consumer")?;
    consumer
        .subscribe(&[&config.predictions_topic, &config.dlq_topic])
        .context("subscribing to predictions")?;
    let mut stream = consumer.stream();
    loop {
        let msg = tokio::select! {
            _ = shutdown.cancelled() => return Ok(()),
            m = stream.next() => m,
        };
        let m = match msg.context("the predictions consumer's stream ended")? {
            Ok(m) => m,
            Err(e) => {
                tracing::debug!(error = %e, "predictions consumer error");
                continue;
            }
        };
        let now = aifab_core::now_ms();
        let payload = m.payload().unwrap_or_default();
        if m.topic() == config.dlq_topic {
            metrics::counter!("aifab_monitor_dead_letters_total").increment(1);
            if let Ok(dl) = decode::<DeadLetter>(payload) {
                metrics::counter!("aifab_monitor_dead_letters_by_stage_total", "stage" => dl.stage, "error_kind" => dl.error_kind)
                    .increment(1);
            }
            windows
                .lock()
                .expect("windows lock")
                .record_dead_letter(now);
            continue;
        }
        match decode::<Prediction>(payload) {
            Ok(p) => {
                let latency_ms = p.produced_at_ms.saturating_sub(p.received_at_ms).max(0) as f64;
                let error = p.outcome == Outcome::Expired;
                let outcome = match p.outcome {
                    Outcome::Ok => "ok",
                    Outcome::Expired => "expired",
                    Outcome::Cached => "cached",
                };
                metrics::counter!("aifab_monitor_predictions_total",
                    "task" => p.task.clone(), "model_version" => p.model_version.clone(),
                    "tenant" => p.tenant.clone(), "outcome" => outcome)
                .increment(1);
                metrics::histogram!("aifab_monitor_e2e_latency_seconds", "task" => p.task.clone())
                    .record(latency_ms / 1000.0);
                windows.lock().expect("windows lock").record(
                    now,
                    latency_ms,
                    error,
                    &p.task,
                    &p.model_version,
                    &p.tenant,
                );
            }
            Err(e) => {
                metrics::counter!("aifab_monitor_decode_errors_total", "topic" => m.topic().to_string()).increment(1);
                tracing::debug!(error = %e, "undecodable prediction");
            }
        }
    }
}

/// The dashboard's control-plane inputs: scale decisions, replica reports, budget reports.
async fn listen_control(
    nats: async_nats::Client,
    shared: SharedState,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let subscribe = |subject: &'static str| {
        let nats = nats.clone();
        async move {
            nats.subscribe(subject)
                .await
                .with_context(|| format!("subscribing to {subject}"))
        }
    };
    let mut scale = subscribe(subjects::SCALE_ALL).await?;
    let mut replicas = subscribe(subjects::REPLICAS_ALL).await?;
    let mut budget = subscribe(subjects::BUDGET_ALL).await?;
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return Ok(()),
            Some(m) = scale.next() => match decode::<ScaleDecision>(&m.payload) {
                Ok(d) => shared.lock().expect("stats lock").dash.on_decision(d),
                Err(e) => tracing::debug!(subject = %m.subject, error = %e, "undecodable scale decision"),
            },
            Some(m) = replicas.next() => match decode::<ReplicaReport>(&m.payload) {
                Ok(r) => shared.lock().expect("stats lock").dash.on_replicas(r),
                Err(e) => tracing::debug!(subject = %m.subject, error = %e, "undecodable replica report"),
            },
            Some(m) = budget.next() => {
                // `aifab.budget.set` shares the wildcard; only reports are budget events.
                if m.subject.as_str() == subjects::BUDGET_SET {
                    continue;
                }
                match decode::<BudgetEvent>(&m.payload) {
                    Ok(e) => shared.lock().expect("stats lock").dash.on_budget(e),
                    Err(e) => tracing::debug!(subject = %m.subject, error = %e, "undecodable budget report"),
                }
            }
            else => anyhow::bail!("the NATS subscriptions to scale, replica and budget events ended"),
        }
    }
}

/// `<base>/v1/costs`.
fn costs_endpoint(base: &str) -> String {
    format!("{}/v1/costs", base.trim().trim_end_matches('/'))
}

async fn fetch_costs(
    http: &reqwest::Client,
    url: &str,
) -> Result<dashboard::CostsSnapshot, String> {
    let resp = http
        .get(url)
        .send()
        .await
        .map_err(|e| format!("GET {url}: {e}"))?;
    let status = resp.status();
    if !status.is_success() {
        let body = resp.text().await.unwrap_or_default();
        return Err(format!(
            "GET {url}: {status}: {}",
            body.chars().take(200).collect::<String>()
        ));
    }
    resp.json::<dashboard::CostsSnapshot>()
        .await
        .map_err(|e| format!("GET {url}: not a cost report: {e}"))
}

async fn fetch_registry(
    conn: redis::aio::ConnectionManager,
) -> Result<Vec<dashboard::TaskModels>, String> {
    use aifab_core::registry::{Registry, CANDIDATE, PRODUCTION};
    let mut reg = Registry::new(conn);
    let mut out = Vec::new();
    for task in reg
        .tasks()
        .await
        .map_err(|e| format!("registry tasks: {e}"))?
    {
        let records = reg
            .list(&task)
            .await
            .map_err(|e| format!("registry {task}: {e}"))?;
        let mut aliases = BTreeMap::new();
        for alias in [PRODUCTION, CANDIDATE] {
            if let Some(v) = reg
                .alias(&task, alias)
                .await
                .map_err(|e| format!("registry {task} {alias}: {e}"))?
            {
                aliases.insert(alias.to_string(), v);
            }
        }
        let rollout = reg
            .rollout(&task)
            .await
            .map_err(|e| format!("registry {task} rollout: {e}"))?;
        out.push(dashboard::TaskModels {
            task,
            records,
            aliases,
            rollout,
        });
    }
    Ok(out)
}

/// Model metrics and aliases on `/metrics`, for Grafana: the versions the dashboard shows.
/// Alias series that moved away are set to 0 (the exporter cannot delete a series).
fn export_model_metrics(
    tasks: &[dashboard::TaskModels],
    limits: dashboard::Limits,
    exported: &mut BTreeSet<(String, String, String)>,
) {
    let mut now_set = BTreeSet::new();
    for tm in tasks {
        let aliased: BTreeSet<&String> = tm.aliases.values().collect();
        let n = tm.records.len();
        for (i, r) in tm.records.iter().enumerate() {
            if i + limits.versions_per_task < n && !aliased.contains(&r.version) {
                continue;
            }
            for (name, v) in &r.metrics {
                metrics::gauge!("aifab_monitor_model_metric_ratio",
                    "task" => r.task.clone(), "version" => r.version.clone(), "metric" => name.clone())
                .set(*v);
            }
        }
        for (alias, version) in &tm.aliases {
            now_set.insert((tm.task.clone(), alias.clone(), version.clone()));
        }
    }
    for (task, alias, version) in exported.difference(&now_set) {
        metrics::gauge!("aifab_monitor_model_alias_info", "task" => task.clone(), "alias" => alias.clone(), "version" => version.clone()).set(0.0);
    }
    for (task, alias, version) in &now_set {
        metrics::gauge!("aifab_monitor_model_alias_info", "task" => task.clone(), "alias" => alias.clone(), "version" => version.clone()).set(1.0);
    }
    *exported = now_set;
}

/// Every `--dashboard-refresh-ms`: the cost report and the model registry.
async fn refresh_sources(
    config: Config,
    redis: aifab_core::redis_store::RedisHandle,
    shared: SharedState,
    shutdown: CancellationToken,
) {
    let costs_url =
        (!config.costs_url.trim().is_empty()).then(|| costs_endpoint(&config.costs_url));
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(3))
        .build()
        .expect("an HTTP client with a timeout builds");
    let limits = config.dashboard_limits();
    let mut exported = BTreeSet::new();
    let mut tick =
        tokio::time::interval(Duration::from_millis(config.dashboard_refresh_ms.max(100)));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        if let Some(url) = &costs_url {
            let result = fetch_costs(&http, url).await;
            if let Err(e) = &result {
                tracing::debug!(error = %e, "cost report fetch failed");
            }
            shared
                .lock()
                .expect("stats lock")
                .dash
                .costs
                .update(result, aifab_core::now_ms());
        }
        let result = match redis.try_get() {
            None => Err("redis is not connected yet".to_string()),
            Some(conn) => fetch_registry(conn).await,
        };
        match &result {
            Ok(tasks) => export_model_metrics(tasks, limits, &mut exported),
            Err(e) => tracing::debug!(error = %e, "registry read failed"),
        }
        shared
            .lock()
            .expect("stats lock")
            .dash
            .registry
            .update(result, aifab_core::now_ms());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser as _;

    #[test]
    fn a_group_client_failing_three_reads_in_a_row_is_replaced() {
        let config = Config::parse_from(["aifab-monitor"]);
        let mut watch = Watch {
            config,
            static_watch: BTreeSet::new(),
            discovered: BTreeSet::new(),
            probed: BTreeSet::new(),
            clients: BTreeMap::new(),
            failures: BTreeMap::new(),
        };
        watch.client("g").unwrap(); // no connection is made until a request
        watch.note_read("g", false);
        watch.note_read("g", false);
        watch.note_read("g", true);
        watch.note_read("g", false);
        watch.note_read("g", false);
        assert!(
            watch.clients.contains_key("g"),
            "a success in between starts the count again"
        );
        watch.note_read("g", false);
        assert!(
            !watch.clients.contains_key("g"),
            "the third failure in a row drops the client"
        );
        let missing: anyhow::Result<()> = Err(aifab_core::kafka::TopicMissing("t".into()).into());
        assert!(
            broker_answered(&missing),
            "a topic that does not exist yet is the broker's answer"
        );
        assert!(!broker_answered::<()>(&Err(anyhow::anyhow!(
            "metadata timed out"
        ))));
        watch.client("g").unwrap();
        watch.note_read("g", false);
        assert!(
            watch.clients.contains_key("g"),
            "the new client starts with no failures"
        );
    }
}
