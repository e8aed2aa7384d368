//! Actuators that apply scale decisions to a real platform. The local one lives in the
//! `aifab up` supervisor (it listens on `aifab.scale.<service>` itself); these two are run
//! by the autoscaler when `--actuator docker|kubernetes`:
//!
//! - [`DockerActuator`]: the Docker Engine API through [`bollard`], over the Unix socket
//!   or plain TCP (the API version is negotiated with the daemon on first use). `compose`
//!   mode does what `docker compose up --scale` does: counts the service's containers by
//!   their compose labels, starts stopped ones and creates new ones from a running
//!   replica's configuration (next container number, host port bindings dropped), and
//!   stops and removes the highest-numbered ones to scale down. `swarm` mode updates a
//!   swarm service's replica count (`POST /services/{id}/update` with the version read).
//! - [`KubeActuator`]: the Kubernetes API through [`kube`] (`k8s-openapi` types): reads
//!   and merge-patches the Deployment's `scale` subresource
//!   (`PATCH /apis/apps/v1/namespaces/{ns}/deployments/{name}/scale`). Without
//!   `--kube-api` it finds the cluster as `kubectl` does ([`kube::Config::infer`]:
//!   `$KUBECONFIG` or `~/.kube/config`, else the pod's service account, over HTTPS with
//!   the cluster's CA); with `--kube-api URL` it talks to that address (for example
//!   `kubectl proxy` on `http://127.0.0.1:8001`) and sends the mounted service-account
//!   token when there is one.

use std::collections::HashMap;
use std::time::Duration;

use anyhow::{anyhow, bail, Context};
use bollard::models::{
    ContainerCreateBody, ContainerInspectResponse, ContainerSummaryStateEnum, EndpointSettings,
    NetworkConnectRequest, NetworkingConfig,
};
use bollard::query_parameters::{
    CreateContainerOptions, ListContainersOptions, RemoveContainerOptions, StopContainerOptions,
    UpdateServiceOptions,
};
use bollard::Docker;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::autoscaling::v1::Scale;
use kube::api::{Api, Patch, PatchParams};
use serde_json::json;
use tokio::sync::OnceCell;

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ActuatorKind {
    /// Publish decisions only; the `aifab up` supervisor (or another actuator) applies them.
    None,
    /// Docker Engine API (compose service or swarm service).
    Docker,
    /// Kubernetes Deployment scale subresource.
    Kubernetes,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum DockerMode {
    /// Containers of a docker compose service, by their compose labels.
    Compose,
    /// A swarm-mode service's replica count.
    Swarm,
}

/// An actuator: how many replicas run, and make it `n`.
pub enum Actuator {
    Docker(DockerActuator),
    Kubernetes(KubeActuator),
}

impl Actuator {
    pub fn name(&self) -> &'static str {
        match self {
            Actuator::Docker(_) => "docker",
            Actuator::Kubernetes(_) => "kubernetes",
        }
    }

    pub async fn replicas(&self) -> anyhow::Result<u32> {
        match self {
            Actuator::Docker(d) => d.replicas().await,
            Actuator::Kubernetes(k) => k.replicas().await,
        }
    }

    /// Apply `n`; returns the replicas running (or asked for) afterwards.
    pub async fn scale(&self, n: u32) -> anyhow::Result<u32> {
        match self {
            Actuator::Docker(d) => d.scale(n).await,
            Actuator::Kubernetes(k) => k.scale(n).await,
        }
    }
}

/// `e` and its sources, each once (some errors repeat their source in their message).
fn chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let text = s.to_string();
        if !out.contains(&text) {
            out = format!("{out}: {text}");
        }
        source = s.source();
    }
    out
}

// ------------------------------------------------------------------------------ docker

const LABEL_PROJECT: &str = "com.docker.compose.project";
const LABEL_SERVICE: &str = "com.docker.compose.service";
const LABEL_NUMBER: &str = "com.docker.compose.container-number";

pub struct DockerActuator {
    /// As connected, at bollard's API version.
    client: Docker,
    /// The same, once the API version has been negotiated with the daemon.
    negotiated: OnceCell<Docker>,
    mode: DockerMode,
    project: String,
    service: String,
    stop_timeout_s: u64,
}

#[derive(Debug, Clone)]
struct Replica {
    id: String,
    number: u32,
    running: bool,
}

/// A failed Docker call: `docker <what>: <bollard's error>` (for an error answer:
/// "Docker responded with status code 404: <the daemon's message>").
fn docker_err(
    what: impl std::fmt::Display,
) -> impl FnOnce(bollard::errors::Error) -> anyhow::Error {
    move |e| anyhow!("docker {what}: {}", chain(&e))
}

impl DockerActuator {
    /// `host`: `unix:///var/run/docker.sock`, `tcp://host:port` or `http://host:port`.
    /// `project`/`service`: the compose project and service (swarm: the service name).
    pub fn new(
        host: &str,
        mode: DockerMode,
        project: &str,
        service: &str,
        stop_timeout_s: u64,
    ) -> anyhow::Result<Self> {
        // Per-request timeout: a stop waits up to `stop_timeout_s` for the container.
        let timeout = stop_timeout_s + 30;
        let client = if host.starts_with("unix://") {
            Docker::connect_with_unix(host, timeout, bollard::API_DEFAULT_VERSION)
                .with_context(|| format!("docker host {host}"))?
        } else if host.starts_with("tcp://") || host.starts_with("http://") {
            Docker::connect_with_http(host, timeout, bollard::API_DEFAULT_VERSION)
                .with_context(|| format!("docker host {host}"))?
        } else {
            bail!(
                "docker host {host:?}: expected unix:///path, tcp://host:port or http://host:port"
            );
        };
        Ok(DockerActuator {
            client,
            negotiated: OnceCell::new(),
            mode,
            project: project.to_string(),
            service: service.to_string(),
            stop_timeout_s,
        })
    }

    /// The client at the newest API version both sides speak (asked once; a failure is
    /// retried on the next call).
    async fn docker(&self) -> anyhow::Result<&Docker> {
        self.negotiated
            .get_or_try_init(|| async {
                self.client
                    .clone()
                    .negotiate_version()
                    .await
                    .map_err(docker_err("GET /version"))
            })
            .await
    }

    async fn containers(&self) -> anyhow::Result<Vec<Replica>> {
        let filters = HashMap::from([(
            "label".to_string(),
            vec![
                format!("{LABEL_PROJECT}={}", self.project),
                format!("{LABEL_SERVICE}={}", self.service),
            ],
        )]);
        let list = self
            .docker()
            .await?
            .list_containers(Some(ListContainersOptions {
                all: true,
                filters: Some(filters),
                ..Default::default()
            }))
            .await
            .map_err(docker_err("GET /containers/json"))?;
        let mut out: Vec<Replica> = list
            .into_iter()
            .filter_map(|c| {
                let number = c.labels.as_ref()?.get(LABEL_NUMBER)?.parse().ok()?;
                Some(Replica {
                    id: c.id?,
                    number,
                    running: c.state == Some(ContainerSummaryStateEnum::RUNNING),
                })
            })
            .collect();
        out.sort_by_key(|r| r.number);
        Ok(out)
    }

    /// The swarm service's id, version and spec.
    async fn swarm_service(&self) -> anyhow::Result<(String, u64, bollard::models::ServiceSpec)> {
        let svc = self
            .docker()
            .await?
            .inspect_service(&self.service, None)
            .await
            .map_err(docker_err(format!("GET /services/{}", self.service)))?;
        let id = svc.id.context("swarm service without ID")?;
        let version = svc
            .version
            .and_then(|v| v.index)
            .context("swarm service without Version.Index")?;
        Ok((id, version, svc.spec.unwrap_or_default()))
    }

    pub async fn replicas(&self) -> anyhow::Result<u32> {
        match self.mode {
            DockerMode::Compose => Ok(self
                .containers()
                .await?
                .iter()
                .filter(|r| r.running)
                .count() as u32),
            DockerMode::Swarm => {
                let (_, _, spec) = self.swarm_service().await?;
                replicated(&spec).map(|n| n as u32)
            }
        }
    }

    pub async fn scale(&self, n: u32) -> anyhow::Result<u32> {
        match self.mode {
            DockerMode::Swarm => {
                let (id, version, mut spec) = self.swarm_service().await?;
                replicated(&spec)?;
                if let Some(r) = spec.mode.as_mut().and_then(|m| m.replicated.as_mut()) {
                    r.replicas = Some(n.into());
                }
                let options = UpdateServiceOptions {
                    version: i32::try_from(version)
                        .with_context(|| format!("swarm service version {version}"))?,
                    ..Default::default()
                };
                self.docker()
                    .await?
                    .update_service(&id, spec, options, None)
                    .await
                    .map_err(docker_err(format!("POST /services/{id}/update")))?;
                Ok(n)
            }
            DockerMode::Compose => self.scale_compose(n).await,
        }
    }

    async fn scale_compose(&self, n: u32) -> anyhow::Result<u32> {
        let docker = self.docker().await?;
        let all = self.containers().await?;
        let running: Vec<&Replica> = all.iter().filter(|r| r.running).collect();
        let have = running.len() as u32;
        if n < have {
            // Highest numbers first, as compose does.
            for r in running.iter().rev().take((have - n) as usize) {
                let t = i32::try_from(self.stop_timeout_s).unwrap_or(i32::MAX);
                docker
                    .stop_container(
                        &r.id,
                        Some(StopContainerOptions {
                            t: Some(t),
                            signal: None,
                        }),
                    )
                    .await
                    .map_err(docker_err(format!("POST /containers/{}/stop", r.id)))?;
                docker
                    .remove_container(&r.id, None::<RemoveContainerOptions>)
                    .await
                    .map_err(docker_err(format!("DELETE /containers/{}", r.id)))?;
                tracing::info!(container = %r.id, number = r.number, "docker: removed replica");
            }
            return Ok(n);
        }
        let mut missing = n - have;
        // Start stopped replicas first.
        for r in all.iter().filter(|r| !r.running) {
            if missing == 0 {
                break;
            }
            docker
                .start_container(&r.id, None)
                .await
                .map_err(docker_err(format!("POST /containers/{}/start", r.id)))?;
            tracing::info!(container = %r.id, number = r.number, "docker: started stopped replica");
            missing -= 1;
        }
        if missing == 0 {
            return Ok(n);
        }
        let template_id = all.first().map(|r| r.id.clone()).with_context(|| {
            format!(
                "compose service {}/{} has no container to copy; start one with docker compose up",
                self.project, self.service
            )
        })?;
        let template = docker
            .inspect_container(&template_id, None)
            .await
            .map_err(docker_err(format!("GET /containers/{template_id}/json")))?;
        let next = all.iter().map(|r| r.number).max().unwrap_or(0) + 1;
        for number in next..next + missing {
            let (name, body, extra_networks) = self.create_body(&template, number);
            let created = docker
                .create_container(
                    Some(CreateContainerOptions {
                        name: Some(name.clone()),
                        ..Default::default()
                    }),
                    body,
                )
                .await
                .map_err(docker_err(format!("POST /containers/create?name={name}")))?;
            let id = created.id;
            for net in extra_networks {
                let connect = NetworkConnectRequest {
                    container: id.clone(),
                    endpoint_config: Some(EndpointSettings {
                        aliases: Some(vec![self.service.clone()]),
                        ..Default::default()
                    }),
                };
                docker
                    .connect_network(&net, connect)
                    .await
                    .map_err(docker_err(format!("POST /networks/{net}/connect")))?;
            }
            docker
                .start_container(&id, None)
                .await
                .map_err(docker_err(format!("POST /containers/{id}/start")))?;
            tracing::info!(container = %id, number, %name, "docker: created replica");
        }
        Ok(n)
    }

    /// The create request for replica `number`, copied from `template` (an inspect
    /// answer): its name, body, and the networks to connect after the first.
    fn create_body(
        &self,
        template: &ContainerInspectResponse,
        number: u32,
    ) -> (String, ContainerCreateBody, Vec<String>) {
        let cfg = template.config.clone().unwrap_or_default();
        let mut labels = cfg.labels.unwrap_or_default();
        labels.insert(LABEL_NUMBER.into(), number.to_string());
        let mut host = template.host_config.clone().unwrap_or_default();
        // Replicas cannot share host ports (compose refuses to scale those too).
        host.port_bindings = None;
        host.publish_all_ports = Some(false);
        let mut networks: Vec<String> = template
            .network_settings
            .as_ref()
            .and_then(|s| s.networks.as_ref())
            .map(|m| m.keys().cloned().collect())
            .unwrap_or_default();
        networks.sort();
        let networking_config = networks.first().map(|first| NetworkingConfig {
            endpoints_config: Some(HashMap::from([(
                first.clone(),
                EndpointSettings {
                    aliases: Some(vec![self.service.clone()]),
                    ..Default::default()
                },
            )])),
        });
        let body = ContainerCreateBody {
            image: cfg.image,
            labels: Some(labels),
            host_config: Some(host),
            env: cfg.env,
            cmd: cfg.cmd,
            entrypoint: cfg.entrypoint,
            working_dir: cfg.working_dir,
            user: cfg.user,
            exposed_ports: cfg.exposed_ports,
            healthcheck: cfg.healthcheck,
            stop_signal: cfg.stop_signal,
            networking_config,
            ..Default::default()
        };
        let name = format!("{}-{}-{}", self.project, self.service, number);
        (name, body, networks.into_iter().skip(1).collect())
    }
}

/// A swarm spec's replica count, or why it has none.
fn replicated(spec: &bollard::models::ServiceSpec) -> anyhow::Result<i64> {
    spec.mode
        .as_ref()
        .and_then(|m| m.replicated.as_ref())
        .and_then(|r| r.replicas)
        .context("swarm service is not replicated (Spec.Mode.Replicated.Replicas)")
}

// -------------------------------------------------------------------------- kubernetes

pub struct KubeActuator {
    api: Api<Deployment>,
    deployment: String,
    /// The scale subresource's path, for messages.
    path: String,
}

/// Where a pod finds its service account.
pub const SERVICE_ACCOUNT_DIR: &str = "/var/run/secrets/kubernetes.io/serviceaccount";

/// Requests that get no answer in this long fail (kube sets no read timeout by default).
const KUBE_READ_TIMEOUT: Duration = Duration::from_secs(30);

/// A failed Kubernetes call: `kubernetes <what>: HTTP <code> <reason>: <message>` for an
/// error answer (the API server's `Status`), else kube's error and its causes.
fn kube_err(what: &str, e: kube::Error) -> anyhow::Error {
    match &e {
        kube::Error::Api(s) => anyhow!(
            "kubernetes {what}: HTTP {} {}: {}",
            s.code,
            s.reason,
            s.message.trim()
        ),
        _ => anyhow!("kubernetes {what}: {}", chain(&e)),
    }
}

/// Whether a bearer token may go to `url`: over https, to a loopback `http://` address
/// (`kubectl proxy`), or over plain http elsewhere only when explicitly allowed — a token
/// sent in the clear to the cluster is a token anyone on the path can scale with.
pub fn token_transport_ok(
    url: &axum::http::Uri,
    has_token: bool,
    allow_plain_http: bool,
) -> anyhow::Result<()> {
    if !has_token || allow_plain_http || url.scheme_str() != Some("http") {
        return Ok(());
    }
    let host = url.host().unwrap_or("").trim_matches(['[', ']']);
    let loopback = host == "localhost"
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback());
    anyhow::ensure!(
        loopback,
        "kubernetes: refusing to send a service-account token over plain {url} (use https://, \
         or set --kube-allow-plain-http-token if the network is trusted)"
    );
    Ok(())
}

impl KubeActuator {
    /// `api`: the API server's base URL (`http://127.0.0.1:8001` with `kubectl proxy`, or
    /// `https://...`), with an optional bearer token.
    pub fn new(
        api: &str,
        namespace: &str,
        deployment: &str,
        token: Option<String>,
    ) -> anyhow::Result<Self> {
        let mut config =
            kube::Config::new(api.parse().with_context(|| format!("--kube-api {api:?}"))?);
        config.auth_info.token = token.map(Into::into);
        Self::from_config(config, namespace, deployment, false)
    }

    /// From a complete client configuration (see [`KubeActuator::config`]). A token is
    /// never sent over plain `http://` beyond loopback unless `allow_plain_http_token`.
    pub fn from_config(
        mut config: kube::Config,
        namespace: &str,
        deployment: &str,
        allow_plain_http_token: bool,
    ) -> anyhow::Result<Self> {
        let a = &config.auth_info;
        let has_token = a.token.is_some()
            || a.token_file.is_some()
            || a.password.is_some()
            || a.exec.is_some()
            || a.auth_provider.is_some();
        token_transport_ok(&config.cluster_url, has_token, allow_plain_http_token)?;
        config.read_timeout.get_or_insert(KUBE_READ_TIMEOUT);
        let client = kube::Client::try_from(config).context("kubernetes client")?;
        Ok(KubeActuator {
            api: Api::namespaced(client, namespace),
            deployment: deployment.to_string(),
            path: format!("/apis/apps/v1/namespaces/{namespace}/deployments/{deployment}/scale"),
        })
    }

    /// The client configuration for `--kube-api`: none, as `kubectl` finds the cluster
    /// ([`kube::Config::infer`]: `$KUBECONFIG` or `~/.kube/config`, else the pod's service
    /// account); a URL, that address with the mounted service account's token (re-read as
    /// it rotates), CA and namespace when there is one. Its `default_namespace` is the
    /// namespace to use when none is given.
    pub async fn config(api: Option<&str>) -> anyhow::Result<kube::Config> {
        let Some(api) = api else {
            return kube::Config::infer().await.map_err(|e| {
                anyhow!(
                    "kubernetes: no kubeconfig or in-cluster service account ({}); set --kube-api",
                    chain(&e)
                )
            });
        };
        let mut config =
            kube::Config::new(api.parse().with_context(|| format!("--kube-api {api:?}"))?);
        let sa = std::path::Path::new(SERVICE_ACCOUNT_DIR);
        if sa.join("token").exists() {
            config.auth_info.token_file = Some(sa.join("token").display().to_string());
        }
        if config.cluster_url.scheme_str() == Some("https") && sa.join("ca.crt").exists() {
            config.root_cert_file = Some(sa.join("ca.crt"));
        }
        if let Ok(ns) = std::fs::read_to_string(sa.join("namespace")) {
            config.default_namespace = ns.trim().to_string();
        }
        Ok(config)
    }

    fn replicas_of(&self, what: &str, scale: &Scale) -> anyhow::Result<u32> {
        scale
            .status
            .as_ref()
            .map(|s| s.replicas)
            .or_else(|| scale.spec.as_ref().and_then(|s| s.replicas))
            .map(|n| n.max(0) as u32)
            .with_context(|| {
                format!("kubernetes {what}: no status.replicas or spec.replicas in {scale:?}")
            })
    }

    pub async fn replicas(&self) -> anyhow::Result<u32> {
        let what = format!("GET {}", self.path);
        let scale = self
            .api
            .get_scale(&self.deployment)
            .await
            .map_err(|e| kube_err(&what, e))?;
        self.replicas_of(&what, &scale)
    }

    pub async fn scale(&self, n: u32) -> anyhow::Result<u32> {
        let what = format!("PATCH {}", self.path);
        let patch = Patch::Merge(json!({ "spec": { "replicas": n } }));
        let scale = self
            .api
            .patch_scale(&self.deployment, &PatchParams::default(), &patch)
            .await
            .map_err(|e| kube_err(&what, e))?;
        Ok(scale
            .spec
            .and_then(|s| s.replicas)
            .map(|v| v.max(0) as u32)
            .unwrap_or(n))
    }
}
