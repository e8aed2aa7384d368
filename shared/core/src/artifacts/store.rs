//! The artifact store: one `object_store` backend (a local directory or an S3 bucket)
//! rooted at a location, that reads and writes a version's files by relative path.

use std::path::Path;
use std::sync::Arc;

use object_store::local::LocalFileSystem;
use object_store::path::Path as ObjectPath;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload};

use super::location::collapse_slashes;
use super::s3::s3_store;
use super::{ArtifactError, ArtifactLocation, S3Config};

/// One store rooted at a location: relative paths (`task/v3/head.safetensors`) name
/// objects under it.
#[derive(Debug, Clone)]
pub struct ArtifactStore {
    store: Arc<dyn ObjectStore>,
    root: ArtifactLocation,
    /// Key prefix of `root` inside `store` (empty for a local store, which is rooted at
    /// the directory itself).
    prefix: String,
}

impl ArtifactStore {
    /// Open the store an artifact URI names. A local directory is created if missing.
    pub fn open(uri: &str, s3: &S3Config) -> Result<Self, ArtifactError> {
        Self::open_location(ArtifactLocation::parse(uri)?, s3)
    }

    pub fn open_location(root: ArtifactLocation, s3: &S3Config) -> Result<Self, ArtifactError> {
        match &root {
            ArtifactLocation::Local(dir) => {
                std::fs::create_dir_all(dir).map_err(|source| ArtifactError::Io {
                    uri: root.uri(),
                    op: "creating",
                    path: dir.clone(),
                    source,
                })?;
                let fs = LocalFileSystem::new_with_prefix(dir).map_err(|source| {
                    ArtifactError::Store {
                        uri: root.uri(),
                        op: "opening",
                        source,
                    }
                })?;
                Ok(ArtifactStore {
                    store: Arc::new(fs),
                    root,
                    prefix: String::new(),
                })
            }
            ArtifactLocation::S3 { bucket, prefix } => {
                let store = s3_store(bucket, s3).map_err(|source| ArtifactError::Store {
                    uri: root.uri(),
                    op: "configuring S3",
                    source,
                })?;
                let prefix = prefix.clone();
                Ok(ArtifactStore {
                    store: Arc::new(store),
                    root,
                    prefix,
                })
            }
        }
    }

    /// A store over any `object_store` backend (in-memory in tests); `root` only labels
    /// URIs and errors, `prefix` is the key prefix inside `store`.
    pub fn with_backend(store: Arc<dyn ObjectStore>, root: ArtifactLocation, prefix: &str) -> Self {
        ArtifactStore {
            store,
            root,
            prefix: collapse_slashes(prefix),
        }
    }

    /// Where this store is rooted.
    pub fn root(&self) -> &ArtifactLocation {
        &self.root
    }

    /// The location of a relative path under the root.
    pub fn location(&self, rel: &str) -> ArtifactLocation {
        self.root.join(rel)
    }

    fn key(&self, rel: &str) -> Result<ObjectPath, ArtifactError> {
        let full = collapse_slashes(&format!("{}/{}", self.prefix, rel));
        ObjectPath::parse(&full).map_err(|e| ArtifactError::BadUri {
            uri: self.location(rel).uri(),
            reason: e.to_string(),
        })
    }

    /// Write one object.
    pub async fn put(&self, rel: &str, bytes: Vec<u8>) -> Result<(), ArtifactError> {
        let key = self.key(rel)?;
        self.store
            .put(&key, PutPayload::from(bytes))
            .await
            .map(|_| ())
            .map_err(|source| ArtifactError::Store {
                uri: self.location(rel).uri(),
                op: "writing",
                source,
            })
    }

    /// Write `files` (name, contents) under `rel`; returns the location of `rel`.
    pub async fn put_all(
        &self,
        rel: &str,
        files: &[(String, Vec<u8>)],
    ) -> Result<ArtifactLocation, ArtifactError> {
        for (name, bytes) in files {
            self.put(&format!("{rel}/{name}"), bytes.clone()).await?;
        }
        Ok(self.location(rel))
    }

    /// Read one object.
    pub async fn get(&self, rel: &str) -> Result<Vec<u8>, ArtifactError> {
        let key = self.key(rel)?;
        let uri = || self.location(rel).uri();
        let result = match self.store.get(&key).await {
            Ok(r) => r,
            Err(source @ object_store::Error::NotFound { .. }) => {
                return Err(ArtifactError::NotFound { uri: uri(), source })
            }
            Err(source) => {
                return Err(ArtifactError::Store {
                    uri: uri(),
                    op: "reading",
                    source,
                })
            }
        };
        let bytes = result
            .bytes()
            .await
            .map_err(|source| ArtifactError::Store {
                uri: uri(),
                op: "reading",
                source,
            })?;
        Ok(bytes.to_vec())
    }

    /// Check that the store answers (bucket exists, credentials accepted): lists the root.
    pub async fn probe(&self) -> Result<(), ArtifactError> {
        let prefix = (!self.prefix.is_empty()).then(|| ObjectPath::from(self.prefix.as_str()));
        self.store
            .list_with_delimiter(prefix.as_ref())
            .await
            .map(|_| ())
            .map_err(|source| ArtifactError::Store {
                uri: self.root.uri(),
                op: "listing",
                source,
            })
    }

    /// Download `files` under `rel` into `dest` (created if missing). Each file is
    /// written to a temporary name and renamed into place, so a reader never sees half
    /// a file and a concurrent fetch of the same version is harmless.
    pub async fn fetch_to(
        &self,
        rel: &str,
        files: &[&str],
        dest: &Path,
    ) -> Result<(), ArtifactError> {
        let io = |op: &'static str, path: &Path, source| ArtifactError::Io {
            uri: self.location(rel).uri(),
            op,
            path: path.to_path_buf(),
            source,
        };
        tokio::fs::create_dir_all(dest)
            .await
            .map_err(|e| io("creating", dest, e))?;
        for name in files {
            let bytes = self.get(&format!("{rel}/{name}")).await?;
            let path = dest.join(name);
            let tmp = dest.join(format!(
                ".{name}.tmp{}-{}",
                std::process::id(),
                uuid::Uuid::new_v4().simple()
            ));
            tokio::fs::write(&tmp, &bytes)
                .await
                .map_err(|e| io("writing", &tmp, e))?;
            tokio::fs::rename(&tmp, &path)
                .await
                .map_err(|e| io("renaming into", &path, e))?;
        }
        Ok(())
    }
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;
    use object_store::memory::InMemory;

    pub(in crate::artifacts) fn files() -> Vec<(String, Vec<u8>)> {
        vec![
            ("head.safetensors".into(), vec![1, 2, 3]),
            ("labels.json".into(), b"[\"a\",\"b\"]".to_vec()),
        ]
    }

    #[tokio::test]
    async fn in_memory_round_trip_and_missing_objects() {
        let mem: Arc<dyn ObjectStore> = Arc::new(InMemory::new());
        let root = ArtifactLocation::parse("s3://mem/models").unwrap();
        let store = ArtifactStore::with_backend(mem.clone(), root, "models");
        let at = store.put_all("spam/v1", &files()).await.unwrap();
        assert_eq!(at.uri(), "s3://mem/models/spam/v1");
        // Keys carry the prefix inside the bucket.
        assert_eq!(
            mem.get(&ObjectPath::from("models/spam/v1/labels.json"))
                .await
                .unwrap()
                .bytes()
                .await
                .unwrap()
                .as_ref(),
            b"[\"a\",\"b\"]"
        );
        assert_eq!(
            store.get("spam/v1/head.safetensors").await.unwrap(),
            vec![1, 2, 3]
        );

        let dest = tempfile::tempdir().unwrap();
        store
            .fetch_to("spam/v1", &["head.safetensors", "labels.json"], dest.path())
            .await
            .unwrap();
        assert_eq!(
            std::fs::read(dest.path().join("head.safetensors")).unwrap(),
            vec![1, 2, 3]
        );
        // No temporary files are left behind.
        assert_eq!(std::fs::read_dir(dest.path()).unwrap().count(), 2);

        let err = store
            .fetch_to("spam/v2", &["head.safetensors"], dest.path())
            .await
            .unwrap_err();
        assert!(matches!(err, ArtifactError::NotFound { .. }), "{err:?}");
        let msg = err.to_string();
        assert!(
            msg.contains("s3://mem/models/spam/v2/head.safetensors")
                && msg.contains("does not exist"),
            "{msg}"
        );
        store.probe().await.unwrap();
    }
}
