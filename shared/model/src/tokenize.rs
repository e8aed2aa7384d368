//! Text → token ids with the model's WordPiece tokenizer.
//!
//! The packaged `tokenizer.json` pads every input to a fixed 128 tokens; that padding is
//! removed here (the encoder pads each batch to its own longest sequence) and truncation
//! is set to the caller's `max_len` (longest-first, right side). Special tokens
//! (`[CLS]` … `[SEP]`) are included in the ids and count towards `max_len`.

use std::path::Path;

use tokenizers::{
    PostProcessor, Tokenizer, TruncationDirection, TruncationParams, TruncationStrategy,
};

use crate::error::{ModelError, Result};

/// One tokenized text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Encoded {
    /// Token ids including the special tokens, at most `max_len` of them.
    pub ids: Vec<u32>,
    /// The text had more than `max_len` tokens and was cut.
    pub truncated: bool,
}

impl Encoded {
    /// Number of tokens.
    pub fn len(&self) -> usize {
        self.ids.len()
    }

    /// True when there are no tokens (cannot happen with a BERT tokenizer, which always
    /// adds `[CLS]` and `[SEP]`).
    pub fn is_empty(&self) -> bool {
        self.ids.is_empty()
    }
}

/// The tokenizer of a model, with our padding/truncation policy applied.
#[derive(Clone)]
pub struct TextTokenizer {
    inner: Tokenizer,
    max_len: usize,
    pad_id: u32,
}

impl std::fmt::Debug for TextTokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TextTokenizer")
            .field("max_len", &self.max_len)
            .field("pad_id", &self.pad_id)
            .field("vocab_size", &self.vocab_size())
            .finish()
    }
}

impl TextTokenizer {
    /// Loads `tokenizer.json` (the file itself, or a model directory holding it), turns
    /// off its packaged padding and truncates at `max_len` tokens (special tokens
    /// included).
    pub fn from_file(path: impl AsRef<Path>, max_len: usize) -> Result<Self> {
        let mut path = path.as_ref().to_path_buf();
        if path.is_dir() {
            path = path.join("tokenizer.json");
        }
        if !path.is_file() {
            return Err(ModelError::Invalid(format!(
                "tokenizer file {} does not exist",
                path.display()
            )));
        }
        let inner = Tokenizer::from_file(&path)
            .map_err(|e| ModelError::Tokenizer(format!("cannot load {}: {e}", path.display())))?;
        Self::from_tokenizer(inner, max_len)
    }

    /// Wraps an already built tokenizer, applying the same policy as [`from_file`](Self::from_file).
    pub fn from_tokenizer(mut inner: Tokenizer, max_len: usize) -> Result<Self> {
        let n_special = inner
            .get_post_processor()
            .map(|p| p.added_tokens(false))
            .unwrap_or(0);
        if max_len <= n_special {
            return Err(ModelError::Invalid(format!(
                "max_len must be more than the {n_special} special tokens the tokenizer adds, got {max_len}"
            )));
        }
        // Where the packaged file had padding, reuse its pad id for our per-batch padding.
        let pad_id = inner
            .get_padding()
            .map(|p| p.pad_id)
            .or_else(|| inner.token_to_id("[PAD]"))
            .unwrap_or(0);
        inner.with_padding(None);
        inner
            .with_truncation(Some(TruncationParams {
                direction: TruncationDirection::Right,
                max_length: max_len,
                strategy: TruncationStrategy::LongestFirst,
                stride: 0,
            }))
            .map_err(|e| ModelError::Tokenizer(format!("cannot set truncation: {e}")))?;
        Ok(Self {
            inner,
            max_len,
            pad_id,
        })
    }

    /// Tokenizes one text.
    pub fn encode(&self, text: &str) -> Result<Encoded> {
        let enc = self
            .inner
            .encode_fast(text, true)
            .map_err(|e| ModelError::Tokenizer(e.to_string()))?;
        Ok(to_encoded(enc))
    }

    /// Tokenizes several texts (in parallel inside the tokenizer library).
    pub fn encode_batch(&self, texts: &[&str]) -> Result<Vec<Encoded>> {
        let encs = self
            .inner
            .encode_batch_fast(texts.to_vec(), true)
            .map_err(|e| ModelError::Tokenizer(e.to_string()))?;
        Ok(encs.into_iter().map(to_encoded).collect())
    }

    /// The truncation length (special tokens included).
    pub fn max_len(&self) -> usize {
        self.max_len
    }

    /// The id used to pad batches (`[PAD]`).
    pub fn pad_id(&self) -> u32 {
        self.pad_id
    }

    /// Vocabulary size, added tokens included.
    pub fn vocab_size(&self) -> usize {
        self.inner.get_vocab_size(true)
    }

    /// The wrapped tokenizer (padding off, truncation at `max_len`).
    pub fn inner(&self) -> &Tokenizer {
        &self.inner
    }
}

fn to_encoded(enc: tokenizers::Encoding) -> Encoded {
    // Truncation moves the cut-off tokens into `overflowing`: non-empty means the text
    // was longer than max_len. This costs nothing beyond the one encode.
    let truncated = !enc.get_overflowing().is_empty();
    Encoded {
        ids: enc.get_ids().to_vec(),
        truncated,
    }
}
