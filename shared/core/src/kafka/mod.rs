//! Kafka client settings and probes (rdkafka / librdkafka).
//!
//! One place decides the settings the delivery guarantees need: idempotent producers,
//! manual commits, `read_committed` consumers. Services start from these builders and
//! add only what is theirs.
//!
//! - config: the client settings ([`base_config`], [`producer_config`],
//!   [`transactional_producer_config`], [`consumer_config`]);
//! - props: the deployment's librdkafka properties (TLS, SASL) applied to every client;
//! - admin: the liveness [`probe`] and [`metadata_client`];
//! - layout: topics' replication and partitions against the deployment's
//!   [`Replication`] ([`assess`], [`describe`], [`ensure_topics`]);
//! - lag: a group's [`group_offsets`] and lag, settled by the [`LagProbe`];
//! - txn: transactional producer calls ([`retry_transactional`], [`send_offsets_bounded`],
//!   [`commit_transaction`], [`abort_transaction`], ...);
//! - rewind: a consumer's [`committed_positions`] to seek back to.

mod admin;
mod config;
mod lag;
mod lag_probe;
mod layout;
mod props;
mod rewind;
mod txn;

pub use admin::{metadata_client, probe};
pub use config::{base_config, consumer_config, producer_config, transactional_producer_config};
pub use lag::{group_offsets, partition_lag, settled_lag, PartitionOffsets, TopicMissing};
pub use lag_probe::{LagProbe, ProbeSeen, PROBE_LAG_AT_MOST};
pub use layout::{assess, describe, ensure_topics, Finding, Replication, TopicLayout};
pub use props::{process_props, KafkaProps, PROPERTIES_FILE_ENV, PROP_ENV_PREFIX};
pub use rewind::{committed_positions, committed_positions_retrying, serve_consumer};
pub use txn::{
    abort_transaction, commit_transaction, init_transactions_retrying, needs_new_producer,
    retry_transactional, send_offsets_bounded, send_waiting, txn_action, TxnAction,
    SEND_OFFSETS_BOUND, TXN_RETRY_BUDGET,
};
