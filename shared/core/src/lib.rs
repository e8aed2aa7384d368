//! aifab-core: what every aifab service shares.
//!
//! - [`access`]: who may use a control API (admin and read tokens, else loopback only).
//! - [`api_keys`]: tenants' API keys stored as salted hashes.
//! - [`audit`]: every state change recorded, with who made it, on `aifab.audit`.
//! - [`artifacts`]: the model artifact store (local directory or S3-compatible).
//! - [`topics`]: the one list of Kafka topics and NATS subjects.
//! - [`messages`]: typed messages, the one source in code of the contract in `schemas/`;
//!   [`dead_letter`]: the one catalogue of refusal kinds.
//! - [`config`]: command-line/env configuration pieces services flatten into their own.
//! - [`kafka`], [`nats`], [`redis_store`]: broker clients with retry, backoff and probes.
//! - [`secret`]: secrets read from files; URLs redacted before they are logged.
//! - [`health`]: `/healthz`, `/readyz` and `/metrics` on every service's port;
//!   [`http_limits`]: the concurrency limit and timeout of every service's API.
//! - [`service`]: the start-up/shutdown skeleton each `main.rs` calls; [`supervise`]: its
//!   loops never die unseen (exit to be restarted, readiness names a stopped or stale loop).
//! - [`pipeline`]: Kafka consume-transform-produce loops (transactional, at-least-once).
//! - [`telemetry`], [`shutdown`], [`backoff`]: logs, metrics, signals, retry pacing.

pub mod access;
pub mod api_keys;
pub mod artifacts;
pub mod audit;
pub mod backoff;
pub mod config;
pub mod dashboard;
pub mod dead_letter;
pub mod health;
pub mod http_limits;
pub mod kafka;
pub mod messages;
pub mod nats;
pub mod period;
pub mod pipeline;
pub mod redis_store;
pub mod registry;
pub mod schema;
pub mod secret;
pub mod service;
pub mod shutdown;
pub mod supervise;
pub mod tail;
pub mod telemetry;
pub mod topics;

/// Milliseconds since the Unix epoch: the one clock every message carries.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}
