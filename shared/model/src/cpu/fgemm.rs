//! f32 linear layers for the `fast-f32` variant: the `gemm` crate (what candle uses)
//! called directly on the ragged token matrix, then bias + activation. A comparison
//! point for the integer path (same batching and fusion, f32 products).

use super::ops::{activate, Act, Isa};
use super::par::{for_ranges, SyncPtr};

/// `y = x Wᵀ + b` with `W` kept transposed (`k × n`, row-major).
pub(crate) struct FLinear {
    pub(crate) n: usize,
    pub(crate) k: usize,
    wt: Vec<f32>,
    bias: Vec<f32>,
}

impl FLinear {
    /// `w`: `n × k` row-major (PyTorch layout), `bias`: `n`.
    pub(crate) fn new(w: &[f32], bias: &[f32], n: usize, k: usize) -> Self {
        assert_eq!(w.len(), n * k, "weight is not {n} x {k}");
        assert_eq!(bias.len(), n, "bias is not {n} long");
        let mut wt = vec![0f32; k * n];
        for j in 0..n {
            for kk in 0..k {
                wt[kk * n + j] = w[j * k + kk];
            }
        }
        Self {
            n,
            k,
            wt,
            bias: bias.to_vec(),
        }
    }
}

/// `c (m × n) = act(a (m × k) · Wᵀ + b)`.
pub(crate) fn fgemm(
    isa: Isa,
    threads: usize,
    a: &[f32],
    m: usize,
    w: &FLinear,
    act: Act,
    c: &mut [f32],
) {
    let (n, k) = (w.n, w.k);
    assert!(a.len() >= m * k && c.len() >= m * n);
    if m == 0 || n == 0 {
        return;
    }
    let par = if threads > 1 {
        gemm::Parallelism::Rayon(threads)
    } else {
        gemm::Parallelism::None
    };
    // SAFETY: the pointers and strides describe a (m × k), wt (k × n), c (m × n), all
    // row-major and in bounds (checked above).
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            c.as_mut_ptr(),
            1,
            n as isize,
            false,
            a.as_ptr(),
            1,
            k as isize,
            w.wt.as_ptr(),
            1,
            n as isize,
            0.0,
            1.0,
            false,
            false,
            false,
            par,
        )
    };
    let cp = SyncPtr::new(c);
    for_ranges(m, threads, |rows| {
        for r in rows {
            // SAFETY: one thread per row.
            let row = unsafe { cp.slice(r * n, n) };
            for (y, b) in row.iter_mut().zip(&w.bias) {
                *y += b;
            }
            activate(isa, act, row);
        }
    });
}
