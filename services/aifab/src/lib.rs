//! The `aifab` operator CLI: the local stack supervisor (`up`, `down`, `status`) and
//! admin verbs. It may call services' libraries; services never call it.

pub mod costs;
pub mod demo;
pub mod keys;
pub mod local;
pub mod models;
mod progress;
pub mod simulate;
pub mod status;
pub mod stream;
pub mod supervisor;
pub mod topics;
pub mod train;
