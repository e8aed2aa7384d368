//! Grafana: the provisioning files parse and point at a compose service, and the
//! overview dashboard queries only metrics the services export.

use std::path::{Path, PathBuf};

use crate::addresses::host_port;
use crate::model::{parse_yaml, Compose, Datasources};
use crate::{assert_clean, read, root, stack};

#[test]
fn grafana_provisioning_and_dashboards_parse() {
    let dir = root().join("deploy/grafana");
    let ds = read(
        &dir.join("provisioning/datasources/prometheus.yml")
            .to_string_lossy(),
    );
    let ds: Datasources = parse_yaml(&ds, "grafana datasource provisioning");
    let url = ds
        .datasources
        .first()
        .and_then(|d| d.url.clone())
        .unwrap_or_default();
    let compose: Compose = stack().compose;
    let host = host_port(&url).map(|(h, _)| h).unwrap_or_default();
    assert!(
        compose.service(&host).is_some(),
        "Grafana's Prometheus datasource url `{url}` names `{host}`, not a compose service"
    );
    for e in std::fs::read_dir(dir.join("dashboards"))
        .expect("deploy/grafana/dashboards")
        .flatten()
    {
        if e.path().extension().is_some_and(|x| x == "json") {
            let text = read(&e.path().to_string_lossy());
            let v: serde_json::Value = serde_json::from_str(&text)
                .unwrap_or_else(|err| panic!("{} is not valid JSON: {err}", e.path().display()));
            assert!(
                v.get("panels").is_some() && v.get("uid").is_some(),
                "{}: not a dashboard",
                e.path().display()
            );
        }
    }
}

/// Metric names in the sources: every string literal starting `aifab_` (a `{...}` in a
/// `format!` literal stands for any name part), plus `aifab_<service>_<what>` for the
/// `metric_name(spec.name, "what")` helper of `aifab-core`.
fn exported_metric_patterns(root: &Path) -> Vec<String> {
    fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
        for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
            let p = e.path();
            if p.is_dir() {
                walk(&p, out);
            } else if p.extension().is_some_and(|x| x == "rs") {
                out.push(p);
            }
        }
    }
    let mut files = Vec::new();
    walk(&root.join("services"), &mut files);
    walk(&root.join("shared"), &mut files);
    let mut out = Vec::new();
    let mut helper_whats = Vec::new();
    for f in files {
        let text = std::fs::read_to_string(&f).unwrap_or_default();
        for (i, _) in text.match_indices("\"aifab_") {
            let lit = &text[i + 1..];
            if let Some(end) = lit.find('"') {
                // `"aifab_{}_{}"` is the helper itself, not a metric.
                if !lit[..end].contains("{}") {
                    out.push(lit[..end].to_string());
                }
            }
        }
        for (i, _) in text.match_indices("metric_name(") {
            let rest = &text[i..text.len().min(i + 120)];
            if let Some(q) = rest.find(", \"") {
                if let Some(end) = rest[q + 3..].find('"') {
                    helper_whats.push(rest[q + 3..q + 3 + end].to_string());
                }
            }
        }
    }
    let services: Vec<String> = std::fs::read_dir(root.join("services"))
        .expect("services/")
        .flatten()
        .map(|e| e.file_name().to_string_lossy().replace('-', "_"))
        .collect();
    for s in &services {
        for w in &helper_whats {
            out.push(format!("aifab_{s}_{w}"));
        }
    }
    out
}

/// Whether `name` matches `pattern`, where `{...}` matches one or more `[a-z0-9_]`.
fn metric_matches(pattern: &str, name: &str) -> bool {
    match pattern.find('{') {
        None => pattern == name,
        Some(open) => {
            let Some(close) = pattern[open..].find('}').map(|c| open + c) else {
                return pattern == name;
            };
            let (head, tail) = (&pattern[..open], &pattern[close + 1..]);
            let Some(rest) = name.strip_prefix(head) else {
                return false;
            };
            (1..=rest.len()).any(|n| {
                rest[..n]
                    .chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
                    && metric_matches(tail, &rest[n..])
            })
        }
    }
}

/// `aifab_...` metric names a PromQL expression uses (a name followed by a regex is not one).
fn promql_metric_names(expr: &str) -> Vec<String> {
    let mut out = Vec::new();
    for (i, _) in expr.match_indices("aifab_") {
        if i > 0
            && expr[..i]
                .chars()
                .last()
                .is_some_and(|c| c.is_ascii_alphanumeric() || c == '_')
        {
            continue;
        }
        let name: String = expr[i..]
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect();
        let next = expr[i + name.len()..].chars().next();
        if name.ends_with('_') || matches!(next, Some('.') | Some('*') | Some('+')) {
            continue; // a regex like aifab_.+_total
        }
        out.push(name);
    }
    out
}

#[test]
fn grafana_dashboard_queries_metrics_the_services_export() {
    let patterns = exported_metric_patterns(&root());
    assert!(
        patterns
            .iter()
            .any(|p| p == "aifab_monitor_consumer_lag_records"),
        "the source scan finds metrics: {patterns:?}"
    );
    assert!(metric_matches(
        "aifab_cost_accountant_budget_{currency}",
        "aifab_cost_accountant_budget_usd"
    ));
    assert!(!metric_matches(
        "aifab_cost_accountant_budget_{currency}",
        "aifab_cost_accountant_budget_"
    ));
    let text = read(
        &root()
            .join("deploy/grafana/dashboards/aifab-overview.json")
            .to_string_lossy(),
    );
    let dash: serde_json::Value = serde_json::from_str(&text).expect("dashboard JSON");
    let mut problems = Vec::new();
    let mut titles = Vec::new();
    for p in dash["panels"].as_array().expect("panels") {
        titles.push(p["title"].as_str().unwrap_or_default().to_lowercase());
        for t in p["targets"].as_array().into_iter().flatten() {
            let expr = t["expr"].as_str().unwrap_or_default();
            for name in promql_metric_names(expr) {
                let base = ["_bucket", "_sum", "_count"]
                    .iter()
                    .find_map(|s| name.strip_suffix(s))
                    .unwrap_or(&name);
                if !patterns
                    .iter()
                    .any(|p| metric_matches(p, &name) || metric_matches(p, base))
                {
                    problems.push(format!(
                        "panel {:?}: `{name}` is not exported by any service (expr `{expr}`)",
                        p["title"]
                    ));
                }
            }
        }
    }
    // The same things the monitor's own page shows.
    for want in [
        "throughput",
        "latency",
        "lag",
        "replicas",
        "scale decisions",
        "spend vs budget",
        "model versions",
    ] {
        if !titles.iter().any(|t| t.contains(want)) {
            problems.push(format!("no panel about {want:?} (titles: {titles:?})"));
        }
    }
    assert_clean("grafana dashboard", problems);
}
