//! Typed messages: the one source in code of the contract in `schemas/`.
//!
//! Every Kafka value and NATS payload is JSON with a `schema` field (`name/version`).
//! Each type here has a schema file `schemas/<name>.v<version>.json`; the contract test
//! (`tests/contract/`) checks that what these types serialize validates against it.
//!
//! Timestamps are milliseconds since the Unix epoch (`*_ms`), durations are seconds or
//! milliseconds as their suffix says.
//!
//! - codec: the [`Message`] trait, its [`SchemaTag`], [`encode`] and [`decode`];
//! - data plane: the Kafka records ([`IngestRecord`], [`InferenceRequest`],
//!   [`Prediction`], [`UsageRecord`], [`DeadLetter`], ...);
//! - audit: [`AuditEvent`], one per state change, on the Kafka topic `aifab.audit`;
//! - control plane: the NATS events ([`ModelEvent`], [`LagReading`], [`Alert`],
//!   [`BudgetEvent`], [`ScaleDecision`], [`TrainProgress`], ...).

/// `impl Message for $ty` with its `name/version` tag. Defined before the modules below
/// so that they can use it.
macro_rules! message {
    ($ty:ty, $schema:literal) => {
        impl $crate::messages::Message for $ty {
            const SCHEMA: &'static str = $schema;
        }
    };
}

mod audit;
mod codec;
mod control_plane;
mod data_plane;
#[cfg(test)]
mod tests;

pub use audit::*;
pub use codec::{decode, encode, schema_file_for, tag, DecodeError, Message, SchemaTag};
// Every item of the two planes is a message or a part of one: all of them are the API.
pub use control_plane::*;
pub use data_plane::*;

/// Every message schema, for tools that list or validate them all.
pub const ALL_SCHEMAS: &[&str] = &[
    IngestRecord::SCHEMA,
    InferenceRequest::SCHEMA,
    TrainingExample::SCHEMA,
    Prediction::SCHEMA,
    UsageRecord::SCHEMA,
    DeadLetter::SCHEMA,
    ModelEvent::SCHEMA,
    LagReading::SCHEMA,
    Alert::SCHEMA,
    BudgetEvent::SCHEMA,
    BudgetSet::SCHEMA,
    ScaleDecision::SCHEMA,
    TrainRequest::SCHEMA,
    TrainProgress::SCHEMA,
    ReplicaReport::SCHEMA,
    AuditEvent::SCHEMA,
];
