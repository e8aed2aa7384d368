//! The fast CPU path (src/cpu/) against plain candle on the tiny BERT.

use std::path::Path;
use std::sync::Arc;

use candle_core::{DType, Device};

use super::{cosine, max_abs_diff, tiny, Scratch};
use crate::testing::*;
use crate::{Classifier, Encoder, EncoderImpl, EncoderOptions};

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
