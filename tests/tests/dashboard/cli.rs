//! `aifab status` prints the same values as the dashboard, from the same JSON.

use super::*;

/// The CLI's lines for the lag, the service, the tenant's spend (`spent`, as the JSON
/// has it) and both model versions.
pub(crate) fn check_status_cli(addr: &str, s: &Scene, spent: f64) {
    let (group, requests, service, tenant, task) = (
        s.group.as_str(),
        s.requests.as_str(),
        s.service.as_str(),
        s.tenant.as_str(),
        s.task.as_str(),
    );
    let out = std::process::Command::new(bin_path("aifab"))
        .args(["status", "--monitor-url", &format!("http://{addr}")])
        .env("AIFAB_LOG", "warn")
        .output()
        .expect("run aifab status");
    let text = String::from_utf8_lossy(&out.stdout);
    eprintln!("aifab status:\n{text}");
    let line = |cells: &[&str]| {
        text.lines()
            .find(|l| {
                l.split_whitespace()
                    .take(cells.len())
                    .eq(cells.iter().copied())
            })
            .unwrap_or_else(|| panic!("aifab status has no line starting {cells:?}:\n{text}"))
            .split_whitespace()
            .collect::<Vec<_>>()
    };
    let lag = line(&[group, requests]);
    assert_eq!((lag[2], lag[4]), ("30", "2"), "lag and partitions");
    assert_eq!(line(&[service])[1..4], ["3", "3", "lag:"]);
    let spent = format!("{spent:.4}");
    assert_eq!(line(&[tenant])[2..5], [spent.as_str(), "USD", "1.00"]);
    assert_eq!(line(&[task, "v1"])[2..5], ["production", "-", "0.9561"]);
    assert_eq!(
        line(&[task, "v2"])[2..6],
        ["candidate", "canary", "25%", "0.9402"]
    );
    assert!(
        text.lines()
            .any(|l| l.starts_with("throughput (last ") && l.contains(" predictions/s, p50 ")),
        "{text}"
    );
}
