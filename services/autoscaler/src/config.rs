//! The autoscaler's command line and environment, and the policy and actuator they set.

use aifab_core::config::{BrokerArgs, ServeArgs};
use aifab_core::topics::groups;

use crate::actuators::{Actuator, ActuatorKind, DockerActuator, DockerMode, KubeActuator};
use crate::policy::{PolicyConfig, PolicyKind};

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
    /// aifab: at most this many replica changes (each a consumer-group rebalance) in any
    /// hour, paced: scale-downs wait for room for themselves and a scale-up, scale-ups wait
    /// only at the limit, budget caps never (0: no limit; use 4 or more). See
    /// docs/scaling.md for the settings that go with it.
    #[arg(
        long,
        env = "AIFAB_AUTOSCALER_MAX_SCALE_EVENTS_PER_HOUR",
        default_value_t = 0
    )]
    pub max_scale_events_per_hour: u32,
    /// aifab: time constant, in seconds, over which a rise in the arrival rate is believed
    /// (short: every spike starts replicas; about a start-up: spikes shorter than that
    /// do not).
    #[arg(long, env = "AIFAB_AUTOSCALER_ARRIVAL_RISE_S", default_value_t = 4.0)]
    pub arrival_rise_s: f64,
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
    /// Send the service-account token even over a plain `http://` --kube-api beyond
    /// loopback (refused by default: anyone on the path could reuse it).
    #[arg(long, env = "AIFAB_KUBE_ALLOW_PLAIN_HTTP_TOKEN")]
    pub kube_allow_plain_http_token: bool,
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
    /// Seconds between reading the actuator's replica count (published on
    /// `aifab.replicas.<service>`).
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
        p.arrival_rise_s = self.arrival_rise_s;
        if self.policy == PolicyKind::Aifab {
            p.max_scale_events_per_hour = self.max_scale_events_per_hour;
        }
        p
    }

    /// The actuator `--actuator` names, if any.
    pub(crate) async fn build_actuator(&self) -> anyhow::Result<Option<Actuator>> {
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
                    self.kube_allow_plain_http_token,
                )?))
            }
        })
    }
}
