//! Cluster-level calls: the liveness probe and a client for metadata queries.

use std::time::Duration;

use rdkafka::consumer::{BaseConsumer, Consumer};

use super::base_config;

/// Ask the cluster for metadata: the liveness probe for Kafka. Blocking; call from
/// `spawn_blocking`. Returns the number of brokers seen.
pub fn probe(
    client: &BaseConsumer,
    timeout: Duration,
) -> Result<usize, rdkafka::error::KafkaError> {
    let md = client.fetch_metadata(None, timeout)?;
    Ok(md.brokers().len())
}

/// A consumer with no group, for metadata and watermark queries.
pub fn metadata_client(brokers: &str, client_id: &str) -> anyhow::Result<BaseConsumer> {
    Ok(base_config(brokers, client_id).create()?)
}
