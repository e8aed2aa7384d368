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

/// Run `f` until it returns `Some`, or panic after `timeout` with `what`.
pub async fn eventually<T, F, Fut>(timeout: Duration, what: &str, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if let Some(v) = f().await {
            return v;
        }
        if tokio::time::Instant::now() > deadline {
            panic!("timed out after {timeout:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Path of a workspace binary (built by `cargo build --workspace --bins`, which
/// `scripts/test` runs before the tests).
pub fn bin_path(name: &str) -> std::path::PathBuf {
    let exe = std::env::current_exe().expect("current exe");
    // target/<profile>/deps/<test> → target/<profile>/<name>
    let profile_dir = exe.parent().and_then(|d| d.parent()).expect("target dir");
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

/// `n` inference requests for `task` with ids `<prefix>-<i>`, token ids valid for the
/// tiny BERT, lengths 3..40, produced to `topic` keyed by id.
pub async fn produce_requests(topic: &str, task: &str, prefix: &str, range: std::ops::Range<usize>) {
    use rdkafka::producer::{FutureProducer, FutureRecord};
    let p: FutureProducer = aifab_core::kafka::producer_config(&kafka_brokers(), "aifab-tests").create().unwrap();
    let mut sends = Vec::new();
    for i in range {
        let len = 3 + (i * 7919) % 38;
        let mut ids = vec![2u32];
        ids.extend((0..len - 2).map(|j| 5 + ((i * 31 + j * 17) % 100) as u32));
        ids.push(3);
        let req = aifab_core::messages::InferenceRequest {
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
        };
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
    pub seen: Vec<aifab_core::messages::Prediction>,
}

impl PredictionReader {
    pub fn new() -> Self {
        use rdkafka::consumer::Consumer;
        let topic = aifab_core::topics::PREDICTIONS.name;
        let consumer: rdkafka::consumer::BaseConsumer =
            aifab_core::kafka::consumer_config(&kafka_brokers(), "aifab-tests", &unique("reader"))
                .create()
                .unwrap();
        let mut tpl = rdkafka::TopicPartitionList::new();
        for p in 0..aifab_core::topics::PREDICTIONS.partitions {
            let (_, high) = consumer.fetch_watermarks(topic, p, Duration::from_secs(10)).unwrap();
            tpl.add_partition_offset(topic, p, rdkafka::Offset::Offset(high)).unwrap();
        }
        consumer.assign(&tpl).unwrap();
        PredictionReader { consumer, seen: Vec::new() }
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
                    }
                }
            }
        }
    }

    /// True once the reader has consumed up to the current end of every partition.
    pub fn caught_up(&self) -> bool {
        use rdkafka::consumer::Consumer;
        let topic = aifab_core::topics::PREDICTIONS.name;
        let pos = self.consumer.position().unwrap();
        (0..aifab_core::topics::PREDICTIONS.partitions).all(|p| {
            let (_, high) = self.consumer.fetch_watermarks(topic, p, Duration::from_secs(10)).unwrap();
            match pos.find_partition(topic, p).map(|e| e.offset()) {
                Some(rdkafka::Offset::Offset(o)) => o >= high,
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
