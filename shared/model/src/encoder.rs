//! The sentence encoder: BERT → attention-masked mean pooling → L2 normalisation
//! (what sentence-transformers' all-MiniLM-L6-v2 does).
//!
//! The network is a plain candle BERT (`src/bert.rs`: candle-transformers' `BertModel`
//! with its f16 attention-mask bug fixed); it sits behind this struct so a faster
//! implementation can replace it without touching callers.

use std::path::Path;

use candle_core::{DType, Device, Tensor, D};
use candle_nn::VarBuilder;
use candle_transformers::models::bert::Config;

use crate::bert::Bert;
use crate::cpu::ops::Isa;
use crate::cpu::{FastBert, Precision};

use crate::device::dtype_for;
use crate::error::{io_err, read_json, ModelError, Result};

/// File names inside a model directory.
pub const CONFIG_FILE: &str = "config.json";
/// Encoder weights.
pub const WEIGHTS_FILE: &str = "model.safetensors";
/// Tokenizer.
pub const TOKENIZER_FILE: &str = "tokenizer.json";

/// Which implementation of the network an [`Encoder`] runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum EncoderImpl {
    /// The fastest accurate implementation for the device (see [`Encoder::load`]);
    /// `AIFAB_ENCODER_IMPL` overrides it.
    #[default]
    Auto,
    /// Plain candle tensors (`src/bert.rs`) in the compute dtype (f32 on the CPU
    /// unless asked otherwise, f16 on CUDA); the only choice on CUDA.
    Candle,
    /// The fast CPU path (`src/cpu/`): ragged batches, integer linear layers (10-bit
    /// weights × 12-bit activations, i32 sums), f32 elsewhere. The CPU default.
    FastI16,
    /// The fast CPU path with f32 linear layers (the `gemm` crate): same batching and
    /// fusion, f32 accuracy, slower than `FastI16`.
    FastF32,
}

impl EncoderImpl {
    /// The environment variable that overrides [`EncoderImpl::Auto`].
    pub const ENV: &'static str = "AIFAB_ENCODER_IMPL";

    /// True when a batch costs only its real tokens (the fast CPU path packs sequences
    /// without padding), so grouping rows of similar length buys nothing and only makes
    /// the groups smaller.
    pub fn is_ragged(&self) -> bool {
        matches!(self, EncoderImpl::FastI16 | EncoderImpl::FastF32)
    }

    /// The name accepted by [`FromStr`](std::str::FromStr) and printed by `Display`.
    pub fn name(&self) -> &'static str {
        match self {
            EncoderImpl::Auto => "auto",
            EncoderImpl::Candle => "candle",
            EncoderImpl::FastI16 => "fast-i16",
            EncoderImpl::FastF32 => "fast-f32",
        }
    }
}

impl std::fmt::Display for EncoderImpl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for EncoderImpl {
    type Err = ModelError;

    fn from_str(s: &str) -> Result<Self> {
        match s.trim().to_ascii_lowercase().as_str() {
            "" | "auto" | "default" => Ok(EncoderImpl::Auto),
            "candle" | "candle-f32" => Ok(EncoderImpl::Candle),
            "fast" | "fast-i16" | "i16" | "int16" => Ok(EncoderImpl::FastI16),
            "fast-f32" => Ok(EncoderImpl::FastF32),
            other => Err(ModelError::Invalid(format!(
                "unknown encoder implementation `{other}`: expected auto, candle, fast-i16 or fast-f32"
            ))),
        }
    }
}

/// How [`Encoder::load_with_options`] builds the encoder.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct EncoderOptions {
    /// The implementation; `Auto` picks per device (and honours `AIFAB_ENCODER_IMPL`).
    pub implementation: EncoderImpl,
    /// Compute dtype for the candle implementation; `None` = [`dtype_for`] the device.
    /// Asking for a dtype other than f32 on the CPU selects candle under `Auto`.
    pub dtype: Option<DType>,
    /// Threads for the fast CPU path: `None` = rayon's global pool (sized by
    /// `RAYON_NUM_THREADS`, else the number of CPUs); `Some(n)` = a pool of its own.
    pub threads: Option<usize>,
}

enum Backend {
    Candle(Bert),
    Fast(FastBert),
}

/// A loaded sentence encoder on one device.
pub struct Encoder {
    backend: Backend,
    implementation: EncoderImpl,
    config: Config,
    device: Device,
    dtype: DType,
    pad_id: u32,
}

impl std::fmt::Debug for Encoder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut d = f.debug_struct("Encoder");
        d.field("implementation", &self.implementation);
        if let Backend::Fast(fast) = &self.backend {
            d.field("isa", &fast.isa())
                .field("threads", &fast.threads());
        }
        d.field("hidden_size", &self.config.hidden_size)
            .field("layers", &self.config.num_hidden_layers)
            .field(
                "max_position_embeddings",
                &self.config.max_position_embeddings,
            )
            .field("device", &self.device)
            .field("dtype", &self.dtype)
            .finish()
    }
}

impl Encoder {
    /// Loads `config.json` and `model.safetensors` from `model_dir` onto `device`.
    ///
    /// On the CPU this is the fast path ([`EncoderImpl::FastI16`]: ragged batches,
    /// integer linear layers; embeddings within cosine ~0.9998 of f32), unless the
    /// environment variable `AIFAB_ENCODER_IMPL` says otherwise (`candle` forces plain
    /// f32 candle). On CUDA it is candle in the dtype [`dtype_for`] picks (f16).
    pub fn load(model_dir: impl AsRef<Path>, device: &Device) -> Result<Self> {
        Self::load_with_options(model_dir, device, EncoderOptions::default())
    }

    /// Like [`load`](Self::load) with explicit options (implementation, dtype, threads).
    ///
    /// `Auto` resolves to `AIFAB_ENCODER_IMPL` when set, else the fast path on the CPU
    /// (candle when a dtype other than f32 is asked for) and candle on other devices.
    /// Asking for the fast path on a non-CPU device is an error.
    pub fn load_with_options(
        model_dir: impl AsRef<Path>,
        device: &Device,
        options: EncoderOptions,
    ) -> Result<Self> {
        let mut implementation = options.implementation;
        if implementation == EncoderImpl::Auto {
            if let Some(v) = std::env::var(EncoderImpl::ENV)
                .ok()
                .filter(|v| !v.trim().is_empty())
            {
                implementation = v
                    .parse()
                    .map_err(|e| ModelError::Invalid(format!("{}={v}: {e}", EncoderImpl::ENV)))?;
            }
        }
        if implementation == EncoderImpl::Auto {
            implementation = match (device, options.dtype) {
                (Device::Cpu, None | Some(DType::F32)) => EncoderImpl::FastI16,
                _ => EncoderImpl::Candle,
            };
        }
        let (dir, config, bytes) = read_model(model_dir.as_ref())?;
        let weights_path = dir.join(WEIGHTS_FILE);
        let pad_id = config.pad_token_id as u32;
        let (backend, dtype) = match implementation {
            EncoderImpl::Candle | EncoderImpl::Auto => {
                let dtype = options.dtype.unwrap_or_else(|| dtype_for(device));
                let vb =
                    VarBuilder::from_buffered_safetensors(bytes, dtype, device).map_err(|e| {
                        ModelError::Invalid(format!(
                            "{}: not a safetensors file: {e}",
                            weights_path.display()
                        ))
                    })?;
                let model = Bert::load(vb, &config).map_err(|e| {
                    ModelError::Invalid(format!(
                        "{}: weights do not match a BERT with the shapes in {CONFIG_FILE}: {e}",
                        weights_path.display()
                    ))
                })?;
                (Backend::Candle(model), dtype)
            }
            fast => {
                if !device.is_cpu() {
                    return Err(ModelError::Invalid(format!(
                        "encoder implementation {fast} runs on the CPU only, not on {device:?}"
                    )));
                }
                if let Some(dt) = options.dtype.filter(|d| *d != DType::F32) {
                    return Err(ModelError::Invalid(format!(
                        "encoder implementation {fast} computes in f32/integers; dtype {dt:?} \
                         needs the candle implementation"
                    )));
                }
                let precision = if fast == EncoderImpl::FastF32 {
                    Precision::F32
                } else {
                    Precision::I16
                };
                let model =
                    FastBert::load(&bytes, &config, options.threads, Isa::detect(), precision)
                        .map_err(|e| {
                            ModelError::Invalid(format!(
                            "{}: weights do not match a BERT with the shapes in {CONFIG_FILE}: {e}",
                            weights_path.display()
                        ))
                        })?;
                (Backend::Fast(model), DType::F32)
            }
        };
        Ok(Self {
            backend,
            implementation,
            config,
            device: device.clone(),
            dtype,
            pad_id,
        })
    }

    /// [`load`](Self::load) with a given implementation, e.g. to evaluate a head on the
    /// same texts with `EncoderImpl::Candle` (plain f32) and `EncoderImpl::FastI16`
    /// (the CPU default) and compare accuracy.
    pub fn load_with_impl(
        model_dir: impl AsRef<Path>,
        device: &Device,
        implementation: EncoderImpl,
    ) -> Result<Self> {
        Self::load_with_options(
            model_dir,
            device,
            EncoderOptions {
                implementation,
                ..Default::default()
            },
        )
    }

    /// Plain candle in an explicit compute dtype (f32, f16, bf16), on any device.
    ///
    /// This is the reference implementation; [`load`](Self::load) is faster on the CPU.
    pub fn load_with_dtype(
        model_dir: impl AsRef<Path>,
        device: &Device,
        dtype: DType,
    ) -> Result<Self> {
        Self::load_with_options(
            model_dir,
            device,
            EncoderOptions {
                implementation: EncoderImpl::Candle,
                dtype: Some(dtype),
                threads: None,
            },
        )
    }

    /// Time per stage of the fast CPU path summed over all calls so far, as
    /// `stage=ms ...`; counted only while the environment variable
    /// `AIFAB_ENCODER_PROFILE` is set (a tuning aid, used by load-tests/bench-model).
    pub fn cpu_stage_report() -> String {
        crate::cpu::stage_report()
    }

    /// The implementation this encoder runs (never `Auto`).
    pub fn implementation(&self) -> EncoderImpl {
        self.implementation
    }

    /// Width of the embeddings (384 for all-MiniLM-L6-v2).
    pub fn hidden_size(&self) -> usize {
        self.config.hidden_size
    }

    /// Longest sequence the model accepts (512 for all-MiniLM-L6-v2).
    pub fn max_position_embeddings(&self) -> usize {
        self.config.max_position_embeddings
    }

    /// Vocabulary size from the config.
    pub fn vocab_size(&self) -> usize {
        self.config.vocab_size
    }

    /// The device the weights live on.
    pub fn device(&self) -> &Device {
        &self.device
    }

    /// The compute dtype.
    pub fn dtype(&self) -> DType {
        self.dtype
    }

    /// The id used to pad batches.
    pub fn pad_id(&self) -> u32 {
        self.pad_id
    }

    /// Embeds a batch of token-id sequences: unit-length vectors of `hidden_size()`.
    ///
    /// The batch is padded to its longest sequence; padding is masked out of attention
    /// and pooling, so a sequence's embedding does not depend on what it is batched
    /// with (up to float rounding).
    pub fn embed(&self, batch: &[&[u32]]) -> Result<Vec<Vec<f32>>> {
        if batch.is_empty() {
            return Ok(Vec::new());
        }
        let max_pos = self.config.max_position_embeddings;
        let vocab = self.config.vocab_size;
        for (i, seq) in batch.iter().enumerate() {
            if seq.is_empty() {
                return Err(ModelError::Input(format!("sequence {i} has no tokens")));
            }
            if seq.len() > max_pos {
                return Err(ModelError::Input(format!(
                    "sequence {i} has {} tokens, the model takes at most {max_pos}",
                    seq.len()
                )));
            }
            if let Some(&bad) = seq.iter().find(|&&t| t as usize >= vocab) {
                return Err(ModelError::Input(format!(
                    "sequence {i} has token id {bad}, the vocabulary has {vocab} ids"
                )));
            }
        }
        match &self.backend {
            Backend::Fast(fast) => Ok(fast.embed(batch)),
            Backend::Candle(model) => self.embed_candle(model, batch),
        }
    }

    fn embed_candle(&self, model: &Bert, batch: &[&[u32]]) -> Result<Vec<Vec<f32>>> {
        let n = batch.len();
        let len = batch.iter().map(|s| s.len()).max().unwrap_or(0);
        let mut ids = Vec::with_capacity(n * len);
        let mut mask = Vec::with_capacity(n * len);
        for seq in batch {
            ids.extend_from_slice(seq);
            ids.extend(std::iter::repeat_n(self.pad_id, len - seq.len()));
            mask.extend(std::iter::repeat_n(1u32, seq.len()));
            mask.extend(std::iter::repeat_n(0u32, len - seq.len()));
        }
        let ids = Tensor::from_vec(ids, (n, len), &self.device)?;
        let mask = Tensor::from_vec(mask, (n, len), &self.device)?;
        let token_types = ids.zeros_like()?;
        let hidden = model.forward(&ids, &token_types, &mask)?; // (n, len, hidden)
        let pooled = mean_pool_normalize(&hidden, &mask)?;
        Ok(pooled.to_vec2::<f32>()?)
    }
}

/// Reads and checks `config.json`; reads `model.safetensors` into memory.
fn read_model(dir: &Path) -> Result<(&Path, Config, Vec<u8>)> {
    if !dir.is_dir() {
        return Err(ModelError::Invalid(format!(
            "model directory {} does not exist",
            dir.display()
        )));
    }
    let config: Config = read_json(&dir.join(CONFIG_FILE))?;
    validate_config(&config, &dir.join(CONFIG_FILE))?;
    let weights_path = dir.join(WEIGHTS_FILE);
    // Read into memory rather than mmap: the trainer may replace files in a model
    // directory and a mapped file changing underneath would be undefined behaviour.
    let bytes = std::fs::read(&weights_path).map_err(io_err("cannot read", &weights_path))?;
    Ok((dir, config, bytes))
}

/// Attention-masked mean over the sequence axis, then L2 normalisation, in f32.
fn mean_pool_normalize(hidden: &Tensor, mask: &Tensor) -> Result<Tensor> {
    let hidden = hidden.to_dtype(DType::F32)?;
    let mask = mask.to_dtype(DType::F32)?.unsqueeze(D::Minus1)?; // (n, len, 1)
    let summed = hidden.broadcast_mul(&mask)?.sum(1)?; // (n, hidden)
    let counts = mask.sum(1)?.clamp(1e-9f32, f32::MAX)?; // (n, 1)
    let mean = summed.broadcast_div(&counts)?;
    let norms = mean
        .sqr()?
        .sum_keepdim(1)?
        .sqrt()?
        .clamp(1e-12f32, f32::MAX)?;
    Ok(mean.broadcast_div(&norms)?)
}

fn validate_config(c: &Config, path: &Path) -> Result<()> {
    let bad = |what: String| Err(ModelError::Invalid(format!("{}: {what}", path.display())));
    if c.hidden_size == 0 || c.num_attention_heads == 0 || c.num_hidden_layers == 0 {
        return bad(format!(
            "hidden_size, num_attention_heads and num_hidden_layers must be positive, got {}, {}, {}",
            c.hidden_size, c.num_attention_heads, c.num_hidden_layers
        ));
    }
    if !c.hidden_size.is_multiple_of(c.num_attention_heads) {
        return bad(format!(
            "hidden_size {} is not a multiple of num_attention_heads {}",
            c.hidden_size, c.num_attention_heads
        ));
    }
    if c.pad_token_id >= c.vocab_size {
        return bad(format!(
            "pad_token_id {} is outside the vocabulary of {}",
            c.pad_token_id, c.vocab_size
        ));
    }
    Ok(())
}
