//! The SHA-256 of a model version's served files, as the registry records it
//! (`ModelRecord::artifact_sha256`): the trainer computes it from the files it writes,
//! the worker from the files it fetched, and serves nothing that differs.
//!
//! Over each file in name order: the name's length and bytes, the content's length and
//! bytes (lengths as u64 little-endian), so no two sets of files share a digest by
//! moving bytes between a name and a content.

use std::path::Path;

use sha2::{Digest, Sha256};

/// The digest of `files` (name, content), in any order.
pub fn files_sha256<'a>(files: impl IntoIterator<Item = (&'a str, &'a [u8])>) -> String {
    let mut files: Vec<(&str, &[u8])> = files.into_iter().collect();
    files.sort_by(|a, b| a.0.cmp(b.0));
    let mut h = Sha256::new();
    for (name, bytes) in files {
        h.update((name.len() as u64).to_le_bytes());
        h.update(name.as_bytes());
        h.update((bytes.len() as u64).to_le_bytes());
        h.update(bytes);
    }
    hex::encode(h.finalize())
}

/// The digest of the files `names` in `dir`.
pub fn dir_sha256(dir: &Path, names: &[&str]) -> std::io::Result<String> {
    let contents = names
        .iter()
        .map(|n| std::fs::read(dir.join(n)))
        .collect::<std::io::Result<Vec<_>>>()?;
    Ok(files_sha256(
        names
            .iter()
            .copied()
            .zip(contents.iter().map(Vec::as_slice)),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn order_does_not_matter_and_every_byte_and_name_does() {
        let a = files_sha256([("a", &b"12"[..]), ("b", &b"3"[..])]);
        assert_eq!(a, files_sha256([("b", &b"3"[..]), ("a", &b"12"[..])]));
        assert_ne!(a, files_sha256([("a", &b"1"[..]), ("b", &b"23"[..])]));
        assert_ne!(a, files_sha256([("a", &b"12"[..]), ("c", &b"3"[..])]));
        assert_eq!(a.len(), 64);
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("a"), b"12").unwrap();
        std::fs::write(dir.path().join("b"), b"3").unwrap();
        assert_eq!(dir_sha256(dir.path(), &["b", "a"]).unwrap(), a);
        assert!(dir_sha256(dir.path(), &["missing"]).is_err());
    }
}
