//! The settings every Kafka client starts from: idempotent producers, manual commits,
//! `read_committed` consumers.

use rdkafka::config::ClientConfig;

/// Settings shared by every client: where, and a client id that names the service.
pub fn base_config(brokers: &str, client_id: &str) -> ClientConfig {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", brokers)
        .set("client.id", client_id)
        // Fail fast on a dead broker address in logs, but keep retrying forever.
        .set("socket.connection.setup.timeout.ms", "5000")
        .set("reconnect.backoff.ms", "200")
        .set("reconnect.backoff.max.ms", "10000")
        // A restarting broker can answer metadata before it lists itself; librdkafka
        // (2.10+) then forgets it and, with no broker left, only goes back to
        // `bootstrap.servers` after this long (5 minutes by default). Until then every
        // request of the client fails or waits: consumers stop fetching and coordinator
        // calls time out, however long the broker has been back.
        .set("metadata.recovery.rebootstrap.trigger.ms", "10000");
    // The deployment's security settings (TLS, SASL, ...): see `props`. A service checks
    // them at start and stops on an error, so here an error can only be logged.
    match super::props::process_props() {
        Ok(props) => props.apply(&mut c),
        Err(e) => tracing::error!(error = %e, "kafka client properties not applied"),
    }
    // librdkafka's own debug contexts (`cgrp,eos,fetch`, `all`, ...) for diagnosing a
    // client: they log through the service's log at debug level.
    if let Ok(contexts) = std::env::var("AIFAB_KAFKA_DEBUG") {
        if !contexts.trim().is_empty() {
            c.set("debug", contexts.trim());
        }
    }
    c
}

/// An idempotent producer: retries never duplicate or reorder within a partition.
pub fn producer_config(brokers: &str, client_id: &str) -> ClientConfig {
    let mut c = base_config(brokers, client_id);
    c.set("enable.idempotence", "true")
        .set("acks", "all")
        .set("linger.ms", "5")
        .set("compression.type", "lz4")
        // Keep retrying through a broker restart rather than failing the send.
        .set("message.timeout.ms", "300000");
    c
}

/// A transactional producer (consume-transform-produce). The id must be stable per
/// input assignment so a restarted instance fences its zombie predecessor.
pub fn transactional_producer_config(
    brokers: &str,
    client_id: &str,
    transactional_id: &str,
) -> ClientConfig {
    let mut c = producer_config(brokers, client_id);
    // librdkafka requires message.timeout.ms <= transaction.timeout.ms.
    c.set("transactional.id", transactional_id)
        // Short, so the open transaction of a worker that died for good stops holding
        // back read_committed consumers soon (a restart with the same id fences it at once).
        .set("transaction.timeout.ms", "15000")
        .set("message.timeout.ms", "15000")
        // A committed transaction is the delivery report of all its records: per-record
        // reports would only be events for the loop to poll and free (a profile of the
        // relay found the flush before each commit busy serving them).
        .set("delivery.report.only.error", "true");
    c
}

/// A group consumer that commits by hand and sees only committed transactions.
pub fn consumer_config(brokers: &str, client_id: &str, group: &str) -> ClientConfig {
    let mut c = base_config(brokers, client_id);
    c.set("group.id", group)
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("auto.offset.reset", "earliest")
        .set("isolation.level", "read_committed");
    // Kafka 4's consumer-group protocol (`AIFAB_KAFKA_PROP_GROUP_PROTOCOL=consumer`) takes
    // session and heartbeat timing from the broker and refuses them here.
    // (librdkafka reads the value case-insensitively)
    let consumer_protocol = c
        .get("group.protocol")
        .is_some_and(|v| v.trim().eq_ignore_ascii_case("consumer"));
    if !consumer_protocol {
        c.set("session.timeout.ms", "10000")
            .set("heartbeat.interval.ms", "1000");
    }
    // A subscribed topic that does not exist yet (a service started before its topics
    // were created) is noticed at the next metadata refresh: 10 s, not librdkafka's 5 min.
    c.set("topic.metadata.refresh.interval.ms", "10000");
    c
}

#[cfg(test)]
mod tests {
    use rdkafka::consumer::BaseConsumer;
    use rdkafka::producer::BaseProducer;

    use super::*;
    use crate::kafka::metadata_client;

    #[test]
    fn every_client_rebootstraps_soon_and_librdkafka_takes_the_settings() {
        let brokers = "127.0.0.1:1";
        let configs = [
            ("producer", producer_config(brokers, "t")),
            (
                "transactional",
                transactional_producer_config(brokers, "t", "t"),
            ),
            ("consumer", consumer_config(brokers, "t", "g")),
        ];
        for (name, c) in configs {
            let trigger: u64 = c
                .get("metadata.recovery.rebootstrap.trigger.ms")
                .expect(name)
                .parse()
                .unwrap();
            assert!(trigger <= 10_000, "{name}: rebootstrap after {trigger} ms");
        }
        // Creating a client checks every property name and value (no connection needed).
        let _: BaseConsumer = consumer_config(brokers, "t", "g")
            .create()
            .expect("consumer settings accepted");
        let _: BaseProducer = transactional_producer_config(brokers, "t", "t")
            .create()
            .expect("producer settings accepted");
        metadata_client(brokers, "t").expect("metadata client settings accepted");
    }
}
