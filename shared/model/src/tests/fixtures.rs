//! The tiny BERT fixture itself: deterministic in its seed, padded like the packaged
//! tokenizer.

use super::Scratch;
use crate::testing::*;

#[test]
fn tiny_bert_is_deterministic_in_the_seed() {
    let (a, b, c) = (Scratch::new("a"), Scratch::new("b"), Scratch::new("c"));
    write_tiny_bert(a.path(), 7).unwrap();
    write_tiny_bert(b.path(), 7).unwrap();
    write_tiny_bert(c.path(), 8).unwrap();
    let read = |d: &Scratch, f: &str| std::fs::read(d.path().join(f)).unwrap();
    for f in [
        "config.json",
        "model.safetensors",
        "tokenizer.json",
        "vocab.txt",
    ] {
        assert_eq!(read(&a, f), read(&b, f), "{f} differs for the same seed");
    }
    assert_ne!(read(&a, "model.safetensors"), read(&c, "model.safetensors"));
    let v = tiny_vocab();
    assert!(v.len() >= 100 && v.len() <= 130, "vocab size {}", v.len());
    assert_eq!(&v[..5], ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]);
}

#[test]
fn tiny_tokenizer_json_pads_to_128_as_packaged() {
    // The fixture must behave like the packaged file, or the override test proves nothing.
    let dir = Scratch::new("raw");
    write_tiny_bert(dir.path(), 1).unwrap();
    let raw = tokenizers::Tokenizer::from_file(dir.path().join("tokenizer.json")).unwrap();
    let e = raw.encode("the cat sat", true).unwrap();
    assert_eq!(e.get_ids().len(), TINY_PACKAGED_PAD);
}
