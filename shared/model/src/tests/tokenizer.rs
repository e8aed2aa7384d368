//! The tokenizer: no fixed padding, truncation at `max_len`, clear errors.

use super::tiny;
use crate::TextTokenizer;

#[test]
fn tokenizer_override_removes_fixed_padding() {
    let (dir, _, _) = tiny(1);
    let tok = TextTokenizer::from_file(dir.path().join("tokenizer.json"), 128).unwrap();
    let e = tok.encode("The cat sat on the mat.").unwrap();
    // [CLS] the cat sat on the mat . [SEP]
    assert_eq!(e.ids.len(), 9, "{:?}", e.ids);
    assert!(!e.truncated);
    assert_eq!(e.ids[0], 2, "[CLS] first");
    assert_eq!(*e.ids.last().unwrap(), 3, "[SEP] last");
    assert!(!e.ids.contains(&0), "no padding: {:?}", e.ids);
    assert_eq!(tok.pad_id(), 0);
    assert_eq!(tok.max_len(), 128);
    // A model directory works as the path too.
    let tok2 = TextTokenizer::from_file(dir.path(), 128).unwrap();
    assert_eq!(tok2.encode("The cat sat on the mat.").unwrap(), e);
}

#[test]
fn tokenizer_batch_is_not_padded_either() {
    let (_d, tok, _) = tiny(1);
    let out = tok
        .encode_batch(&["hello", "the quick brown fox jumps over the lazy dog"])
        .unwrap();
    assert_eq!(out[0].ids.len(), 3);
    assert_eq!(out[1].ids.len(), 11);
    assert_eq!(out[0], tok.encode("hello").unwrap());
    assert_eq!(
        out[1],
        tok.encode("the quick brown fox jumps over the lazy dog")
            .unwrap()
    );
}

#[test]
fn tokenizer_truncates_at_max_len_and_flags_it() {
    let (dir, _, _) = tiny(1);
    let tok = TextTokenizer::from_file(dir.path().join("tokenizer.json"), 8).unwrap();
    // Exactly 8 with the special tokens: not truncated.
    let exact = tok.encode("a b c d e f").unwrap();
    assert_eq!(exact.ids.len(), 8);
    assert!(!exact.truncated);
    // 9 tokens: cut to 8, right side, [SEP] kept.
    let over = tok.encode("a b c d e f g").unwrap();
    assert_eq!(over.ids.len(), 8);
    assert!(over.truncated);
    assert_eq!(
        over.ids[..7],
        exact.ids[..7],
        "right-side truncation keeps the start"
    );
    assert_eq!(*over.ids.last().unwrap(), 3);
    let long = "the quick brown fox jumps over the lazy dog ".repeat(20);
    let batch = tok.encode_batch(&["hello", &long]).unwrap();
    assert!(!batch[0].truncated);
    assert!(batch[1].truncated);
    assert_eq!(batch[1].ids.len(), 8);
}

#[test]
fn tokenizer_rejects_max_len_that_leaves_no_room() {
    let (dir, _, _) = tiny(1);
    let err = TextTokenizer::from_file(dir.path().join("tokenizer.json"), 2).unwrap_err();
    assert!(err.to_string().contains("special tokens"), "{err}");
    let err = TextTokenizer::from_file(dir.path().join("nope.json"), 16).unwrap_err();
    assert!(err.to_string().contains("does not exist"), "{err}");
}

#[test]
fn tokenizer_spells_unknown_words_and_unks_digits() {
    let (_d, tok, _) = tiny(1);
    let e = tok.encode("zebra 42").unwrap();
    // [CLS] z ##e ##b ##r ##a [UNK] [SEP]
    assert_eq!(e.ids.len(), 8, "{:?}", e.ids);
    assert_eq!(e.ids[6], 1);
}
