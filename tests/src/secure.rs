//! [`SecureStack`]: `scripts/stack-up --secure` on free loopback ports and a temp data
//! dir (TLS everywhere, SCRAM users and ACLs, NATS users with permissions, Redis ACL
//! users), and each principal's settings from the env files it writes.

use std::path::PathBuf;

use aifab_core::kafka::KafkaProps;
use aifab_core::nats::NatsAuth;
use aifab_core::redis_store::RedisAuth;
use aifab_core::secret::read_secret_file;

use crate::stack::{free_port, run_stack_down, run_stack_up, stack_script};

pub struct SecureStack {
    pub dir: tempfile::TempDir,
    /// The variables that place the stack (data dir and ports), for stack-up/down.
    pub placement: Vec<(&'static str, String)>,
}

impl SecureStack {
    /// Start one (Kafka with a 512 MiB heap); panics with stack-up's output if it fails.
    pub fn up() -> Self {
        let dir = tempfile::Builder::new()
            .prefix("aifab-secure-stack-")
            .tempdir()
            .unwrap();
        let placement = vec![
            ("AIFAB_DATA_DIR", dir.path().display().to_string()),
            ("AIFAB_KAFKA_PORT", free_port().to_string()),
            ("AIFAB_KAFKA_CONTROLLER_PORT", free_port().to_string()),
            ("AIFAB_KAFKA_INTERNAL_PORT", free_port().to_string()),
            ("AIFAB_NATS_PORT", free_port().to_string()),
            ("AIFAB_NATS_MONITOR_PORT", free_port().to_string()),
            ("AIFAB_REDIS_PORT", free_port().to_string()),
            ("AIFAB_KAFKA_HEAP_OPTS", "-Xms128m -Xmx512m".to_string()),
        ];
        let stack = SecureStack { dir, placement };
        run_stack_up(stack.script("stack-up"), "stack-up --secure");
        stack
    }

    fn script(&self, name: &str) -> std::process::Command {
        let mut cmd = stack_script(name);
        cmd.arg("--secure")
            .envs(self.placement.iter().map(|(k, v)| (k, v)));
        cmd
    }

    pub fn secrets(&self) -> PathBuf {
        self.dir.path().join("secrets")
    }

    /// The directory of `<service>.env` files (`aifab up --env-dir`).
    pub fn env_dir(&self) -> PathBuf {
        self.secrets().join("env")
    }

    /// The settings of `principal`'s env file (`ingest`, ..., `cli`).
    pub fn env(&self, principal: &str) -> Vec<(String, String)> {
        let path = self.env_dir().join(format!("{principal}.env"));
        dotenvy::from_path_iter(&path)
            .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
            .map(|kv| kv.expect("KEY=value"))
            .collect()
    }

    pub fn var(&self, principal: &str, key: &str) -> String {
        self.env(principal)
            .into_iter()
            .find(|(k, _)| k == key)
            .unwrap_or_else(|| panic!("{principal}.env has no {key}"))
            .1
    }

    /// `principal`'s librdkafka properties (SASL_SSL, its SCRAM user, the CA).
    pub fn kafka_props(&self, principal: &str) -> KafkaProps {
        KafkaProps::from_sources(None, self.env(principal), |p| read_secret_file(p)).unwrap()
    }

    pub fn kafka_brokers(&self) -> String {
        self.var("cli", "AIFAB_KAFKA_BROKERS")
    }

    pub fn nats_url(&self) -> String {
        self.var("cli", "AIFAB_NATS_URL")
    }

    pub fn redis_url(&self) -> String {
        self.var("cli", "AIFAB_REDIS_URL")
    }

    /// `principal`'s NATS user, password and the CA.
    pub fn nats_auth(&self, principal: &str) -> NatsAuth {
        NatsAuth {
            user_password: Some((principal.to_string(), self.password(principal, "nats"))),
            ca_file: Some(self.secrets().join("ca.pem")),
            ..NatsAuth::default()
        }
    }

    /// `principal`'s Redis ACL user, password and the CA.
    pub fn redis_auth(&self, principal: &str) -> RedisAuth {
        RedisAuth {
            username: Some(principal.to_string()),
            password: Some(self.password(principal, "redis")),
            ca_pem: Some(std::fs::read(self.secrets().join("ca.pem")).unwrap()),
            client_cert_pem: None,
        }
    }

    /// `principal`'s password for `system` (`kafka`, `nats`, `redis`).
    pub fn password(&self, principal: &str, system: &str) -> String {
        read_secret_file(
            self.secrets()
                .join(principal)
                .join(format!("{system}-password")),
        )
        .unwrap()
    }

    /// Every password the stack made (to look for where none may appear).
    pub fn all_passwords(&self) -> Vec<String> {
        let mut out = Vec::new();
        for entry in std::fs::read_dir(self.secrets()).unwrap().flatten() {
            let path = entry.path();
            if path.is_dir() {
                for f in std::fs::read_dir(&path).unwrap().flatten() {
                    if f.file_name().to_string_lossy().ends_with("-password") {
                        out.push(read_secret_file(f.path()).unwrap());
                    }
                }
            } else if path.to_string_lossy().ends_with("-password") {
                out.push(read_secret_file(&path).unwrap());
            }
        }
        out
    }
}

impl Drop for SecureStack {
    fn drop(&mut self) {
        run_stack_down(self.script("stack-down"));
        if std::thread::panicking() {
            let kept = std::env::temp_dir()
                .join(format!("aifab-secure-stack-logs-{}", std::process::id()));
            let _ = std::fs::create_dir_all(&kept);
            for log in ["kafka/logs/server.log", "nats/nats.log", "redis/redis.log"] {
                let from = self.dir.path().join(log);
                let _ = std::fs::copy(&from, kept.join(log.replace('/', "_")));
            }
            eprintln!("secure stack: broker logs kept in {}", kept.display());
        }
    }
}
