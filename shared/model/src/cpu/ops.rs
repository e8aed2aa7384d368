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
    y = _mm256_fmadd_ps(
        y,
        _mm256_mul_ps(r, r),
        _mm256_add_ps(r, _mm256_set1_ps(1.0)),
    );
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

/// `act` on one vector.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
pub(crate) unsafe fn act256(act: Act, v: __m256) -> __m256 {
    match act {
        Act::None => v,
        Act::Gelu => gelu256(v),
        Act::GeluTanh => gelu_tanh256(v),
        Act::Relu => _mm256_max_ps(v, _mm256_setzero_ps()),
    }
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
    if !m.is_finite() || m <= 0.0 {
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
#[inline(always)]
unsafe fn hsum256(v: __m256) -> f32 {
    let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    let s = _mm_add_ss(s, _mm_shuffle_ps(s, s, 1));
    _mm_cvtss_f32(s)
}

#[cfg(target_arch = "x86_64")]
#[inline(always)]
unsafe fn hmax256(v: __m256) -> f32 {
    let s = _mm_max_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    let s = _mm_max_ps(s, _mm_movehl_ps(s, s));
    let s = _mm_max_ss(s, _mm_shuffle_ps(s, s, 1));
    _mm_cvtss_f32(s)
}

/// Quantizes `row` with its known max |x| `m` (see [`quantize_row_body`]).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn quantize_with_max_avx2(row: &[f32], q: &mut [i16], m: f32) -> f32 {
    if !m.is_finite() || m <= 0.0 {
        q.iter_mut().for_each(|v| *v = 0);
        return 0.0;
    }
    let n = row.len();
    let n16 = n / 16 * 16;
    let inv = A_MAX / m;
    let iv = _mm256_set1_ps(inv);
    let (rp, qp) = (row.as_ptr(), q.as_mut_ptr());
    let mut i = 0;
    while i < n16 {
        // cvtps rounds to nearest even (the default MXCSR mode), like round_ties_even.
        let a = _mm256_cvtps_epi32(_mm256_mul_ps(_mm256_loadu_ps(rp.add(i)), iv));
        let b = _mm256_cvtps_epi32(_mm256_mul_ps(_mm256_loadu_ps(rp.add(i + 8)), iv));
        let packed = _mm256_permute4x64_epi64(_mm256_packs_epi32(a, b), 0b11_01_10_00);
        _mm256_storeu_si256(qp.add(i) as *mut __m256i, packed);
        i += 16;
    }
    for j in n16..n {
        q[j] = (row[j] * inv).round_ties_even() as i16;
    }
    for d in &mut q[n..] {
        *d = 0;
    }
    m / A_MAX
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn quantize_row_avx2(row: &[f32], q: &mut [i16]) -> f32 {
    let n = row.len();
    let n8 = n / 8 * 8;
    let rp = row.as_ptr();
    let abs = _mm256_castsi256_ps(_mm256_set1_epi32(0x7fff_ffff));
    let mut mv = _mm256_setzero_ps();
    let mut i = 0;
    while i < n8 {
        mv = _mm256_max_ps(mv, _mm256_and_ps(_mm256_loadu_ps(rp.add(i)), abs));
        i += 8;
    }
    let mut m = hmax256(mv);
    for &x in &row[n8..] {
        m = m.max(x.abs());
    }
    quantize_with_max_avx2(row, q, m)
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
    let n = x.len();
    assert!(gamma.len() >= n && beta.len() >= n && (a.is_empty() || a.len() >= n));
    let n8 = n / 8 * 8;
    let xp = x.as_mut_ptr();
    let mut sv = _mm256_setzero_ps();
    let mut i = 0;
    while i < n8 {
        let mut v = _mm256_loadu_ps(xp.add(i));
        if !a.is_empty() {
            v = _mm256_add_ps(v, _mm256_loadu_ps(a.as_ptr().add(i)));
            _mm256_storeu_ps(xp.add(i), v);
        }
        sv = _mm256_add_ps(sv, v);
        i += 8;
    }
    let mut sum = hsum256(sv);
    for j in n8..n {
        if !a.is_empty() {
            x[j] += a[j];
        }
        sum += x[j];
    }
    let mean = sum / n as f32;
    let mv = _mm256_set1_ps(mean);
    let mut dv = _mm256_setzero_ps();
    i = 0;
    while i < n8 {
        let d = _mm256_sub_ps(_mm256_loadu_ps(xp.add(i)), mv);
        dv = _mm256_fmadd_ps(d, d, dv);
        i += 8;
    }
    let mut var = hsum256(dv);
    for &v in &x[n8..] {
        var += (v - mean) * (v - mean);
    }
    let inv = 1.0 / (var / n as f32 + eps).sqrt();
    let iv = _mm256_set1_ps(inv);
    let abs = _mm256_castsi256_ps(_mm256_set1_epi32(0x7fff_ffff));
    let mut mx = _mm256_setzero_ps();
    i = 0;
    while i < n8 {
        let d = _mm256_mul_ps(_mm256_sub_ps(_mm256_loadu_ps(xp.add(i)), mv), iv);
        let y = _mm256_fmadd_ps(
            d,
            _mm256_loadu_ps(gamma.as_ptr().add(i)),
            _mm256_loadu_ps(beta.as_ptr().add(i)),
        );
        _mm256_storeu_ps(xp.add(i), y);
        mx = _mm256_max_ps(mx, _mm256_and_ps(y, abs));
        i += 8;
    }
    let mut m = hmax256(mx);
    for j in n8..n {
        x[j] = (x[j] - mean) * inv * gamma[j] + beta[j];
        m = m.max(x[j].abs());
    }
    quantize_with_max_avx2(x, q, m)
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
    if !d.is_multiple_of(8) {
        return attention_body(len, d, q, k, v, stride, out, out_stride, s, |xs| unsafe {
            softmax_unnormalized_avx2(xs)
        });
    }
    assert!(len > 0 && q.len() >= (len - 1) * stride + d);
    assert!(k.len() >= (len - 1) * stride + d && v.len() >= (len - 1) * stride + d);
    assert!(out.len() >= (len - 1) * out_stride + d);
    // Kᵀ, keys padded to a multiple of 8 (the pad columns are zero; their scores are
    // never read).
    let lp = len.div_ceil(8) * 8;
    s.kt.clear();
    s.kt.resize(d * lp, 0.0);
    for j in 0..len {
        let kr = &k[j * stride..j * stride + d];
        for (dd, &kv) in kr.iter().enumerate() {
            *s.kt.get_unchecked_mut(dd * lp + j) = kv;
        }
    }
    s.scores.clear();
    s.scores.resize(len * lp, 0.0);
    let kt = s.kt.as_ptr();
    let scores = s.scores.as_mut_ptr();
    // All scores first, two queries at a time and up to 4 blocks of 8 keys: 2-8
    // independent FMA chains sharing each Kᵀ load.
    let mut i = 0;
    while i < len {
        let two = i + 1 < len;
        let q0 = q.as_ptr().add(i * stride);
        let q1 = if two { q0.add(stride) } else { q0 };
        let (s0, s1) = (
            scores.add(i * lp),
            scores.add(if two { i + 1 } else { i } * lp),
        );
        let mut jb = 0;
        while jb < lp {
            let nb = ((lp - jb) / 8).min(4);
            let (k0, o0, o1) = (kt.add(jb), s0.add(jb), s1.add(jb));
            match nb {
                4 => qk_blocks::<4>(q0, q1, d, k0, lp, o0, o1),
                3 => qk_blocks::<3>(q0, q1, d, k0, lp, o0, o1),
                2 => qk_blocks::<2>(q0, q1, d, k0, lp, o0, o1),
                _ => qk_blocks::<1>(q0, q1, d, k0, lp, o0, o1),
            }
            jb += nb * 8;
        }
        i += 2;
    }
    for i in 0..len {
        let sc = scores.add(i * lp);
        let sum = softmax_unnormalized_avx2(std::slice::from_raw_parts_mut(sc, len));
        let inv = _mm256_set1_ps(1.0 / sum);
        // out_i = Σ_j p_j v_j, 32 columns (4 vectors) at a time, keys in pairs.
        let op = out.as_mut_ptr().add(i * out_stride);
        let mut db = 0;
        while db < d {
            let nc = ((d - db) / 8).min(4);
            let mut acc = [_mm256_setzero_ps(); 8];
            let mut j = 0;
            while j + 1 < len {
                let p0 = _mm256_set1_ps(*sc.add(j));
                let p1 = _mm256_set1_ps(*sc.add(j + 1));
                let v0 = v.as_ptr().add(j * stride + db);
                let v1 = v0.add(stride);
                for c in 0..nc {
                    acc[c] = _mm256_fmadd_ps(p0, _mm256_loadu_ps(v0.add(8 * c)), acc[c]);
                    acc[4 + c] = _mm256_fmadd_ps(p1, _mm256_loadu_ps(v1.add(8 * c)), acc[4 + c]);
                }
                j += 2;
            }
            if j < len {
                let p0 = _mm256_set1_ps(*sc.add(j));
                let v0 = v.as_ptr().add(j * stride + db);
                for (c, a) in acc.iter_mut().enumerate().take(nc) {
                    *a = _mm256_fmadd_ps(p0, _mm256_loadu_ps(v0.add(8 * c)), *a);
                }
            }
            for c in 0..nc {
                _mm256_storeu_ps(
                    op.add(db + 8 * c),
                    _mm256_mul_ps(_mm256_add_ps(acc[c], acc[4 + c]), inv),
                );
            }
            db += nc * 8;
        }
    }
}

/// `s0[0..8B] = q0 · kt[:, 0..8B]` and the same for `q1` into `s1` (kt rows `lp`
/// apart). `q1` may equal `q0` (and `s1` equal `s0`).
#[cfg(target_arch = "x86_64")]
#[inline(always)]
unsafe fn qk_blocks<const B: usize>(
    q0: *const f32,
    q1: *const f32,
    d: usize,
    kt: *const f32,
    lp: usize,
    s0: *mut f32,
    s1: *mut f32,
) {
    let mut a0 = [_mm256_setzero_ps(); B];
    let mut a1 = [_mm256_setzero_ps(); B];
    for dd in 0..d {
        let x0 = _mm256_set1_ps(*q0.add(dd));
        let x1 = _mm256_set1_ps(*q1.add(dd));
        let row = kt.add(dd * lp);
        for b in 0..B {
            let kv = _mm256_loadu_ps(row.add(8 * b));
            a0[b] = _mm256_fmadd_ps(x0, kv, a0[b]);
            a1[b] = _mm256_fmadd_ps(x1, kv, a1[b]);
        }
    }
    for b in 0..B {
        _mm256_storeu_ps(s1.add(8 * b), a1[b]);
        _mm256_storeu_ps(s0.add(8 * b), a0[b]);
    }
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
                    * (1.0
                        + ((2.0 / std::f64::consts::PI).sqrt() * (x64 + 0.044715 * x64.powi(3)))
                            .tanh());
                assert!(
                    (got as f64 - want).abs() <= 1e-6 * (1.0 + x64.abs()),
                    "{isa:?} gelu_tanh({x})"
                );
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
                    .map(|j| {
                        (0..d)
                            .map(|t| q[i * stride + t] as f64 * k[j * stride + t] as f64)
                            .sum()
                    })
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
            // Summation order differs between the vector and portable code: equal up to
            // float rounding (and a quantized level where a value sits on a .5 edge).
            for i in 0..n {
                assert!(
                    (xa[i] - xs[i]).abs() < 1e-5,
                    "n {n} [{i}]: {} vs {}",
                    xa[i],
                    xs[i]
                );
                assert!(
                    (qa[i] - qs[i]).abs() <= 1,
                    "n {n} [{i}]: {} vs {}",
                    qa[i],
                    qs[i]
                );
            }
            assert!((sa - ss).abs() <= 1e-6 * ss.abs());
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
