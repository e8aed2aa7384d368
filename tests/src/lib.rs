//! Helpers for the tests under `tests/tests/`, which run against the live local stack
//! (`scripts/stack-up`). Addresses come from the same `AIFAB_*` variables the services
//! read, with the same loopback defaults.

use std::time::Duration;

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;

pub fn kafka_brokers() -> String {
    std::env::var("AIFAB_KAFKA_BROKERS").unwrap_or_else(|_| "127.0.0.1:9092".into())
}

pub fn nats_url() -> String {
    std::env::var("AIFAB_NATS_URL").unwrap_or_else(|_| "nats://127.0.0.1:4222".into())
}

pub fn redis_url() -> String {
    std::env::var("AIFAB_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into())
}

/// A name no earlier run used, so tests never see each other's data.
pub fn unique(prefix: &str) -> String {
    format!("test.{prefix}.{}", uuid::Uuid::new_v4().simple())
}

fn admin() -> AdminClient<DefaultClientContext> {
    aifab_core::kafka::base_config(&kafka_brokers(), "aifab-tests-admin")
        .create()
        .expect("admin client")
}

/// Create a fresh topic; panics with the broker's reason if it cannot.
pub async fn create_topic(name: &str, partitions: i32) {
    let opts = AdminOptions::new().operation_timeout(Some(Duration::from_secs(30)));
    let res = admin()
        .create_topics(&[NewTopic::new(name, partitions, TopicReplication::Fixed(1))], &opts)
        .await
        .expect("create_topics request");
    for r in res {
        r.unwrap_or_else(|(t, e)| panic!("creating topic {t}: {e} (is scripts/stack-up running?)"));
    }
}

/// Delete a test topic (best effort: a leftover topic harms nothing).
pub async fn delete_topic(name: &str) {
    let _ = admin().delete_topics(&[name], &AdminOptions::new()).await;
}

/// Run `f` until it returns `Some` (that value), or `None` once `timeout` has passed.
pub async fn wait_for<T, F, Fut>(timeout: Duration, mut f: F) -> Option<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if let Some(v) = f().await {
            return Some(v);
        }
        if tokio::time::Instant::now() > deadline {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Run `f` until it returns `Some`, or panic after `timeout` with `what`.
pub async fn eventually<T, F, Fut>(timeout: Duration, what: &str, f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    match wait_for(timeout, f).await {
        Some(v) => v,
        None => panic!("timed out after {timeout:?} waiting for {what}"),
    }
}

/// Path of a workspace binary (built by `cargo build --workspace --bins`, which
/// `scripts/test` runs before the tests), next to the running executable: a test runs
/// from `target/<profile>/deps/`, a binary (load-tests' `chaos`) from `target/<profile>/`.
pub fn bin_path(name: &str) -> std::path::PathBuf {
    let exe = std::env::current_exe().expect("current exe");
    let mut profile_dir = exe.parent().expect("exe dir");
    if profile_dir.file_name().is_some_and(|n| n == "deps") {
        profile_dir = profile_dir.parent().expect("target dir");
    }
    let path = profile_dir.join(name);
    assert!(
        path.exists(),
        "{} not found: build the binaries first (cargo build --workspace --bins)",
        path.display()
    );
    path
}

/// A loopback port free right now.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// Send SIGTERM to a child process.
pub fn sigterm(child: &tokio::process::Child) {
    let pid = child.id().expect("child still running");
    let status = std::process::Command::new("kill").arg("-TERM").arg(pid.to_string()).status().unwrap();
    assert!(status.success(), "kill -TERM {pid}");
}

/// GET a URL on loopback with a bare HTTP/1.0 request: status code and body.
pub async fn http_get(addr: &str, path: &str) -> std::io::Result<(u16, String)> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await?;
    s.write_all(format!("GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").as_bytes()).await?;
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).await?;
    let text = String::from_utf8_lossy(&buf).to_string();
    let code = text.split_whitespace().nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
    let body = text.split_once("\r\n\r\n").map(|(_, b)| b.to_string()).unwrap_or_default();
    Ok((code, body))
}

/// A tiny random BERT and two heads (v1: labels a/b, v2: labels x/y/z) in a temp dir,
/// so worker tests need no real model.
pub struct TinyModels {
    pub _dir: tempfile::TempDir,
    pub model_dir: std::path::PathBuf,
    pub head_v1: std::path::PathBuf,
    pub head_v2: std::path::PathBuf,
}

pub const V1_LABELS: &[&str] = &["a", "b"];
pub const V2_LABELS: &[&str] = &["x", "y", "z"];

pub fn tiny_models() -> TinyModels {
    let dir = tempfile::tempdir().unwrap();
    let model_dir = dir.path().join("encoder");
    let head_v1 = dir.path().join("v1");
    let head_v2 = dir.path().join("v2");
    aifab_model::testing::write_tiny_bert(&model_dir, 7).unwrap();
    aifab_model::testing::write_random_head(&head_v1, aifab_model::testing::TINY_HIDDEN, V1_LABELS, 1).unwrap();
    aifab_model::testing::write_random_head(&head_v2, aifab_model::testing::TINY_HIDDEN, V2_LABELS, 2).unwrap();
    TinyModels { _dir: dir, model_dir, head_v1, head_v2 }
}

/// Inference request number `i` for `task` with id `<prefix>-<i>`: token ids valid for
/// the tiny BERT (and any real vocabulary), lengths 3..40, tenant `beta` for every third
/// and `acme` otherwise (callers may overwrite `tenant` and `received_at_ms`).
pub fn request(task: &str, prefix: &str, i: usize) -> aifab_core::messages::InferenceRequest {
    let len = 3 + (i * 7919) % 38;
    let mut ids = vec![2u32];
    ids.extend((0..len - 2).map(|j| 5 + ((i * 31 + j * 17) % 100) as u32));
    ids.push(3);
    aifab_core::messages::InferenceRequest {
        schema: aifab_core::messages::tag(),
        id: format!("{prefix}-{i}"),
        tenant: if i % 3 == 0 { "beta".into() } else { "acme".into() },
        task: task.into(),
        text: format!("request {i}"),
        token_count: ids.len() as u32,
        input_ids: ids,
        truncation: aifab_core::messages::Truncation::None,
        received_at_ms: aifab_core::now_ms(),
        deadline_ms: None,
        priority: 0,
        attributes: Default::default(),
    }
}

/// `n` inference requests ([`request`]) produced to `topic` keyed by id.
pub async fn produce_requests(topic: &str, task: &str, prefix: &str, range: std::ops::Range<usize>) {
    use rdkafka::producer::{FutureProducer, FutureRecord};
    let p: FutureProducer = aifab_core::kafka::producer_config(&kafka_brokers(), "aifab-tests").create().unwrap();
    let mut sends = Vec::new();
    for i in range {
        let req = request(task, prefix, i);
        let payload = aifab_core::messages::encode(&req);
        let p = p.clone();
        let topic = topic.to_string();
        sends.push(async move {
            p.send(FutureRecord::to(&topic).key(&req.id).payload(&payload), Duration::from_secs(30))
                .await
                .map_err(|(e, _)| e)
                .expect("produce request");
        });
    }
    futures::future::join_all(sends).await;
}

/// Reads `aifab.predictions` (read_committed) from the offsets it had when created, so a
/// test sees only predictions produced after it started.
pub struct PredictionReader {
    consumer: rdkafka::consumer::BaseConsumer,
    topic: String,
    pub seen: Vec<aifab_core::messages::Prediction>,
    /// When each of `seen` was read (same index).
    pub received: Vec<std::time::Instant>,
}

impl PredictionReader {
    pub fn new() -> Self {
        Self::on(aifab_core::topics::PREDICTIONS.name)
    }

    /// A reader of another predictions topic, from its current end.
    pub fn on(topic: &str) -> Self {
        use rdkafka::consumer::Consumer;
        let consumer: rdkafka::consumer::BaseConsumer =
            aifab_core::kafka::consumer_config(&kafka_brokers(), "aifab-tests", &unique("reader"))
                .create()
                .unwrap();
        let md = consumer.fetch_metadata(Some(topic), Duration::from_secs(10)).unwrap();
        let mut tpl = rdkafka::TopicPartitionList::new();
        for p in md.topics()[0].partitions() {
            let (_, high) = consumer.fetch_watermarks(topic, p.id(), Duration::from_secs(10)).unwrap();
            tpl.add_partition_offset(topic, p.id(), rdkafka::Offset::Offset(high)).unwrap();
        }
        assert!(tpl.count() > 0, "topic {topic} has no partitions");
        consumer.assign(&tpl).unwrap();
        PredictionReader { consumer, topic: topic.to_string(), seen: Vec::new(), received: Vec::new() }
    }

    /// Read what is available within ~`budget`, keeping predictions whose id starts with `prefix`.
    pub fn read(&mut self, prefix: &str, budget: Duration) {
        use rdkafka::Message;
        let deadline = std::time::Instant::now() + budget;
        while std::time::Instant::now() < deadline {
            match self.consumer.poll(Duration::from_millis(50)) {
                None => continue,
                Some(Err(e)) => panic!("reading predictions: {e}"),
                Some(Ok(m)) => {
                    let p: aifab_core::messages::Prediction =
                        aifab_core::messages::decode(m.payload().unwrap_or_default()).expect("valid prediction");
                    if p.id.starts_with(prefix) {
                        self.seen.push(p);
                        self.received.push(std::time::Instant::now());
                    }
                }
            }
        }
    }

    /// Read until predictions for `distinct` different ids (with `prefix`) have arrived;
    /// false if `timeout` passed first.
    pub fn read_until(&mut self, prefix: &str, distinct: usize, timeout: Duration) -> bool {
        let deadline = std::time::Instant::now() + timeout;
        let mut ids: std::collections::HashSet<String> = self.seen.iter().map(|p| p.id.clone()).collect();
        while ids.len() < distinct {
            if std::time::Instant::now() >= deadline {
                return false;
            }
            let before = self.seen.len();
            self.read(prefix, Duration::from_millis(200));
            ids.extend(self.seen[before..].iter().map(|p| p.id.clone()));
        }
        true
    }

    /// Read until the reader has consumed to the end of every partition: with
    /// read_committed that waits for open transactions to end, so nothing is missed.
    /// False if `timeout` passed first.
    pub fn read_to_end(&mut self, prefix: &str, timeout: Duration) -> bool {
        let deadline = std::time::Instant::now() + timeout;
        loop {
            self.read(prefix, Duration::from_millis(300));
            if self.caught_up() {
                return true;
            }
            if std::time::Instant::now() >= deadline {
                return false;
            }
        }
    }

    /// True once the reader has consumed up to the current end of every partition.
    pub fn caught_up(&self) -> bool {
        use rdkafka::consumer::Consumer;
        let pos = self.consumer.position().unwrap();
        pos.elements().iter().all(|e| {
            let (_, high) = self.consumer.fetch_watermarks(&self.topic, e.partition(), Duration::from_secs(10)).unwrap();
            match e.offset() {
                rdkafka::Offset::Offset(o) => o >= high,
                _ => false,
            }
        })
    }

    /// Predictions per request id.
    pub fn counts(&self) -> std::collections::BTreeMap<String, usize> {
        let mut c = std::collections::BTreeMap::new();
        for p in &self.seen {
            *c.entry(p.id.clone()).or_insert(0) += 1;
        }
        c
    }
}

impl Default for PredictionReader {
    fn default() -> Self {
        Self::new()
    }
}

// ---------------------------------------------------------------- helpers for HTTP APIs and topics

/// An HTTP response read by [`http_request`].
#[derive(Debug, Clone)]
pub struct HttpResponse {
    pub status: u16,
    /// Header names lower-cased.
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl HttpResponse {
    pub fn header(&self, name: &str) -> Option<&str> {
        let name = name.to_ascii_lowercase();
        self.headers.iter().find(|(k, _)| *k == name).map(|(_, v)| v.as_str())
    }

    /// The body as JSON (panics with the body when it is not).
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("body is not JSON ({e}): {}", self.body))
    }
}

/// Send one HTTP/1.0 request on loopback (no keep-alive, so no chunked replies) and read
/// the whole response.
pub async fn http_request(
    addr: &str,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> std::io::Result<HttpResponse> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await?;
    let mut head = format!("{method} {path} HTTP/1.0\r\nHost: {addr}\r\nContent-Length: {}\r\n", body.len());
    for (k, v) in headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str("\r\n");
    s.write_all(head.as_bytes()).await?;
    s.write_all(body).await?;
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).await?;
    let text = String::from_utf8_lossy(&buf).to_string();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let mut lines = head.lines();
    let status = lines.next().and_then(|l| l.split_whitespace().nth(1)).and_then(|c| c.parse().ok()).unwrap_or(0);
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    Ok(HttpResponse { status, headers, body: body.to_string() })
}

/// Decode standard base64 (with or without padding); panics on bad input.
pub fn base64_decode(s: &str) -> Vec<u8> {
    let val = |c: u8| -> u32 {
        match c {
            b'A'..=b'Z' => (c - b'A') as u32,
            b'a'..=b'z' => (c - b'a' + 26) as u32,
            b'0'..=b'9' => (c - b'0' + 52) as u32,
            b'+' => 62,
            b'/' => 63,
            _ => panic!("not base64: {s:?}"),
        }
    };
    let bytes: Vec<u8> = s.bytes().filter(|b| *b != b'=').collect();
    let mut out = Vec::with_capacity(bytes.len() * 3 / 4);
    for chunk in bytes.chunks(4) {
        let mut n = 0u32;
        for (i, c) in chunk.iter().enumerate() {
            n |= val(*c) << (18 - 6 * i);
        }
        out.push((n >> 16) as u8);
        if chunk.len() > 2 {
            out.push((n >> 8) as u8);
        }
        if chunk.len() > 3 {
            out.push(n as u8);
        }
    }
    out
}

/// One record read by [`TopicReader`].
#[derive(Debug, Clone)]
pub struct ReadRecord {
    pub partition: i32,
    pub offset: i64,
    pub key: Option<Vec<u8>>,
    pub payload: Vec<u8>,
    pub headers: Vec<(String, Vec<u8>)>,
}

impl ReadRecord {
    pub fn key_str(&self) -> String {
        String::from_utf8_lossy(self.key.as_deref().unwrap_or_default()).to_string()
    }
    pub fn header(&self, name: &str) -> Option<String> {
        self.headers.iter().find(|(k, _)| k == name).map(|(_, v)| String::from_utf8_lossy(v).to_string())
    }
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.payload).expect("record is JSON")
    }
}

/// Reads a whole topic from the beginning, read_committed (as downstream consumers do).
pub struct TopicReader {
    topic: String,
    consumer: rdkafka::consumer::BaseConsumer,
    pub records: Vec<ReadRecord>,
}

impl TopicReader {
    pub fn new(topic: &str) -> Self {
        use rdkafka::consumer::Consumer;
        let consumer: rdkafka::consumer::BaseConsumer =
            aifab_core::kafka::consumer_config(&kafka_brokers(), "aifab-tests", &unique("reader")).create().unwrap();
        let md = consumer.fetch_metadata(Some(topic), Duration::from_secs(10)).unwrap();
        let mut tpl = rdkafka::TopicPartitionList::new();
        for p in md.topics()[0].partitions() {
            tpl.add_partition_offset(topic, p.id(), rdkafka::Offset::Beginning).unwrap();
        }
        consumer.assign(&tpl).unwrap();
        TopicReader { topic: topic.to_string(), consumer, records: Vec::new() }
    }

    /// Read what arrives within `budget`.
    pub fn read(&mut self, budget: Duration) {
        use rdkafka::message::{Headers, Message};
        let deadline = std::time::Instant::now() + budget;
        while std::time::Instant::now() < deadline {
            match self.consumer.poll(Duration::from_millis(50)) {
                None => continue,
                Some(Err(e)) => panic!("reading {}: {e}", self.topic),
                Some(Ok(m)) => self.records.push(ReadRecord {
                    partition: m.partition(),
                    offset: m.offset(),
                    key: m.key().map(<[u8]>::to_vec),
                    payload: m.payload().unwrap_or_default().to_vec(),
                    headers: m
                        .headers()
                        .map(|h| h.iter().map(|h| (h.key.to_string(), h.value.unwrap_or_default().to_vec())).collect())
                        .unwrap_or_default(),
                }),
            }
        }
    }

    /// Read until `done(records)` holds, or panic after `timeout` saying how many were read.
    pub async fn read_until(&mut self, timeout: Duration, what: &str, done: impl Fn(&[ReadRecord]) -> bool) {
        let deadline = tokio::time::Instant::now() + timeout;
        while !done(&self.records) {
            assert!(
                tokio::time::Instant::now() < deadline,
                "timed out after {timeout:?} waiting for {what} on {} ({} records read)",
                self.topic,
                self.records.len()
            );
            self.read(Duration::from_millis(200));
        }
    }

    /// Read until this reader has consumed to the end of every partition (read_committed:
    /// waits for open transactions), then a little more.
    pub async fn read_to_end(&mut self, timeout: Duration) {
        use rdkafka::consumer::Consumer;
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            self.read(Duration::from_millis(300));
            let pos = self.consumer.position().unwrap();
            let done = pos.elements().iter().all(|e| {
                let (_, high) = self.consumer.fetch_watermarks(&self.topic, e.partition(), Duration::from_secs(10)).unwrap();
                match e.offset() {
                    rdkafka::Offset::Offset(o) => o >= high,
                    _ => high == 0,
                }
            });
            if done {
                return;
            }
            assert!(tokio::time::Instant::now() < deadline, "{} never settled", self.topic);
        }
    }
}

/// Produce records (key, value, headers) to `topic` in order, with an idempotent producer;
/// returns each record's (partition, offset).
pub async fn produce_raw(topic: &str, records: &[(Option<String>, Vec<u8>, Vec<(String, String)>)]) -> Vec<(i32, i64)> {
    use rdkafka::message::{Header, OwnedHeaders};
    use rdkafka::producer::{FutureProducer, FutureRecord};
    let p: FutureProducer = aifab_core::kafka::producer_config(&kafka_brokers(), "aifab-tests").create().unwrap();
    let mut sends = Vec::new();
    for (key, value, headers) in records {
        let mut h = OwnedHeaders::new();
        for (k, v) in headers {
            h = h.insert(Header { key: k, value: Some(v.as_bytes()) });
        }
        let mut r: FutureRecord<'_, String, Vec<u8>> = FutureRecord::to(topic).payload(value).headers(h);
        if let Some(k) = key {
            r = r.key(k);
        }
        // Enqueued in order here; delivered in order per partition (idempotent producer).
        sends.push(p.send_result(r).map_err(|(e, _)| e).expect("enqueue"));
    }
    let mut out = Vec::new();
    for s in sends {
        let d = s.await.expect("delivery future").map_err(|(e, _)| e).expect("delivered");
        out.push((d.partition, d.offset));
    }
    out
}

/// Start a service binary with `envs` (plus its HTTP address and `AIFAB_LOG=warn`); its
/// logs go to the test's stderr. Returns the child and its address.
pub fn spawn_service(service: &str, envs: &[(&str, String)]) -> (tokio::process::Child, String) {
    let addr = format!("127.0.0.1:{}", free_port());
    let mut cmd = tokio::process::Command::new(bin_path(&format!("aifab-{service}")));
    cmd.env("AIFAB_HTTP_ADDR", &addr)
        .env("AIFAB_LOG", "warn")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::inherit())
        .kill_on_drop(true);
    for (k, v) in envs {
        cmd.env(k, v);
    }
    (cmd.spawn().unwrap_or_else(|e| panic!("starting aifab-{service}: {e}")), addr)
}

/// Wait until a service at `addr` answers /readyz 200.
pub async fn wait_ready(addr: &str, what: &str) {
    eventually(Duration::from_secs(60), &format!("{what} /readyz 200"), || {
        let addr = addr.to_string();
        async move { matches!(http_get(&addr, "/readyz").await, Ok((200, _))).then_some(()) }
    })
    .await;
}

// ---------------------------------------------------------------- inference workers

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
}

impl WorkerRun {
    /// A fresh input topic with `partitions`, a fresh group and task, and the tiny models
    /// (head v1).
    pub async fn new(partitions: i32) -> Self {
        let models = tiny_models();
        let mut run = Self::with_model(partitions, &models.model_dir, &models.head_v1, "v1").await;
        run.models = Some(models);
        run
    }

    /// A fresh input topic, group and task served by the encoder in `model_dir` with the
    /// head in `head_dir` (version `version`).
    pub async fn with_model(partitions: i32, model_dir: &std::path::Path, head_dir: &std::path::Path, version: &str) -> Self {
        let topic = unique("requests");
        create_topic(&topic, partitions).await;
        WorkerRun {
            topic,
            group: unique("workers"),
            task: unique("task").replace('.', "-"),
            model_dir: model_dir.to_path_buf(),
            head_dir: head_dir.to_path_buf(),
            version: version.to_string(),
            models: None,
        }
    }

    /// The tiny models ([`WorkerRun::new`] only).
    pub fn tiny(&self) -> &TinyModels {
        self.models.as_ref().expect("WorkerRun::new made tiny models")
    }

    /// Start a replica named `instance` (its transactional id: a restart under the same
    /// name fences the dead one's open transaction) with max batch size `batch`;
    /// `extra` environment overrides the defaults. Returns the child and its HTTP address.
    pub fn start(&self, instance: &str, batch: usize, extra: &[(&str, String)]) -> (tokio::process::Child, String) {
        let addr = format!("127.0.0.1:{}", free_port());
        let mut cmd = tokio::process::Command::new(bin_path("aifab-inference-worker"));
        cmd.env("AIFAB_HTTP_ADDR", &addr)
            .env("AIFAB_KAFKA_BROKERS", kafka_brokers())
            .env("AIFAB_NATS_URL", nats_url())
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
            .env("AIFAB_LOG", "warn")
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::inherit())
            .kill_on_drop(true);
        for (k, v) in extra {
            cmd.env(k, v);
        }
        (cmd.spawn().expect("start worker"), addr)
    }

    /// Wait until the group has committed everything in the input topic; false if
    /// `timeout` passed first.
    pub async fn wait_drained(&self, timeout: Duration) -> bool {
        let (brokers, group, topic) = (kafka_brokers(), self.group.clone(), self.topic.clone());
        wait_for(timeout, || {
            let (brokers, group, topic) = (brokers.clone(), group.clone(), topic.clone());
            async move {
                tokio::task::spawn_blocking(move || {
                    let c = aifab_core::kafka::consumer_config(&brokers, "aifab-tests", &group).create().unwrap();
                    let offs = aifab_core::kafka::group_offsets(&c, &topic, Duration::from_secs(10)).ok()?;
                    (offs.iter().all(|p| p.committed.is_some()) && offs.iter().map(|p| p.lag).sum::<i64>() == 0)
                        .then_some(())
                })
                .await
                .unwrap()
            }
        })
        .await
        .is_some()
    }

    /// [`WorkerRun::wait_drained`] for two minutes, or panic.
    pub async fn drained(&self) {
        assert!(self.wait_drained(Duration::from_secs(120)).await, "the worker group never reached lag 0");
    }
}

/// SIGKILL a child (no chance to commit or abort anything).
pub fn sigkill(child: &mut tokio::process::Child) {
    let pid = child.id().expect("running");
    let status = std::process::Command::new("kill").arg("-KILL").arg(pid.to_string()).status().unwrap();
    assert!(status.success(), "kill -KILL {pid}");
}

/// Counts per request id of what a read_committed reader saw, against the ids expected:
/// how many were never predicted and how many more than once.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Delivery {
    pub requests: usize,
    pub lost: usize,
    pub duplicated: usize,
}

/// [`Delivery`] of `expected` ids given the predictions per id in `counts` (ids not
/// expected are ignored).
pub fn delivery<'a>(
    expected: impl IntoIterator<Item = &'a str>,
    counts: &std::collections::BTreeMap<String, usize>,
) -> Delivery {
    delivery_of_counts(expected.into_iter().map(|id| counts.get(id).copied().unwrap_or(0)))
}

/// [`Delivery`] from the number of committed predictions of each expected request: 0 is
/// lost, more than 1 duplicated.
pub fn delivery_of_counts(counts: impl IntoIterator<Item = usize>) -> Delivery {
    let mut d = Delivery::default();
    for c in counts {
        d.requests += 1;
        match c {
            0 => d.lost += 1,
            1 => {}
            _ => d.duplicated += 1,
        }
    }
    d
}

#[cfg(test)]
mod unit {
    use super::*;

    #[test]
    fn delivery_counts_missing_and_repeated_ids() {
        let counts: std::collections::BTreeMap<String, usize> =
            [("r-0", 1), ("r-1", 2), ("r-3", 1), ("other", 5)].into_iter().map(|(k, v)| (k.to_string(), v)).collect();
        let ids: Vec<String> = (0..4).map(|i| format!("r-{i}")).collect();
        assert_eq!(delivery(ids.iter().map(String::as_str), &counts), Delivery { requests: 4, lost: 1, duplicated: 1 });
    }

    #[test]
    fn request_ids_and_lengths() {
        let r = request("t", "p", 5);
        assert_eq!(r.id, "p-5");
        assert_eq!(r.token_count as usize, r.input_ids.len());
        assert!((3..=40).contains(&r.input_ids.len()));
        assert_eq!((r.input_ids[0], *r.input_ids.last().unwrap()), (2, 3));
    }
}
