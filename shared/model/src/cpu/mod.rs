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

pub(crate) mod fgemm;
pub(crate) mod ops;
pub(crate) mod par;
pub(crate) mod qgemm;

use std::collections::HashMap;
use std::sync::Mutex;

use candle_core::{DType, Tensor};
use candle_transformers::models::bert::{Config, HiddenAct};

use fgemm::{fgemm, FLinear};
use ops::{Act, AttnScratch, Isa};
use par::{for_each_dynamic, for_ranges, Par, SyncPtr};
use qgemm::{qgemm, QLinear};

/// How the linear layers multiply.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Precision {
    /// 10-bit weights × 12-bit activations in integers ([`qgemm`]); the default.
    I16,
    /// f32 through the `gemm` crate ([`fgemm`]).
    F32,
}

enum Lin {
    Q(QLinear),
    F(FLinear),
}

impl Lin {
    fn new(p: Precision, w: &[f32], b: &[f32], n: usize, k: usize) -> Self {
        match p {
            Precision::I16 => Lin::Q(QLinear::new(w, b, n, k)),
            Precision::F32 => Lin::F(FLinear::new(w, b, n, k)),
        }
    }
}

/// Most tokens one forward pass holds (buffers grow to about 25 KB per token for
/// MiniLM); longer batches run as several passes.
const MAX_CHUNK_TOKENS: usize = 16 * 1024;

struct Layer {
    qkv: Lin,
    attn_out: Lin,
    ln1_g: Vec<f32>,
    ln1_b: Vec<f32>,
    inter: Lin,
    output: Lin,
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
    precision: Precision,
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
            .field("precision", &self.precision)
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
        precision: Precision,
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
                qkv: Lin::new(precision, &qkv_w, &qkv_b, 3 * h, h),
                attn_out: Lin::new(precision, &ow, &ob, h, h),
                ln1_g: w.get(&format!("{p}.attention.output.LayerNorm.weight"), &[h])?,
                ln1_b: w.get(&format!("{p}.attention.output.LayerNorm.bias"), &[h])?,
                inter: Lin::new(precision, &iw, &ib, i, h),
                output: Lin::new(precision, &o2w, &o2b, h, i),
                ln2_g: w.get(&format!("{p}.output.LayerNorm.weight"), &[h])?,
                ln2_b: w.get(&format!("{p}.output.LayerNorm.bias"), &[h])?,
            });
        }
        Ok(Self {
            isa,
            precision,
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
        // Bounded memory: at most MAX_CHUNK_TOKENS tokens (or one sequence) per pass.
        let mut out = Vec::with_capacity(batch.len());
        let mut start = 0;
        while start < batch.len() {
            let mut end = start + 1;
            let mut tokens = batch[start].len();
            while end < batch.len() && tokens + batch[end].len() <= MAX_CHUNK_TOKENS {
                tokens += batch[end].len();
                end += 1;
            }
            out.extend(self.embed_chunk(&batch[start..end]));
            start = end;
        }
        out
    }

    fn embed_chunk(&self, batch: &[&[u32]]) -> Vec<Vec<f32>> {
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
        let nt = self.par.threads();
        let (h, inter) = (self.hidden, self.inter);
        let hp = h + (h & 1);
        let ip = inter + (inter & 1);
        let lens: Vec<usize> = batch.iter().map(|s| s.len()).collect();
        let t: usize = lens.iter().sum();

        let mut bufs = Bufs {
            x: fit(&mut ws.x, t * h),
            xq: fit(&mut ws.xq, t * hp),
            xs: fit(&mut ws.xs, t),
            qkv: fit(&mut ws.qkv, t * 3 * h),
            ctx: fit(&mut ws.ctx, t * h),
            h: fit(&mut ws.h, t * h),
            inter: fit(&mut ws.inter, t * inter),
            iq: fit(&mut ws.iq, t * ip),
            is: fit(&mut ws.is, t),
        };

        // Sequences are independent: with at least as many sequences as threads, each
        // thread runs the whole stack on its own contiguous group of sequences (about
        // the same number of tokens each) and nobody waits for anybody until the end.
        // Fewer sequences than threads (batch 1): one group, every step split across
        // the threads instead.
        let groups = split_groups(&lens, nt.min(batch.len()).max(1));
        if groups.len() == 1 {
            self.run(batch, nt, bufs.reborrow());
        } else {
            let mut parts = Vec::with_capacity(groups.len());
            let mut rest = bufs.reborrow();
            for g in &groups {
                let rows: usize = lens[g.clone()].iter().sum();
                let (head, tail) = rest.split_at_rows(rows, h, hp, ip, inter);
                parts.push((g.clone(), head));
                rest = tail;
            }
            let inner = (nt / groups.len()).max(1);
            rayon::scope(|sc| {
                let mut it = parts.into_iter();
                let (g0, b0) = it.next().expect("at least two groups");
                for (g, b) in it {
                    sc.spawn(move |_| self.run(&batch[g], inner, b));
                }
                self.run(&batch[g0], inner, b0);
            });
        }

        let mut out = vec![vec![0f32; h]; batch.len()];
        let mut start = 0;
        for (o, len) in out.iter_mut().zip(&lens) {
            ops::mean_pool_normalize(&bufs.x[start * h..(start + len) * h], h, o);
            start += len;
        }
        out
    }

    /// `out (t × n) = act(x Wᵀ + b)`. The integer path takes `x`'s quantized copy when
    /// given, else quantizes `x` into `q_scratch`/`s_scratch` first.
    #[allow(clippy::too_many_arguments)]
    fn linear(
        &self,
        nt: usize,
        lin: &Lin,
        x: &[f32],
        quantized: Option<(&[i16], &[f32])>,
        q_scratch: &mut [i16],
        s_scratch: &mut [f32],
        t: usize,
        act: Act,
        out: &mut [f32],
    ) {
        match lin {
            Lin::F(w) => fgemm(self.isa, nt, x, t, w, act, out),
            Lin::Q(w) => match quantized {
                Some((q, s)) => qgemm(self.isa, nt, q, s, t, w, act, out),
                None => {
                    let _p = Stage::start(3);
                    quantize_rows(self.isa, nt, x, t, w.k, q_scratch, s_scratch);
                    drop(_p);
                    qgemm(self.isa, nt, q_scratch, s_scratch, t, w, act, out)
                }
            },
        }
    }

    /// The encoder stack over `batch` (its rows are `bufs`' rows, in order), with `nt`
    /// threads splitting each step.
    fn run(&self, batch: &[&[u32]], nt: usize, b: Bufs<'_>) {
        let isa = self.isa;
        let (h, heads, d) = (self.hidden, self.heads, self.head_dim);
        let hp = h + (h & 1);
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
        let Bufs {
            x,
            xq,
            xs,
            qkv,
            ctx,
            h: hbuf,
            inter: ibuf,
            iq,
            is,
        } = b;
        // Embeddings + layer norm + quantization.
        {
            let _p = Stage::start(0);
            let (xp, xqp, xsp) = (SyncPtr::new(x), SyncPtr::new(xq), SyncPtr::new(xs));
            for_ranges(t, nt, |r| {
                for tok in r {
                    let (id, pos) = tokens[tok];
                    // SAFETY: each token's rows are written by one thread only.
                    let (xr, qr, sr) = unsafe {
                        (
                            xp.slice(tok * h, h),
                            xqp.slice(tok * hp, hp),
                            xsp.slice(tok, 1),
                        )
                    };
                    let wr = &self.word[id as usize * h..(id as usize + 1) * h];
                    let pr = &self.pos_type[pos * h..(pos + 1) * h];
                    for ((o, a), b) in xr.iter_mut().zip(wr).zip(pr) {
                        *o = a + b;
                    }
                    sr[0] = ops::add_norm_quantize(
                        isa,
                        &[],
                        xr,
                        &self.emb_g,
                        &self.emb_b,
                        self.eps,
                        qr,
                    );
                }
            });
        }

        // Attention tasks, longest sequences first (better balance).
        let mut order: Vec<usize> = (0..batch.len()).collect();
        order.sort_by_key(|&s| std::cmp::Reverse(batch[s].len()));

        for layer in &self.layers {
            {
                let _p = Stage::start(1);
                self.linear(nt, &layer.qkv, x, Some((xq, xs)), iq, is, t, Act::None, qkv);
            }

            {
                let _p = Stage::start(2);
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
            {
                let _p = Stage::start(4);
                self.linear(nt, &layer.attn_out, ctx, None, iq, is, t, Act::None, hbuf);
            }
            {
                let _p = Stage::start(5);
                add_norm_rows(
                    isa,
                    nt,
                    hbuf,
                    x,
                    t,
                    h,
                    &layer.ln1_g,
                    &layer.ln1_b,
                    self.eps,
                    xq,
                    xs,
                );
            }
            {
                let _p = Stage::start(6);
                self.linear(
                    nt,
                    &layer.inter,
                    x,
                    Some((xq, xs)),
                    iq,
                    is,
                    t,
                    self.act,
                    ibuf,
                );
            }
            {
                let _p = Stage::start(7);
                self.linear(nt, &layer.output, ibuf, None, iq, is, t, Act::None, hbuf);
            }
            {
                let _p = Stage::start(5);
                add_norm_rows(
                    isa,
                    nt,
                    hbuf,
                    x,
                    t,
                    h,
                    &layer.ln2_g,
                    &layer.ln2_b,
                    self.eps,
                    xq,
                    xs,
                );
            }
        }
    }
}

/// The forward pass's buffers (or one group's rows of them).
struct Bufs<'a> {
    x: &'a mut [f32],
    xq: &'a mut [i16],
    xs: &'a mut [f32],
    qkv: &'a mut [f32],
    ctx: &'a mut [f32],
    h: &'a mut [f32],
    inter: &'a mut [f32],
    iq: &'a mut [i16],
    is: &'a mut [f32],
}

impl<'a> Bufs<'a> {
    fn reborrow(&mut self) -> Bufs<'_> {
        Bufs {
            x: self.x,
            xq: self.xq,
            xs: self.xs,
            qkv: self.qkv,
            ctx: self.ctx,
            h: self.h,
            inter: self.inter,
            iq: self.iq,
            is: self.is,
        }
    }

    /// The first `rows` rows, and the rest.
    fn split_at_rows(
        self,
        rows: usize,
        h: usize,
        hp: usize,
        ip: usize,
        inter: usize,
    ) -> (Self, Self) {
        let (x0, x1) = self.x.split_at_mut(rows * h);
        let (xq0, xq1) = self.xq.split_at_mut(rows * hp);
        let (xs0, xs1) = self.xs.split_at_mut(rows);
        let (qkv0, qkv1) = self.qkv.split_at_mut(rows * 3 * h);
        let (ctx0, ctx1) = self.ctx.split_at_mut(rows * h);
        let (h0, h1) = self.h.split_at_mut(rows * h);
        let (i0, i1) = self.inter.split_at_mut(rows * inter);
        let (iq0, iq1) = self.iq.split_at_mut(rows * ip);
        let (is0, is1) = self.is.split_at_mut(rows);
        (
            Bufs {
                x: x0,
                xq: xq0,
                xs: xs0,
                qkv: qkv0,
                ctx: ctx0,
                h: h0,
                inter: i0,
                iq: iq0,
                is: is0,
            },
            Bufs {
                x: x1,
                xq: xq1,
                xs: xs1,
                qkv: qkv1,
                ctx: ctx1,
                h: h1,
                inter: i1,
                iq: iq1,
                is: is1,
            },
        )
    }
}

/// Splits sequences `0..lens.len()` into at most `parts` contiguous, non-empty groups
/// with about the same number of tokens each.
fn split_groups(lens: &[usize], parts: usize) -> Vec<std::ops::Range<usize>> {
    let total: usize = lens.iter().sum();
    let mut groups = Vec::with_capacity(parts);
    let mut start = 0;
    let mut acc = 0;
    for g in 0..parts {
        if start >= lens.len() {
            break;
        }
        let remaining_groups = parts - g;
        if remaining_groups == 1 {
            groups.push(start..lens.len());
            break;
        }
        // Close this group once it reaches its share of the tokens, leaving at least
        // one sequence for each later group.
        let target = total * (g + 1) / parts;
        let mut end = start + 1;
        acc += lens[start];
        while end < lens.len() - (remaining_groups - 1) && acc + lens[end] / 2 < target {
            acc += lens[end];
            end += 1;
        }
        groups.push(start..end);
        start = end;
    }
    groups
}

/// Per-stage wall time of the forward passes, summed over calls and threads, when the
/// environment variable `AIFAB_ENCODER_PROFILE` is set (a tuning aid; see
/// [`stage_report`]). Off, a stage costs one relaxed load.
static STAGE_NANOS: [std::sync::atomic::AtomicU64; STAGES.len()] =
    [const { std::sync::atomic::AtomicU64::new(0) }; STAGES.len()];
const STAGES: [&str; 8] = [
    "embed",
    "qkv",
    "attention",
    "quantize",
    "attn_out",
    "add_norm",
    "ffn_in",
    "ffn_out",
];

fn profiling() -> bool {
    static ON: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *ON.get_or_init(|| std::env::var_os("AIFAB_ENCODER_PROFILE").is_some())
}

/// Times one stage until dropped (when profiling).
struct Stage(usize, std::time::Instant);

impl Stage {
    fn start(i: usize) -> Option<Self> {
        profiling().then(|| Stage(i, std::time::Instant::now()))
    }
}

impl Drop for Stage {
    fn drop(&mut self) {
        STAGE_NANOS[self.0].fetch_add(
            self.1.elapsed().as_nanos() as u64,
            std::sync::atomic::Ordering::Relaxed,
        );
    }
}

/// `stage=milliseconds ...` accumulated so far (all zero unless `AIFAB_ENCODER_PROFILE`
/// is set).
pub fn stage_report() -> String {
    STAGES
        .iter()
        .zip(STAGE_NANOS.iter())
        .map(|(n, v)| {
            let ms = v.load(std::sync::atomic::Ordering::Relaxed) as f64 / 1e6;
            format!("{n}={ms:.0}ms")
        })
        .collect::<Vec<_>>()
        .join(" ")
}

thread_local! {
    static SCRATCH: std::cell::RefCell<(AttnScratch, Vec<f32>)> =
        std::cell::RefCell::new((AttnScratch::default(), Vec::new()));
}

/// Quantizes `t` rows of `k` floats into rows of `k` rounded up to even.
fn quantize_rows(isa: Isa, nt: usize, x: &[f32], t: usize, k: usize, q: &mut [i16], s: &mut [f32]) {
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
            let (xr, qr, sr) = unsafe {
                (
                    xp.slice(row * h, h),
                    qp.slice(row * hp, hp),
                    sp.slice(row, 1),
                )
            };
            sr[0] = ops::add_norm_quantize(isa, &a[row * h..(row + 1) * h], xr, g, b, eps, qr);
        }
    });
}

#[cfg(test)]
mod tests {
    use super::split_groups;

    #[test]
    fn groups_are_contiguous_non_empty_and_balanced() {
        for (lens, parts) in [
            (vec![5usize], 2usize),
            (vec![5, 5], 2),
            (vec![1, 1, 1, 100], 2),
            (vec![100, 1, 1, 1], 2),
            (vec![10; 7], 3),
            (vec![3, 9, 4, 4, 20, 1, 1, 8], 2),
            (vec![2, 2, 2], 3),
        ] {
            let g = split_groups(&lens, parts);
            assert_eq!(g.len(), parts.min(lens.len()), "{lens:?}");
            assert_eq!(g[0].start, 0);
            assert_eq!(g.last().unwrap().end, lens.len());
            for w in g.windows(2) {
                assert_eq!(w[0].end, w[1].start);
            }
            assert!(g.iter().all(|r| !r.is_empty()), "{lens:?}: {g:?}");
            // No group is bigger than its share plus one sequence.
            let total: usize = lens.iter().sum();
            let max_len = *lens.iter().max().unwrap();
            for r in &g {
                let sum: usize = lens[r.clone()].iter().sum();
                assert!(sum <= total / parts + max_len, "{lens:?}: {g:?}");
            }
        }
        let g = split_groups(&[10; 8], 2);
        assert_eq!(g, vec![0..4, 4..8]);
    }
}
