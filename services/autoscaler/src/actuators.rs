//! Actuators that apply scale decisions to a real platform. The local one lives in the
//! `aifab up` supervisor (it listens on `aifab.scale.<service>` itself); these two are run
//! by the autoscaler when `--actuator docker|kubernetes`:
//!
//! - [`DockerActuator`]: the Docker Engine API. `compose` mode does what
//!   `docker compose up --scale` does: counts the service's containers by their compose
//!   labels, starts stopped ones and creates new ones from a running replica's
//!   configuration (next container number, host port bindings dropped), and stops and
//!   removes the highest-numbered ones to scale down. `swarm` mode updates a swarm
//!   service's replica count (`POST /services/{id}/update`).
//! - [`KubeActuator`]: the Kubernetes API: reads and merge-patches the Deployment's
//!   `scale` subresource (`PATCH /apis/apps/v1/namespaces/{ns}/deployments/{name}/scale`).
//!
//! Both are small HTTP clients on `reqwest` (rather than bollard and kube + k8s-openapi,
//! which would add many minutes of build time on a 2-core machine for four requests each).
//! The Docker client talks over the Unix socket or TCP; the Kubernetes client talks plain
//! HTTP, so in a cluster it runs beside `kubectl proxy` (or any HTTP route to the API
//! server) and sends the service account's bearer token when one is mounted.

use std::time::Duration;

use anyhow::{bail, Context};
use reqwest::{Client, Method, StatusCode, Url};
use serde_json::{json, Value};

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

async fn check(resp: reqwest::Response, what: &str) -> anyhow::Result<reqwest::Response> {
    let status = resp.status();
    if status.is_success() || status == StatusCode::NOT_MODIFIED {
        return Ok(resp);
    }
    let body = resp.text().await.unwrap_or_default();
    bail!("{what}: HTTP {status}: {}", body.trim())
}

// ------------------------------------------------------------------------------ docker

const LABEL_PROJECT: &str = "com.docker.compose.project";
const LABEL_SERVICE: &str = "com.docker.compose.service";
const LABEL_NUMBER: &str = "com.docker.compose.container-number";

pub struct DockerActuator {
    client: Client,
    base: Url,
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

impl DockerActuator {
    /// `host`: `unix:///var/run/docker.sock`, `tcp://host:port` or `http://host:port`.
    /// `project`/`service`: the compose project and service (swarm: the service name).
    pub fn new(host: &str, mode: DockerMode, project: &str, service: &str, stop_timeout_s: u64) -> anyhow::Result<Self> {
        let builder = Client::builder().timeout(Duration::from_secs(stop_timeout_s + 30));
        let (client, base) = if let Some(path) = host.strip_prefix("unix://") {
            (builder.unix_socket(path).build()?, Url::parse("http://docker")?)
        } else if let Some(rest) = host.strip_prefix("tcp://") {
            (builder.build()?, Url::parse(&format!("http://{rest}"))?)
        } else if host.starts_with("http://") {
            (builder.build()?, Url::parse(host)?)
        } else {
            bail!("docker host {host:?}: expected unix:///path, tcp://host:port or http://host:port");
        };
        Ok(DockerActuator {
            client,
            base,
            mode,
            project: project.to_string(),
            service: service.to_string(),
            stop_timeout_s,
        })
    }

    fn url(&self, path: &str, query: &[(&str, &str)]) -> anyhow::Result<Url> {
        let mut url = self.base.join(path)?;
        if !query.is_empty() {
            let mut q = url.query_pairs_mut();
            for (k, v) in query {
                q.append_pair(k, v);
            }
        }
        Ok(url)
    }

    async fn call(&self, method: Method, path: &str, query: &[(&str, &str)], body: Option<Value>) -> anyhow::Result<reqwest::Response> {
        let url = self.url(path, query)?;
        let mut req = self.client.request(method.clone(), url.clone());
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp = req.send().await.with_context(|| format!("docker {method} {}", url.path()))?;
        check(resp, &format!("docker {method} {}", url.path())).await
    }

    async fn containers(&self) -> anyhow::Result<Vec<Replica>> {
        let filters = json!({ "label": [
            format!("{LABEL_PROJECT}={}", self.project),
            format!("{LABEL_SERVICE}={}", self.service),
        ]})
        .to_string();
        let list: Value = self
            .call(Method::GET, "/containers/json", &[("all", "true"), ("filters", &filters)], None)
            .await?
            .json()
            .await?;
        let mut out: Vec<Replica> = list
            .as_array()
            .context("docker /containers/json: expected an array")?
            .iter()
            .filter_map(|c| {
                let number = c["Labels"][LABEL_NUMBER].as_str()?.parse().ok()?;
                Some(Replica {
                    id: c["Id"].as_str()?.to_string(),
                    number,
                    running: c["State"].as_str() == Some("running"),
                })
            })
            .collect();
        out.sort_by_key(|r| r.number);
        Ok(out)
    }

    async fn swarm_service(&self) -> anyhow::Result<(String, u64, Value)> {
        let svc: Value = self
            .call(Method::GET, &format!("/services/{}", self.service), &[], None)
            .await?
            .json()
            .await?;
        let id = svc["ID"].as_str().context("swarm service without ID")?.to_string();
        let version = svc["Version"]["Index"].as_u64().context("swarm service without Version.Index")?;
        Ok((id, version, svc["Spec"].clone()))
    }

    pub async fn replicas(&self) -> anyhow::Result<u32> {
        match self.mode {
            DockerMode::Compose => Ok(self.containers().await?.iter().filter(|r| r.running).count() as u32),
            DockerMode::Swarm => {
                let (_, _, spec) = self.swarm_service().await?;
                spec["Mode"]["Replicated"]["Replicas"]
                    .as_u64()
                    .map(|n| n as u32)
                    .context("swarm service is not replicated (Spec.Mode.Replicated.Replicas)")
            }
        }
    }

    pub async fn scale(&self, n: u32) -> anyhow::Result<u32> {
        match self.mode {
            DockerMode::Swarm => {
                let (id, version, mut spec) = self.swarm_service().await?;
                spec["Mode"]["Replicated"]["Replicas"] = json!(n);
                self.call(Method::POST, &format!("/services/{id}/update"), &[("version", &version.to_string())], Some(spec))
                    .await?;
                Ok(n)
            }
            DockerMode::Compose => self.scale_compose(n).await,
        }
    }

    async fn scale_compose(&self, n: u32) -> anyhow::Result<u32> {
        let all = self.containers().await?;
        let running: Vec<&Replica> = all.iter().filter(|r| r.running).collect();
        let have = running.len() as u32;
        if n < have {
            // Highest numbers first, as compose does.
            for r in running.iter().rev().take((have - n) as usize) {
                let t = self.stop_timeout_s.to_string();
                self.call(Method::POST, &format!("/containers/{}/stop", r.id), &[("t", &t)], None).await?;
                self.call(Method::DELETE, &format!("/containers/{}", r.id), &[], None).await?;
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
            self.call(Method::POST, &format!("/containers/{}/start", r.id), &[], None).await?;
            tracing::info!(container = %r.id, number = r.number, "docker: started stopped replica");
            missing -= 1;
        }
        if missing == 0 {
            return Ok(n);
        }
        let template_id = all
            .first()
            .map(|r| r.id.clone())
            .with_context(|| format!("compose service {}/{} has no container to copy; start one with docker compose up", self.project, self.service))?;
        let template: Value = self
            .call(Method::GET, &format!("/containers/{template_id}/json"), &[], None)
            .await?
            .json()
            .await?;
        let mut next = all.iter().map(|r| r.number).max().unwrap_or(0) + 1;
        for _ in 0..missing {
            let (name, body, extra_networks) = self.create_body(&template, next)?;
            let created: Value = self
                .call(Method::POST, "/containers/create", &[("name", &name)], Some(body))
                .await?
                .json()
                .await?;
            let id = created["Id"].as_str().context("container create: no Id")?.to_string();
            for net in extra_networks {
                self.call(
                    Method::POST,
                    &format!("/networks/{net}/connect"),
                    &[],
                    Some(json!({ "Container": id, "EndpointConfig": { "Aliases": [self.service] } })),
                )
                .await?;
            }
            self.call(Method::POST, &format!("/containers/{id}/start"), &[], None).await?;
            tracing::info!(container = %id, number = next, %name, "docker: created replica");
            next += 1;
        }
        Ok(n)
    }

    /// The create request for replica `number`, copied from `template` (an inspect
    /// answer): its name, body, and the networks to connect after the first.
    fn create_body(&self, template: &Value, number: u32) -> anyhow::Result<(String, Value, Vec<String>)> {
        let cfg = &template["Config"];
        let mut labels = cfg["Labels"].as_object().cloned().unwrap_or_default();
        labels.insert(LABEL_NUMBER.into(), json!(number.to_string()));
        let mut host = template["HostConfig"].clone();
        if let Some(h) = host.as_object_mut() {
            // Replicas cannot share host ports (compose refuses to scale those too).
            h.remove("PortBindings");
            h.insert("PublishAllPorts".into(), json!(false));
        }
        let mut networks: Vec<String> = template["NetworkSettings"]["Networks"]
            .as_object()
            .map(|m| m.keys().cloned().collect())
            .unwrap_or_default();
        networks.sort();
        let mut body = json!({
            "Image": cfg["Image"],
            "Labels": labels,
            "HostConfig": host,
        });
        for key in ["Env", "Cmd", "Entrypoint", "WorkingDir", "User", "ExposedPorts", "Healthcheck", "StopSignal"] {
            if !cfg[key].is_null() {
                body[key] = cfg[key].clone();
            }
        }
        if let Some(first) = networks.first() {
            body["NetworkingConfig"] = json!({ "EndpointsConfig": { first: { "Aliases": [self.service] } } });
        }
        let name = format!("{}-{}-{}", self.project, self.service, number);
        Ok((name, body, networks.into_iter().skip(1).collect()))
    }
}

// -------------------------------------------------------------------------- kubernetes

pub struct KubeActuator {
    client: Client,
    scale_url: Url,
    token: Option<String>,
}

/// Where a pod finds its service account.
pub const SERVICE_ACCOUNT_DIR: &str = "/var/run/secrets/kubernetes.io/serviceaccount";

impl KubeActuator {
    /// `api`: the API server's base URL (`http://127.0.0.1:8001` with `kubectl proxy`).
    pub fn new(api: &str, namespace: &str, deployment: &str, token: Option<String>) -> anyhow::Result<Self> {
        let base = Url::parse(api).with_context(|| format!("--kube-api {api:?}"))?;
        if base.scheme() != "http" {
            bail!(
                "--kube-api {api}: this client speaks plain HTTP; run the autoscaler beside `kubectl proxy` \
                 and use --kube-api http://127.0.0.1:8001"
            );
        }
        let scale_url = base.join(&format!("/apis/apps/v1/namespaces/{namespace}/deployments/{deployment}/scale"))?;
        Ok(KubeActuator { client: Client::builder().timeout(Duration::from_secs(30)).build()?, scale_url, token })
    }

    /// The mounted service-account token and namespace, when running in a pod.
    pub fn service_account() -> (Option<String>, Option<String>) {
        let read = |f: &str| {
            std::fs::read_to_string(format!("{SERVICE_ACCOUNT_DIR}/{f}")).ok().map(|s| s.trim().to_string())
        };
        (read("token"), read("namespace"))
    }

    fn request(&self, method: Method) -> reqwest::RequestBuilder {
        let mut req = self.client.request(method, self.scale_url.clone()).header("Accept", "application/json");
        if let Some(t) = &self.token {
            req = req.bearer_auth(t);
        }
        req
    }

    pub async fn replicas(&self) -> anyhow::Result<u32> {
        let what = format!("kubernetes GET {}", self.scale_url.path());
        let resp = self.request(Method::GET).send().await.with_context(|| what.clone())?;
        let scale: Value = check(resp, &what).await?.json().await?;
        scale["status"]["replicas"]
            .as_u64()
            .or_else(|| scale["spec"]["replicas"].as_u64())
            .map(|n| n as u32)
            .with_context(|| format!("{what}: no status.replicas or spec.replicas in {scale}"))
    }

    pub async fn scale(&self, n: u32) -> anyhow::Result<u32> {
        let what = format!("kubernetes PATCH {}", self.scale_url.path());
        let resp = self
            .request(Method::PATCH)
            .header("Content-Type", "application/merge-patch+json")
            .body(json!({ "spec": { "replicas": n } }).to_string())
            .send()
            .await
            .with_context(|| what.clone())?;
        let scale: Value = check(resp, &what).await?.json().await?;
        Ok(scale["spec"]["replicas"].as_u64().map(|v| v as u32).unwrap_or(n))
    }
}
