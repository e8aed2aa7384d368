//! Inference through Kafka at saturation, next to the bare model, in one run.
//!
//! 1. The bare model: the same texts, tokenized, length-sorted batches of `--batch`.
//! 2. The pipeline: all requests pre-loaded into a fresh topic, a release worker started
//!    with dynamic batching (max batch `--batch`), time from its readiness to the last
//!    committed prediction.
//! 3. The same pipeline with max batch size 1: the batching gain.
//!
//! Ends with `key value` lines: model_bN, pipeline_bN, pipeline_b1, pipeline_vs_model,
//! batching_gain (sequences per second and ratios).

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use aifab_core::messages::{decode, encode, tag, InferenceRequest, Prediction, Truncation};
use aifab_core::tail::{Start, Tail};
use aifab_model::{Encoder, TextTokenizer};
use anyhow::Context;
use clap::Parser;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::producer::{FutureProducer, FutureRecord};

#[derive(Parser)]
#[command(about = "Saturated throughput through Kafka vs the bare model, and the batching gain.")]
struct Args {
    /// JSONL with a `text` field per line.
    #[arg(long, default_value = aifab_tests::SMS_TEST_SPLIT)]
    data: PathBuf,
    /// Requests pushed through the pipeline (texts are repeated to reach it).
    #[arg(long, default_value_t = 2000)]
    requests: usize,
    /// Max batch size for the model and the batching worker.
    #[arg(long, default_value_t = 32)]
    batch: usize,
    /// Requests for the batch-size-1 run (it is slow; fewer keep the run short).
    #[arg(long, default_value_t = 600)]
    requests_b1: usize,
    #[arg(long, default_value_t = 128)]
    max_len: usize,
    /// Model directory (default: AIFAB_MODEL_DIR or the fetch-model cache).
    #[arg(long, env = "AIFAB_MODEL_DIR")]
    model_dir: Option<PathBuf>,
    #[arg(long, env = "AIFAB_KAFKA_BROKERS", default_value = aifab_core::config::DEFAULT_KAFKA_BROKERS)]
    brokers: String,
}

fn main() -> anyhow::Result<()> {
    let mut args = Args::parse();
    args.data = aifab_tests::sms_test_split_or(args.data);
    let model_dir = args.model_dir.clone().unwrap_or_else(|| {
        PathBuf::from(std::env::var("HOME").unwrap_or_default())
            .join(".cache/aifab/models/all-minilm-l6-v2")
    });
    let texts = read_texts(&args.data)?;
    let tok = TextTokenizer::from_file(model_dir.join("tokenizer.json"), args.max_len)?;
    let ids: Vec<Vec<u32>> = texts
        .iter()
        .map(|t| tok.encode(t).map(|e| e.ids))
        .collect::<Result<_, _>>()?;
    eprintln!("{} texts from {}", ids.len(), args.data.display());

    let model = bare_model(&model_dir, &ids, args.batch)?;
    eprintln!("bare model b{}: {model:.1} seq/s", args.batch);

    let head = tempfile::tempdir()?;
    let encoder = Encoder::load(&model_dir, &aifab_model::Device::Cpu)?;
    aifab_model::testing::write_random_head(
        head.path(),
        encoder.hidden_size(),
        &["ham", "spam"],
        1,
    )?;
    drop(encoder);

    let rt = tokio::runtime::Runtime::new()?;
    let batched = rt.block_on(pipeline(
        &args,
        &model_dir,
        head.path(),
        &texts,
        &ids,
        args.requests,
        args.batch,
    ))?;
    eprintln!("pipeline b{}: {batched:.1} seq/s", args.batch);
    let single = rt.block_on(pipeline(
        &args,
        &model_dir,
        head.path(),
        &texts,
        &ids,
        args.requests_b1,
        1,
    ))?;
    eprintln!("pipeline b1: {single:.1} seq/s");

    println!("model_b{} {model:.1}", args.batch);
    println!("pipeline_b{} {batched:.1}", args.batch);
    println!("pipeline_b1 {single:.1}");
    println!("pipeline_vs_model {:.3}", batched / model);
    println!("batching_gain {:.2}", batched / single);
    Ok(())
}

fn read_texts(path: &Path) -> anyhow::Result<Vec<String>> {
    let body =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    body.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l)?;
            Ok(v["text"]
                .as_str()
                .context("line without a text field")?
                .to_string())
        })
        .collect()
}

/// Sequences per second of the encoder alone on length-sorted batches: the best of three
/// passes (the broker shares the cores and its background work makes single passes noisy;
/// the best pass is the model's own speed).
fn bare_model(dir: &Path, ids: &[Vec<u32>], batch: usize) -> anyhow::Result<f64> {
    let encoder = Encoder::load(dir, &aifab_model::Device::Cpu)?;
    let mut sorted: Vec<&[u32]> = ids.iter().map(|v| v.as_slice()).collect();
    sorted.sort_by_key(|s| s.len());
    encoder.embed(&sorted[..batch.min(sorted.len())])?; // warm-up
    let mut best = 0f64;
    for _ in 0..3 {
        let t = Instant::now();
        for chunk in sorted.chunks(batch) {
            encoder.embed(chunk)?;
        }
        best = best.max(sorted.len() as f64 / t.elapsed().as_secs_f64());
    }
    Ok(best)
}

fn bin(name: &str) -> anyhow::Result<PathBuf> {
    let exe = std::env::current_exe()?;
    let path = exe.parent().context("exe dir")?.join(name);
    anyhow::ensure!(
        path.exists(),
        "{} missing: cargo build --release -p aifab-inference-worker \
         (or run load-tests/bench-pipeline)",
        path.display()
    );
    Ok(path)
}

async fn pipeline(
    args: &Args,
    model_dir: &Path,
    head: &Path,
    texts: &[String],
    ids: &[Vec<u32>],
    n: usize,
    max_batch: usize,
) -> anyhow::Result<f64> {
    let run = uuid_like();
    let topic = format!("bench.requests.{run}");
    let admin: AdminClient<DefaultClientContext> =
        aifab_core::kafka::base_config(&args.brokers, "bench").create()?;
    let opts = AdminOptions::new().operation_timeout(Some(Duration::from_secs(30)));
    for r in admin
        .create_topics(
            &[NewTopic::new(&topic, 8, TopicReplication::Fixed(1))],
            &opts,
        )
        .await?
    {
        r.map_err(|(t, e)| anyhow::anyhow!("creating {t}: {e}"))?;
    }
    // Pre-load every request.
    let producer: FutureProducer =
        aifab_core::kafka::producer_config(&args.brokers, "bench").create()?;
    let prefix = format!("bench-{run}");
    let sends = (0..n).map(|i| {
        let k = i % ids.len();
        let req = InferenceRequest {
            schema: tag(),
            id: format!("{prefix}-{i}"),
            tenant: "bench".into(),
            task: "bench".into(),
            text: texts[k].clone(),
            input_ids: ids[k].clone(),
            token_count: ids[k].len() as u32,
            truncation: Truncation::None,
            received_at_ms: aifab_core::now_ms(),
            deadline_ms: None,
            priority: 0,
            attributes: Default::default(),
        };
        let (producer, topic) = (producer.clone(), topic.clone());
        async move {
            producer
                .send(
                    FutureRecord::to(&topic).key(&req.id).payload(&encode(&req)),
                    Duration::from_secs(30),
                )
                .await
                .map_err(|(e, _)| e)
        }
    });
    for r in futures::future::join_all(sends).await {
        r?;
    }

    // Read predictions from the current end so only this run's count.
    let mut reader = Tail::open(
        &args.brokers,
        "bench",
        aifab_core::topics::PREDICTIONS.name,
        Start::Latest,
    )?;

    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let mut worker = tokio::process::Command::new(bin("aifab-inference-worker")?)
        .env("AIFAB_HTTP_ADDR", format!("127.0.0.1:{port}"))
        .env("AIFAB_KAFKA_BROKERS", &args.brokers)
        .env("AIFAB_MODEL_DIR", model_dir)
        .env("AIFAB_HEAD_DIR", head)
        .env("AIFAB_TASK", "bench")
        .env("AIFAB_INPUT_TOPIC", &topic)
        .env("AIFAB_WORKER_GROUP", format!("bench-{run}"))
        .env("AIFAB_INSTANCE_ID", format!("bench-{run}"))
        .env("AIFAB_MAX_BATCH_SIZE", max_batch.to_string())
        .env(
            "AIFAB_MAX_BATCH_TOKENS",
            (max_batch * args.max_len).to_string(),
        )
        .env("AIFAB_LOG", "warn")
        .stdout(Stdio::null())
        .kill_on_drop(true)
        .spawn()?;

    let mut seen = HashSet::new();
    let mut batches = std::collections::HashMap::new();
    let mut first: Option<i64> = None;
    let mut last = 0i64;
    let deadline = Instant::now() + Duration::from_secs(1800);
    while seen.len() < n {
        anyhow::ensure!(
            Instant::now() < deadline,
            "only {} of {n} predictions in time",
            seen.len()
        );
        for m in reader.read(Duration::from_millis(100))? {
            let p: Prediction = decode(m.value())?;
            if p.id.starts_with(&prefix) && seen.insert(p.id.clone()) {
                // The worker's own clock: from the start of its first batch's compute
                // (it had waited for its model and partitions before) to its last output.
                let start = p.produced_at_ms - p.compute_ms as i64;
                first = Some(first.map_or(start, |f| f.min(start)));
                last = last.max(p.produced_at_ms);
                if let Some(b) = p.batch_id {
                    batches.insert(b, (p.batch_size, p.compute_ms));
                }
            }
        }
    }
    let _ = worker.kill().await;
    let _ = admin.delete_topics(&[&topic], &AdminOptions::new()).await;
    let secs = (last - first.unwrap_or(last)).max(1) as f64 / 1000.0;
    let rows: u32 = batches.values().map(|(rows, _)| rows).sum();
    let compute_s: f64 = batches.values().map(|(_, ms)| ms).sum::<f64>() / 1000.0;
    eprintln!(
        "  b{max_batch}: {} batches, mean size {:.1}, compute {:.1} seq/s, compute share of wall {:.2}",
        batches.len(),
        rows as f64 / batches.len().max(1) as f64,
        rows as f64 / compute_s.max(1e-9),
        compute_s / secs
    );
    Ok(n as f64 / secs)
}

fn uuid_like() -> String {
    format!(
        "{:x}",
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos()
    )
}
