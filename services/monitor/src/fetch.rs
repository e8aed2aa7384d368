//! The dashboard's fetched sources: the cost accountant's `GET /v1/costs` and the model
//! registry (Redis), every `--dashboard-refresh-ms`, with the registry's model metrics and
//! aliases on `/metrics`.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::dashboard;
use crate::metric_names;
use crate::state::SharedState;

/// Where the dashboard says the cost report comes from: its URL, or why it is off.
pub(crate) fn costs_from(config: &Config) -> String {
    if config.costs_url.trim().is_empty() {
        "off (--costs-url is empty)".to_string()
    } else {
        costs_endpoint(&config.costs_url)
    }
}

/// `<base>/v1/costs`.
fn costs_endpoint(base: &str) -> String {
    format!("{}/v1/costs", base.trim().trim_end_matches('/'))
}

async fn fetch_costs(
    http: &reqwest::Client,
    url: &str,
) -> Result<dashboard::CostsSnapshot, String> {
    let resp = http
        .get(url)
        .send()
        .await
        .map_err(|e| format!("GET {url}: {e}"))?;
    let status = resp.status();
    if !status.is_success() {
        let body = resp.text().await.unwrap_or_default();
        return Err(format!(
            "GET {url}: {status}: {}",
            body.chars().take(200).collect::<String>()
        ));
    }
    resp.json::<dashboard::CostsSnapshot>()
        .await
        .map_err(|e| format!("GET {url}: not a cost report: {e}"))
}

async fn fetch_registry(
    conn: redis::aio::ConnectionManager,
) -> Result<Vec<dashboard::TaskModels>, String> {
    use aifab_core::registry::{Registry, CANDIDATE, PRODUCTION};
    let mut reg = Registry::new(conn);
    let mut out = Vec::new();
    for task in reg
        .tasks()
        .await
        .map_err(|e| format!("registry tasks: {e}"))?
    {
        let records = reg
            .list(&task)
            .await
            .map_err(|e| format!("registry {task}: {e}"))?;
        let mut aliases = BTreeMap::new();
        for alias in [PRODUCTION, CANDIDATE] {
            if let Some(v) = reg
                .alias(&task, alias)
                .await
                .map_err(|e| format!("registry {task} {alias}: {e}"))?
            {
                aliases.insert(alias.to_string(), v);
            }
        }
        let rollout = reg
            .rollout(&task)
            .await
            .map_err(|e| format!("registry {task} rollout: {e}"))?;
        out.push(dashboard::TaskModels {
            task,
            records,
            aliases,
            rollout,
        });
    }
    Ok(out)
}

/// One `aifab_monitor_model_alias_info` series: `alias` of `task` names `version`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct AliasSeries {
    task: String,
    alias: String,
    version: String,
}

impl AliasSeries {
    fn set(&self, value: f64) {
        metrics::gauge!(metric_names::MODEL_ALIAS_INFO,
            "task" => self.task.clone(), "alias" => self.alias.clone(),
            "version" => self.version.clone())
        .set(value);
    }
}

/// Model metrics and aliases on `/metrics`, for Grafana: the versions the dashboard shows.
/// Alias series that moved away are set to 0 (the exporter cannot delete a series).
fn export_model_metrics(
    tasks: &[dashboard::TaskModels],
    limits: dashboard::Limits,
    exported: &mut BTreeSet<AliasSeries>,
) {
    let mut now_set = BTreeSet::new();
    for tm in tasks {
        let aliased: BTreeSet<&String> = tm.aliases.values().collect();
        let n = tm.records.len();
        for (i, r) in tm.records.iter().enumerate() {
            if i + limits.versions_per_task < n && !aliased.contains(&r.version) {
                continue;
            }
            for (name, v) in &r.metrics {
                metrics::gauge!(metric_names::MODEL_METRIC_RATIO,
                    "task" => r.task.clone(), "version" => r.version.clone(),
                    "metric" => name.clone())
                .set(*v);
            }
        }
        for (alias, version) in &tm.aliases {
            now_set.insert(AliasSeries {
                task: tm.task.clone(),
                alias: alias.clone(),
                version: version.clone(),
            });
        }
    }
    for gone in exported.difference(&now_set) {
        gone.set(0.0);
    }
    for series in &now_set {
        series.set(1.0);
    }
    *exported = now_set;
}

/// Every `--dashboard-refresh-ms`: the cost report and the model registry.
pub(crate) async fn refresh_sources(
    config: Config,
    redis: aifab_core::redis_store::RedisHandle,
    shared: SharedState,
    shutdown: CancellationToken,
) {
    let costs_url =
        (!config.costs_url.trim().is_empty()).then(|| costs_endpoint(&config.costs_url));
    // The cost-accountant's read route: the deployment's read (or admin) token, if any.
    let http = match aifab_core::access::http_client(
        aifab_core::access::Role::Read,
        Duration::from_secs(3),
    ) {
        Ok(c) => c,
        Err(e) => {
            tracing::error!(error = %format!("{e:#}"), "the read token could not be read; costs fetched without it");
            reqwest::Client::builder()
                .timeout(Duration::from_secs(3))
                .build()
                .expect("an HTTP client with a timeout builds")
        }
    };
    let limits = config.dashboard_limits();
    let mut exported = BTreeSet::new();
    let mut tick =
        tokio::time::interval(Duration::from_millis(config.dashboard_refresh_ms.max(100)));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        if let Some(url) = &costs_url {
            let result = fetch_costs(&http, url).await;
            if let Err(e) = &result {
                tracing::debug!(error = %e, "cost report fetch failed");
            }
            shared
                .lock()
                .expect("stats lock")
                .dash
                .costs
                .update(result, aifab_core::now_ms());
        }
        let result = match redis.try_get() {
            None => Err("redis is not connected yet".to_string()),
            Some(conn) => fetch_registry(conn).await,
        };
        match &result {
            Ok(tasks) => export_model_metrics(tasks, limits, &mut exported),
            Err(e) => tracing::debug!(error = %e, "registry read failed"),
        }
        shared
            .lock()
            .expect("stats lock")
            .dash
            .registry
            .update(result, aifab_core::now_ms());
    }
}
