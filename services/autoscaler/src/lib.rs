//! aifab autoscaler: turns lag readings (`aifab.lag.<group>`), budget reports
//! (`aifab.budget.*`) and replica counts (`aifab.replicas.<service>`) into scale decisions
//! on `aifab.scale.<service>`, which an actuator applies.
//!
//! - [`policy`]: the pure decision function (also run by `aifab simulate`).
//! - [`budget`]: budget views from the cost accountant's reports (pure).
//! - [`actuators`]: Docker Engine and Kubernetes actuators (`--actuator`); by default the
//!   `aifab up` supervisor applies decisions to local worker processes.
//!
//! The binary (`main.rs`) only parses [`Config`] and calls [`run`].

pub mod actuators;
pub mod budget;
pub mod policy;

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use aifab_core::config::{BrokerArgs, ServeArgs};
use aifab_core::messages::{
    decode, encode, tag, BudgetEvent, LagReading, ReplicaReport, ScaleDecision, ScaleInputs,
};
use aifab_core::service::{Needs, Service, ServiceSpec};
use aifab_core::topics::{groups, subjects};
use anyhow::Context;
use axum::{extract::State, routing::get, Json, Router};
use futures::StreamExt;

use crate::actuators::{Actuator, ActuatorKind, DockerActuator, DockerMode, KubeActuator};
use crate::budget::BudgetTracker;
use crate::policy::{decide, Observation, PolicyConfig, PolicyKind, PolicyState};

pub const SPEC: ServiceSpec = ServiceSpec {
    name: "autoscaler",
    default_port: 8086,
    needs: Needs {
        kafka: false,
        nats: true,
        redis: false,
    },
};

/// Command-line and environment configuration.
#[derive(Debug, Clone, clap::Parser)]
#[command(
    name = "aifab-autoscaler",
    version,
    about = "Turns lag and budget events into scale decisions for inference workers."
)]
pub struct Config {
    #[command(flatten)]
    pub brokers: BrokerArgs,
    #[command(flatten)]
    pub serve: ServeArgs,

    /// The service scaled: decisions go to `aifab.scale.<service>`, replica counts come
    /// from `aifab.replicas.<service>`.
    #[arg(
        long,
        env = "AIFAB_AUTOSCALER_SERVICE",
        default_value = "inference-worker"
    )]
    pub service: String,
    /// The consumer group whose lag (`aifab.lag.<group>`) drives the decisions.
    #[arg(long, env = "AIFAB_AUTOSCALER_GROUP", default_value = groups::INFERENCE_WORKER)]
    pub group: String,
    /// Only readings of this topic (default: whatever the group's readings carry).
    #[arg(long, env = "AIFAB_AUTOSCALER_TOPIC")]
    pub topic: Option<String>,
    /// The policy: `aifab` (rate-based, learns replica throughput, budget-aware) or `keda`
    /// (KEDA's Kafka lag scaler with the HPA's defaults).
    #[arg(
        long,
        env = "AIFAB_AUTOSCALER_POLICY",
        value_enum,
        default_value = "aifab"
    )]
    pub policy: PolicyKind,
    /// Fewest replicas.
    #[arg(long, env = "AIFAB_AUTOSCALER_MIN_REPLICAS", default_value_t = 1)]
    pub min_replicas: u32,
    /// Most replicas (also capped at the topic's partitions).
    #[arg(long, env = "AIFAB_AUTOSCALER_MAX_REPLICAS", default_value_t = 8)]
    pub max_replicas: u32,
    /// Target lag per replica (KEDA `lagThreshold`; aifab's fallback before it has rates).
    #[arg(
        long,
        env = "AIFAB_AUTOSCALER_LAG_PER_REPLICA",
        default_value_t = 100.0
    )]
    pub lag_per_replica: f64,
    /// At or under this lag with nothing arriving, scale to the minimum.
    #[arg(long, env = "AIFAB_AUTOSCALER_ACTIVATION_LAG", default_value_t = 0.0)]
    pub activation_lag: f64,
    /// Scale down only to the highest recommendation of this window, seconds (default:
    /// 300 for keda as the HPA, 120 for aifab).
    #[arg(long, env = "AIFAB_AUTOSCALER_STABILIZATION_S")]
    pub stabilization_s: Option<f64>,
    /// Least seconds between two scale-ups.
    #[arg(long, env = "AIFAB_AUTOSCALER_UP_COOLDOWN_S", default_value_t = 0.0)]
    pub up_cooldown_s: f64,
    /// Least seconds after a change before scaling down (default: 0 keda, 30 aifab).
    #[arg(long, env = "AIFAB_AUTOSCALER_DOWN_COOLDOWN_S")]
    pub down_cooldown_s: Option<f64>,
    /// aifab: a replica's throughput (records/s) until one is measured under backlog.
    #[arg(long, env = "AIFAB_AUTOSCALER_REPLICA_RATE", default_value_t = 100.0)]
    pub replica_rate_per_s: f64,
    /// aifab: utilisation to provision for.
    #[arg(
        long,
        env = "AIFAB_AUTOSCALER_TARGET_UTILIZATION",
        default_value_t = 0.85
    )]
    pub target_utilization: f64,
    /// aifab: scale down only to a count that stays at or under this utilisation.
    #[arg(
        long,
        env = "AIFAB_AUTOSCALER_SCALE_DOWN_UTILIZATION",
        default_value_t = 0.7
    )]
    pub scale_down_utilization: f64,
    /// aifab: drain a backlog within this many seconds.
    #[arg(long, env = "AIFAB_AUTOSCALER_DRAIN_S", default_value_t = 15.0)]
    pub drain_s: f64,
    /// aifab: seconds a new replica takes to start consuming.
    #[arg(long, env = "AIFAB_AUTOSCALER_STARTUP_S", default_value_t = 15.0)]
    pub startup_s: f64,
    /// The budget that caps replicas: its tenant (`all`: the platform-wide budget).
    #[arg(long, env = "AIFAB_AUTOSCALER_BUDGET_TENANT", default_value = "all")]
    pub budget_tenant: String,
    /// What one replica costs per hour, in the budget's currency (0: learn it from the
    /// burn rate the cost accountant reports).
    #[arg(
        long,
        env = "AIFAB_AUTOSCALER_REPLICA_COST_PER_HOUR",
        default_value_t = 0.0
    )]
    pub replica_cost_per_hour: f64,
    /// Replicas kept even when the budget allows fewer (0: the budget is a hard limit).
    #[arg(
        long,
        env = "AIFAB_AUTOSCALER_MIN_REPLICAS_OVER_BUDGET",
        default_value_t = 0
    )]
    pub min_replicas_over_budget: u32,
    /// Bursts above the replicas the budget sustains to the period's end are allowed when
    /// this many seconds of the burst are affordable on top of them (0: no bursts).
    #[arg(
        long,
        env = "AIFAB_AUTOSCALER_BUDGET_BURST_S",
        default_value_t = 3600.0
    )]
    pub budget_burst_s: f64,
    /// Ignore budget reports older than this many seconds.
    #[arg(long, env = "AIFAB_AUTOSCALER_BUDGET_MAX_AGE_S", default_value_t = 300)]
    pub budget_max_age_s: u64,

    /// Who applies decisions: `none` (the `aifab up` supervisor listens on NATS), `docker`
    /// or `kubernetes` (this process calls their API).
    #[arg(
        long,
        env = "AIFAB_AUTOSCALER_ACTUATOR",
        value_enum,
        default_value = "none"
    )]
    pub actuator: ActuatorKind,
    /// Docker Engine address: unix:///path, tcp://host:port or http://host:port.
    #[arg(
        long,
        env = "DOCKER_HOST",
        default_value = "unix:///var/run/docker.sock"
    )]
    pub docker_host: String,
    /// Docker: scale a compose service's containers, or a swarm service.
    #[arg(long, env = "AIFAB_DOCKER_MODE", value_enum, default_value = "compose")]
    pub docker_mode: DockerMode,
    /// Docker compose project name.
    #[arg(long, env = "COMPOSE_PROJECT_NAME", default_value = "aifab")]
    pub compose_project: String,
    /// Docker compose (or swarm) service to scale.
    #[arg(long, env = "AIFAB_DOCKER_SERVICE", default_value = "inference-worker")]
    pub docker_service: String,
    /// Seconds a stopped replica gets to drain (SIGTERM) before SIGKILL.
    #[arg(long, env = "AIFAB_DOCKER_STOP_TIMEOUT_S", default_value_t = 30)]
    pub docker_stop_timeout_s: u64,
    /// Kubernetes API server URL (e.g. `http://127.0.0.1:8001` for `kubectl proxy`; the
    /// mounted service-account token is sent). Default: found as kubectl does
    /// ($KUBECONFIG or ~/.kube/config, else the pod's service account).
    #[arg(long, env = "AIFAB_KUBE_API")]
    pub kube_api: Option<String>,
    /// Kubernetes namespace (default: the kubeconfig context's or the pod's own, else `default`).
    #[arg(long, env = "AIFAB_KUBE_NAMESPACE")]
    pub kube_namespace: Option<String>,
    /// Kubernetes Deployment to scale.
    #[arg(
        long,
        env = "AIFAB_KUBE_DEPLOYMENT",
        default_value = "aifab-inference-worker"
    )]
    pub kube_deployment: String,
    /// Seconds between reading the actuator's replica count (published on `aifab.replicas.<service>`).
    #[arg(long, env = "AIFAB_ACTUATOR_POLL_S", default_value_t = 5.0)]
    pub actuator_poll_s: f64,
}

impl Config {
    pub fn policy_config(&self) -> PolicyConfig {
        let mut p = PolicyConfig::new(self.policy);
        p.min_replicas = self.min_replicas;
        p.max_replicas = self.max_replicas.max(self.min_replicas);
        p.lag_per_replica = self.lag_per_replica;
        p.activation_lag = self.activation_lag;
        if let Some(s) = self.stabilization_s {
            p.scale_down_stabilization_s = s;
        }
        p.scale_up_cooldown_s = self.up_cooldown_s;
        if let Some(s) = self.down_cooldown_s {
            p.scale_down_cooldown_s = s;
        }
        p.replica_rate_per_s = self.replica_rate_per_s;
        p.target_utilization = self.target_utilization;
        p.scale_down_utilization = self.scale_down_utilization;
        p.drain_s = self.drain_s;
        p.startup_s = self.startup_s;
        p.replica_cost_per_hour = self.replica_cost_per_hour;
        p.min_replicas_over_budget = self.min_replicas_over_budget;
        p.budget_burst_s = self.budget_burst_s;
        p
    }

    async fn build_actuator(&self) -> anyhow::Result<Option<Actuator>> {
        Ok(match self.actuator {
            ActuatorKind::None => None,
            ActuatorKind::Docker => Some(Actuator::Docker(DockerActuator::new(
                &self.docker_host,
                self.docker_mode,
                &self.compose_project,
                &self.docker_service,
                self.docker_stop_timeout_s,
            )?)),
            ActuatorKind::Kubernetes => {
                let config = KubeActuator::config(self.kube_api.as_deref()).await?;
                let ns = self
                    .kube_namespace
                    .clone()
                    .unwrap_or_else(|| config.default_namespace.clone());
                Some(Actuator::Kubernetes(KubeActuator::from_config(
                    config,
                    &ns,
                    &self.kube_deployment,
                )?))
            }
        })
    }
}

/// Everything one evaluation needs, and what it decided last.
pub struct Controller {
    pub service: String,
    pub policy: PolicyConfig,
    pub state: PolicyState,
    pub budget: BudgetTracker,
    /// The actuator's last replica count.
    pub current: Option<u32>,
    pub last_desired: Option<u32>,
    pub topic: Option<String>,
}

impl Controller {
    pub fn new(
        service: &str,
        policy: PolicyConfig,
        budget_tenant: &str,
        budget_max_age_ms: i64,
        topic: Option<String>,
    ) -> Self {
        Controller {
            service: service.to_string(),
            policy,
            state: PolicyState::default(),
            budget: BudgetTracker::new(budget_tenant, budget_max_age_ms),
            current: None,
            last_desired: None,
            topic,
        }
    }

    /// Decide from one lag reading (`now_ms` is the local clock, for budget periods).
    /// None when the reading is about another topic.
    pub fn on_lag(&mut self, reading: &LagReading, now_ms: i64) -> Option<ScaleDecision> {
        if self.topic.as_deref().is_some_and(|t| t != reading.topic) {
            return None;
        }
        let current = self
            .current
            .or(self.last_desired)
            .unwrap_or(self.policy.min_replicas);
        let budget = self.budget.view(now_ms);
        let obs = Observation {
            at_ms: reading.at_ms,
            total_lag: reading.total_lag,
            lag_rate_per_s: reading.lag_rate_per_s,
            partitions: reading.partitions.len() as u32,
            produced_total: Some(reading.partitions.iter().map(|p| p.high_watermark).sum()),
            consumed_total: Some(
                reading
                    .partitions
                    .iter()
                    .map(|p| p.high_watermark - p.lag)
                    .sum(),
            ),
            current_replicas: current,
            budget,
        };
        let d = decide(&self.policy, &mut self.state, &obs);
        self.last_desired = Some(d.desired);
        let svc = self.service.as_str();
        metrics::gauge!("aifab_autoscaler_desired_replicas", "service" => svc.to_string())
            .set(d.desired as f64);
        metrics::gauge!("aifab_autoscaler_recommended_replicas", "service" => svc.to_string())
            .set(d.recommended as f64);
        metrics::gauge!("aifab_autoscaler_current_replicas", "service" => svc.to_string())
            .set(current as f64);
        metrics::counter!("aifab_autoscaler_decisions_total", "service" => svc.to_string(), "reason" => d.reason.as_str())
            .increment(1);
        if let Some(cap) = d.budget_cap {
            metrics::gauge!("aifab_autoscaler_budget_cap_replicas", "service" => svc.to_string())
                .set(cap.min(10_000) as f64);
        }
        if let Some(r) = d.replica_rate_per_s {
            metrics::gauge!("aifab_autoscaler_replica_rate_records_per_second", "service" => svc.to_string()).set(r);
        }
        if let Some(r) = d.arrival_rate_per_s {
            metrics::gauge!("aifab_autoscaler_arrival_rate_records_per_second", "service" => svc.to_string()).set(r);
        }
        Some(ScaleDecision {
            schema: tag(),
            service: self.service.clone(),
            current_replicas: current,
            desired_replicas: d.desired,
            reason: d.reason.as_str().to_string(),
            detail: d.detail,
            inputs: ScaleInputs {
                total_lag: reading.total_lag.max(0),
                lag_rate_per_s: reading.lag_rate_per_s,
                partitions: obs.partitions,
                burn_rate_per_hour: budget.map(|b| b.burn_rate_per_hour.max(0.0)),
                remaining_budget: budget.map(|b| b.remaining),
            },
            at_ms: aifab_core::now_ms(),
        })
    }
}

#[derive(Clone)]
struct ApiState {
    history: Arc<Mutex<VecDeque<ScaleDecision>>>,
    policy: Arc<PolicyConfig>,
}

const HISTORY: usize = 200;

/// `GET /v1/decisions` (newest last) and `GET /v1/policy`.
fn router(state: ApiState) -> Router {
    Router::new()
        .route(
            "/v1/decisions",
            get(|State(s): State<ApiState>| async move {
                Json(
                    s.history
                        .lock()
                        .expect("history lock")
                        .iter()
                        .cloned()
                        .collect::<Vec<_>>(),
                )
            }),
        )
        .route(
            "/v1/policy",
            get(|State(s): State<ApiState>| async move { Json((*s.policy).clone()) }),
        )
        .with_state(state)
}

/// Start the service and run until SIGTERM/SIGINT.
pub async fn run(config: Config) -> anyhow::Result<()> {
    let mut svc = Service::init(SPEC, &config.serve, &config.brokers).await?;
    let policy = config.policy_config();
    let actuator = config.build_actuator().await?.map(Arc::new);
    let history = Arc::new(Mutex::new(VecDeque::new()));
    svc.serve(router(ApiState {
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
        let poll = poll_actuator(
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
                    Err(e) => { tracing::warn!(subject = %msg.subject, error = %e, "bad lag reading"); continue; }
                };
                let Some(decision) = ctl.on_lag(&reading, aifab_core::now_ms()) else { continue };
                if decision.desired_replicas != decision.current_replicas {
                    tracing::info!(current = decision.current_replicas, desired = decision.desired_replicas,
                        reason = %decision.reason, detail = %decision.detail, "scale decision");
                }
                if let Err(e) = nats.publish(scale_subject.clone(), encode(&decision).into()).await {
                    tracing::warn!(error = %e, "publishing the scale decision failed");
                }
                if let Some(a) = actuator.clone() {
                    apply(a, decision.desired_replicas, ctl.current, applying.clone(), nats.clone(), config.service.clone());
                }
                let mut h = history.lock().expect("history lock");
                h.push_back(decision);
                while h.len() > HISTORY { h.pop_front(); }
            }
            Some(msg) = budget_sub.next() => {
                match decode::<BudgetEvent>(&msg.payload) {
                    Ok(ev) => { ctl.budget.observe(ev); }
                    Err(e) => tracing::debug!(subject = %msg.subject, error = %e, "not a budget event"),
                }
            }
            Some(msg) = replicas_sub.next() => {
                match decode::<ReplicaReport>(&msg.payload) {
                    Ok(r) => {
                        if ctl.current != Some(r.replicas) {
                            tracing::info!(replicas = r.replicas, actuator = %r.actuator, "replicas reported");
                        }
                        ctl.current = Some(r.replicas);
                    }
                    Err(e) => tracing::warn!(subject = %msg.subject, error = %e, "bad replica report"),
                }
            }
            else => anyhow::bail!("the NATS subscriptions to lag, budget and replica events ended"),
        }
    } });
    // Until SIGTERM, or until a loop fails (then exit non-zero to be restarted).
    svc.shutdown.cancelled().await;
    svc.finish().await
}

/// Apply a decision through the actuator in the background (one at a time; a decision
/// that arrives while one is being applied is skipped: the next reading repeats it).
fn apply(
    actuator: Arc<Actuator>,
    desired: u32,
    current: Option<u32>,
    lock: Arc<tokio::sync::Mutex<()>>,
    nats: async_nats::Client,
    service: String,
) {
    if current == Some(desired) {
        return;
    }
    let Ok(guard) = lock.try_lock_owned() else {
        return;
    };
    tokio::spawn(async move {
        let _guard = guard;
        match actuator.scale(desired).await {
            Ok(n) => {
                metrics::counter!("aifab_autoscaler_actuations_total", "actuator" => actuator.name(), "result" => "ok").increment(1);
                tracing::info!(actuator = actuator.name(), replicas = n, "scaled");
                publish_replicas(&nats, &service, n, actuator.name()).await;
            }
            Err(e) => {
                metrics::counter!("aifab_autoscaler_actuations_total", "actuator" => actuator.name(), "result" => "error").increment(1);
                tracing::error!(actuator = actuator.name(), desired, error = %format!("{e:#}"), "scaling failed");
            }
        }
    });
}

async fn publish_replicas(nats: &async_nats::Client, service: &str, replicas: u32, actuator: &str) {
    let report = ReplicaReport {
        schema: tag(),
        service: service.to_string(),
        replicas,
        actuator: actuator.to_string(),
        at_ms: aifab_core::now_ms(),
    };
    if let Err(e) = nats
        .publish(subjects::replicas(service), encode(&report).into())
        .await
    {
        tracing::warn!(error = %e, "publishing the replica report failed");
    }
}

/// Read the actuator's replica count periodically and publish it.
async fn poll_actuator(
    actuator: Arc<Actuator>,
    nats: async_nats::Client,
    service: String,
    every: Duration,
    readiness: aifab_core::health::Readiness,
    shutdown: tokio_util::sync::CancellationToken,
) {
    loop {
        match actuator.replicas().await {
            Ok(n) => {
                readiness.set(
                    "actuator",
                    true,
                    format!("{}: {n} replicas", actuator.name()),
                );
                publish_replicas(&nats, &service, n, actuator.name()).await;
            }
            Err(e) => {
                if readiness.set("actuator", false, format!("{e:#}")) {
                    tracing::warn!(actuator = actuator.name(), error = %format!("{e:#}"), "actuator unreachable");
                }
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(every) => {}
            _ = shutdown.cancelled() => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use aifab_core::messages::{BudgetEventKind, PartitionLag};

    fn reading(at_ms: i64, highs: &[i64], lags: &[i64]) -> LagReading {
        LagReading {
            schema: tag(),
            group: "g".into(),
            topic: "t".into(),
            partitions: highs
                .iter()
                .zip(lags)
                .enumerate()
                .map(|(i, (h, l))| PartitionLag {
                    partition: i as i32,
                    committed: Some(h - l),
                    high_watermark: *h,
                    lag: *l,
                })
                .collect(),
            total_lag: lags.iter().sum(),
            lag_rate_per_s: 0.0,
            at_ms,
        }
    }

    #[test]
    fn a_lag_reading_becomes_a_decision_with_its_inputs() {
        let mut policy = PolicyConfig::new(PolicyKind::Aifab);
        policy.replica_cost_per_hour = 2.0;
        let mut c = Controller::new("inference-worker", policy, "all", 60_000, None);
        let now = budget::period_end_ms("2026-11-29").unwrap() - 3_600_000; // 1 h left today
        let d = c
            .on_lag(&reading(now, &[1000, 1000], &[400, 400]), now)
            .unwrap();
        assert_eq!(
            d.desired_replicas, 2,
            "800 lag at 100/replica capped at 2 partitions: {d:?}"
        );
        assert_eq!(d.inputs.partitions, 2);
        assert_eq!(d.inputs.remaining_budget, None);
        aifab_core::schema::validate("scale.decision/v1", &serde_json::to_value(&d).unwrap())
            .unwrap();

        // A budget of 3 left for the last hour at 2/h per replica: 1 replica.
        c.budget.observe(BudgetEvent {
            schema: tag(),
            kind: BudgetEventKind::Status,
            tenant: "all".into(),
            period: "2026-11-29".into(),
            budget: 10.0,
            spent: 7.0,
            burn_rate_per_hour: 1.0,
            currency: "USD".into(),
            at_ms: now,
        });
        c.current = Some(2);
        let d = c
            .on_lag(&reading(now + 5000, &[2000, 2000], &[900, 900]), now + 5000)
            .unwrap();
        assert_eq!(
            (d.desired_replicas, d.reason.as_str()),
            (1, "budget_cap"),
            "{d:?}"
        );
        assert_eq!(d.inputs.remaining_budget, Some(3.0));
        assert_eq!(d.inputs.burn_rate_per_hour, Some(1.0));

        // Readings of another topic are not ours when a topic is set.
        c.topic = Some("other".into());
        assert!(c.on_lag(&reading(now + 10_000, &[1], &[1]), now).is_none());
    }
}
