//! aifab monitor: on an interval, reads committed offsets and high watermarks of every
//! watched consumer group and publishes `aifab.lag.<group>` (per partition and total, with
//! the rate of change); consumes `aifab.predictions` (and `aifab.dlq`) for end-to-end
//! latency percentiles and throughput per model and tenant over a rolling window; SLO
//! rules raise and resolve `aifab.alerts.<rule>`. Everything is on `/metrics`, and
//! `GET /v1/stats` serves the current window.
//!
//! It also serves the dashboard: `GET /` (one self-contained page) polls
//! `GET /v1/dashboard`, which adds to the window and lag readings the autoscaler's
//! decisions and replica reports (NATS `aifab.scale.*`, `aifab.replicas.*`), budget
//! reports (`aifab.budget.*`), the cost accountant's `GET /v1/costs` (`--costs-url`),
//! the model registry (Redis) and the latest state changes (the audit topic).
//!
//! Pure parts:
//! - [`dashboard`]: what is collected for the dashboard and its JSON.
//! - [`lag`]: lag readings and rates, watch lists, assignment parsing.
//! - [`window`]: rolling hdrhistogram windows.
//! - [`slo`]: the rules.
//! - [`metric_names`]: every metric the monitor exports.
//!
//! Edges: [`config`] (the command line), `api` (HTTP), `lag_poller` (Kafka offsets),
//! `predictions` (the predictions consumer), `control` (NATS control-plane events),
//! `audit` (the audit topic's recent changes),
//! `fetch` (the cost report and the registry), `evaluation` (reports and SLO alerts).

mod api;
mod audit;
pub mod config;
mod control;
pub mod dashboard;
mod evaluation;
mod fetch;
pub mod lag;
mod lag_poller;
pub mod metric_names;
mod predictions;
pub mod slo;
mod state;
pub mod stats;
pub mod window;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use aifab_core::messages::LagReading;
use aifab_core::service::{Needs, Service, ServiceSpec};

pub use crate::config::Config;
pub use crate::stats::StatsReport;

use crate::evaluation::Evaluator;
use crate::state::Shared;
use crate::window::Windows;

pub const SPEC: ServiceSpec = ServiceSpec {
    name: "monitor",
    default_port: 8084,
    // Redis holds the model registry the dashboard shows; readiness includes it.
    needs: Needs::ALL,
};

/// Start the service and run until SIGTERM/SIGINT.
pub async fn run(config: Config) -> anyhow::Result<()> {
    let static_watch =
        lag::parse_watch(&config.watch).map_err(|e| anyhow::anyhow!("--watch: {e}"))?;
    let mut svc = Service::init(SPEC, &config.serve, &config.brokers).await?;
    svc.check_topics(&[
        &config.predictions_topic,
        &config.dlq_topic,
        &config.brokers.audit_topic,
    ]);
    let shared = Arc::new(Mutex::new(Shared::new(fetch::costs_from(&config))));
    let windows = Arc::new(Mutex::new(Windows::new(config.window_s as i64 * 1000, 12)));
    let api = svc
        .require(
            aifab_core::access::Role::Read,
            api::router(shared.clone(), config.dashboard_limits()),
        )
        .merge(api::page());
    svc.serve(api).await?;
    let nats = svc.nats()?;
    let redis = svc.redis()?;
    svc.supervise(
        "control-listener",
        control::listen_control(nats.clone(), shared.clone(), svc.shutdown.clone()),
    );
    let refresher =
        fetch::refresh_sources(config.clone(), redis, shared.clone(), svc.shutdown.clone());
    svc.supervise("dashboard-refresher", async move {
        refresher.await;
        Ok(())
    });

    // Lag: blocking librdkafka calls on their own thread, readings sent here.
    let (tx, mut rx) = tokio::sync::mpsc::channel::<LagReading>(256);
    {
        let config = config.clone();
        let token = svc.shutdown.clone();
        svc.supervise_thread("lag-poller", move || {
            lag_poller::lag_poller(config, static_watch, tx, token);
            Ok(())
        })?;
    }
    {
        let (config, shared, token) = (config.clone(), shared.clone(), svc.shutdown.clone());
        svc.supervise_thread("audit-follower", move || {
            audit::follow_audit(&config, shared, token)
        })?;
    }
    svc.supervise(
        "predictions-consumer",
        predictions::consume_predictions(config.clone(), windows.clone(), svc.shutdown.clone()),
    );

    let mut evaluator = Evaluator::new(&config);
    let mut tick = tokio::time::interval(Duration::from_millis(config.interval_ms.max(100)));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = svc.shutdown.cancelled() => break,
            Some(reading) = rx.recv() => {
                lag_poller::publish_lag(&nats, &reading).await;
                shared.lock().expect("stats lock").on_lag(reading);
            }
            _ = tick.tick() => {
                let alerts = evaluator.tick(&windows, &shared, aifab_core::now_ms());
                evaluation::publish_alerts(&nats, alerts).await;
            }
        }
    }
    svc.finish().await
}
