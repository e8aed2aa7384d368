//! Encoder + classification head = one servable model version.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::encoder::Encoder;
use crate::error::Result;
use crate::head::ClassificationHead;

/// One text's result.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Classification {
    /// The most probable label.
    pub label: String,
    /// Every label's probability (they sum to 1).
    pub scores: BTreeMap<String, f32>,
}

/// A model version: a shared encoder and a head trained on top of it.
///
/// The encoder sits behind an `Arc` so several head versions (hot swap) share one
/// copy of the encoder weights.
#[derive(Debug, Clone)]
pub struct Classifier {
    pub encoder: Arc<Encoder>,
    pub head: ClassificationHead,
    pub version: String,
}

impl Classifier {
    /// Pairs `encoder` and `head`, checking that the head takes the encoder's embedding
    /// width (the error names both sizes).
    pub fn new(
        encoder: Arc<Encoder>,
        head: ClassificationHead,
        version: impl Into<String>,
    ) -> Result<Self> {
        head.check_hidden(encoder.hidden_size())?;
        Ok(Self {
            encoder,
            head,
            version: version.into(),
        })
    }

    /// Loads the head in `head_dir` for `encoder` (see [`ClassificationHead::load`]).
    pub fn load_head(
        encoder: Arc<Encoder>,
        head_dir: impl AsRef<Path>,
        version: impl Into<String>,
    ) -> Result<Self> {
        let head = ClassificationHead::load_for_hidden(head_dir, encoder.hidden_size())?;
        Self::new(encoder, head, version)
    }

    /// The same head and version on another encoder (e.g. one loaded with
    /// [`Encoder::load_with_impl`] to evaluate the head with another implementation).
    pub fn with_encoder(&self, encoder: Arc<Encoder>) -> Result<Self> {
        Self::new(encoder, self.head.clone(), self.version.clone())
    }

    /// Classifies a batch of token-id sequences (see [`Encoder::embed`]).
    pub fn classify(&self, batch: &[&[u32]]) -> Result<Vec<Classification>> {
        let embeddings = self.encoder.embed(batch)?;
        let probs = self.head.try_scores(&embeddings)?;
        Ok(probs
            .iter()
            .map(|p| {
                let (label, scores) = self.head.label_scores(p);
                Classification { label, scores }
            })
            .collect())
    }
}
