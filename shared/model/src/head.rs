//! A linear classification head over the pooled, normalised sentence embedding.
//!
//! On disk (a head directory): `head.safetensors` with `classifier.weight`
//! `[n_labels, hidden]` and `classifier.bias` `[n_labels]`, and `labels.json`, a JSON
//! array of label strings whose index is the class id.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};

use crate::error::{io_err, read_json, ModelError, Result};

/// Head weights file name.
pub const HEAD_FILE: &str = "head.safetensors";
/// Labels file name.
pub const LABELS_FILE: &str = "labels.json";
/// Tensor name of the weight matrix.
pub const WEIGHT_TENSOR: &str = "classifier.weight";
/// Tensor name of the bias vector.
pub const BIAS_TENSOR: &str = "classifier.bias";

/// `softmax(W · embedding + b)` over `labels`.
#[derive(Debug, Clone, PartialEq)]
pub struct ClassificationHead {
    /// Row-major `[n_labels, hidden]`.
    weight: Vec<f32>,
    bias: Vec<f32>,
    hidden: usize,
    labels: Vec<String>,
}

impl ClassificationHead {
    /// Builds a head from raw parts; `weight` is row-major `[labels.len(), hidden]`.
    pub fn new(
        labels: Vec<String>,
        hidden: usize,
        weight: Vec<f32>,
        bias: Vec<f32>,
    ) -> Result<Self> {
        let n = labels.len();
        if n == 0 {
            return Err(ModelError::Invalid(
                "a classification head needs at least one label".into(),
            ));
        }
        if hidden == 0 {
            return Err(ModelError::Invalid(
                "a classification head needs hidden size > 0".into(),
            ));
        }
        let mut seen = HashSet::new();
        for l in &labels {
            if !seen.insert(l.as_str()) {
                return Err(ModelError::Invalid(format!(
                    "label {l:?} appears more than once"
                )));
            }
        }
        if weight.len() != n * hidden {
            return Err(ModelError::Invalid(format!(
                "weight has {} values, expected {n} labels x {hidden} hidden = {}",
                weight.len(),
                n * hidden
            )));
        }
        if bias.len() != n {
            return Err(ModelError::Invalid(format!(
                "bias has {} values, expected one per label ({n})",
                bias.len()
            )));
        }
        if let Some(i) = weight.iter().chain(&bias).position(|v| !v.is_finite()) {
            return Err(ModelError::Invalid(format!(
                "head parameter {i} is not finite"
            )));
        }
        Ok(Self {
            weight,
            bias,
            hidden,
            labels,
        })
    }

    /// Loads `head.safetensors` + `labels.json` from `dir`, checking that the shapes
    /// agree with each other and with the number of labels.
    pub fn load(dir: impl AsRef<Path>) -> Result<Self> {
        let dir = dir.as_ref();
        let head_path = dir.join(HEAD_FILE);
        let labels_path = dir.join(LABELS_FILE);
        if !head_path.is_file() {
            return Err(ModelError::Invalid(format!(
                "head file {} does not exist",
                head_path.display()
            )));
        }
        let labels: Vec<String> = read_json(&labels_path)?;
        let tensors = candle_core::safetensors::load(&head_path, &Device::Cpu).map_err(|e| {
            ModelError::Invalid(format!(
                "{}: not a readable safetensors file: {e}",
                head_path.display()
            ))
        })?;
        let ctx = |msg: String| ModelError::Invalid(format!("{}: {msg}", head_path.display()));
        let weight = take(&tensors, WEIGHT_TENSOR, &head_path)?;
        let bias = take(&tensors, BIAS_TENSOR, &head_path)?;
        let (rows, hidden) = match weight.dims() {
            &[r, h] => (r, h),
            other => {
                return Err(ctx(format!(
                    "{WEIGHT_TENSOR} has shape {other:?}, expected [n_labels, hidden]"
                )))
            }
        };
        let bias_len = match bias.dims() {
            &[b] => b,
            other => {
                return Err(ctx(format!(
                    "{BIAS_TENSOR} has shape {other:?}, expected [n_labels]"
                )))
            }
        };
        if bias_len != rows {
            return Err(ctx(format!(
                "{BIAS_TENSOR} has {bias_len} entries but {WEIGHT_TENSOR} has {rows} rows"
            )));
        }
        if labels.len() != rows {
            return Err(ModelError::Invalid(format!(
                "{} lists {} labels but {} has {rows} classes",
                labels_path.display(),
                labels.len(),
                head_path.display()
            )));
        }
        let weight: Vec<f32> = weight.to_dtype(DType::F32)?.flatten_all()?.to_vec1()?;
        let bias: Vec<f32> = bias.to_dtype(DType::F32)?.to_vec1()?;
        Self::new(labels, hidden, weight, bias).map_err(|e| ctx(e.to_string()))
    }

    /// [`load`](Self::load), then checks the head fits an encoder of width `hidden`.
    pub fn load_for_hidden(dir: impl AsRef<Path>, hidden: usize) -> Result<Self> {
        let dir = dir.as_ref();
        let head = Self::load(dir)?;
        head.check_hidden(hidden)
            .map_err(|e| ModelError::Invalid(format!("{}: {e}", dir.display())))?;
        Ok(head)
    }

    /// Errors (naming both sizes) unless this head takes embeddings of width `hidden`.
    pub fn check_hidden(&self, encoder_hidden: usize) -> Result<()> {
        if self.hidden != encoder_hidden {
            return Err(ModelError::Invalid(format!(
                "hidden size mismatch: the classification head expects embeddings of size {}, \
                 the encoder produces size {encoder_hidden}",
                self.hidden
            )));
        }
        Ok(())
    }

    /// The head's files as bytes: (`head.safetensors`, its contents), (`labels.json`, its
    /// contents), for stores that are not a local directory.
    pub fn to_files(&self) -> Result<[(&'static str, Vec<u8>); 2]> {
        let n = self.labels.len();
        let weight = Tensor::from_vec(self.weight.clone(), (n, self.hidden), &Device::Cpu)?;
        let bias = Tensor::from_vec(self.bias.clone(), n, &Device::Cpu)?;
        let tensors: HashMap<String, Tensor> = [
            (WEIGHT_TENSOR.to_string(), weight),
            (BIAS_TENSOR.to_string(), bias),
        ]
        .into();
        let head = safetensors::tensor::serialize(&tensors, None)
            .map_err(|e| ModelError::Invalid(format!("serialising the head: {e}")))?;
        let labels = serde_json::to_string_pretty(&self.labels).expect("strings serialise") + "\n";
        Ok([(HEAD_FILE, head), (LABELS_FILE, labels.into_bytes())])
    }

    /// Writes `head.safetensors` and `labels.json` into `dir` (created if missing). Each
    /// file is written to a temporary name and renamed into place.
    pub fn save(&self, dir: impl AsRef<Path>) -> Result<()> {
        let dir = dir.as_ref();
        std::fs::create_dir_all(dir).map_err(io_err("cannot create", dir))?;
        for (name, bytes) in self.to_files()? {
            let path = dir.join(name);
            let tmp = tmp_name(&path);
            std::fs::write(&tmp, bytes).map_err(io_err("cannot write", &tmp))?;
            std::fs::rename(&tmp, &path).map_err(io_err("cannot rename into", &path))?;
        }
        Ok(())
    }

    /// Labels, index = class id.
    pub fn labels(&self) -> &[String] {
        &self.labels
    }

    /// Number of classes.
    pub fn n_labels(&self) -> usize {
        self.labels.len()
    }

    /// Embedding width this head takes.
    pub fn hidden_size(&self) -> usize {
        self.hidden
    }

    /// Row-major `[n_labels, hidden]` weights.
    pub fn weight(&self) -> &[f32] {
        &self.weight
    }

    /// `[n_labels]` bias.
    pub fn bias(&self) -> &[f32] {
        &self.bias
    }

    /// Raw scores `W · embedding + b`. Errors if `embedding` is not `hidden_size()` long.
    pub fn logits(&self, embedding: &[f32]) -> Result<Vec<f32>> {
        if embedding.len() != self.hidden {
            return Err(ModelError::Input(format!(
                "embedding has {} values, the head expects {}",
                embedding.len(),
                self.hidden
            )));
        }
        Ok(self
            .weight
            .chunks_exact(self.hidden)
            .zip(&self.bias)
            .map(|(row, b)| row.iter().zip(embedding).map(|(w, x)| w * x).sum::<f32>() + b)
            .collect())
    }

    /// Softmax probabilities for each embedding (each row sums to 1), in label order.
    ///
    /// # Panics
    /// If an embedding is not `hidden_size()` long; use [`try_scores`](Self::try_scores)
    /// for untrusted input ([`Classifier`](crate::Classifier) checks sizes at load).
    pub fn scores(&self, embeddings: &[Vec<f32>]) -> Vec<Vec<f32>> {
        self.try_scores(embeddings)
            .unwrap_or_else(|e| panic!("{e}"))
    }

    /// [`scores`](Self::scores) with an error instead of a panic on a size mismatch.
    pub fn try_scores(&self, embeddings: &[Vec<f32>]) -> Result<Vec<Vec<f32>>> {
        embeddings
            .iter()
            .map(|e| Ok(softmax(&self.logits(e)?)))
            .collect()
    }

    /// The most probable label and every label's probability, for one embedding.
    pub fn predict(&self, embedding: &[f32]) -> Result<(String, BTreeMap<String, f32>)> {
        let probs = softmax(&self.logits(embedding)?);
        Ok(self.label_scores(&probs))
    }

    /// (argmax label, label → probability) from a probability row in label order.
    pub(crate) fn label_scores(&self, probs: &[f32]) -> (String, BTreeMap<String, f32>) {
        let best = argmax(probs);
        let map = self
            .labels
            .iter()
            .cloned()
            .zip(probs.iter().copied())
            .collect();
        (self.labels[best].clone(), map)
    }
}

/// Numerically stable softmax.
pub fn softmax(logits: &[f32]) -> Vec<f32> {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let exps: Vec<f32> = logits.iter().map(|l| (l - max).exp()).collect();
    let sum: f32 = exps.iter().sum();
    exps.into_iter().map(|e| e / sum).collect()
}

/// Index of the largest value (the first on ties).
fn argmax(values: &[f32]) -> usize {
    let mut best = 0;
    for (i, v) in values.iter().enumerate() {
        if *v > values[best] {
            best = i;
        }
    }
    best
}

fn take<'a>(tensors: &'a HashMap<String, Tensor>, name: &str, path: &Path) -> Result<&'a Tensor> {
    tensors.get(name).ok_or_else(|| {
        let mut found: Vec<&str> = tensors.keys().map(String::as_str).collect();
        found.sort_unstable();
        ModelError::Invalid(format!(
            "{}: tensor {name} is missing (found: {})",
            path.display(),
            if found.is_empty() {
                "none".to_string()
            } else {
                found.join(", ")
            }
        ))
    })
}

fn tmp_name(path: &Path) -> PathBuf {
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(format!(".tmp{}", std::process::id()));
    path.with_file_name(name)
}
