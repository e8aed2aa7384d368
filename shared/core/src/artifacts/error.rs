//! What can go wrong in the artifact store, naming the URI it went wrong at.

use std::path::PathBuf;

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
