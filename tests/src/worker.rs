//! Inference-worker deployments of a test's own: an input topic, a group and a task,
//! replicas started and killed at will, and the group's lag to wait on.

use std::time::Duration;

use crate::fixtures::{tiny_models, unique, TinyModels};
use crate::kafka::create_topic_on;
use crate::process::{bin_path, service_log};
use crate::stack::{free_port, Endpoints};
use crate::wait::wait_for;

/// An inference-worker deployment on its own input topic and group: start replicas of
/// it, kill them, and wait for the group to drain. `tests/tests/inference_worker.rs` and
/// load-tests' `chaos` and `loadgen` use it.
pub struct WorkerRun {
    pub topic: String,
    pub group: String,
    pub task: String,
    pub model_dir: std::path::PathBuf,
    pub head_dir: std::path::PathBuf,
    pub version: String,
    /// The tiny models when [`WorkerRun::new`] made them (keeps their temp dir alive).
    pub models: Option<TinyModels>,
    /// The broker and NATS the replicas use (the shared stack unless [`WorkerRun::new_on`]).
    pub endpoints: Endpoints,
}

impl WorkerRun {
    /// A fresh input topic with `partitions`, a fresh group and task, and the tiny models
    /// (head v1).
    pub async fn new(partitions: i32) -> Self {
        Self::new_on(Endpoints::shared(), partitions).await
    }

    /// [`WorkerRun::new`] on another stack (a [`PrivateStack`]).
    pub async fn new_on(endpoints: Endpoints, partitions: i32) -> Self {
        let models = tiny_models();
        let mut run = Self::with_model_on(
            endpoints,
            partitions,
            &models.model_dir,
            &models.head_v1,
            "v1",
        )
        .await;
        run.models = Some(models);
        run
    }

    /// A fresh input topic, group and task served by the encoder in `model_dir` with the
    /// head in `head_dir` (version `version`).
    pub async fn with_model(
        partitions: i32,
        model_dir: &std::path::Path,
        head_dir: &std::path::Path,
        version: &str,
    ) -> Self {
        Self::with_model_on(
            Endpoints::shared(),
            partitions,
            model_dir,
            head_dir,
            version,
        )
        .await
    }

    async fn with_model_on(
        endpoints: Endpoints,
        partitions: i32,
        model_dir: &std::path::Path,
        head_dir: &std::path::Path,
        version: &str,
    ) -> Self {
        let topic = unique("requests");
        create_topic_on(&endpoints.kafka, &topic, partitions).await;
        WorkerRun {
            topic,
            group: unique("workers"),
            task: unique("task").replace('.', "-"),
            model_dir: model_dir.to_path_buf(),
            head_dir: head_dir.to_path_buf(),
            version: version.to_string(),
            models: None,
            endpoints,
        }
    }

    /// The tiny models ([`WorkerRun::new`] only).
    pub fn tiny(&self) -> &TinyModels {
        self.models
            .as_ref()
            .expect("WorkerRun::new made tiny models")
    }

    /// Start a replica named `instance` (its transactional id: a restart under the same
    /// name fences the dead one's open transaction) with max batch size `batch`;
    /// `extra` environment overrides the defaults. Returns the child and its HTTP address.
    pub fn start(
        &self,
        instance: &str,
        batch: usize,
        extra: &[(&str, String)],
    ) -> (tokio::process::Child, String) {
        self.start_logging_to(instance, batch, extra, service_log(instance))
    }

    /// [`WorkerRun::start`] with the worker's log (stdout) going to `log`.
    pub fn start_logging_to(
        &self,
        instance: &str,
        batch: usize,
        extra: &[(&str, String)],
        log: std::process::Stdio,
    ) -> (tokio::process::Child, String) {
        let addr = format!("127.0.0.1:{}", free_port());
        let mut cmd = tokio::process::Command::new(bin_path("aifab-inference-worker"));
        cmd.env("AIFAB_HTTP_ADDR", &addr)
            .env("AIFAB_KAFKA_BROKERS", &self.endpoints.kafka)
            .env("AIFAB_NATS_URL", &self.endpoints.nats)
            .env("AIFAB_REDIS_URL", &self.endpoints.redis)
            .env("AIFAB_MODEL_DIR", &self.model_dir)
            .env("AIFAB_HEAD_DIR", &self.head_dir)
            .env("AIFAB_MODEL_VERSION", &self.version)
            .env("AIFAB_TASK", &self.task)
            .env("AIFAB_INPUT_TOPIC", &self.topic)
            .env("AIFAB_WORKER_GROUP", &self.group)
            .env("AIFAB_INSTANCE_ID", instance)
            .env("AIFAB_FOLLOW", "latest")
            .env("AIFAB_MAX_BATCH_SIZE", batch.to_string())
            .env("AIFAB_MAX_WAIT_MS", "2")
            .env(
                "AIFAB_LOG",
                std::env::var("AIFAB_TEST_SERVICE_LOG").unwrap_or_else(|_| "warn".into()),
            )
            .stdout(log)
            .stderr(std::process::Stdio::inherit())
            .kill_on_drop(true);
        for (k, v) in extra {
            cmd.env(k, v);
        }
        (cmd.spawn().expect("start worker"), addr)
    }

    /// The group's committed offset and lag per input partition, for failure messages.
    pub async fn lag(&self) -> Result<Vec<aifab_core::kafka::PartitionOffsets>, String> {
        let (brokers, group, topic) = (
            self.endpoints.kafka.clone(),
            self.group.clone(),
            self.topic.clone(),
        );
        tokio::task::spawn_blocking(move || {
            let c = aifab_core::kafka::consumer_config(&brokers, "aifab-tests", &group)
                .create()
                .map_err(|e| e.to_string())?;
            aifab_core::kafka::group_offsets(&c, &topic, Duration::from_secs(10))
                .map_err(|e| e.to_string())
        })
        .await
        .map_err(|e| e.to_string())?
    }

    /// Wait until the group has committed everything in the input topic; false if
    /// `timeout` passed first.
    pub async fn wait_drained(&self, timeout: Duration) -> bool {
        wait_for(timeout, || async {
            let offs = self.lag().await.ok()?;
            (offs.iter().all(|p| p.committed.is_some())
                && offs.iter().map(|p| p.lag).sum::<i64>() == 0)
                .then_some(())
        })
        .await
        .is_some()
    }

    /// [`WorkerRun::wait_drained`] for two minutes, or panic.
    pub async fn drained(&self) {
        assert!(
            self.wait_drained(Duration::from_secs(120)).await,
            "the worker group never reached lag 0"
        );
    }
}

/// Probe `topic` with requests for `task` until one is served by `version` (5 requests a
/// round, up to 60 rounds of 1.5 s), or panic with the versions seen.
pub async fn served_by(topic: &str, task: &str, version: &str) {
    let mut reader = crate::readers::PredictionReader::new();
    for round in 0..60 {
        let prefix = unique(&format!("probe{round}"));
        crate::kafka::produce_requests(topic, task, &prefix, 0..5).await;
        reader.read(&prefix, Duration::from_millis(1500));
        if reader.seen.iter().any(|p| p.model_version == version) {
            return;
        }
    }
    let seen: Vec<_> = reader
        .seen
        .iter()
        .map(|p| p.model_version.clone())
        .collect();
    panic!("the worker never served {version}; saw {seen:?}");
}

/// The model registry on the local stack's Redis.
pub async fn local_registry() -> aifab_core::registry::Registry {
    let conn = redis::Client::open(crate::stack::redis_url())
        .expect("redis url")
        .get_connection_manager()
        .await
        .expect("redis on the local stack");
    aifab_core::registry::Registry::new(conn)
}

/// An inference worker serving `task`'s registry versions (`models`' encoder) from
/// `topic` on the local stack, with `env` on top, once it is ready; killed on drop.
/// Returns it and its HTTP address.
pub async fn registry_worker(
    models: &TinyModels,
    task: &str,
    topic: &str,
    env: &[(&str, &str)],
) -> (tokio::process::Child, String) {
    let addr = format!("127.0.0.1:{}", free_port());
    let worker = tokio::process::Command::new(bin_path("aifab-inference-worker"))
        .env("AIFAB_HTTP_ADDR", &addr)
        .env("AIFAB_MODEL_DIR", &models.model_dir)
        .env("AIFAB_TASK", task)
        .env("AIFAB_INPUT_TOPIC", topic)
        .env("AIFAB_WORKER_GROUP", unique("workers"))
        .env("AIFAB_INSTANCE_ID", unique("w"))
        .env("AIFAB_LOG", "warn")
        .envs(env.iter().copied())
        .stdout(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn aifab-inference-worker");
    crate::process::wait_ready(&addr, "inference-worker").await;
    (worker, addr)
}
