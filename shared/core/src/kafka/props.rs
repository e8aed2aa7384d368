//! Deployment-specific librdkafka properties: TLS, SASL (SCRAM, PLAIN, OAUTHBEARER), mTLS
//! and anything else a cluster asks of its clients, applied to every client aifab makes.
//!
//! Sources, later ones winning:
//! 1. `AIFAB_KAFKA_PROPERTIES_FILE`: a `key=value` file of librdkafka property names
//!    (`#` comments, blank lines); mount it from a Secret when it holds a password;
//! 2. `AIFAB_KAFKA_PROP_<NAME>=value`: one property, its name upper-cased with `.` as `_`
//!    (`AIFAB_KAFKA_PROP_SECURITY_PROTOCOL=SASL_SSL`);
//! 3. `AIFAB_KAFKA_PROP_<NAME>_FILE=/path`: one property read from a file, for secrets
//!    (`AIFAB_KAFKA_PROP_SASL_PASSWORD_FILE=/run/secrets/kafka-password`).
//!
//! Properties aifab sets for its guarantees (ids, idempotence, isolation, commits) are
//! refused with a clear error instead of being silently overridden. Values are never
//! logged: only the names of the properties that were set.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::OnceLock;

use anyhow::Context;
use rdkafka::ClientConfig;

use crate::secret::read_secret_file;

pub const PROPERTIES_FILE_ENV: &str = "AIFAB_KAFKA_PROPERTIES_FILE";
pub const PROP_ENV_PREFIX: &str = "AIFAB_KAFKA_PROP_";

/// Properties aifab owns: setting them from outside would break exactly-once or the
/// service's identity, so they are refused.
const OWNED: &[&str] = &[
    "bootstrap.servers",
    "metadata.broker.list",
    "client.id",
    "group.id",
    "transactional.id",
    "enable.idempotence",
    "isolation.level",
    "enable.auto.commit",
    "enable.auto.offset.store",
    "acks",
];

/// librdkafka properties from the deployment, by name. Its `Debug` shows names only.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct KafkaProps {
    props: BTreeMap<String, String>,
}

impl std::fmt::Debug for KafkaProps {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KafkaProps")
            .field("names", &self.names())
            .finish()
    }
}

impl KafkaProps {
    /// Read the sources above from this process's environment.
    pub fn from_env() -> anyhow::Result<Self> {
        let file = std::env::var(PROPERTIES_FILE_ENV)
            .ok()
            .filter(|f| !f.trim().is_empty());
        let file_text = match &file {
            Some(path) => Some(
                std::fs::read_to_string(path.trim())
                    .with_context(|| format!("{PROPERTIES_FILE_ENV}: cannot read {path}"))?,
            ),
            None => None,
        };
        Self::from_sources(file_text.as_deref(), std::env::vars(), |p| {
            read_secret_file(p)
        })
    }

    /// The properties from a file's text and environment variables; `read_file` reads
    /// `_FILE` values (a parameter so tests need no files).
    pub fn from_sources(
        file_text: Option<&str>,
        env: impl IntoIterator<Item = (String, String)>,
        read_file: impl Fn(&Path) -> anyhow::Result<String>,
    ) -> anyhow::Result<Self> {
        let mut props = BTreeMap::new();
        if let Some(text) = file_text {
            for (n, line) in text.lines().enumerate() {
                let line = line.trim();
                if line.is_empty() || line.starts_with('#') || line.starts_with('!') {
                    continue;
                }
                let (k, v) = line.split_once('=').with_context(|| {
                    format!("{PROPERTIES_FILE_ENV}: line {} is not key=value", n + 1)
                })?;
                props.insert(k.trim().to_string(), v.trim().to_string());
            }
        }
        let mut env: Vec<(String, String)> = env
            .into_iter()
            .filter(|(k, _)| k.starts_with(PROP_ENV_PREFIX))
            .collect();
        env.sort();
        for (key, value) in env {
            let name = &key[PROP_ENV_PREFIX.len()..];
            let (name, value) = match name.strip_suffix("_FILE") {
                Some(name) => (
                    name,
                    read_file(Path::new(value.trim())).context(key.clone())?,
                ),
                None => (name, value),
            };
            anyhow::ensure!(!name.is_empty(), "{key}: no property name after the prefix");
            props.insert(name.to_ascii_lowercase().replace('_', "."), value);
        }
        for name in props.keys() {
            anyhow::ensure!(
                !OWNED.contains(&name.as_str()),
                "kafka property {name:?} is set by aifab itself and cannot be overridden \
                 (brokers: --kafka-brokers / AIFAB_KAFKA_BROKERS)"
            );
        }
        Ok(KafkaProps { props })
    }

    /// Build from explicit pairs (tests, tools).
    pub fn from_pairs<'a>(pairs: impl IntoIterator<Item = (&'a str, &'a str)>) -> Self {
        KafkaProps {
            props: pairs
                .into_iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.props.is_empty()
    }

    /// The names set (never the values): what a log line may say.
    pub fn names(&self) -> Vec<&str> {
        self.props.keys().map(String::as_str).collect()
    }

    /// Set every property on `config`.
    pub fn apply(&self, config: &mut ClientConfig) {
        for (k, v) in &self.props {
            config.set(k, v);
        }
    }
}

static PROCESS: OnceLock<Result<KafkaProps, String>> = OnceLock::new();

/// This process's properties, read once from the environment. Services call this at start
/// (through [`crate::service`]) so a bad file or variable stops them with its message
/// before any client is made.
pub fn process_props() -> anyhow::Result<&'static KafkaProps> {
    PROCESS
        .get_or_init(|| KafkaProps::from_env().map_err(|e| format!("{e:#}")))
        .as_ref()
        .map_err(|e| anyhow::anyhow!("{e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn no_files(p: &Path) -> anyhow::Result<String> {
        anyhow::bail!("no file {}", p.display())
    }

    #[test]
    fn file_then_env_then_env_files_with_names_from_variables() {
        let file = "# secured cluster\nsecurity.protocol = SASL_SSL\n\nsasl.mechanism=PLAIN\n";
        let props = KafkaProps::from_sources(
            Some(file),
            env(&[
                ("AIFAB_KAFKA_PROP_SASL_MECHANISM", "SCRAM-SHA-512"),
                ("AIFAB_KAFKA_PROP_SASL_USERNAME", "ingest"),
                ("AIFAB_KAFKA_PROP_SASL_PASSWORD_FILE", "/run/secrets/pw"),
                ("AIFAB_KAFKA_BROKERS", "b:9093"),
                ("HOME", "/root"),
            ]),
            |p| {
                assert_eq!(p, Path::new("/run/secrets/pw"));
                Ok("s3cret".into())
            },
        )
        .unwrap();
        let mut c = ClientConfig::new();
        props.apply(&mut c);
        assert_eq!(c.get("security.protocol"), Some("SASL_SSL"));
        assert_eq!(c.get("sasl.mechanism"), Some("SCRAM-SHA-512"));
        assert_eq!(c.get("sasl.username"), Some("ingest"));
        assert_eq!(c.get("sasl.password"), Some("s3cret"));
        assert_eq!(
            props.names(),
            [
                "sasl.mechanism",
                "sasl.password",
                "sasl.username",
                "security.protocol"
            ]
        );
    }

    #[test]
    fn properties_aifab_owns_and_malformed_lines_are_refused() {
        let e = KafkaProps::from_sources(
            None,
            env(&[("AIFAB_KAFKA_PROP_ISOLATION_LEVEL", "read_uncommitted")]),
            no_files,
        )
        .unwrap_err();
        assert!(
            e.to_string()
                .contains("\"isolation.level\" is set by aifab"),
            "{e}"
        );
        let e = KafkaProps::from_sources(Some("bootstrap.servers=x:1"), env(&[]), no_files)
            .unwrap_err();
        assert!(e.to_string().contains("bootstrap.servers"), "{e}");
        let e = KafkaProps::from_sources(Some("ok=1\njunk"), env(&[]), no_files).unwrap_err();
        assert!(e.to_string().contains("line 2"), "{e}");
        let e = KafkaProps::from_sources(
            None,
            env(&[("AIFAB_KAFKA_PROP_SASL_PASSWORD_FILE", "/missing")]),
            no_files,
        )
        .unwrap_err();
        assert!(
            format!("{e:#}").contains("AIFAB_KAFKA_PROP_SASL_PASSWORD_FILE"),
            "{e:#}"
        );
    }
}
