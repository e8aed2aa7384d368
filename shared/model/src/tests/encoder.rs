//! The encoder: shape, unit-norm embeddings, padding invariance (fast and candle paths),
//! agreement with candle-transformers, f16, and errors.

use candle_core::{DType, Device, Tensor};

use super::{cosine, max_abs_diff, tiny, Scratch};
use crate::testing::*;
use crate::{Encoder, EncoderImpl, TextTokenizer};

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
