//! Checks (1), (5)-(7) and the volume and Kafka checks: each returns the problems it
//! found in a compose document (empty = fine).

use std::collections::BTreeSet;
use std::path::Path;

use crate::addresses::{addresses, host_port, scrape_targets, Kind, ScrapeTarget};
use crate::model::{argv, words, Compose, Condition, Prometheus, Service, Volume};
use crate::ports::{container_ports, published_ports};

/// (1) Every service has an image or something to build it from.
pub fn check_image_or_build(doc: &Compose) -> Vec<String> {
    let mut problems = Vec::new();
    if doc.services.is_empty() {
        problems.push("docker-compose.yml has no `services:`".to_string());
    }
    for (name, svc) in &doc.services {
        if svc.image.is_none() && svc.build.is_none() {
            problems.push(format!(
                "service `{name}` has neither `image:` nor `build:`"
            ));
        }
        if svc.build.as_ref().is_some_and(|b| b.context().is_none()) {
            problems.push(format!("service `{name}`: `build:` has no context"));
        }
    }
    problems
}

/// (5) depends_on names services, waits only for what can become healthy or complete,
/// and a default service does not require one that runs only under a profile.
pub fn check_depends_on(doc: &Compose) -> Vec<String> {
    let mut problems = Vec::new();
    for (name, svc) in &doc.services {
        for (target, dep) in svc.depends_on() {
            let Some(t) = doc.service(&target) else {
                problems.push(format!(
                    "service `{name}` depends_on `{target}`, which is not a service in the file"
                ));
                continue;
            };
            match &dep.condition {
                Condition::Started => {}
                Condition::Healthy => {
                    if t.healthcheck_text().is_none() {
                        problems.push(format!(
                            "service `{name}` waits for `{target}` to be service_healthy, but \
                             `{target}` has no healthcheck"
                        ));
                    }
                }
                Condition::CompletedSuccessfully => {
                    let restart = t.restart.as_ref().map_or("no", |r| r.as_str());
                    if restart != "no" && restart != "on-failure" {
                        problems.push(format!(
                            "service `{name}` waits for `{target}` to complete, but `{target}` \
                             has restart: {restart} (a one-shot must not restart)"
                        ));
                    }
                }
                Condition::Unknown(other) => problems.push(format!(
                    "service `{name}` depends_on `{target}` with unknown condition `{other}`"
                )),
            }
            if dep.required && svc.profiles().is_empty() && !t.profiles().is_empty() {
                problems.push(format!(
                    "service `{name}` (no profile) depends_on `{target}`, which only runs under \
                     profile(s) {:?}",
                    t.profiles()
                ));
            }
        }
    }
    problems
}

fn reserves_nvidia_gpu(svc: &Service) -> bool {
    svc.devices().iter().any(|d| {
        let nvidia = d.driver.as_deref() == Some("nvidia");
        let gpu = d.capabilities.iter().any(|c| c.as_str() == "gpu");
        let some = match d.count.as_ref().map(|c| c.as_str()) {
            Some("all") => true,
            Some(n) => n.parse::<u64>().is_ok_and(|n| n >= 1),
            None => d.device_ids.is_some(),
        };
        nvidia && gpu && some
    })
}

/// A worker service can be scaled with `--scale` and every replica scraped.
fn check_scalable(name: &str, svc: &Service, problems: &mut Vec<String>) {
    if !svc.ports.is_empty() {
        problems.push(format!(
            "service `{name}` publishes host ports, so `docker compose up --scale {name}=N` \
             would collide"
        ));
    }
    if svc.container_name.is_some() {
        problems.push(format!(
            "service `{name}` sets container_name, so it cannot be scaled"
        ));
    }
    let http_port = svc
        .env_var("AIFAB_HTTP_ADDR")
        .and_then(|a| host_port(&a))
        .and_then(|(_, p)| p);
    if let Some(port) = http_port {
        if !svc.expose().contains(&port.to_string()) {
            problems.push(format!(
                "service `{name}` does not `expose` its metrics port {port}"
            ));
        }
    }
}

/// (6) A CPU worker runs by default; the GPU worker is opt-in (profile `gpu`), reserves
/// an NVIDIA GPU and runs on CUDA; both scale.
pub fn check_gpu_worker(doc: &Compose) -> Vec<String> {
    let mut problems = Vec::new();
    match doc.service("inference-worker") {
        None => problems.push("no `inference-worker` service (the CPU worker)".to_string()),
        Some(svc) => {
            if !svc.profiles().is_empty() {
                problems.push(format!(
                    "`inference-worker` is under profile(s) {:?}; the CPU worker runs by default",
                    svc.profiles()
                ));
            }
            if let Some(dev) = svc.env_var("AIFAB_DEVICE").filter(|d| d != "cpu") {
                problems.push(format!(
                    "`inference-worker` runs on AIFAB_DEVICE={dev}; the default worker runs on cpu"
                ));
            }
            check_scalable("inference-worker", svc, &mut problems);
        }
    }
    match doc.service("inference-worker-gpu") {
        None => problems.push(
            "no `inference-worker-gpu` service (the GPU worker under profile `gpu`)".to_string(),
        ),
        Some(svc) => {
            if !svc.profiles().iter().any(|p| p == "gpu") {
                problems.push(format!(
                    "`inference-worker-gpu` must be under profile `gpu` (so hosts without GPUs \
                     can `up`), has {:?}",
                    svc.profiles()
                ));
            }
            if !reserves_nvidia_gpu(svc) {
                problems.push(
                    "`inference-worker-gpu` does not reserve an NVIDIA GPU (deploy.resources.\
                     reservations.devices: [{driver: nvidia, count: 1, capabilities: [gpu]}])"
                        .to_string(),
                );
            }
            if !svc
                .env_var("AIFAB_DEVICE")
                .is_some_and(|d| d.starts_with("cuda"))
            {
                problems
                    .push("`inference-worker-gpu` does not set AIFAB_DEVICE=cuda:N".to_string());
            }
            check_scalable("inference-worker-gpu", svc, &mut problems);
        }
    }
    // Any service that asks for CUDA must get a GPU, and GPU services stay opt-in.
    for (name, svc) in &doc.services {
        let cuda = svc
            .env_var("AIFAB_DEVICE")
            .is_some_and(|d| d.starts_with("cuda"));
        if cuda && !reserves_nvidia_gpu(svc) {
            problems.push(format!(
                "service `{name}` sets AIFAB_DEVICE=cuda:* but reserves no NVIDIA GPU"
            ));
        }
        if reserves_nvidia_gpu(svc) && svc.profiles().is_empty() {
            problems.push(format!(
                "service `{name}` reserves a GPU but is not under a profile: `up` fails on \
                 hosts without one"
            ));
        }
    }
    problems.sort();
    problems.dedup();
    problems
}

/// (7) Every aifab service listens on 0.0.0.0:<port> (AIFAB_HTTP_ADDR), its healthcheck
/// probes its ops port (AIFAB_OPS_ADDR, else that one), any published port maps to the
/// HTTP port, and Prometheus scrapes `<service>:<ops port>` (through DNS discovery for
/// scalable workers, so every replica is). A service published beyond loopback (ingest's
/// public API) keeps its ops routes on a port of their own.
pub fn check_metrics_scraped(doc: &Compose, prom: &Prometheus) -> Vec<String> {
    let targets = scrape_targets(prom);
    let mut problems = Vec::new();
    for (name, svc) in &doc.services {
        let Some(prog) = svc.program().filter(|p| p.starts_with("aifab-")) else {
            continue;
        };
        let Some(addr) = svc.env_var("AIFAB_HTTP_ADDR") else {
            problems.push(format!(
                "service `{name}` ({prog}) does not set AIFAB_HTTP_ADDR: it would listen on its \
                 loopback default, out of Prometheus' reach"
            ));
            continue;
        };
        let Some((ip, Some(port))) = host_port(&addr) else {
            problems.push(format!(
                "service `{name}`: AIFAB_HTTP_ADDR=`{addr}` is not host:port"
            ));
            continue;
        };
        if !["0.0.0.0", "::", ""].contains(&ip.as_str()) {
            problems.push(format!(
                "service `{name}`: AIFAB_HTTP_ADDR={addr} binds {ip}; in a container it must \
                 be 0.0.0.0:{port} to be scraped"
            ));
        }
        let http_port = port;
        let public = published_ports(name, svc)
            .0
            .iter()
            .any(|p| !["127.0.0.1", "::1", "[::1]"].contains(&p.ip.as_str()));
        if public && prog != "aifab-ingest" {
            problems.push(format!(
                "service `{name}` publishes a port beyond loopback: only ingest's API may be"
            ));
        }
        let port = match svc.env_var("AIFAB_OPS_ADDR").as_deref().map(host_port) {
            Some(Some((_, Some(ops)))) if ops != http_port => ops,
            Some(_) => {
                problems.push(format!(
                    "service `{name}`: AIFAB_OPS_ADDR is not host:port apart from the API's"
                ));
                continue;
            }
            None if public => {
                problems.push(format!(
                    "service `{name}` publishes its API beyond loopback with /metrics and \
                     /readyz on it: set AIFAB_OPS_ADDR to a port of their own"
                ));
                http_port
            }
            None => http_port,
        };
        match svc.healthcheck_text() {
            None => problems.push(format!("service `{name}` ({prog}) has no healthcheck")),
            Some(hc) if !hc.contains(&format!(":{port}")) && !hc.contains(&format!("/{port}")) => {
                problems.push(format!(
                    "service `{name}`: healthcheck `{hc}` does not probe its port {port}"
                ))
            }
            Some(_) => {}
        }
        let containers = container_ports(svc);
        if !svc.ports.is_empty() && !containers.contains(&http_port.to_string()) {
            problems.push(format!(
                "service `{name}` publishes container port(s) {containers:?}, none of which is \
                 its HTTP port {http_port}"
            ));
        }
        let scraped: Vec<&ScrapeTarget> = targets
            .iter()
            .filter(|t| t.host == *name && t.port == Some(port))
            .collect();
        if scraped.is_empty() {
            problems.push(format!(
                "service `{name}` ({prog}) serves /metrics on :{port}, but \
                 deploy/prometheus/prometheus.yml does not scrape `{name}:{port}`"
            ));
        } else if name.contains("worker") && !scraped.iter().any(|t| t.dns) {
            problems.push(format!(
                "service `{name}` is scaled with --scale, but Prometheus scrapes it as a static \
                 target (one replica at random); use dns_sd_configs (type A) so every replica \
                 is scraped"
            ));
        }
    }
    problems
}

/// How a service mounts something.
#[derive(Debug, PartialEq, Eq)]
enum Mount {
    Named(String),
    Bind(String),
    /// Anonymous volumes, tmpfs and the like: nothing to check.
    Other,
}

fn mount(v: &Volume) -> Mount {
    match v {
        Volume::Long { kind, source } => {
            let source = source.as_ref().map(|s| s.0.clone()).unwrap_or_default();
            match kind.as_deref().unwrap_or("volume") {
                "volume" if !source.is_empty() => Mount::Named(source),
                "bind" => Mount::Bind(source),
                _ => Mount::Other,
            }
        }
        Volume::Short(s) => match s.as_str().split_once(':') {
            None => Mount::Other, // anonymous volume
            Some((src, _)) if src.starts_with(['.', '/', '~']) => Mount::Bind(src.to_string()),
            Some((src, _)) => Mount::Named(src.to_string()),
        },
    }
}

/// Named volumes are declared at the top level; bind-mounted host paths exist.
pub fn check_volumes(doc: &Compose, root: &Path) -> Vec<String> {
    let mut problems = Vec::new();
    for (name, svc) in &doc.services {
        for v in &svc.volumes {
            match mount(v) {
                Mount::Named(source) if !doc.volumes.contains_key(&source) => {
                    problems.push(format!(
                        "service `{name}` mounts named volume `{source}`, which is not declared \
                         under top-level `volumes:`"
                    ))
                }
                Mount::Bind(source) if source.starts_with('.') && !root.join(&source).exists() => {
                    problems.push(format!(
                        "service `{name}` bind-mounts `{source}`, which does not exist in the \
                         repository"
                    ))
                }
                _ => {}
            }
        }
    }
    problems
}

/// The topic-creating one-shot creates every topic of `aifab_core::topics::TOPICS` with
/// its partition count, idempotently; every Kafka client waits for it; and the single
/// broker can run transactions (internal topics with replication factor 1).
pub fn check_kafka(doc: &Compose, topics: &[(&str, i32)]) -> Vec<String> {
    let mut problems = Vec::new();
    let creators: Vec<(&String, &Service)> = doc
        .services
        .iter()
        .filter(|(_, svc)| {
            words(svc.command.as_ref())
                .iter()
                .chain(&words(svc.entrypoint.as_ref()))
                .any(|w| w.ends_with("kafka-topics.sh"))
        })
        .filter(|(_, svc)| argv(svc.command.as_ref()).join(" ").contains("--create"))
        .collect();
    let [(creator, init)] = creators.as_slice() else {
        problems.push(format!(
            "expected exactly one one-shot service creating topics with kafka-topics.sh \
             --create, found {:?}",
            creators.iter().map(|(n, _)| n).collect::<Vec<_>>()
        ));
        return problems;
    };
    let script = argv(init.command.as_ref()).join("\n");
    if !script.contains("--if-not-exists") {
        problems.push(format!(
            "`{creator}` creates topics without --if-not-exists: a restart of the stack would fail"
        ));
    }
    for (topic, partitions) in topics {
        let found = script.lines().any(|line| {
            let ws: BTreeSet<&str> = line
                .split_whitespace()
                .map(|w| w.trim_matches(|c: char| "\"'".contains(c)))
                .collect();
            ws.contains(topic) && ws.contains(partitions.to_string().as_str())
        });
        if !found {
            problems.push(format!(
                "`{creator}` does not create topic `{topic}` with {partitions} partition(s) (as \
                 in aifab_core::topics::TOPICS)"
            ));
        }
    }
    for a in addresses(doc).iter().filter(|a| a.kind == Kind::Kafka) {
        if a.service == **creator || a.service == a.host {
            continue;
        }
        let deps = doc
            .service(&a.service)
            .map(|s| s.depends_on())
            .unwrap_or_default();
        if deps.get(creator.as_str()).map(|d| &d.condition)
            != Some(&Condition::CompletedSuccessfully)
        {
            problems.push(format!(
                "service `{}` uses Kafka but does not depend_on `{creator}` with condition \
                 service_completed_successfully",
                a.service
            ));
        }
    }
    for (name, svc) in &doc.services {
        if svc.env_var("KAFKA_PROCESS_ROLES").is_none() {
            continue;
        }
        for key in [
            "KAFKA_OFFSETS_TOPIC_REPLICATION_FACTOR",
            "KAFKA_TRANSACTION_STATE_LOG_REPLICATION_FACTOR",
            "KAFKA_TRANSACTION_STATE_LOG_MIN_ISR",
        ] {
            if svc.env_var(key).as_deref() != Some("1") {
                problems.push(format!(
                    "single-node broker `{name}` needs {key}=1 (found {:?}): transactions and \
                     consumer groups hang otherwise",
                    svc.env_var(key)
                ));
            }
        }
    }
    problems.sort();
    problems.dedup();
    problems
}

pub fn core_topics() -> Vec<(&'static str, i32)> {
    aifab_core::topics::TOPICS
        .iter()
        .map(|t| (t.name, t.partitions))
        .collect()
}
