//! Where the broker, NATS and Redis are: the shared local stack, or a private stack or
//! server of a test's own that fault tests stop and restart without touching the shared
//! one.

use std::time::Duration;

use crate::wait::eventually;

pub fn kafka_brokers() -> String {
    std::env::var("AIFAB_KAFKA_BROKERS").unwrap_or_else(|_| "127.0.0.1:9092".into())
}

pub fn nats_url() -> String {
    std::env::var("AIFAB_NATS_URL").unwrap_or_else(|_| "nats://127.0.0.1:4222".into())
}

pub fn redis_url() -> String {
    std::env::var("AIFAB_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into())
}

/// Where the broker, NATS and Redis are: the shared local stack ([`Endpoints::shared`],
/// from the `AIFAB_*` variables) or a [`PrivateStack`] a fault test may stop and restart.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoints {
    pub kafka: String,
    pub nats: String,
    pub redis: String,
}

impl Endpoints {
    pub fn shared() -> Self {
        Endpoints {
            kafka: kafka_brokers(),
            nats: nats_url(),
            redis: redis_url(),
        }
    }
}

/// A loopback port free right now.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// True when something accepts TCP connections on 127.0.0.1:`port`.
pub fn port_open(port: u16) -> bool {
    std::net::TcpStream::connect_timeout(&([127, 0, 0, 1], port).into(), Duration::from_millis(500))
        .is_ok()
}

/// `scripts/<name>` (stack-up or stack-down) with stdin closed; the caller adds the
/// arguments and the variables that place its stack.
pub(crate) fn stack_script(name: &str) -> std::process::Command {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap();
    let mut cmd = std::process::Command::new(root.join("scripts").join(name));
    cmd.stdin(std::process::Stdio::null());
    cmd
}

/// Run a stack-up command; panic with its output (`what` names it) unless it succeeds.
pub(crate) fn run_stack_up(mut cmd: std::process::Command, what: &str) {
    let out = cmd.output().unwrap_or_else(|e| panic!("run {what}: {e}"));
    assert!(
        out.status.success(),
        "{what} failed: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Run a stack-down command for a Drop: quietly, whatever it answers.
pub(crate) fn run_stack_down(mut cmd: std::process::Command) {
    let _ = cmd
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status();
}

/// SIGTERM process `pid` and wait (up to `timeout`) until it is gone; panics if it is not.
pub async fn terminate_pid(pid: u32, timeout: Duration) {
    let status = std::process::Command::new("kill")
        .arg("-TERM")
        .arg(pid.to_string())
        .status()
        .unwrap();
    assert!(status.success(), "kill -TERM {pid}");
    let alive = move || std::path::Path::new(&format!("/proc/{pid}")).exists() && !is_zombie(pid);
    eventually(
        timeout,
        &format!("pid {pid} to exit after SIGTERM"),
        || async move { (!alive()).then_some(()) },
    )
    .await;
}

pub(crate) fn is_zombie(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| {
            s.rsplit_once(')')
                .map(|(_, rest)| rest.trim_start().starts_with('Z'))
        })
        .unwrap_or(false)
}

/// The parts of a [`PrivateStack`] that can be stopped and started again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Component {
    Kafka,
    Nats,
    Redis,
}

/// A Kafka + NATS + Redis stack of the test's own, on free loopback ports and a temp data
/// dir, started by `scripts/stack-up` (with the topics of `shared/core/src/topics.rs`):
/// fault tests stop and restart its parts without touching the shared stack. Dropping it
/// runs `scripts/stack-down` for it.
pub struct PrivateStack {
    pub dir: tempfile::TempDir,
    pub kafka_port: u16,
    pub kafka_controller_port: u16,
    pub nats_port: u16,
    pub nats_monitor_port: u16,
    pub redis_port: u16,
}

impl PrivateStack {
    /// Start one (Kafka with a 512 MiB heap); panics with stack-up's output if it fails.
    pub async fn up() -> Self {
        let stack = PrivateStack {
            dir: tempfile::Builder::new()
                .prefix("aifab-private-stack-")
                .tempdir()
                .unwrap(),
            kafka_port: free_port(),
            kafka_controller_port: free_port(),
            nats_port: free_port(),
            nats_monitor_port: free_port(),
            redis_port: free_port(),
        };
        stack.start().await;
        stack
    }

    pub fn endpoints(&self) -> Endpoints {
        Endpoints {
            kafka: format!("127.0.0.1:{}", self.kafka_port),
            nats: format!("nats://127.0.0.1:{}", self.nats_port),
            redis: format!("redis://127.0.0.1:{}", self.redis_port),
        }
    }

    fn script(&self, name: &str) -> std::process::Command {
        let mut cmd = stack_script(name);
        cmd.env("AIFAB_DATA_DIR", self.dir.path())
            .env("AIFAB_KAFKA_PORT", self.kafka_port.to_string())
            .env(
                "AIFAB_KAFKA_CONTROLLER_PORT",
                self.kafka_controller_port.to_string(),
            )
            .env("AIFAB_NATS_PORT", self.nats_port.to_string())
            .env(
                "AIFAB_NATS_MONITOR_PORT",
                self.nats_monitor_port.to_string(),
            )
            .env("AIFAB_REDIS_PORT", self.redis_port.to_string())
            .env("AIFAB_KAFKA_HEAP_OPTS", "-Xms128m -Xmx512m");
        cmd
    }

    /// `scripts/stack-up` for this stack: starts whatever part is not running (on the
    /// same data dir) and waits until it answers.
    pub async fn start(&self) {
        let cmd = self.script("stack-up");
        tokio::task::spawn_blocking(move || run_stack_up(cmd, "private stack-up"))
            .await
            .unwrap();
    }

    /// The pid of a running part, from stack-up's pid file.
    pub fn pid(&self, c: Component) -> u32 {
        let file = match c {
            Component::Kafka => "kafka/kafka.pid",
            Component::Nats => "nats/nats.pid",
            Component::Redis => "redis/redis.pid",
        };
        let path = self.dir.path().join(file);
        let text =
            std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        text.trim()
            .parse()
            .unwrap_or_else(|e| panic!("{}: {e}: {text:?}", path.display()))
    }

    /// Stop one part gracefully (SIGTERM, then wait for it to exit).
    pub async fn stop(&self, c: Component) {
        terminate_pid(self.pid(c), Duration::from_secs(60)).await;
    }
}

impl Drop for PrivateStack {
    fn drop(&mut self) {
        run_stack_down(self.script("stack-down"));
        // A failing test keeps the broker's logs, which the temp dir would take with it.
        if std::thread::panicking() {
            let kept =
                std::env::temp_dir().join(format!("aifab-private-stack-logs-{}", self.kafka_port));
            let logs = self.dir.path().join("kafka").join("logs");
            if std::fs::create_dir_all(&kept).is_ok() {
                for entry in std::fs::read_dir(&logs).into_iter().flatten().flatten() {
                    let _ = std::fs::copy(entry.path(), kept.join(entry.file_name()));
                }
                eprintln!("private stack: broker logs kept in {}", kept.display());
            }
        }
    }
}

/// A NATS or Redis server of the test's own on a free port (no broker: lighter than a
/// [`PrivateStack`]), that a test stops and starts again on the same port and data dir.
pub struct PrivateServer {
    pub port: u16,
    program: String,
    args: Vec<String>,
    pub dir: tempfile::TempDir,
    child: Option<std::process::Child>,
}

impl PrivateServer {
    /// `nats-server` on loopback (JetStream on, store in the temp dir).
    pub async fn nats() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let port = free_port();
        let args = [
            "-a",
            "127.0.0.1",
            "-p",
            &port.to_string(),
            "-js",
            "-sd",
            &dir.path().display().to_string(),
        ]
        .map(String::from)
        .to_vec();
        Self::start_new("nats-server", args, port, dir).await
    }

    /// `redis-server` on loopback with an append-only file in the temp dir (what it holds
    /// survives a restart).
    pub async fn redis() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let port = free_port();
        let args = [
            "--bind",
            "127.0.0.1",
            "--port",
            &port.to_string(),
            "--dir",
            &dir.path().display().to_string(),
            "--appendonly",
            "yes",
            "--save",
            "",
            "--daemonize",
            "no",
        ]
        .map(String::from)
        .to_vec();
        Self::start_new("redis-server", args, port, dir).await
    }

    async fn start_new(
        program: &str,
        args: Vec<String>,
        port: u16,
        dir: tempfile::TempDir,
    ) -> Self {
        let mut s = PrivateServer {
            port,
            program: program.into(),
            args,
            dir,
            child: None,
        };
        s.start().await;
        s
    }

    /// Start it (again), and wait until its port accepts connections.
    pub async fn start(&mut self) {
        assert!(self.child.is_none(), "{} already running", self.program);
        let child = std::process::Command::new(&self.program)
            .args(&self.args)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("starting {}: {e}", self.program));
        self.child = Some(child);
        let port = self.port;
        eventually(
            Duration::from_secs(30),
            &format!("{} on :{port}", self.program),
            || async move { port_open(port).then_some(()) },
        )
        .await;
    }

    /// SIGTERM it and wait for it to exit.
    pub async fn stop(&mut self) {
        let mut child = self.child.take().expect("running");
        let status = std::process::Command::new("kill")
            .arg("-TERM")
            .arg(child.id().to_string())
            .status()
            .unwrap();
        assert!(status.success());
        let status = tokio::task::spawn_blocking(move || child.wait())
            .await
            .unwrap()
            .unwrap();
        assert!(
            !port_open(self.port),
            "{} still listening after exit ({status})",
            self.program
        );
    }
}

impl Drop for PrivateServer {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}
