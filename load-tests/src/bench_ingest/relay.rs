//! The relay: the two transactional hops of ingest + feature with no stage work, the
//! floor the design's two stages stand on. Two of the platform's exactly-once loops
//! (`aifab_core::pipeline::run_transactional`) copy each record's key and bytes
//! raw → mid → out, on threads of this process.

use std::time::{Duration, Instant};

use super::cpu::cpu_seconds;
use super::kafka::{scan, GroupWatch};
use super::pipeline::span_s;
use super::topics::Topics;

pub(crate) struct RelayFigures {
    pub(crate) msgs_per_s: f64,
    /// This process's CPU per message (the two loops).
    pub(crate) cpu_us_per_msg: f64,
    pub(crate) broker_cpu_us_per_msg: f64,
}

/// Phase 3: relay the `n` messages of the raw topic; throughput measured like the
/// pipeline's, from the first record in mid to the last in out.
pub(crate) async fn relay_phase(
    brokers: &str,
    run: &str,
    topics: &Topics,
    n: usize,
    timeout: Duration,
    broker_pid: Option<u32>,
) -> anyhow::Result<RelayFigures> {
    let (mid, out) = (&topics.relay_mid, &topics.relay_out);
    let broker_before = cpu_seconds(broker_pid);
    let cpu = relay(brokers, run, &topics.raw, mid, out, n, timeout).await?;
    let broker_us = (cpu_seconds(broker_pid) - broker_before) * 1e6 / n as f64;
    let b = brokers.to_string();
    let (m_t, o_t) = (mid.clone(), out.clone());
    let (m, o) = tokio::task::spawn_blocking(move || {
        anyhow::Ok((
            scan(&b, &m_t, n, Duration::from_secs(120))?,
            scan(&b, &o_t, n, Duration::from_secs(120))?,
        ))
    })
    .await??;
    anyhow::ensure!(
        m.records == n && o.records == n && o.keys.len() == n,
        "the relay wrote {} and {} records ({} distinct), expected {n}",
        m.records,
        o.records,
        o.keys.len()
    );
    Ok(RelayFigures {
        msgs_per_s: n as f64 / span_s(m.first_ms, o.last_ms),
        cpu_us_per_msg: cpu * 1e6 / n as f64,
        broker_cpu_us_per_msg: broker_us,
    })
}

/// The relay's stage: every record's key and bytes, unchanged, to the next topic.
struct CopyHop {
    to: String,
}

impl aifab_core::pipeline::Transform for CopyHop {
    type Done = ();
    async fn transform(
        &mut self,
        batch: &[aifab_core::pipeline::Consumed],
    ) -> anyhow::Result<(Vec<aifab_core::pipeline::Record>, ())> {
        Ok((
            batch
                .iter()
                .map(|m| {
                    aifab_core::pipeline::Record::new(
                        &self.to,
                        m.key.clone().unwrap_or_default(),
                        m.payload.clone(),
                    )
                })
                .collect(),
            (),
        ))
    }
}

/// Run the relay raw → mid → out until the out hop's group has committed all of mid;
/// returns the CPU seconds this process spent from the first committed offset on.
async fn relay(
    brokers: &str,
    run: &str,
    raw: &str,
    mid: &str,
    out: &str,
    n: usize,
    timeout: Duration,
) -> anyhow::Result<f64> {
    let shutdown = tokio_util::sync::CancellationToken::new();
    let mut loops = Vec::new();
    for (hop, from, to) in [("first", raw, mid), ("second", mid, out)] {
        let settings = aifab_core::pipeline::LoopSettings {
            service: "bench",
            brokers: brokers.to_string(),
            group: format!("{run}.relay-{hop}"),
            input_topic: from.to_string(),
            client_id: format!("{run}.relay-{hop}"),
            // The stages' defaults (AIFAB_CONSUME_BATCH, AIFAB_CONSUME_WAIT_MS).
            max_batch: 10_000,
            max_wait: Duration::from_millis(20),
            heartbeat: Default::default(),
        };
        let (stage, handle, cancel) = (
            CopyHop { to: to.to_string() },
            tokio::runtime::Handle::current(),
            shutdown.clone(),
        );
        loops.push(std::thread::spawn(move || {
            aifab_core::pipeline::run_transactional(settings, stage, handle, cancel)
        }));
    }
    let first = GroupWatch::new(brokers, &format!("{run}.relay-first"), raw)?;
    let second = GroupWatch::new(brokers, &format!("{run}.relay-second"), mid)?;
    let deadline = Instant::now() + timeout;
    let (mut base, mut running) = (None, false);
    let result = loop {
        if Instant::now() > deadline {
            break Err(anyhow::anyhow!(
                "the relay did not finish within {}s",
                timeout.as_secs()
            ));
        }
        if loops.iter().any(|l| l.is_finished()) {
            break Err(anyhow::anyhow!("a relay loop stopped early"));
        }
        let (fp, sp) = tokio::task::block_in_place(|| (first.progress(), second.progress()));
        if fp.committed == 0 {
            base = Some(cpu_seconds(Some(std::process::id())));
        } else if !running {
            running = true;
            eprintln!("relay: running");
        }
        if fp.done && sp.done && sp.committed as usize >= n {
            break Ok(cpu_seconds(Some(std::process::id())) - base.unwrap_or_default());
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    shutdown.cancel();
    for l in loops {
        match tokio::task::block_in_place(|| l.join()) {
            Ok(Ok(())) => {}
            Ok(Err(e)) => eprintln!("relay loop: {e:#}"),
            Err(_) => eprintln!("a relay loop panicked"),
        }
    }
    result
}
