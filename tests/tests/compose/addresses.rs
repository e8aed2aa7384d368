//! Addresses: the brokers, NATS and Redis servers services name, and Prometheus' scrape
//! targets; check (2) that each names a service of the file the right way.

use crate::model::{words, Compose, Prometheus};

/// `host:port` / `scheme://[user@]host:port[/path]` / `[v6]:port` -> (host, port).
pub fn host_port(addr: &str) -> Option<(String, Option<u16>)> {
    let addr = addr.trim().trim_matches(|c: char| "\"'".contains(c));
    let addr = addr.split_once("://").map_or(addr, |(_, rest)| rest);
    let addr = addr.rsplit_once('@').map_or(addr, |(_, rest)| rest);
    let addr = addr.split(['/', '?']).next().unwrap_or("");
    if addr.is_empty() {
        return None;
    }
    if let Some(v6) = addr.strip_prefix('[') {
        let (host, rest) = v6.split_once(']')?;
        return Some((
            host.to_string(),
            rest.strip_prefix(':').and_then(|p| p.parse().ok()),
        ));
    }
    match addr.rsplit_once(':') {
        Some((h, p)) => Some((h.to_string(), p.parse().ok())),
        None => Some((addr.to_string(), None)),
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Kafka,
    Nats,
    Redis,
}

#[derive(Debug, Clone)]
pub struct Address {
    pub kind: Kind,
    pub host: String,
    pub port: Option<u16>,
    /// Which service, and where in it, e.g. "ingest: AIFAB_KAFKA_BROKERS".
    pub origin: String,
    pub service: String,
}

fn url_kind(word: &str) -> Option<Kind> {
    let w = word.trim_matches(|c: char| "\"'".contains(c));
    if w.starts_with("nats://") {
        Some(Kind::Nats)
    } else if w.starts_with("redis://") || w.starts_with("rediss://") {
        Some(Kind::Redis)
    } else {
        None
    }
}

/// The kind of address an `AIFAB_*` variable holds (other variables may hold URLs).
fn env_kind(key: &str) -> Option<Kind> {
    match key {
        "AIFAB_KAFKA_BROKERS" => Some(Kind::Kafka),
        "AIFAB_NATS_URL" => Some(Kind::Nats),
        "AIFAB_REDIS_URL" => Some(Kind::Redis),
        _ => None,
    }
}

/// Every Kafka / NATS / Redis address a service names in its environment or command.
pub fn addresses(doc: &Compose) -> Vec<Address> {
    let mut out = Vec::new();
    for (name, svc) in &doc.services {
        let mut push = |kind: Kind, raw: &str, origin: String| {
            if let Some((host, port)) = host_port(raw) {
                out.push(Address {
                    kind,
                    host,
                    port,
                    origin,
                    service: name.clone(),
                });
            }
        };
        for (key, value) in svc.env() {
            let Some(value) = value else { continue };
            for w in value.split([',', ' ']).filter(|s| !s.is_empty()) {
                if let Some(kind) = env_kind(&key).or_else(|| url_kind(w)) {
                    push(kind, w, format!("{name}: {key}"));
                }
            }
        }
        for (field, v) in [("entrypoint", &svc.entrypoint), ("command", &svc.command)] {
            let ws = words(v.as_ref());
            for (i, w) in ws.iter().enumerate() {
                let flag_value = |flag: &str| {
                    if w == flag {
                        ws.get(i + 1).cloned()
                    } else {
                        w.strip_prefix(&format!("{flag}=")).map(str::to_string)
                    }
                };
                for flag in ["--bootstrap-server", "--bootstrap-servers", "--broker-list"] {
                    if let Some(v) = flag_value(flag) {
                        for a in v.split(',') {
                            push(Kind::Kafka, a, format!("{name}: {field} {flag}"));
                        }
                    }
                }
                if let Some(kind) = url_kind(w) {
                    push(kind, w, format!("{name}: {field}"));
                }
            }
        }
    }
    out
}

#[derive(Debug, Clone)]
pub struct ScrapeTarget {
    pub job: String,
    pub host: String,
    pub port: Option<u16>,
    /// Found through DNS service discovery (every replica), not a static target.
    pub dns: bool,
}

pub fn scrape_targets(prom: &Prometheus) -> Vec<ScrapeTarget> {
    let mut out = Vec::new();
    for sc in &prom.scrape_configs {
        let job = sc.job_name.as_str();
        for t in sc.static_configs.iter().flat_map(|st| &st.targets) {
            if let Some((host, port)) = host_port(t.as_str()) {
                out.push(ScrapeTarget {
                    job: job.to_string(),
                    host,
                    port,
                    dns: false,
                });
            }
        }
        for dc in &sc.dns_sd_configs {
            let port = dc.port.as_ref().and_then(|p| p.as_str().parse().ok());
            for n in &dc.names {
                out.push(ScrapeTarget {
                    job: job.to_string(),
                    host: n.as_str().to_string(),
                    port,
                    dns: true,
                });
            }
        }
    }
    out
}

/// (2) Every broker / NATS / Redis host a service names, and every Prometheus target,
/// is a service of the file; Kafka clients use the listener the broker advertises under
/// its service name; and a service depends_on every host it talks to.
pub fn check_addresses(doc: &Compose, prom: &Prometheus) -> Vec<String> {
    let known = doc.services.keys().cloned().collect::<Vec<_>>().join(", ");
    let mut problems = Vec::new();
    for a in addresses(doc) {
        let Some(target) = doc.service(&a.host) else {
            let shown = match a.port {
                Some(p) => format!("{}:{p}", a.host),
                None => a.host.clone(),
            };
            problems.push(format!(
                "{}: {:?} address `{shown}` names host `{}`, which is not a service in \
                 docker-compose.yml (services: {known})",
                a.origin, a.kind, a.host
            ));
            continue;
        };
        if a.host == a.service {
            continue; // a broker's own healthcheck/tools talking to itself
        }
        if a.kind == Kind::Kafka {
            // A client bootstraps on any listener but then connects to the advertised
            // address of that listener: it must be the one named after the service.
            if let (Some(adv), Some(port)) = (target.env_var("KAFKA_ADVERTISED_LISTENERS"), a.port)
            {
                let in_stack: Vec<u16> = adv
                    .split(',')
                    .filter_map(host_port)
                    .filter(|(h, _)| *h == a.host)
                    .filter_map(|(_, p)| p)
                    .collect();
                if !in_stack.contains(&port) {
                    problems.push(format!(
                        "{}: Kafka address `{}:{port}` is not a listener that `{}` advertises \
                         under its service name (KAFKA_ADVERTISED_LISTENERS={adv}); containers \
                         must use one of {:?}",
                        a.origin, a.host, a.host, in_stack
                    ));
                }
            }
        }
        let deps = doc
            .service(&a.service)
            .map(|s| s.depends_on())
            .unwrap_or_default();
        if !deps.contains_key(&a.host) {
            problems.push(format!(
                "{}: talks to `{}` but `{}` has no depends_on `{}` (it may start before it is up)",
                a.origin, a.host, a.service, a.host
            ));
        }
    }
    for t in scrape_targets(prom) {
        if doc.service(&t.host).is_none() {
            problems.push(format!(
                "prometheus.yml job `{}`: target host `{}` is not a service in \
                 docker-compose.yml (services: {known})",
                t.job, t.host
            ));
        }
    }
    problems.sort();
    problems.dedup();
    problems
}
