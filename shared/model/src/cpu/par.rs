//! Fork-join over a fixed number of threads (rayon underneath).
//!
//! The whole forward pass runs inside [`Par::install`], i.e. on a worker thread of the
//! pool, so each parallel region below is a cheap `rayon::scope` (a deque push and a
//! steal) rather than an injection from outside the pool.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

/// Where the encoder's parallel regions run.
#[derive(Clone)]
pub(crate) struct Par {
    /// A dedicated pool (when a thread count was asked for), else rayon's global pool.
    pool: Option<Arc<rayon::ThreadPool>>,
}

impl std::fmt::Debug for Par {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Par({} threads)", self.threads())
    }
}

impl Par {
    /// `threads = None`: rayon's global pool (sized by `RAYON_NUM_THREADS`, else the
    /// number of CPUs). `Some(n)`: a pool of `n` threads owned by this value.
    pub(crate) fn new(threads: Option<usize>) -> std::result::Result<Self, String> {
        let pool = match threads {
            None => None,
            Some(n) => Some(Arc::new(
                rayon::ThreadPoolBuilder::new()
                    .num_threads(n.max(1))
                    .thread_name(|i| format!("aifab-enc-{i}"))
                    .build()
                    .map_err(|e| format!("cannot start {n} encoder threads: {e}"))?,
            )),
        };
        Ok(Self { pool })
    }

    pub(crate) fn threads(&self) -> usize {
        match &self.pool {
            Some(p) => p.current_num_threads(),
            None => rayon::current_num_threads(),
        }
    }

    /// Runs `f` on a worker thread of the pool.
    pub(crate) fn install<R: Send>(&self, f: impl FnOnce() -> R + Send) -> R {
        match &self.pool {
            Some(p) => p.install(f),
            None => {
                let mut out = None;
                rayon::scope(|_| out = Some(f()));
                out.expect("scope ran the closure")
            }
        }
    }
}

/// Calls `f(part)` for `part` in `0..parts`, in parallel (part 0 on this thread).
/// Must be called inside [`Par::install`] for the cheap path; works anywhere.
pub(crate) fn for_parts(parts: usize, f: impl Fn(usize) + Sync) {
    match parts {
        0 => {}
        1 => f(0),
        _ => rayon::scope(|s| {
            let f = &f;
            for p in 1..parts {
                s.spawn(move |_| f(p));
            }
            f(0);
        }),
    }
}

/// Splits `0..n` into `parts` contiguous ranges (the first ones one longer when it does
/// not divide) and runs `f(range)` on each in parallel.
pub(crate) fn for_ranges(n: usize, parts: usize, f: impl Fn(std::ops::Range<usize>) + Sync) {
    let parts = parts.clamp(1, n.max(1));
    let base = n / parts;
    let extra = n % parts;
    let start = |p: usize| p * base + p.min(extra);
    for_parts(parts, |p| {
        let r = start(p)..start(p + 1);
        if !r.is_empty() {
            f(r)
        }
    });
}

/// Runs `f(i)` for `i` in `0..n` on `threads` threads taking items from a shared
/// counter (for items of uneven cost).
pub(crate) fn for_each_dynamic(n: usize, threads: usize, f: impl Fn(usize) + Sync) {
    let next = AtomicUsize::new(0);
    for_parts(threads.clamp(1, n.max(1)), |_| loop {
        let i = next.fetch_add(1, Ordering::Relaxed);
        if i >= n {
            break;
        }
        f(i);
    });
}

/// A raw pointer that may be shared between the threads of a parallel region, for
/// writing disjoint parts of one buffer.
#[derive(Clone, Copy)]
pub(crate) struct SyncPtr<T>(pub(crate) *mut T);
unsafe impl<T> Send for SyncPtr<T> {}
unsafe impl<T> Sync for SyncPtr<T> {}

impl<T> SyncPtr<T> {
    pub(crate) fn new(s: &mut [T]) -> Self {
        Self(s.as_mut_ptr())
    }

    /// The element at `offset` (for writes through raw pointers).
    ///
    /// # Safety
    /// `offset` must be inside the buffer.
    pub(crate) unsafe fn at(&self, offset: usize) -> *mut T {
        self.0.add(offset)
    }

    /// # Safety
    /// `start..start + len` must be inside the buffer and written by no one else
    /// while the slice lives.
    #[allow(clippy::mut_from_ref)]
    pub(crate) unsafe fn slice(&self, start: usize, len: usize) -> &mut [T] {
        std::slice::from_raw_parts_mut(self.0.add(start), len)
    }
}
