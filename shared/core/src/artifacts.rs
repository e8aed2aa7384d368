//! The artifact store: where model versions' files live. The trainer writes a version's
//! files through it, workers read them back; the registry record's `artifact_uri` names
//! the version's directory.
//!
//! An artifact URI is one of
//! - a plain path or `file:///abs/dir` — a local directory (the default, `--artifact-dir`);
//! - `s3://bucket/prefix` — any S3-compatible store, through the `object_store` crate.
//!
//! S3 is configured like every AWS tool: `AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`,
//! `AWS_REGION` (or `AWS_DEFAULT_REGION`), `AWS_ENDPOINT_URL`, `AWS_ALLOW_HTTP`; the
//! `--artifact-store-endpoint` flag (`AIFAB_S3_ENDPOINT`) overrides the endpoint for
//! S3-compatible stores (MinIO, moto, Ceph). Requests are path-style, and an `http://`
//! endpoint is allowed as is (loopback or a private network); TLS uses rustls.
//!
//! Workers read local artifacts in place and download others into a cache directory
//! ([`fetch_version`]).

use std::path::{Path, PathBuf};
use std::sync::{Arc, Once};
use std::time::Duration;

use object_store::aws::{AmazonS3Builder, AmazonS3ConfigKey};
use object_store::local::LocalFileSystem;
use object_store::path::Path as ObjectPath;
use object_store::{ClientOptions, ObjectStore, ObjectStoreExt, PutPayload, RetryConfig};

/// Where artifacts are: a local directory or an S3 bucket and key prefix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ArtifactLocation {
    /// An absolute local directory.
    Local(PathBuf),
    /// `s3://bucket/prefix`; `prefix` has no leading or trailing `/` (may be empty).
    S3 { bucket: String, prefix: String },
}

impl ArtifactLocation {
    /// Parse an artifact URI (see the module docs). Relative plain paths are made
    /// absolute against the current directory.
    pub fn parse(uri: &str) -> Result<Self, ArtifactError> {
        let bad = |reason: &str| ArtifactError::BadUri {
            uri: uri.to_string(),
            reason: reason.to_string(),
        };
        let uri_trimmed = uri.trim();
        if uri_trimmed.is_empty() {
            return Err(bad("empty"));
        }
        if let Some(rest) = uri_trimmed.strip_prefix("s3://") {
            let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
            if bucket.is_empty() {
                return Err(bad("no bucket: expected s3://bucket/prefix"));
            }
            let prefix = prefix.trim_matches('/');
            if prefix.split('/').any(|p| p == "." || p == "..") {
                return Err(bad("`.` and `..` are not allowed in an S3 prefix"));
            }
            return Ok(ArtifactLocation::S3 {
                bucket: bucket.to_string(),
                prefix: collapse_slashes(prefix),
            });
        }
        if let Some(rest) = uri_trimmed.strip_prefix("file://") {
            if !rest.starts_with('/') {
                return Err(bad("a file:// URI needs an absolute path: file:///abs/dir"));
            }
            return Ok(ArtifactLocation::Local(PathBuf::from(rest)));
        }
        if let Some((scheme, _)) = uri_trimmed.split_once("://") {
            return Err(bad(&format!("unsupported scheme {scheme:?}: expected a path, file:///abs/dir or s3://bucket/prefix")));
        }
        let path = std::path::absolute(uri_trimmed)
            .map_err(|e| bad(&format!("cannot make it absolute: {e}")))?;
        Ok(ArtifactLocation::Local(path))
    }

    /// This location extended by a relative `a/b` path.
    pub fn join(&self, rel: &str) -> Self {
        let rel = rel.trim_matches('/');
        match self {
            ArtifactLocation::Local(p) if rel.is_empty() => ArtifactLocation::Local(p.clone()),
            ArtifactLocation::Local(p) => ArtifactLocation::Local(p.join(rel)),
            ArtifactLocation::S3 { bucket, prefix } => ArtifactLocation::S3 {
                bucket: bucket.clone(),
                prefix: collapse_slashes(
                    &[prefix.as_str(), rel]
                        .iter()
                        .filter(|s| !s.is_empty())
                        .cloned()
                        .collect::<Vec<_>>()
                        .join("/"),
                ),
            },
        }
    }

    /// The URI: `file:///abs/dir` or `s3://bucket/prefix`.
    pub fn uri(&self) -> String {
        match self {
            ArtifactLocation::Local(p) => format!("file://{}", p.display()),
            ArtifactLocation::S3 { bucket, prefix } if prefix.is_empty() => {
                format!("s3://{bucket}")
            }
            ArtifactLocation::S3 { bucket, prefix } => format!("s3://{bucket}/{prefix}"),
        }
    }
}

impl std::fmt::Display for ArtifactLocation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.uri())
    }
}

fn collapse_slashes(s: &str) -> String {
    s.split('/')
        .filter(|p| !p.is_empty())
        .collect::<Vec<_>>()
        .join("/")
}

#[derive(Debug, thiserror::Error)]
pub enum ArtifactError {
    #[error("artifact URI {uri:?}: {reason}")]
    BadUri { uri: String, reason: String },
    #[error("{uri} does not exist in the artifact store (the store said: {source})")]
    NotFound {
        uri: String,
        source: object_store::Error,
    },
    #[error("{uri}: {op} failed (the store said: {source})")]
    Store {
        uri: String,
        op: &'static str,
        source: object_store::Error,
    },
    #[error("{uri}: {op} {path}: {source}")]
    Io {
        uri: String,
        op: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
}

/// S3 settings on the command line; the rest comes from the standard `AWS_*` variables.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct S3Args {
    /// Endpoint of an S3-compatible store for s3:// artifact URIs, e.g.
    /// `http://127.0.0.1:9000` (MinIO). Default: AWS_ENDPOINT_URL, else AWS itself.
    /// Credentials and region come from AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY and
    /// AWS_REGION / AWS_DEFAULT_REGION.
    #[arg(long = "artifact-store-endpoint", env = "AIFAB_S3_ENDPOINT")]
    pub endpoint: Option<String>,
}

impl S3Args {
    pub fn config(&self) -> S3Config {
        S3Config {
            endpoint: self.endpoint.clone(),
            ..S3Config::default()
        }
    }
}

/// S3 client settings: each `Some` overrides what the `AWS_*` environment says.
#[derive(Debug, Clone, Default)]
pub struct S3Config {
    pub endpoint: Option<String>,
    pub region: Option<String>,
    pub access_key_id: Option<String>,
    pub secret_access_key: Option<String>,
}

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

fn s3_store(bucket: &str, s3: &S3Config) -> object_store::Result<object_store::aws::AmazonS3> {
    install_tls_provider();
    let mut b = AmazonS3Builder::from_env().with_bucket_name(bucket);
    if let Some(e) = &s3.endpoint {
        b = b.with_endpoint(e);
    }
    if let Some(r) = &s3.region {
        b = b.with_region(r);
    }
    if let Some(k) = &s3.access_key_id {
        b = b.with_access_key_id(k);
    }
    if let Some(k) = &s3.secret_access_key {
        b = b.with_secret_access_key(k);
    }
    // `from_env` reads AWS_REGION and AWS_DEFAULT_REGION (the first wins; default us-east-1).
    // Fail in seconds, not minutes, when the store is down: a few quick retries. (Client
    // options first: they hold allow_http, which the next step may set.)
    let retry = RetryConfig {
        max_retries: 3,
        retry_timeout: Duration::from_secs(30),
        ..RetryConfig::default()
    };
    let mut options = ClientOptions::new()
        .with_connect_timeout(Duration::from_secs(5))
        .with_timeout(Duration::from_secs(60));
    if let Some(allow) = b.get_config_value(&AmazonS3ConfigKey::Client(
        object_store::ClientConfigKey::AllowHttp,
    )) {
        options = options.with_allow_http(allow.eq_ignore_ascii_case("true"));
    }
    b = b.with_retry(retry).with_client_options(options);
    let endpoint = b.get_config_value(&AmazonS3ConfigKey::Endpoint);
    if endpoint
        .as_deref()
        .is_some_and(|e| e.starts_with("http://"))
    {
        b = b.with_allow_http(true);
    }
    b.build()
}

/// reqwest is built without a bundled TLS crypto provider (the workspace already has
/// ring through rustls; aws-lc-rs would be a second, large C build): install ring once.
/// Every process that builds a reqwest client calls this first (services through
/// `Service::init`, the CLI at start), or the client panics.
pub fn install_tls_provider() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let _ = rustls::crypto::ring::default_provider().install_default();
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use object_store::memory::InMemory;

    #[test]
    fn parses_paths_file_and_s3_uris() {
        assert_eq!(
            ArtifactLocation::parse("/a/b").unwrap(),
            ArtifactLocation::Local("/a/b".into())
        );
        assert_eq!(
            ArtifactLocation::parse("file:///a/b").unwrap(),
            ArtifactLocation::Local("/a/b".into())
        );
        let rel = ArtifactLocation::parse("rel/dir").unwrap();
        assert_eq!(
            rel,
            ArtifactLocation::Local(std::env::current_dir().unwrap().join("rel/dir"))
        );
        assert_eq!(
            ArtifactLocation::parse("s3://models/aifab/prod/").unwrap(),
            ArtifactLocation::S3 {
                bucket: "models".into(),
                prefix: "aifab/prod".into()
            }
        );
        assert_eq!(
            ArtifactLocation::parse("s3://models").unwrap(),
            ArtifactLocation::S3 {
                bucket: "models".into(),
                prefix: "".into()
            }
        );
        for (bad, says) in [
            ("", "empty"),
            ("s3://", "no bucket"),
            ("s3:///x", "no bucket"),
            ("s3://b/../x", "`..`"),
            ("file://relative/x", "absolute"),
            ("gs://bucket/x", "unsupported scheme \"gs\""),
        ] {
            let err = ArtifactLocation::parse(bad).unwrap_err().to_string();
            assert!(
                err.contains(says) && err.contains(&format!("{bad:?}")),
                "{bad:?}: {err}"
            );
        }
    }

    #[test]
    fn joins_and_prints_uris() {
        let s3 = ArtifactLocation::parse("s3://models/aifab").unwrap();
        assert_eq!(s3.join("spam/v3").uri(), "s3://models/aifab/spam/v3");
        assert_eq!(
            ArtifactLocation::parse("s3://models")
                .unwrap()
                .join("/spam/v3/")
                .uri(),
            "s3://models/spam/v3"
        );
        let local = ArtifactLocation::parse("/srv/art").unwrap();
        assert_eq!(local.join("spam/v3").uri(), "file:///srv/art/spam/v3");
        assert_eq!(local.join("").uri(), "file:///srv/art");
        // A printed URI parses back to the same location.
        for l in [s3.join("spam/v3"), local.join("spam/v3")] {
            assert_eq!(ArtifactLocation::parse(&l.uri()).unwrap(), l);
        }
    }

    fn files() -> Vec<(String, Vec<u8>)> {
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

    #[tokio::test]
    async fn unreachable_s3_names_the_uri_and_the_failure() {
        // A loopback port with nobody listening: the client must fail fast and say so.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let s3 = S3Config {
            endpoint: Some(format!("http://127.0.0.1:{port}")),
            region: Some("us-east-1".into()),
            access_key_id: Some("test".into()),
            secret_access_key: Some("test".into()),
        };
        let cache = tempfile::tempdir().unwrap();
        let started = std::time::Instant::now();
        let err = fetch_version(
            "s3://nobody/models/spam/v1",
            &["labels.json"],
            cache.path(),
            &s3,
        )
        .await
        .unwrap_err();
        let msg = format!("{err}");
        assert!(
            msg.contains("s3://nobody/models/spam/v1/labels.json")
                && msg.contains("the store said"),
            "{msg}"
        );
        // It got as far as connecting (not a client-side configuration error).
        assert!(
            !msg.contains("BadScheme") && msg.contains(&format!("127.0.0.1:{port}")),
            "{msg}"
        );
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "gave up after {:?}",
            started.elapsed()
        );
    }
}
