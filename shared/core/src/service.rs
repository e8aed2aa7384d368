//! The start-up and shutdown skeleton every service's `main.rs` calls.
//!
//! ```text
//! let svc = Service::init(ServiceSpec { name, default_port, needs }, &serve, &brokers).await?;
//! let api = my_service::router(...);            // optional, may use svc.redis() etc.
//! svc.serve(api).await?;                        // binds the port, /healthz /readyz /metrics
//! svc.supervise("consumer", consume(...));      // each loop the service needs
//! svc.shutdown.cancelled().await;               // SIGTERM, or a loop stopped
//! svc.finish().await                            // drain HTTP and loops; Err if a loop failed
//! ```
//!
//! Dependencies are connected in the background with retry and backoff; a probe per
//! dependency keeps `/readyz` true to what is reachable right now and logs every change.
//! Loops run under [`crate::supervise`]'s rules: one that ends while the service runs
//! stops the service, which then exits non-zero to be restarted.

use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use axum::Router;
use futures::FutureExt;
use metrics_exporter_prometheus::PrometheusHandle;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::backoff::Backoff;
use crate::config::{BrokerArgs, ServeArgs};
use crate::health::{ops_router, Readiness};
use crate::redis_store::RedisHandle;
use crate::secret::redact_url;
use crate::supervise::{failpoint_set, loop_end_failure, panic_message, Heartbeat, FAILPOINT_ENV};
use crate::telemetry::metric_name;

/// Which dependencies a service needs (and so which readiness checks it has).
#[derive(Debug, Clone, Copy, Default)]
pub struct Needs {
    pub kafka: bool,
    pub nats: bool,
    pub redis: bool,
}

impl Needs {
    /// Kafka, NATS and Redis.
    pub const ALL: Needs = Needs {
        kafka: true,
        nats: true,
        redis: true,
    };
}

/// This replica's id when none is configured: `<hostname>-<port>` (`<service>-<port>`
/// without a hostname). Stable across restarts of the same replica, so the transactional
/// ids made from it fence the replica's dead predecessor.
pub fn default_instance_id(service: &str, port: u16) -> String {
    let host = std::fs::read_to_string("/etc/hostname")
        .map(|h| h.trim().to_string())
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| service.to_string());
    format!("{host}-{port}")
}

/// What a service is: its name (used in logs, metrics, client ids) and default port.
#[derive(Debug, Clone, Copy)]
pub struct ServiceSpec {
    pub name: &'static str,
    pub default_port: u16,
    pub needs: Needs,
}

pub struct Service {
    pub spec: ServiceSpec,
    pub brokers: BrokerArgs,
    pub serve_args: ServeArgs,
    /// Cancelled on SIGTERM/SIGINT (or by [`Service::stop`]).
    pub shutdown: CancellationToken,
    pub readiness: Readiness,
    pub metrics: PrometheusHandle,
    nats: Option<async_nats::Client>,
    redis: Option<RedisHandle>,
    /// Dependency probes: aborted at the end.
    tasks: Vec<JoinHandle<()>>,
    /// Supervised loops (the HTTP server among them): drained at the end.
    loops: Vec<(&'static str, JoinHandle<()>)>,
    /// The first loop failure, which makes [`Service::finish`] return an error.
    failure: Arc<Mutex<Option<String>>>,
    http_addr: Option<std::net::SocketAddr>,
    /// Who may use the control API ([`crate::access`]).
    access: Arc<crate::access::Access>,
}

/// A topic's layout against the deployment's replication: warnings logged, refusals an
/// error naming the topic.
fn check_layout(
    topic: &str,
    layout: &crate::kafka::TopicLayout,
    expected: crate::kafka::Replication,
) -> anyhow::Result<()> {
    let partitions = crate::topics::TOPICS
        .iter()
        .find(|t| t.name == topic)
        .map(|t| t.partitions);
    let (refused, warnings): (Vec<_>, Vec<_>) = crate::kafka::assess(layout, expected, partitions)
        .into_iter()
        .partition(crate::kafka::Finding::refuses);
    for w in warnings {
        tracing::warn!(%topic, "{w}");
    }
    if !refused.is_empty() {
        let why: Vec<String> = refused.iter().map(|f| f.to_string()).collect();
        anyhow::bail!(
            "topic {topic}: {}; recreate or reassign the topic, or change the setting",
            why.join("; ")
        );
    }
    Ok(())
}

/// How often a healthy dependency is re-checked.
const PROBE_INTERVAL: Duration = Duration::from_secs(2);
/// Failed Kafka probes in a row after which each further probe uses a new client.
const PROBE_FAILURES_BEFORE_NEW_CLIENT: u32 = 3;

impl Service {
    /// Logging, metrics, signal handling and background dependency connections.
    pub async fn init(
        spec: ServiceSpec,
        serve: &ServeArgs,
        brokers: &BrokerArgs,
    ) -> anyhow::Result<Self> {
        crate::telemetry::init_logging(serve.log_format, &serve.log);
        let metrics = crate::telemetry::init_metrics()?;
        let shutdown = crate::shutdown::on_signal();
        Self::init_with(spec, serve, brokers, metrics, shutdown).await
    }

    /// As [`Service::init`] but with a given shutdown token (tests run services in-process).
    pub async fn init_with(
        spec: ServiceSpec,
        serve: &ServeArgs,
        brokers: &BrokerArgs,
        metrics: PrometheusHandle,
        shutdown: CancellationToken,
    ) -> anyhow::Result<Self> {
        crate::artifacts::install_tls_provider();
        let access = crate::access::Access::from_files(
            serve.admin_token_file.as_deref(),
            serve.read_token_file.as_deref(),
        )
        .context("the control API's tokens (--admin-token-file, --read-token-file)")?;
        let readiness = Readiness::new(spec.name);
        let mut svc = Service {
            spec,
            brokers: brokers.clone(),
            serve_args: serve.clone(),
            shutdown,
            readiness,
            metrics,
            nats: None,
            redis: None,
            tasks: Vec::new(),
            loops: Vec::new(),
            failure: Arc::default(),
            http_addr: None,
            access: Arc::new(access),
        };
        metrics::gauge!(metric_name(spec.name, crate::telemetry::UP)).set(1.0);
        tracing::info!(
            service = spec.name,
            version = env!("CARGO_PKG_VERSION"),
            "starting"
        );
        if spec.needs.kafka {
            let props = crate::kafka::process_props()?;
            if !props.is_empty() {
                tracing::info!(properties = ?props.names(), "kafka client properties from the deployment");
            }
            svc.readiness.register("kafka", "not probed yet");
            svc.spawn_kafka_probe()?;
        }
        if spec.needs.nats {
            svc.readiness.register("nats", "not connected yet");
            let client = crate::nats::connect(&brokers.nats_url, spec.name)
                .await
                .with_context(|| format!("NATS url {}", redact_url(&brokers.nats_url)))?;
            svc.spawn_nats_probe(client.clone());
            svc.nats = Some(client);
        }
        if spec.needs.redis {
            svc.readiness.register("redis", "not connected yet");
            let handle =
                crate::redis_store::connect_in_background(&brokers.redis_url, svc.shutdown.clone())
                    .with_context(|| format!("Redis url {}", redact_url(&brokers.redis_url)))?;
            svc.spawn_redis_probe(handle.clone());
            svc.redis = Some(handle);
        }
        Ok(svc)
    }

    /// `api`'s routes, each requiring `role` ([`crate::access`]).
    pub fn require(&self, role: crate::access::Role, api: Router) -> Router {
        crate::access::require(api, self.access.clone(), role)
    }

    /// The NATS client (present when the service needs NATS). It may be reconnecting.
    pub fn nats(&self) -> anyhow::Result<async_nats::Client> {
        self.nats
            .clone()
            .context("this service was not configured to use NATS")
    }

    /// The Redis handle (present when the service needs Redis).
    pub fn redis(&self) -> anyhow::Result<RedisHandle> {
        self.redis
            .clone()
            .context("this service was not configured to use Redis")
    }

    /// Bind the HTTP port and serve `api` (under [`http_limits`](crate::http_limits)) with
    /// the ops routes, or the ops routes on `--ops-addr` when it is another address. Fails
    /// if a port is taken.
    pub async fn serve(&mut self, api: Router) -> anyhow::Result<std::net::SocketAddr> {
        let addr = self.serve_args.http_addr_or(self.spec.default_port);
        let limits = crate::http_limits::HttpLimits {
            max_concurrent: self.serve_args.http_max_concurrent,
            timeout: Duration::from_secs(self.serve_args.http_request_timeout_s.max(1)),
        };
        let api = crate::http_limits::limited(api, limits, self.spec.name);
        let ops = ops_router(self.readiness.clone(), self.metrics.clone());
        let local = match self.serve_args.ops_addr.filter(|o| *o != addr) {
            Some(ops_addr) => {
                let local = self
                    .listen("http", addr, api, "--http-addr / AIFAB_HTTP_ADDR")
                    .await?;
                let ops_local = self
                    .listen("ops", ops_addr, ops, "--ops-addr / AIFAB_OPS_ADDR")
                    .await?;
                tracing::info!(service = self.spec.name, %local, ops = %ops_local,
                    "serving the API; /healthz /readyz /metrics on the ops address");
                local
            }
            None => {
                let local = self
                    .listen(
                        "http",
                        addr,
                        ops.merge(api),
                        "--http-addr / AIFAB_HTTP_ADDR",
                    )
                    .await?;
                tracing::info!(service = self.spec.name, %local, "serving /healthz /readyz /metrics");
                local
            }
        };
        self.http_addr = Some(local);
        Ok(local)
    }

    /// Serve `app` on `addr` until shutdown, as the supervised task `name`.
    async fn listen(
        &mut self,
        name: &'static str,
        addr: std::net::SocketAddr,
        app: Router,
        flag: &str,
    ) -> anyhow::Result<std::net::SocketAddr> {
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .with_context(|| format!("binding {name} address {addr} (set {flag})"))?;
        let local = listener.local_addr()?;
        let token = self.shutdown.clone();
        self.supervise(name, async move {
            // The peer address reaches handlers: loopback-only routes need it (access).
            let app = app.into_make_service_with_connect_info::<std::net::SocketAddr>();
            axum::serve(listener, app)
                .with_graceful_shutdown(async move { token.cancelled().await })
                .await
                .with_context(|| format!("{name} server"))
        });
        Ok(local)
    }

    /// The address the HTTP server is bound to (after [`Service::serve`]).
    pub fn http_addr(&self) -> Option<std::net::SocketAddr> {
        self.http_addr
    }

    /// Run `task`, a loop the service needs, until shutdown. If it ends first — an error,
    /// a panic, or just returning — the failure is logged naming it, `/readyz` reports
    /// `loop:<name>` stopped, and the service shuts down so that [`Service::finish`]
    /// returns the error and the process exits non-zero to be restarted.
    /// `AIFAB_FAILPOINT_LOOP=<name>` makes the loop fail at once instead (for tests).
    pub fn supervise<F>(&mut self, name: &'static str, task: F)
    where
        F: Future<Output = anyhow::Result<()>> + Send + 'static,
    {
        self.spawn_supervised(name, false, task)
    }

    /// [`Service::supervise`] a blocking loop (a Kafka consumer's) on an OS thread of its
    /// own, named `name`; its error or panic stops the service like a task's.
    pub fn supervise_thread<F>(&mut self, name: &'static str, f: F) -> anyhow::Result<()>
    where
        F: FnOnce() -> anyhow::Result<()> + Send + 'static,
    {
        let thread = crate::pipeline::spawn_loop(name, f)?;
        self.supervise(name, async move {
            thread.await.with_context(|| format!("{name} thread"))?
        });
        Ok(())
    }

    /// Check the topics this service uses against the deployment's replication (see
    /// `kafka::layout`) as each comes to exist: one that would lose data on a broker loss
    /// or refuse `acks=all` writes stops the service with the reason; another partition
    /// count than `topics.rs`'s is a warning.
    pub fn check_topics(&mut self, topics: &[&str]) {
        let brokers = self.brokers.kafka_brokers.clone();
        let expected = self.brokers.replication();
        let topics: Vec<String> = topics.iter().map(|s| s.to_string()).collect();
        let shutdown = self.shutdown.clone();
        self.supervise_until_done("topic-layout", async move {
            // Every round checks each topic not checked yet, so a missing one holds back
            // nothing but itself; missing ones are named every minute.
            let mut pending = topics;
            let mut last_named = Instant::now();
            loop {
                let mut missing = Vec::new();
                for topic in pending {
                    match crate::kafka::describe(&brokers, &topic).await {
                        Ok(Some(layout)) => check_layout(&topic, &layout, expected)?,
                        Ok(None) => missing.push(topic),
                        Err(e) => {
                            tracing::warn!(%topic, error = format!("{e:#}"),
                                "cannot check the topic's replication yet");
                            missing.push(topic);
                        }
                    }
                }
                if missing.is_empty() {
                    return Ok(());
                }
                if last_named.elapsed() >= Duration::from_secs(60) {
                    tracing::warn!(topics = ?missing, "topics not there yet: their replication is unchecked");
                    last_named = Instant::now();
                }
                pending = missing;
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_secs(10)) => {}
                    _ = shutdown.cancelled() => return Ok(()),
                }
            }
        });
    }

    /// As [`Service::supervise`], for a task that is done when it returns `Ok` (loading
    /// the first model, say): only its error or panic stops the service.
    pub fn supervise_until_done<F>(&mut self, name: &'static str, task: F)
    where
        F: Future<Output = anyhow::Result<()>> + Send + 'static,
    {
        self.spawn_supervised(name, true, task)
    }

    fn spawn_supervised<F>(&mut self, name: &'static str, may_finish: bool, task: F)
    where
        F: Future<Output = anyhow::Result<()>> + Send + 'static,
    {
        self.readiness.watch_loop_once(name);
        let task: futures::future::BoxFuture<'static, anyhow::Result<()>> =
            if failpoint_set(std::env::var(FAILPOINT_ENV).ok().as_deref(), name) {
                drop(task);
                Box::pin(async move {
                    Err(anyhow::anyhow!(
                        "failed on purpose ({FAILPOINT_ENV}={name})"
                    ))
                })
            } else {
                Box::pin(task)
            };
        let (readiness, shutdown, failure) = (
            self.readiness.clone(),
            self.shutdown.clone(),
            self.failure.clone(),
        );
        let service = self.spec.name;
        let handle = tokio::spawn(async move {
            let result = AssertUnwindSafe(task)
                .catch_unwind()
                .await
                .map_err(|p| panic_message(&*p));
            match loop_end_failure(&result, shutdown.is_cancelled(), may_finish) {
                None => {
                    if let Ok(Err(e)) = &result {
                        tracing::warn!(loop_name = name, error = %format!("{e:#}"), "loop failed while stopping");
                    }
                }
                Some(why) => {
                    readiness.loop_stopped(name, &why);
                    metrics::counter!(metric_name(service, crate::telemetry::LOOP_FAILURES), "loop" => name)
                        .increment(1);
                    tracing::error!(loop_name = name, error = %why,
                        "a loop the service needs stopped; shutting down to be restarted");
                    failure
                        .lock()
                        .expect("failure lock")
                        .get_or_insert_with(|| format!("loop {name} stopped: {why}"));
                    shutdown.cancel();
                }
            }
        });
        self.loops.push((name, handle));
    }

    /// A heartbeat for the loop `name` (pass it to the loop, then [`Service::supervise`]
    /// it): `/readyz` fails, naming the loop, after `stale_after` without progress.
    pub fn heartbeat(&self, name: &'static str, stale_after: Duration) -> Heartbeat {
        let hb = Heartbeat::new();
        self.readiness
            .watch_loop(name, Some((hb.clone(), stale_after)));
        hb
    }

    /// Why the service is stopping after a loop failed, if one did.
    pub fn failure(&self) -> Option<String> {
        self.failure.lock().expect("failure lock").clone()
    }

    /// Wait until every readiness check passes (or shutdown). Returns false on shutdown.
    pub async fn wait_ready(&self) -> bool {
        loop {
            if self.readiness.is_ready() {
                return true;
            }
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_millis(100)) => {}
                _ = self.shutdown.cancelled() => return false,
            }
        }
    }

    /// Ask the service to stop, as SIGTERM does.
    pub fn stop(&self) {
        self.shutdown.cancel();
    }

    /// Stop and drain the supervised loops (the HTTP server among them), all within one
    /// shutdown grace period; a loop still running after it is aborted (a loop on its own
    /// thread then ends with the process).
    pub async fn stop_loops(&mut self) {
        self.shutdown.cancel();
        let until = Instant::now() + Duration::from_secs(self.serve_args.shutdown_grace_s);
        for (name, handle) in self.loops.drain(..) {
            let abort = handle.abort_handle();
            if tokio::time::timeout(until.saturating_duration_since(Instant::now()), handle)
                .await
                .is_err()
            {
                tracing::warn!(
                    loop_name = name,
                    "loop did not stop within the grace period; aborted"
                );
                abort.abort();
            }
        }
    }

    /// After shutdown was requested: drain HTTP and the loops, end background tasks.
    /// An error when a loop failed (the process should exit non-zero to be restarted).
    pub async fn finish(mut self) -> anyhow::Result<()> {
        self.stop_loops().await;
        for t in self.tasks.drain(..) {
            t.abort();
        }
        if let Some(nats) = self.nats.take() {
            // Flush buffered publishes before exiting; bounded so a dead NATS cannot hang us.
            let _ = tokio::time::timeout(Duration::from_secs(2), nats.flush()).await;
        }
        match self.failure() {
            None => {
                tracing::info!(service = self.spec.name, "stopped");
                Ok(())
            }
            Some(why) => {
                tracing::error!(service = self.spec.name, error = %why, "stopped after a loop failed");
                Err(anyhow::anyhow!(why))
            }
        }
    }

    fn spawn_kafka_probe(&mut self) -> anyhow::Result<()> {
        let brokers = self.brokers.kafka_brokers.clone();
        let client_id = format!("aifab-{}-probe", self.spec.name);
        let mut client = std::sync::Arc::new(crate::kafka::metadata_client(&brokers, &client_id)?);
        let readiness = self.readiness.clone();
        let token = self.shutdown.clone();
        self.tasks.push(tokio::spawn(async move {
            let mut backoff = Backoff::for_dependencies();
            loop {
                // After a broker restart a librdkafka client can go on failing its metadata
                // requests (broker transport failure) long after the broker is back, so a
                // probe that keeps failing asks through a new client.
                if backoff.attempt() >= PROBE_FAILURES_BEFORE_NEW_CLIENT {
                    match crate::kafka::metadata_client(&brokers, &client_id) {
                        Ok(fresh) => {
                            let old = std::mem::replace(&mut client, std::sync::Arc::new(fresh));
                            // Destroying a client waits for its threads: not on the runtime.
                            drop(tokio::task::spawn_blocking(move || drop(old)));
                        }
                        Err(e) => {
                            tracing::warn!(error = %e, "could not create a new kafka probe client")
                        }
                    }
                }
                let c = client.clone();
                let result = tokio::task::spawn_blocking(move || {
                    crate::kafka::probe(&c, Duration::from_secs(3))
                })
                .await;
                let delay = match result {
                    Ok(Ok(n)) => {
                        if readiness.set("kafka", true, format!("{brokers} ({n} broker(s))")) {
                            tracing::info!(%brokers, "kafka reachable");
                        }
                        backoff.reset();
                        PROBE_INTERVAL
                    }
                    Ok(Err(e)) => {
                        let delay = backoff.next_delay_jittered();
                        readiness.set("kafka", false, e.to_string());
                        tracing::warn!(%brokers, attempt = backoff.attempt(), retry_in = ?delay,
                            error = %e, "kafka unreachable; retrying");
                        delay
                    }
                    Err(e) => {
                        tracing::error!(error = %e, "kafka probe task failed");
                        PROBE_INTERVAL
                    }
                };
                tokio::select! {
                    _ = tokio::time::sleep(delay) => {}
                    _ = token.cancelled() => return,
                }
            }
        }));
        Ok(())
    }

    fn spawn_nats_probe(&mut self, client: async_nats::Client) {
        let readiness = self.readiness.clone();
        let token = self.shutdown.clone();
        let url = redact_url(&self.brokers.nats_url);
        self.tasks.push(tokio::spawn(async move {
            let mut backoff = Backoff::for_dependencies();
            loop {
                let ok = crate::nats::is_connected(&client);
                let delay = if ok {
                    if readiness.set("nats", true, url.clone()) {
                        tracing::info!(%url, "nats reachable");
                    }
                    backoff.reset();
                    PROBE_INTERVAL
                } else {
                    let delay = backoff.next_delay_jittered();
                    let state = format!("{:?}", client.connection_state());
                    if readiness.set("nats", false, format!("{url}: {state}"))
                        || backoff.attempt() % 10 == 1
                    {
                        tracing::warn!(
                            %url,
                            %state,
                            attempt = backoff.attempt(),
                            "nats unreachable; client is retrying"
                        );
                    }
                    delay.min(Duration::from_secs(2))
                };
                tokio::select! {
                    _ = tokio::time::sleep(delay) => {}
                    _ = token.cancelled() => return,
                }
            }
        }));
    }

    fn spawn_redis_probe(&mut self, handle: RedisHandle) {
        let readiness = self.readiness.clone();
        let token = self.shutdown.clone();
        let url = redact_url(&self.brokers.redis_url);
        self.tasks.push(tokio::spawn(async move {
            let mut backoff = Backoff::for_dependencies();
            loop {
                let result = match handle.try_get() {
                    None => Err(anyhow::anyhow!("not connected yet")),
                    Some(mut conn) => crate::redis_store::ping(&mut conn).await,
                };
                let delay = match result {
                    Ok(()) => {
                        if readiness.set("redis", true, url.clone()) {
                            tracing::info!(%url, "redis reachable");
                        }
                        backoff.reset();
                        PROBE_INTERVAL
                    }
                    Err(e) => {
                        let delay = backoff.next_delay_jittered().min(Duration::from_secs(5));
                        if readiness.set("redis", false, e.to_string()) {
                            tracing::warn!(%url, error = %e, "redis unreachable; retrying");
                        }
                        delay
                    }
                };
                tokio::select! {
                    _ = tokio::time::sleep(delay) => {}
                    _ = token.cancelled() => return,
                }
            }
        }));
    }
}

/// A service dropped without [`Service::finish`] (its `run` returned early with an error)
/// still stops its loops: a loop thread left waiting for shutdown would keep the process
/// from exiting.
impl Drop for Service {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn service() -> Service {
        let serve = ServeArgs {
            http_addr: None,
            ops_addr: None,
            admin_token_file: None,
            read_token_file: None,
            http_max_concurrent: 8,
            http_request_timeout_s: 5,
            log_format: crate::config::LogFormat::Text,
            log: "info".into(),
            shutdown_grace_s: 5,
        };
        let brokers = BrokerArgs {
            kafka_brokers: String::new(),
            nats_url: String::new(),
            redis_url: String::new(),
            audit_topic: String::new(),
            topic_replication_factor: None,
            topic_min_insync_replicas: None,
        };
        let spec = ServiceSpec {
            name: "test",
            default_port: 0,
            needs: Needs::default(),
        };
        let metrics = crate::telemetry::init_metrics().unwrap();
        Service::init_with(spec, &serve, &brokers, metrics, CancellationToken::new())
            .await
            .unwrap()
    }

    #[tokio::test]
    async fn a_loop_that_fails_stops_the_service_and_names_itself() {
        let mut svc = service().await;
        let token = svc.shutdown.clone();
        svc.supervise("steady", async move {
            token.cancelled().await;
            Ok(())
        });
        assert!(svc.readiness.is_ready());
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        svc.supervise("examples-consumer", async move {
            let _ = rx.await;
            anyhow::bail!("committed offsets: coordinator not available")
        });
        tx.send(()).unwrap();
        tokio::time::timeout(Duration::from_secs(5), svc.shutdown.cancelled())
            .await
            .expect("the failure stops the service");
        let report = svc.readiness.report();
        assert!(!report.ready);
        assert_eq!(
            report.checks["loop:examples-consumer"].detail,
            "stopped: committed offsets: coordinator not available"
        );
        assert!(
            report.checks["loop:steady"].ok,
            "the other loop did not fail"
        );
        let err = svc.finish().await.expect_err("finish reports the failure");
        assert!(
            err.to_string().contains("loop examples-consumer stopped"),
            "{err}"
        );
    }

    #[tokio::test]
    async fn a_loop_that_returns_or_panics_while_running_is_a_failure_too() {
        for (name, panics) in [("returns", false), ("panics", true)] {
            let mut svc = service().await;
            svc.supervise(name, async move {
                if panics {
                    panic!("boom");
                }
                Ok(())
            });
            tokio::time::timeout(Duration::from_secs(5), svc.shutdown.cancelled())
                .await
                .expect("stopped");
            let detail = svc.readiness.report().checks[&format!("loop:{name}")]
                .detail
                .clone();
            let expected = if panics {
                "stopped: panicked: boom"
            } else {
                "stopped: ended while the service was running"
            };
            assert_eq!(detail, expected);
            assert!(svc.finish().await.is_err());
        }
    }

    #[tokio::test]
    async fn loops_that_end_on_shutdown_are_no_failure() {
        let mut svc = service().await;
        for name in ["a", "b"] {
            let token = svc.shutdown.clone();
            svc.supervise(name, async move {
                token.cancelled().await;
                anyhow::bail!("interrupted mid-batch")
            });
        }
        svc.stop();
        svc.finish().await.expect("a clean stop");
    }
}
