//! `aifab train`: offline (`--train FILE --eval FILE`, no stack needed) or online (ask the
//! trainer service over NATS and follow its progress).

use std::path::PathBuf;
use std::time::Duration;

use crate::progress::bar;
use aifab_core::config::ModelArgs;
use aifab_core::messages::{decode, encode, tag, TrainProgress, TrainRequest, TrainStage};
use aifab_core::topics::subjects;
use aifab_trainer::dataset::read_jsonl;
use aifab_trainer::job::{Progress, Trainer};
use aifab_trainer::train::TrainConfig;
use futures::StreamExt;

#[derive(Debug, clap::Args)]
#[command(mut_arg("model_dir", |a| a.help("Encoder directory")))]
pub struct TrainArgs {
    /// Train offline on this JSONL of {"text","label"} (no stack needed).
    #[arg(long)]
    pub train: Option<PathBuf>,
    /// Evaluate the offline model on this JSONL.
    #[arg(long, requires = "train", conflicts_with = "eval_fraction")]
    pub eval: Option<PathBuf>,
    /// Without --eval: hold out this share of --train (seeded) for evaluation.
    #[arg(long, requires = "train")]
    pub eval_fraction: Option<f64>,
    /// Save the trained head (head.safetensors, labels.json, metrics.json) here.
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Online: ask the trainer service to train this task now and follow its progress.
    #[arg(long, conflicts_with = "train")]
    pub task: Option<String>,
    #[command(flatten)]
    pub model: ModelArgs,
    #[arg(long, default_value_t = 128)]
    pub max_len: usize,
    #[arg(long, default_value_t = 42)]
    pub seed: u64,
    /// AdamW learning rate.
    #[arg(long, default_value_t = TrainConfig::default().learning_rate)]
    pub learning_rate: f64,
    /// AdamW weight decay.
    #[arg(long, default_value_t = TrainConfig::default().weight_decay)]
    pub weight_decay: f64,
    /// Inverse L2 strength (scikit-learn's C).
    #[arg(long, default_value_t = TrainConfig::default().c)]
    pub c: f64,
    /// Most epochs.
    #[arg(long, default_value_t = TrainConfig::default().max_epochs)]
    pub max_epochs: usize,
    /// Epochs without a better validation loss before stopping.
    #[arg(long, default_value_t = TrainConfig::default().patience)]
    pub patience: usize,
    /// Embedding cache file (reused across runs; one per encoder). Default:
    /// ~/.cache/aifab/embeddings/<encoder checksum>.bin. `none` disables it.
    #[arg(long, env = "AIFAB_EMBEDDING_CACHE")]
    pub embedding_cache: Option<String>,
    #[arg(long, env = "AIFAB_NATS_URL", default_value = aifab_core::config::DEFAULT_NATS_URL)]
    pub nats_url: String,
}

pub async fn run(args: TrainArgs) -> anyhow::Result<()> {
    match (&args.train, &args.task) {
        (Some(train), _) => offline(&args, train.clone()).await,
        (None, Some(task)) => request_and_follow(&args.nats_url, task).await,
        _ => anyhow::bail!(
            "give --train FILE with --eval FILE or --eval-fraction F (offline), \
             or --task NAME (ask the trainer service)"
        ),
    }
}

async fn offline(args: &TrainArgs, train: PathBuf) -> anyhow::Result<()> {
    let all = read_jsonl(&train)?;
    let (train, eval) = match (&args.eval, args.eval_fraction) {
        (Some(eval), _) => (all, read_jsonl(eval)?),
        (None, Some(f)) if f > 0.0 && f < 1.0 => aifab_trainer::dataset::split(&all, f, args.seed),
        _ => anyhow::bail!("give --eval FILE, or --eval-fraction between 0 and 1"),
    };
    eprintln!(
        "{} training and {} evaluation examples; encoder {}",
        train.len(),
        eval.len(),
        args.model.model_dir
    );
    let cfg = TrainConfig {
        seed: args.seed,
        learning_rate: args.learning_rate,
        weight_decay: args.weight_decay,
        max_epochs: args.max_epochs,
        patience: args.patience,
        c: args.c,
        ..TrainConfig::default()
    };
    let (model_dir, max_len, out_dir) = (
        PathBuf::from(&args.model.model_dir),
        args.max_len,
        args.out.clone(),
    );
    let cache_arg = args.embedding_cache.clone();
    let out = tokio::task::spawn_blocking(move || -> anyhow::Result<_> {
        let mut trainer = Trainer::load(&model_dir, max_len, cfg)?;
        let cache_path = match cache_arg.as_deref() {
            Some("none") => None,
            Some(p) => Some(PathBuf::from(p)),
            None => {
                let home = std::env::var("HOME").unwrap_or_else(|_| ".".into());
                Some(
                    PathBuf::from(home)
                        .join(".cache/aifab/embeddings")
                        .join(format!("{}-{max_len}.bin", &trainer.encoder_sha256[..16])),
                )
            }
        };
        if let Some(p) = &cache_path {
            trainer.cache = aifab_trainer::embeddings::EmbeddingCache::load(p)?;
        }
        let embed_bar = bar(0, "embedding");
        let epoch_bar = bar(0, "training");
        let out = trainer.run(&train, &eval, |p| match p {
            Progress::Embedding { done, total } => {
                embed_bar.set_length(total as u64);
                embed_bar.set_position(done as u64);
            }
            Progress::Epoch(e) => {
                embed_bar.finish();
                epoch_bar.set_length(e.max_epochs as u64);
                epoch_bar.set_position(e.epoch as u64);
                epoch_bar.set_message(format!(
                    "val loss {:.4} acc {:.4}",
                    e.validation_loss, e.validation_accuracy
                ));
            }
            Progress::Evaluating => epoch_bar.finish(),
        })?;
        if let Some(p) = &cache_path {
            trainer.cache.save(p)?;
        }
        if let Some(dir) = out_dir {
            out.head.save(&dir)?;
            std::fs::write(
                dir.join("metrics.json"),
                serde_json::to_vec_pretty(&out.evaluation)?,
            )?;
            eprintln!("head saved to {}", dir.display());
        }
        Ok(out)
    })
    .await??;
    let e = &out.evaluation;
    eprintln!(
        "epochs {} (best {}), {} eval examples",
        out.report.epochs_run, out.report.best_epoch, e.examples
    );
    for c in &e.per_class {
        eprintln!(
            "  {:<24} precision {:.4} recall {:.4} f1 {:.4} support {}",
            c.label, c.precision, c.recall, c.f1, c.support
        );
    }
    println!("accuracy {:.4}", e.accuracy);
    println!("macro_f1 {:.4}", e.macro_f1);
    Ok(())
}

/// Ask the trainer (NATS `aifab.train.request`) to train `task` now and follow its
/// progress events with a bar until the job is done.
pub async fn request_and_follow(nats_url: &str, task: &str) -> anyhow::Result<()> {
    let nats = aifab_core::nats::connect_now(nats_url, "cli").await?;
    let mut progress = nats.subscribe(subjects::TRAIN_PROGRESS).await?;
    let req = TrainRequest {
        schema: tag(),
        task: task.to_string(),
        // The audit log's claimed name for this request.
        requested_by: aifab_core::audit::operator_name().or_else(|| Some("aifab-cli".into())),
        at_ms: aifab_core::now_ms(),
    };
    nats.publish(subjects::TRAIN_REQUEST, encode(&req).into())
        .await?;
    nats.flush().await?;
    let pb = bar(0, "waiting");
    loop {
        let msg = tokio::time::timeout(Duration::from_secs(120), progress.next())
            .await
            .map_err(|_| {
                anyhow::anyhow!(
                    "no progress from the trainer for 120s: is aifab-trainer running \
                     and does task {task:?} have examples?"
                )
            })?
            .ok_or_else(|| anyhow::anyhow!("NATS subscription closed"))?;
        let Ok(p) = decode::<TrainProgress>(&msg.payload) else {
            continue;
        };
        if p.task != task {
            continue;
        }
        match p.stage {
            TrainStage::Done => {
                pb.finish_and_clear();
                println!("trained {task}: version {}", p.detail.unwrap_or_default());
                return Ok(());
            }
            TrainStage::Failed => {
                pb.finish_and_clear();
                anyhow::bail!("training failed: {}", p.detail.unwrap_or_default());
            }
            stage => {
                pb.set_prefix(format!("{stage:?}").to_lowercase());
                pb.set_length(p.total);
                pb.set_position(p.done);
            }
        }
    }
}
