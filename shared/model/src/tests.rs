//! Tests on the tiny random BERT (fast; no real model needed), by theme; the helpers they
//! share are here.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};

use crate::testing::write_tiny_bert;
use crate::{Device, Encoder, TextTokenizer};

mod classifier;
mod encoder;
mod fast_path;
mod fixtures;
mod head;
mod tokenizer;

/// A scratch directory removed on drop.
struct Scratch(PathBuf);

impl Scratch {
    fn new(tag: &str) -> Self {
        static N: AtomicUsize = AtomicUsize::new(0);
        let p = std::env::temp_dir().join(format!(
            "aifab-model-test-{}-{}-{tag}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).unwrap();
        Self(p)
    }
    fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn tiny(seed: u64) -> (Scratch, TextTokenizer, Encoder) {
    let dir = Scratch::new("bert");
    write_tiny_bert(dir.path(), seed).unwrap();
    let tok = TextTokenizer::from_file(dir.path().join("tokenizer.json"), 32).unwrap();
    let enc = Encoder::load(dir.path(), &Device::Cpu).unwrap();
    (dir, tok, enc)
}

fn cosine(a: &[f32], b: &[f32]) -> f64 {
    let dot: f64 = a.iter().zip(b).map(|(x, y)| *x as f64 * *y as f64).sum();
    let na: f64 = a.iter().map(|x| (*x as f64).powi(2)).sum::<f64>().sqrt();
    let nb: f64 = b.iter().map(|x| (*x as f64).powi(2)).sum::<f64>().sqrt();
    dot / (na * nb)
}

fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}
