//! `aifab status`: every service's readiness (its `/readyz`), then what the monitor's
//! dashboard knows (`GET /v1/dashboard`): throughput and latency, consumer lag per group,
//! worker replicas, model versions, spend against budget per tenant, and the latest state
//! changes from the audit log with who made them.

use std::io::{IsTerminal as _, Write as _};
use std::time::Duration;

use aifab_core::dashboard::{Dashboard, SourceStatus};
use aifab_core::messages::AuditEvent;
use serde::Deserialize;

use crate::local::LocalService;

#[derive(Debug, clap::Args)]
pub struct StatusArgs {
    /// The monitor whose dashboard gives lag, throughput, models and spend.
    #[arg(long, env = "AIFAB_MONITOR_URL", default_value_t = crate::local::monitor_url())]
    pub monitor_url: String,
    /// Redraw every N seconds until Ctrl-C (on a terminal in place; otherwise printed
    /// again whenever a service changes state). 0: print once.
    #[arg(long, default_value_t = 0)]
    pub watch_s: u64,
}

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
    match client
        .get(&url)
        .timeout(Duration::from_secs(2))
        .send()
        .await
    {
        Err(e) => Health::Down(if e.is_connect() {
            "not running".into()
        } else {
            e.to_string()
        }),
        Ok(resp) => match resp.json::<ReadyReport>().await {
            Ok(r) if r.ready => Health::Ready,
            Ok(r) if r.checks.iter().all(|(name, c)| c.ok || name == "model") => {
                Health::AwaitingModel(
                    r.checks
                        .get("model")
                        .map(|c| c.detail.clone())
                        .unwrap_or_default(),
                )
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
    let mut out = format!(
        "{:<18} {:<16} {:<10} {}\n",
        "SERVICE", "ADDRESS", "STATE", "DETAIL"
    );
    let mut all_ready = true;
    for s in services {
        let health = probe(&client, &s.addr()).await;
        let (state, detail) = match &health {
            Health::Ready => ("ready", String::new()),
            Health::AwaitingModel(why) => (
                "no-model",
                format!("{why} (train one: aifab train --task NAME)"),
            ),
            Health::NotReady(why) => ("not-ready", why.join("; ")),
            Health::Down(why) => ("down", why.clone()),
        };
        all_ready &= matches!(health, Health::Ready | Health::AwaitingModel(_));
        out.push_str(&format!(
            "{:<18} {:<16} {:<10} {}\n",
            s.name,
            s.addr(),
            state,
            detail
        ));
    }
    (out, all_ready)
}

/// The whole report: the services table, then the dashboard's sections (or why they are
/// missing). The flag is [`table`]'s.
pub async fn report(services: &[LocalService], monitor_url: &str) -> (String, String, bool) {
    let (services_table, ready) = table(services).await;
    let dashboard = match fetch_dashboard(monitor_url).await {
        Ok(d) => render_dashboard(&d),
        Err(e) => format!(
            "\nno dashboard from the monitor ({e}): lag, throughput, models and spend unknown\n"
        ),
    };
    (services_table, dashboard, ready)
}

pub async fn fetch_dashboard(monitor_url: &str) -> anyhow::Result<Dashboard> {
    let url = format!("{}/v1/dashboard", monitor_url.trim_end_matches('/'));
    let resp =
        aifab_core::access::http_client(aifab_core::access::Role::Read, Duration::from_secs(3))?
            .get(&url)
            .timeout(Duration::from_secs(3))
            .send()
            .await?
            .error_for_status()?;
    Ok(resp.json().await?)
}

/// `aifab status`: print once (exit status 1 unless every service is ready) or, with
/// `--watch-s`, keep the report live until Ctrl-C.
pub async fn run(services: &[LocalService], args: StatusArgs) -> anyhow::Result<bool> {
    if args.watch_s == 0 {
        let (t, d, ready) = report(services, &args.monitor_url).await;
        print!("{t}{d}");
        return Ok(ready);
    }
    let shutdown = aifab_core::shutdown::on_signal();
    live(
        services,
        &args.monitor_url,
        Duration::from_secs(args.watch_s),
        &shutdown,
    )
    .await;
    Ok(true)
}

/// Keep the report on screen until `stop`: redrawn in place on a terminal; otherwise (a
/// log file) printed whenever the services table changes, so the log is not flooded.
pub async fn live(
    services: &[LocalService],
    monitor_url: &str,
    every: Duration,
    stop: &tokio_util::sync::CancellationToken,
) {
    let tty = std::io::stdout().is_terminal();
    let mut last_services = String::new();
    while !stop.is_cancelled() {
        let (t, d, _) = report(services, monitor_url).await;
        if tty {
            let at = aifab_core::period::clock_of(aifab_core::now_ms()) + " UTC";
            print!(
                "\x1b[H\x1b[2J{t}{d}\n{at}, every {}s; Ctrl-C to stop\n",
                every.as_secs()
            );
        } else if t != last_services {
            print!("{t}{d}");
        }
        let _ = std::io::stdout().flush();
        last_services = t;
        tokio::select! {
            _ = tokio::time::sleep(every) => {}
            _ = stop.cancelled() => {}
        }
    }
}

/// Column-aligned rows under a header; the last column is left unpadded.
fn columns(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for r in rows {
        for (w, cell) in widths.iter_mut().zip(r) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line = |cells: Vec<&str>| {
        let n = cells.len();
        let mut l = String::new();
        for (i, (c, w)) in cells.into_iter().zip(&widths).enumerate() {
            if i + 1 == n {
                l.push_str(c);
            } else {
                l.push_str(&format!("{c:<w$}  "));
            }
        }
        l.trim_end().to_string() + "\n"
    };
    let mut out = line(header.to_vec());
    for r in rows {
        out.push_str(&line(r.iter().map(String::as_str).collect()));
    }
    out
}

fn opt(v: Option<f64>, digits: usize) -> String {
    v.map(|v| format!("{v:.digits$}"))
        .unwrap_or_else(|| "-".into())
}

/// The dashboard as text: throughput, lag per group, replicas, models, spend, alerts.
pub fn render_dashboard(d: &Dashboard) -> String {
    let mut out = String::new();
    let t = &d.throughput;
    out.push_str(&format!(
        "\nthroughput (last {:.0} s): {:.1} predictions/s, p50 {} ms, p99 {} ms, errors {:.1}%, dead letters {:.1}/s\n",
        d.window_s,
        t.per_second,
        opt(d.latency_ms.p50, 0),
        opt(d.latency_ms.p99, 0),
        t.error_rate * 100.0,
        t.dead_letters_per_s
    ));

    out.push('\n');
    if d.lag.is_empty() {
        out.push_str("consumer lag: no readings yet\n");
    } else {
        let rows: Vec<Vec<String>> = d
            .lag
            .iter()
            .map(|l| {
                vec![
                    l.group.clone(),
                    l.topic.clone(),
                    l.total_lag.to_string(),
                    format!("{:+.1}", l.lag_rate_per_s),
                    l.partitions.to_string(),
                ]
            })
            .collect();
        out.push_str(&columns(
            &["GROUP", "TOPIC", "LAG", "LAG/S", "PARTITIONS"],
            &rows,
        ));
    }

    let scaled: Vec<Vec<String>> = d
        .services
        .iter()
        .map(|s| {
            vec![
                s.service.clone(),
                s.replicas
                    .map(|r| r.to_string())
                    .unwrap_or_else(|| "-".into()),
                s.desired_replicas
                    .map(|r| r.to_string())
                    .unwrap_or_else(|| "-".into()),
                match (&s.reason, &s.detail) {
                    (Some(r), Some(detail)) if !detail.is_empty() => format!("{r}: {detail}"),
                    (Some(r), _) => r.clone(),
                    _ => "-".into(),
                },
            ]
        })
        .collect();
    if !scaled.is_empty() {
        out.push('\n');
        out.push_str(&columns(
            &["SCALED SERVICE", "REPLICAS", "DESIRED", "LAST DECISION"],
            &scaled,
        ));
    }

    out.push('\n');
    if d.models.is_empty() {
        out.push_str("models: none registered (train one: aifab train --task NAME)\n");
    } else {
        let rows: Vec<Vec<String>> = d
            .models
            .iter()
            .map(|m| {
                vec![
                    m.task.clone(),
                    m.version.clone(),
                    if m.aliases.is_empty() {
                        "-".into()
                    } else {
                        m.aliases.join(",")
                    },
                    m.rollout.clone().unwrap_or_else(|| "-".into()),
                    opt(m.accuracy, 4),
                    m.live
                        .as_ref()
                        .map(|l| format!("{:.1}", l.per_second))
                        .unwrap_or_else(|| "-".into()),
                ]
            })
            .collect();
        out.push_str(&columns(
            &[
                "TASK",
                "VERSION",
                "ALIASES",
                "ROLLOUT",
                "ACCURACY",
                "PREDICTIONS/S",
            ],
            &rows,
        ));
    }

    out.push('\n');
    if d.tenants.is_empty() {
        out.push_str("spend: nothing charged yet\n");
    } else {
        let rows: Vec<Vec<String>> = d
            .tenants
            .iter()
            .map(|t| {
                vec![
                    t.tenant.clone(),
                    t.period.clone(),
                    format!("{:.4} {}", t.spent, t.currency),
                    opt(t.budget, 2),
                    t.used_ratio
                        .map(|u| format!("{:.0}%", u * 100.0))
                        .unwrap_or_else(|| "-".into()),
                    format!("{:.4}", t.burn_rate_per_hour),
                    t.state.clone(),
                ]
            })
            .collect();
        out.push_str(&columns(
            &[
                "TENANT", "PERIOD", "SPENT", "BUDGET", "USED", "BURN/H", "STATE",
            ],
            &rows,
        ));
    }

    out.push_str(&render_changes(
        &d.changes,
        d.sources.audit.as_ref(),
        d.at_ms,
    ));

    for a in &d.alerts_firing {
        out.push_str(&format!("\nALERT {}: {}\n", a.rule, a.message));
    }
    for (name, s) in [
        ("costs", &d.sources.costs),
        ("registry", &d.sources.registry),
    ] {
        if !s.ok {
            out.push_str(&format!(
                "\n{name} unavailable ({}): {}\n",
                s.from,
                s.error.as_deref().unwrap_or("not fetched yet")
            ));
        }
    }
    out
}

/// Changes shown by `aifab status`, newest first.
const CHANGES_SHOWN: usize = 10;

/// The audit log's latest changes, newest first: how long ago, what, on what, by whom.
fn render_changes(changes: &[AuditEvent], audit: Option<&SourceStatus>, now_ms: i64) -> String {
    let unreadable = audit.filter(|s| !s.ok).map(|s| {
        format!(
            "the monitor cannot read the audit log ({}): {}",
            s.from,
            s.error.as_deref().unwrap_or("not read yet")
        )
    });
    if changes.is_empty() {
        return match unreadable {
            Some(why) => format!("\nrecent changes: unknown, {why}\n"),
            None => "\nrecent changes: none recorded on the audit log\n".into(),
        };
    }
    let rows: Vec<Vec<String>> = changes
        .iter()
        .rev()
        .take(CHANGES_SHOWN)
        .map(|c| {
            let subject = [&c.tenant, &c.task, &c.version]
                .into_iter()
                .flatten()
                .cloned()
                .collect::<Vec<_>>()
                .join(" ");
            vec![
                ago(now_ms - c.at_ms),
                c.action.as_str().to_string(),
                if subject.is_empty() {
                    "-".into()
                } else {
                    subject
                },
                format!("{} via {}", c.actor.describe(), c.service),
                c.detail.clone(),
            ]
        })
        .collect();
    let mut out = String::from("\n");
    out.push_str(&columns(
        &["CHANGED", "ACTION", "ON", "BY", "DETAIL"],
        &rows,
    ));
    if let Some(why) = unreadable {
        out.push_str(&format!("(there may be later changes: {why})\n"));
    }
    out
}

/// `12s ago`, `5m ago`, `3h ago`, `2d ago`.
fn ago(ms: i64) -> String {
    let s = (ms / 1000).max(0);
    match s {
        0..=59 => format!("{s}s ago"),
        60..=3599 => format!("{}m ago", s / 60),
        3600..=86_399 => format!("{}h ago", s / 3600),
        _ => format!("{}d ago", s / 86_400),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn columns_align_to_the_widest_cell_and_leave_the_last_unpadded() {
        let rows = vec![
            vec!["a-long-group".to_string(), "7".into(), "x".into()],
            vec!["g".into(), "12345".into(), "".into()],
        ];
        let t = columns(&["GROUP", "LAG", "NOTE"], &rows);
        assert_eq!(
            t,
            "GROUP         LAG    NOTE\na-long-group  7      x\ng             12345\n"
        );
    }

    #[test]
    fn changes_print_newest_first_with_who_made_them() {
        use aifab_core::messages::{tag, Actor, AuditAction, Credential};
        let change = |action, at_ms, credential, detail: &str| AuditEvent {
            schema: tag(),
            action,
            service: "cost-accountant".into(),
            actor: Actor {
                credential,
                address: Some("10.0.0.7:4000".into()),
                name: None,
            },
            tenant: Some("acme".into()),
            task: None,
            version: None,
            detail: detail.into(),
            at_ms,
        };
        let now = 10_000_000;
        let changes = vec![
            change(
                AuditAction::BudgetSet,
                now - 7_200_000,
                Credential::Loopback,
                "old",
            ),
            change(
                AuditAction::BudgetSet,
                now - 42_000,
                Credential::AdminToken,
                "new",
            ),
        ];
        let out = render_changes(&changes, None, now);
        let lines: Vec<&str> = out.trim().lines().collect();
        assert_eq!(lines.len(), 3, "{out}");
        assert!(lines[0].starts_with("CHANGED"), "{out}");
        assert!(
            lines[1].starts_with("42s ago") && lines[1].ends_with("new"),
            "{out}"
        );
        assert!(
            lines[1].contains("admin_token from 10.0.0.7:4000 via cost-accountant"),
            "{out}"
        );
        assert!(
            lines[2].starts_with("2h ago") && lines[2].contains("loopback"),
            "{out}"
        );
        assert!(render_changes(&[], None, now).contains("none recorded"));
        let unreadable = SourceStatus {
            ok: false,
            error: Some("cannot read the audit log: topic not found".into()),
            fetched_at_ms: None,
            from: "kafka topic aifab.audit".into(),
        };
        let out = render_changes(&[], Some(&unreadable), now);
        assert!(!out.contains("none recorded"), "{out}");
        assert!(
            out.contains("unknown") && out.contains("topic not found"),
            "{out}"
        );
        let out = render_changes(&changes, Some(&unreadable), now);
        assert!(out.contains("there may be later changes"), "{out}");
        let readable = SourceStatus {
            ok: true,
            error: None,
            ..unreadable
        };
        assert!(render_changes(&[], Some(&readable), now).contains("none recorded"));
    }

    #[test]
    fn missing_values_print_as_a_dash() {
        assert_eq!(opt(None, 2), "-");
        assert_eq!(opt(Some(0.98765), 4), "0.9877");
    }
}
