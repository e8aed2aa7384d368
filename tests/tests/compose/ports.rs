//! Check (3): host ports. Reads every published port (short and long syntax, ranges)
//! and finds two services, or the replicas of one, publishing the same host port.

use crate::addresses::host_port;
use crate::model::{parse_yaml, Compose, Port, Service};

/// One host port a service publishes.
#[derive(Debug, Clone)]
pub struct Published {
    pub service: String,
    /// Host interface; empty = every interface.
    pub ip: String,
    pub port: u16,
    pub proto: String,
    /// The entry as written, for messages.
    pub spec: String,
}

fn port_range(s: &str) -> Result<Vec<u16>, String> {
    let parse = |p: &str| {
        p.trim()
            .parse::<u16>()
            .map_err(|_| format!("`{p}` is not a port"))
    };
    match s.split_once('-') {
        Some((a, b)) => {
            let (a, b) = (parse(a)?, parse(b)?);
            if a > b {
                return Err(format!("range `{s}` runs backwards"));
            }
            Ok((a..=b).collect())
        }
        None => Ok(vec![parse(s)?]),
    }
}

/// A published port entry, before its host port (range) is read.
struct Entry {
    ip: String,
    /// `None`: the container port is not published on the host (or on an ephemeral one).
    host: Option<String>,
    proto: String,
    spec: String,
}

/// Short syntax `C`, `H:C`, `IP:H:C`, `[v6]:H:C`, each with optional `/proto`.
fn short_entry(spec: &str) -> Result<Entry, String> {
    let (body, proto) = spec.split_once('/').unwrap_or((spec, "tcp"));
    let (ip, rest) = if let Some(v6) = body.strip_prefix('[') {
        let (ip, rest) = v6
            .split_once("]:")
            .ok_or_else(|| format!("bad port spec `{spec}`"))?;
        (ip.to_string(), rest.to_string())
    } else {
        let parts: Vec<&str> = body.split(':').collect();
        match parts.len() {
            1 | 2 => (String::new(), body.to_string()),
            3 => (parts[0].to_string(), format!("{}:{}", parts[1], parts[2])),
            _ => return Err(format!("bad port spec `{spec}`")),
        }
    };
    Ok(Entry {
        ip,
        host: rest.split_once(':').map(|(h, _)| h.to_string()),
        proto: proto.to_string(),
        spec: spec.to_string(),
    })
}

fn entry(port: &Port) -> Result<Entry, String> {
    match port {
        Port::Long(p) => Ok(Entry {
            ip: p.host_ip.as_ref().map(|t| t.0.clone()).unwrap_or_default(),
            host: p.published.as_ref().map(|t| t.0.clone()),
            proto: p
                .protocol
                .as_ref()
                .map_or_else(|| "tcp".into(), |t| t.0.clone()),
            spec: format!("{p:?}"),
        }),
        Port::Short(spec) => short_entry(spec.as_str()),
    }
}

/// Host ports a service publishes, and the entries that could not be read.
pub fn published_ports(name: &str, svc: &Service) -> (Vec<Published>, Vec<String>) {
    let mut out = Vec::new();
    let mut problems = Vec::new();
    for port in &svc.ports {
        let e = match entry(port) {
            Ok(e) => e,
            Err(why) => {
                problems.push(format!("service `{name}`: {why}"));
                continue;
            }
        };
        let Some(host) = e.host.filter(|h| !h.is_empty()) else {
            continue; // not published / ephemeral
        };
        match port_range(&host) {
            Ok(ports) => out.extend(ports.into_iter().map(|port| Published {
                service: name.to_string(),
                ip: e.ip.clone(),
                port,
                proto: e.proto.clone(),
                spec: e.spec.clone(),
            })),
            Err(why) => problems.push(format!("service `{name}`: port spec `{}`: {why}", e.spec)),
        }
    }
    (out, problems)
}

/// The container ports a service's `ports:` entries map to.
pub fn container_ports(svc: &Service) -> Vec<String> {
    svc.ports
        .iter()
        .filter_map(|p| match p {
            Port::Long(p) => p.target.as_ref().map(|t| t.0.clone()),
            Port::Short(s) => {
                let body = s.as_str().split('/').next().unwrap_or("");
                body.rsplit(':').next().map(str::to_string)
            }
        })
        .collect()
}

/// (3) No host port is published twice (by two services, or by the replicas of one).
pub fn check_host_ports(doc: &Compose) -> Vec<String> {
    let wildcard = |ip: &str| ip.is_empty() || ip == "0.0.0.0" || ip == "::";
    let mut problems = Vec::new();
    let mut all: Vec<Published> = Vec::new();
    for (name, svc) in &doc.services {
        let (ports, bad) = published_ports(name, svc);
        problems.extend(bad);
        let replicas = svc.replicas();
        if replicas > 1 && !ports.is_empty() {
            problems.push(format!(
                "service `{name}` runs {replicas} replicas but publishes fixed host port(s) \
                 {:?}: replicas would collide",
                ports.iter().map(|p| p.port).collect::<Vec<_>>()
            ));
        }
        all.extend(ports);
    }
    for (i, a) in all.iter().enumerate() {
        for b in &all[i + 1..] {
            if a.port == b.port
                && a.proto == b.proto
                && (a.ip == b.ip || wildcard(&a.ip) || wildcard(&b.ip))
            {
                problems.push(format!(
                    "host port {}/{} is published twice: by `{}` (`{}`) and by `{}` (`{}`)",
                    a.port, a.proto, a.service, a.spec, b.service, b.spec
                ));
            }
        }
    }
    problems
}

#[test]
fn port_and_address_parsers() {
    let svc: Service = parse_yaml(
        r#"ports: ["8080", "9000:9001", "127.0.0.1:6379:6379", "[::1]:4222:4222/udp",
                 "127.0.0.1::80", {target: 80, published: "8443", host_ip: 0.0.0.0,
                 protocol: tcp}, 5000]"#,
        "ports",
    );
    let (ports, bad) = published_ports("s", &svc);
    assert!(bad.is_empty(), "{bad:?}");
    let got: Vec<(String, u16, String)> =
        ports.into_iter().map(|p| (p.ip, p.port, p.proto)).collect();
    assert_eq!(
        got,
        vec![
            ("".into(), 9000, "tcp".into()),
            ("127.0.0.1".into(), 6379, "tcp".into()),
            ("::1".into(), 4222, "udp".into()),
            ("0.0.0.0".into(), 8443, "tcp".into()),
        ]
    );
    assert_eq!(
        container_ports(&svc),
        ["8080", "9001", "6379", "4222", "80", "80", "5000"]
    );
    let bad: Service = parse_yaml(r#"ports: ["1:2:3:4", "[::1]4222", "9-8:1"]"#, "ports");
    let (ports, problems) = published_ports("s", &bad);
    assert!(ports.is_empty(), "{ports:?}");
    assert_eq!(problems.len(), 3, "{problems:?}");
    assert!(problems[2].contains("runs backwards"), "{problems:?}");

    assert_eq!(
        host_port("nats://user:pw@nats:4222"),
        Some(("nats".into(), Some(4222)))
    );
    assert_eq!(
        host_port("redis://redis:6379/0"),
        Some(("redis".into(), Some(6379)))
    );
    assert_eq!(
        host_port("PLAINTEXT://kafka:19092"),
        Some(("kafka".into(), Some(19092)))
    );
    assert_eq!(
        host_port("0.0.0.0:8083"),
        Some(("0.0.0.0".into(), Some(8083)))
    );
    assert_eq!(host_port("[::]:8083"), Some(("::".into(), Some(8083))));
}
