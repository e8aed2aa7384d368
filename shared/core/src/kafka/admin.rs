//! Cluster-level calls: the liveness probe, a client for metadata queries, and creating
//! the topics the services need.

use std::time::Duration;

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::RDKafkaErrorCode;

use super::base_config;
use crate::topics::Topic;

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

/// Create topics that do not exist yet (existing ones are left as they are).
pub async fn ensure_topics(brokers: &str, topics: &[Topic]) -> anyhow::Result<()> {
    let admin: AdminClient<DefaultClientContext> = base_config(brokers, "aifab-admin").create()?;
    let new: Vec<NewTopic> = topics
        .iter()
        .map(|t| NewTopic::new(t.name, t.partitions, TopicReplication::Fixed(1)))
        .collect();
    let results = admin
        .create_topics(
            &new,
            &AdminOptions::new().operation_timeout(Some(Duration::from_secs(30))),
        )
        .await?;
    for r in results {
        match r {
            Ok(_) | Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((name, code)) => anyhow::bail!("creating topic {name}: {code}"),
        }
    }
    Ok(())
}
