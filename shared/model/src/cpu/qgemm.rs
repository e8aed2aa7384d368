//! Linear layers as integer matrix products: `y = (a_q · w_qᵀ) · s_a · s_w + b`.
//!
//! Weights are quantized per output channel to ±511 (10 bits), activations per row
//! (token) to ±2047 (12 bits), both symmetric, and multiplied as i16 × i16 → i32 with
//! `vpmaddwd` (AVX2): 16 multiply-adds per instruction, twice what an f32 FMA does, on
//! CPUs with or without AVX-512/VNNI. 10 + 12 bits keep the embeddings within cosine
//! ~0.9998 of f32 (int8 weights alone lose ~0.003), and K·511·2047 < 2³¹ for K ≤ 2048,
//! so the i32 sums cannot overflow (longer K is summed in chunks of 2048).
//!
//! Layout: weights packed once into panels of `NR` = 16 output columns,
//! `[k/2][16 columns][2 k]`, so one 32-byte load holds two k-values of 8 columns and a
//! broadcast pair of activations multiplies it with one `vpmaddwd`. The micro-kernel
//! keeps an `MR` × 16 = 6 × 16 tile of i32 sums in 12 registers.

#[cfg(target_arch = "x86_64")]
use std::arch::x86_64::*;

use super::ops::{activate, Act, Isa};
use super::par::{for_ranges, SyncPtr};

/// Output columns per packed panel.
pub(crate) const NR: usize = 16;
/// Rows per micro-tile.
pub(crate) const MR: usize = 6;
/// Rows per cache block (a multiple of MR).
const MC: usize = 96;
/// Weight quantization levels (±).
pub(crate) const W_MAX: f32 = 511.0;
/// Longest k range summed in i32 (KC · W_MAX · A_MAX < 2³¹).
pub(crate) const KC: usize = 2048;

/// A linear layer (`y = x Wᵀ + b`, PyTorch layout `W: n × k`) with quantized, packed
/// weights.
pub(crate) struct QLinear {
    /// Output features.
    pub(crate) n: usize,
    /// Input features.
    #[allow(dead_code)]
    pub(crate) k: usize,
    /// `k` rounded up to even (activation rows are this long).
    pub(crate) kp: usize,
    panels: Vec<i16>,
    scales: Vec<f32>,
    bias: Vec<f32>,
}

impl QLinear {
    /// Quantizes and packs `w` (`n × k`, row-major) and keeps `bias` (`n`).
    pub(crate) fn new(w: &[f32], bias: &[f32], n: usize, k: usize) -> Self {
        assert_eq!(w.len(), n * k, "weight is not {n} x {k}");
        assert_eq!(bias.len(), n, "bias is not {n} long");
        let kp = k + (k & 1);
        let np = n.div_ceil(NR);
        let mut panels = vec![0i16; np * kp * NR];
        let mut scales = vec![0f32; np * NR];
        let mut b = vec![0f32; np * NR];
        for col in 0..n {
            let row = &w[col * k..(col + 1) * k];
            let m = row.iter().fold(0f32, |m, x| m.max(x.abs()));
            let (s, inv) = if m > 0.0 && m.is_finite() {
                (m / W_MAX, W_MAX / m)
            } else {
                (0.0, 0.0)
            };
            scales[col] = s;
            b[col] = bias[col];
            let base = (col / NR) * kp * NR + (col % NR) * 2;
            for (kk, &x) in row.iter().enumerate() {
                panels[base + (kk / 2) * 2 * NR + (kk % 2)] = (x * inv).round_ties_even() as i16;
            }
        }
        Self {
            n,
            k,
            kp,
            panels,
            scales,
            bias: b,
        }
    }

    /// Bytes of packed weights.
    #[allow(dead_code)]
    pub(crate) fn weight_bytes(&self) -> usize {
        self.panels.len() * 2 + self.scales.len() * 8
    }
}

/// `c (m × n) = act(a · Wᵀ · scales + bias)`: `a` is `m` rows of `w.kp` quantized
/// activations with per-row `a_scales`. The output panels are split over `threads`.
#[allow(clippy::too_many_arguments)]
pub(crate) fn qgemm(
    isa: Isa,
    threads: usize,
    a: &[i16],
    a_scales: &[f32],
    m: usize,
    w: &QLinear,
    act: Act,
    c: &mut [f32],
) {
    assert!(a.len() >= m * w.kp, "activations too short");
    assert!(a_scales.len() >= m, "activation scales too short");
    assert!(c.len() >= m * w.n, "output too short");
    if m == 0 || w.n == 0 {
        return;
    }
    let np = w.n.div_ceil(NR);
    let cp = SyncPtr::new(c);
    for_ranges(np, threads, |panels| {
        // SAFETY: each range of panels writes its own columns of `c`.
        match isa {
            #[cfg(target_arch = "x86_64")]
            Isa::Avx2 => unsafe { panels_avx2(a, a_scales, m, w, act, cp, panels) },
            _ => panels_body(
                Isa::Scalar,
                a,
                a_scales,
                m,
                w,
                act,
                cp,
                panels,
                kernel_scalar,
                None,
            ),
        }
    });
}

type Kernel = unsafe fn(usize, *const i16, usize, *const i16, usize, &mut [[i32; NR]; MR]);
type FusedKernel = unsafe fn(usize, *const i16, usize, *const i16, usize, &Epilogue);

/// Where and how a micro-kernel writes its tile: `c[r][j] = act(acc · a_scales[r] ·
/// w_scales[j] + bias[j])` for `j < nv`.
pub(crate) struct Epilogue {
    a_scales: *const f32,
    w_scales: *const f32,
    bias: *const f32,
    act: Act,
    c: *mut f32,
    ldc: usize,
    nv: usize,
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn panels_avx2(
    a: &[i16],
    a_scales: &[f32],
    m: usize,
    w: &QLinear,
    act: Act,
    c: SyncPtr<f32>,
    panels: std::ops::Range<usize>,
) {
    panels_body(
        Isa::Avx2,
        a,
        a_scales,
        m,
        w,
        act,
        c,
        panels,
        kernel_avx2,
        Some(fused_avx2),
    )
}

#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn panels_body(
    isa: Isa,
    a: &[i16],
    a_scales: &[f32],
    m: usize,
    w: &QLinear,
    act: Act,
    c: SyncPtr<f32>,
    panels: std::ops::Range<usize>,
    kernel: Kernel,
    fused: Option<FusedKernel>,
) {
    let (n, kp) = (w.n, w.kp);
    let chunks = kp.div_ceil(KC);
    let mut tile = [[0i32; NR]; MR];
    let mut ftile = [[0f32; NR]; MR];
    // Blocks of MC rows (their activations stay in L1/L2) × the panels (each panel's
    // weights stay in L1 across the block's tiles).
    let mut m0 = 0;
    while m0 < m {
        let m1 = (m0 + MC).min(m);
        for p in panels.clone() {
            let wp = &w.panels[p * kp * NR..(p + 1) * kp * NR];
            let n0 = p * NR;
            let nv = NR.min(n - n0);
            let ws = &w.scales[n0..n0 + NR];
            let wb = &w.bias[n0..n0 + NR];
            let mut i0 = m0;
            while i0 < m1 {
                let r = MR.min(m1 - i0);
                if let Some(kernel) = fused.filter(|_| chunks == 1) {
                    let epi = Epilogue {
                        a_scales: a_scales[i0..i0 + r].as_ptr(),
                        w_scales: ws.as_ptr(),
                        bias: wb.as_ptr(),
                        act,
                        // SAFETY: rows i0..i0+r, columns n0..n0+nv of c belong to this panel.
                        c: unsafe { c.at(i0 * n + n0) },
                        ldc: n,
                        nv,
                    };
                    unsafe { kernel(r, a.as_ptr().add(i0 * kp), kp, wp.as_ptr(), kp / 2, &epi) };
                    i0 += r;
                    continue;
                }
                if chunks == 1 {
                    // SAFETY: rows i0..i0+r of `a` hold kp values each; the panel holds kp·NR.
                    unsafe {
                        kernel(
                            r,
                            a.as_ptr().add(i0 * kp),
                            kp,
                            wp.as_ptr(),
                            kp / 2,
                            &mut tile,
                        )
                    };
                    for rr in 0..r {
                        let sa = a_scales[i0 + rr];
                        for j in 0..NR {
                            ftile[rr][j] = tile[rr][j] as f32 * (sa * ws[j]) + wb[j];
                        }
                    }
                } else {
                    for row in ftile.iter_mut().take(r) {
                        row.iter_mut().for_each(|x| *x = 0.0);
                    }
                    for ch in 0..chunks {
                        let start = ch * KC;
                        let len = KC.min(kp - start);
                        unsafe {
                            kernel(
                                r,
                                a.as_ptr().add(i0 * kp + start),
                                kp,
                                wp.as_ptr().add(start * NR),
                                len / 2,
                                &mut tile,
                            )
                        };
                        for rr in 0..r {
                            for j in 0..NR {
                                ftile[rr][j] += tile[rr][j] as f32;
                            }
                        }
                    }
                    for rr in 0..r {
                        let sa = a_scales[i0 + rr];
                        for j in 0..NR {
                            ftile[rr][j] = ftile[rr][j] * (sa * ws[j]) + wb[j];
                        }
                    }
                }
                for (rr, row) in ftile.iter_mut().enumerate().take(r) {
                    activate(isa, act, &mut row[..nv]);
                    // SAFETY: row i0+rr, columns n0..n0+nv belong to this panel.
                    let dst = unsafe { c.slice((i0 + rr) * n + n0, nv) };
                    dst.copy_from_slice(&row[..nv]);
                }
                i0 += r;
            }
        }
        m0 = m1;
    }
}

/// Portable micro-kernel: `out[r][j] = Σ_k a[r][k] · w[k][j]` over `pairs` k-pairs.
unsafe fn kernel_scalar(
    rows: usize,
    a: *const i16,
    lda: usize,
    w: *const i16,
    pairs: usize,
    out: &mut [[i32; NR]; MR],
) {
    for (r, o) in out.iter_mut().enumerate().take(rows) {
        let ar = std::slice::from_raw_parts(a.add(r * lda), pairs * 2);
        let wr = std::slice::from_raw_parts(w, pairs * 2 * NR);
        for (j, oj) in o.iter_mut().enumerate() {
            let mut s = 0i32;
            for p in 0..pairs {
                s += ar[2 * p] as i32 * wr[p * 2 * NR + 2 * j] as i32
                    + ar[2 * p + 1] as i32 * wr[p * 2 * NR + 2 * j + 1] as i32;
            }
            *oj = s;
        }
    }
}

#[cfg(target_arch = "x86_64")]
unsafe fn kernel_avx2(
    rows: usize,
    a: *const i16,
    lda: usize,
    w: *const i16,
    pairs: usize,
    out: &mut [[i32; NR]; MR],
) {
    match rows {
        6 => kernel_avx2_r::<6>(a, lda, w, pairs, out),
        5 => kernel_avx2_r::<5>(a, lda, w, pairs, out),
        4 => kernel_avx2_r::<4>(a, lda, w, pairs, out),
        3 => kernel_avx2_r::<3>(a, lda, w, pairs, out),
        2 => kernel_avx2_r::<2>(a, lda, w, pairs, out),
        1 => kernel_avx2_r::<1>(a, lda, w, pairs, out),
        _ => unreachable!("rows {rows}"),
    }
}

#[cfg(target_arch = "x86_64")]
unsafe fn fused_avx2(
    rows: usize,
    a: *const i16,
    lda: usize,
    w: *const i16,
    pairs: usize,
    epi: &Epilogue,
) {
    match rows {
        6 => fused_avx2_r::<6>(a, lda, w, pairs, epi),
        5 => fused_avx2_r::<5>(a, lda, w, pairs, epi),
        4 => fused_avx2_r::<4>(a, lda, w, pairs, epi),
        3 => fused_avx2_r::<3>(a, lda, w, pairs, epi),
        2 => fused_avx2_r::<2>(a, lda, w, pairs, epi),
        1 => fused_avx2_r::<1>(a, lda, w, pairs, epi),
        _ => unreachable!("rows {rows}"),
    }
}

/// The i32 sums of an R × 16 tile over `pairs` k-pairs.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
unsafe fn tile_avx2<const R: usize>(
    a: *const i16,
    lda: usize,
    w: *const i16,
    pairs: usize,
) -> ([__m256i; R], [__m256i; R]) {
    let mut acc0 = [_mm256_setzero_si256(); R];
    let mut acc1 = [_mm256_setzero_si256(); R];
    let mut rows = [a; R];
    for (r, p) in rows.iter_mut().enumerate() {
        *p = a.add(r * lda);
    }
    let mut wp = w;
    for _ in 0..pairs {
        let w0 = _mm256_loadu_si256(wp as *const __m256i);
        let w1 = _mm256_loadu_si256(wp.add(16) as *const __m256i);
        for r in 0..R {
            let av = _mm256_set1_epi32(std::ptr::read_unaligned(rows[r] as *const i32));
            acc0[r] = _mm256_add_epi32(acc0[r], _mm256_madd_epi16(av, w0));
            acc1[r] = _mm256_add_epi32(acc1[r], _mm256_madd_epi16(av, w1));
            rows[r] = rows[r].add(2);
        }
        wp = wp.add(2 * NR);
    }
    (acc0, acc1)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn kernel_avx2_r<const R: usize>(
    a: *const i16,
    lda: usize,
    w: *const i16,
    pairs: usize,
    out: &mut [[i32; NR]; MR],
) {
    let (acc0, acc1) = tile_avx2::<R>(a, lda, w, pairs);
    for r in 0..R {
        _mm256_storeu_si256(out[r].as_mut_ptr() as *mut __m256i, acc0[r]);
        _mm256_storeu_si256(out[r].as_mut_ptr().add(8) as *mut __m256i, acc1[r]);
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn fused_avx2_r<const R: usize>(
    a: *const i16,
    lda: usize,
    w: *const i16,
    pairs: usize,
    epi: &Epilogue,
) {
    use super::ops::act256;
    let (acc0, acc1) = tile_avx2::<R>(a, lda, w, pairs);
    let ws0 = _mm256_loadu_ps(epi.w_scales);
    let ws1 = _mm256_loadu_ps(epi.w_scales.add(8));
    let b0 = _mm256_loadu_ps(epi.bias);
    let b1 = _mm256_loadu_ps(epi.bias.add(8));
    for r in 0..R {
        let sa = _mm256_set1_ps(*epi.a_scales.add(r));
        let f0 = _mm256_fmadd_ps(_mm256_cvtepi32_ps(acc0[r]), _mm256_mul_ps(sa, ws0), b0);
        let f1 = _mm256_fmadd_ps(_mm256_cvtepi32_ps(acc1[r]), _mm256_mul_ps(sa, ws1), b1);
        let (f0, f1) = (act256(epi.act, f0), act256(epi.act, f1));
        let dst = epi.c.add(r * epi.ldc);
        if epi.nv == NR {
            _mm256_storeu_ps(dst, f0);
            _mm256_storeu_ps(dst.add(8), f1);
        } else {
            let mut tmp = [0f32; NR];
            _mm256_storeu_ps(tmp.as_mut_ptr(), f0);
            _mm256_storeu_ps(tmp.as_mut_ptr().add(8), f1);
            std::ptr::copy_nonoverlapping(tmp.as_ptr(), dst, epi.nv);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cpu::ops::{quantize_row, A_MAX};

    fn lcg(seed: &mut u64) -> f32 {
        *seed = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        ((*seed >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
    }

    fn quantize(isa: Isa, x: &[f32], m: usize, k: usize) -> (Vec<i16>, Vec<f32>) {
        let kp = k + (k & 1);
        let mut q = vec![0i16; m * kp];
        let mut s = vec![0f32; m];
        for i in 0..m {
            s[i] = quantize_row(isa, &x[i * k..(i + 1) * k], &mut q[i * kp..(i + 1) * kp]);
        }
        (q, s)
    }

    /// The SIMD kernel gives exactly the scalar kernel's integer sums, and both are
    /// close to the f32 product, for awkward shapes (tails in m, n and odd k, k over
    /// one i32 chunk).
    #[test]
    fn qgemm_matches_scalar_and_f32() {
        let isa = Isa::detect();
        let mut seed = 7u64;
        for &(m, k, n) in &[
            (1, 2, 1),
            (7, 33, 17),
            (13, 384, 48),
            (6, 4100, 20),
            (25, 64, 32),
        ] {
            let x: Vec<f32> = (0..m * k).map(|_| lcg(&mut seed) * 3.0).collect();
            let w: Vec<f32> = (0..n * k).map(|_| lcg(&mut seed) * 0.2).collect();
            let b: Vec<f32> = (0..n).map(|_| lcg(&mut seed)).collect();
            let lin = QLinear::new(&w, &b, n, k);
            let (q, s) = quantize(isa, &x, m, k);
            let (q0, s0) = quantize(Isa::Scalar, &x, m, k);
            assert_eq!(q, q0, "quantization differs between {isa:?} and scalar");
            assert_eq!(s, s0);
            for act in [Act::None, Act::Gelu] {
                let mut c = vec![0f32; m * n];
                let mut c0 = vec![0f32; m * n];
                qgemm(isa, 2, &q, &s, m, &lin, act, &mut c);
                qgemm(Isa::Scalar, 1, &q, &s, m, &lin, act, &mut c0);
                for (i, (a, b)) in c.iter().zip(&c0).enumerate() {
                    assert!(
                        (a - b).abs() <= 1e-5 * (1.0 + b.abs()),
                        "{m}x{k}x{n} [{i}]: {a} vs {b}"
                    );
                }
                if act == Act::None {
                    let mut err = 0f32;
                    let mut scale = 0f32;
                    for i in 0..m {
                        for j in 0..n {
                            let want: f32 =
                                (0..k).map(|t| x[i * k + t] * w[j * k + t]).sum::<f32>() + b[j];
                            err = err.max((c[i * n + j] - want).abs());
                            scale = scale.max(want.abs());
                        }
                    }
                    assert!(
                        err <= 2e-3 * scale.max(1.0),
                        "{m}x{k}x{n}: error {err} (scale {scale})"
                    );
                }
            }
        }
        let _ = A_MAX;
    }
}
