//! Tokenization with the model's `tokenizer.json` and a truncation policy.
//!
//! Token ids include the special tokens (`[CLS]` … `[SEP]`), which count towards
//! `--max-tokens`; the inference worker uses them as they are and batches by their count.
//! ASCII texts take a fast path of the same rules on bytes ([`ascii`]).

mod ascii;

use std::path::Path;

use aifab_core::dead_letter::ErrorKind;
use aifab_core::messages::Truncation;
use aifab_model::TextTokenizer;
use tokenizers::{Tokenizer, TruncationDirection, TruncationParams, TruncationStrategy};

use self::ascii::{AsciiScratch, AsciiWordPiece};

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
    pub kind: ErrorKind,
    pub reason: String,
}

pub struct FeatureTokenizer {
    inner: Tokenizer,
    /// For ASCII texts: BERT's normalizer, pre-tokenizer and WordPiece done on bytes
    /// ([`AsciiWordPiece`]). The library tracks the offsets of every character and
    /// token through each step and allocates a string per token, which was most of
    /// this service's CPU per message; the ids are the same (tested against it).
    ascii: Option<AsciiWordPiece>,
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
        inner
            .with_truncation(truncation)
            .map_err(|e| anyhow::anyhow!("setting truncation: {e}"))?;
        let ascii = AsciiWordPiece::for_tokenizer(&inner);
        Ok(FeatureTokenizer {
            inner,
            ascii,
            max_tokens,
            policy,
        })
    }

    /// Whether ASCII texts take the fast path (the tokenizer's normalizer is BERT's).
    pub fn has_ascii_path(&self) -> bool {
        self.ascii.is_some()
    }

    pub fn max_tokens(&self) -> usize {
        self.max_tokens
    }

    /// Tokenize texts: ASCII ones through the fast path when there is one, the rest
    /// (and texts that spell out an added token such as `[CLS]`) through the library.
    pub fn encode_batch(&self, texts: &[&str]) -> Vec<Result<Tokens, TokenizeError>> {
        let Some(ascii) = &self.ascii else {
            return self.encode_with(&self.inner, texts);
        };
        let mut out: Vec<Option<Result<Tokens, TokenizeError>>> = Vec::with_capacity(texts.len());
        let mut slow = Vec::new();
        let mut scratch = AsciiScratch::default();
        for (i, text) in texts.iter().enumerate() {
            match ascii.encode(text, &mut scratch) {
                Some(content) => out.push(Some(self.finish_ascii(ascii, content))),
                None => {
                    slow.push(i);
                    out.push(None);
                }
            }
        }
        let slow_out = self.encode_with(
            &self.inner,
            &slow.iter().map(|&i| texts[i]).collect::<Vec<_>>(),
        );
        for (i, r) in slow.into_iter().zip(slow_out) {
            out[i] = Some(r);
        }
        out.into_iter()
            .map(|r| r.expect("every text tokenized once"))
            .collect()
    }

    /// Tokenize with the library's own path only (the reference for the fast one).
    pub fn encode_batch_reference(&self, texts: &[&str]) -> Vec<Result<Tokens, TokenizeError>> {
        self.encode_with(&self.inner, texts)
    }

    fn encode_with(
        &self,
        tokenizer: &Tokenizer,
        texts: &[&str],
    ) -> Vec<Result<Tokens, TokenizeError>> {
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
                    Err(e) => Err(TokenizeError {
                        kind: ErrorKind::TokenizeFailed,
                        reason: format!("text: the tokenizer failed: {e}"),
                    }),
                })
                .collect(),
        }
    }

    fn finish(&self, e: tokenizers::Encoding) -> Result<Tokens, TokenizeError> {
        let truncated = !e.get_overflowing().is_empty();
        let content = e
            .get_special_tokens_mask()
            .iter()
            .filter(|&&special| special == 0)
            .count();
        self.checked(e.get_ids().to_vec(), content, truncated)
    }

    /// The fast path's content ids framed by the special tokens, truncated as the
    /// library's `post_process` does: the limit counts the special tokens, head keeps the
    /// first ids, tail the last.
    fn finish_ascii(
        &self,
        ascii: &AsciiWordPiece,
        content: &[u32],
    ) -> Result<Tokens, TokenizeError> {
        let room = self
            .max_tokens
            .saturating_sub(ascii.prefix.len() + ascii.suffix.len());
        let (kept, truncated) = match self.policy {
            TruncationPolicy::Reject => (content, false),
            _ if content.len() <= room => (content, false),
            TruncationPolicy::Head => (&content[..room], true),
            TruncationPolicy::Tail => (&content[content.len() - room..], true),
        };
        let mut ids = Vec::with_capacity(ascii.prefix.len() + kept.len() + ascii.suffix.len());
        ids.extend_from_slice(&ascii.prefix);
        ids.extend_from_slice(kept);
        ids.extend_from_slice(&ascii.suffix);
        self.checked(ids, kept.len(), truncated)
    }

    /// `content`: the ids that are not special tokens.
    fn checked(
        &self,
        ids: Vec<u32>,
        content: usize,
        truncated: bool,
    ) -> Result<Tokens, TokenizeError> {
        if self.policy == TruncationPolicy::Reject && ids.len() > self.max_tokens {
            return Err(TokenizeError {
                kind: ErrorKind::TooManyTokens,
                reason: format!(
                    "field \"text\": {} tokens, more than the maximum of {} (truncation policy: \
                     reject)",
                    ids.len(),
                    self.max_tokens
                ),
            });
        }
        // Text the normalizer strips whole (control, zero-width or lone combining
        // characters) passes ingest's checks but would reach the model as [CLS] [SEP].
        if content == 0 {
            return Err(TokenizeError {
                kind: ErrorKind::EmptyText,
                reason: "field \"text\": no tokens besides the special ones (only characters the \
                         tokenizer drops, such as control or zero-width characters)"
                    .into(),
            });
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
        let words =
            "the cat sat on the mat and the dog sat on the mat and the fox jumps over the lazy dog";
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
        assert_eq!(
            t.ids[1..],
            all[all.len() - 7..],
            "tail: the last 6 tokens + [SEP]"
        );
    }

    #[test]
    fn reject_refuses_long_texts_with_the_count() {
        let (_d, t) = tiny(TruncationPolicy::Reject, 6);
        let out = t.encode_batch(&["the cat sat", "the cat sat on the mat"]);
        assert_eq!(out[0].as_ref().unwrap().truncation, Truncation::None);
        let e = out[1].as_ref().unwrap_err();
        assert_eq!(e.kind, ErrorKind::TooManyTokens);
        assert!(
            e.reason.contains("8 tokens, more than the maximum of 6"),
            "{}",
            e.reason
        );
    }

    #[test]
    fn texts_the_normalizer_drops_whole_have_no_tokens() {
        let (_d, t) = tiny(TruncationPolicy::Head, 16);
        // A NUL, a zero-width space, a lone combining accent, and control bytes: ingest's
        // whitespace check lets them through, the normalizer strips them.
        let out = t.encode_batch(&["\u{0}", "\u{200b}", "\u{301}", "\x01\x02", ""]);
        for (i, r) in out.iter().enumerate() {
            let e = r.as_ref().expect_err(&format!("text {i} has no tokens"));
            assert_eq!(e.kind, ErrorKind::EmptyText, "text {i}: {}", e.reason);
        }
        assert!(
            t.encode_batch(&["\u{200b}cat"])[0].is_ok(),
            "a word next to them still counts"
        );
    }

    /// Whatever the fast path takes, it gives the library's ids: words in and out of the
    /// tiny vocabulary (so `##` pieces and `[UNK]`), punctuation, whitespace, control
    /// bytes, spelt-out special tokens, a word over the length limit, truncation.
    #[test]
    fn the_ascii_path_matches_the_library_on_the_tiny_tokenizer() {
        let long = "cat".repeat(40);
        let texts = [
            "the cat sat",
            "The CAT, sat!",
            "cats catsat xyzzy",
            "  a\tb\nc\rd  ",
            "a\x0bb\x00c\x7f",
            "[CLS] the [mask]",
            "!!!...???",
            "",
            " ",
            long.as_str(),
            "the cat sat on the mat and the dog sat on the mat and the fox",
            "caf\u{e9} the",
            "it's 12:30 (or 13:00)",
        ];
        for (policy, max) in [
            (TruncationPolicy::Head, 8),
            (TruncationPolicy::Tail, 8),
            (TruncationPolicy::Reject, 8),
            (TruncationPolicy::Head, 64),
        ] {
            let (_d, t) = tiny(policy, max);
            assert!(t.has_ascii_path());
            assert_eq!(
                t.encode_batch(&texts),
                t.encode_batch_reference(&texts),
                "{policy:?} {max}"
            );
        }
    }

    /// The fast path gives the library's ids and truncation on every text of the real
    /// model's tokenizer: the SMS test split, plus texts that exercise the normalizer.
    #[test]
    fn the_ascii_path_matches_the_library_on_the_real_tokenizer() {
        let dir = aifab_model::testing::real_model_dir();
        let data = std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../aifab/data/sms_spam/test.jsonl"
        ))
        .expect("services/aifab/data/sms_spam/test.jsonl");
        let mut texts: Vec<String> = data
            .lines()
            .map(|l| {
                serde_json::from_str::<serde_json::Value>(l).unwrap()["text"]
                    .as_str()
                    .unwrap()
                    .to_string()
            })
            .collect();
        texts.extend(
            [
                "",
                "\x00\x01",
                "Tab\tand\nnew\rline",
                "DEL\x7fhere",
                "UPPER lower MiXeD 123 !?.,;:'\"()[]{}<>@#$%^&*_+=~`|\\/",
                "don't won't y'all",
                "a\x0bb\x0cc",
                "caf\u{e9} na\u{ef}ve",
                "\u{4e2d}\u{6587} text",
                "   spaced   out   ",
                "[CLS] hi [SEP]",
                "a [mask] b",
                "unaffable xqzjvk brrrrrr",
                "antidisestablishmentarianism",
                "e-mail me@x.com http://www.example.com/a?b=c&d=e #tag $5 ~ok~ a_b 1,000.50",
            ]
            .map(String::from),
        );
        texts.push("supercalifragilistic".repeat(6));
        let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
        let ascii = refs.iter().filter(|s| s.is_ascii()).count();
        assert!(ascii > 1000, "most SMS texts are ASCII: {ascii}");
        for (policy, max) in [
            (TruncationPolicy::Head, 32),
            (TruncationPolicy::Tail, 32),
            (TruncationPolicy::Reject, 32),
            (TruncationPolicy::Head, 128),
        ] {
            let t = FeatureTokenizer::load(&dir, max, policy).unwrap();
            assert!(t.has_ascii_path());
            let fast = t.encode_batch(&refs);
            let reference = t.encode_batch_reference(&refs);
            for (i, (f, r)) in fast.iter().zip(&reference).enumerate() {
                assert_eq!(f, r, "{policy:?} {max}, text {i}: {:?}", refs[i]);
            }
        }
    }

    #[test]
    fn max_tokens_must_leave_room_for_special_tokens() {
        let dir = tempfile::tempdir().unwrap();
        aifab_model::testing::write_tiny_bert(dir.path(), 1).unwrap();
        let e = FeatureTokenizer::load(dir.path(), 2, TruncationPolicy::Head)
            .err()
            .unwrap();
        assert!(e.to_string().contains("special tokens"), "{e}");
        let e = FeatureTokenizer::load(Path::new("/nonexistent"), 16, TruncationPolicy::Head)
            .err()
            .unwrap();
        assert!(e.to_string().contains("does not exist"), "{e}");
    }
}
