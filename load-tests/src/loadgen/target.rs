//! What the load goes to: workers this run starts on a fresh input topic (tiny or a real
//! model), or an already running worker's topic; and stopping what was started.

use std::path::{Path, PathBuf};
use std::time::Duration;

use aifab_tests::WorkerRun;
use anyhow::Context;
use rdkafka::consumer::Consumer;
use rdkafka::producer::FutureProducer;

use super::args::{Args, WorkerKind};

pub(crate) struct Target {
    pub(crate) topic: String,
    pub(crate) task: String,
    pub(crate) predictions_topic: String,
    /// The workers when this run started them.
    pub(crate) workers: Option<Workers>,
    pub(crate) producer: FutureProducer,
    pub(crate) run_id: String,
}

/// Workers this run started, and their processes.
pub(crate) struct Workers {
    pub(crate) run: WorkerRun,
    pub(crate) children: Vec<tokio::process::Child>,
}

impl Target {
    /// Stop the workers this run started and delete their input topic.
    pub(crate) async fn stop(&mut self) {
        if let Some(w) = self.workers.as_mut() {
            for c in w.children.iter_mut() {
                aifab_tests::sigterm(c);
            }
            for c in w.children.iter_mut() {
                let _ = c.wait().await;
            }
            aifab_tests::delete_topic(&w.run.topic).await;
        }
    }
}

pub(crate) async fn start_target(
    args: &Args,
    run_id: &str,
    keep: &mut Option<tempfile::TempDir>,
) -> anyhow::Result<Target> {
    let brokers = aifab_tests::kafka_brokers();
    let producer: FutureProducer =
        aifab_core::kafka::producer_config(&brokers, "aifab-loadgen").create()?;
    let predictions_topic = args.predictions_topic.clone();
    if args.worker == WorkerKind::None {
        let topic = args
            .topic
            .clone()
            .context("--worker none needs --topic (the running worker's input topic)")?;
        let (b, t) = (brokers.clone(), topic.clone());
        let partitions = tokio::task::spawn_blocking(move || -> anyhow::Result<usize> {
            let c = aifab_core::kafka::metadata_client(&b, "aifab-loadgen")?;
            let md = c.fetch_metadata(Some(&t), Duration::from_secs(10))?;
            Ok(md
                .topics()
                .first()
                .filter(|m| m.error().is_none())
                .map_or(0, |m| m.partitions().len()))
        })
        .await??;
        anyhow::ensure!(
            partitions > 0,
            "topic {topic} does not exist on {brokers} (expected the running worker's input topic)"
        );
        return Ok(Target {
            topic,
            task: args.task.clone(),
            predictions_topic,
            workers: None,
            producer,
            run_id: run_id.into(),
        });
    }
    anyhow::ensure!(
        args.topic.is_none(),
        "started workers get a fresh input topic: drop --topic, or pass --worker none"
    );
    let run = match args.worker {
        WorkerKind::Tiny => WorkerRun::new(args.partitions).await,
        _ => {
            let model_dir = args.model_dir.clone().unwrap_or_else(|| {
                PathBuf::from(std::env::var("HOME").unwrap_or_default())
                    .join(".cache/aifab/models/all-minilm-l6-v2")
            });
            let head = match &args.head_dir {
                Some(h) => h.clone(),
                None => {
                    let dir = tempfile::tempdir()?;
                    let hidden = hidden_size(&model_dir)?;
                    aifab_model::testing::write_random_head(
                        dir.path(),
                        hidden,
                        &["ham", "spam"],
                        1,
                    )?;
                    let p = dir.path().to_path_buf();
                    *keep = Some(dir);
                    p
                }
            };
            WorkerRun::with_model(args.partitions, &model_dir, &head, "load").await
        }
    };
    let mut children = Vec::new();
    for k in 0..args.workers.max(1) {
        let (child, addr) = run.start(
            &format!("loadgen-{run_id}-{k}"),
            args.worker_batch,
            &[("AIFAB_LOG", "error".into())],
        );
        aifab_tests::wait_ready(&addr, "inference worker").await;
        children.push(child);
    }
    eprintln!(
        "{} worker(s) ({:?}) ready on {} ({} partitions)",
        children.len(),
        args.worker,
        run.topic,
        args.partitions
    );
    Ok(Target {
        topic: run.topic.clone(),
        task: run.task.clone(),
        predictions_topic,
        workers: Some(Workers { run, children }),
        producer,
        run_id: run_id.into(),
    })
}

pub(crate) fn hidden_size(model_dir: &Path) -> anyhow::Result<usize> {
    let p = model_dir.join("config.json");
    let v: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(&p)
            .with_context(|| format!("reading {} (scripts/fetch-model)", p.display()))?,
    )?;
    v["hidden_size"]
        .as_u64()
        .map(|h| h as usize)
        .with_context(|| format!("{} has no hidden_size", p.display()))
}
