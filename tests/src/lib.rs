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

/// The SMS test split kept in the repo, relative to the repo root (where the
/// `load-tests/bench-*` scripts run): the benchmarks' default `--data`.
pub const SMS_TEST_SPLIT: &str = "services/aifab/data/sms_spam/test.jsonl";

/// `path` as given, except that the default [`SMS_TEST_SPLIT`], when the working
/// directory is not the repo root, is found from this checkout's root.
pub fn sms_test_split_or(path: std::path::PathBuf) -> std::path::PathBuf {
    if path == std::path::Path::new(SMS_TEST_SPLIT) && !path.exists() {
        let in_repo = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("..")
            .join(SMS_TEST_SPLIT);
        if in_repo.exists() {
            return in_repo;
        }
    }
    path
}

/// A name no earlier run used, so tests never see each other's data.
pub fn unique(prefix: &str) -> String {
    format!("test.{prefix}.{}", uuid::Uuid::new_v4().simple())
}

fn admin(brokers: &str) -> AdminClient<DefaultClientContext> {
    aifab_core::kafka::base_config(brokers, "aifab-tests-admin")
        .create()
        .expect("admin client")
}

/// Create a fresh topic; panics with the broker's reason if it cannot.
pub async fn create_topic(name: &str, partitions: i32) {
    create_topic_on(&kafka_brokers(), name, partitions).await
}

/// [`create_topic`] on the broker at `brokers`.
pub async fn create_topic_on(brokers: &str, name: &str, partitions: i32) {
    let opts = AdminOptions::new().operation_timeout(Some(Duration::from_secs(30)));
    let res = admin(brokers)
        .create_topics(
            &[NewTopic::new(name, partitions, TopicReplication::Fixed(1))],
            &opts,
        )
        .await
        .expect("create_topics request");
    for r in res {
        r.unwrap_or_else(|(t, e)| panic!("creating topic {t}: {e} (is scripts/stack-up running?)"));
    }
}

/// Delete a test topic (best effort: a leftover topic harms nothing).
pub async fn delete_topic(name: &str) {
    let _ = admin(&kafka_brokers())
        .delete_topics(&[name], &AdminOptions::new())
        .await;
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
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Send SIGTERM to a child process.
pub fn sigterm(child: &tokio::process::Child) {
    let pid = child.id().expect("child still running");
    let status = std::process::Command::new("kill")
        .arg("-TERM")
        .arg(pid.to_string())
        .status()
        .unwrap();
    assert!(status.success(), "kill -TERM {pid}");
}

/// GET a URL on loopback with a bare HTTP/1.0 request: status code and body.
/// The value of the first line of a Prometheus text page that starts with `line_prefix`
/// (a metric name with its labels, as rendered).
pub fn metric(text: &str, line_prefix: &str) -> Option<f64> {
    text.lines()
        .find(|l| l.starts_with(line_prefix))
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
}

pub async fn http_get(addr: &str, path: &str) -> std::io::Result<(u16, String)> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await?;
    s.write_all(format!("GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").as_bytes())
        .await?;
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).await?;
    let text = String::from_utf8_lossy(&buf).to_string();
    let code = text
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
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
    aifab_model::testing::write_random_head(
        &head_v1,
        aifab_model::testing::TINY_HIDDEN,
        V1_LABELS,
        1,
    )
    .unwrap();
    aifab_model::testing::write_random_head(
        &head_v2,
        aifab_model::testing::TINY_HIDDEN,
        V2_LABELS,
        2,
    )
    .unwrap();
    TinyModels {
        _dir: dir,
        model_dir,
        head_v1,
        head_v2,
    }
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
        tenant: if i % 3 == 0 {
            "beta".into()
        } else {
            "acme".into()
        },
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
pub async fn produce_requests(
    topic: &str,
    task: &str,
    prefix: &str,
    range: std::ops::Range<usize>,
) {
    produce_requests_on(&kafka_brokers(), topic, task, prefix, range).await
}

/// [`produce_requests`] to the broker at `brokers`. Each send is retried by the idempotent
/// producer (through a broker restart too) until it is acknowledged, or panics.
pub async fn produce_requests_on(
    brokers: &str,
    topic: &str,
    task: &str,
    prefix: &str,
    range: std::ops::Range<usize>,
) {
    use rdkafka::producer::{FutureProducer, FutureRecord};
    let p: FutureProducer = aifab_core::kafka::producer_config(brokers, "aifab-tests")
        .create()
        .unwrap();
    let mut sends = Vec::new();
    for i in range {
        let req = request(task, prefix, i);
        let payload = aifab_core::messages::encode(&req);
        let p = p.clone();
        let topic = topic.to_string();
        sends.push(async move {
            p.send(
                FutureRecord::to(&topic).key(&req.id).payload(&payload),
                Duration::from_secs(30),
            )
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
    brokers: String,
    topic: String,
    /// The next offset to read of every partition, to carry over to a new client.
    next: std::collections::BTreeMap<i32, i64>,
    pub seen: Vec<aifab_core::messages::Prediction>,
    /// When each of `seen` was read (same index).
    pub received: Vec<std::time::Instant>,
    /// Where each of `seen` was read from: (partition, offset) (same index).
    pub positions: Vec<(i32, i64)>,
}

impl PredictionReader {
    pub fn new() -> Self {
        Self::on(aifab_core::topics::PREDICTIONS.name)
    }

    /// A reader of another predictions topic, from its current end.
    pub fn on(topic: &str) -> Self {
        Self::on_brokers(&kafka_brokers(), topic)
    }

    /// A reader of `topic` on the broker at `brokers`, from its current end.
    pub fn on_brokers(brokers: &str, topic: &str) -> Self {
        use rdkafka::consumer::Consumer;
        let consumer = Self::client(brokers);
        let md = consumer
            .fetch_metadata(Some(topic), Duration::from_secs(10))
            .unwrap();
        let mut next = std::collections::BTreeMap::new();
        for p in md.topics()[0].partitions() {
            // A broker that just started may not have elected the partition's leader yet.
            let deadline = std::time::Instant::now() + Duration::from_secs(30);
            let high = loop {
                match consumer.fetch_watermarks(topic, p.id(), Duration::from_secs(10)) {
                    Ok((_, high)) => break high,
                    Err(e) if std::time::Instant::now() < deadline => {
                        eprintln!("watermarks of {topic}/{}: {e}; retrying", p.id());
                        std::thread::sleep(Duration::from_millis(200));
                    }
                    Err(e) => panic!("watermarks of {topic}/{}: {e}", p.id()),
                }
            };
            next.insert(p.id(), high);
        }
        assert!(!next.is_empty(), "topic {topic} has no partitions");
        let reader = PredictionReader {
            consumer,
            brokers: brokers.to_string(),
            topic: topic.to_string(),
            next,
            seen: Vec::new(),
            received: Vec::new(),
            positions: Vec::new(),
        };
        reader.assign();
        reader
    }

    fn client(brokers: &str) -> rdkafka::consumer::BaseConsumer {
        aifab_core::kafka::consumer_config(brokers, "aifab-tests", &unique("reader"))
            // An assign()ed consumer learns its partitions again only from periodic
            // metadata: after a broker restart (tests/tests/faults.rs) librdkafka can
            // hold the topic as unknown until then (5 minutes by default).
            .set("topic.metadata.refresh.interval.ms", "5000")
            .create()
            .unwrap()
    }

    fn assign(&self) {
        use rdkafka::consumer::Consumer;
        let mut tpl = rdkafka::TopicPartitionList::new();
        for (&p, &o) in &self.next {
            tpl.add_partition_offset(&self.topic, p, rdkafka::Offset::Offset(o))
                .unwrap();
        }
        self.consumer.assign(&tpl).unwrap();
    }

    /// The reader has made no progress for a while. If records it has not read are there
    /// (or it cannot even ask), replace its client with one that reads on from the same
    /// offsets: after a broker restart a librdkafka client can go on answering "all
    /// brokers down", or not fetch an assigned partition, long after the broker is back
    /// (the services replace theirs the same way, see `aifab_core::service`). A reader
    /// merely waiting for an open transaction is replaced needlessly, which costs nothing.
    fn unstick(&mut self) {
        use rdkafka::consumer::Consumer;
        let read_to = self.read_to();
        let behind = read_to.iter().find_map(|(&p, &o)| {
            match self
                .consumer
                .fetch_watermarks(&self.topic, p, Duration::from_secs(5))
            {
                Ok((_, high)) if o >= high => None,
                Ok((_, high)) => Some(format!("p{p} at {o} of {high}")),
                Err(e) => Some(format!("p{p}: {e}")),
            }
        });
        if let Some(why) = behind {
            eprintln!("the predictions reader is not being fed ({why}); using a new client");
            self.next = read_to;
            self.consumer = Self::client(&self.brokers);
            self.assign();
        }
    }

    /// How far the reader has read each partition: past its last record, or further where
    /// the client's position has moved on past transaction markers.
    fn read_to(&self) -> std::collections::BTreeMap<i32, i64> {
        use rdkafka::consumer::Consumer;
        let mut at = self.next.clone();
        if let Ok(pos) = self.consumer.position() {
            for e in pos.elements() {
                if let (rdkafka::Offset::Offset(o), Some(n)) =
                    (e.offset(), at.get_mut(&e.partition()))
                {
                    *n = (*n).max(o);
                }
            }
        }
        at
    }

    /// Read what is available within ~`budget`, keeping predictions whose id starts with `prefix`.
    pub fn read(&mut self, prefix: &str, budget: Duration) {
        use rdkafka::Message;
        let deadline = std::time::Instant::now() + budget;
        while std::time::Instant::now() < deadline {
            match self.consumer.poll(Duration::from_millis(50)) {
                None => continue,
                // A broker restart (tests/tests/faults.rs) surfaces as transport errors
                // until the client reconnects; the consumer resumes where it was.
                Some(Err(e)) if is_transient(&e) => {
                    eprintln!("reading predictions: {e}; continuing")
                }
                Some(Err(e)) => panic!("reading predictions: {e}"),
                Some(Ok(m)) => {
                    self.next.insert(m.partition(), m.offset() + 1);
                    let p: aifab_core::messages::Prediction =
                        aifab_core::messages::decode(m.payload().unwrap_or_default())
                            .expect("valid prediction");
                    if p.id.starts_with(prefix) {
                        self.seen.push(p);
                        self.received.push(std::time::Instant::now());
                        self.positions.push((m.partition(), m.offset()));
                    }
                }
            }
        }
    }

    /// Read until predictions for `distinct` different ids (with `prefix`) have arrived;
    /// false if `timeout` passed first.
    pub fn read_until(&mut self, prefix: &str, distinct: usize, timeout: Duration) -> bool {
        let deadline = std::time::Instant::now() + timeout;
        let mut ids: std::collections::HashSet<String> =
            self.seen.iter().map(|p| p.id.clone()).collect();
        let mut last_progress = std::time::Instant::now();
        while ids.len() < distinct {
            if std::time::Instant::now() >= deadline {
                return false;
            }
            let before = self.seen.len();
            self.read(prefix, Duration::from_millis(200));
            ids.extend(self.seen[before..].iter().map(|p| p.id.clone()));
            if self.seen.len() > before {
                last_progress = std::time::Instant::now();
            } else if last_progress.elapsed() > Duration::from_secs(10) {
                self.unstick();
                last_progress = std::time::Instant::now();
            }
        }
        true
    }

    /// Read until the reader has consumed to the end of every partition: with
    /// read_committed that waits for open transactions to end, so nothing is missed.
    /// False if `timeout` passed first.
    pub fn read_to_end(&mut self, prefix: &str, timeout: Duration) -> bool {
        let deadline = std::time::Instant::now() + timeout;
        let mut last_progress = std::time::Instant::now();
        loop {
            let before = self.read_to();
            self.read(prefix, Duration::from_millis(300));
            if self.caught_up() {
                return true;
            }
            if std::time::Instant::now() >= deadline {
                return false;
            }
            if self.read_to() != before {
                last_progress = std::time::Instant::now();
            } else if last_progress.elapsed() > Duration::from_secs(10) {
                self.unstick();
                last_progress = std::time::Instant::now();
            }
        }
    }

    /// True once the reader has consumed up to the current end of every partition.
    pub fn caught_up(&self) -> bool {
        use rdkafka::consumer::Consumer;
        self.read_to().iter().all(|(&p, &o)| {
            self.consumer
                .fetch_watermarks(&self.topic, p, Duration::from_secs(10))
                .is_ok_and(|(_, high)| o >= high)
        })
    }

    /// The reader's position and the high watermark of every partition, for failure
    /// messages: a reader behind the watermarks is not being fed; one at them has read
    /// everything committed.
    pub fn describe(&self) -> String {
        use rdkafka::consumer::Consumer;
        let Ok(pos) = self.consumer.position() else {
            return "(no position)".into();
        };
        pos.elements()
            .iter()
            .map(|e| {
                let high = self.consumer.fetch_watermarks(
                    &self.topic,
                    e.partition(),
                    Duration::from_secs(10),
                );
                format!(
                    "p{} at {:?}, watermarks {:?}",
                    e.partition(),
                    e.offset(),
                    high
                )
            })
            .collect::<Vec<_>>()
            .join("; ")
    }

    /// For up to `limit` ids read more than once: each copy's partition, offset, batch
    /// and producing time, to tell a record written twice from one read twice.
    pub fn duplicates_report(&self, limit: usize) -> String {
        let mut by_id: std::collections::BTreeMap<&str, Vec<usize>> =
            std::collections::BTreeMap::new();
        for (i, p) in self.seen.iter().enumerate() {
            by_id.entry(p.id.as_str()).or_default().push(i);
        }
        by_id
            .into_iter()
            .filter(|(_, copies)| copies.len() > 1)
            .take(limit)
            .map(|(id, copies)| {
                let where_: Vec<String> = copies
                    .iter()
                    .map(|&i| {
                        let (p, o) = self.positions[i];
                        format!(
                            "p{p}@{o} batch {:?} at {}",
                            self.seen[i].batch_id, self.seen[i].produced_at_ms
                        )
                    })
                    .collect();
                format!("{id}: {}", where_.join("; "))
            })
            .collect::<Vec<_>>()
            .join("\n")
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

/// A consumer error that a reconnect ends (the broker went away and comes back).
fn is_transient(e: &rdkafka::error::KafkaError) -> bool {
    use rdkafka::types::RDKafkaErrorCode as C;
    matches!(
        e.rdkafka_error_code(),
        Some(
            C::BrokerTransportFailure
                | C::AllBrokersDown
                | C::NotLeaderForPartition
                | C::LeaderNotAvailable
        )
    )
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
        self.headers
            .iter()
            .find(|(k, _)| *k == name)
            .map(|(_, v)| v.as_str())
    }

    /// The body as JSON (panics with the body when it is not).
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body)
            .unwrap_or_else(|e| panic!("body is not JSON ({e}): {}", self.body))
    }
}

/// Send one HTTP/1.0 request on loopback (no keep-alive, so no chunked replies) and read
/// the whole response.
/// POST a JSON body; the status and the response body.
pub async fn post_json(addr: &str, path: &str, body: &serde_json::Value) -> (u16, String) {
    let r = http_request(
        addr,
        "POST",
        path,
        &[("Content-Type", "application/json")],
        body.to_string().as_bytes(),
    )
    .await
    .unwrap_or_else(|e| panic!("POST {path} to {addr}: {e}"));
    (r.status, r.body)
}

pub async fn http_request(
    addr: &str,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> std::io::Result<HttpResponse> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await?;
    let mut head = format!(
        "{method} {path} HTTP/1.0\r\nHost: {addr}\r\nContent-Length: {}\r\n",
        body.len()
    );
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
    let status = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    Ok(HttpResponse {
        status,
        headers,
        body: body.to_string(),
    })
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
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| String::from_utf8_lossy(v).to_string())
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
            aifab_core::kafka::consumer_config(&kafka_brokers(), "aifab-tests", &unique("reader"))
                .create()
                .unwrap();
        let md = consumer
            .fetch_metadata(Some(topic), Duration::from_secs(10))
            .unwrap();
        let mut tpl = rdkafka::TopicPartitionList::new();
        for p in md.topics()[0].partitions() {
            tpl.add_partition_offset(topic, p.id(), rdkafka::Offset::Beginning)
                .unwrap();
        }
        consumer.assign(&tpl).unwrap();
        TopicReader {
            topic: topic.to_string(),
            consumer,
            records: Vec::new(),
        }
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
                        .map(|h| {
                            h.iter()
                                .map(|h| (h.key.to_string(), h.value.unwrap_or_default().to_vec()))
                                .collect()
                        })
                        .unwrap_or_default(),
                }),
            }
        }
    }

    /// Read until `done(records)` holds, or panic after `timeout` saying how many were read.
    pub async fn read_until(
        &mut self,
        timeout: Duration,
        what: &str,
        done: impl Fn(&[ReadRecord]) -> bool,
    ) {
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
                let (_, high) = self
                    .consumer
                    .fetch_watermarks(&self.topic, e.partition(), Duration::from_secs(10))
                    .unwrap();
                match e.offset() {
                    rdkafka::Offset::Offset(o) => o >= high,
                    _ => high == 0,
                }
            });
            if done {
                return;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "{} never settled",
                self.topic
            );
        }
    }
}

/// Produce records (key, value, headers) to `topic` in order, with an idempotent producer;
/// returns each record's (partition, offset).
pub async fn produce_raw(
    topic: &str,
    records: &[(Option<String>, Vec<u8>, Vec<(String, String)>)],
) -> Vec<(i32, i64)> {
    use rdkafka::message::{Header, OwnedHeaders};
    use rdkafka::producer::{FutureProducer, FutureRecord};
    let p: FutureProducer = aifab_core::kafka::producer_config(&kafka_brokers(), "aifab-tests")
        .create()
        .unwrap();
    let mut sends = Vec::new();
    for (key, value, headers) in records {
        let mut h = OwnedHeaders::new();
        for (k, v) in headers {
            h = h.insert(Header {
                key: k,
                value: Some(v.as_bytes()),
            });
        }
        let mut r: FutureRecord<'_, String, Vec<u8>> =
            FutureRecord::to(topic).payload(value).headers(h);
        if let Some(k) = key {
            r = r.key(k);
        }
        // Enqueued in order here; delivered in order per partition (idempotent producer).
        sends.push(p.send_result(r).map_err(|(e, _)| e).expect("enqueue"));
    }
    let mut out = Vec::new();
    for s in sends {
        let d = s
            .await
            .expect("delivery future")
            .map_err(|(e, _)| e)
            .expect("delivered");
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
    (
        cmd.spawn()
            .unwrap_or_else(|e| panic!("starting aifab-{service}: {e}")),
        addr,
    )
}

/// Wait until a service at `addr` answers /readyz 200.
pub async fn wait_ready(addr: &str, what: &str) {
    eventually(
        Duration::from_secs(60),
        &format!("{what} /readyz 200"),
        || {
            let addr = addr.to_string();
            async move { matches!(http_get(&addr, "/readyz").await, Ok((200, _))).then_some(()) }
        },
    )
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

/// SIGKILL a child (no chance to commit or abort anything).
pub fn sigkill(child: &mut tokio::process::Child) {
    let pid = child.id().expect("running");
    let status = std::process::Command::new("kill")
        .arg("-KILL")
        .arg(pid.to_string())
        .status()
        .unwrap();
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
    delivery_of_counts(
        expected
            .into_iter()
            .map(|id| counts.get(id).copied().unwrap_or(0)),
    )
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

// ---------------------------------------------------------------- worker-kill chaos

/// A worker-kill scenario for [`kill_chaos`].
#[derive(Debug, Clone)]
pub struct KillPlan {
    /// Requests produced to the run's input topic before the first worker starts.
    pub requests: usize,
    /// SIGKILLs, one each time another 1/(kills+1) of the requests have a committed
    /// prediction.
    pub kills: usize,
    /// The worker's max batch size.
    pub batch: usize,
    /// Instance id of the replica that is killed and restarted under the same id (so the
    /// restart fences the dead one's open transaction, as a supervisor's restart does).
    pub instance: String,
    /// After the last kill, start this (instance id, max batch) instead of restarting
    /// `instance`: another identity finishes the stream.
    pub finisher: Option<(String, usize)>,
    /// Longest wait for each phase (a kill point, the rest of the stream, the drain).
    pub timeout: Duration,
}

/// What [`kill_chaos`] saw.
#[derive(Debug)]
pub struct KillReport {
    pub kills: usize,
    /// Per request id, against a read_committed reader read to the end of the topic.
    pub delivery: Delivery,
    /// Every committed prediction of the run (duplicates included).
    pub predictions: Vec<aifab_core::messages::Prediction>,
    /// From the first worker's start to the reader reaching the end.
    pub elapsed: Duration,
    /// False if a wait ran out (then the missing ids count as lost).
    pub completed: bool,
    /// The replica still running at the end (the caller stops it).
    pub last: tokio::process::Child,
}

/// Produce `plan.requests` requests to `run`'s topic, start one worker, SIGKILL it
/// `plan.kills` times mid-stream (restarting it each time), let the last one finish, wait
/// for lag 0 and count every committed prediction per request id. `load-tests`' `chaos`
/// and `tests/tests/inference_worker.rs` run this.
pub async fn kill_chaos(run: &WorkerRun, plan: &KillPlan) -> KillReport {
    let n = plan.requests;
    let prefix = unique("chaos");
    let brokers = run.endpoints.kafka.clone();
    let mut reader = tokio::task::spawn_blocking(move || {
        PredictionReader::on_brokers(&brokers, aifab_core::topics::PREDICTIONS.name)
    })
    .await
    .unwrap();
    let t = std::time::Instant::now();
    produce_requests_on(&run.endpoints.kafka, &run.topic, &run.task, &prefix, 0..n).await;
    eprintln!(
        "produced {n} requests to {} in {:.1}s",
        run.topic,
        t.elapsed().as_secs_f64()
    );

    let started = std::time::Instant::now();
    let (mut worker, _) = run.start(&plan.instance, plan.batch, &[]);
    let mut kills = 0;
    let mut completed = true;
    for k in 1..=plan.kills {
        let at = k * n / (plan.kills + 1);
        if !reader.read_until(&prefix, at, plan.timeout) {
            eprintln!(
                "only {} distinct predictions after {:?}; no more kills",
                reader.counts().len(),
                plan.timeout
            );
            completed = false;
            break;
        }
        sigkill(&mut worker);
        worker.wait().await.expect("wait for the killed worker");
        kills += 1;
        let (name, batch) = match &plan.finisher {
            Some((name, batch)) if k == plan.kills => (name.as_str(), *batch),
            _ => (plan.instance.as_str(), plan.batch),
        };
        eprintln!(
            "kill {k}: SIGKILL at {} distinct predictions ({:.1}s), starting {name}",
            reader.counts().len(),
            started.elapsed().as_secs_f64()
        );
        worker = run.start(name, batch, &[]).0;
    }
    if completed && !reader.read_until(&prefix, n, plan.timeout) {
        eprintln!(
            "only {} of {n} requests predicted after {:?}",
            reader.counts().len(),
            plan.timeout
        );
        completed = false;
    }
    if !run.wait_drained(plan.timeout).await {
        eprintln!(
            "the worker group did not reach lag 0 within {:?}",
            plan.timeout
        );
        completed = false;
    }
    // read_committed: reading to the end waits out open transactions, so every committed
    // prediction (a duplicate too) is counted.
    if !reader.read_to_end(&prefix, Duration::from_secs(90)) {
        eprintln!("the predictions topic never settled");
        completed = false;
    }
    let elapsed = started.elapsed();
    let ids: Vec<String> = (0..n).map(|i| format!("{prefix}-{i}")).collect();
    let delivery = delivery(ids.iter().map(String::as_str), &reader.counts());
    KillReport {
        kills,
        delivery,
        predictions: reader.seen,
        elapsed,
        completed,
        last: worker,
    }
}

// ---------------------------------------------------------------- dead letters

/// The high watermark of each partition of `aifab.dlq` now: read dead letters from here.
pub async fn dlq_high_watermark() -> Vec<i64> {
    tokio::task::spawn_blocking(|| {
        use rdkafka::consumer::Consumer;
        let c = aifab_core::kafka::metadata_client(&kafka_brokers(), "aifab-tests").unwrap();
        (0..aifab_core::topics::DLQ.partitions)
            .map(|p| {
                c.fetch_watermarks(aifab_core::topics::DLQ.name, p, Duration::from_secs(10))
                    .unwrap()
                    .1
            })
            .collect()
    })
    .await
    .unwrap()
}

/// The first `n` dead letters in `aifab.dlq` after offsets `from` whose source is
/// `source_topic` (read_committed); panics if fewer arrive within `timeout`.
pub async fn dead_letters_from(
    from: Vec<i64>,
    source_topic: &str,
    n: usize,
    timeout: Duration,
) -> Vec<aifab_core::messages::DeadLetter> {
    let source_topic = source_topic.to_string();
    tokio::task::spawn_blocking(move || {
        use rdkafka::consumer::{BaseConsumer, Consumer};
        use rdkafka::Message;
        let c: BaseConsumer =
            aifab_core::kafka::consumer_config(&kafka_brokers(), "aifab-tests", &unique("dlq"))
                .create()
                .unwrap();
        let mut tpl = rdkafka::TopicPartitionList::new();
        for (p, o) in from.iter().enumerate() {
            tpl.add_partition_offset(
                aifab_core::topics::DLQ.name,
                p as i32,
                rdkafka::Offset::Offset(*o),
            )
            .unwrap();
        }
        c.assign(&tpl).unwrap();
        let deadline = std::time::Instant::now() + timeout;
        let mut found = Vec::new();
        while found.len() < n {
            assert!(
                std::time::Instant::now() < deadline,
                "{} of {n} dead letters from {source_topic} within {timeout:?}",
                found.len()
            );
            if let Some(Ok(m)) = c.poll(Duration::from_millis(200)) {
                if let Ok(dl) = aifab_core::messages::decode::<aifab_core::messages::DeadLetter>(
                    m.payload().unwrap_or_default(),
                ) {
                    if dl.source.as_ref().is_some_and(|s| s.topic == source_topic) {
                        found.push(dl);
                    }
                }
            }
        }
        found
    })
    .await
    .unwrap()
}

// ---------------------------------------------------------------- dates

/// (year, month) of the civil (proleptic Gregorian) date `days` days after 1970-01-01.
pub fn civil_year_month(days: i64) -> (i64, i64) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + if m <= 2 { 1 } else { 0 };
    (y, m)
}

/// This month, UTC, as a budget period (`YYYY-MM`).
pub fn this_month_utc() -> String {
    let (y, m) = civil_year_month(aifab_core::now_ms() / 86_400_000);
    format!("{y:04}-{m:02}")
}

// ---------------------------------------------------------------- private stacks (fault tests)

/// True when something accepts TCP connections on 127.0.0.1:`port`.
pub fn port_open(port: u16) -> bool {
    std::net::TcpStream::connect_timeout(&([127, 0, 0, 1], port).into(), Duration::from_millis(500))
        .is_ok()
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

fn is_zombie(pid: u32) -> bool {
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
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .parent()
            .unwrap();
        let mut cmd = std::process::Command::new(root.join("scripts").join(name));
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
            .env("AIFAB_KAFKA_HEAP_OPTS", "-Xms128m -Xmx512m")
            .stdin(std::process::Stdio::null());
        cmd
    }

    /// `scripts/stack-up` for this stack: starts whatever part is not running (on the
    /// same data dir) and waits until it answers.
    pub async fn start(&self) {
        let mut cmd = self.script("stack-up");
        let out = tokio::task::spawn_blocking(move || cmd.output())
            .await
            .unwrap()
            .expect("run scripts/stack-up");
        assert!(
            out.status.success(),
            "private stack-up failed: {}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
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
        let _ = self
            .script("stack-down")
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status();
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

#[cfg(test)]
mod unit {
    use super::*;

    #[test]
    fn delivery_counts_missing_and_repeated_ids() {
        let counts: std::collections::BTreeMap<String, usize> =
            [("r-0", 1), ("r-1", 2), ("r-3", 1), ("other", 5)]
                .into_iter()
                .map(|(k, v)| (k.to_string(), v))
                .collect();
        let ids: Vec<String> = (0..4).map(|i| format!("r-{i}")).collect();
        assert_eq!(
            delivery(ids.iter().map(String::as_str), &counts),
            Delivery {
                requests: 4,
                lost: 1,
                duplicated: 1
            }
        );
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

/// Where a service started by a test writes its log (stdout): nowhere, unless
/// `AIFAB_TEST_LOG_DIR` names a directory, then `<dir>/<name>.log` (appended, so a
/// restarted replica's log follows its predecessor's). `AIFAB_TEST_SERVICE_LOG` sets the
/// level filter (default `warn`).
pub fn service_log(name: &str) -> std::process::Stdio {
    let Some(dir) = std::env::var_os("AIFAB_TEST_LOG_DIR") else {
        return std::process::Stdio::null();
    };
    let path = std::path::Path::new(&dir).join(format!("{name}.log"));
    match std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&path)
    {
        Ok(f) => f.into(),
        Err(e) => panic!("AIFAB_TEST_LOG_DIR: cannot open {}: {e}", path.display()),
    }
}

/// A service log kept in a temporary file and printed (its last lines) only if the test
/// fails: for scenarios whose failures are rare and need the service's view to explain.
pub struct LogOnFailure {
    name: String,
    file: tempfile::NamedTempFile,
}

impl LogOnFailure {
    pub fn new(name: &str) -> Self {
        LogOnFailure {
            name: name.to_string(),
            file: tempfile::NamedTempFile::new().expect("a temporary log file"),
        }
    }

    /// Where the service writes (append; the file outlives the process).
    pub fn stdio(&self) -> std::process::Stdio {
        self.file
            .reopen()
            .expect("reopening the temporary log")
            .into()
    }
}

impl Drop for LogOnFailure {
    fn drop(&mut self) {
        if !std::thread::panicking() {
            return;
        }
        let text = std::fs::read_to_string(self.file.path()).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        let tail = &lines[lines.len().saturating_sub(300)..];
        eprintln!(
            "--- last {} lines of {}'s log ---\n{}\n--- end of {}'s log ---",
            tail.len(),
            self.name,
            tail.join("\n"),
            self.name
        );
    }
}
