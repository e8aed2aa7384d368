//! The crate's error type.

use std::path::PathBuf;

/// Everything that can go wrong loading or running a model.
///
/// Messages say what was expected and what was found.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    /// A device spec that is not `cpu`, `cuda` or `cuda:N`.
    #[error("invalid device `{found}`: expected `cpu`, `cuda` or `cuda:N` (N = GPU index, e.g. `cuda:0`)")]
    InvalidDeviceSpec { found: String },

    /// The device exists in the spec but cannot be used here.
    #[error("{0}")]
    DeviceUnavailable(String),

    /// A file could not be read or written.
    #[error("{action} {path}: {source}")]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    /// A JSON file did not parse into what was expected.
    #[error("{path}: {message}")]
    Json { path: PathBuf, message: String },

    /// A model, head or tokenizer file is present but not what we expected.
    #[error("{0}")]
    Invalid(String),

    /// The tokenizer library failed.
    #[error("tokenizer: {0}")]
    Tokenizer(String),

    /// An input to `embed`/`classify`/`scores` is malformed.
    #[error("bad input: {0}")]
    Input(String),

    /// The tensor library failed.
    #[error("candle: {0}")]
    Candle(#[from] candle_core::Error),
}

/// `Result` with [`ModelError`].
pub type Result<T, E = ModelError> = std::result::Result<T, E>;

pub(crate) fn io_err(
    action: &'static str,
    path: impl Into<PathBuf>,
) -> impl FnOnce(std::io::Error) -> ModelError {
    let path = path.into();
    move |source| ModelError::Io {
        action,
        path,
        source,
    }
}

pub(crate) fn read_json<T: serde::de::DeserializeOwned>(path: &std::path::Path) -> Result<T> {
    let text = std::fs::read_to_string(path).map_err(io_err("cannot read", path))?;
    serde_json::from_str(&text).map_err(|e| ModelError::Json {
        path: path.to_path_buf(),
        message: e.to_string(),
    })
}
