//! The classifier: an encoder and a head together, on a batch and across threads.

use std::sync::Arc;

use super::{tiny, Scratch};
use crate::testing::*;
use crate::{ClassificationHead, Classifier, Encoder, ModelError, TextTokenizer};

#[test]
fn classifier_classifies_a_batch() {
    let (_bd, tok, enc) = tiny(2);
    let hd = Scratch::new("head");
    write_random_head(hd.path(), TINY_HIDDEN, &["negative", "positive"], 11).unwrap();
    let clf = Classifier::load_head(Arc::new(enc), hd.path(), "v7").unwrap();
    assert_eq!(clf.version, "v7");
    let texts = ["i love this movie", "terrible film", "hello"];
    let ids: Vec<Vec<u32>> = texts.iter().map(|t| tok.encode(t).unwrap().ids).collect();
    let refs: Vec<&[u32]> = ids.iter().map(|v| v.as_slice()).collect();
    let out = clf.classify(&refs).unwrap();
    assert_eq!(out.len(), 3);
    for (i, c) in out.iter().enumerate() {
        assert_eq!(c.scores.len(), 2);
        assert!((c.scores.values().sum::<f32>() - 1.0).abs() < 1e-6);
        let best = c.scores.iter().max_by(|a, b| a.1.total_cmp(b.1)).unwrap().0;
        assert_eq!(&c.label, best);
        // Same as classifying alone (padding invariance carries through the head).
        let alone = clf.classify(&[refs[i]]).unwrap().remove(0);
        assert_eq!(alone.label, c.label);
        for (k, v) in &c.scores {
            assert!((alone.scores[k] - v).abs() < 1e-5);
        }
    }
    let json = serde_json::to_value(&out[0]).unwrap();
    assert!(json["label"].is_string() && json["scores"].is_object());
    assert!(clf.classify(&[]).unwrap().is_empty());
}

#[test]
fn model_types_can_be_shared_across_threads() {
    fn send_sync<T: Send + Sync>() {}
    send_sync::<Encoder>();
    send_sync::<Classifier>();
    send_sync::<ClassificationHead>();
    send_sync::<TextTokenizer>();
    send_sync::<ModelError>();
}
