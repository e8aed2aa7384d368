//! Recent state changes for the dashboard and `aifab status`: the last
//! [`CHANGES_KEPT`](crate::dashboard::CHANGES_KEPT) records of the audit topic at start,
//! then each new one as it is committed.

use std::time::{Duration, Instant};

use aifab_core::messages::{decode, AuditEvent};
use aifab_core::tail::{Start, Tail};
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::dashboard::CHANGES_KEPT;
use crate::state::SharedState;

/// Between attempts to open the topic (missing, or the brokers down).
const RETRY: Duration = Duration::from_secs(10);

/// Follow the audit topic until `shutdown` (blocking: run on its own thread).
pub(crate) fn follow_audit(
    config: &Config,
    shared: SharedState,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let (brokers, topic) = (&config.brokers.kafka_brokers, &config.brokers.audit_topic);
    let start = Start::Last(CHANGES_KEPT as i64);
    // What the dashboard says about the log: `aifab status` must not show "no changes"
    // for a log it cannot read. (Errors `Tail` retries inside a read, such as brokers
    // that are down, do not show here; a topic that cannot be opened or read does.)
    let report = |result: Result<(), String>| {
        let now = aifab_core::now_ms();
        let mut s = shared.lock().expect("stats lock");
        s.dash.audit.from = format!("kafka topic {topic}");
        s.dash.audit.update(result, now);
    };
    let mut tail = loop {
        match Tail::open(brokers, "aifab-monitor", topic, start.clone()) {
            Ok(t) => break t,
            Err(e) => {
                // The dashboard shows no changes meanwhile, and says why; everything else works.
                report(Err(e.to_string()));
                tracing::warn!(%topic, error = %e, "the audit log cannot be read yet; retrying");
                if wait(&shutdown, RETRY) {
                    return Ok(());
                }
            }
        }
    };
    while !shutdown.is_cancelled() {
        match tail.read(Duration::from_millis(500)) {
            Ok(records) => {
                report(Ok(()));
                for r in records {
                    match decode::<AuditEvent>(r.value()) {
                        Ok(e) => shared.lock().expect("stats lock").dash.on_change(e),
                        Err(e) => tracing::warn!(%topic, offset = r.offset, error = %e,
                            "undecodable audit record"),
                    }
                }
            }
            Err(e) => {
                report(Err(e.to_string()));
                tracing::warn!(%topic, error = %e, "reading the audit log; reconnecting");
                if wait(&shutdown, Duration::from_secs(1)) {
                    return Ok(());
                }
                tail.reconnect()?;
            }
        }
    }
    Ok(())
}

/// Wait `d` unless shut down first; true when shut down.
fn wait(shutdown: &CancellationToken, d: Duration) -> bool {
    let until = Instant::now() + d;
    while Instant::now() < until {
        if shutdown.is_cancelled() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    shutdown.is_cancelled()
}
