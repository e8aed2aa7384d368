//! BERT's tokenization of ASCII text done on bytes: the same ids as the library, without
//! its per-character offset tracking and per-token strings.

use std::collections::HashMap;

use tokenizers::models::ModelWrapper;
use tokenizers::normalizers::NormalizerWrapper;
use tokenizers::pre_tokenizers::PreTokenizerWrapper;
use tokenizers::{Model as _, Tokenizer};

/// BERT tokenization of ASCII text on bytes, for a tokenizer made of BERT's normalizer
/// (clean text, optionally lowercase), BERT's pre-tokenizer and a WordPiece model. On
/// ASCII, the normalizer's accent and Chinese-character steps change nothing, so each
/// step is a byte rule:
/// - clean text: NUL and the other control bytes are dropped, tab / newline / CR are spaces;
/// - the pre-tokenizer splits on whitespace and makes each punctuation byte its own word;
/// - WordPiece: greedy longest match from the vocabulary, continuations looked up
///   with their `##` prefix; a word with no full match, or longer than the model's
///   limit, is one `[UNK]`.
pub(super) struct AsciiWordPiece {
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
    pub(super) prefix: Vec<u32>,
    pub(super) suffix: Vec<u32>,
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
pub(super) struct AsciiScratch {
    word: Vec<u8>,
    ids: Vec<u32>,
}

impl AsciiWordPiece {
    pub(super) fn for_tokenizer(inner: &Tokenizer) -> Option<Self> {
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
    pub(super) fn encode<'s>(
        &self,
        text: &str,
        scratch: &'s mut AsciiScratch,
    ) -> Option<&'s [u32]> {
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
}
