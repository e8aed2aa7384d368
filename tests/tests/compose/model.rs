//! `docker-compose.yml` and `prometheus.yml` as typed documents (serde), and the
//! readings of a service the checks share: its environment, argv, the program it runs,
//! its healthcheck and what it depends on.

use std::collections::BTreeMap;

use serde::de::{DeserializeOwned, Error as _};
use serde::{Deserialize, Deserializer};
use serde_yaml::Value;

/// Parses YAML, resolves `<<:` merge keys the way docker compose does, and reads the
/// result as `T`; panics saying which document is broken.
pub fn parse_yaml<T: DeserializeOwned>(text: &str, what: &str) -> T {
    let mut doc: Value =
        serde_yaml::from_str(text).unwrap_or_else(|e| panic!("{what} is not valid YAML: {e}"));
    doc.apply_merge()
        .unwrap_or_else(|e| panic!("{what}: bad `<<` merge key: {e}"));
    serde_yaml::from_value(doc).unwrap_or_else(|e| panic!("{what} does not parse: {e}"))
}

/// A scalar as text: compose accepts numbers and booleans where it means strings.
#[derive(Debug, Clone, Default, PartialEq, Eq, PartialOrd, Ord)]
pub struct Text(pub String);

impl Text {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl<'de> Deserialize<'de> for Text {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        match Value::deserialize(d)? {
            Value::String(s) => Ok(Text(s)),
            Value::Number(n) => Ok(Text(n.to_string())),
            Value::Bool(b) => Ok(Text(b.to_string())),
            other => Err(D::Error::custom(format!(
                "expected a scalar, found {other:?}"
            ))),
        }
    }
}

fn texts(items: &[Text]) -> Vec<String> {
    items.iter().map(|t| t.0.clone()).collect()
}

/// A compose file: the parts the checks read (`x-` extension fields are merged in by
/// [`parse_yaml`] and otherwise ignored).
#[derive(Debug, Default, Deserialize)]
pub struct Compose {
    #[serde(default)]
    pub services: BTreeMap<String, Service>,
    /// Top-level named volumes (their settings do not matter here).
    #[serde(default)]
    pub volumes: BTreeMap<String, Value>,
}

impl Compose {
    pub fn service(&self, name: &str) -> Option<&Service> {
        self.services.get(name)
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct Service {
    pub image: Option<Text>,
    pub build: Option<Build>,
    pub command: Option<Argv>,
    pub entrypoint: Option<Argv>,
    pub environment: Environment,
    pub healthcheck: Option<Healthcheck>,
    pub profiles: Vec<Text>,
    pub depends_on: DependsOn,
    pub ports: Vec<Port>,
    pub expose: Vec<Text>,
    pub deploy: Option<Deploy>,
    pub scale: Option<u64>,
    pub container_name: Option<Text>,
    pub restart: Option<Text>,
    pub volumes: Vec<Volume>,
}

/// `build:` as a context path or a mapping.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum Build {
    Context(String),
    Spec { context: Option<Text> },
}

impl Build {
    /// The directory the image is built from, if named.
    pub fn context(&self) -> Option<&str> {
        match self {
            Build::Context(c) => Some(c),
            Build::Spec { context } => context.as_ref().map(Text::as_str),
        }
    }
}

/// `command:` / `entrypoint:` / a healthcheck's `test:`: a string or a list.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum Argv {
    Line(String),
    List(Vec<Text>),
}

impl Argv {
    /// As argv: a list as is, a string split on whitespace.
    pub fn args(&self) -> Vec<String> {
        match self {
            Argv::Line(s) => s.split_whitespace().map(str::to_string).collect(),
            Argv::List(items) => texts(items),
        }
    }
}

/// The argv of an optional field (empty when it is not set).
pub fn argv(v: Option<&Argv>) -> Vec<String> {
    v.map(Argv::args).unwrap_or_default()
}

/// Every whitespace-separated word of a command, entrypoint or healthcheck, including
/// words inside inline shell scripts, with quotes and shell punctuation trimmed.
pub fn words(v: Option<&Argv>) -> Vec<String> {
    argv(v)
        .iter()
        .flat_map(|a| a.split_whitespace().map(str::to_string).collect::<Vec<_>>())
        .map(|w| w.trim_matches(|c: char| "\"'`;,()".contains(c)).to_string())
        .filter(|w| !w.is_empty())
        .collect()
}

/// `environment:` as a map or a list of `K=V`.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum Environment {
    Map(BTreeMap<String, Option<Text>>),
    List(Vec<String>),
}

impl Default for Environment {
    fn default() -> Self {
        Environment::Map(BTreeMap::new())
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct Healthcheck {
    pub test: Option<Argv>,
    pub disable: bool,
}

/// `depends_on:` as a list of names or a map of name to conditions.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum DependsOn {
    List(Vec<String>),
    Map(BTreeMap<String, DependsOnEntry>),
}

impl Default for DependsOn {
    fn default() -> Self {
        DependsOn::List(Vec::new())
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct DependsOnEntry {
    pub condition: Option<Condition>,
    pub required: Option<bool>,
}

/// When a `depends_on` target counts as up.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(from = "String")]
pub enum Condition {
    Started,
    Healthy,
    CompletedSuccessfully,
    Unknown(String),
}

impl From<String> for Condition {
    fn from(s: String) -> Self {
        match s.as_str() {
            "service_started" => Condition::Started,
            "service_healthy" => Condition::Healthy,
            "service_completed_successfully" => Condition::CompletedSuccessfully,
            _ => Condition::Unknown(s),
        }
    }
}

/// One `depends_on` target of a service.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Dependency {
    pub condition: Condition,
    /// False for `required: false` (the target may be absent).
    pub required: bool,
}

/// A `ports:` entry: long syntax or a short spec (`C`, `H:C`, `IP:H:C`, ...).
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum Port {
    Long(LongPort),
    Short(Text),
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct LongPort {
    pub target: Option<Text>,
    pub published: Option<Text>,
    pub host_ip: Option<Text>,
    pub protocol: Option<Text>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct Deploy {
    pub replicas: Option<u64>,
    pub resources: Option<Resources>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct Resources {
    pub reservations: Option<Reservations>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct Reservations {
    pub devices: Vec<Device>,
}

/// A device reservation (`deploy.resources.reservations.devices[]`).
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct Device {
    pub driver: Option<String>,
    /// A number or `all`.
    pub count: Option<Text>,
    pub capabilities: Vec<Text>,
    pub device_ids: Option<Vec<Text>>,
}

/// A `volumes:` entry of a service: long syntax or `source:target[:mode]`.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum Volume {
    Long {
        #[serde(rename = "type")]
        kind: Option<String>,
        source: Option<Text>,
    },
    Short(Text),
}

impl Service {
    /// `environment:` in either form; `None` = passed from the host.
    pub fn env(&self) -> BTreeMap<String, Option<String>> {
        match &self.environment {
            Environment::Map(m) => m
                .iter()
                .map(|(k, v)| (k.clone(), v.as_ref().map(|t| t.0.clone())))
                .collect(),
            Environment::List(items) => items
                .iter()
                .map(|item| match item.split_once('=') {
                    Some((k, v)) => (k.to_string(), Some(v.to_string())),
                    None => (item.to_string(), None),
                })
                .collect(),
        }
    }

    pub fn env_var(&self, key: &str) -> Option<String> {
        self.env().remove(key).flatten()
    }

    /// The program a service runs: the compose `entrypoint` if it sets one, else the
    /// first word of `command` (the images' own entrypoint is tini, which execs it).
    pub fn program(&self) -> Option<String> {
        let ep = argv(self.entrypoint.as_ref());
        let first = if ep.is_empty() {
            argv(self.command.as_ref()).into_iter().next()
        } else {
            ep.into_iter().next()
        };
        first.map(|p| base_name(&p))
    }

    /// The program a healthcheck runs (`CMD prog ...`, `CMD-SHELL "prog ..."`, or a string).
    pub fn healthcheck_program(&self) -> Option<String> {
        let test = argv(self.healthcheck.as_ref().and_then(|h| h.test.as_ref()));
        let cmd = match test.first().map(String::as_str) {
            Some("CMD") => test.get(1).cloned(),
            Some("CMD-SHELL") => test
                .get(1)
                .and_then(|s| s.split_whitespace().next().map(str::to_string)),
            Some("NONE") | None => None,
            Some(_) => test.first().cloned(),
        }?;
        Some(base_name(&cmd))
    }

    /// The healthcheck's test as one line; `None` when there is none or it is disabled.
    pub fn healthcheck_text(&self) -> Option<String> {
        let hc = self.healthcheck.as_ref().filter(|h| !h.disable)?;
        let test = argv(hc.test.as_ref());
        if test.is_empty() || test[0] == "NONE" {
            return None;
        }
        Some(test.join(" "))
    }

    pub fn profiles(&self) -> Vec<String> {
        texts(&self.profiles)
    }

    /// `depends_on:` in either form, by target (the list form means `service_started`).
    pub fn depends_on(&self) -> BTreeMap<String, Dependency> {
        match &self.depends_on {
            DependsOn::List(items) => items
                .iter()
                .map(|t| {
                    let started = Dependency {
                        condition: Condition::Started,
                        required: true,
                    };
                    (t.clone(), started)
                })
                .collect(),
            DependsOn::Map(m) => m
                .iter()
                .map(|(k, v)| {
                    let dep = Dependency {
                        condition: v.condition.clone().unwrap_or(Condition::Started),
                        required: v.required.unwrap_or(true),
                    };
                    (k.clone(), dep)
                })
                .collect(),
        }
    }

    /// Replicas it runs (`deploy.replicas`, else `scale`, else 1).
    pub fn replicas(&self) -> u64 {
        self.deploy
            .as_ref()
            .and_then(|d| d.replicas)
            .or(self.scale)
            .unwrap_or(1)
    }

    /// The device reservations under `deploy.resources.reservations`.
    pub fn devices(&self) -> &[Device] {
        self.deploy
            .as_ref()
            .and_then(|d| d.resources.as_ref())
            .and_then(|r| r.reservations.as_ref())
            .map(|r| r.devices.as_slice())
            .unwrap_or_default()
    }

    pub fn expose(&self) -> Vec<String> {
        texts(&self.expose)
    }
}

fn base_name(path: &str) -> String {
    path.rsplit('/').next().unwrap_or(path).to_string()
}

/// A Prometheus configuration: its scrape jobs.
#[derive(Debug, Default, Deserialize)]
pub struct Prometheus {
    #[serde(default)]
    pub scrape_configs: Vec<ScrapeConfig>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct ScrapeConfig {
    pub job_name: Text,
    pub static_configs: Vec<StaticConfig>,
    pub dns_sd_configs: Vec<DnsSdConfig>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct StaticConfig {
    pub targets: Vec<Text>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct DnsSdConfig {
    pub names: Vec<Text>,
    pub port: Option<Text>,
}

/// Grafana's datasource provisioning file.
#[derive(Debug, Deserialize)]
pub struct Datasources {
    pub datasources: Vec<Datasource>,
}

#[derive(Debug, Deserialize)]
pub struct Datasource {
    #[serde(default)]
    pub url: Option<String>,
}
