//! Row-wise f32 operations of the fast CPU encoder: layer norm (with the residual add
//! fused), activation quantization, GELU, softmax, attention for one head of one
//! sequence, mean pooling.
//!
//! Each has a portable body; the AVX2+FMA variants (chosen at run time, see [`Isa`]) are
//! the same body compiled with those features enabled plus hand-written `exp`/`erf`
//! vector code, so binaries stay portable (no `-C target-cpu`).

#[cfg(target_arch = "x86_64")]
use std::arch::x86_64::*;

/// The instruction set the kernels use, picked once at load time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Isa {
    /// Plain Rust (any CPU).
    Scalar,
    /// x86-64 with AVX2 and FMA.
    Avx2,
}

impl Isa {
    /// The best this CPU supports.
    pub(crate) fn detect() -> Isa {
        #[cfg(target_arch = "x86_64")]
        {
            if is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") {
                return Isa::Avx2;
            }
        }
        Isa::Scalar
    }
}

/// Activation after a linear layer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Act {
    None,
    /// GELU with the exact erf (BERT's `gelu`).
    Gelu,
    /// GELU's tanh approximation (`gelu_new`).
    GeluTanh,
    Relu,
}

// ---------------------------------------------------------------------------------
// Scalar math shared by both paths.

const ERF_P: f32 = 0.327_591_1;
const ERF_A: [f32; 5] = [
    0.254_829_6,
    -0.284_496_74,
    1.421_413_7,
    -1.453_152_1,
    1.061_405_4,
];

/// gelu(x) = x Φ(x), erf by Abramowitz & Stegun 7.1.26 (|error| < 1.5e-7), written so
/// negative inputs do not suffer cancellation.
#[inline(always)]
fn gelu_scalar(x: f32) -> f32 {
    let z = x.abs() * std::f32::consts::FRAC_1_SQRT_2;
    let t = 1.0 / (1.0 + ERF_P * z);
    let poly = t * (ERF_A[0] + t * (ERF_A[1] + t * (ERF_A[2] + t * (ERF_A[3] + t * ERF_A[4]))));
    let q = poly * (-z * z).exp(); // 1 - erf(|z|)
    0.5 * x * if x >= 0.0 { 2.0 - q } else { q }
}

#[inline(always)]
fn gelu_tanh_scalar(x: f32) -> f32 {
    let y = 0.797_884_6 * (x + 0.044_715 * x * x * x);
    x / (1.0 + (-2.0 * y).exp())
}

#[inline(always)]
fn act_scalar(act: Act, x: f32) -> f32 {
    match act {
        Act::None => x,
        Act::Gelu => gelu_scalar(x),
        Act::GeluTanh => gelu_tanh_scalar(x),
        Act::Relu => x.max(0.0),
    }
}

// ---------------------------------------------------------------------------------
// AVX2 vector math.

#[cfg(target_arch = "x86_64")]
#[inline(always)]
unsafe fn exp256(x: __m256) -> __m256 {
    // Cephes expf: 2^n * e^r, |r| <= ln2/2, degree-6 polynomial (about 1 ulp).
    let x = _mm256_min_ps(x, _mm256_set1_ps(88.376_26));
    let x = _mm256_max_ps(x, _mm256_set1_ps(-87.336_55));
    let fx = _mm256_round_ps(
        _mm256_mul_ps(x, _mm256_set1_ps(std::f32::consts::LOG2_E)),
        _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC,
    );
    let r = _mm256_fnmadd_ps(fx, _mm256_set1_ps(0.693_359_4), x);
    let r = _mm256_fnmadd_ps(fx, _mm256_set1_ps(-2.121_944_4e-4), r);
    let mut y = _mm256_set1_ps(1.987_569_1e-4);
    y = _mm256_fmadd_ps(y, r, _mm256_set1_ps(1.398_199_9e-3));
    y = _mm256_fmadd_ps(y, r, _mm256_set1_ps(8.333_452e-3));
    y = _mm256_fmadd_ps(y, r, _mm256_set1_ps(4.166_579_6e-2));
    y = _mm256_fmadd_ps(y, r, _mm256_set1_ps(0.166_666_65));
    y = _mm256_fmadd_ps(y, r, _mm256_set1_ps(0.5));
    y = _mm256_fmadd_ps(y, _mm256_mul_ps(r, r), _mm256_add_ps(r, _mm256_set1_ps(1.0)));
    let n = _mm256_cvtps_epi32(fx);
    let pow2n = _mm256_castsi256_ps(_mm256_slli_epi32(
        _mm256_add_epi32(n, _mm256_set1_epi32(127)),
        23,
    ));
    _mm256_mul_ps(y, pow2n)
}

#[cfg(target_arch = "x86_64")]
#[inline(always)]
unsafe fn gelu256(x: __m256) -> __m256 {
    let sign_mask = _mm256_set1_ps(-0.0);
    let z = _mm256_mul_ps(
        _mm256_andnot_ps(sign_mask, x),
        _mm256_set1_ps(std::f32::consts::FRAC_1_SQRT_2),
    );
    let one = _mm256_set1_ps(1.0);
    let t = _mm256_div_ps(one, _mm256_fmadd_ps(_mm256_set1_ps(ERF_P), z, one));
    let mut p = _mm256_set1_ps(ERF_A[4]);
    p = _mm256_fmadd_ps(p, t, _mm256_set1_ps(ERF_A[3]));
    p = _mm256_fmadd_ps(p, t, _mm256_set1_ps(ERF_A[2]));
    p = _mm256_fmadd_ps(p, t, _mm256_set1_ps(ERF_A[1]));
    p = _mm256_fmadd_ps(p, t, _mm256_set1_ps(ERF_A[0]));
    p = _mm256_mul_ps(p, t);
    let e = exp256(_mm256_sub_ps(_mm256_setzero_ps(), _mm256_mul_ps(z, z)));
    let q = _mm256_mul_ps(p, e);
    let pos = _mm256_cmp_ps(x, _mm256_setzero_ps(), _CMP_GE_OQ);
    let f = _mm256_blendv_ps(q, _mm256_sub_ps(_mm256_set1_ps(2.0), q), pos);
    _mm256_mul_ps(_mm256_mul_ps(_mm256_set1_ps(0.5), x), f)
}

#[cfg(target_arch = "x86_64")]
#[inline(always)]
unsafe fn gelu_tanh256(x: __m256) -> __m256 {
    let x3 = _mm256_mul_ps(_mm256_mul_ps(x, x), x);
    let y = _mm256_mul_ps(
        _mm256_set1_ps(0.797_884_6),
        _mm256_fmadd_ps(_mm256_set1_ps(0.044_715), x3, x),
    );
    let e = exp256(_mm256_mul_ps(_mm256_set1_ps(-2.0), y));
    _mm256_div_ps(x, _mm256_add_ps(_mm256_set1_ps(1.0), e))
}

/// Applies `act` to `xs` in place.
pub(crate) fn activate(isa: Isa, act: Act, xs: &mut [f32]) {
    if act == Act::None {
        return;
    }
    match isa {
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2 => unsafe { activate_avx2(act, xs) },
        _ => xs.iter_mut().for_each(|x| *x = act_scalar(act, *x)),
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn activate_avx2(act: Act, xs: &mut [f32]) {
    let n8 = xs.len() / 8 * 8;
    let p = xs.as_mut_ptr();
    let mut i = 0;
    while i < n8 {
        let v = _mm256_loadu_ps(p.add(i));
        let r = match act {
            Act::Gelu => gelu256(v),
            Act::GeluTanh => gelu_tanh256(v),
            Act::Relu => _mm256_max_ps(v, _mm256_setzero_ps()),
            Act::None => v,
        };
        _mm256_storeu_ps(p.add(i), r);
        i += 8;
    }
    for x in &mut xs[n8..] {
        *x = act_scalar(act, *x);
    }
}

// ---------------------------------------------------------------------------------
// Layer norm + quantization.

/// Activations are quantized per row to ±A_MAX (12-bit signed; see `qgemm`).
pub(crate) const A_MAX: f32 = 2047.0;

#[inline(always)]
fn sum8(xs: &[f32]) -> f32 {
    let mut acc = [0f32; 8];
    let mut chunks = xs.chunks_exact(8);
    for c in &mut chunks {
        for l in 0..8 {
            acc[l] += c[l];
        }
    }
    let mut s = ((acc[0] + acc[4]) + (acc[1] + acc[5])) + ((acc[2] + acc[6]) + (acc[3] + acc[7]));
    for x in chunks.remainder() {
        s += x;
    }
    s
}

#[inline(always)]
fn sq_dev_sum8(xs: &[f32], mean: f32) -> f32 {
    let mut acc = [0f32; 8];
    let mut chunks = xs.chunks_exact(8);
    for c in &mut chunks {
        for l in 0..8 {
            let d = c[l] - mean;
            acc[l] += d * d;
        }
    }
    let mut s = ((acc[0] + acc[4]) + (acc[1] + acc[5])) + ((acc[2] + acc[6]) + (acc[3] + acc[7]));
    for x in chunks.remainder() {
        s += (x - mean) * (x - mean);
    }
    s
}

#[inline(always)]
fn max_abs8(xs: &[f32]) -> f32 {
    let mut acc = [0f32; 8];
    let mut chunks = xs.chunks_exact(8);
    for c in &mut chunks {
        for l in 0..8 {
            let a = c[l].abs();
            acc[l] = if a > acc[l] { a } else { acc[l] };
        }
    }
    let mut m = 0f32;
    for a in acc {
        m = if a > m { a } else { m };
    }
    for x in chunks.remainder() {
        let a = x.abs();
        m = if a > m { a } else { m };
    }
    m
}

/// Quantizes one row to i16 (`q.len()` is the row length rounded up to even; the pad
/// entry is 0). Returns the scale: `row ≈ q * scale`.
#[inline(always)]
fn quantize_row_body(row: &[f32], q: &mut [i16]) -> f32 {
    let m = max_abs8(row);
    if !(m > 0.0) || !m.is_finite() {
        q.iter_mut().for_each(|v| *v = 0);
        return 0.0;
    }
    let inv = A_MAX / m;
    for (d, &x) in q.iter_mut().zip(row) {
        *d = (x * inv).round_ties_even() as i16;
    }
    for d in &mut q[row.len()..] {
        *d = 0;
    }
    m / A_MAX
}

#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn add_norm_body(
    a: &[f32],
    x: &mut [f32],
    gamma: &[f32],
    beta: &[f32],
    eps: f32,
    q: &mut [i16],
) -> f32 {
    if !a.is_empty() {
        for (xv, av) in x.iter_mut().zip(a) {
            *xv += av;
        }
    }
    let n = x.len() as f32;
    let mean = sum8(x) / n;
    let var = sq_dev_sum8(x, mean) / n;
    let inv = 1.0 / (var + eps).sqrt();
    for ((xv, g), b) in x.iter_mut().zip(gamma).zip(beta) {
        *xv = (*xv - mean) * inv * g + b;
    }
    quantize_row_body(x, q)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn add_norm_avx2(
    a: &[f32],
    x: &mut [f32],
    gamma: &[f32],
    beta: &[f32],
    eps: f32,
    q: &mut [i16],
) -> f32 {
    add_norm_body(a, x, gamma, beta, eps, q)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn quantize_row_avx2(row: &[f32], q: &mut [i16]) -> f32 {
    quantize_row_body(row, q)
}

/// `x = LayerNorm(x + a)` (`a` may be empty: no residual), then `q, scale` = the
/// quantized `x`. Returns the scale.
pub(crate) fn add_norm_quantize(
    isa: Isa,
    a: &[f32],
    x: &mut [f32],
    gamma: &[f32],
    beta: &[f32],
    eps: f32,
    q: &mut [i16],
) -> f32 {
    match isa {
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2 => unsafe { add_norm_avx2(a, x, gamma, beta, eps, q) },
        _ => add_norm_body(a, x, gamma, beta, eps, q),
    }
}

/// Quantizes one row (see [`add_norm_quantize`]); returns its scale.
pub(crate) fn quantize_row(isa: Isa, row: &[f32], q: &mut [i16]) -> f32 {
    match isa {
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2 => unsafe { quantize_row_avx2(row, q) },
        _ => quantize_row_body(row, q),
    }
}

// ---------------------------------------------------------------------------------
// Attention for one (sequence, head).

/// Scratch space for [`attention_head`], reused across calls on one thread.
#[derive(Default)]
pub(crate) struct AttnScratch {
    kt: Vec<f32>,
    scores: Vec<f32>,
}

/// One head of one sequence: `out_i = softmax(q_i · K^T) V` for each of the `len`
/// tokens. `q`, `k`, `v` point at the head's first element in row 0 and advance by
/// `stride` per token; `out` likewise with `out_stride`. The 1/√d scale is already in
/// `q`. No mask: the sequence holds only real tokens.
#[allow(clippy::too_many_arguments)]
pub(crate) fn attention_head(
    isa: Isa,
    len: usize,
    d: usize,
    q: &[f32],
    k: &[f32],
    v: &[f32],
    stride: usize,
    out: &mut [f32],
    out_stride: usize,
    s: &mut AttnScratch,
) {
    match isa {
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2 => unsafe { attention_avx2(len, d, q, k, v, stride, out, out_stride, s) },
        _ => attention_body(len, d, q, k, v, stride, out, out_stride, s, |xs| {
            let m = xs.iter().copied().fold(f32::NEG_INFINITY, f32::max);
            let mut sum = 0.0;
            for x in xs.iter_mut() {
                *x = (*x - m).exp();
                sum += *x;
            }
            sum
        }),
    }
}

#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn attention_body(
    len: usize,
    d: usize,
    q: &[f32],
    k: &[f32],
    v: &[f32],
    stride: usize,
    out: &mut [f32],
    out_stride: usize,
    s: &mut AttnScratch,
    softmax_unnormalized: impl Fn(&mut [f32]) -> f32,
) {
    // K transposed (d × len) so scores for consecutive keys are contiguous.
    s.kt.clear();
    s.kt.resize(d * len, 0.0);
    for j in 0..len {
        let kr = &k[j * stride..j * stride + d];
        for (dd, &kv) in kr.iter().enumerate() {
            s.kt[dd * len + j] = kv;
        }
    }
    s.scores.clear();
    s.scores.resize(len, 0.0);
    for i in 0..len {
        let qr = &q[i * stride..i * stride + d];
        let sc = &mut s.scores[..len];
        sc.iter_mut().for_each(|x| *x = 0.0);
        for (dd, &qv) in qr.iter().enumerate() {
            let kt = &s.kt[dd * len..dd * len + len];
            for (x, &kv) in sc.iter_mut().zip(kt) {
                *x += qv * kv;
            }
        }
        let sum = softmax_unnormalized(sc);
        let inv = 1.0 / sum;
        let o = &mut out[i * out_stride..i * out_stride + d];
        o.iter_mut().for_each(|x| *x = 0.0);
        for (j, &p) in sc.iter().enumerate() {
            let vr = &v[j * stride..j * stride + d];
            let w = p * inv;
            for (ov, &vv) in o.iter_mut().zip(vr) {
                *ov += w * vv;
            }
        }
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
#[allow(clippy::too_many_arguments)]
unsafe fn attention_avx2(
    len: usize,
    d: usize,
    q: &[f32],
    k: &[f32],
    v: &[f32],
    stride: usize,
    out: &mut [f32],
    out_stride: usize,
    s: &mut AttnScratch,
) {
    attention_body(len, d, q, k, v, stride, out, out_stride, s, |xs| unsafe {
        softmax_unnormalized_avx2(xs)
    })
}

/// `xs = exp(xs - max)`, returns the sum.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn softmax_unnormalized_avx2(xs: &mut [f32]) -> f32 {
    let n = xs.len();
    let n8 = n / 8 * 8;
    let p = xs.as_mut_ptr();
    let mut m = f32::NEG_INFINITY;
    let mut i;
    if n8 > 0 {
        let mut mv = _mm256_loadu_ps(p);
        i = 8;
        while i < n8 {
            mv = _mm256_max_ps(mv, _mm256_loadu_ps(p.add(i)));
            i += 8;
        }
        let mut lanes = [0f32; 8];
        _mm256_storeu_ps(lanes.as_mut_ptr(), mv);
        m = lanes.iter().copied().fold(m, f32::max);
    }
    for &x in &xs[n8..] {
        m = m.max(x);
    }
    let mvec = _mm256_set1_ps(m);
    let mut sv = _mm256_setzero_ps();
    i = 0;
    while i < n8 {
        let e = exp256(_mm256_sub_ps(_mm256_loadu_ps(p.add(i)), mvec));
        _mm256_storeu_ps(p.add(i), e);
        sv = _mm256_add_ps(sv, e);
        i += 8;
    }
    let mut lanes = [0f32; 8];
    _mm256_storeu_ps(lanes.as_mut_ptr(), sv);
    let mut sum: f32 = lanes.iter().sum();
    if n8 < n {
        // The tail through the same vector exp (padded lanes are discarded).
        let mut tail = [f32::NEG_INFINITY; 8];
        tail[..n - n8].copy_from_slice(&xs[n8..]);
        let e = exp256(_mm256_sub_ps(_mm256_loadu_ps(tail.as_ptr()), mvec));
        _mm256_storeu_ps(tail.as_mut_ptr(), e);
        for (x, t) in xs[n8..].iter_mut().zip(tail) {
            *x = t;
            sum += t;
        }
    }
    sum
}

// ---------------------------------------------------------------------------------
// Pooling.

/// Mean of `rows` (each `h` wide, contiguous), then L2-normalised, into `out`.
pub(crate) fn mean_pool_normalize(rows: &[f32], h: usize, out: &mut [f32]) {
    let n = rows.len() / h;
    let mut acc = vec![0f64; h];
    for r in rows.chunks_exact(h) {
        for (a, &x) in acc.iter_mut().zip(r) {
            *a += x as f64;
        }
    }
    let inv_n = 1.0 / n.max(1) as f64;
    let norm = acc
        .iter()
        .map(|a| (a * inv_n) * (a * inv_n))
        .sum::<f64>()
        .sqrt()
        .max(1e-12);
    for (o, a) in out.iter_mut().zip(&acc) {
        *o = (a * inv_n / norm) as f32;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// erf by its Taylor series in f64 (accurate to ~1e-12 for |x| <= 4).
    fn erf64(x: f64) -> f64 {
        if x.abs() > 4.0 {
            return x.signum();
        }
        let (mut term, mut sum) = (x, x);
        for n in 1..200 {
            term *= -x * x / n as f64;
            let add = term / (2 * n + 1) as f64;
            sum += add;
            if add.abs() < 1e-17 {
                break;
            }
        }
        sum * 2.0 / std::f64::consts::PI.sqrt()
    }

    fn grid() -> Vec<f32> {
        (-4000..=4000).map(|i| i as f32 * 0.0025).collect()
    }

    #[test]
    fn gelu_is_accurate_on_every_isa() {
        for isa in [Isa::Scalar, Isa::detect()] {
            let mut xs = grid();
            activate(isa, Act::Gelu, &mut xs);
            for (x, got) in grid().into_iter().zip(xs) {
                let x64 = x as f64;
                let want = 0.5 * x64 * (1.0 + erf64(x64 / std::f64::consts::SQRT_2));
                assert!(
                    (got as f64 - want).abs() <= 3e-7 * (1.0 + x64.abs()),
                    "{isa:?} gelu({x}) = {got}, want {want}"
                );
            }
            let mut xs = grid();
            activate(isa, Act::GeluTanh, &mut xs);
            for (x, got) in grid().into_iter().zip(xs) {
                let x64 = x as f64;
                let want = 0.5
                    * x64
                    * (1.0 + ((2.0 / std::f64::consts::PI).sqrt() * (x64 + 0.044715 * x64.powi(3))).tanh());
                assert!((got as f64 - want).abs() <= 1e-6 * (1.0 + x64.abs()), "{isa:?} gelu_tanh({x})");
            }
            let mut xs = grid();
            activate(isa, Act::Relu, &mut xs);
            assert!(grid().into_iter().zip(xs).all(|(x, y)| y == x.max(0.0)));
        }
    }

    #[test]
    fn attention_and_softmax_agree_across_isas() {
        let isa = Isa::detect();
        let mut seed = 3u32;
        let mut rnd = || {
            seed = seed.wrapping_mul(1664525).wrapping_add(1013904223);
            (seed >> 8) as f32 / (1u32 << 24) as f32 * 4.0 - 2.0
        };
        for (len, d) in [(1, 8), (7, 32), (9, 8), (37, 32), (130, 64)] {
            let stride = 3 * d + 5;
            let buf: Vec<f32> = (0..len * stride + 3 * d).map(|_| rnd()).collect();
            let (q, k, v) = (&buf[..], &buf[d..], &buf[2 * d..]);
            let mut out_a = vec![0f32; len * d];
            let mut out_s = vec![0f32; len * d];
            let mut sc = AttnScratch::default();
            attention_head(isa, len, d, q, k, v, stride, &mut out_a, d, &mut sc);
            attention_head(Isa::Scalar, len, d, q, k, v, stride, &mut out_s, d, &mut sc);
            // Reference in f64.
            for i in 0..len {
                let scores: Vec<f64> = (0..len)
                    .map(|j| (0..d).map(|t| q[i * stride + t] as f64 * k[j * stride + t] as f64).sum())
                    .collect();
                let m = scores.iter().cloned().fold(f64::MIN, f64::max);
                let e: Vec<f64> = scores.iter().map(|s| (s - m).exp()).collect();
                let z: f64 = e.iter().sum();
                for t in 0..d {
                    let want: f64 = (0..len).map(|j| e[j] / z * v[j * stride + t] as f64).sum();
                    for out in [&out_a, &out_s] {
                        assert!(
                            (out[i * d + t] as f64 - want).abs() < 1e-5,
                            "len {len} d {d} [{i},{t}]: {} vs {want}",
                            out[i * d + t]
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn norm_and_quantize_agree_across_isas() {
        let isa = Isa::detect();
        for n in [1usize, 7, 32, 33, 384] {
            let a: Vec<f32> = (0..n).map(|i| ((i * 37 % 11) as f32 - 5.0) * 0.3).collect();
            let x0: Vec<f32> = (0..n).map(|i| ((i * 13 % 7) as f32 - 3.0) * 0.7).collect();
            let g: Vec<f32> = (0..n).map(|i| 1.0 + i as f32 * 0.01).collect();
            let b: Vec<f32> = (0..n).map(|i| i as f32 * -0.02).collect();
            let np = n + (n & 1);
            let (mut xa, mut xs) = (x0.clone(), x0.clone());
            let (mut qa, mut qs) = (vec![1i16; np], vec![1i16; np]);
            let sa = add_norm_quantize(isa, &a, &mut xa, &g, &b, 1e-12, &mut qa);
            let ss = add_norm_quantize(Isa::Scalar, &a, &mut xs, &g, &b, 1e-12, &mut qs);
            assert_eq!(xa, xs);
            assert_eq!(qa, qs);
            assert_eq!(sa, ss);
            if n % 2 == 1 {
                assert_eq!(qa[n], 0, "odd rows are padded with 0");
            }
            // LayerNorm by hand.
            let v: Vec<f64> = x0.iter().zip(&a).map(|(x, y)| (*x + *y) as f64).collect();
            let mean = v.iter().sum::<f64>() / n as f64;
            let var = v.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / n as f64;
            for i in 0..n {
                let want = (v[i] - mean) / (var + 1e-12).sqrt() * g[i] as f64 + b[i] as f64;
                assert!((xa[i] as f64 - want).abs() < 1e-4, "n {n} [{i}]");
                assert!((qa[i] as f32 * sa - xa[i]).abs() <= sa * 0.5 + 1e-6);
            }
        }
        let mut q = vec![5i16; 4];
        assert_eq!(quantize_row(isa, &[0.0; 3], &mut q), 0.0);
        assert_eq!(q, vec![0; 4]);
    }
}
