//! Tests on the tiny random BERT (fast; no real model needed).

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use candle_core::{DType, Device, Tensor};

use crate::head::{softmax, BIAS_TENSOR, HEAD_FILE, LABELS_FILE, WEIGHT_TENSOR};
use crate::testing::*;
use crate::*;

/// A scratch directory removed on drop.
struct Scratch(PathBuf);

impl Scratch {
    fn new(tag: &str) -> Self {
        static N: AtomicUsize = AtomicUsize::new(0);
        let p = std::env::temp_dir().join(format!(
            "aifab-model-test-{}-{}-{tag}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).unwrap();
        Self(p)
    }
    fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn tiny(seed: u64) -> (Scratch, TextTokenizer, Encoder) {
    let dir = Scratch::new("bert");
    write_tiny_bert(dir.path(), seed).unwrap();
    let tok = TextTokenizer::from_file(dir.path().join("tokenizer.json"), 32).unwrap();
    let enc = Encoder::load(dir.path(), &Device::Cpu).unwrap();
    (dir, tok, enc)
}

fn cosine(a: &[f32], b: &[f32]) -> f64 {
    let dot: f64 = a.iter().zip(b).map(|(x, y)| *x as f64 * *y as f64).sum();
    let na: f64 = a.iter().map(|x| (*x as f64).powi(2)).sum::<f64>().sqrt();
    let nb: f64 = b.iter().map(|x| (*x as f64).powi(2)).sum::<f64>().sqrt();
    dot / (na * nb)
}

fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

// ---------------------------------------------------------------- fixtures

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

// ---------------------------------------------------------------- tokenizer

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

// ---------------------------------------------------------------- encoder

#[test]
fn encoder_reports_its_shape() {
    let (_d, _, enc) = tiny(1);
    assert_eq!(enc.hidden_size(), TINY_HIDDEN);
    assert_eq!(enc.max_position_embeddings(), TINY_MAX_POSITION);
    assert_eq!(enc.vocab_size(), tiny_vocab().len());
    assert_eq!(enc.dtype(), DType::F32);
    assert!(enc.device().is_cpu());
}

#[test]
fn embeddings_are_unit_norm_and_distinct() {
    let (_d, tok, enc) = tiny(3);
    let texts = [
        "hello world",
        "the cat sat on the mat",
        "i love this movie very much!",
        "bad",
    ];
    let ids: Vec<Vec<u32>> = texts.iter().map(|t| tok.encode(t).unwrap().ids).collect();
    let refs: Vec<&[u32]> = ids.iter().map(|v| v.as_slice()).collect();
    let out = enc.embed(&refs).unwrap();
    assert_eq!(out.len(), texts.len());
    for v in &out {
        assert_eq!(v.len(), TINY_HIDDEN);
        assert!(v.iter().all(|x| x.is_finite()));
        let norm: f32 = v.iter().map(|x| x * x).sum::<f32>().sqrt();
        assert!((norm - 1.0).abs() < 1e-5, "norm {norm}");
    }
    for i in 0..out.len() {
        for j in i + 1..out.len() {
            assert!(
                cosine(&out[i], &out[j]) < 0.9999,
                "{i} and {j} embed the same"
            );
        }
    }
    assert!(enc.embed(&[]).unwrap().is_empty());
}

#[test]
fn padding_does_not_change_an_embedding() {
    let (d, tok, fast) = tiny(5);
    let candle = Encoder::load_with_dtype(d.path(), &Device::Cpu, DType::F32).unwrap();
    for enc in [fast, candle] {
        padding_check(&tok, &enc);
    }
}

fn padding_check(tok: &TextTokenizer, enc: &Encoder) {
    let short = tok.encode("the cat sat").unwrap().ids;
    let long = tok
        .encode("the quick brown fox jumps over the lazy dog and the cat sat on the mat")
        .unwrap()
        .ids;
    assert!(long.len() > short.len() + 10);
    let alone = enc.embed(&[&short]).unwrap().remove(0);
    let batched = enc.embed(&[&long, &short]).unwrap();
    let d = max_abs_diff(&alone, &batched[1]);
    assert!(
        d < 1e-5,
        "short sequence changed by padding: max abs diff {d}"
    );
    let long_alone = enc.embed(&[&long]).unwrap().remove(0);
    let d = max_abs_diff(&long_alone, &batched[0]);
    assert!(
        d < 1e-5,
        "long sequence changed by batching: max abs diff {d}"
    );
    // And the mask matters: embedding the padded ids without a mask would differ.
    let mut padded = short.clone();
    padded.resize(long.len(), 0);
    let unmasked = enc.embed(&[&padded]).unwrap().remove(0);
    assert!(
        max_abs_diff(&alone, &unmasked) > 1e-3,
        "pad tokens had no effect at all?"
    );
}

#[test]
fn embed_matches_candle_transformers_bert_plus_manual_pooling() {
    // Our BERT (src/bert.rs) vs candle-transformers' BertModel in f32, with mean
    // pooling + L2 norm recomputed by hand.
    let (dir, tok, _) = tiny(9);
    let enc = Encoder::load_with_dtype(dir.path(), &Device::Cpu, DType::F32).unwrap();
    assert_eq!(enc.implementation(), EncoderImpl::Candle);
    let ids = tok.encode("hello world, this is a text").unwrap().ids;
    let got = enc.embed(&[&ids]).unwrap().remove(0);

    let cfg: candle_transformers::models::bert::Config =
        serde_json::from_str(&std::fs::read_to_string(dir.path().join("config.json")).unwrap())
            .unwrap();
    let vb = unsafe {
        candle_nn::VarBuilder::from_mmaped_safetensors(
            &[dir.path().join("model.safetensors")],
            DType::F32,
            &Device::Cpu,
        )
        .unwrap()
    };
    let bert = candle_transformers::models::bert::BertModel::load(vb, &cfg).unwrap();
    let t = Tensor::new(ids.as_slice(), &Device::Cpu)
        .unwrap()
        .unsqueeze(0)
        .unwrap();
    let hidden = bert.forward(&t, &t.zeros_like().unwrap(), None).unwrap();
    let rows: Vec<Vec<f32>> = hidden.squeeze(0).unwrap().to_vec2().unwrap();
    let mut mean = vec![0f64; TINY_HIDDEN];
    for r in &rows {
        for (m, x) in mean.iter_mut().zip(r) {
            *m += *x as f64 / rows.len() as f64;
        }
    }
    let norm = mean.iter().map(|x| x * x).sum::<f64>().sqrt();
    let want: Vec<f32> = mean.iter().map(|x| (x / norm) as f32).collect();
    assert!(max_abs_diff(&got, &want) < 1e-5);
}

#[test]
fn f16_embeddings_are_finite_and_close_to_f32() {
    // candle-transformers' BertModel gives NaN in f16; ours must not.
    let (dir, tok, enc32) = tiny(4);
    let enc16 = Encoder::load_with_dtype(dir.path(), &Device::Cpu, DType::F16).unwrap();
    assert_eq!(enc16.dtype(), DType::F16);
    let short = tok.encode("hello world").unwrap().ids;
    let long = tok
        .encode("the quick brown fox jumps over the lazy dog again and again")
        .unwrap()
        .ids;
    let a = enc32.embed(&[&short, &long]).unwrap();
    let b = enc16.embed(&[&short, &long]).unwrap();
    let alone = enc16.embed(&[&short]).unwrap().remove(0);
    for (x, y) in a.iter().zip(&b) {
        assert!(
            y.iter().all(|v| v.is_finite()),
            "f16 gave non-finite values"
        );
        assert!(cosine(x, y) > 0.999, "f16 vs f32 cosine {}", cosine(x, y));
    }
    assert!(
        cosine(&alone, &b[0]) > 0.9999,
        "f16 padding changed the embedding"
    );
}

#[test]
fn embed_rejects_bad_input() {
    let (_d, _, enc) = tiny(1);
    let empty: &[u32] = &[];
    assert!(enc
        .embed(&[empty])
        .unwrap_err()
        .to_string()
        .contains("no tokens"));
    let too_long = vec![5u32; TINY_MAX_POSITION + 1];
    let err = enc.embed(&[&too_long]).unwrap_err().to_string();
    assert!(
        err.contains("65 tokens") && err.contains("at most 64"),
        "{err}"
    );
    let err = enc.embed(&[&[2, 9999, 3]]).unwrap_err().to_string();
    assert!(err.contains("9999"), "{err}");
}

#[test]
fn an_unoverridden_tokenizer_would_break_the_tiny_model() {
    // Proves the fixture catches a regression of the padding override: raw
    // packaged padding gives 128 tokens, more than the tiny model's 64 positions.
    let (dir, _, enc) = tiny(1);
    let raw = tokenizers::Tokenizer::from_file(dir.path().join("tokenizer.json")).unwrap();
    let ids = raw.encode("hello", true).unwrap().get_ids().to_vec();
    assert!(enc.embed(&[&ids]).is_err());
}

#[test]
fn encoder_load_errors_are_clear() {
    let missing = Scratch::new("missing");
    let err = Encoder::load(missing.path().join("nope"), &Device::Cpu)
        .unwrap_err()
        .to_string();
    assert!(err.contains("does not exist"), "{err}");
    let (dir, _, _) = tiny(1);
    std::fs::remove_file(dir.path().join("model.safetensors")).unwrap();
    let err = Encoder::load(dir.path(), &Device::Cpu)
        .unwrap_err()
        .to_string();
    assert!(err.contains("model.safetensors"), "{err}");
}

// ---------------------------------------------------------------- head

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

// ---------------------------------------------------------------- classifier

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

// ---------------------------------------------------------------------------------
// The fast CPU path (src/cpu/) against plain candle on the tiny BERT.

fn tiny_texts() -> Vec<&'static str> {
    vec![
        "hello world",
        "the cat sat on the mat",
        "i love this movie very much!",
        "bad",
        "the quick brown fox jumps over the lazy dog and the cat sat on the mat again and again",
        "a",
        "terrible film, not good at all. i hate it",
    ]
}

fn fast_with(dir: &Path, isa: crate::cpu::ops::Isa, threads: usize) -> crate::cpu::FastBert {
    let cfg: candle_transformers::models::bert::Config =
        serde_json::from_str(&std::fs::read_to_string(dir.join("config.json")).unwrap()).unwrap();
    let bytes = std::fs::read(dir.join("model.safetensors")).unwrap();
    crate::cpu::FastBert::load(&bytes, &cfg, Some(threads), isa, crate::cpu::Precision::I16)
        .unwrap()
}

#[test]
fn cpu_default_is_the_fast_path_and_candle_can_be_forced() {
    let (dir, _, enc) = tiny(1);
    // The default unless AIFAB_ENCODER_IMPL says otherwise (CI does not set it).
    if std::env::var_os(EncoderImpl::ENV).is_none() {
        assert_eq!(enc.implementation(), EncoderImpl::FastI16);
    }
    let forced = |implementation, dtype| {
        Encoder::load_with_options(
            dir.path(),
            &Device::Cpu,
            EncoderOptions {
                implementation,
                dtype,
                threads: Some(1),
            },
        )
    };
    assert_eq!(
        forced(EncoderImpl::Candle, None).unwrap().implementation(),
        EncoderImpl::Candle
    );
    assert_eq!(
        forced(EncoderImpl::FastI16, None).unwrap().implementation(),
        EncoderImpl::FastI16
    );
    let f16 = forced(EncoderImpl::Auto, Some(DType::F16)).unwrap();
    assert_eq!(
        (f16.implementation(), f16.dtype()),
        (EncoderImpl::Candle, DType::F16)
    );
    let err = forced(EncoderImpl::FastI16, Some(DType::F16))
        .unwrap_err()
        .to_string();
    assert!(err.contains("fast-i16") && err.contains("candle"), "{err}");
    assert!(format!("{enc:?}").contains("implementation"));
    for (s, want) in [
        ("candle", EncoderImpl::Candle),
        ("fast-i16", EncoderImpl::FastI16),
        ("FAST", EncoderImpl::FastI16),
        ("auto", EncoderImpl::Auto),
        ("", EncoderImpl::Auto),
    ] {
        assert_eq!(s.parse::<EncoderImpl>().unwrap(), want, "{s:?}");
    }
    for i in [
        EncoderImpl::Auto,
        EncoderImpl::Candle,
        EncoderImpl::FastI16,
        EncoderImpl::FastF32,
    ] {
        assert_eq!(i.to_string().parse::<EncoderImpl>().unwrap(), i);
    }
    let err = "gpu".parse::<EncoderImpl>().unwrap_err().to_string();
    assert!(err.contains("`gpu`") && err.contains("candle"), "{err}");
}

#[test]
fn fast_path_matches_candle_on_every_isa_and_thread_count() {
    use crate::cpu::ops::Isa;
    let (dir, tok, _) = tiny(11);
    let candle = Encoder::load_with_dtype(dir.path(), &Device::Cpu, DType::F32).unwrap();
    let ids: Vec<Vec<u32>> = tiny_texts()
        .iter()
        .map(|t| tok.encode(t).unwrap().ids)
        .collect();
    let refs: Vec<&[u32]> = ids.iter().map(|v| v.as_slice()).collect();
    let want = candle.embed(&refs).unwrap();
    let mut isas = vec![Isa::Scalar];
    if Isa::detect() != Isa::Scalar {
        isas.push(Isa::detect());
    }
    let mut first: Option<Vec<Vec<f32>>> = None;
    for &isa in &isas {
        for threads in [1, 3] {
            let fast = fast_with(dir.path(), isa, threads);
            let got = fast.embed(&refs);
            assert_eq!(got.len(), want.len());
            for (i, (g, w)) in got.iter().zip(&want).enumerate() {
                let c = cosine(g, w);
                assert!(c > 0.9995, "{isa:?} x{threads} text {i}: cosine {c}");
                let norm: f32 = g.iter().map(|x| x * x).sum::<f32>().sqrt();
                assert!((norm - 1.0).abs() < 1e-5);
            }
            // Same ISA: the thread count changes nothing; across ISAs only float
            // rounding in the f32 parts differs (the integer products are exact).
            match &first {
                None => first = Some(got),
                Some(f) => {
                    for (g, w) in got.iter().zip(f) {
                        assert!(max_abs_diff(g, w) < 1e-4, "{isa:?} x{threads} vs first");
                    }
                }
            }
        }
        let one = fast_with(dir.path(), isa, 1).embed(&refs);
        let three = fast_with(dir.path(), isa, 3).embed(&refs);
        assert_eq!(one, three, "{isa:?}: thread count changed the result");
    }
}

#[test]
fn fast_path_embedding_does_not_depend_on_the_batch() {
    // Ragged batches: each sequence sees only its own tokens, and every row is
    // quantized on its own, so batching is exact, not just close.
    let (dir, tok, _) = tiny(12);
    let fast = fast_with(dir.path(), crate::cpu::ops::Isa::detect(), 2);
    let ids: Vec<Vec<u32>> = tiny_texts()
        .iter()
        .map(|t| tok.encode(t).unwrap().ids)
        .collect();
    let refs: Vec<&[u32]> = ids.iter().map(|v| v.as_slice()).collect();
    let batched = fast.embed(&refs);
    for (i, r) in refs.iter().enumerate() {
        assert_eq!(fast.embed(&[r]).remove(0), batched[i], "text {i}");
    }
    let mut rev = refs.clone();
    rev.reverse();
    let reversed = fast.embed(&rev);
    for (i, v) in reversed.iter().rev().enumerate() {
        assert_eq!(v, &batched[i]);
    }
    // Longest sequence the tiny model takes, and a batch with 1-token sequences.
    let long: Vec<u32> = (0..TINY_MAX_POSITION as u32).map(|i| 5 + i % 40).collect();
    let out = fast.embed(&[&long, &[2], &[2, 3]]);
    let candle = Encoder::load_with_dtype(dir.path(), &Device::Cpu, DType::F32).unwrap();
    let want = candle.embed(&[&long, &[2], &[2, 3]]).unwrap();
    for (g, w) in out.iter().zip(&want) {
        assert!(cosine(g, w) > 0.9995, "cosine {}", cosine(g, w));
    }
}

#[test]
fn fast_path_is_safe_to_call_from_many_threads() {
    let (_d, tok, enc) = tiny(13);
    let enc = Arc::new(enc);
    let ids: Vec<Vec<u32>> = tiny_texts()
        .iter()
        .map(|t| tok.encode(t).unwrap().ids)
        .collect();
    let refs: Vec<&[u32]> = ids.iter().map(|v| v.as_slice()).collect();
    let want = enc.embed(&refs).unwrap();
    std::thread::scope(|s| {
        for _ in 0..4 {
            let (enc, refs, want) = (&enc, &refs, &want);
            s.spawn(move || {
                for _ in 0..5 {
                    assert_eq!(&enc.embed(refs).unwrap(), want);
                }
            });
        }
    });
}

#[test]
fn a_head_can_be_evaluated_with_either_implementation() {
    let (dir, tok, fast) = tiny(15);
    let head_dir = Scratch::new("head");
    write_random_head(head_dir.path(), TINY_HIDDEN, &["neg", "pos"], 3).unwrap();
    let clf = Classifier::load_head(Arc::new(fast), head_dir.path(), "v1").unwrap();
    let candle = Encoder::load_with_impl(dir.path(), &Device::Cpu, EncoderImpl::Candle).unwrap();
    let other = clf.with_encoder(Arc::new(candle)).unwrap();
    assert_eq!(other.encoder.implementation(), EncoderImpl::Candle);
    assert_eq!(other.version, "v1");
    let ids: Vec<Vec<u32>> = tiny_texts()
        .iter()
        .map(|t| tok.encode(t).unwrap().ids)
        .collect();
    let refs: Vec<&[u32]> = ids.iter().map(|v| v.as_slice()).collect();
    let (a, b) = (clf.classify(&refs).unwrap(), other.classify(&refs).unwrap());
    for (x, y) in a.iter().zip(&b) {
        for (label, p) in &x.scores {
            assert!(
                (p - y.scores[label]).abs() < 1e-2,
                "{label}: {p} vs {}",
                y.scores[label]
            );
        }
    }
}

#[test]
fn fast_f32_variant_matches_candle_closely() {
    let (dir, tok, _) = tiny(14);
    let candle = Encoder::load_with_dtype(dir.path(), &Device::Cpu, DType::F32).unwrap();
    let f32v = Encoder::load_with_options(
        dir.path(),
        &Device::Cpu,
        EncoderOptions {
            implementation: EncoderImpl::FastF32,
            threads: Some(2),
            ..Default::default()
        },
    )
    .unwrap();
    assert_eq!(f32v.implementation(), EncoderImpl::FastF32);
    let ids: Vec<Vec<u32>> = tiny_texts()
        .iter()
        .map(|t| tok.encode(t).unwrap().ids)
        .collect();
    let refs: Vec<&[u32]> = ids.iter().map(|v| v.as_slice()).collect();
    let want = candle.embed(&refs).unwrap();
    let got = f32v.embed(&refs).unwrap();
    for (i, (g, w)) in got.iter().zip(&want).enumerate() {
        assert!(
            max_abs_diff(g, w) < 2e-5,
            "text {i}: {}",
            max_abs_diff(g, w)
        );
    }
    for (i, r) in refs.iter().enumerate() {
        let alone = f32v.embed(&[r]).unwrap().remove(0);
        assert!(max_abs_diff(&alone, &got[i]) < 1e-5);
    }
}
