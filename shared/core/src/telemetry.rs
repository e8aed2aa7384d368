//! Logs (tracing) and metrics (the `metrics` facade exported to Prometheus).
//!
//! Metric names follow `aifab_<service>_<what>_<unit>`; [`metric_name`] builds them so
//! every component names its metrics the same way.

use std::ffi::OsStr;
use std::io::IsTerminal;

use anyhow::Context;
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use tracing_subscriber::{fmt, prelude::*, EnvFilter};

use crate::config::LogFormat;

/// Install the global tracing subscriber. Safe to call twice (the second is a no-op),
/// which tests that start several services in one process rely on.
///
/// Text logs are coloured only when stdout is a terminal: a service run by a
/// supervisor writes to a log file (`~/.aifab/logs`, `docker logs`), which must carry no
/// ANSI escape codes.
pub fn init_logging(format: LogFormat, filter: &str) {
    let filter = EnvFilter::try_new(filter).unwrap_or_else(|_| EnvFilter::new("info"));
    let registry = tracing_subscriber::registry().with(filter);
    let result = match format {
        LogFormat::Text => {
            let ansi = use_ansi(
                std::io::stdout().is_terminal(),
                std::env::var_os("NO_COLOR").as_deref(),
            );
            registry
                .with(fmt::layer().with_target(true).with_ansi(ansi))
                .try_init()
        }
        LogFormat::Json => registry
            .with(fmt::layer().json().flatten_event(true))
            .try_init(),
    };
    drop(result);
}

/// Colour log lines only on a terminal, and not when `NO_COLOR` is set to anything but
/// the empty string (<https://no-color.org>).
pub fn use_ansi(is_terminal: bool, no_color: Option<&OsStr>) -> bool {
    is_terminal && no_color.is_none_or(|v| v.is_empty())
}

/// The command-line tools' log filter when neither `AIFAB_LOG` nor `RUST_LOG` is set:
/// warnings from aifab's own crates (every target starting with `aifab`) and errors
/// from libraries, so a person's terminal shows results, not the NATS client's
/// `connected` lines.
pub const CLI_LOG_FILTER: &str = "error,aifab=warn";

/// The log filter for a command-line tool: `aifab_log` (`AIFAB_LOG`) if set and not
/// empty, else `rust_log` (`RUST_LOG`), else `default`.
pub fn cli_log_filter(aifab_log: Option<&str>, rust_log: Option<&str>, default: &str) -> String {
    [aifab_log, rust_log]
        .into_iter()
        .flatten()
        .map(str::trim)
        .find(|f| !f.is_empty())
        .unwrap_or(default)
        .to_string()
}

/// Text logs on stderr, for command-line tools whose stdout is their output (JSON
/// lines, tables) and must not be mixed with log lines. An invalid `filter` falls back
/// to [`CLI_LOG_FILTER`].
pub fn init_cli_logging(filter: &str) {
    let filter = EnvFilter::try_new(filter).unwrap_or_else(|_| EnvFilter::new(CLI_LOG_FILTER));
    let ansi = use_ansi(
        std::io::stderr().is_terminal(),
        std::env::var_os("NO_COLOR").as_deref(),
    );
    let layer = fmt::layer()
        .with_target(false)
        .with_ansi(ansi)
        .with_writer(std::io::stderr);
    drop(
        tracing_subscriber::registry()
            .with(filter)
            .with(layer)
            .try_init(),
    );
}

/// Install the Prometheus recorder and return the handle that renders `/metrics`.
///
/// Only one recorder can exist per process; a second call returns a handle to a fresh
/// recorder that is not installed (its metrics stay empty), which keeps in-process tests
/// from failing.
pub fn init_metrics() -> anyhow::Result<PrometheusHandle> {
    static HANDLE: std::sync::OnceLock<PrometheusHandle> = std::sync::OnceLock::new();
    if let Some(h) = HANDLE.get() {
        return Ok(h.clone());
    }
    let recorder = PrometheusBuilder::new()
        .set_buckets(&[
            0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
        ])
        .context("setting histogram buckets")?
        .build_recorder();
    let handle = recorder.handle();
    if metrics::set_global_recorder(recorder).is_ok() {
        let _ = HANDLE.set(handle.clone());
        // Upkeep drains histograms periodically so memory stays bounded.
        let upkeep = handle.clone();
        std::thread::Builder::new()
            .name("metrics-upkeep".into())
            .spawn(move || loop {
                std::thread::sleep(std::time::Duration::from_secs(5));
                upkeep.run_upkeep();
            })
            .context("spawning metrics upkeep thread")?;
    }
    Ok(handle)
}

/// What every service exports through its skeleton ([`crate::service`], [`crate::health`]),
/// as suffixes of [`metric_name`]: 1 while the process runs.
pub const UP: &str = "up";
/// Each readiness check (`check` label: `kafka`, `loop:<name>`, ...), 1 when it passes.
pub const CHECK_UP: &str = "check_up";
/// Loops the service needs that stopped (`loop` label).
pub const LOOP_FAILURES: &str = "loop_failures_total";
/// API requests the HTTP limits stopped (`reason`: `overloaded`, `timeout`).
pub const HTTP_LIMITED: &str = "http_limited_total";
/// Every suffix above.
pub const SERVICE_METRICS: &[&str] = &[UP, CHECK_UP, LOOP_FAILURES, HTTP_LIMITED];

/// `aifab_<service>_<what>`, with the service's dashes made underscores.
pub fn metric_name(service: &str, what: &str) -> String {
    format!("aifab_{}_{}", service.replace('-', "_"), what)
}

/// What is wrong with a service's catalogue of metric names (its `metric_names::ALL`):
/// names listed twice, names without the service's `aifab_<service>_` prefix, names
/// Prometheus refuses (`[a-zA-Z_:][a-zA-Z0-9_:]*`). Empty when all is well; each crate's
/// catalogue test asserts that.
pub fn catalogue_problems(service: &str, names: &[&str]) -> Vec<String> {
    let prefix = metric_name(service, "");
    let mut seen = std::collections::BTreeSet::new();
    let mut problems = Vec::new();
    for name in names {
        if !seen.insert(*name) {
            problems.push(format!("{name}: listed twice"));
        }
        if !name.starts_with(&prefix) {
            problems.push(format!("{name}: does not start with {prefix}"));
        }
        let mut chars = name.chars();
        let valid = chars
            .next()
            .is_some_and(|c| c.is_ascii_alphabetic() || c == '_' || c == ':')
            && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':');
        if !valid {
            problems.push(format!("{name}: not a valid Prometheus name"));
        }
    }
    problems
}

#[cfg(test)]
mod tests {
    use std::ffi::OsStr;

    use super::{catalogue_problems, cli_log_filter, use_ansi, CLI_LOG_FILTER};

    #[test]
    fn a_catalogue_check_names_every_problem() {
        assert!(
            catalogue_problems("cost-accountant", &["aifab_cost_accountant_x_total"]).is_empty()
        );
        let p = catalogue_problems(
            "ingest",
            &[
                "aifab_ingest_a",
                "aifab_ingest_a",
                "aifab_feature_b",
                "aifab_ingest_c-d",
            ],
        );
        assert_eq!(p.len(), 3, "{p:?}");
        assert!(p[0].contains("twice") && p[1].contains("start with aifab_ingest_"));
        assert!(p[2].contains("not a valid Prometheus name"));
    }

    #[test]
    fn colour_only_on_a_terminal_without_no_color() {
        assert!(use_ansi(true, None));
        assert!(use_ansi(true, Some(OsStr::new(""))));
        assert!(!use_ansi(true, Some(OsStr::new("1"))));
        // A log file (the local supervisor's, docker's) never gets escape codes.
        assert!(!use_ansi(false, None));
        assert!(!use_ansi(false, Some(OsStr::new(""))));
    }

    #[test]
    fn the_cli_filter_is_quiet_unless_asked() {
        assert_eq!(
            cli_log_filter(None, None, CLI_LOG_FILTER),
            "error,aifab=warn"
        );
        assert_eq!(
            cli_log_filter(Some("debug"), Some("trace"), CLI_LOG_FILTER),
            "debug"
        );
        assert_eq!(cli_log_filter(None, Some("info"), CLI_LOG_FILTER), "info");
        assert_eq!(
            cli_log_filter(Some(" "), Some("info"), CLI_LOG_FILTER),
            "info"
        );
        assert_eq!(cli_log_filter(Some(""), None, "warn"), "warn");
    }

    /// The default filter lets aifab's own warnings through (every `aifab*` crate) and
    /// holds back libraries' info and warnings (async_nats' `event: connected`).
    #[test]
    fn the_cli_default_keeps_library_info_out() {
        use tracing::level_filters::LevelFilter;
        use tracing_subscriber::layer::SubscriberExt;

        let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
        struct Record(std::sync::Arc<std::sync::Mutex<Vec<String>>>);
        impl<S: tracing::Subscriber> tracing_subscriber::Layer<S> for Record {
            fn on_event(
                &self,
                e: &tracing::Event<'_>,
                _: tracing_subscriber::layer::Context<'_, S>,
            ) {
                let m = e.metadata();
                self.0
                    .lock()
                    .unwrap()
                    .push(format!("{} {}", m.target(), m.level()));
            }
        }
        let filter = tracing_subscriber::EnvFilter::new(CLI_LOG_FILTER);
        assert_eq!(filter.max_level_hint(), Some(LevelFilter::WARN));
        let subscriber = tracing_subscriber::registry()
            .with(filter)
            .with(Record(seen.clone()));
        tracing::subscriber::with_default(subscriber, || {
            tracing::info!(target: "async_nats", "event: connected");
            tracing::warn!(target: "async_nats", "event: disconnected");
            tracing::error!(target: "rdkafka::client", "broker down");
            tracing::info!(target: "aifab::demo", "progress");
            tracing::warn!(target: "aifab::supervisor", "service exited");
            tracing::warn!(target: "aifab_core::kafka", "retrying");
        });
        assert_eq!(
            *seen.lock().unwrap(),
            [
                "rdkafka::client ERROR",
                "aifab::supervisor WARN",
                "aifab_core::kafka WARN"
            ]
        );
    }

    #[test]
    fn metric_names_follow_the_convention() {
        assert_eq!(
            super::metric_name("inference-worker", "batch_size"),
            "aifab_inference_worker_batch_size"
        );
    }
}
