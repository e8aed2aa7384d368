//! Phase 2, the pipeline: release `aifab-ingest` and `aifab-feature` started on the raw
//! topic (fresh output topics, groups and Redis prefix; the real tokenizer). Its
//! throughput is the messages divided by the time from the first accepted record (its
//! broker timestamp) to the last inference request, so process start-up and group joins
//! are not counted; every message must come out exactly once, none dead-lettered.

use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::Context;

use super::cpu::{cpu_seconds, StackPids};
use super::kafka::{scan, GroupWatch};
use super::topics::Topics;

/// Where the services come from and what they run against.
pub(crate) struct PipelineSetup<'a> {
    pub(crate) brokers: &'a str,
    /// Directory of the aifab-ingest / aifab-feature binaries.
    pub(crate) bin_dir: &'a Path,
    /// Holds tokenizer.json.
    pub(crate) model_dir: &'a Path,
    /// The run's name: its groups and Redis prefix.
    pub(crate) run: &'a str,
    pub(crate) topics: &'a Topics,
    pub(crate) timeout: Duration,
}

pub(crate) struct PipelineFigures {
    pub(crate) ingest_msgs_per_s: f64,
    pub(crate) feature_msgs_per_s: f64,
    pub(crate) ingest_feature_msgs_per_s: f64,
    pub(crate) ingest_cpu_us_per_msg: f64,
    pub(crate) feature_cpu_us_per_msg: f64,
    pub(crate) broker_cpu_us_per_msg: f64,
    pub(crate) redis_cpu_us_per_msg: f64,
}

/// Seconds between two broker timestamps (ms), at least a millisecond.
pub(crate) fn span_s(first_ms: i64, last_ms: i64) -> f64 {
    ((last_ms - first_ms).max(1)) as f64 / 1000.0
}

/// The services' environment: the run's topics, groups, Redis prefix and API keys.
fn service_env(s: &PipelineSetup, keys_file: &Path) -> Vec<(&'static str, String)> {
    let (run, t) = (s.run, s.topics);
    vec![
        ("AIFAB_KAFKA_BROKERS", s.brokers.to_string()),
        ("AIFAB_RAW_TOPIC", t.raw.clone()),
        ("AIFAB_FEATURES_TOPIC", t.features.clone()),
        ("AIFAB_INFERENCE_TOPIC", t.inference.clone()),
        ("AIFAB_TRAINING_TOPIC", t.training.clone()),
        ("AIFAB_PREDICTIONS_TOPIC", t.predictions.clone()),
        ("AIFAB_DLQ_TOPIC", t.dlq.clone()),
        ("AIFAB_REDIS_PREFIX", run.to_string()),
        ("AIFAB_INGEST_GROUP", format!("{run}.ingest")),
        (
            "AIFAB_INGEST_PREDICTIONS_GROUP",
            format!("{run}.ingest-predictions"),
        ),
        ("AIFAB_FEATURE_GROUP", format!("{run}.feature")),
        ("AIFAB_FEATURE_CACHE_GROUP", format!("{run}.feature-cache")),
        ("AIFAB_API_KEYS_FILE", keys_file.display().to_string()),
        ("AIFAB_MODEL_DIR", s.model_dir.display().to_string()),
        // Short: keep the bench's claimed ids from lingering in Redis.
        ("AIFAB_ID_TTL_S", "600".into()),
        ("AIFAB_DEDUPE_TTL_S", "600".into()),
        (
            "AIFAB_LOG",
            std::env::var("AIFAB_LOG").unwrap_or_else(|_| "warn".into()),
        ),
    ]
}

/// Run ingest and feature over the `n` messages already in the raw topic.
pub(crate) async fn ingest_and_feature(
    s: &PipelineSetup<'_>,
    n: usize,
    pids: StackPids,
) -> anyhow::Result<PipelineFigures> {
    let dir = tempfile::tempdir()?;
    let keys = dir.path().join("keys.json");
    std::fs::write(
        &keys,
        r#"{"keys":[{"key":"bench-key","tenant":"bench"}],"tenants":{"bench":{"rate_per_s":0}}}"#,
    )?;
    let env = service_env(s, &keys);
    let (broker_before, redis_before) = (cpu_seconds(pids.broker), cpu_seconds(pids.redis));
    let mut children = Vec::new();
    for service in ["ingest", "feature"] {
        let port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        let mut cmd = tokio::process::Command::new(s.bin_dir.join(format!("aifab-{service}")));
        cmd.env("AIFAB_HTTP_ADDR", format!("127.0.0.1:{port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .kill_on_drop(true);
        for (k, v) in &env {
            cmd.env(k, v);
        }
        children.push(
            cmd.spawn().with_context(|| {
                format!("starting aifab-{service} from {}", s.bin_dir.display())
            })?,
        );
    }
    let started = Instant::now();
    let deadline = started + s.timeout;
    let run = s.run;
    // Done when ingest has committed the whole raw topic and feature the whole features topic.
    let ingest_watch = GroupWatch::new(s.brokers, &format!("{run}.ingest"), &s.topics.raw)?;
    let feature_watch = GroupWatch::new(s.brokers, &format!("{run}.feature"), &s.topics.features)?;
    let mut last_report = Instant::now();
    // CPU each service had used before its first commit (start-up, tokenizer load): not counted.
    let (mut ingest_base, mut feature_base) = (0.0, 0.0);
    loop {
        anyhow::ensure!(
            Instant::now() < deadline,
            "the pipeline did not finish within {}s",
            s.timeout.as_secs()
        );
        for c in children.iter_mut() {
            if let Some(status) = c.try_wait()? {
                anyhow::bail!("a service exited early: {status}");
            }
        }
        let (ip, fp) =
            tokio::task::block_in_place(|| (ingest_watch.progress(), feature_watch.progress()));
        if ip.committed == 0 {
            ingest_base = cpu_seconds(children[0].id());
        }
        if fp.committed == 0 {
            feature_base = cpu_seconds(children[1].id());
        }
        if ip.done && fp.done {
            break;
        }
        if last_report.elapsed() > Duration::from_secs(5) {
            last_report = Instant::now();
            eprintln!(
                "{:>5.1}s ingest committed {}/{} of the raw topic, \
                 feature {}/{} of the features topic",
                started.elapsed().as_secs_f64(),
                ip.committed,
                ip.high_watermark,
                fp.committed,
                fp.high_watermark
            );
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    eprintln!(
        "pipeline drained {:.1}s after start",
        started.elapsed().as_secs_f64()
    );
    let per_msg = |cpu_s: f64| cpu_s * 1e6 / n as f64;
    // At most one poll interval (250 ms) of work is in the base; small against the run.
    let ingest_us = per_msg(cpu_seconds(children[0].id()) - ingest_base);
    let feature_us = per_msg(cpu_seconds(children[1].id()) - feature_base);
    // From the services' start: the broker does next to nothing while they load.
    let broker_us = per_msg(cpu_seconds(pids.broker) - broker_before);
    let redis_us = per_msg(cpu_seconds(pids.redis) - redis_before);
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

    let b = s.brokers.to_string();
    let t = s.topics;
    let (f_t, i_t, d_t) = (t.features.clone(), t.inference.clone(), t.dlq.clone());
    let (features, inference, dead) = tokio::task::spawn_blocking(move || {
        anyhow::Ok((
            scan(&b, &f_t, n, Duration::from_secs(120))?,
            scan(&b, &i_t, n, Duration::from_secs(120))?,
            scan(&b, &d_t, 0, Duration::from_secs(5))?,
        ))
    })
    .await??;
    let (nf, ni, nd) = (features.records, inference.records, dead.records);
    anyhow::ensure!(nd == 0, "{nd} messages were dead-lettered");
    anyhow::ensure!(nf == n, "features topic has {nf} records, expected {n}");
    anyhow::ensure!(
        ni == n && inference.keys.len() == n,
        "inference topic has {ni} records ({} distinct), expected {n}",
        inference.keys.len()
    );
    Ok(PipelineFigures {
        ingest_msgs_per_s: n as f64 / span_s(features.first_ms, features.last_ms),
        feature_msgs_per_s: n as f64 / span_s(inference.first_ms, inference.last_ms),
        ingest_feature_msgs_per_s: n as f64 / span_s(features.first_ms, inference.last_ms),
        ingest_cpu_us_per_msg: ingest_us,
        feature_cpu_us_per_msg: feature_us,
        broker_cpu_us_per_msg: broker_us,
        redis_cpu_us_per_msg: redis_us,
    })
}
