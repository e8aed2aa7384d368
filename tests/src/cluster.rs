//! [`ClusterStack`]: `scripts/stack-up --brokers 3` on free loopback ports and a temp data
//! dir: three Kafka nodes (combined KRaft broker+controller), every topic with 3 replicas
//! and min ISR 2, plus NATS and Redis. Broker-loss tests SIGKILL its nodes and start them
//! again; [`Leadership`] says which node to kill.

use std::collections::BTreeMap;
use std::time::Duration;

use rdkafka::consumer::{BaseConsumer, Consumer};

use crate::stack::{free_port, is_zombie, run_stack_down, run_stack_up, stack_script, Endpoints};
use crate::wait::eventually;

pub const NODES: usize = 3;

pub struct ClusterStack {
    pub dir: tempfile::TempDir,
    pub kafka_ports: Vec<u16>,
    nats_port: u16,
    redis_port: u16,
    /// The variables that place the stack (data dir and ports), for stack-up/down.
    placement: Vec<(&'static str, String)>,
}

impl ClusterStack {
    /// Start one (512 MiB heap per node); panics with stack-up's output if it fails.
    pub async fn up() -> Self {
        let dir = tempfile::Builder::new()
            .prefix("aifab-cluster-stack-")
            .tempdir()
            .unwrap();
        let kafka_ports: Vec<u16> = (0..NODES).map(|_| free_port()).collect();
        let controller_ports: Vec<u16> = (0..NODES).map(|_| free_port()).collect();
        let (nats_port, redis_port) = (free_port(), free_port());
        let list = |ports: &[u16]| {
            ports
                .iter()
                .map(u16::to_string)
                .collect::<Vec<_>>()
                .join(",")
        };
        let placement = vec![
            ("AIFAB_DATA_DIR", dir.path().display().to_string()),
            ("AIFAB_KAFKA_PORTS", list(&kafka_ports)),
            ("AIFAB_KAFKA_CONTROLLER_PORTS", list(&controller_ports)),
            ("AIFAB_NATS_PORT", nats_port.to_string()),
            ("AIFAB_NATS_MONITOR_PORT", free_port().to_string()),
            ("AIFAB_REDIS_PORT", redis_port.to_string()),
            ("AIFAB_KAFKA_HEAP_OPTS", "-Xms128m -Xmx512m".to_string()),
        ];
        let stack = ClusterStack {
            dir,
            kafka_ports,
            nats_port,
            redis_port,
            placement,
        };
        stack.start().await;
        stack
    }

    fn script(&self, name: &str) -> std::process::Command {
        let mut cmd = stack_script(name);
        cmd.args(["--brokers", &NODES.to_string()])
            .envs(self.placement.iter().map(|(k, v)| (k, v)));
        cmd
    }

    /// `scripts/stack-up --brokers 3`: starts every node that is not running and waits
    /// until all are registered.
    pub async fn start(&self) {
        let cmd = self.script("stack-up");
        tokio::task::spawn_blocking(move || run_stack_up(cmd, "stack-up --brokers 3"))
            .await
            .unwrap();
    }

    pub fn endpoints(&self) -> Endpoints {
        Endpoints {
            kafka: self
                .kafka_ports
                .iter()
                .map(|p| format!("127.0.0.1:{p}"))
                .collect::<Vec<_>>()
                .join(","),
            nats: format!("nats://127.0.0.1:{}", self.nats_port),
            redis: format!("redis://127.0.0.1:{}", self.redis_port),
        }
    }

    fn node_dir(&self, node: i32) -> std::path::PathBuf {
        self.dir.path().join(format!("kafka-{node}"))
    }

    /// The pid of node `node` (1-based, its `node.id`), from stack-up's pid file.
    pub fn pid(&self, node: i32) -> u32 {
        let path = self.node_dir(node).join("kafka.pid");
        let text =
            std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        text.trim()
            .parse()
            .unwrap_or_else(|e| panic!("{}: {e}: {text:?}", path.display()))
    }

    /// SIGKILL node `node` (no controlled shutdown: its leaderships move only once the
    /// controller notices) and wait until it is gone.
    pub async fn kill(&self, node: i32) {
        let pid = self.pid(node);
        let status = std::process::Command::new("kill")
            .args(["-KILL", &pid.to_string()])
            .status()
            .unwrap();
        assert!(status.success(), "kill -KILL {pid}");
        // Its parent (stack-up) is gone, so an unreaped zombie counts as gone too.
        let gone =
            move || !std::path::Path::new(&format!("/proc/{pid}")).exists() || is_zombie(pid);
        eventually(
            Duration::from_secs(30),
            &format!("node {node} (pid {pid}) gone"),
            || async move { gone().then_some(()) },
        )
        .await;
    }

    /// The active controller, from the quorum state a live node keeps on disk.
    pub fn controller(&self, alive: i32) -> Option<i32> {
        let path = self
            .node_dir(alive)
            .join("data/__cluster_metadata-0/quorum-state");
        let state: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(path).ok()?).ok()?;
        state["leaderId"]
            .as_i64()
            .and_then(|id| i32::try_from(id).ok())
            .filter(|id| *id >= 1)
    }

    /// Who leads which partition, as the cluster's metadata says now (None when the
    /// metadata cannot be read: callers retry).
    pub async fn leadership(&self) -> Option<Leadership> {
        let brokers = self.endpoints().kafka;
        tokio::task::spawn_blocking(move || {
            let c: BaseConsumer = aifab_core::kafka::consumer_config(&brokers, "aifab-tests", "x")
                .create()
                .ok()?;
            let md = c.fetch_metadata(None, Duration::from_secs(10)).ok()?;
            let mut l = Leadership::default();
            for t in md.topics() {
                for p in t.partitions() {
                    l.partitions
                        .push((t.name().to_string(), p.id(), p.leader()));
                    l.in_sync.push(p.isr().len());
                }
            }
            Some(l)
        })
        .await
        .ok()
        .flatten()
    }
}

impl Drop for ClusterStack {
    fn drop(&mut self) {
        run_stack_down(self.script("stack-down"));
        if std::thread::panicking() {
            let kept = std::env::temp_dir()
                .join(format!("aifab-cluster-stack-logs-{}", self.kafka_ports[0]));
            for node in 1..=NODES as i32 {
                let to = kept.join(format!("kafka-{node}"));
                let from = self.node_dir(node).join("logs");
                if std::fs::create_dir_all(&to).is_ok() {
                    for entry in std::fs::read_dir(&from).into_iter().flatten().flatten() {
                        let _ = std::fs::copy(entry.path(), to.join(entry.file_name()));
                    }
                }
            }
            eprintln!("cluster stack: broker logs kept in {}", kept.display());
        }
    }
}

/// Partition leaders: (topic, partition, leader node id), and each one's in-sync replicas.
#[derive(Debug, Clone, Default)]
pub struct Leadership {
    pub partitions: Vec<(String, i32, i32)>,
    /// In-sync replicas of each of `partitions` (same index).
    pub in_sync: Vec<usize>,
}

/// `__transaction_state`'s partition count (the broker default, which stack-up keeps).
pub const TXN_STATE_PARTITIONS: i32 = 50;

impl Leadership {
    /// Partitions led per node, over the topics whose name starts with `prefix`.
    pub fn led_by(&self, prefix: &str) -> BTreeMap<i32, usize> {
        let mut led = BTreeMap::new();
        for (t, _, leader) in &self.partitions {
            if t.starts_with(prefix) && *leader >= 0 {
                *led.entry(*leader).or_default() += 1;
            }
        }
        led
    }

    /// The node leading the most partitions of topics starting with `prefix` (the lowest
    /// id on a tie).
    pub fn busiest(&self, prefix: &str) -> Option<i32> {
        let led = self.led_by(prefix);
        let most = *led.values().max()?;
        led.into_iter().find(|(_, n)| *n == most).map(|(id, _)| id)
    }

    /// True when every partition has all `replicas` in sync (a restarted node has caught
    /// up: losing another one now takes no partition offline).
    pub fn fully_replicated(&self, replicas: usize) -> bool {
        !self.in_sync.is_empty() && self.in_sync.iter().all(|n| *n >= replicas)
    }

    /// The transaction coordinator of `transactional_id`: the leader of its
    /// `__transaction_state` partition (None until that topic exists).
    pub fn coordinator(&self, transactional_id: &str) -> Option<i32> {
        let p = txn_state_partition(transactional_id, TXN_STATE_PARTITIONS);
        self.partitions
            .iter()
            .find(|(t, id, _)| t == "__transaction_state" && *id == p)
            .map(|(_, _, leader)| *leader)
    }
}

/// The `__transaction_state` partition of a transactional id, as the broker picks it:
/// `Utils.abs(id.hashCode()) % partitions` with Java's `String.hashCode` (UTF-16 units).
pub fn txn_state_partition(transactional_id: &str, partitions: i32) -> i32 {
    let hash = transactional_id
        .encode_utf16()
        .fold(0i32, |h, u| h.wrapping_mul(31).wrapping_add(i32::from(u)));
    // Kafka's Utils.abs maps i32::MIN to 0 rather than overflowing.
    let abs = if hash == i32::MIN { 0 } else { hash.abs() };
    abs % partitions
}

#[cfg(test)]
mod unit {
    use super::*;

    #[test]
    fn transactional_ids_map_to_partitions_as_javas_hash_code_does() {
        // "hello".hashCode() == 99162322; "polygenelubricants".hashCode() == i32::MIN.
        assert_eq!(txn_state_partition("hello", 50), 99162322 % 50);
        assert_eq!(txn_state_partition("polygenelubricants", 50), 0);
        // A negative hash is taken by abs.
        let h = "zzzzzzzzzz"
            .encode_utf16()
            .fold(0i32, |h, u| h.wrapping_mul(31).wrapping_add(i32::from(u)));
        assert!(h < 0);
        assert_eq!(txn_state_partition("zzzzzzzzzz", 50), h.abs() % 50);
    }

    #[test]
    fn the_busiest_node_leads_the_most_partitions_of_the_prefix() {
        let l = Leadership {
            partitions: vec![
                ("aifab.a".into(), 0, 1),
                ("aifab.a".into(), 1, 2),
                ("aifab.b".into(), 0, 2),
                ("other".into(), 0, 3),
                ("other".into(), 1, 3),
                ("other".into(), 2, 3),
                ("__transaction_state".into(), 4, 3),
            ],
            in_sync: vec![3, 3, 3, 3, 3, 2, 3],
        };
        assert!(!l.fully_replicated(3));
        assert!(l.fully_replicated(2));
        assert!(!Leadership::default().fully_replicated(1));
        assert_eq!(l.busiest("aifab."), Some(2));
        assert_eq!(l.busiest(""), Some(3));
        assert_eq!(l.busiest("none"), None);
        let id = (0..)
            .map(|k| format!("id-{k}"))
            .find(|id| txn_state_partition(id, TXN_STATE_PARTITIONS) == 4)
            .unwrap();
        assert_eq!(l.coordinator(&id), Some(3));
        assert_eq!(l.coordinator("hello"), None);
    }
}
