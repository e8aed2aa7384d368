//! `aifab status`: every service's readiness, read from its `/readyz`.

use std::time::Duration;

use serde::Deserialize;

use crate::local::LocalService;

#[derive(Debug, Clone, PartialEq)]
pub enum Health {
    Ready,
    /// Up but not ready; the failing checks and why.
    NotReady(Vec<String>),
    /// Up with every dependency, only waiting for a model to serve (an inference worker
    /// before the first training): healthy, just idle.
    AwaitingModel(String),
    /// Nothing answers on its port.
    Down(String),
}

#[derive(Debug, Deserialize)]
struct ReadyReport {
    ready: bool,
    checks: std::collections::BTreeMap<String, Check>,
}

#[derive(Debug, Deserialize)]
struct Check {
    ok: bool,
    detail: String,
}

pub async fn probe(client: &reqwest::Client, addr: &str) -> Health {
    let url = format!("http://{addr}/readyz");
    match client.get(&url).timeout(Duration::from_secs(2)).send().await {
        Err(e) => Health::Down(if e.is_connect() { "not running".into() } else { e.to_string() }),
        Ok(resp) => match resp.json::<ReadyReport>().await {
            Ok(r) if r.ready => Health::Ready,
            Ok(r) if r.checks.iter().all(|(name, c)| c.ok || name == "model") => {
                Health::AwaitingModel(r.checks.get("model").map(|c| c.detail.clone()).unwrap_or_default())
            }
            Ok(r) => Health::NotReady(
                r.checks
                    .into_iter()
                    .filter(|(_, c)| !c.ok)
                    .map(|(name, c)| format!("{name}: {}", c.detail))
                    .collect(),
            ),
            Err(e) => Health::Down(format!("bad /readyz answer: {e}")),
        },
    }
}

/// Wait until the service at `addr` is ready (a worker: serving a model). The error
/// says what it still lacked.
pub async fn wait_ready(addr: &str, timeout: Duration) -> anyhow::Result<()> {
    let client = reqwest::Client::new();
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let health = probe(&client, addr).await;
        if health == Health::Ready {
            return Ok(());
        }
        if tokio::time::Instant::now() > deadline {
            anyhow::bail!("{addr} not ready after {timeout:?}: {health:?}");
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// Probe every service and render the table. The flag is true when every service is
/// ready or only waiting for a model.
pub async fn table(services: &[LocalService]) -> (String, bool) {
    let client = reqwest::Client::new();
    let mut out = format!("{:<18} {:<16} {:<10} {}\n", "SERVICE", "ADDRESS", "STATE", "DETAIL");
    let mut all_ready = true;
    for s in services {
        let health = probe(&client, &s.addr()).await;
        let (state, detail) = match &health {
            Health::Ready => ("ready", String::new()),
            Health::AwaitingModel(why) => ("no-model", format!("{why} (train one: aifab train --task NAME)")),
            Health::NotReady(why) => ("not-ready", why.join("; ")),
            Health::Down(why) => ("down", why.clone()),
        };
        all_ready &= matches!(health, Health::Ready | Health::AwaitingModel(_));
        out.push_str(&format!("{:<18} {:<16} {:<10} {}\n", s.name, s.addr(), state, detail));
    }
    (out, all_ready)
}
