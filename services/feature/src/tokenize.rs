//! Tokenization with the model's `tokenizer.json` and a truncation policy.
//!
//! Token ids include the special tokens (`[CLS]` … `[SEP]`), which count towards
//! `--max-tokens`; the inference worker uses them as they are and batches by their count.

use std::path::Path;

use aifab_core::messages::Truncation;
use aifab_model::TextTokenizer;
use tokenizers::normalizers::NormalizerWrapper;
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
    /// For ASCII texts: `inner` without its normalizer, fed text normalized by
    /// [`bert_normalize_ascii`]. The library's normalizer tracks the offset of every
    /// character through each step, which was most of this service's CPU per message;
    /// on ASCII the BERT normalizer is a byte map, with the same ids as a result.
    ascii: Option<AsciiPath>,
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
        let ascii = AsciiPath::for_tokenizer(&inner);
        Ok(FeatureTokenizer { inner, ascii, max_tokens, policy })
    }

    /// Whether ASCII texts take the fast path (the tokenizer's normalizer is BERT's).
    pub fn has_ascii_path(&self) -> bool {
        self.ascii.is_some()
    }

    pub fn max_tokens(&self) -> usize {
        self.max_tokens
    }

    /// Tokenize texts (in parallel inside the tokenizer library); ASCII ones through the
    /// fast path when there is one.
    pub fn encode_batch(&self, texts: &[&str]) -> Vec<Result<Tokens, TokenizeError>> {
        let Some(ascii) = &self.ascii else { return self.encode_with(&self.inner, texts) };
        let (fast, slow): (Vec<usize>, Vec<usize>) = (0..texts.len()).partition(|&i| texts[i].is_ascii());
        let normalized: Vec<String> = fast.iter().map(|&i| bert_normalize_ascii(texts[i], ascii.lowercase)).collect();
        let fast_out = self.encode_with(&ascii.tokenizer, &normalized.iter().map(String::as_str).collect::<Vec<_>>());
        let slow_out = self.encode_with(&self.inner, &slow.iter().map(|&i| texts[i]).collect::<Vec<_>>());
        let mut out: Vec<Option<Result<Tokens, TokenizeError>>> = vec![None; texts.len()];
        for (i, r) in fast.into_iter().zip(fast_out).chain(slow.into_iter().zip(slow_out)) {
            out[i] = Some(r);
        }
        out.into_iter().map(|r| r.expect("every text tokenized once")).collect()
    }

    /// Tokenize with the library's own path only (the reference for the fast one).
    pub fn encode_batch_reference(&self, texts: &[&str]) -> Vec<Result<Tokens, TokenizeError>> {
        self.encode_with(&self.inner, texts)
    }

    fn encode_with(&self, tokenizer: &Tokenizer, texts: &[&str]) -> Vec<Result<Tokens, TokenizeError>> {
        if texts.is_empty() {
            return Vec::new();
        }
        match tokenizer.encode_batch_fast(texts.to_vec(), true) {
            Ok(encs) => encs.into_iter().map(|e| self.finish(e)).collect(),
            // One bad text fails the whole call: redo them one by one to find it.
            Err(_) => texts
                .iter()
                .map(|t| match tokenizer.encode_fast(*t, true) {
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

struct AsciiPath {
    tokenizer: Tokenizer,
    lowercase: bool,
}

impl AsciiPath {
    /// A fast path for a tokenizer whose normalizer is BERT's with text cleaning on; on
    /// ASCII its Chinese-character and accent steps change nothing.
    fn for_tokenizer(inner: &Tokenizer) -> Option<Self> {
        let Some(NormalizerWrapper::BertNormalizer(n)) = inner.get_normalizer() else { return None };
        if !n.clean_text {
            return None;
        }
        let lowercase = n.lowercase;
        let mut tokenizer = inner.clone();
        tokenizer.with_normalizer(None::<NormalizerWrapper>).ok()?;
        Some(AsciiPath { tokenizer, lowercase })
    }
}

/// BERT's normalizer (clean text, then lowercase) on an ASCII text: control characters
/// (NUL and the other C0 codes, DEL) dropped, tab / newline / carriage return made spaces.
fn bert_normalize_ascii(text: &str, lowercase: bool) -> String {
    text.bytes()
        .filter_map(|b| match b {
            b'\t' | b'\n' | b'\r' => Some(' '),
            0x00..=0x1f | 0x7f => None,
            _ if lowercase => Some(b.to_ascii_lowercase() as char),
            _ => Some(b as char),
        })
        .collect()
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
    fn ascii_normalization_is_berts() {
        assert_eq!(bert_normalize_ascii("Hi\tThere\r\nYOU\x00\x07\x7f!", true), "hi there  you!");
        assert_eq!(bert_normalize_ascii("KeepCase\x0b", false), "KeepCase");
    }

    /// The fast path gives the library's ids and truncation on every text of the real
    /// model's tokenizer: the SMS test split, plus texts that exercise the normalizer.
    #[test]
    fn the_ascii_path_matches_the_library_on_the_real_tokenizer() {
        let dir = aifab_model::testing::real_model_dir();
        let t = FeatureTokenizer::load(&dir, 32, TruncationPolicy::Head).unwrap();
        assert!(t.has_ascii_path());
        let data = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../../../shared/data/sms_spam/test.jsonl"))
            .expect("../shared/data/sms_spam/test.jsonl");
        let mut texts: Vec<String> =
            data.lines().map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()["text"].as_str().unwrap().to_string()).collect();
        texts.extend(
            ["", "\x00\x01", "Tab\tand\nnew\rline", "DEL\x7fhere", "UPPER lower MiXeD 123 !?.,;:'\"()[]{}<>@#$%^&*_+=~`|\\/",
             "don't won't y'all", "a\x0bb\x0cc", "caf\u{e9} na\u{ef}ve", "\u{4e2d}\u{6587} text", "   spaced   out   "]
                .map(String::from),
        );
        let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
        let fast = t.encode_batch(&refs);
        let reference = t.encode_batch_reference(&refs);
        let ascii = refs.iter().filter(|s| s.is_ascii()).count();
        assert!(ascii > 1000, "most SMS texts are ASCII: {ascii}");
        for (i, (f, r)) in fast.iter().zip(&reference).enumerate() {
            assert_eq!(f, r, "text {i}: {:?}", refs[i]);
        }
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
