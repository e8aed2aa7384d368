//! Kafka for tests: fresh topics, producing requests and raw records, and the dead
//! letters a test's bad input turned into.

use std::time::Duration;

use aifab_core::messages::DeadLetter;
use aifab_core::tail::{Start, Tail};
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;

use crate::fixtures::request;
use crate::stack::kafka_brokers;

fn admin(brokers: &str) -> AdminClient<DefaultClientContext> {
    aifab_core::kafka::base_config(brokers, "aifab-tests-admin")
        .create()
        .expect("admin client")
}

/// Create a fresh topic; panics with the broker's reason if it cannot.
pub async fn create_topic(name: &str, partitions: i32) {
    create_topic_on(&kafka_brokers(), name, partitions).await
}

/// [`create_topic`] on the broker at `brokers`.
pub async fn create_topic_on(brokers: &str, name: &str, partitions: i32) {
    let opts = AdminOptions::new().operation_timeout(Some(Duration::from_secs(30)));
    let res = admin(brokers)
        .create_topics(
            &[NewTopic::new(name, partitions, TopicReplication::Fixed(1))],
            &opts,
        )
        .await
        .expect("create_topics request");
    for r in res {
        r.unwrap_or_else(|(t, e)| panic!("creating topic {t}: {e} (is scripts/stack-up running?)"));
    }
}

/// Delete a test topic (best effort: a leftover topic harms nothing).
pub async fn delete_topic(name: &str) {
    let _ = admin(&kafka_brokers())
        .delete_topics(&[name], &AdminOptions::new())
        .await;
}

/// `n` inference requests ([`request`]) produced to `topic` keyed by id.
pub async fn produce_requests(
    topic: &str,
    task: &str,
    prefix: &str,
    range: std::ops::Range<usize>,
) {
    produce_requests_on(&kafka_brokers(), topic, task, prefix, range).await
}

/// [`produce_requests`] to the broker at `brokers`. Each send is retried by the idempotent
/// producer (through a broker restart too) until it is acknowledged, or panics.
pub async fn produce_requests_on(
    brokers: &str,
    topic: &str,
    task: &str,
    prefix: &str,
    range: std::ops::Range<usize>,
) {
    use rdkafka::producer::{FutureProducer, FutureRecord};
    let p: FutureProducer = aifab_core::kafka::producer_config(brokers, "aifab-tests")
        .create()
        .unwrap();
    let mut sends = Vec::new();
    for i in range {
        let req = request(task, prefix, i);
        let payload = aifab_core::messages::encode(&req);
        let p = p.clone();
        let topic = topic.to_string();
        sends.push(async move {
            p.send(
                FutureRecord::to(&topic).key(&req.id).payload(&payload),
                Duration::from_secs(30),
            )
            .await
            .map_err(|(e, _)| e)
            .expect("produce request");
        });
    }
    futures::future::join_all(sends).await;
}

/// A record for [`produce_raw`]: key, value and headers (name, value).
pub type RawRecord = (Option<String>, Vec<u8>, Vec<(String, String)>);

/// Produce records (key, value, headers) to `topic` in order, with an idempotent producer;
/// returns each record's (partition, offset).
pub async fn produce_raw(topic: &str, records: &[RawRecord]) -> Vec<(i32, i64)> {
    use rdkafka::message::{Header, OwnedHeaders};
    use rdkafka::producer::{FutureProducer, FutureRecord};
    let p: FutureProducer = aifab_core::kafka::producer_config(&kafka_brokers(), "aifab-tests")
        .create()
        .unwrap();
    let mut sends = Vec::new();
    for (key, value, headers) in records {
        let mut h = OwnedHeaders::new();
        for (k, v) in headers {
            h = h.insert(Header {
                key: k,
                value: Some(v.as_bytes()),
            });
        }
        let mut r: FutureRecord<'_, String, Vec<u8>> =
            FutureRecord::to(topic).payload(value).headers(h);
        if let Some(k) = key {
            r = r.key(k);
        }
        // Enqueued in order here; delivered in order per partition (idempotent producer).
        sends.push(p.send_result(r).map_err(|(e, _)| e).expect("enqueue"));
    }
    let mut out = Vec::new();
    for s in sends {
        let d = s
            .await
            .expect("delivery future")
            .map_err(|(e, _)| e)
            .expect("delivered");
        out.push((d.partition, d.offset));
    }
    out
}

/// The high watermark of each partition of `aifab.dlq` now: read dead letters from here.
pub async fn dlq_high_watermark() -> Vec<i64> {
    tokio::task::spawn_blocking(|| {
        use rdkafka::consumer::Consumer;
        let c = aifab_core::kafka::metadata_client(&kafka_brokers(), "aifab-tests").unwrap();
        (0..aifab_core::topics::DLQ.partitions)
            .map(|p| {
                c.fetch_watermarks(aifab_core::topics::DLQ.name, p, Duration::from_secs(10))
                    .unwrap()
                    .1
            })
            .collect()
    })
    .await
    .unwrap()
}

/// The first `n` dead letters in `aifab.dlq` after offsets `from` whose source is
/// `source_topic` (read_committed); panics if fewer arrive within `timeout`.
pub async fn dead_letters_from(
    from: Vec<i64>,
    source_topic: &str,
    n: usize,
    timeout: Duration,
) -> Vec<DeadLetter> {
    let source_topic = source_topic.to_string();
    tokio::task::spawn_blocking(move || {
        let dlq = aifab_core::topics::DLQ.name;
        let at = (0..).zip(from).collect();
        let mut tail = Tail::open(&kafka_brokers(), "aifab-tests", dlq, Start::Offsets(at))
            .unwrap_or_else(|e| panic!("reading {dlq}: {e}"));
        let deadline = std::time::Instant::now() + timeout;
        let mut found = Vec::new();
        while found.len() < n {
            assert!(
                std::time::Instant::now() < deadline,
                "{} of {n} dead letters from {source_topic} within {timeout:?}",
                found.len()
            );
            // Other tests' dead letters and records that are not one are passed over.
            if let Some(Ok(r)) = tail.poll(Duration::from_millis(200)) {
                if let Ok(dl) = aifab_core::messages::decode::<DeadLetter>(r.value()) {
                    if dl.source.as_ref().is_some_and(|s| s.topic == source_topic) {
                        found.push(dl);
                    }
                }
            }
        }
        found
    })
    .await
    .unwrap()
}
