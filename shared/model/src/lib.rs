//! Model code for aifab: device choice, tokenizer, sentence encoder (BERT on candle),
//! classification heads, and test fixtures.
//!
//! Typical use:
//!
//! ```no_run
//! use std::sync::Arc;
//! use aifab_model::{device, Classifier, Encoder, TextTokenizer};
//!
//! # fn main() -> aifab_model::Result<()> {
//! let dev = device::select("cpu".parse()?)?;
//! let dir = std::path::Path::new("/models/all-minilm-l6-v2");
//! let tok = TextTokenizer::from_file(dir.join("tokenizer.json"), 128)?;
//! let enc = Arc::new(Encoder::load(dir, &dev)?);
//! let clf = Classifier::load_head(enc, "/models/heads/v1", "v1")?;
//! let ids = tok.encode("what a great film")?.ids;
//! let out = clf.classify(&[&ids])?;
//! println!("{} {:?}", out[0].label, out[0].scores);
//! # Ok(()) }
//! ```

pub mod batcher;
mod bert;
mod cpu;

pub mod classifier;
pub mod device;
pub mod encoder;
pub mod error;
pub mod head;
pub mod testing;
pub mod tokenize;

pub use classifier::{Classification, Classifier};
pub use device::{dtype_for, select, DeviceSpec};
pub use encoder::{Encoder, EncoderImpl, EncoderOptions};
pub use error::{ModelError, Result};
pub use head::ClassificationHead;
pub use tokenize::{Encoded, TextTokenizer};

/// Re-exported so callers need not depend on candle directly.
pub use candle_core::{DType, Device};

#[cfg(test)]
mod tests;
