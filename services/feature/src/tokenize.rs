//! Tokenization with the model's `tokenizer.json` and a truncation policy.
//!
//! Token ids include the special tokens (`[CLS]` … `[SEP]`), which count towards
//! `--max-tokens`; the inference worker uses them as they are and batches by their count.

use std::path::Path;

use aifab_core::messages::Truncation;
use aifab_model::TextTokenizer;
use tokenizers::{Tokenizer, TruncationDirection, TruncationParams, TruncationStrategy};

/// What to do with a text longer than `--max-tokens`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum TruncationPolicy {
    /// Keep the start (recorded as `truncation: "head"`).
    Head,
    /// Keep the end (recorded as `truncation: "tail"`).
    Tail,
    /// Refuse it: dead-lettered with error_kind `too_many_tokens`.
    Reject,
}

/// One tokenized text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tokens {
    pub ids: Vec<u32>,
    pub truncation: Truncation,
}

/// Why a text could not be tokenized.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenizeError {
    pub kind: &'static str,
    pub reason: String,
}

pub struct FeatureTokenizer {
    inner: Tokenizer,
    max_tokens: usize,
    policy: TruncationPolicy,
}

impl FeatureTokenizer {
    /// Load `tokenizer.json` (the file, or a model directory holding it).
    pub fn load(path: &Path, max_tokens: usize, policy: TruncationPolicy) -> anyhow::Result<Self> {
        // aifab-model's loader turns off the packaged fixed padding and checks max_len.
        let base = TextTokenizer::from_file(path, max_tokens)?;
        let mut inner = base.inner().clone();
        let truncation = match policy {
            TruncationPolicy::Head | TruncationPolicy::Tail => Some(TruncationParams {
                direction: if policy == TruncationPolicy::Tail {
                    TruncationDirection::Left
                } else {
                    TruncationDirection::Right
                },
                max_length: max_tokens,
                strategy: TruncationStrategy::LongestFirst,
                stride: 0,
            }),
            // Count every token, then refuse texts over the limit.
            TruncationPolicy::Reject => None,
        };
        inner.with_truncation(truncation).map_err(|e| anyhow::anyhow!("setting truncation: {e}"))?;
        Ok(FeatureTokenizer { inner, max_tokens, policy })
    }

    pub fn max_tokens(&self) -> usize {
        self.max_tokens
    }

    /// Tokenize texts (in parallel inside the tokenizer library).
    pub fn encode_batch(&self, texts: &[&str]) -> Vec<Result<Tokens, TokenizeError>> {
        if texts.is_empty() {
            return Vec::new();
        }
        match self.inner.encode_batch_fast(texts.to_vec(), true) {
            Ok(encs) => encs.into_iter().map(|e| self.finish(e)).collect(),
            // One bad text fails the whole call: redo them one by one to find it.
            Err(_) => texts
                .iter()
                .map(|t| match self.inner.encode_fast(*t, true) {
                    Ok(e) => self.finish(e),
                    Err(e) => Err(TokenizeError { kind: "tokenize_failed", reason: format!("text: the tokenizer failed: {e}") }),
                })
                .collect(),
        }
    }

    fn finish(&self, e: tokenizers::Encoding) -> Result<Tokens, TokenizeError> {
        let truncated = !e.get_overflowing().is_empty();
        let ids = e.get_ids().to_vec();
        if self.policy == TruncationPolicy::Reject && ids.len() > self.max_tokens {
            return Err(TokenizeError {
                kind: "too_many_tokens",
                reason: format!(
                    "field \"text\": {} tokens, more than the maximum of {} (truncation policy: reject)",
                    ids.len(),
                    self.max_tokens
                ),
            });
        }
        if ids.is_empty() {
            return Err(TokenizeError { kind: "empty_text", reason: "field \"text\": no tokens".into() });
        }
        let truncation = match (truncated, self.policy) {
            (false, _) | (_, TruncationPolicy::Reject) => Truncation::None,
            (true, TruncationPolicy::Head) => Truncation::Head,
            (true, TruncationPolicy::Tail) => Truncation::Tail,
        };
        Ok(Tokens { ids, truncation })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tiny(policy: TruncationPolicy, max: usize) -> (tempfile::TempDir, FeatureTokenizer) {
        let dir = tempfile::tempdir().unwrap();
        aifab_model::testing::write_tiny_bert(dir.path(), 1).unwrap();
        let t = FeatureTokenizer::load(dir.path(), max, policy).unwrap();
        (dir, t)
    }

    const CLS: u32 = 2;
    const SEP: u32 = 3;

    #[test]
    fn short_texts_are_not_truncated() {
        let (_d, t) = tiny(TruncationPolicy::Head, 16);
        let out = t.encode_batch(&["the cat sat", "hello world"]);
        let a = out[0].as_ref().unwrap();
        assert_eq!(a.ids.len(), 5, "[CLS] the cat sat [SEP]: {:?}", a.ids);
        assert_eq!((a.ids[0], *a.ids.last().unwrap()), (CLS, SEP));
        assert_eq!(a.truncation, Truncation::None);
    }

    #[test]
    fn head_keeps_the_start_and_tail_keeps_the_end() {
        let words = "the cat sat on the mat and the dog sat on the mat and the fox jumps over the lazy dog";
        let (_d, head) = tiny(TruncationPolicy::Head, 8);
        let (_d2, tail) = tiny(TruncationPolicy::Tail, 8);
        let (_d3, full) = tiny(TruncationPolicy::Head, 64);
        let all = full.encode_batch(&[words]).remove(0).unwrap().ids;
        let h = head.encode_batch(&[words]).remove(0).unwrap();
        let t = tail.encode_batch(&[words]).remove(0).unwrap();
        assert_eq!((h.ids.len(), h.truncation), (8, Truncation::Head));
        assert_eq!((t.ids.len(), t.truncation), (8, Truncation::Tail));
        assert_eq!(h.ids[..7], all[..7], "head: [CLS] + the first 6 tokens");
        assert_eq!(t.ids[0], CLS);
        assert_eq!(t.ids[1..], all[all.len() - 7..], "tail: the last 6 tokens + [SEP]");
    }

    #[test]
    fn reject_refuses_long_texts_with_the_count() {
        let (_d, t) = tiny(TruncationPolicy::Reject, 6);
        let out = t.encode_batch(&["the cat sat", "the cat sat on the mat"]);
        assert_eq!(out[0].as_ref().unwrap().truncation, Truncation::None);
        let e = out[1].as_ref().unwrap_err();
        assert_eq!(e.kind, "too_many_tokens");
        assert!(e.reason.contains("8 tokens, more than the maximum of 6"), "{}", e.reason);
    }

    #[test]
    fn max_tokens_must_leave_room_for_special_tokens() {
        let dir = tempfile::tempdir().unwrap();
        aifab_model::testing::write_tiny_bert(dir.path(), 1).unwrap();
        let e = FeatureTokenizer::load(dir.path(), 2, TruncationPolicy::Head).err().unwrap();
        assert!(e.to_string().contains("special tokens"), "{e}");
        let e = FeatureTokenizer::load(Path::new("/nonexistent"), 16, TruncationPolicy::Head).err().unwrap();
        assert!(e.to_string().contains("does not exist"), "{e}");
    }
}
