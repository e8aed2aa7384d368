//! Test fixtures: a tiny random BERT with a matching WordPiece tokenizer, and random
//! classification heads. Public (not `cfg(test)`) so other crates' tests can use it.
//!
//! Everything is deterministic in the seed: the same seed writes byte-identical files.

use std::collections::HashMap;
use std::path::Path;

use candle_core::{Device, Tensor};
use serde_json::json;

use crate::error::{io_err, Result};
use crate::head::ClassificationHead;

/// Embedding width of the tiny BERT.
pub const TINY_HIDDEN: usize = 32;
/// Encoder layers of the tiny BERT.
pub const TINY_LAYERS: usize = 2;
/// Attention heads of the tiny BERT.
pub const TINY_HEADS: usize = 4;
/// Feed-forward width of the tiny BERT.
pub const TINY_INTERMEDIATE: usize = 64;
/// Longest sequence the tiny BERT takes (less than the tokenizer's packaged padding of
/// 128, so a tokenizer whose padding was not overridden makes `embed` fail).
pub const TINY_MAX_POSITION: usize = 64;
/// The fixed length the tiny tokenizer.json pads to, like the packaged one.
pub const TINY_PACKAGED_PAD: usize = 128;

/// Whole words in the tiny vocabulary (any other lowercase word is spelt out in
/// letters and `##letter` pieces; digits and other symbols become `[UNK]`).
pub const TINY_WORDS: &[&str] = &[
    "the", "a", "an", "is", "was", "are", "cat", "dog", "sat", "on", "mat", "hello", "world",
    "quick", "brown", "fox", "jumps", "over", "lazy", "and", "or", "of", "to", "in", "it", "this",
    "that", "model", "text", "good", "bad", "great", "terrible", "movie", "film", "love", "hate",
    "very", "not", "happy", "sad", "day", "night", "i", "you", "we", "##s", "##ing", "##ed",
    "##ly", "##er",
];

/// The tiny vocabulary in id order: `[PAD]`=0, `[UNK]`=1, `[CLS]`=2, `[SEP]`=3,
/// `[MASK]`=4, then letters, `##letters`, punctuation and [`TINY_WORDS`].
pub fn tiny_vocab() -> Vec<String> {
    let mut v: Vec<String> = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    v.extend(('a'..='z').map(|c| c.to_string()));
    v.extend(('a'..='z').map(|c| format!("##{c}")));
    v.extend(
        [".", ",", "!", "?", "'", "-", ":", ";", "(", ")"]
            .iter()
            .map(|s| s.to_string()),
    );
    for w in TINY_WORDS {
        if !v.iter().any(|x| x == w) {
            v.push(w.to_string());
        }
    }
    v
}

/// Writes a tiny random BERT into `dir` (created if missing): `config.json`,
/// `model.safetensors`, `vocab.txt` and a WordPiece `tokenizer.json` laid out like the
/// packaged all-MiniLM-L6-v2 one, including its fixed padding to 128.
pub fn write_tiny_bert(dir: impl AsRef<Path>, seed: u64) -> Result<()> {
    let dir = dir.as_ref();
    std::fs::create_dir_all(dir).map_err(io_err("cannot create", dir))?;
    let vocab = tiny_vocab();
    let h = TINY_HIDDEN;
    let i = TINY_INTERMEDIATE;

    let config = json!({
        "architectures": ["BertModel"],
        "attention_probs_dropout_prob": 0.1,
        "hidden_act": "gelu",
        "hidden_dropout_prob": 0.1,
        "hidden_size": h,
        "initializer_range": 0.02,
        "intermediate_size": i,
        "layer_norm_eps": 1e-12,
        "max_position_embeddings": TINY_MAX_POSITION,
        "model_type": "bert",
        "num_attention_heads": TINY_HEADS,
        "num_hidden_layers": TINY_LAYERS,
        "pad_token_id": 0,
        "position_embedding_type": "absolute",
        "type_vocab_size": 2,
        "use_cache": true,
        "vocab_size": vocab.len(),
    });
    write_json(&dir.join("config.json"), &config)?;

    let mut rng = Rng::new(seed);
    let mut t: Vec<(String, Tensor)> = Vec::new();
    let mut add = |name: &str, shape: &[usize], std: f32, mean: f32, rng: &mut Rng| -> Result<()> {
        let n: usize = shape.iter().product();
        let data: Vec<f32> = (0..n).map(|_| mean + std * rng.normal()).collect();
        t.push((
            name.to_string(),
            Tensor::from_vec(data, shape, &Device::Cpu)?,
        ));
        Ok(())
    };
    add(
        "embeddings.word_embeddings.weight",
        &[vocab.len(), h],
        0.5,
        0.0,
        &mut rng,
    )?;
    add(
        "embeddings.position_embeddings.weight",
        &[TINY_MAX_POSITION, h],
        0.5,
        0.0,
        &mut rng,
    )?;
    add(
        "embeddings.token_type_embeddings.weight",
        &[2, h],
        0.1,
        0.0,
        &mut rng,
    )?;
    add("embeddings.LayerNorm.weight", &[h], 0.05, 1.0, &mut rng)?;
    add("embeddings.LayerNorm.bias", &[h], 0.05, 0.0, &mut rng)?;
    for l in 0..TINY_LAYERS {
        let p = format!("encoder.layer.{l}");
        for m in ["query", "key", "value"] {
            add(
                &format!("{p}.attention.self.{m}.weight"),
                &[h, h],
                0.3,
                0.0,
                &mut rng,
            )?;
            add(
                &format!("{p}.attention.self.{m}.bias"),
                &[h],
                0.05,
                0.0,
                &mut rng,
            )?;
        }
        add(
            &format!("{p}.attention.output.dense.weight"),
            &[h, h],
            0.2,
            0.0,
            &mut rng,
        )?;
        add(
            &format!("{p}.attention.output.dense.bias"),
            &[h],
            0.05,
            0.0,
            &mut rng,
        )?;
        add(
            &format!("{p}.attention.output.LayerNorm.weight"),
            &[h],
            0.05,
            1.0,
            &mut rng,
        )?;
        add(
            &format!("{p}.attention.output.LayerNorm.bias"),
            &[h],
            0.05,
            0.0,
            &mut rng,
        )?;
        add(
            &format!("{p}.intermediate.dense.weight"),
            &[i, h],
            0.2,
            0.0,
            &mut rng,
        )?;
        add(
            &format!("{p}.intermediate.dense.bias"),
            &[i],
            0.05,
            0.0,
            &mut rng,
        )?;
        add(
            &format!("{p}.output.dense.weight"),
            &[h, i],
            0.2,
            0.0,
            &mut rng,
        )?;
        add(&format!("{p}.output.dense.bias"), &[h], 0.05, 0.0, &mut rng)?;
        add(
            &format!("{p}.output.LayerNorm.weight"),
            &[h],
            0.05,
            1.0,
            &mut rng,
        )?;
        add(
            &format!("{p}.output.LayerNorm.bias"),
            &[h],
            0.05,
            0.0,
            &mut rng,
        )?;
    }
    add("pooler.dense.weight", &[h, h], 0.1, 0.0, &mut rng)?;
    add("pooler.dense.bias", &[h], 0.02, 0.0, &mut rng)?;
    let tensors: HashMap<String, Tensor> = t.into_iter().collect();
    candle_core::safetensors::save(&tensors, dir.join("model.safetensors"))?;

    let vocab_txt = vocab.join("\n") + "\n";
    let vocab_path = dir.join("vocab.txt");
    std::fs::write(&vocab_path, vocab_txt).map_err(io_err("cannot write", &vocab_path))?;
    write_json(&dir.join("tokenizer.json"), &tokenizer_json(&vocab))?;
    Ok(())
}

/// Writes a random head for embeddings of width `hidden` over `labels` into `dir`
/// (`head.safetensors` + `labels.json`), deterministic in `seed`.
pub fn write_random_head(
    dir: impl AsRef<Path>,
    hidden: usize,
    labels: &[&str],
    seed: u64,
) -> Result<()> {
    let mut rng = Rng::new(seed ^ 0x9E37_79B9_7F4A_7C15);
    let n = labels.len();
    let weight: Vec<f32> = (0..n * hidden).map(|_| rng.normal()).collect();
    let bias: Vec<f32> = (0..n).map(|_| 0.1 * rng.normal()).collect();
    let head = ClassificationHead::new(
        labels.iter().map(|s| s.to_string()).collect(),
        hidden,
        weight,
        bias,
    )?;
    head.save(dir)
}

/// A tokenizer.json in the packaged file's layout (BERT normaliser and pre-tokenizer,
/// `[CLS] $A [SEP]` template, WordPiece model), padding to a fixed 128.
fn tokenizer_json(vocab: &[String]) -> serde_json::Value {
    let id = |tok: &str| {
        vocab
            .iter()
            .position(|v| v == tok)
            .expect("special token in vocab")
    };
    let added: Vec<_> = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
        .iter()
        .map(|t| {
            json!({"id": id(t), "special": true, "content": t, "single_word": false,
                   "lstrip": false, "rstrip": false, "normalized": false})
        })
        .collect();
    let vocab_map: serde_json::Map<String, serde_json::Value> = vocab
        .iter()
        .enumerate()
        .map(|(i, t)| (t.clone(), json!(i)))
        .collect();
    json!({
        "version": "1.0",
        "truncation": {"direction": "Right", "max_length": TINY_PACKAGED_PAD, "strategy": "LongestFirst", "stride": 0},
        "padding": {"strategy": {"Fixed": TINY_PACKAGED_PAD}, "direction": "Right", "pad_to_multiple_of": null,
                    "pad_id": 0, "pad_type_id": 0, "pad_token": "[PAD]"},
        "added_tokens": added,
        "normalizer": {"type": "BertNormalizer", "clean_text": true, "handle_chinese_chars": true,
                       "strip_accents": null, "lowercase": true},
        "pre_tokenizer": {"type": "BertPreTokenizer"},
        "post_processor": {
            "type": "TemplateProcessing",
            "single": [{"SpecialToken": {"id": "[CLS]", "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}},
                       {"SpecialToken": {"id": "[SEP]", "type_id": 0}}],
            "pair": [{"SpecialToken": {"id": "[CLS]", "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}},
                     {"SpecialToken": {"id": "[SEP]", "type_id": 0}}, {"Sequence": {"id": "B", "type_id": 1}},
                     {"SpecialToken": {"id": "[SEP]", "type_id": 1}}],
            "special_tokens": {
                "[CLS]": {"id": "[CLS]", "ids": [id("[CLS]")], "tokens": ["[CLS]"]},
                "[SEP]": {"id": "[SEP]", "ids": [id("[SEP]")], "tokens": ["[SEP]"]}
            }
        },
        "decoder": {"type": "WordPiece", "prefix": "##", "cleanup": true},
        "model": {"type": "WordPiece", "unk_token": "[UNK]", "continuing_subword_prefix": "##",
                  "max_input_chars_per_word": 100, "vocab": vocab_map}
    })
}

fn write_json(path: &Path, value: &serde_json::Value) -> Result<()> {
    let text = serde_json::to_string_pretty(value).expect("json values serialise");
    std::fs::write(path, text + "\n").map_err(io_err("cannot write", path))
}

/// splitmix64 + Box–Muller: small, dependency-free and stable across versions.
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Self {
        Self(seed)
    }

    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in (0, 1].
    fn uniform(&mut self) -> f64 {
        ((self.next_u64() >> 11) as f64 + 1.0) / (1u64 << 53) as f64
    }

    fn normal(&mut self) -> f32 {
        let (u1, u2) = (self.uniform(), self.uniform());
        ((-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()) as f32
    }
}

/// The real model's directory for tests that need it: `AIFAB_MODEL_DIR`, else
/// `scripts/fetch-model`'s cache (`$AIFAB_MODEL_CACHE`, default `~/.cache/aifab/models`).
pub fn real_model_dir() -> std::path::PathBuf {
    use std::path::PathBuf;
    if let Some(d) = std::env::var_os("AIFAB_MODEL_DIR").filter(|d| !d.is_empty()) {
        return PathBuf::from(d);
    }
    let cache = std::env::var_os("AIFAB_MODEL_CACHE")
        .filter(|d| !d.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(std::env::var_os("HOME").expect("HOME is set"))
                .join(".cache/aifab/models")
        });
    cache.join("all-minilm-l6-v2")
}
