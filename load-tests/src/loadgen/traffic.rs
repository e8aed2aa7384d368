//! Traffic generation, open loop: each request is produced at its scheduled instant,
//! whatever came back before; a producer falling behind shows as send lag and in the
//! late requests' latency.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use aifab_core::messages::encode;
use indicatif::ProgressBar;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::FutureRecord;

use super::collect::Clock;
use super::schedule::Arrival;
use super::target::Target;

/// How the sends of a step went.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct Sent {
    /// Requests the broker acknowledged.
    pub(crate) sent: usize,
    pub(crate) send_errors: usize,
    /// Longest a send went out after its intended time.
    pub(crate) max_lag: Duration,
}

/// Produce request `i` of `arrivals` (id `<prefix>-<i>`) at `clock.t0` + its `at_s`, and
/// wait for every delivery. `distinct` (predictions read so far) goes on `pb`.
pub(crate) async fn send_schedule(
    target: &Target,
    arrivals: &[Arrival],
    tenant_names: &[String],
    prefix: &str,
    clock: Clock,
    pb: &ProgressBar,
    distinct: &AtomicUsize,
) -> Sent {
    let mut deliveries = Vec::with_capacity(arrivals.len());
    let mut out = Sent::default();
    let t0_tokio = tokio::time::Instant::from_std(clock.t0);
    for (i, a) in arrivals.iter().enumerate() {
        let at = t0_tokio + Duration::from_secs_f64(a.at_s);
        tokio::time::sleep_until(at).await;
        out.max_lag = out
            .max_lag
            .max(tokio::time::Instant::now().saturating_duration_since(at));
        let mut req = aifab_tests::request(&target.task, prefix, i);
        req.tenant = tenant_names[a.tenant].clone();
        req.received_at_ms = clock.wall0_ms + (a.at_s * 1000.0) as i64;
        let payload = encode(&req);
        let headers = OwnedHeaders::new().insert(Header {
            key: "tenant",
            value: Some(req.tenant.as_bytes()),
        });
        let mut record = FutureRecord::to(&target.topic)
            .key(&req.id)
            .payload(&payload)
            .headers(headers);
        loop {
            match target.producer.send_result(record) {
                Ok(f) => {
                    deliveries.push(f);
                    break;
                }
                // librdkafka's local queue is full: it has no "room again" notification,
                // so back off briefly; the lateness counts against this request's latency.
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), r)) => {
                    record = r;
                    tokio::time::sleep(Duration::from_millis(1)).await;
                }
                Err((e, _)) => {
                    out.send_errors += 1;
                    eprintln!("send {}: {e}", req.id);
                    break;
                }
            }
        }
        if i % 32 == 0 {
            pb.set_position(i as u64);
            pb.set_message(format!("predicted {}", distinct.load(Ordering::Relaxed)));
        }
    }
    pb.set_position(arrivals.len() as u64);
    for d in deliveries {
        match d.await {
            Ok(Ok(_)) => out.sent += 1,
            Ok(Err((e, _))) => {
                out.send_errors += 1;
                eprintln!("delivery: {e}");
            }
            Err(_) => out.send_errors += 1,
        }
    }
    out
}
