//! Encoder embeddings for training, computed in length-sorted batches and cached by a
//! hash of the text so retraining on a sliding window only embeds what is new.

use std::collections::HashMap;

use aifab_model::{Encoder, TextTokenizer};
use sha2::{Digest, Sha256};

#[derive(Default)]
pub struct EmbeddingCache {
    map: HashMap<[u8; 32], Vec<f32>>,
    pub hits: u64,
    pub misses: u64,
}

fn text_key(text: &str) -> [u8; 32] {
    Sha256::digest(text.as_bytes()).into()
}

impl EmbeddingCache {
    /// Load a cache saved by [`EmbeddingCache::save`]; a missing file is an empty cache.
    /// Format: repeated records of a 32-byte text hash, a u32 width, then that many f32s
    /// (little-endian). Keep one file per encoder: vectors of another encoder are wrong.
    pub fn load(path: &std::path::Path) -> anyhow::Result<Self> {
        let mut cache = EmbeddingCache::default();
        let bytes = match std::fs::read(path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(cache),
            Err(e) => return Err(e.into()),
        };
        let mut rest = bytes.as_slice();
        while !rest.is_empty() {
            anyhow::ensure!(rest.len() >= 36, "{}: truncated record", path.display());
            let key: [u8; 32] = rest[..32].try_into().expect("32 bytes");
            let width = u32::from_le_bytes(rest[32..36].try_into().expect("4 bytes")) as usize;
            rest = &rest[36..];
            anyhow::ensure!(
                rest.len() >= width * 4,
                "{}: truncated vector",
                path.display()
            );
            let v = rest[..width * 4]
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes(c.try_into().expect("4 bytes")))
                .collect();
            rest = &rest[width * 4..];
            cache.map.insert(key, v);
        }
        Ok(cache)
    }

    /// Write the cache (atomically: a temp file renamed into place).
    pub fn save(&self, path: &std::path::Path) -> anyhow::Result<()> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        let mut out = Vec::new();
        for (k, v) in &self.map {
            out.extend_from_slice(k);
            out.extend_from_slice(&(v.len() as u32).to_le_bytes());
            for x in v {
                out.extend_from_slice(&x.to_le_bytes());
            }
        }
        let tmp = path.with_extension("tmp");
        std::fs::write(&tmp, out)?;
        std::fs::rename(&tmp, path)?;
        Ok(())
    }

    pub fn len(&self) -> usize {
        self.map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    /// Embeddings of `texts` in order; `on_batch(done, total)` after each computed batch.
    pub fn embed_all(
        &mut self,
        encoder: &Encoder,
        tokenizer: &TextTokenizer,
        texts: &[&str],
        batch_size: usize,
        mut on_batch: impl FnMut(usize, usize),
    ) -> anyhow::Result<Vec<Vec<f32>>> {
        let mut missing: Vec<(usize, Vec<u32>)> = Vec::new();
        let mut seen = std::collections::HashSet::new();
        for (i, t) in texts.iter().enumerate() {
            let k = text_key(t);
            if self.map.contains_key(&k) {
                self.hits += 1;
            } else if seen.insert(k) {
                self.misses += 1;
                missing.push((i, tokenizer.encode(t)?.ids));
            }
        }
        // Sorting by length keeps padding small.
        missing.sort_by_key(|(_, ids)| ids.len());
        let total = missing.len();
        let mut done = 0;
        for chunk in missing.chunks(batch_size.max(1)) {
            let batch: Vec<&[u32]> = chunk.iter().map(|(_, ids)| ids.as_slice()).collect();
            let vectors = encoder.embed(&batch)?;
            for ((i, _), v) in chunk.iter().zip(vectors) {
                self.map.insert(text_key(texts[*i]), v);
            }
            done += chunk.len();
            on_batch(done, total);
        }
        Ok(texts
            .iter()
            .map(|t| self.map[&text_key(t)].clone())
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn save_and_load_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.bin");
        assert!(
            EmbeddingCache::load(&path).unwrap().is_empty(),
            "missing file is empty"
        );
        let mut c = EmbeddingCache::default();
        c.map.insert(text_key("a"), vec![1.0, -2.5]);
        c.map.insert(text_key("b"), vec![0.25, 3.0]);
        c.save(&path).unwrap();
        let back = EmbeddingCache::load(&path).unwrap();
        assert_eq!(back.map, c.map);
        std::fs::write(&path, [0u8; 10]).unwrap();
        assert!(EmbeddingCache::load(&path).is_err());
    }
}
