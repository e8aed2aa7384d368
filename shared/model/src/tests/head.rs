//! Classification heads: saving and loading, softmax, and errors that name what is wrong.

use std::path::Path;
use std::sync::Arc;

use candle_core::{DType, Device, Tensor};

use super::{tiny, Scratch};
use crate::head::{softmax, BIAS_TENSOR, HEAD_FILE, LABELS_FILE, WEIGHT_TENSOR};
use crate::testing::*;
use crate::{ClassificationHead, Classifier};

#[test]
fn head_round_trips_and_softmax_sums_to_one() {
    let d = Scratch::new("head");
    write_random_head(d.path(), TINY_HIDDEN, &["neg", "neu", "pos"], 4).unwrap();
    let head = ClassificationHead::load(d.path()).unwrap();
    assert_eq!(head.labels(), ["neg", "neu", "pos"]);
    assert_eq!(head.hidden_size(), TINY_HIDDEN);
    let again = Scratch::new("head2");
    head.save(again.path()).unwrap();
    assert_eq!(ClassificationHead::load(again.path()).unwrap(), head);

    let embs: Vec<Vec<f32>> = (0..5)
        .map(|k| {
            (0..TINY_HIDDEN)
                .map(|i| ((i * 7 + k * 3) % 11) as f32 / 11.0 - 0.5)
                .collect()
        })
        .collect();
    let scores = head.scores(&embs);
    assert_eq!(scores.len(), 5);
    for s in &scores {
        assert_eq!(s.len(), 3);
        let sum: f32 = s.iter().sum();
        assert!((sum - 1.0).abs() < 1e-6, "sum {sum}");
        assert!(s.iter().all(|p| *p >= 0.0 && *p <= 1.0));
    }
    let (label, map) = head.predict(&embs[0]).unwrap();
    assert_eq!(map.len(), 3);
    let best = map.iter().max_by(|a, b| a.1.total_cmp(b.1)).unwrap().0;
    assert_eq!(&label, best);
    assert!((map.values().sum::<f32>() - 1.0).abs() < 1e-6);
}

#[test]
fn softmax_is_stable_and_argmax_is_right() {
    let p = softmax(&[1000.0, 1001.0, 999.0]);
    assert!(p.iter().all(|x| x.is_finite()));
    assert!((p.iter().sum::<f32>() - 1.0).abs() < 1e-6);
    assert!(p[1] > p[0] && p[0] > p[2]);
    let head = ClassificationHead::new(
        vec!["a".into(), "b".into()],
        2,
        vec![1.0, 0.0, 0.0, 1.0],
        vec![0.0, 0.0],
    )
    .unwrap();
    assert_eq!(head.predict(&[0.2, 0.9]).unwrap().0, "b");
    assert_eq!(head.predict(&[0.9, 0.2]).unwrap().0, "a");
    let s = head.scores(&[vec![0.0, 0.0]]);
    assert!((s[0][0] - 0.5).abs() < 1e-7);
}

fn write_head_tensors(dir: &Path, weight: Tensor, bias: Tensor, labels: &[&str]) {
    std::fs::create_dir_all(dir).unwrap();
    let t: std::collections::HashMap<String, Tensor> = [
        (WEIGHT_TENSOR.to_string(), weight),
        (BIAS_TENSOR.to_string(), bias),
    ]
    .into();
    candle_core::safetensors::save(&t, dir.join(HEAD_FILE)).unwrap();
    std::fs::write(
        dir.join(LABELS_FILE),
        serde_json::to_string(labels).unwrap(),
    )
    .unwrap();
}

#[test]
fn head_shape_errors_are_clear() {
    let cpu = &Device::Cpu;
    let d = Scratch::new("bad-head");

    // bias length differs from weight rows
    write_head_tensors(
        d.path(),
        Tensor::zeros((3, 8), DType::F32, cpu).unwrap(),
        Tensor::zeros(2, DType::F32, cpu).unwrap(),
        &["a", "b", "c"],
    );
    let err = ClassificationHead::load(d.path()).unwrap_err().to_string();
    assert!(err.contains("2 entries") && err.contains("3 rows"), "{err}");

    // labels count differs
    write_head_tensors(
        d.path(),
        Tensor::zeros((3, 8), DType::F32, cpu).unwrap(),
        Tensor::zeros(3, DType::F32, cpu).unwrap(),
        &["a", "b"],
    );
    let err = ClassificationHead::load(d.path()).unwrap_err().to_string();
    assert!(
        err.contains("2 labels") && err.contains("3 classes"),
        "{err}"
    );

    // weight not a matrix
    write_head_tensors(
        d.path(),
        Tensor::zeros(24, DType::F32, cpu).unwrap(),
        Tensor::zeros(3, DType::F32, cpu).unwrap(),
        &["a", "b", "c"],
    );
    let err = ClassificationHead::load(d.path()).unwrap_err().to_string();
    assert!(
        err.contains("classifier.weight") && err.contains("[24]"),
        "{err}"
    );

    // duplicate labels
    write_head_tensors(
        d.path(),
        Tensor::zeros((2, 8), DType::F32, cpu).unwrap(),
        Tensor::zeros(2, DType::F32, cpu).unwrap(),
        &["a", "a"],
    );
    let err = ClassificationHead::load(d.path()).unwrap_err().to_string();
    assert!(err.contains("more than once"), "{err}");

    // a missing tensor names what was found
    std::fs::create_dir_all(d.path()).unwrap();
    let t: std::collections::HashMap<String, Tensor> = [(
        "dense.weight".to_string(),
        Tensor::zeros((2, 8), DType::F32, cpu).unwrap(),
    )]
    .into();
    candle_core::safetensors::save(&t, d.path().join(HEAD_FILE)).unwrap();
    let err = ClassificationHead::load(d.path()).unwrap_err().to_string();
    assert!(
        err.contains("classifier.weight is missing") && err.contains("dense.weight"),
        "{err}"
    );

    // missing files
    let empty = Scratch::new("empty-head");
    let err = ClassificationHead::load(empty.path())
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("head.safetensors") && err.contains("does not exist"),
        "{err}"
    );

    // f16 weights are accepted (converted)
    write_head_tensors(
        d.path(),
        Tensor::ones((2, 8), DType::F16, cpu).unwrap(),
        Tensor::zeros(2, DType::F16, cpu).unwrap(),
        &["x", "y"],
    );
    let h = ClassificationHead::load(d.path()).unwrap();
    assert_eq!(h.weight(), &[1.0f32; 16][..]);
}

#[test]
fn head_hidden_mismatch_names_both_sizes() {
    let (_bd, _, enc) = tiny(1);
    let hd = Scratch::new("head48");
    write_random_head(hd.path(), 48, &["a", "b"], 1).unwrap();
    let enc = Arc::new(enc);
    let err = Classifier::load_head(enc.clone(), hd.path(), "v1")
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("48") && err.contains("32") && err.contains("hidden size mismatch"),
        "{err}"
    );
    let head = ClassificationHead::load(hd.path()).unwrap();
    let err = Classifier::new(enc, head.clone(), "v1")
        .unwrap_err()
        .to_string();
    assert!(err.contains("size 48") && err.contains("size 32"), "{err}");
    assert!(head.try_scores(&[vec![0.0; 32]]).is_err());
}
