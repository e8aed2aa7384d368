//! aifab autoscaler: turns lag readings (`aifab.lag.<group>`), budget reports
//! (`aifab.budget.*`) and replica counts (`aifab.replicas.<service>`) into scale decisions
//! on `aifab.scale.<service>`, which an actuator applies.
//!
//! - [`policy`]: the pure decision function (also run by `aifab simulate`).
//! - [`budget`]: budget views from the cost accountant's reports (pure).
//! - [`controller`]: a lag reading in, a scale decision out, with the policy's state.
//! - [`actuators`]: Docker Engine and Kubernetes actuators (`--actuator`); by default the
//!   `aifab up` supervisor applies decisions to local worker processes.
//! - [`metric_names`]: every metric the autoscaler exports.
//! - [`config`]: the command line; `api`: the HTTP API; `actuation`: applying decisions
//!   and reporting replicas.
//!
//! The binary (`main.rs`) only parses [`Config`] and calls [`run`].

mod actuation;
pub mod actuators;
mod api;
pub mod budget;
pub mod config;
pub mod controller;
pub mod metric_names;
pub mod policy;

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use aifab_core::messages::{decode, encode, BudgetEvent, LagReading, ReplicaReport};
use aifab_core::service::{Needs, Service, ServiceSpec};
use aifab_core::topics::subjects;
use anyhow::Context;
use futures::StreamExt;

pub use crate::config::Config;
pub use crate::controller::Controller;

use crate::api::ApiState;

pub const SPEC: ServiceSpec = ServiceSpec {
    name: "autoscaler",
    default_port: 8086,
    needs: Needs {
        kafka: false,
        nats: true,
        redis: false,
    },
};

/// Start the service and run until SIGTERM/SIGINT.
pub async fn run(config: Config) -> anyhow::Result<()> {
    let mut svc = Service::init(SPEC, &config.serve, &config.brokers).await?;
    let policy = config.policy_config();
    let actuator = config.build_actuator().await?.map(Arc::new);
    let history = Arc::new(Mutex::new(VecDeque::new()));
    svc.serve(api::router(ApiState {
        history: history.clone(),
        policy: Arc::new(policy.clone()),
    }))
    .await?;
    let nats = svc.nats()?;

    let lag_subject = subjects::lag(&config.group);
    let scale_subject = subjects::scale(&config.service);
    let replicas_subject = subjects::replicas(&config.service);
    let mut lag_sub = nats
        .subscribe(lag_subject.clone())
        .await
        .context("subscribing to lag readings")?;
    let mut budget_sub = nats
        .subscribe(subjects::BUDGET_ALL)
        .await
        .context("subscribing to budget events")?;
    let mut replicas_sub = nats
        .subscribe(replicas_subject.clone())
        .await
        .context("subscribing to replica reports")?;
    tracing::info!(policy = policy.kind.name(), service = %config.service, lag = %lag_subject,
        decisions = %scale_subject, actuator = ?config.actuator, "autoscaler running");

    if let Some(a) = actuator.clone() {
        svc.readiness.register("actuator", "not polled yet");
        let poll = actuation::poll_actuator(
            a,
            nats.clone(),
            config.service.clone(),
            Duration::from_secs_f64(config.actuator_poll_s.max(0.2)),
            svc.readiness.clone(),
            svc.shutdown.clone(),
        );
        svc.supervise("actuator-poller", async move {
            poll.await;
            Ok(())
        });
    }

    let mut ctl = Controller::new(
        &config.service,
        policy,
        &config.budget_tenant,
        config.budget_max_age_s as i64 * 1000,
        config.topic.clone(),
    );
    let applying = Arc::new(tokio::sync::Mutex::new(()));
    let shutdown = svc.shutdown.clone();
    svc.supervise("controller", async move { loop {
        tokio::select! {
            _ = shutdown.cancelled() => return Ok(()),
            Some(msg) = lag_sub.next() => {
                let reading = match decode::<LagReading>(&msg.payload) {
                    Ok(r) => r,
                    Err(e) => {
                        tracing::warn!(subject = %msg.subject, error = %e, "bad lag reading");
                        continue;
                    }
                };
                let Some(decision) = ctl.on_lag(&reading, aifab_core::now_ms()) else { continue };
                if decision.desired_replicas != decision.current_replicas {
                    tracing::info!(current = decision.current_replicas,
                        desired = decision.desired_replicas, reason = %decision.reason,
                        detail = %decision.detail, "scale decision");
                }
                let payload = encode(&decision).into();
                if let Err(e) = nats.publish(scale_subject.clone(), payload).await {
                    tracing::warn!(error = %e, "publishing the scale decision failed");
                }
                if let Some(a) = actuator.clone() {
                    actuation::apply(a, decision.desired_replicas, ctl.current, applying.clone(),
                        nats.clone(), config.service.clone());
                }
                api::remember(&history, decision);
            }
            Some(msg) = budget_sub.next() => {
                match decode::<BudgetEvent>(&msg.payload) {
                    Ok(ev) => { ctl.budget.observe(ev); }
                    Err(e) => {
                        tracing::debug!(subject = %msg.subject, error = %e, "not a budget event");
                    }
                }
            }
            Some(msg) = replicas_sub.next() => {
                match decode::<ReplicaReport>(&msg.payload) {
                    Ok(r) => {
                        if ctl.current != Some(r.replicas) {
                            tracing::info!(replicas = r.replicas, actuator = %r.actuator,
                                "replicas reported");
                        }
                        ctl.current = Some(r.replicas);
                    }
                    Err(e) => {
                        tracing::warn!(subject = %msg.subject, error = %e, "bad replica report");
                    }
                }
            }
            else => anyhow::bail!(
                "the NATS subscriptions to lag, budget and replica events ended"
            ),
        }
    } });
    // Until SIGTERM, or until a loop fails (then exit non-zero to be restarted).
    svc.shutdown.cancelled().await;
    svc.finish().await
}
