//! Grafana: the provisioning files parse and point at a compose service, and the
//! overview dashboard queries only metrics the services export.

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

/// Every metric name the services export, from the catalogues in code: each service's
/// `metric_names::ALL`, and for every service the skeleton's and the Kafka engine's (a
/// `{...}` in a name stands for any name part, e.g. the cost accountant's currency).
fn exported_metric_patterns() -> Vec<String> {
    use aifab_core::pipeline::metric_names as engine;
    use aifab_core::telemetry::{metric_name, SERVICE_METRICS};
    let own: [&[&str]; 7] = [
        aifab_ingest::metric_names::ALL,
        aifab_feature::metric_names::ALL,
        aifab_inference_worker::metric_names::ALL,
        aifab_trainer::metric_names::ALL,
        aifab_monitor::metric_names::ALL,
        aifab_cost_accountant::metric_names::ALL,
        aifab_autoscaler::metric_names::ALL,
    ];
    let services = [
        aifab_ingest::SPEC.name,
        aifab_feature::SPEC.name,
        aifab_inference_worker::SPEC.name,
        aifab_trainer::SPEC.name,
        aifab_monitor::SPEC.name,
        aifab_cost_accountant::SPEC.name,
        aifab_autoscaler::SPEC.name,
    ];
    let mut out: Vec<String> = own
        .iter()
        .flat_map(|names| names.iter().map(|n| n.to_string()))
        .collect();
    for service in services {
        for suffix in SERVICE_METRICS.iter().chain(engine::ALL) {
            out.push(metric_name(service, suffix));
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
    let patterns = exported_metric_patterns();
    assert!(
        patterns
            .iter()
            .any(|p| p == "aifab_monitor_consumer_lag_records"),
        "the catalogues list the metrics: {patterns:?}"
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
