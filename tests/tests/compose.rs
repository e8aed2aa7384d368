//! Static checks of the production stack, no Docker engine needed: `docker-compose.yml`,
//! the `Dockerfile`, `deploy/prometheus/prometheus.yml` and the workspace manifests.
//!
//! Each check is a function returning the problems it found (empty = fine), so the same
//! functions run on the real files and, in `checker_reports_a_broken_stack`, on a small
//! broken stack to prove they can fail.
//!
//! Run: `cargo test -p aifab-tests --test compose`

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use serde_yaml::Value;

const COMPOSE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../docker-compose.yml");
const PROMETHEUS: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../deploy/prometheus/prometheus.yml"
);
const DOCKERFILE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../Dockerfile");

/// The workspace root (where docker-compose.yml lives).
fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

// ------------------------------------------------------------------------------------
// Loading

/// Parses YAML and resolves `<<:` merge keys the way docker compose does.
fn parse_yaml(text: &str, what: &str) -> Value {
    let mut doc: Value =
        serde_yaml::from_str(text).unwrap_or_else(|e| panic!("{what} is not valid YAML: {e}"));
    doc.apply_merge()
        .unwrap_or_else(|e| panic!("{what}: bad `<<` merge key: {e}"));
    doc
}

fn read(path: &str) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("cannot read {path}: {e}"))
}

/// Everything the checks look at, from the real files.
struct Stack {
    compose: Value,
    prometheus: Value,
    dockerfile: String,
    bins: BTreeSet<String>,
}

fn stack() -> Stack {
    Stack {
        compose: parse_yaml(&read(COMPOSE), "docker-compose.yml"),
        prometheus: parse_yaml(&read(PROMETHEUS), "deploy/prometheus/prometheus.yml"),
        dockerfile: read(DOCKERFILE),
        bins: workspace_binaries(&root()),
    }
}

fn assert_clean(what: &str, problems: Vec<String>) {
    assert!(
        problems.is_empty(),
        "{what}: {} problem(s) in docker-compose.yml / deploy/ / Dockerfile:\n  - {}",
        problems.len(),
        problems.join("\n  - ")
    );
}

// ------------------------------------------------------------------------------------
// Small accessors over serde_yaml::Value

/// `services:` as (name, definition), in file order.
fn services(doc: &Value) -> Vec<(String, &Value)> {
    doc.get("services")
        .and_then(Value::as_mapping)
        .map(|m| {
            m.iter()
                .filter_map(|(k, v)| Some((k.as_str()?.to_string(), v)))
                .collect()
        })
        .unwrap_or_default()
}

fn service_names(doc: &Value) -> BTreeSet<String> {
    services(doc).into_iter().map(|(n, _)| n).collect()
}

fn service<'a>(doc: &'a Value, name: &str) -> Option<&'a Value> {
    doc.get("services")?.get(name)
}

/// A scalar as text (compose accepts numbers and booleans where it means strings).
fn scalar(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

/// `environment:` in either form (map, or list of `K=V`); `None` = passed from the host.
fn env(svc: &Value) -> BTreeMap<String, Option<String>> {
    let mut out = BTreeMap::new();
    match svc.get("environment") {
        Some(Value::Mapping(m)) => {
            for (k, v) in m {
                if let Some(k) = k.as_str() {
                    out.insert(k.to_string(), scalar(v));
                }
            }
        }
        Some(Value::Sequence(items)) => {
            for item in items.iter().filter_map(Value::as_str) {
                match item.split_once('=') {
                    Some((k, v)) => out.insert(k.to_string(), Some(v.to_string())),
                    None => out.insert(item.to_string(), None),
                };
            }
        }
        _ => {}
    }
    out
}

fn env_var(svc: &Value, key: &str) -> Option<String> {
    env(svc).remove(key).flatten()
}

/// `command:`/`entrypoint:` as argv: a list as is, a string split on whitespace.
fn argv(v: Option<&Value>) -> Vec<String> {
    match v {
        Some(Value::String(s)) => s.split_whitespace().map(str::to_string).collect(),
        Some(Value::Sequence(items)) => items.iter().filter_map(scalar).collect(),
        _ => Vec::new(),
    }
}

/// Every whitespace-separated word of a command, entrypoint or healthcheck, including
/// words inside inline shell scripts, with quotes and shell punctuation trimmed.
fn words(v: Option<&Value>) -> Vec<String> {
    argv(v)
        .iter()
        .flat_map(|a| a.split_whitespace().map(str::to_string).collect::<Vec<_>>())
        .map(|w| w.trim_matches(|c: char| "\"'`;,()".contains(c)).to_string())
        .filter(|w| !w.is_empty())
        .collect()
}

/// The program a service runs: the compose `entrypoint` if it sets one, else the first
/// word of `command` (the images' own entrypoint is tini, which execs the command).
fn program(svc: &Value) -> Option<String> {
    let ep = argv(svc.get("entrypoint"));
    let first = if ep.is_empty() {
        argv(svc.get("command")).into_iter().next()
    } else {
        ep.into_iter().next()
    };
    first.map(|p| p.rsplit('/').next().unwrap_or(&p).to_string())
}

/// The program a healthcheck runs (`CMD prog ...`, `CMD-SHELL "prog ..."`, or a string).
fn healthcheck_program(svc: &Value) -> Option<String> {
    let test = argv(svc.get("healthcheck").and_then(|h| h.get("test")));
    let cmd = match test.first().map(String::as_str) {
        Some("CMD") => test.get(1).cloned(),
        Some("CMD-SHELL") => test
            .get(1)
            .and_then(|s| s.split_whitespace().next().map(str::to_string)),
        Some("NONE") | None => None,
        Some(_) => test.first().cloned(),
    }?;
    Some(cmd.rsplit('/').next().unwrap_or(&cmd).to_string())
}

fn healthcheck_text(svc: &Value) -> Option<String> {
    let hc = svc.get("healthcheck")?;
    if hc.get("disable").and_then(Value::as_bool) == Some(true) {
        return None;
    }
    let test = argv(hc.get("test"));
    if test.is_empty() || test[0] == "NONE" {
        return None;
    }
    Some(test.join(" "))
}

fn profiles(svc: &Value) -> Vec<String> {
    svc.get("profiles")
        .and_then(Value::as_sequence)
        .map(|s| s.iter().filter_map(scalar).collect())
        .unwrap_or_default()
}

fn string_list(v: Option<&Value>) -> Vec<String> {
    match v {
        Some(Value::Sequence(items)) => items.iter().filter_map(scalar).collect(),
        Some(v) => scalar(v).into_iter().collect(),
        None => Vec::new(),
    }
}

/// `depends_on:` (list or map form) as target -> (condition, required).
fn depends_on(svc: &Value) -> BTreeMap<String, (String, bool)> {
    let mut out = BTreeMap::new();
    match svc.get("depends_on") {
        Some(Value::Sequence(items)) => {
            for t in items.iter().filter_map(Value::as_str) {
                out.insert(t.to_string(), ("service_started".to_string(), true));
            }
        }
        Some(Value::Mapping(m)) => {
            for (k, v) in m {
                let Some(k) = k.as_str() else { continue };
                let cond = v
                    .get("condition")
                    .and_then(Value::as_str)
                    .unwrap_or("service_started");
                let required = v.get("required").and_then(Value::as_bool).unwrap_or(true);
                out.insert(k.to_string(), (cond.to_string(), required));
            }
        }
        _ => {}
    }
    out
}

/// `host:port` / `scheme://[user@]host:port[/path]` / `[v6]:port` -> (host, port).
fn host_port(addr: &str) -> Option<(String, Option<u16>)> {
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

// ------------------------------------------------------------------------------------
// Addresses: brokers, NATS, Redis referenced by services; Prometheus targets

#[derive(Debug, Clone, PartialEq)]
enum Kind {
    Kafka,
    Nats,
    Redis,
}

#[derive(Debug, Clone)]
struct Address {
    kind: Kind,
    host: String,
    port: Option<u16>,
    /// Which service, and where in it, e.g. "ingest: AIFAB_KAFKA_BROKERS".
    origin: String,
    service: String,
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

/// Every Kafka / NATS / Redis address a service names in its environment or command.
fn addresses(doc: &Value) -> Vec<Address> {
    let mut out = Vec::new();
    for (name, svc) in services(doc) {
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
        for (key, value) in env(svc) {
            let Some(value) = value else { continue };
            let list = || {
                value
                    .split([',', ' '])
                    .filter(|s| !s.is_empty())
                    .collect::<Vec<_>>()
            };
            match key.as_str() {
                "AIFAB_KAFKA_BROKERS" => list()
                    .into_iter()
                    .for_each(|a| push(Kind::Kafka, a, format!("{name}: {key}"))),
                "AIFAB_NATS_URL" => list()
                    .into_iter()
                    .for_each(|a| push(Kind::Nats, a, format!("{name}: {key}"))),
                "AIFAB_REDIS_URL" => list()
                    .into_iter()
                    .for_each(|a| push(Kind::Redis, a, format!("{name}: {key}"))),
                _ => {
                    for w in list() {
                        if let Some(kind) = url_kind(w) {
                            push(kind, w, format!("{name}: {key}"));
                        }
                    }
                }
            }
        }
        for field in ["entrypoint", "command"] {
            let ws = words(svc.get(field));
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
struct ScrapeTarget {
    job: String,
    host: String,
    port: Option<u16>,
    /// Found through DNS service discovery (every replica), not a static target.
    dns: bool,
}

fn scrape_targets(prom: &Value) -> Vec<ScrapeTarget> {
    let mut out = Vec::new();
    let configs = prom
        .get("scrape_configs")
        .and_then(Value::as_sequence)
        .cloned()
        .unwrap_or_default();
    for sc in &configs {
        let job = sc.get("job_name").and_then(scalar).unwrap_or_default();
        for st in sc
            .get("static_configs")
            .and_then(Value::as_sequence)
            .into_iter()
            .flatten()
        {
            for t in string_list(st.get("targets")) {
                if let Some((host, port)) = host_port(&t) {
                    out.push(ScrapeTarget {
                        job: job.clone(),
                        host,
                        port,
                        dns: false,
                    });
                }
            }
        }
        for dc in sc
            .get("dns_sd_configs")
            .and_then(Value::as_sequence)
            .into_iter()
            .flatten()
        {
            let port = dc.get("port").and_then(scalar).and_then(|p| p.parse().ok());
            for n in string_list(dc.get("names")) {
                out.push(ScrapeTarget {
                    job: job.clone(),
                    host: n,
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
fn check_addresses(doc: &Value, prom: &Value) -> Vec<String> {
    let names = service_names(doc);
    let known = names.iter().cloned().collect::<Vec<_>>().join(", ");
    let mut problems = Vec::new();
    for a in addresses(doc) {
        if !names.contains(&a.host) {
            problems.push(format!(
                "{}: {:?} address `{}` names host `{}`, which is not a service in docker-compose.yml (services: {known})",
                a.origin,
                a.kind,
                match a.port {
                    Some(p) => format!("{}:{p}", a.host),
                    None => a.host.clone(),
                },
                a.host
            ));
            continue;
        }
        if a.host == a.service {
            continue; // a broker's own healthcheck/tools talking to itself
        }
        if a.kind == Kind::Kafka {
            // A client bootstraps on any listener but then connects to the advertised
            // address of that listener: it must be the one named after the service.
            if let Some(adv) =
                service(doc, &a.host).and_then(|s| env_var(s, "KAFKA_ADVERTISED_LISTENERS"))
            {
                let in_stack: Vec<u16> = adv
                    .split(',')
                    .filter_map(host_port)
                    .filter(|(h, _)| *h == a.host)
                    .filter_map(|(_, p)| p)
                    .collect();
                if let Some(port) = a.port {
                    if !in_stack.contains(&port) {
                        problems.push(format!(
                            "{}: Kafka address `{}:{port}` is not a listener that `{}` advertises under its service name \
                             (KAFKA_ADVERTISED_LISTENERS={adv}); containers must use one of {:?}",
                            a.origin, a.host, a.host, in_stack
                        ));
                    }
                }
            }
        }
        let deps = service(doc, &a.service).map(depends_on).unwrap_or_default();
        if !deps.contains_key(&a.host) {
            problems.push(format!(
                "{}: talks to `{}` but `{}` has no depends_on `{}` (it may start before it is up)",
                a.origin, a.host, a.service, a.host
            ));
        }
    }
    for t in scrape_targets(prom) {
        if !names.contains(&t.host) {
            problems.push(format!(
                "prometheus.yml job `{}`: target host `{}` is not a service in docker-compose.yml (services: {known})",
                t.job, t.host
            ));
        }
    }
    problems.sort();
    problems.dedup();
    problems
}

// ------------------------------------------------------------------------------------
// (1) image or build

fn check_image_or_build(doc: &Value) -> Vec<String> {
    let mut problems = Vec::new();
    if services(doc).is_empty() {
        problems.push("docker-compose.yml has no `services:`".to_string());
    }
    for (name, svc) in services(doc) {
        if svc.get("image").is_none() && svc.get("build").is_none() {
            problems.push(format!(
                "service `{name}` has neither `image:` nor `build:`"
            ));
        }
        if let Some(build) = svc.get("build") {
            if build.get("context").is_none() && build.as_str().is_none() {
                problems.push(format!("service `{name}`: `build:` has no context"));
            }
        }
    }
    problems
}

// ------------------------------------------------------------------------------------
// (3) Host ports

#[derive(Debug, Clone)]
struct Published {
    service: String,
    ip: String,
    port: u16,
    proto: String,
    spec: String,
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

/// Host ports a service publishes: short syntax `C`, `H:C`, `IP:H:C`, `[v6]:H:C`, each
/// with optional `/proto` and ranges; long syntax `{target, published, host_ip, protocol}`.
fn published_ports(name: &str, svc: &Value) -> (Vec<Published>, Vec<String>) {
    let mut out = Vec::new();
    let mut problems = Vec::new();
    for entry in svc
        .get("ports")
        .and_then(Value::as_sequence)
        .into_iter()
        .flatten()
    {
        let (ip, host, proto, spec) = match entry {
            Value::Mapping(_) => {
                let ip = entry.get("host_ip").and_then(scalar).unwrap_or_default();
                let host = entry.get("published").and_then(scalar);
                let proto = entry
                    .get("protocol")
                    .and_then(scalar)
                    .unwrap_or_else(|| "tcp".into());
                (ip, host, proto, format!("{:?}", entry))
            }
            other => {
                let Some(spec) = scalar(other) else {
                    problems.push(format!(
                        "service `{name}`: unreadable ports entry {other:?}"
                    ));
                    continue;
                };
                let (body, proto) = spec.split_once('/').unwrap_or((spec.as_str(), "tcp"));
                let (ip, rest) = if let Some(v6) = body.strip_prefix('[') {
                    match v6.split_once("]:") {
                        Some((ip, rest)) => (ip.to_string(), rest.to_string()),
                        None => {
                            problems.push(format!("service `{name}`: bad port spec `{spec}`"));
                            continue;
                        }
                    }
                } else {
                    let parts: Vec<&str> = body.split(':').collect();
                    match parts.len() {
                        1 | 2 => (String::new(), body.to_string()),
                        3 => (parts[0].to_string(), format!("{}:{}", parts[1], parts[2])),
                        _ => {
                            problems.push(format!("service `{name}`: bad port spec `{spec}`"));
                            continue;
                        }
                    }
                };
                let host = rest.split_once(':').map(|(h, _)| h.to_string());
                (ip, host, proto.to_string(), spec.clone())
            }
        };
        let Some(host) = host.filter(|h| !h.is_empty()) else {
            continue;
        }; // not published / ephemeral
        match port_range(&host) {
            Ok(ports) => out.extend(ports.into_iter().map(|port| Published {
                service: name.to_string(),
                ip: ip.clone(),
                port,
                proto: proto.clone(),
                spec: spec.clone(),
            })),
            Err(e) => problems.push(format!("service `{name}`: port spec `{spec}`: {e}")),
        }
    }
    (out, problems)
}

fn check_host_ports(doc: &Value) -> Vec<String> {
    let wildcard = |ip: &str| ip.is_empty() || ip == "0.0.0.0" || ip == "::";
    let mut problems = Vec::new();
    let mut all: Vec<Published> = Vec::new();
    for (name, svc) in services(doc) {
        let (ports, bad) = published_ports(&name, svc);
        problems.extend(bad);
        let replicas = svc
            .get("deploy")
            .and_then(|d| d.get("replicas"))
            .or_else(|| svc.get("scale"))
            .and_then(Value::as_u64)
            .unwrap_or(1);
        if replicas > 1 && !ports.is_empty() {
            problems.push(format!(
                "service `{name}` runs {replicas} replicas but publishes fixed host port(s) {:?}: replicas would collide",
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

// ------------------------------------------------------------------------------------
// (4) Binaries

/// Binary names the crates under `services/` build, from their Cargo.toml (a small line
/// parser: `name`/`path` in `[package]` and `[[bin]]`, plus cargo's auto-discovered bins).
fn workspace_binaries(root: &Path) -> BTreeSet<String> {
    let mut bins = BTreeSet::new();
    let dir = root.join("services");
    let entries =
        std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("cannot list {}: {e}", dir.display()));
    for entry in entries.flatten() {
        let manifest = entry.path().join("Cargo.toml");
        if let Ok(text) = std::fs::read_to_string(&manifest) {
            bins.extend(crate_binaries(&text, &entry.path()));
        }
    }
    bins
}

fn crate_binaries(manifest: &str, crate_dir: &Path) -> Vec<String> {
    let unquote = |v: &str| v.trim().trim_matches('"').trim_matches('\'').to_string();
    let mut section = String::new();
    let mut package = None;
    let mut autobins = true;
    let mut declared: Vec<(Option<String>, Option<String>)> = Vec::new(); // (name, path)
    for raw in manifest.lines() {
        let line = raw.trim();
        if line.starts_with("[[") {
            section = line
                .trim_matches(|c| c == '[' || c == ']')
                .trim()
                .to_string();
            if section == "bin" {
                declared.push((None, None));
            }
            continue;
        }
        if line.starts_with('[') {
            section = line
                .trim_matches(|c| c == '[' || c == ']')
                .trim()
                .to_string();
            continue;
        }
        let Some((key, value)) = line.split_once('=') else {
            continue;
        };
        let value = value.split(" #").next().unwrap_or(value);
        match (section.as_str(), key.trim()) {
            ("package", "name") => package = Some(unquote(value)),
            ("package", "autobins") => autobins = value.trim() != "false",
            ("bin", "name") => {
                if let Some(b) = declared.last_mut() {
                    b.0 = Some(unquote(value));
                }
            }
            ("bin", "path") => {
                if let Some(b) = declared.last_mut() {
                    b.1 = Some(unquote(value));
                }
            }
            _ => {}
        }
    }
    let mut bins: Vec<String> = declared.iter().filter_map(|(n, _)| n.clone()).collect();
    if autobins {
        if let Some(pkg) = &package {
            let main_claimed = declared.iter().any(|(n, p)| {
                p.as_deref() == Some("src/main.rs") || n.as_deref() == Some(pkg.as_str())
            });
            if !main_claimed && crate_dir.join("src/main.rs").is_file() {
                bins.push(pkg.clone());
            }
        }
        if let Ok(entries) = std::fs::read_dir(crate_dir.join("src/bin")) {
            for e in entries.flatten() {
                let p = e.path();
                if p.extension().is_some_and(|x| x == "rs") {
                    bins.extend(p.file_stem().and_then(|s| s.to_str()).map(str::to_string));
                } else if p.join("main.rs").is_file() {
                    bins.extend(p.file_name().and_then(|s| s.to_str()).map(str::to_string));
                }
            }
        }
    }
    bins
}

/// (4) Every `aifab*` program a service (or its healthcheck) runs is built by a crate
/// under services/ and copied into the image by the Dockerfile; every service binary of
/// the workspace (all but the `aifab` CLI) is run by some service.
fn check_binaries(doc: &Value, bins: &BTreeSet<String>, dockerfile: &str) -> Vec<String> {
    let dockerfile_words: BTreeSet<&str> = dockerfile
        .split(|c: char| c.is_whitespace() || "\"'=,[]".contains(c))
        .filter(|w| !w.is_empty())
        .collect();
    let mut problems = Vec::new();
    let mut run = BTreeSet::new();
    for (name, svc) in services(doc) {
        let progs = [
            ("command", program(svc)),
            ("healthcheck", healthcheck_program(svc)),
        ];
        for (field, prog) in progs {
            let Some(prog) = prog.filter(|p| p.starts_with("aifab")) else {
                continue;
            };
            run.insert(prog.clone());
            if !bins.contains(&prog) {
                problems.push(format!(
                    "service `{name}`: {field} runs `{prog}`, but no crate under services/ builds a binary of that name (binaries: {})",
                    bins.iter().cloned().collect::<Vec<_>>().join(", ")
                ));
            }
            if svc.get("build").is_some() && !dockerfile_words.contains(prog.as_str()) {
                problems.push(format!(
                    "service `{name}`: {field} runs `{prog}`, which the Dockerfile does not copy into the image (AIFAB_BINS)"
                ));
            }
        }
    }
    for bin in bins.iter().filter(|b| b.as_str() != "aifab") {
        if !run.contains(bin) {
            problems.push(format!(
                "workspace binary `{bin}` is not run by any service in docker-compose.yml"
            ));
        }
    }
    problems
}

// ------------------------------------------------------------------------------------
// (5) depends_on

fn check_depends_on(doc: &Value) -> Vec<String> {
    let mut problems = Vec::new();
    for (name, svc) in services(doc) {
        for (target, (cond, required)) in depends_on(svc) {
            let Some(t) = service(doc, &target) else {
                problems.push(format!(
                    "service `{name}` depends_on `{target}`, which is not a service in the file"
                ));
                continue;
            };
            match cond.as_str() {
                "service_started" => {}
                "service_healthy" => {
                    if healthcheck_text(t).is_none() {
                        problems.push(format!(
                            "service `{name}` waits for `{target}` to be service_healthy, but `{target}` has no healthcheck"
                        ));
                    }
                }
                "service_completed_successfully" => {
                    let restart = t
                        .get("restart")
                        .and_then(scalar)
                        .unwrap_or_else(|| "no".into());
                    if restart != "no" && restart != "on-failure" {
                        problems.push(format!(
                            "service `{name}` waits for `{target}` to complete, but `{target}` has restart: {restart} (a one-shot must not restart)"
                        ));
                    }
                }
                other => problems.push(format!(
                    "service `{name}` depends_on `{target}` with unknown condition `{other}`"
                )),
            }
            if required && profiles(svc).is_empty() && !profiles(t).is_empty() {
                problems.push(format!(
                    "service `{name}` (no profile) depends_on `{target}`, which only runs under profile(s) {:?}",
                    profiles(t)
                ));
            }
        }
    }
    problems
}

// ------------------------------------------------------------------------------------
// (6) GPU worker

fn reserves_nvidia_gpu(svc: &Value) -> bool {
    let devices = svc
        .get("deploy")
        .and_then(|d| d.get("resources"))
        .and_then(|r| r.get("reservations"))
        .and_then(|r| r.get("devices"))
        .and_then(Value::as_sequence);
    devices.into_iter().flatten().any(|d| {
        let nvidia = d.get("driver").and_then(Value::as_str) == Some("nvidia");
        let gpu = string_list(d.get("capabilities"))
            .iter()
            .any(|c| c == "gpu");
        let some = match d.get("count") {
            Some(Value::Number(n)) => n.as_u64().unwrap_or(0) >= 1,
            Some(Value::String(s)) => s == "all",
            _ => d.get("device_ids").is_some(),
        };
        nvidia && gpu && some
    })
}

fn check_gpu_worker(doc: &Value) -> Vec<String> {
    let mut problems = Vec::new();
    let http_port = |svc: &Value| {
        env_var(svc, "AIFAB_HTTP_ADDR")
            .and_then(|a| host_port(&a))
            .and_then(|(_, p)| p)
    };
    let scalable = |name: &str, svc: &Value, problems: &mut Vec<String>| {
        if svc
            .get("ports")
            .and_then(Value::as_sequence)
            .is_some_and(|p| !p.is_empty())
        {
            problems.push(format!("service `{name}` publishes host ports, so `docker compose up --scale {name}=N` would collide"));
        }
        if svc.get("container_name").is_some() {
            problems.push(format!(
                "service `{name}` sets container_name, so it cannot be scaled"
            ));
        }
        if let Some(port) = http_port(svc) {
            if !string_list(svc.get("expose")).contains(&port.to_string()) {
                problems.push(format!(
                    "service `{name}` does not `expose` its metrics port {port}"
                ));
            }
        }
    };
    match service(doc, "inference-worker") {
        None => problems.push("no `inference-worker` service (the CPU worker)".to_string()),
        Some(svc) => {
            if !profiles(svc).is_empty() {
                problems.push(format!(
                    "`inference-worker` is under profile(s) {:?}; the CPU worker runs by default",
                    profiles(svc)
                ));
            }
            if let Some(dev) = env_var(svc, "AIFAB_DEVICE").filter(|d| d != "cpu") {
                problems.push(format!(
                    "`inference-worker` runs on AIFAB_DEVICE={dev}; the default worker runs on cpu"
                ));
            }
            scalable("inference-worker", svc, &mut problems);
        }
    }
    match service(doc, "inference-worker-gpu") {
        None => problems.push(
            "no `inference-worker-gpu` service (the GPU worker under profile `gpu`)".to_string(),
        ),
        Some(svc) => {
            if !profiles(svc).iter().any(|p| p == "gpu") {
                problems.push(format!(
                    "`inference-worker-gpu` must be under profile `gpu` (so hosts without GPUs can `up`), has {:?}",
                    profiles(svc)
                ));
            }
            if !reserves_nvidia_gpu(svc) {
                problems.push(
                    "`inference-worker-gpu` does not reserve an NVIDIA GPU (deploy.resources.reservations.devices: \
                     [{driver: nvidia, count: 1, capabilities: [gpu]}])"
                        .to_string(),
                );
            }
            if !env_var(svc, "AIFAB_DEVICE").is_some_and(|d| d.starts_with("cuda")) {
                problems
                    .push("`inference-worker-gpu` does not set AIFAB_DEVICE=cuda:N".to_string());
            }
            scalable("inference-worker-gpu", svc, &mut problems);
        }
    }
    // Any service that asks for CUDA must get a GPU, and GPU services stay opt-in.
    for (name, svc) in services(doc) {
        let cuda = env_var(svc, "AIFAB_DEVICE").is_some_and(|d| d.starts_with("cuda"));
        if cuda && !reserves_nvidia_gpu(svc) {
            problems.push(format!(
                "service `{name}` sets AIFAB_DEVICE=cuda:* but reserves no NVIDIA GPU"
            ));
        }
        if reserves_nvidia_gpu(svc) && profiles(svc).is_empty() {
            problems.push(format!("service `{name}` reserves a GPU but is not under a profile: `up` fails on hosts without one"));
        }
    }
    problems.sort();
    problems.dedup();
    problems
}

// ------------------------------------------------------------------------------------
// (7) Metrics

/// (7) Every aifab service listens on 0.0.0.0:<port> (AIFAB_HTTP_ADDR), its healthcheck
/// probes that port, any published port maps to it, and Prometheus scrapes
/// `<service>:<port>` (through DNS discovery for scalable workers, so every replica is).
fn check_metrics_scraped(doc: &Value, prom: &Value) -> Vec<String> {
    let targets = scrape_targets(prom);
    let mut problems = Vec::new();
    for (name, svc) in services(doc) {
        let Some(prog) = program(svc).filter(|p| p.starts_with("aifab-")) else {
            continue;
        };
        let Some(addr) = env_var(svc, "AIFAB_HTTP_ADDR") else {
            problems.push(format!(
                "service `{name}` ({prog}) does not set AIFAB_HTTP_ADDR: it would listen on its loopback default, out of Prometheus' reach"
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
                "service `{name}`: AIFAB_HTTP_ADDR={addr} binds {ip}; in a container it must be 0.0.0.0:{port} to be scraped"
            ));
        }
        match healthcheck_text(svc) {
            None => problems.push(format!("service `{name}` ({prog}) has no healthcheck")),
            Some(hc) if !hc.contains(&format!(":{port}")) && !hc.contains(&format!("/{port}")) => {
                problems.push(format!(
                    "service `{name}`: healthcheck `{hc}` does not probe its port {port}"
                ))
            }
            Some(_) => {}
        }
        if let Some(entries) = svc.get("ports").and_then(Value::as_sequence) {
            let containers: Vec<String> = entries
                .iter()
                .filter_map(|e| match e {
                    Value::Mapping(_) => e.get("target").and_then(scalar),
                    other => scalar(other).and_then(|s| {
                        let body = s.split('/').next().unwrap_or("").to_string();
                        body.rsplit(':').next().map(str::to_string)
                    }),
                })
                .collect();
            if !entries.is_empty() && !containers.contains(&port.to_string()) {
                problems.push(format!(
                    "service `{name}` publishes container port(s) {containers:?}, none of which is its HTTP port {port}"
                ));
            }
        }
        let scraped: Vec<&ScrapeTarget> = targets
            .iter()
            .filter(|t| t.host == name && t.port == Some(port))
            .collect();
        if scraped.is_empty() {
            problems.push(format!(
                "service `{name}` ({prog}) serves /metrics on :{port}, but deploy/prometheus/prometheus.yml does not scrape `{name}:{port}`"
            ));
        } else if name.contains("worker") && !scraped.iter().any(|t| t.dns) {
            problems.push(format!(
                "service `{name}` is scaled with --scale, but Prometheus scrapes it as a static target (one replica at random); \
                 use dns_sd_configs (type A) so every replica is scraped"
            ));
        }
    }
    problems
}

// ------------------------------------------------------------------------------------
// Volumes and Kafka topics

/// Named volumes are declared at the top level; bind-mounted host paths exist.
fn check_volumes(doc: &Value, root: &Path) -> Vec<String> {
    let declared: BTreeSet<String> = doc
        .get("volumes")
        .and_then(Value::as_mapping)
        .map(|m| m.keys().filter_map(scalar).collect())
        .unwrap_or_default();
    let mut problems = Vec::new();
    for (name, svc) in services(doc) {
        for v in svc
            .get("volumes")
            .and_then(Value::as_sequence)
            .into_iter()
            .flatten()
        {
            let (kind, source) = match v {
                Value::Mapping(_) => (
                    v.get("type")
                        .and_then(scalar)
                        .unwrap_or_else(|| "volume".into()),
                    v.get("source").and_then(scalar).unwrap_or_default(),
                ),
                other => {
                    let s = scalar(other).unwrap_or_default();
                    let parts: Vec<&str> = s.split(':').collect();
                    if parts.len() < 2 {
                        continue; // anonymous volume
                    }
                    let src = parts[0].to_string();
                    let kind = if src.starts_with(['.', '/', '~']) {
                        "bind"
                    } else {
                        "volume"
                    };
                    (kind.to_string(), src)
                }
            };
            match kind.as_str() {
                "volume" if !source.is_empty() && !declared.contains(&source) => problems.push(format!(
                    "service `{name}` mounts named volume `{source}`, which is not declared under top-level `volumes:`"
                )),
                "bind" if source.starts_with('.') && !root.join(&source).exists() => problems.push(format!(
                    "service `{name}` bind-mounts `{source}`, which does not exist in the repository"
                )),
                _ => {}
            }
        }
    }
    problems
}

/// The topic-creating one-shot creates every topic of `aifab_core::topics::TOPICS` with
/// its partition count, idempotently; every Kafka client waits for it; and the single
/// broker can run transactions (internal topics with replication factor 1).
fn check_kafka(doc: &Value, topics: &[(&str, i32)]) -> Vec<String> {
    let mut problems = Vec::new();
    let creators: Vec<(String, &Value)> = services(doc)
        .into_iter()
        .filter(|(_, svc)| {
            words(svc.get("command"))
                .iter()
                .chain(&words(svc.get("entrypoint")))
                .any(|w| w.ends_with("kafka-topics.sh"))
        })
        .filter(|(_, svc)| argv(svc.get("command")).join(" ").contains("--create"))
        .collect();
    let [(creator, init)] = creators.as_slice() else {
        problems.push(format!(
            "expected exactly one one-shot service creating topics with kafka-topics.sh --create, found {:?}",
            creators.iter().map(|(n, _)| n).collect::<Vec<_>>()
        ));
        return problems;
    };
    let script = argv(init.get("command")).join("\n");
    if !script.contains("--if-not-exists") {
        problems.push(format!(
            "`{creator}` creates topics without --if-not-exists: a restart of the stack would fail"
        ));
    }
    for (topic, partitions) in topics {
        let found = script.lines().any(|line| {
            let ws: Vec<&str> = line
                .split_whitespace()
                .map(|w| w.trim_matches(|c: char| "\"'".contains(c)))
                .collect();
            ws.contains(topic) && ws.contains(&partitions.to_string().as_str())
        });
        if !found {
            problems.push(format!(
                "`{creator}` does not create topic `{topic}` with {partitions} partition(s) (as in aifab_core::topics::TOPICS)"
            ));
        }
    }
    for a in addresses(doc).iter().filter(|a| a.kind == Kind::Kafka) {
        if a.service == *creator || a.service == a.host {
            continue;
        }
        let deps = service(doc, &a.service).map(depends_on).unwrap_or_default();
        if deps.get(creator.as_str()).map(|(c, _)| c.as_str())
            != Some("service_completed_successfully")
        {
            problems.push(format!(
                "service `{}` uses Kafka but does not depend_on `{creator}` with condition service_completed_successfully",
                a.service
            ));
        }
    }
    for (name, svc) in services(doc) {
        if env_var(svc, "KAFKA_PROCESS_ROLES").is_none() {
            continue;
        }
        for key in [
            "KAFKA_OFFSETS_TOPIC_REPLICATION_FACTOR",
            "KAFKA_TRANSACTION_STATE_LOG_REPLICATION_FACTOR",
            "KAFKA_TRANSACTION_STATE_LOG_MIN_ISR",
        ] {
            if env_var(svc, key).as_deref() != Some("1") {
                problems.push(format!(
                    "single-node broker `{name}` needs {key}=1 (found {:?}): transactions and consumer groups hang otherwise",
                    env_var(svc, key)
                ));
            }
        }
    }
    problems.sort();
    problems.dedup();
    problems
}

fn core_topics() -> Vec<(&'static str, i32)> {
    aifab_core::topics::TOPICS
        .iter()
        .map(|t| (t.name, t.partitions))
        .collect()
}

// ------------------------------------------------------------------------------------
// The checks on the real files

#[test]
fn every_service_has_image_or_build() {
    assert_clean("image/build", check_image_or_build(&stack().compose));
}

#[test]
fn broker_nats_redis_and_scrape_hosts_are_services() {
    let s = stack();
    let found = addresses(&s.compose);
    for kind in [Kind::Kafka, Kind::Nats, Kind::Redis] {
        assert!(
            found.iter().any(|a| a.kind == kind),
            "no {kind:?} address found in docker-compose.yml: the address scan is broken or the services lost their config"
        );
    }
    assert_clean("addresses", check_addresses(&s.compose, &s.prometheus));
}

#[test]
fn published_host_ports_do_not_collide() {
    let s = stack();
    let published: BTreeSet<u16> = services(&s.compose)
        .iter()
        .flat_map(|(n, svc)| published_ports(n, svc).0)
        .map(|p| p.port)
        .collect();
    assert_clean("host ports", check_host_ports(&s.compose));
    for port in [9092, 4222, 8222, 6379, 8080, 8084, 8085, 9090, 3000] {
        assert!(
            published.contains(&port),
            "host port {port} is not published (published: {published:?})"
        );
    }
}

#[test]
fn aifab_binaries_exist_in_the_workspace() {
    let s = stack();
    assert!(
        s.bins.contains("aifab"),
        "the bin parser found no `aifab` CLI in services/*/Cargo.toml (found {:?})",
        s.bins
    );
    assert_clean(
        "binaries",
        check_binaries(&s.compose, &s.bins, &s.dockerfile),
    );
}

#[test]
fn depends_on_targets_exist() {
    assert_clean("depends_on", check_depends_on(&stack().compose));
}

#[test]
fn gpu_worker_reserves_an_nvidia_gpu_under_profile_gpu() {
    assert_clean("gpu worker", check_gpu_worker(&stack().compose));
}

#[test]
fn every_aifab_service_is_scraped_by_prometheus() {
    let s = stack();
    assert_clean("metrics", check_metrics_scraped(&s.compose, &s.prometheus));
}

#[test]
fn volumes_are_declared_and_bind_mounts_exist() {
    let s = stack();
    assert_clean("volumes", check_volumes(&s.compose, &root()));
    let dashboards = root().join("deploy/grafana/dashboards");
    assert!(
        dashboards.is_dir(),
        "{} is missing (Grafana's dashboards provider points at it)",
        dashboards.display()
    );
    let provisioning = root().join("deploy/grafana/provisioning");
    for sub in ["datasources", "dashboards"] {
        let dir = provisioning.join(sub);
        let yamls = std::fs::read_dir(&dir)
            .unwrap_or_else(|e| panic!("{} is missing: {e}", dir.display()))
            .flatten()
            .filter(|e| {
                e.path()
                    .extension()
                    .is_some_and(|x| x == "yml" || x == "yaml")
            })
            .count();
        assert!(yamls > 0, "{} has no provisioning YAML", dir.display());
    }
}

#[test]
fn kafka_init_creates_every_topic_of_aifab_core() {
    assert_clean("kafka", check_kafka(&stack().compose, &core_topics()));
}

#[test]
fn grafana_provisioning_and_dashboards_parse() {
    let dir = root().join("deploy/grafana");
    let ds = read(
        &dir.join("provisioning/datasources/prometheus.yml")
            .to_string_lossy(),
    );
    let ds = parse_yaml(&ds, "grafana datasource provisioning");
    let url = ds["datasources"][0]["url"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    let names = service_names(&stack().compose);
    let host = host_port(&url).map(|(h, _)| h).unwrap_or_default();
    assert!(
        names.contains(&host),
        "Grafana's Prometheus datasource url `{url}` names `{host}`, not a compose service"
    );
    for e in std::fs::read_dir(dir.join("dashboards"))
        .expect("deploy/grafana/dashboards")
        .flatten()
    {
        if e.path().extension().is_some_and(|x| x == "json") {
            let text = read(&e.path().to_string_lossy());
            let v: serde_json::Value = serde_json::from_str(&text)
                .unwrap_or_else(|err| panic!("{} is not valid JSON: {err}", e.path().display()));
            assert!(
                v.get("panels").is_some() && v.get("uid").is_some(),
                "{}: not a dashboard",
                e.path().display()
            );
        }
    }
}

/// Metric names in the sources: every string literal starting `aifab_` (a `{...}` in a
/// `format!` literal stands for any name part), plus `aifab_<service>_<what>` for the
/// `metric_name(spec.name, "what")` helper of `aifab-core`.
fn exported_metric_patterns(root: &Path) -> Vec<String> {
    fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
        for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
            let p = e.path();
            if p.is_dir() {
                walk(&p, out);
            } else if p.extension().is_some_and(|x| x == "rs") {
                out.push(p);
            }
        }
    }
    let mut files = Vec::new();
    walk(&root.join("services"), &mut files);
    walk(&root.join("shared"), &mut files);
    let mut out = Vec::new();
    let mut helper_whats = Vec::new();
    for f in files {
        let text = std::fs::read_to_string(&f).unwrap_or_default();
        for (i, _) in text.match_indices("\"aifab_") {
            let lit = &text[i + 1..];
            if let Some(end) = lit.find('"') {
                // `"aifab_{}_{}"` is the helper itself, not a metric.
                if !lit[..end].contains("{}") {
                    out.push(lit[..end].to_string());
                }
            }
        }
        for (i, _) in text.match_indices("metric_name(") {
            let rest = &text[i..text.len().min(i + 120)];
            if let Some(q) = rest.find(", \"") {
                if let Some(end) = rest[q + 3..].find('"') {
                    helper_whats.push(rest[q + 3..q + 3 + end].to_string());
                }
            }
        }
    }
    let services: Vec<String> = std::fs::read_dir(root.join("services"))
        .expect("services/")
        .flatten()
        .map(|e| e.file_name().to_string_lossy().replace('-', "_"))
        .collect();
    for s in &services {
        for w in &helper_whats {
            out.push(format!("aifab_{s}_{w}"));
        }
    }
    out
}

/// Whether `name` matches `pattern`, where `{...}` matches one or more `[a-z0-9_]`.
fn metric_matches(pattern: &str, name: &str) -> bool {
    match pattern.find('{') {
        None => pattern == name,
        Some(open) => {
            let Some(close) = pattern[open..].find('}').map(|c| open + c) else {
                return pattern == name;
            };
            let (head, tail) = (&pattern[..open], &pattern[close + 1..]);
            let Some(rest) = name.strip_prefix(head) else {
                return false;
            };
            (1..=rest.len()).any(|n| {
                rest[..n]
                    .chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
                    && metric_matches(tail, &rest[n..])
            })
        }
    }
}

/// `aifab_...` metric names a PromQL expression uses (a name followed by a regex is not one).
fn promql_metric_names(expr: &str) -> Vec<String> {
    let mut out = Vec::new();
    for (i, _) in expr.match_indices("aifab_") {
        if i > 0
            && expr[..i]
                .chars()
                .last()
                .is_some_and(|c| c.is_ascii_alphanumeric() || c == '_')
        {
            continue;
        }
        let name: String = expr[i..]
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect();
        let next = expr[i + name.len()..].chars().next();
        if name.ends_with('_') || matches!(next, Some('.') | Some('*') | Some('+')) {
            continue; // a regex like aifab_.+_total
        }
        out.push(name);
    }
    out
}

#[test]
fn grafana_dashboard_queries_metrics_the_services_export() {
    let patterns = exported_metric_patterns(&root());
    assert!(
        patterns
            .iter()
            .any(|p| p == "aifab_monitor_consumer_lag_records"),
        "the source scan finds metrics: {patterns:?}"
    );
    assert!(metric_matches(
        "aifab_cost_accountant_budget_{currency}",
        "aifab_cost_accountant_budget_usd"
    ));
    assert!(!metric_matches(
        "aifab_cost_accountant_budget_{currency}",
        "aifab_cost_accountant_budget_"
    ));
    let text = read(
        &root()
            .join("deploy/grafana/dashboards/aifab-overview.json")
            .to_string_lossy(),
    );
    let dash: serde_json::Value = serde_json::from_str(&text).expect("dashboard JSON");
    let mut problems = Vec::new();
    let mut titles = Vec::new();
    for p in dash["panels"].as_array().expect("panels") {
        titles.push(p["title"].as_str().unwrap_or_default().to_lowercase());
        for t in p["targets"].as_array().into_iter().flatten() {
            let expr = t["expr"].as_str().unwrap_or_default();
            for name in promql_metric_names(expr) {
                let base = ["_bucket", "_sum", "_count"]
                    .iter()
                    .find_map(|s| name.strip_suffix(s))
                    .unwrap_or(&name);
                if !patterns
                    .iter()
                    .any(|p| metric_matches(p, &name) || metric_matches(p, base))
                {
                    problems.push(format!(
                        "panel {:?}: `{name}` is not exported by any service (expr `{expr}`)",
                        p["title"]
                    ));
                }
            }
        }
    }
    // The same things the monitor's own page shows.
    for want in [
        "throughput",
        "latency",
        "lag",
        "replicas",
        "scale decisions",
        "spend vs budget",
        "model versions",
    ] {
        if !titles.iter().any(|t| t.contains(want)) {
            problems.push(format!("no panel about {want:?} (titles: {titles:?})"));
        }
    }
    assert_clean("grafana dashboard", problems);
}

// ------------------------------------------------------------------------------------
// The checker can fail: a small broken stack

const BROKEN_COMPOSE: &str = r#"
x-env: &env
  AIFAB_NATS_URL: nats://nats:4222        # there is no nats service
services:
  kafka:
    image: apache/kafka:4.1.1
    environment:
      KAFKA_PROCESS_ROLES: broker,controller
      KAFKA_ADVERTISED_LISTENERS: INTERNAL://kafka:19092,EXTERNAL://localhost:9092
      KAFKA_OFFSETS_TOPIC_REPLICATION_FACTOR: 1
    ports: ["9092:9092"]
  topics:
    image: apache/kafka:4.1.1
    entrypoint: ["/bin/bash", "-c"]
    command: ["/opt/kafka/bin/kafka-topics.sh --bootstrap-server kafka:19092 --create --topic aifab.dlq --partitions 1"]
    depends_on: {kafka: {condition: service_healthy}}
  ingest:
    image: aifab/runtime:latest
    command: ["aifab-ingest"]
    environment:
      <<: *env
      AIFAB_KAFKA_BROKERS: kafak:19092      # typo: no such service
      AIFAB_HTTP_ADDR: 127.0.0.1:8080       # loopback: Prometheus cannot reach it
    ports: ["127.0.0.1:9092:9092", "8080:8080"]   # 9092 collides with kafka
    depends_on: [kafka, redis]              # no redis service
  feature:
    command: aifab-featurez --fast          # no image/build; no such binary
    environment:
      AIFAB_KAFKA_BROKERS: kafka:9092       # the host listener, advertised as localhost
      AIFAB_HTTP_ADDR: 0.0.0.0:8081
    depends_on: {kafka: {condition: service_started}}
  inference-worker-gpu:
    build: {context: ., target: runtime-cuda}
    command: ["aifab-inference-worker"]
    environment: ["AIFAB_DEVICE=cuda:0", "AIFAB_HTTP_ADDR=0.0.0.0:8083"]
    ports: ["8083:8083", "8080-8081:9000-9001"]   # 8080 collides with ingest
    volumes: ["models:/models", "./no/such/dir:/x"]
"#;

const BROKEN_PROMETHEUS: &str = r#"
scrape_configs:
  - job_name: ingest
    static_configs: [{targets: ["ingest:8080", "grafana:3000"]}]
  - job_name: workers
    static_configs: [{targets: ["inference-worker-gpu:8083"]}]
"#;

fn mentions(problems: &[String], needles: &[&str]) -> bool {
    problems
        .iter()
        .any(|p| needles.iter().all(|n| p.contains(n)))
}

#[test]
fn checker_reports_a_broken_stack() {
    let doc = parse_yaml(BROKEN_COMPOSE, "broken compose");
    let prom = parse_yaml(BROKEN_PROMETHEUS, "broken prometheus");
    let bins: BTreeSet<String> = [
        "aifab",
        "aifab-ingest",
        "aifab-inference-worker",
        "aifab-monitor",
    ]
    .map(String::from)
    .into();
    let dockerfile = "ARG AIFAB_BINS=\"aifab aifab-ingest\"";

    let expect = |what: &str, problems: &[String], needles: &[&str]| {
        assert!(
            mentions(problems, needles),
            "{what}: expected a problem mentioning {needles:?}, got:\n  - {}",
            problems.join("\n  - ")
        );
    };

    let p = check_image_or_build(&doc);
    expect("image/build", &p, &["`feature`", "neither"]);
    assert_eq!(p.len(), 1, "only `feature` lacks image/build: {p:?}");

    let p = check_addresses(&doc, &prom);
    expect(
        "dangling broker",
        &p,
        &["ingest: AIFAB_KAFKA_BROKERS", "`kafak`"],
    );
    expect("dangling nats", &p, &["ingest: AIFAB_NATS_URL", "`nats`"]);
    expect(
        "wrong kafka listener",
        &p,
        &["feature: AIFAB_KAFKA_BROKERS", "kafka:9092", "19092"],
    );
    expect(
        "dangling scrape target",
        &p,
        &["prometheus.yml", "`grafana`"],
    );
    assert!(
        !mentions(&p, &["topics:", "kafka:19092", "not a service"]),
        "kafka:19092 from --bootstrap-server is fine: {p:?}"
    );

    let p = check_host_ports(&doc);
    expect("port collision", &p, &["9092/tcp", "`kafka`", "`ingest`"]);
    expect(
        "range collision",
        &p,
        &["8080/tcp", "`ingest`", "`inference-worker-gpu`"],
    );
    assert!(!mentions(&p, &["8083"]), "8083 is published once: {p:?}");

    let p = check_binaries(&doc, &bins, dockerfile);
    expect("unknown binary", &p, &["`feature`", "`aifab-featurez`"]);
    expect(
        "binary not in image",
        &p,
        &["`inference-worker-gpu`", "Dockerfile"],
    );
    expect("unrun binary", &p, &["`aifab-monitor`", "not run"]);
    assert!(
        !mentions(&p, &["`aifab`", "not run"]),
        "the CLI need not run as a service: {p:?}"
    );

    let p = check_depends_on(&doc);
    expect("dangling depends_on", &p, &["`ingest`", "`redis`"]);
    expect(
        "healthy without healthcheck",
        &p,
        &["`topics`", "service_healthy", "no healthcheck"],
    );

    let p = check_gpu_worker(&doc);
    expect("missing cpu worker", &p, &["no `inference-worker`"]);
    expect("gpu profile", &p, &["profile `gpu`"]);
    expect("gpu reservation", &p, &["does not reserve an NVIDIA GPU"]);
    expect(
        "gpu worker ports",
        &p,
        &["`inference-worker-gpu` publishes host ports"],
    );

    let p = check_metrics_scraped(&doc, &prom);
    expect("loopback listener", &p, &["`ingest`", "127.0.0.1"]);
    expect(
        "unscraped service",
        &p,
        &["`feature`", "does not scrape `feature:8081`"],
    );
    expect(
        "static worker target",
        &p,
        &["`inference-worker-gpu`", "dns_sd_configs"],
    );

    let p = check_volumes(&doc, &root());
    expect("undeclared volume", &p, &["`models`", "not declared"]);
    expect("missing bind source", &p, &["./no/such/dir"]);

    let p = check_kafka(&doc, &[("aifab.dlq", 1), ("aifab.usage", 4)]);
    expect("missing topic", &p, &["`aifab.usage`", "4 partition"]);
    expect("not idempotent", &p, &["--if-not-exists"]);
    expect(
        "no wait for topics",
        &p,
        &["`ingest`", "`topics`", "service_completed_successfully"],
    );
    expect(
        "transactions",
        &p,
        &["KAFKA_TRANSACTION_STATE_LOG_REPLICATION_FACTOR=1"],
    );
    assert!(
        !mentions(&p, &["`aifab.dlq`"]),
        "aifab.dlq is created with 1 partition: {p:?}"
    );
}

#[test]
fn port_and_address_parsers() {
    let svc = parse_yaml(
        r#"ports: ["8080", "9000:9001", "127.0.0.1:6379:6379", "[::1]:4222:4222/udp", "127.0.0.1::80",
                 {target: 80, published: "8443", host_ip: 0.0.0.0, protocol: tcp}, 5000]"#,
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

    let dir = std::env::temp_dir().join(format!("aifab-compose-bins-{}", std::process::id()));
    std::fs::create_dir_all(dir.join("src/bin")).unwrap();
    std::fs::write(dir.join("src/main.rs"), "fn main() {}").unwrap();
    std::fs::write(dir.join("src/bin/extra.rs"), "fn main() {}").unwrap();
    let plain = "[package]\nname = \"aifab-x\" # comment\nversion.workspace = true\n\n[dependencies]\nname = \"not-a-bin\"\n";
    let mut bins = crate_binaries(plain, &dir);
    bins.sort();
    assert_eq!(bins, vec!["aifab-x".to_string(), "extra".to_string()]);
    let renamed =
        "[package]\nname = \"aifab-cli\"\n\n[[bin]]\nname = \"aifab\"\npath = \"src/main.rs\"\n";
    let mut bins = crate_binaries(renamed, &dir);
    bins.sort();
    assert_eq!(bins, vec!["aifab".to_string(), "extra".to_string()]);
    std::fs::remove_dir_all(&dir).ok();
}
