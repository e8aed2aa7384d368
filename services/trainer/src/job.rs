//! One training job: embed, train the head, evaluate, write the artifact. Used by the
//! trainer service and, offline, by `aifab train --train FILE --eval FILE`.

use std::collections::BTreeMap;
use std::path::Path;

use aifab_core::artifacts::{ArtifactLocation, ArtifactStore};

use aifab_model::{ClassificationHead, Encoder, TextTokenizer};
use anyhow::Context;
use serde::Serialize;
use sha2::{Digest, Sha256};

use crate::dataset::{labels_of, Example};
use crate::embeddings::EmbeddingCache;
use crate::eval::{evaluate, Evaluation};
use crate::train::{train_head, EpochProgress, TrainConfig, TrainReport, TrainedHead};

/// What a job reports as it goes.
#[derive(Debug, Clone, PartialEq)]
pub enum Progress {
    Embedding { done: usize, total: usize },
    Epoch(EpochProgress),
    Evaluating,
}

pub struct JobOutput {
    pub head: ClassificationHead,
    pub evaluation: Evaluation,
    pub report: TrainReport,
}

/// Encoder, tokenizer and embedding cache, loaded once and reused by every job.
pub struct Trainer {
    pub encoder: Encoder,
    pub tokenizer: TextTokenizer,
    pub cache: EmbeddingCache,
    pub encoder_name: String,
    pub encoder_sha256: String,
    pub config: TrainConfig,
}

impl Trainer {
    pub fn load(model_dir: &Path, max_len: usize, config: TrainConfig) -> anyhow::Result<Self> {
        let encoder = Encoder::load(model_dir, &aifab_model::Device::Cpu).with_context(|| {
            format!(
                "loading the encoder from {} (run scripts/fetch-model?)",
                model_dir.display()
            )
        })?;
        let tokenizer = TextTokenizer::from_file(model_dir.join("tokenizer.json"), max_len)?;
        let weights = std::fs::read(model_dir.join("model.safetensors"))?;
        Ok(Trainer {
            encoder,
            tokenizer,
            cache: EmbeddingCache::default(),
            encoder_name: model_dir
                .file_name()
                .map(|n| n.to_string_lossy().to_string())
                .unwrap_or_default(),
            encoder_sha256: format!("{:x}", Sha256::digest(&weights)),
            config,
        })
    }

    /// Train on `train` and evaluate on `eval` (labels seen only in `eval` count as
    /// errors: the head cannot predict them).
    pub fn run(
        &mut self,
        train: &[Example],
        eval: &[Example],
        mut progress: impl FnMut(Progress),
    ) -> anyhow::Result<JobOutput> {
        let labels = labels_of(train);
        anyhow::ensure!(
            labels.len() >= 2,
            "training needs at least two labels; found {:?}",
            labels
        );
        let index: BTreeMap<&str, usize> = labels
            .iter()
            .enumerate()
            .map(|(i, l)| (l.as_str(), i))
            .collect();
        let texts: Vec<&str> = train.iter().chain(eval).map(|e| e.text.as_str()).collect();
        let vectors =
            self.cache
                .embed_all(&self.encoder, &self.tokenizer, &texts, 32, |done, total| {
                    progress(Progress::Embedding { done, total })
                })?;
        let (train_x, eval_x) = vectors.split_at(train.len());
        let train_y: Vec<usize> = train.iter().map(|e| index[e.label.as_str()]).collect();
        let TrainedHead { head, report } =
            train_head(train_x, &train_y, labels.clone(), &self.config, |p| {
                progress(Progress::Epoch(p))
            })?;
        progress(Progress::Evaluating);
        // An evaluation label the head never saw is an extra class nobody predicts.
        let mut eval_labels = labels.clone();
        let mut truth = Vec::with_capacity(eval.len());
        for e in eval {
            let i = match eval_labels.iter().position(|l| *l == e.label) {
                Some(i) => i,
                None => {
                    eval_labels.push(e.label.clone());
                    eval_labels.len() - 1
                }
            };
            truth.push(i);
        }
        let predicted: Vec<usize> = head
            .scores(eval_x)
            .iter()
            .map(|s| {
                s.iter()
                    .enumerate()
                    .max_by(|a, b| a.1.total_cmp(b.1))
                    .map(|(i, _)| i)
                    .unwrap_or(0)
            })
            .collect();
        let evaluation = evaluate(&eval_labels, &truth, &predicted);
        Ok(JobOutput {
            head,
            evaluation,
            report,
        })
    }
}

#[derive(Debug, Serialize)]
struct Manifest<'a> {
    task: &'a str,
    version: &'a str,
    encoder: &'a str,
    encoder_sha256: &'a str,
    labels: &'a [String],
    train_examples: usize,
    validation_examples: usize,
    eval_examples: usize,
    epochs_run: usize,
    best_epoch: usize,
    created_at_ms: i64,
}

/// A version's files: `head.safetensors`, `labels.json`, `metrics.json` and
/// `manifest.json` (the manifest names the encoder and its weights' SHA-256).
pub fn artifact_files(
    task: &str,
    version: &str,
    trainer: &Trainer,
    out: &JobOutput,
) -> anyhow::Result<Vec<(String, Vec<u8>)>> {
    let mut files: Vec<(String, Vec<u8>)> = out
        .head
        .to_files()?
        .into_iter()
        .map(|(name, bytes)| (name.to_string(), bytes))
        .collect();
    files.push((
        "metrics.json".into(),
        serde_json::to_vec_pretty(&out.evaluation)?,
    ));
    let manifest = Manifest {
        task,
        version,
        encoder: &trainer.encoder_name,
        encoder_sha256: &trainer.encoder_sha256,
        labels: out.head.labels(),
        train_examples: out.report.train_examples,
        validation_examples: out.report.validation_examples,
        eval_examples: out.evaluation.examples,
        epochs_run: out.report.epochs_run,
        best_epoch: out.report.best_epoch,
        created_at_ms: aifab_core::now_ms(),
    };
    files.push((
        "manifest.json".into(),
        serde_json::to_vec_pretty(&manifest)?,
    ));
    Ok(files)
}

/// Write a version's files to `<store root>/<task>/<version>/`; returns that location
/// (its URI is the registry record's `artifact_uri`). The manifest goes last, so a
/// version with a manifest is complete.
pub async fn write_artifact(
    store: &ArtifactStore,
    task: &str,
    version: &str,
    files: &[(String, Vec<u8>)],
) -> anyhow::Result<ArtifactLocation> {
    let (manifest, rest): (Vec<_>, Vec<_>) = files
        .iter()
        .cloned()
        .partition(|(name, _)| name == "manifest.json");
    let rel = format!("{task}/{version}");
    store.put_all(&rel, &rest).await?;
    Ok(store.put_all(&rel, &manifest).await?)
}
