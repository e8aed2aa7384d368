//! Logs (tracing) and metrics (the `metrics` facade exported to Prometheus).
//!
//! Metric names follow `aifab_<service>_<what>_<unit>`; [`metric_name`] builds them so
//! every component names its metrics the same way.

use anyhow::Context;
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use tracing_subscriber::{fmt, prelude::*, EnvFilter};

use crate::config::LogFormat;

/// Install the global tracing subscriber. Safe to call twice (the second is a no-op),
/// which tests that start several services in one process rely on.
pub fn init_logging(format: LogFormat, filter: &str) {
    let filter = EnvFilter::try_new(filter).unwrap_or_else(|_| EnvFilter::new("info"));
    let registry = tracing_subscriber::registry().with(filter);
    let result = match format {
        LogFormat::Text => registry.with(fmt::layer().with_target(true)).try_init(),
        LogFormat::Json => registry.with(fmt::layer().json().flatten_event(true)).try_init(),
    };
    drop(result);
}

/// Text logs on stderr, for command-line tools whose stdout is their output (JSON
/// lines, tables) and must not be mixed with log lines.
pub fn init_cli_logging(filter: &str) {
    let filter = EnvFilter::try_new(filter).unwrap_or_else(|_| EnvFilter::new("info"));
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let layer = fmt::layer().with_target(false).with_ansi(ansi).with_writer(std::io::stderr);
    drop(tracing_subscriber::registry().with(filter).with(layer).try_init());
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

/// `aifab_<service>_<what>`, with the service's dashes made underscores.
pub fn metric_name(service: &str, what: &str) -> String {
    format!("aifab_{}_{}", service.replace('-', "_"), what)
}

#[cfg(test)]
mod tests {
    #[test]
    fn metric_names_follow_the_convention() {
        assert_eq!(
            super::metric_name("inference-worker", "batch_size"),
            "aifab_inference_worker_batch_size"
        );
    }
}
