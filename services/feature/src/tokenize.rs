//! Tokenization with the model's `tokenizer.json` and a truncation policy.
//!
//! Token ids include the special tokens (`[CLS]` … `[SEP]`), which count towards
//! `--max-tokens`; the inference worker uses them as they are and batches by their count.

use std::path::Path;

use aifab_core::dead_letter::ErrorKind;
use aifab_core::messages::Truncation;
use aifab_model::TextTokenizer;
use std::collections::HashMap;

use tokenizers::models::ModelWrapper;
use tokenizers::normalizers::NormalizerWrapper;
use tokenizers::pre_tokenizers::PreTokenizerWrapper;
use tokenizers::{
    Model as _, Tokenizer, TruncationDirection, TruncationParams, TruncationStrategy,
};

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
                    "field \"text\": {} tokens, more than the maximum of {} (truncation policy: reject)",
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
                reason: "field \"text\": no tokens besides the special ones (only characters the tokenizer drops, such as control or zero-width characters)".into(),
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

/// BERT tokenization of ASCII text on bytes, for a tokenizer made of BERT's normalizer
/// (clean text, optionally lowercase), BERT's pre-tokenizer and a WordPiece model. On
/// ASCII, the normalizer's accent and Chinese-character steps change nothing, so each
/// step is a byte rule:
/// - clean text: NUL and the other control bytes are dropped, tab / newline / CR are spaces;
/// - the pre-tokenizer splits on whitespace and makes each punctuation byte its own word;
/// - WordPiece: greedy longest match from the vocabulary, continuations looked up
///   with their `##` prefix; a word with no full match, or longer than the model's
///   limit, is one `[UNK]`.
struct AsciiWordPiece {
    lowercase: bool,
    /// Vocabulary entries as they may start a word.
    starts: VocabMap,
    /// Entries that carry the continuation prefix, keyed without it.
    continues: VocabMap,
    /// The longest key of each map: no match is tried beyond it.
    longest_start: usize,
    longest_continue: usize,
    unk: u32,
    max_word: usize,
    /// The post-processor's special tokens before and after the content (`[CLS]`, `[SEP]`).
    prefix: Vec<u32>,
    suffix: Vec<u32>,
    /// Added tokens' contents, lowercased: a text that spells one out goes to the
    /// library, which matches them before anything else.
    added: Vec<Vec<u8>>,
    /// The bytes an added token starts with (lowercased): BERT's all start with `[`, which
    /// most texts never contain, so one scan for them usually settles it.
    added_first: [bool; 256],
}

/// A vocabulary by its bytes. foldhash rather than the standard SipHash: a lookup per
/// word piece is the tokenizer's hottest step, and the table is fixed once loaded (no
/// inserts an input could steer).
type VocabMap = HashMap<Box<[u8]>, u32, foldhash::fast::RandomState>;

/// Buffers one batch's texts reuse.
#[derive(Default)]
struct AsciiScratch {
    word: Vec<u8>,
    ids: Vec<u32>,
}

impl AsciiWordPiece {
    fn for_tokenizer(inner: &Tokenizer) -> Option<Self> {
        let Some(NormalizerWrapper::BertNormalizer(n)) = inner.get_normalizer() else {
            return None;
        };
        if !n.clean_text
            || !matches!(
                inner.get_pre_tokenizer(),
                Some(PreTokenizerWrapper::BertPreTokenizer(_))
            )
        {
            return None;
        }
        let ModelWrapper::WordPiece(wp) = inner.get_model() else {
            return None;
        };
        let (prefix, suffix) = special_frame(inner)?;
        let cont = wp.continuing_subword_prefix.as_bytes();
        let (mut starts, mut continues) = (VocabMap::default(), VocabMap::default());
        for (token, id) in wp.get_vocab() {
            let bytes = token.as_bytes();
            if let Some(rest) = bytes
                .strip_prefix(cont)
                .filter(|r| !r.is_empty() && !cont.is_empty())
            {
                continues.insert(rest.into(), id);
            }
            starts.insert(bytes.into(), id);
        }
        let longest = |m: &VocabMap| m.keys().map(|k| k.len()).max().unwrap_or(0);
        let added: Vec<Vec<u8>> = inner
            .get_added_vocabulary()
            .get_vocab()
            .keys()
            .map(|k| k.to_ascii_lowercase().into_bytes())
            .collect();
        let mut added_first = [false; 256];
        for a in &added {
            if let Some(&b) = a.first() {
                added_first[b as usize] = true;
            }
        }
        Some(AsciiWordPiece {
            lowercase: n.lowercase,
            longest_start: longest(&starts),
            longest_continue: longest(&continues),
            unk: *starts.get(wp.unk_token.as_bytes())?,
            starts,
            continues,
            max_word: wp.max_input_chars_per_word,
            prefix,
            suffix,
            added,
            added_first,
        })
    }

    /// The content ids of `text` (no special tokens), or `None` when it is not for
    /// this path: not ASCII, or it may contain an added token (spelt out, or once control
    /// bytes are dropped; those are rare enough to leave to the library).
    fn encode<'s>(&self, text: &str, scratch: &'s mut AsciiScratch) -> Option<&'s [u32]> {
        let bytes = text.as_bytes();
        let dropped_byte = |b: &u8| matches!(b, 0x00..=0x08 | 0x0b | 0x0c | 0x0e..=0x1f | 0x7f);
        let may_hold_added = || {
            bytes
                .iter()
                .any(|b| self.added_first[b.to_ascii_lowercase() as usize])
        };
        if !text.is_ascii()
            || bytes.iter().any(dropped_byte)
            || (may_hold_added() && self.added.iter().any(|a| contains_ignore_case(bytes, a)))
        {
            return None;
        }
        let AsciiScratch { word, ids } = scratch;
        ids.clear();
        word.clear();
        for &b in bytes {
            match b {
                b' ' | b'\t' | b'\n' | b'\r' => self.flush_word(word, ids),
                _ if b.is_ascii_punctuation() => {
                    self.flush_word(word, ids);
                    word.push(b);
                    self.flush_word(word, ids);
                }
                _ => word.push(if self.lowercase {
                    b.to_ascii_lowercase()
                } else {
                    b
                }),
            }
        }
        self.flush_word(word, ids);
        Some(ids)
    }

    /// WordPiece one word into `ids` and empty `word`.
    fn flush_word(&self, word: &mut Vec<u8>, ids: &mut Vec<u32>) {
        if word.is_empty() {
            return;
        }
        if word.len() > self.max_word {
            ids.push(self.unk);
            word.clear();
            return;
        }
        let mark = ids.len();
        let mut start = 0;
        while start < word.len() {
            let (map, longest) = if start == 0 {
                (&self.starts, self.longest_start)
            } else {
                (&self.continues, self.longest_continue)
            };
            let mut end = word.len().min(start + longest);
            let found = loop {
                if end <= start {
                    break None;
                }
                if let Some(&id) = map.get(&word[start..end]) {
                    break Some(id);
                }
                end -= 1;
            };
            match found {
                Some(id) => {
                    ids.push(id);
                    start = end;
                }
                None => {
                    ids.truncate(mark);
                    ids.push(self.unk);
                    break;
                }
            }
        }
        word.clear();
    }
}

/// The ids the post-processor puts around a single sequence, found by running it on a
/// one-token sequence with an id no vocabulary has.
fn special_frame(inner: &Tokenizer) -> Option<(Vec<u32>, Vec<u32>)> {
    const PROBE: u32 = u32::MAX;
    let mut plain = inner.clone();
    plain.with_truncation(None).ok()?;
    let probe = tokenizers::Encoding::from_tokens(
        vec![tokenizers::Token::new(PROBE, "probe".into(), (0, 1))],
        0,
    );
    let ids = plain
        .post_process(probe, None, true)
        .ok()?
        .get_ids()
        .to_vec();
    let at = ids.iter().position(|&id| id == PROBE)?;
    (ids.iter().filter(|&&id| id == PROBE).count() == 1)
        .then(|| (ids[..at].to_vec(), ids[at + 1..].to_vec()))
}

fn contains_ignore_case(haystack: &[u8], lower_needle: &[u8]) -> bool {
    let Some(&first) = lower_needle.first() else {
        return false;
    };
    let mut from = 0;
    while let Some(i) = haystack[from..]
        .iter()
        .position(|b| b.to_ascii_lowercase() == first)
    {
        let at = from + i;
        if haystack.len() - at < lower_needle.len() {
            return false;
        }
        if haystack[at..at + lower_needle.len()].eq_ignore_ascii_case(lower_needle) {
            return true;
        }
        from = at + 1;
    }
    false
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

    #[test]
    fn added_tokens_are_found_in_any_case_and_position() {
        assert!(
            contains_ignore_case(b"[[MASK] x", b"[mask]"),
            "after a false start"
        );
        assert!(contains_ignore_case(b"x [Mask]", b"[mask]"), "at the end");
        assert!(
            !contains_ignore_case(b"x [mask", b"[mask]"),
            "cut off by the end"
        );
        assert!(
            !contains_ignore_case(b"[ma", b"[mask]"),
            "shorter than the needle"
        );
        assert!(
            !contains_ignore_case(b"mask", b""),
            "an empty needle matches nothing"
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
