//! Phase 1, the bare producer: the payloads written with the platform's producer settings
//! (idempotent, acks=all, lz4) into the raw topic; messages per second from the first
//! send to the last ack.

use std::time::{Duration, Instant};

use rdkafka::error::KafkaError;
use rdkafka::producer::{BaseRecord, Producer as _, ThreadedProducer};
use rdkafka::types::RDKafkaErrorCode;

use super::cpu::cpu_seconds;
use super::kafka::{wait_for_leaders, Counting};
use super::texts::Payload;
use super::topics::Topics;

pub(crate) struct ProducerFigures {
    pub(crate) msgs_per_s: f64,
    /// The broker's CPU per message meanwhile.
    pub(crate) broker_cpu_us_per_msg: f64,
}

/// Blocking (the producer's queue is polled by its own thread).
pub(crate) fn bare_producer(
    brokers: &str,
    topics: &Topics,
    partitions: i32,
    payloads: &[Payload],
    broker_pid: Option<u32>,
) -> anyhow::Result<ProducerFigures> {
    let n = payloads.len();
    let producer: ThreadedProducer<Counting> =
        aifab_core::kafka::producer_config(brokers, "aifab-bench-producer")
            .create_with_context(Counting)?;
    // The clock starts once the producer is ready, as the stages' starts after their group
    // joins: an idempotent producer first gets its producer id from the broker (seen to
    // take up to half a second, most of a 100k-message run), and a topic just created may
    // not have its leaders yet. One message to a warm-up topic covers the first.
    let warm = Instant::now();
    producer
        .send(BaseRecord::<(), _>::to(&topics.warmup).payload(&b"warm-up"[..]))
        .map_err(|(e, _)| e)?;
    producer.flush(Duration::from_secs(30))?;
    wait_for_leaders(producer.client(), &topics.raw, partitions as usize)?;
    eprintln!(
        "bare producer ready after {:.2}s",
        warm.elapsed().as_secs_f64()
    );
    let broker_before = cpu_seconds(broker_pid);
    let t0 = Instant::now();
    for p in payloads {
        let mut record = BaseRecord::to(&topics.raw).key(&p.id).payload(&p.bytes);
        loop {
            match producer.send(record) {
                Ok(()) => break,
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), r)) => {
                    record = r;
                    std::thread::sleep(Duration::from_millis(1));
                }
                Err((e, _)) => anyhow::bail!("producing: {e}"),
            }
        }
    }
    producer.flush(Duration::from_secs(120))?;
    let secs = t0.elapsed().as_secs_f64();
    let msgs_per_s = n as f64 / secs;
    eprintln!("bare producer: {n} messages in {secs:.2}s = {msgs_per_s:.0} msg/s");
    drop(producer);
    Ok(ProducerFigures {
        msgs_per_s,
        broker_cpu_us_per_msg: (cpu_seconds(broker_pid) - broker_before) * 1e6 / n as f64,
    })
}
