//! `aifab demo`: the whole production loop on the local stack, end to end.
//!
//! 1. Bring the local stack and every service up (`aifab up --detach`), unless they run.
//! 2. Train: labelled examples go in through `aifab.ingest.raw` like any producer's,
//!    flow through ingest and feature to the trainer, which trains, evaluates and
//!    promotes a model that the worker then serves. A task that already has a
//!    production model is reused (`--retrain` trains again).
//! 3. Serve: the test texts go in the same way as unlabelled requests; their predictions
//!    are read back from `aifab.predictions` and scored against the labels.
//! 4. Report accuracy, throughput, end-to-end latency, cost per 1,000 predictions, and
//!    where to look next.
//!
//! The scoring is [`summarize`] (in `score`), a pure function; everything else is I/O.

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use indicatif::ProgressBar;

use crate::progress::bar;
use aifab_core::config::BrokerArgs;
use aifab_core::messages::{decode, Arm, Prediction};
use aifab_core::registry::Registry;
use aifab_core::tail::{Start, Tail};
use aifab_core::topics::{INGEST_RAW, PREDICTIONS};
use aifab_trainer::dataset::{parse_jsonl, read_jsonl, Example};
use anyhow::Context;
use rdkafka::producer::{FutureProducer, FutureRecord};
use serde_json::{json, Value};

use crate::local::{self, LocalService, SERVICES};

mod score;
pub use score::{request_index, summarize, Answer, Summary};

const BUILTIN_TRAIN: &str = include_str!("../../data/sms_spam/train.jsonl");
const BUILTIN_TEST: &str = include_str!("../../data/sms_spam/test.jsonl");

#[derive(Debug, clap::Args)]
pub struct DemoArgs {
    /// JSONL of {"text","label"} to train on (default: the built-in SMS Spam Collection
    /// train split, 4,454 messages).
    #[arg(long)]
    pub train: Option<PathBuf>,
    /// JSONL of {"text","label"} to send as requests and score (default: the built-in
    /// SMS Spam Collection test split, 1,120 messages).
    #[arg(long)]
    pub test: Option<PathBuf>,
    /// Use only the first N training examples.
    #[arg(long)]
    pub train_limit: Option<usize>,
    /// Use only the first N test examples.
    #[arg(long)]
    pub test_limit: Option<usize>,
    /// The task to train and serve. The local inference worker serves `AIFAB_TASK`
    /// (`default` unless set), so keep the two the same.
    #[arg(long, env = "AIFAB_TASK", default_value = "default")]
    pub task: String,
    /// The tenant the requests belong to (and are charged to).
    #[arg(long, default_value = "demo")]
    pub tenant: String,
    /// Train again even when the task already has a production model.
    #[arg(long)]
    pub retrain: bool,
    /// Do not start anything: the stack and the services are already running.
    #[arg(long)]
    pub no_up: bool,
    /// Give up on outstanding predictions after this many seconds without a new one.
    #[arg(long, default_value_t = 120)]
    pub idle_timeout_s: u64,
    #[command(flatten)]
    pub brokers: BrokerArgs,
}

fn service(name: &str) -> LocalService {
    *SERVICES
        .iter()
        .find(|s| s.name == name)
        .expect("a local service")
}

fn load(
    path: &Option<PathBuf>,
    builtin: &str,
    what: &str,
    limit: Option<usize>,
) -> anyhow::Result<Vec<Example>> {
    let mut examples = match path {
        Some(p) => read_jsonl(p)?,
        None => parse_jsonl(builtin, what)?,
    };
    if let Some(n) = limit {
        examples.truncate(n.max(1));
    }
    Ok(examples)
}

pub async fn run(args: DemoArgs) -> anyhow::Result<()> {
    let train = load(
        &args.train,
        BUILTIN_TRAIN,
        "built-in sms_spam/train.jsonl",
        args.train_limit,
    )?;
    let test = load(
        &args.test,
        BUILTIN_TEST,
        "built-in sms_spam/test.jsonl",
        args.test_limit,
    )?;
    let source = |p: &Option<PathBuf>| {
        p.as_ref()
            .map_or("the SMS Spam Collection (built in)".to_string(), |p| {
                p.display().to_string()
            })
    };
    println!(
        "aifab demo: train on {} examples of {}, then serve {} requests of {}",
        train.len(),
        source(&args.train),
        test.len(),
        source(&args.test)
    );

    if !args.no_up {
        bring_up().await?;
    }
    // The demo trains and reads costs: an operator's (admin) token when one is set.
    let http =
        aifab_core::access::http_client(aifab_core::access::Role::Admin, Duration::from_secs(10))?;
    let redis = aifab_core::redis_store::client(&args.brokers.redis_url)?;
    let mut conn = redis::aio::ConnectionManager::new(redis)
        .await
        .context("connecting to Redis")?;
    // Ingest accepts records only from known tenants: make the demo's tenant known.
    let _: () = redis::cmd("HSET")
        .arg(format!("aifab:ingest:tenant:{}", args.tenant))
        .arg("enabled")
        .arg("1")
        .arg("note")
        .arg("created by aifab demo")
        .query_async(&mut conn)
        .await?;
    let producer: FutureProducer =
        aifab_core::kafka::producer_config(&args.brokers.kafka_brokers, "aifab-demo").create()?;
    let run_id = format!("demo-{}", uuid::Uuid::now_v7().simple());

    let mut registry = Registry::new(conn.clone());
    let production = registry.resolve(&args.task, "production").await?;
    match production {
        Some(m) if !args.retrain => println!(
            "\nreusing model {}/{} (production; accuracy {:.4}, macro-F1 {:.4} \
             on {} held-out examples); --retrain trains a new one",
            m.task,
            m.version,
            m.metrics.get("accuracy").copied().unwrap_or(f64::NAN),
            m.metrics.get("macro_f1").copied().unwrap_or(f64::NAN),
            m.eval_examples
        ),
        _ => train_model(&args, &http, &producer, &run_id, &train).await?,
    }
    let model = registry
        .resolve(&args.task, "production")
        .await?
        .with_context(|| {
            format!(
                "task {:?} has no production model: the new one did not pass the promotion \
                 gate (`aifab models list`; the trainer's log is in {})",
                args.task,
                local::log_dir().display()
            )
        })?;

    let worker = service("inference-worker");
    crate::status::wait_ready(&worker.addr(), Duration::from_secs(120))
        .await
        .with_context(|| {
            format!(
                "the inference worker did not become ready (log: {})",
                local::log_dir().display()
            )
        })?;

    println!(
        "\nserving {} requests through Kafka (ingest → feature → inference worker → predictions)",
        test.len()
    );
    let summary = serve(&args, &producer, &run_id, &test).await?;
    let cost = cost_per_1k(&http, &args.tenant).await;
    print_summary(&args, &model.version, &summary, cost);
    anyhow::ensure!(
        summary.missing == 0,
        "{} of {} requests got no prediction within {} s",
        summary.missing,
        summary.sent,
        args.idle_timeout_s
    );
    Ok(())
}

/// `aifab up --detach` through this same binary: stack, model, services.
async fn bring_up() -> anyhow::Result<()> {
    let exe = std::env::current_exe()?;
    let status = tokio::process::Command::new(exe)
        .args(["up", "--detach"])
        .status()
        .await
        .context("running aifab up")?;
    anyhow::ensure!(
        status.success(),
        "aifab up --detach failed ({status}); see {}",
        local::log_dir().display()
    );
    Ok(())
}

async fn produce_all(
    producer: &FutureProducer,
    records: Vec<(String, Vec<u8>)>,
    pb: &ProgressBar,
) -> anyhow::Result<Vec<i64>> {
    use futures::StreamExt;
    let sends = records.into_iter().map(|(key, payload)| {
        let producer = producer.clone();
        async move {
            let sent_ms = aifab_core::now_ms();
            producer
                .send(
                    FutureRecord::to(INGEST_RAW.name)
                        .key(&key)
                        .payload(&payload),
                    Duration::from_secs(60),
                )
                .await
                .map_err(|(e, _)| anyhow::anyhow!("producing to {}: {e}", INGEST_RAW.name))?;
            Ok::<i64, anyhow::Error>(sent_ms)
        }
    });
    let mut out = Vec::new();
    let mut stream = futures::stream::iter(sends).buffered(2_000);
    while let Some(r) = stream.next().await {
        out.push(r?);
        pb.inc(1);
    }
    Ok(out)
}

async fn train_model(
    args: &DemoArgs,
    http: &reqwest::Client,
    producer: &FutureProducer,
    run_id: &str,
    train: &[Example],
) -> anyhow::Result<()> {
    let trainer = service("trainer");
    let window_url = format!("http://{}/v1/window", trainer.addr());
    let in_window = |v: &Value| v["examples"][&args.task].as_u64().unwrap_or(0);
    let before = in_window(&http.get(&window_url).send().await?.json::<Value>().await?);

    println!(
        "\ntraining task {:?}: {} labelled examples into {}",
        args.task,
        train.len(),
        INGEST_RAW.name
    );
    let records = train
        .iter()
        .enumerate()
        .map(|(i, e)| raw_record(args, format!("{run_id}-train-{i}"), &e.text, Some(&e.label)))
        .collect();
    let pb = bar(train.len() as u64, "sending");
    produce_all(producer, records, &pb).await?;
    pb.finish();

    // The trainer's window is bounded; it holds at most what it held plus what was sent.
    let pb = bar(train.len() as u64, "to trainer");
    let deadline = Instant::now() + Duration::from_secs(args.idle_timeout_s.max(60) * 3);
    let mut last = 0;
    loop {
        let n = in_window(&http.get(&window_url).send().await?.json::<Value>().await?);
        pb.set_position(n.saturating_sub(before).min(train.len() as u64));
        if n >= before + train.len() as u64 || (n == last && n > before && n >= 20_000) {
            break;
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "the trainer holds {} of the {} examples sent; see the ingest and feature logs \
             in {} and `aifab consume --topic aifab.dlq --from-beginning`",
            n.saturating_sub(before),
            train.len(),
            local::log_dir().display()
        );
        last = n;
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    pb.finish();
    crate::train::request_and_follow(&args.brokers.nats_url, &args.task).await
}

/// One `ingest.raw/v1` record of the demo's tenant and task, keyed by its id: labelled
/// (an example for the trainer) or not (a request to serve).
fn raw_record(args: &DemoArgs, id: String, text: &str, label: Option<&str>) -> (String, Vec<u8>) {
    let mut v = json!({
        "schema": INGEST_RAW.schema,
        "id": id,
        "tenant": args.tenant,
        "task": args.task,
        "text": text,
    });
    if let Some(label) = label {
        v["label"] = json!(label);
    }
    (id, v.to_string().into_bytes())
}

async fn serve(
    args: &DemoArgs,
    producer: &FutureProducer,
    run_id: &str,
    test: &[Example],
) -> anyhow::Result<Summary> {
    // Start reading predictions at the current end before sending anything.
    let brokers = args.brokers.kafka_brokers.clone();
    let mut tail = tokio::task::spawn_blocking(move || {
        Tail::open(&brokers, "aifab-demo", PREDICTIONS.name, Start::Latest)
    })
    .await??;

    let records = test
        .iter()
        .enumerate()
        .map(|(i, e)| raw_record(args, format!("{run_id}-{i}"), &e.text, None))
        .collect();
    let sending = bar(test.len() as u64, "sending");
    let sent_ms = produce_all(producer, records, &sending).await?;
    sending.finish();

    let n = test.len();
    let idle = Duration::from_secs(args.idle_timeout_s);
    let run = run_id.to_string();
    let answered = bar(n as u64, "predictions");
    let pb = answered.clone();
    let answers = tokio::task::spawn_blocking(move || {
        let mut answers: HashMap<usize, Answer> = HashMap::new();
        let mut last = Instant::now();
        while answers.len() < n && last.elapsed() < idle {
            let Some(Ok(m)) = tail.poll(Duration::from_millis(200)) else {
                continue;
            };
            let Some(p) = m.payload.and_then(|b| decode::<Prediction>(&b).ok()) else {
                continue;
            };
            if p.arm == Arm::Shadow {
                continue;
            }
            if let Some(i) = request_index(&p.id, &run).filter(|&i| i < n) {
                answers.entry(i).or_insert_with(|| {
                    pb.inc(1);
                    Answer {
                        label: p.label,
                        outcome: p.outcome,
                        produced_at_ms: p.produced_at_ms,
                        model_version: p.model_version,
                    }
                });
                last = Instant::now();
            }
        }
        answers
    })
    .await?;
    answered.finish();
    let labels: Vec<String> = test.iter().map(|e| e.label.clone()).collect();
    Ok(summarize(&labels, &sent_ms, &answers))
}

/// Today's cost per 1,000 predictions of `tenant`, once the cost accountant has charged.
async fn cost_per_1k(http: &reqwest::Client, tenant: &str) -> Option<f64> {
    let url = format!(
        "http://{}/v1/costs?period=day&tenant={tenant}",
        service("cost-accountant").addr()
    );
    let deadline = Instant::now() + Duration::from_secs(15);
    while Instant::now() < deadline {
        if let Ok(r) = http.get(&url).send().await {
            if let Ok(v) = r.json::<Value>().await {
                let row = v["tenants"]
                    .as_array()
                    .and_then(|ts| ts.iter().find(|t| t["tenant"] == tenant))
                    .cloned();
                if let Some(c) = row.and_then(|t| t["cost_per_1k_predictions"].as_f64()) {
                    return Some(c);
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    None
}

fn print_summary(args: &DemoArgs, version: &str, s: &Summary, cost: Option<f64>) {
    println!();
    println!(
        "model        {}/{version} (served: {})",
        args.task,
        s.versions.join(", ")
    );
    println!(
        "requests     {} sent, {} answered ({} from the dedupe cache, {} expired), {} missing",
        s.sent, s.answered, s.cached, s.expired, s.missing
    );
    println!("accuracy     {:.4} against the labels", s.accuracy);
    println!(
        "throughput   {:.1} predictions/s (first send to last prediction)",
        s.throughput_per_s
    );
    println!(
        "latency      p50 {:.0} ms, p99 {:.0} ms (send to committed prediction)",
        s.p50_ms, s.p99_ms
    );
    match cost {
        Some(c) => println!(
            "cost         {c:.4} per 1,000 predictions (tenant {}, today)",
            args.tenant
        ),
        None => println!("cost         not charged yet (see `aifab costs`)"),
    }
    println!();
    println!("next:");
    println!("  dashboard    http://{}/", service("monitor").addr());
    println!(
        "  predictions  aifab consume --topic {} --from-beginning --max 5",
        PREDICTIONS.name
    );
    println!(
        "  your own     echo '{{\"schema\":\"ingest.raw/v1\",\"tenant\":\"{}\",\
         \"text\":\"WIN a prize now\"}}' | aifab produce --topic {}",
        args.tenant, INGEST_RAW.name
    );
    println!("  more         aifab status · aifab models list · aifab costs · aifab down");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_built_in_data_parses() {
        let train = parse_jsonl(BUILTIN_TRAIN, "train").unwrap();
        let test = parse_jsonl(BUILTIN_TEST, "test").unwrap();
        assert_eq!((train.len(), test.len()), (4_454, 1_120));
        assert!(test.iter().all(|e| e.label == "ham" || e.label == "spam"));
    }
}
