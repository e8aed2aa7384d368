//! The real all-MiniLM-L6-v2 against sentence-transformers' embeddings of the same
//! sentences (shared/model/testdata/reference_embeddings.json, made by
//! load-tests/peer/make_reference.py).
//!
//! Needs the model: `scripts/fetch-model` (or AIFAB_MODEL_DIR pointing at a model dir).
//! Without it this test fails, on purpose: it must not pass by skipping.

use std::path::PathBuf;

use aifab_model::{DType, Device, Encoder, EncoderImpl, EncoderOptions, TextTokenizer};
use serde::Deserialize;

const MIN_COSINE: f64 = 0.999;

#[derive(Deserialize)]
struct Reference {
    model: String,
    max_seq_length: usize,
    token_counts: Vec<usize>,
    sentences: Vec<String>,
    input_ids: Vec<Vec<u32>>,
    embeddings: Vec<Vec<f32>>,
}

fn model_dir() -> PathBuf {
    aifab_model::testing::real_model_dir()
}

fn cosine(a: &[f32], b: &[f32]) -> f64 {
    let dot: f64 = a.iter().zip(b).map(|(x, y)| *x as f64 * *y as f64).sum();
    let na = a.iter().map(|x| (*x as f64).powi(2)).sum::<f64>().sqrt();
    let nb = b.iter().map(|x| (*x as f64).powi(2)).sum::<f64>().sqrt();
    dot / (na * nb)
}

#[test]
fn embeddings_match_sentence_transformers() {
    check(Which::Candle(DType::F32));
}

/// f16 is what CUDA devices run; here it runs on the CPU to check the arithmetic
/// (candle-transformers' own BertModel gives NaN in f16).
#[test]
fn f16_embeddings_match_sentence_transformers() {
    check(Which::Candle(DType::F16));
}

/// What `Encoder::load` runs on the CPU by default (the fast path), forced explicitly so
/// `AIFAB_ENCODER_IMPL` in the environment cannot change what this test checks.
#[test]
fn cpu_default_fast_path_matches_sentence_transformers() {
    check(Which::Fast(EncoderImpl::FastI16));
}

/// `Encoder::load` as callers use it (whatever the default or AIFAB_ENCODER_IMPL picks).
#[test]
fn default_load_matches_sentence_transformers() {
    check(Which::Default);
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Which {
    Candle(DType),
    Fast(EncoderImpl),
    Default,
}

fn check(which: Which) {
    let dir = model_dir();
    assert!(
        dir.join("model.safetensors").is_file(),
        "the real model is not in {} — run `scripts/fetch-model` first (or set AIFAB_MODEL_DIR)",
        dir.display()
    );
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("testdata/reference_embeddings.json");
    let reference: Reference =
        serde_json::from_str(&std::fs::read_to_string(&path).expect("reference file"))
            .expect("reference JSON");
    assert_eq!(reference.model, "all-minilm-l6-v2");
    assert_eq!(reference.sentences.len(), 16);
    assert_eq!(reference.embeddings.len(), 16);

    let tok =
        TextTokenizer::from_file(dir.join("tokenizer.json"), reference.max_seq_length).unwrap();
    let texts: Vec<&str> = reference.sentences.iter().map(String::as_str).collect();
    let encoded = tok.encode_batch(&texts).unwrap();
    for (i, e) in encoded.iter().enumerate() {
        assert_eq!(
            e.ids, reference.input_ids[i],
            "token ids differ for sentence {i}: {:?}",
            texts[i]
        );
        assert_eq!(
            e.truncated,
            reference.token_counts[i] > reference.max_seq_length,
            "truncated flag for sentence {i} ({} tokens)",
            reference.token_counts[i]
        );
    }
    assert!(
        encoded.iter().any(|e| e.truncated),
        "the reference set must exercise truncation"
    );

    let enc = match which {
        Which::Candle(dtype) => Encoder::load_with_dtype(&dir, &Device::Cpu, dtype).unwrap(),
        Which::Fast(implementation) => Encoder::load_with_options(
            &dir,
            &Device::Cpu,
            EncoderOptions {
                implementation,
                ..Default::default()
            },
        )
        .unwrap(),
        Which::Default => Encoder::load(&dir, &Device::Cpu).unwrap(),
    };
    assert_eq!(enc.hidden_size(), 384);
    let slow = which == Which::Candle(DType::F16);

    // All 16 in one padded batch, and each alone.
    let ids: Vec<&[u32]> = encoded.iter().map(|e| e.ids.as_slice()).collect();
    let batched = enc.embed(&ids).unwrap();
    let mut min_batched = f64::INFINITY;
    let mut min_alone = f64::INFINITY;
    let mut failures = Vec::new();
    for (i, want) in reference.embeddings.iter().enumerate() {
        // Alone too (no padding at all), in f32 only: f16 on the CPU is slow.
        let alone = if !slow {
            enc.embed(&[ids[i]]).unwrap().remove(0)
        } else {
            batched[i].clone()
        };
        let (cb, ca) = (cosine(&batched[i], want), cosine(&alone, want));
        min_batched = min_batched.min(cb);
        min_alone = min_alone.min(ca);
        if cb < MIN_COSINE || ca < MIN_COSINE {
            failures.push(format!(
                "sentence {i} {:?}: cosine batched {cb:.6}, alone {ca:.6}",
                texts[i]
            ));
        }
    }
    eprintln!(
        "{which:?} ({}) reference agreement over {} sentences: \
         min cosine batched {min_batched:.9} (1 - {:.2e}), alone {min_alone:.9} (1 - {:.2e})",
        enc.implementation(),
        texts.len(),
        1.0 - min_batched,
        1.0 - min_alone
    );
    assert!(
        failures.is_empty(),
        "{which:?}: cosine below {MIN_COSINE}:\n{}",
        failures.join("\n")
    );
}
