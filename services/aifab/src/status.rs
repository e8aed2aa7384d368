//! `aifab status`: every service's readiness, read from its `/readyz`.

use std::time::Duration;

use serde::Deserialize;

use crate::local::LocalService;

#[derive(Debug, Clone, PartialEq)]
pub enum Health {
    Ready,
    /// Up but not ready; the failing checks and why.
    NotReady(Vec<String>),
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

/// Probe every service and render the table.
pub async fn table(services: &[LocalService]) -> (String, bool) {
    let client = reqwest::Client::new();
    let mut out = format!("{:<18} {:<16} {:<10} {}\n", "SERVICE", "ADDRESS", "STATE", "DETAIL");
    let mut all_ready = true;
    for s in services {
        let health = probe(&client, &s.addr()).await;
        let (state, detail) = match &health {
            Health::Ready => ("ready", String::new()),
            Health::NotReady(why) => ("not-ready", why.join("; ")),
            Health::Down(why) => ("down", why.clone()),
        };
        all_ready &= health == Health::Ready;
        out.push_str(&format!("{:<18} {:<16} {:<10} {}\n", s.name, s.addr(), state, detail));
    }
    (out, all_ready)
}
