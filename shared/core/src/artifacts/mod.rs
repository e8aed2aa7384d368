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

mod digest;
mod error;
mod fetch;
mod location;
mod s3;
mod store;

pub use digest::{dir_sha256, files_sha256};
pub use error::ArtifactError;
pub use fetch::{default_cache_dir, fetch_version};
pub use location::ArtifactLocation;
pub use s3::{install_tls_provider, S3Args, S3Config};
pub use store::ArtifactStore;
