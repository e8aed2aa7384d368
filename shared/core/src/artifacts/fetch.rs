//! Making a version's files available on local disk: read in place from a local store,
//! downloaded into a cache from S3.

use std::path::{Path, PathBuf};

use super::{ArtifactError, ArtifactLocation, ArtifactStore, S3Config};

/// Make a version's `files` available locally: a local URI is used in place (each file
/// must exist); an s3:// one is downloaded into `<cache_dir>/s3/<bucket>/<prefix>/`.
/// Returns the local directory. Always downloads: heads are small, and a version's
/// files can be rewritten if the registry was reset and the name reissued.
pub async fn fetch_version(
    uri: &str,
    files: &[&str],
    cache_dir: &Path,
    s3: &S3Config,
) -> Result<PathBuf, ArtifactError> {
    match ArtifactLocation::parse(uri)? {
        ArtifactLocation::Local(dir) => {
            for name in files {
                let path = dir.join(name);
                if !path.is_file() {
                    return Err(ArtifactError::Io {
                        uri: uri.to_string(),
                        op: "reading",
                        path: path.clone(),
                        source: std::io::Error::new(std::io::ErrorKind::NotFound, "no such file"),
                    });
                }
            }
            Ok(dir)
        }
        location @ ArtifactLocation::S3 { .. } => {
            let ArtifactLocation::S3 { bucket, prefix } = &location else {
                unreachable!()
            };
            let dest = cache_dir.join("s3").join(bucket).join(prefix);
            let store = ArtifactStore::open_location(location.clone(), s3)?;
            store.fetch_to("", files, &dest).await?;
            Ok(dest)
        }
    }
}

/// The default download cache of workers: `~/.cache/aifab/artifacts`.
pub fn default_cache_dir() -> String {
    let home = std::env::var("HOME").unwrap_or_else(|_| ".".into());
    format!("{home}/.cache/aifab/artifacts")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::artifacts::store::tests::files;

    #[tokio::test]
    async fn local_store_writes_where_the_uri_says_and_fetch_reads_in_place() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("artifacts");
        let store = ArtifactStore::open(&root.display().to_string(), &S3Config::default()).unwrap();
        assert!(root.is_dir(), "opening a local store creates its directory");
        let at = store.put_all("spam/v1", &files()).await.unwrap();
        assert_eq!(at, ArtifactLocation::Local(root.join("spam/v1")));
        assert_eq!(
            std::fs::read(root.join("spam/v1/head.safetensors")).unwrap(),
            vec![1, 2, 3]
        );
        assert_eq!(
            store.get("spam/v1/labels.json").await.unwrap(),
            b"[\"a\",\"b\"]"
        );
        store.probe().await.unwrap();

        // A local version is read in place: nothing is copied into the cache.
        let cache = dir.path().join("cache");
        let got = fetch_version(
            &at.uri(),
            &["head.safetensors", "labels.json"],
            &cache,
            &S3Config::default(),
        )
        .await
        .unwrap();
        assert_eq!(got, root.join("spam/v1"));
        assert!(!cache.exists());
        let err = fetch_version(&at.uri(), &["missing.bin"], &cache, &S3Config::default())
            .await
            .unwrap_err()
            .to_string();
        assert!(
            err.contains(&at.uri()) && err.contains("missing.bin") && err.contains("no such file"),
            "{err}"
        );
        let err = store.get("spam/v9/labels.json").await.unwrap_err();
        assert!(matches!(err, ArtifactError::NotFound { .. }), "{err:?}");
    }
}
