//! The fast CPU encoder: BERT on plain buffers, for `Device::Cpu`.
//!
//! What makes it faster than the candle graph (`src/bert.rs`), measured with
//! `load-tests/bench-model` (see load-tests/README.md, "Model throughput"):
//! - **Ragged batches.** The real tokens of all sequences are concatenated into one
//!   `T × hidden` matrix, so the linear layers (most of the work) never see padding;
//!   attention runs per sequence and head on exactly that sequence's tokens (no mask).
//! - **Integer linear layers** ([`qgemm`]): 10-bit weights × 12-bit activations, i16
//!   products summed in i32 by AVX2 `vpmaddwd`, twice the multiply-adds per instruction
//!   of f32 FMA, with embeddings within cosine ~0.9998 of f32.
//! - **Fused, fewer passes**: Q/K/V as one 3·hidden-wide product with 1/√d folded into
//!   the Q weights; bias and GELU applied on the product's tile while it is in cache;
//!   residual add + layer norm + quantization of the next layer's input in one pass.
//! - **Threads**: one fork-join per step on a fixed pool (output columns split across
//!   threads for products, (sequence, head) pairs for attention, rows for norms); the
//!   whole forward pass runs on a pool thread so each fork costs a deque push.
//!
//! Everything else stays f32. SIMD paths are chosen at run time ([`ops::Isa`]); other
//! CPUs run the same arithmetic in portable Rust.

pub(crate) mod ops;
pub(crate) mod par;
pub(crate) mod qgemm;

use std::collections::HashMap;
use std::sync::Mutex;

use candle_core::{DType, Tensor};
use candle_transformers::models::bert::{Config, HiddenAct};

use ops::{Act, AttnScratch, Isa};
use par::{for_each_dynamic, for_ranges, Par, SyncPtr};
use qgemm::{qgemm, QLinear};

struct Layer {
    qkv: QLinear,
    attn_out: QLinear,
    ln1_g: Vec<f32>,
    ln1_b: Vec<f32>,
    inter: QLinear,
    output: QLinear,
    ln2_g: Vec<f32>,
    ln2_b: Vec<f32>,
}

/// Buffers of one forward pass, kept for the next one (no page faults per call).
#[derive(Default)]
struct Workspace {
    x: Vec<f32>,
    xq: Vec<i16>,
    xs: Vec<f32>,
    qkv: Vec<f32>,
    ctx: Vec<f32>,
    h: Vec<f32>,
    inter: Vec<f32>,
    iq: Vec<i16>,
    is: Vec<f32>,
}

fn fit<T: Default + Clone>(v: &mut Vec<T>, n: usize) -> &mut [T] {
    if v.len() < n {
        v.resize(n, T::default());
    }
    &mut v[..n]
}

/// The encoder stack plus mean pooling and L2 normalisation, on the CPU.
pub(crate) struct FastBert {
    isa: Isa,
    hidden: usize,
    heads: usize,
    head_dim: usize,
    inter: usize,
    eps: f32,
    act: Act,
    word: Vec<f32>,
    /// Position embedding + token type 0 embedding, per position.
    pos_type: Vec<f32>,
    emb_g: Vec<f32>,
    emb_b: Vec<f32>,
    layers: Vec<Layer>,
    par: Par,
    spare: Mutex<Vec<Workspace>>,
}

impl std::fmt::Debug for FastBert {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FastBert")
            .field("isa", &self.isa)
            .field("threads", &self.par.threads())
            .finish()
    }
}

/// Reads the tensors of a BERT safetensors file as f32 vectors.
struct Weights {
    map: HashMap<String, Tensor>,
    prefix: &'static str,
}

impl Weights {
    fn get(&self, name: &str, shape: &[usize]) -> Result<Vec<f32>, String> {
        let full = format!("{}{name}", self.prefix);
        let t = self
            .map
            .get(&full)
            .ok_or_else(|| format!("tensor {full} is missing"))?;
        if t.dims() != shape {
            return Err(format!(
                "tensor {full} has shape {:?}, expected {shape:?}",
                t.dims()
            ));
        }
        t.to_dtype(DType::F32)
            .and_then(|t| t.flatten_all())
            .and_then(|t| t.to_vec1::<f32>())
            .map_err(|e| format!("tensor {full}: {e}"))
    }
}

impl FastBert {
    /// Builds from the bytes of `model.safetensors` (HF `BertModel` names, with or
    /// without a `bert.` prefix) and the config. `threads = None` uses rayon's global
    /// pool.
    pub(crate) fn load(
        safetensors: &[u8],
        c: &Config,
        threads: Option<usize>,
        isa: Isa,
    ) -> Result<Self, String> {
        let map = candle_core::safetensors::load_buffer(safetensors, &candle_core::Device::Cpu)
            .map_err(|e| format!("not a safetensors file: {e}"))?;
        let prefix = if map.contains_key("bert.embeddings.word_embeddings.weight") {
            "bert."
        } else {
            ""
        };
        let w = Weights { map, prefix };
        let (h, i) = (c.hidden_size, c.intermediate_size);
        let heads = c.num_attention_heads;
        let d = h / heads;
        let act = match c.hidden_act {
            HiddenAct::Gelu => Act::Gelu,
            HiddenAct::GeluApproximate => Act::GeluTanh,
            HiddenAct::Relu => Act::Relu,
        };
        let word = w.get("embeddings.word_embeddings.weight", &[c.vocab_size, h])?;
        let pos = w.get(
            "embeddings.position_embeddings.weight",
            &[c.max_position_embeddings, h],
        )?;
        let types = w.get(
            "embeddings.token_type_embeddings.weight",
            &[c.type_vocab_size, h],
        )?;
        let pos_type: Vec<f32> = pos
            .chunks_exact(h)
            .flat_map(|p| p.iter().zip(&types[..h]).map(|(a, b)| a + b))
            .collect();
        let emb_g = w.get("embeddings.LayerNorm.weight", &[h])?;
        let emb_b = w.get("embeddings.LayerNorm.bias", &[h])?;
        let scale = 1.0 / (d as f32).sqrt();
        let mut layers = Vec::with_capacity(c.num_hidden_layers);
        for l in 0..c.num_hidden_layers {
            let p = format!("encoder.layer.{l}");
            let lin = |name: &str, n: usize, k: usize| -> Result<(Vec<f32>, Vec<f32>), String> {
                Ok((
                    w.get(&format!("{p}.{name}.weight"), &[n, k])?,
                    w.get(&format!("{p}.{name}.bias"), &[n])?,
                ))
            };
            let (mut qw, mut qb) = lin("attention.self.query", h, h)?;
            qw.iter_mut().for_each(|x| *x *= scale);
            qb.iter_mut().for_each(|x| *x *= scale);
            let (kw, kb) = lin("attention.self.key", h, h)?;
            let (vw, vb) = lin("attention.self.value", h, h)?;
            let qkv_w: Vec<f32> = [qw, kw, vw].concat();
            let qkv_b: Vec<f32> = [qb, kb, vb].concat();
            let (ow, ob) = lin("attention.output.dense", h, h)?;
            let (iw, ib) = lin("intermediate.dense", i, h)?;
            let (o2w, o2b) = lin("output.dense", h, i)?;
            layers.push(Layer {
                qkv: QLinear::new(&qkv_w, &qkv_b, 3 * h, h),
                attn_out: QLinear::new(&ow, &ob, h, h),
                ln1_g: w.get(&format!("{p}.attention.output.LayerNorm.weight"), &[h])?,
                ln1_b: w.get(&format!("{p}.attention.output.LayerNorm.bias"), &[h])?,
                inter: QLinear::new(&iw, &ib, i, h),
                output: QLinear::new(&o2w, &o2b, h, i),
                ln2_g: w.get(&format!("{p}.output.LayerNorm.weight"), &[h])?,
                ln2_b: w.get(&format!("{p}.output.LayerNorm.bias"), &[h])?,
            });
        }
        Ok(Self {
            isa,
            hidden: h,
            heads,
            head_dim: d,
            inter: i,
            eps: c.layer_norm_eps as f32,
            act,
            word,
            pos_type,
            emb_g,
            emb_b,
            layers,
            par: Par::new(threads)?,
            spare: Mutex::new(Vec::new()),
        })
    }

    /// Threads the forward pass uses.
    pub(crate) fn threads(&self) -> usize {
        self.par.threads()
    }

    /// The SIMD level in use.
    pub(crate) fn isa(&self) -> Isa {
        self.isa
    }

    /// Embeddings (mean-pooled, unit length) of already validated sequences: every
    /// sequence non-empty, within the position table, ids within the vocabulary.
    pub(crate) fn embed(&self, batch: &[&[u32]]) -> Vec<Vec<f32>> {
        let mut ws = self
            .spare
            .lock()
            .map(|mut s| s.pop())
            .ok()
            .flatten()
            .unwrap_or_default();
        let out = self.par.install(|| self.forward(batch, &mut ws));
        if let Ok(mut s) = self.spare.lock() {
            s.push(ws);
        }
        out
    }

    fn forward(&self, batch: &[&[u32]], ws: &mut Workspace) -> Vec<Vec<f32>> {
        let isa = self.isa;
        let nt = self.par.threads();
        let (h, heads, d, inter) = (self.hidden, self.heads, self.head_dim, self.inter);
        let hp = h + (h & 1);
        let ip = inter + (inter & 1);
        let mut offsets = Vec::with_capacity(batch.len() + 1);
        offsets.push(0usize);
        for s in batch {
            offsets.push(offsets.last().unwrap() + s.len());
        }
        let t = *offsets.last().unwrap();
        // token -> (id, position)
        let mut tokens = Vec::with_capacity(t);
        for s in batch {
            tokens.extend(s.iter().enumerate().map(|(p, &id)| (id, p)));
        }

        let x = fit(&mut ws.x, t * h);
        let xq = fit(&mut ws.xq, t * hp);
        let xs = fit(&mut ws.xs, t);
        let qkv = fit(&mut ws.qkv, t * 3 * h);
        let ctx = fit(&mut ws.ctx, t * h);
        let hbuf = fit(&mut ws.h, t * h);
        let ibuf = fit(&mut ws.inter, t * inter);
        let iq = fit(&mut ws.iq, t * ip);
        let is = fit(&mut ws.is, t);

        // Embeddings + layer norm + quantization.
        {
            let (xp, xqp, xsp) = (SyncPtr::new(x), SyncPtr::new(xq), SyncPtr::new(xs));
            for_ranges(t, nt, |r| {
                for tok in r {
                    let (id, pos) = tokens[tok];
                    // SAFETY: each token's rows are written by one thread only.
                    let (xr, qr, sr) = unsafe {
                        (xp.slice(tok * h, h), xqp.slice(tok * hp, hp), xsp.slice(tok, 1))
                    };
                    let wr = &self.word[id as usize * h..(id as usize + 1) * h];
                    let pr = &self.pos_type[pos * h..(pos + 1) * h];
                    for ((o, a), b) in xr.iter_mut().zip(wr).zip(pr) {
                        *o = a + b;
                    }
                    sr[0] =
                        ops::add_norm_quantize(isa, &[], xr, &self.emb_g, &self.emb_b, self.eps, qr);
                }
            });
        }

        // Attention tasks, longest sequences first (better balance).
        let mut order: Vec<usize> = (0..batch.len()).collect();
        order.sort_by_key(|&s| std::cmp::Reverse(batch[s].len()));

        for layer in &self.layers {
            qgemm(isa, nt, xq, xs, t, &layer.qkv, Act::None, qkv);

            {
                let cp = SyncPtr::new(ctx);
                let qkv: &[f32] = qkv;
                for_each_dynamic(batch.len() * heads, nt, |task| {
                    let s = order[task / heads];
                    let head = task % heads;
                    let (t0, len) = (offsets[s], batch[s].len());
                    let base = t0 * 3 * h + head * d;
                    let span = (len - 1) * 3 * h + d;
                    SCRATCH.with(|sc| {
                        let (sc, obuf) = &mut *sc.borrow_mut();
                        obuf.clear();
                        obuf.resize(len * d, 0.0);
                        ops::attention_head(
                            isa,
                            len,
                            d,
                            &qkv[base..base + span],
                            &qkv[base + h..base + h + span],
                            &qkv[base + 2 * h..base + 2 * h + span],
                            3 * h,
                            obuf,
                            d,
                            sc,
                        );
                        for (i, row) in obuf.chunks_exact(d).enumerate() {
                            // SAFETY: this (sequence, head) alone writes rows t0..t0+len,
                            // columns head·d..head·d+d of ctx.
                            unsafe {
                                std::ptr::copy_nonoverlapping(
                                    row.as_ptr(),
                                    cp.at((t0 + i) * h + head * d),
                                    d,
                                )
                            };
                        }
                    });
                });
            }
            // ctx -> quantized (reuses xq/xs' sibling buffers iq/is, which are free here).
            quantize_rows(isa, nt, ctx, t, h, iq, is);
            qgemm(isa, nt, iq, is, t, &layer.attn_out, Act::None, hbuf);
            add_norm_rows(isa, nt, hbuf, x, t, h, &layer.ln1_g, &layer.ln1_b, self.eps, xq, xs);
            qgemm(isa, nt, xq, xs, t, &layer.inter, self.act, ibuf);
            quantize_rows(isa, nt, ibuf, t, inter, iq, is);
            qgemm(isa, nt, iq, is, t, &layer.output, Act::None, hbuf);
            add_norm_rows(isa, nt, hbuf, x, t, h, &layer.ln2_g, &layer.ln2_b, self.eps, xq, xs);
        }

        let mut out = vec![vec![0f32; h]; batch.len()];
        for (s, o) in out.iter_mut().enumerate() {
            ops::mean_pool_normalize(&x[offsets[s] * h..offsets[s + 1] * h], h, o);
        }
        out
    }
}

thread_local! {
    static SCRATCH: std::cell::RefCell<(AttnScratch, Vec<f32>)> =
        std::cell::RefCell::new((AttnScratch::default(), Vec::new()));
}

/// Quantizes `t` rows of `k` floats into rows of `k` rounded up to even.
fn quantize_rows(
    isa: Isa,
    nt: usize,
    x: &[f32],
    t: usize,
    k: usize,
    q: &mut [i16],
    s: &mut [f32],
) {
    let kp = k + (k & 1);
    let (qp, sp) = (SyncPtr::new(q), SyncPtr::new(s));
    for_ranges(t, nt, |r| {
        for row in r {
            // SAFETY: one thread per row.
            let (qr, sr) = unsafe { (qp.slice(row * kp, kp), sp.slice(row, 1)) };
            sr[0] = ops::quantize_row(isa, &x[row * k..(row + 1) * k], qr);
        }
    });
}

/// `x = LayerNorm(x + a)` per row, and its quantized copy.
#[allow(clippy::too_many_arguments)]
fn add_norm_rows(
    isa: Isa,
    nt: usize,
    a: &[f32],
    x: &mut [f32],
    t: usize,
    h: usize,
    g: &[f32],
    b: &[f32],
    eps: f32,
    q: &mut [i16],
    s: &mut [f32],
) {
    let hp = h + (h & 1);
    let (xp, qp, sp) = (SyncPtr::new(x), SyncPtr::new(q), SyncPtr::new(s));
    for_ranges(t, nt, |r| {
        for row in r {
            // SAFETY: one thread per row.
            let (xr, qr, sr) =
                unsafe { (xp.slice(row * h, h), qp.slice(row * hp, hp), sp.slice(row, 1)) };
            sr[0] = ops::add_norm_quantize(isa, &a[row * h..(row + 1) * h], xr, g, b, eps, qr);
        }
    });
}
