//! BERT encoder forward pass (HF `BertModel` layout, no pooler).
//!
//! Follows candle-transformers' `models::bert::BertModel` and loads the same weights,
//! with one fix: the additive attention mask uses the compute dtype's own finite
//! minimum. candle-transformers 0.11 casts `f32::MIN` to the dtype, which is `-inf` in
//! f16/bf16, and `0 × -inf = NaN` then poisons every score, so its model gives NaN
//! embeddings in f16 (the dtype we use on CUDA). A unit test checks this module
//! against candle-transformers in f32.
//!
//! Private to the crate: [`Encoder`](crate::Encoder) is the public face, so this can be
//! replaced by a faster implementation without touching callers.

use candle_core::{DType, Module, Result, Tensor, D};
use candle_nn::{embedding, layer_norm, linear, Embedding, LayerNorm, Linear, VarBuilder};
use candle_transformers::models::bert::{Config, HiddenAct};

struct Embeddings {
    word: Embedding,
    position: Embedding,
    token_type: Embedding,
    norm: LayerNorm,
}

impl Embeddings {
    fn load(vb: VarBuilder, c: &Config) -> Result<Self> {
        Ok(Self {
            word: embedding(c.vocab_size, c.hidden_size, vb.pp("word_embeddings"))?,
            position: embedding(
                c.max_position_embeddings,
                c.hidden_size,
                vb.pp("position_embeddings"),
            )?,
            token_type: embedding(
                c.type_vocab_size,
                c.hidden_size,
                vb.pp("token_type_embeddings"),
            )?,
            norm: layer_norm(c.hidden_size, c.layer_norm_eps, vb.pp("LayerNorm"))?,
        })
    }

    fn forward(&self, input_ids: &Tensor, token_type_ids: &Tensor) -> Result<Tensor> {
        let (_, len) = input_ids.dims2()?;
        let positions = Tensor::arange(0u32, len as u32, input_ids.device())?;
        let x = (self.word.forward(input_ids)? + self.token_type.forward(token_type_ids)?)?
            .broadcast_add(&self.position.forward(&positions)?)?;
        self.norm.forward(&x)
    }
}

struct Layer {
    query: Linear,
    key: Linear,
    value: Linear,
    attn_out: Linear,
    attn_norm: LayerNorm,
    intermediate: Linear,
    output: Linear,
    out_norm: LayerNorm,
    heads: usize,
    head_dim: usize,
    act: HiddenAct,
}

impl Layer {
    fn load(vb: VarBuilder, c: &Config) -> Result<Self> {
        let h = c.hidden_size;
        let att = vb.pp("attention");
        Ok(Self {
            query: linear(h, h, att.pp("self").pp("query"))?,
            key: linear(h, h, att.pp("self").pp("key"))?,
            value: linear(h, h, att.pp("self").pp("value"))?,
            attn_out: linear(h, h, att.pp("output").pp("dense"))?,
            attn_norm: layer_norm(h, c.layer_norm_eps, att.pp("output").pp("LayerNorm"))?,
            intermediate: linear(h, c.intermediate_size, vb.pp("intermediate").pp("dense"))?,
            output: linear(c.intermediate_size, h, vb.pp("output").pp("dense"))?,
            out_norm: layer_norm(h, c.layer_norm_eps, vb.pp("output").pp("LayerNorm"))?,
            heads: c.num_attention_heads,
            head_dim: h / c.num_attention_heads,
            act: c.hidden_act,
        })
    }

    /// (b, len, hidden) → (b, heads, len, head_dim)
    fn split_heads(&self, x: &Tensor) -> Result<Tensor> {
        let (b, len, _) = x.dims3()?;
        x.reshape((b, len, self.heads, self.head_dim))?
            .transpose(1, 2)?
            .contiguous()
    }

    fn forward(&self, x: &Tensor, mask_bias: &Tensor) -> Result<Tensor> {
        let q = self.split_heads(&self.query.forward(x)?)?;
        let k = self.split_heads(&self.key.forward(x)?)?;
        let v = self.split_heads(&self.value.forward(x)?)?;
        let scores = (q.matmul(&k.t()?)? / (self.head_dim as f64).sqrt())?;
        let scores = scores.broadcast_add(mask_bias)?;
        let probs = candle_nn::ops::softmax_last_dim(&scores)?;
        let ctx = probs
            .matmul(&v)?
            .transpose(1, 2)?
            .contiguous()?
            .flatten_from(D::Minus2)?;
        let x = self
            .attn_norm
            .forward(&(self.attn_out.forward(&ctx)? + x)?)?;
        let inner = self.intermediate.forward(&x)?;
        let inner = match self.act {
            HiddenAct::Gelu => inner.gelu_erf()?,
            HiddenAct::GeluApproximate => inner.gelu()?,
            HiddenAct::Relu => inner.relu()?,
        };
        self.out_norm.forward(&(self.output.forward(&inner)? + x)?)
    }
}

/// The encoder stack; `forward` returns the last hidden states `(b, len, hidden)`.
pub(crate) struct Bert {
    embeddings: Embeddings,
    layers: Vec<Layer>,
    dtype: DType,
}

impl Bert {
    /// Loads from HF tensor names, with or without a `bert.` prefix.
    pub(crate) fn load(vb: VarBuilder, c: &Config) -> Result<Self> {
        let vb = if vb.contains_tensor("bert.embeddings.word_embeddings.weight") {
            vb.pp("bert")
        } else {
            vb
        };
        let embeddings = Embeddings::load(vb.pp("embeddings"), c)?;
        let layers = (0..c.num_hidden_layers)
            .map(|i| Layer::load(vb.pp(format!("encoder.layer.{i}")), c))
            .collect::<Result<Vec<_>>>()?;
        Ok(Self {
            embeddings,
            layers,
            dtype: vb.dtype(),
        })
    }

    /// `input_ids`, `token_type_ids`: (b, len) u32; `mask`: (b, len), 1 = token, 0 = pad.
    pub(crate) fn forward(
        &self,
        input_ids: &Tensor,
        token_type_ids: &Tensor,
        mask: &Tensor,
    ) -> Result<Tensor> {
        let mask_bias = additive_mask(mask, self.dtype)?;
        let mut x = self.embeddings.forward(input_ids, token_type_ids)?;
        for layer in &self.layers {
            x = layer.forward(&x, &mask_bias)?;
        }
        Ok(x)
    }
}

/// (b, len) 1/0 mask → (b, 1, 1, len) bias: 0 for tokens, the dtype's most negative
/// finite value for padding (finite, so `0 × bias` stays 0 and nothing turns NaN).
fn additive_mask(mask: &Tensor, dtype: DType) -> Result<Tensor> {
    let neg = match dtype {
        DType::F16 => f64::from(half_min_f16()),
        DType::BF16 => -3.3895313892515355e38, // bf16::MIN
        DType::F32 => f64::from(f32::MIN),
        _ => f64::MIN,
    };
    let (b, len) = mask.dims2()?;
    let keep = mask.to_dtype(DType::F32)?;
    // (1 - mask) * neg, computed in f32 then cast: both 0 and `neg` are exact in `dtype`.
    let bias = ((keep.ones_like()? - keep)? * neg)?.to_dtype(dtype)?;
    bias.reshape((b, 1, 1, len))
}

const fn half_min_f16() -> f32 {
    -65504.0
}
