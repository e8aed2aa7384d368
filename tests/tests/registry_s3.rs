//! The registry's artifacts in an S3-compatible store: moto's S3 server on loopback.
//!
//! 1. Library level: the trainer's artifact write puts a tiny head into
//!    `s3://<bucket>/<prefix>/<task>/v1/`, the worker's loading path downloads and loads
//!    it (the loaded head equals the trained one); missing versions and buckets are
//!    clear errors naming the URI.
//! 2. Services: `aifab-trainer --artifact-store s3://...` trains, the registry record
//!    points into the bucket, and a worker with no head downloads and serves it.
//!
//! moto comes from PyPI (`moto[server]`): `scripts/install-moto` installs it (`.ci/run`
//! runs it and sets `AIFAB_MOTO_SERVER`). Without it these tests fail, saying how to
//! install it.

use std::path::PathBuf;
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use aifab_core::artifacts::{ArtifactStore, S3Config};
use aifab_core::messages::{
    decode, encode, tag, ModelEvent, ModelEventKind, TrainRequest, TrainingExample,
};
use aifab_core::topics::subjects;
use aifab_inference_worker::model_slot::{ArtifactFetch, ModelSlot};
use aifab_tests::*;
use aifab_trainer::dataset::{split, Example};
use aifab_trainer::job::{artifact_files, write_artifact, Trainer};
use aifab_trainer::train::TrainConfig;
use futures::StreamExt;
use rdkafka::producer::{FutureProducer, FutureRecord};
use tokio::process::{Child, Command};

/// AIFAB_MOTO_SERVER, else scripts/install-moto's venv, else a venv in /tmp.
fn moto_server() -> PathBuf {
    if let Ok(p) = std::env::var("AIFAB_MOTO_SERVER") {
        return PathBuf::from(p);
    }
    let home = std::env::var("HOME").unwrap_or_else(|_| ".".into());
    let cached = PathBuf::from(home).join(".cache/aifab/moto-venv/bin/moto_server");
    if cached.is_file() {
        return cached;
    }
    PathBuf::from("/tmp/moto-venv/bin/moto_server")
}

/// A moto S3 server on a free loopback port, killed when dropped.
struct Moto {
    _child: Child,
    endpoint: String,
    addr: String,
    _log_dir: tempfile::TempDir,
}

impl Moto {
    async fn start() -> Moto {
        let bin = moto_server();
        assert!(
            bin.is_file(),
            "moto's S3 server not found at {} (set AIFAB_MOTO_SERVER to its moto_server). \
             Install it with scripts/install-moto (a venv in ~/.cache/aifab/moto-venv; .ci/run does this), \
             or: python3 -m venv /tmp/moto-venv && /tmp/moto-venv/bin/pip install 'moto[server]'",
            bin.display()
        );
        let port = free_port();
        let log_dir = tempfile::tempdir().unwrap();
        let log = std::fs::File::create(log_dir.path().join("moto.log")).unwrap();
        let child = Command::new(&bin)
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .stdout(Stdio::null())
            .stderr(log)
            .kill_on_drop(true)
            .spawn()
            .unwrap_or_else(|e| panic!("starting {}: {e}", bin.display()));
        let addr = format!("127.0.0.1:{port}");
        let up = wait_for(Duration::from_secs(60), || {
            let addr = addr.clone();
            async move {
                http_get(&addr, "/")
                    .await
                    .ok()
                    .filter(|(code, _)| *code == 200)
                    .map(|_| ())
            }
        })
        .await;
        if up.is_none() {
            let log = std::fs::read_to_string(log_dir.path().join("moto.log")).unwrap_or_default();
            panic!("moto did not answer on {addr} within 60 s; its log:\n{log}");
        }
        Moto {
            _child: child,
            endpoint: format!("http://{addr}"),
            addr,
            _log_dir: log_dir,
        }
    }

    /// Create a bucket (moto accepts unsigned requests).
    async fn create_bucket(&self, bucket: &str) {
        let r = http_request(&self.addr, "PUT", &format!("/{bucket}"), &[], b"")
            .await
            .unwrap_or_else(|e| panic!("creating bucket {bucket}: {e}"));
        assert_eq!(r.status, 200, "creating bucket {bucket}: {}", r.body);
    }

    fn s3(&self) -> S3Config {
        S3Config {
            endpoint: Some(self.endpoint.clone()),
            region: Some("us-east-1".into()),
            access_key_id: Some("testing".into()),
            secret_access_key: Some("testing".into()),
        }
    }

    /// The same settings as environment variables, for the service binaries.
    fn envs(&self) -> Vec<(&'static str, String)> {
        vec![
            ("AIFAB_S3_ENDPOINT", self.endpoint.clone()),
            ("AWS_REGION", "us-east-1".into()),
            ("AWS_ACCESS_KEY_ID", "testing".into()),
            ("AWS_SECRET_ACCESS_KEY", "testing".into()),
        ]
    }
}

const POSITIVE: &[&str] = &["good", "great", "love", "happy"];
const NEGATIVE: &[&str] = &["bad", "terrible", "hate", "sad"];
const FILLER: &[&str] = &["the", "movie", "film", "day", "this", "was", "very", "it"];

fn example(i: usize) -> Example {
    let positive = i.is_multiple_of(2);
    let words = if positive { POSITIVE } else { NEGATIVE };
    let text = format!(
        "{} {} {} {}",
        FILLER[i % FILLER.len()],
        words[i % words.len()],
        FILLER[(i / 3) % FILLER.len()],
        words[(i / 5) % words.len()]
    );
    Example {
        text,
        label: if positive { "pos" } else { "neg" }.into(),
    }
}

fn bucket_name() -> String {
    // S3 bucket names: lowercase letters, digits, dashes; at most 63 characters.
    format!("aifab-{}", uuid::Uuid::new_v4().simple())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trainer_writes_to_s3_and_the_worker_loads_from_it() {
    let moto = Moto::start().await;
    let bucket = bucket_name();
    moto.create_bucket(&bucket).await;
    let models = tiny_models();

    // The trainer's job and artifact write, into s3://bucket/registry/<task>/v1.
    let examples: Vec<Example> = (0..120).map(example).collect();
    let (train, eval) = split(&examples, 0.2, 42);
    let model_dir = models.model_dir.clone();
    let (trainer, out) = tokio::task::spawn_blocking(move || {
        let mut t = Trainer::load(
            &model_dir,
            32,
            TrainConfig {
                max_epochs: 30,
                ..TrainConfig::default()
            },
        )
        .unwrap();
        let out = t.run(&train, &eval, |_| {}).unwrap();
        (t, out)
    })
    .await
    .unwrap();
    let task = "sentiment";
    let files = artifact_files(task, "v1", &trainer, &out).unwrap();
    let root = format!("s3://{bucket}/registry");
    let store = ArtifactStore::open(&root, &moto.s3()).unwrap();
    store.probe().await.unwrap();
    let location = write_artifact(&store, task, "v1", &files).await.unwrap();
    let uri = location.uri();
    assert_eq!(uri, format!("s3://{bucket}/registry/sentiment/v1"));
    for (name, bytes) in &files {
        assert_eq!(
            &store.get(&format!("{task}/v1/{name}")).await.unwrap(),
            bytes,
            "{name} in the bucket"
        );
    }

    // The worker's loading path: download into the cache, load, serve that exact head.
    let cache = tempfile::tempdir().unwrap();
    let encoder =
        Arc::new(aifab_model::Encoder::load(&models.model_dir, &aifab_model::Device::Cpu).unwrap());
    let readiness = aifab_core::health::Readiness::new("test");
    let fetch = ArtifactFetch {
        cache_dir: cache.path().to_path_buf(),
        s3: moto.s3(),
    };
    let slot = Arc::new(ModelSlot::with_fetch(
        encoder,
        readiness.clone(),
        fetch.clone(),
    ));
    slot.load_uri(&uri, "v1").await.unwrap();
    let current = slot.current().expect("a model is loaded");
    assert_eq!(current.version, "v1");
    assert_eq!(
        current.head, out.head,
        "the worker serves exactly the trained head"
    );
    assert!(readiness.is_ok("model"));
    let cached = cache
        .path()
        .join("s3")
        .join(&bucket)
        .join("registry/sentiment/v1");
    assert!(cached.join("head.safetensors").is_file() && cached.join("labels.json").is_file());

    // Missing versions and buckets: errors name the URI and what the store said.
    let missing = format!("s3://{bucket}/registry/sentiment/v9");
    let err = format!("{:#}", slot.load_uri(&missing, "v9").await.unwrap_err());
    assert!(
        err.contains(&format!("{missing}/head.safetensors")) && err.contains("does not exist"),
        "{err}"
    );
    assert_eq!(
        slot.current().unwrap().version,
        "v1",
        "a failed load keeps the current model"
    );
    let nobucket = format!("s3://{}/registry/sentiment/v1", bucket_name());
    let err = format!("{:#}", fetch.head_dir(&nobucket).await.unwrap_err());
    assert!(
        err.contains(&nobucket) && err.contains("the store said"),
        "{err}"
    );
    let err = ArtifactStore::open(&format!("s3://{}", bucket_name()), &moto.s3())
        .unwrap()
        .probe()
        .await
        .unwrap_err();
    assert!(err.to_string().contains("listing failed"), "{err}");
}

async fn produce_examples(topic: &str, task: &str, n: usize) {
    let p: FutureProducer = aifab_core::kafka::producer_config(&kafka_brokers(), "aifab-tests")
        .create()
        .unwrap();
    for i in 0..n {
        let e = example(i);
        let ex = TrainingExample {
            schema: tag(),
            id: format!("ex-{i}"),
            tenant: "acme".into(),
            task: task.into(),
            text: e.text,
            label: e.label,
            received_at_ms: aifab_core::now_ms(),
        };
        p.send(
            FutureRecord::to(topic).key(&ex.id).payload(&encode(&ex)),
            Duration::from_secs(30),
        )
        .await
        .map_err(|(e, _)| e)
        .unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trainer_and_worker_services_share_an_s3_registry() {
    let moto = Moto::start().await;
    let bucket = bucket_name();
    moto.create_bucket(&bucket).await;
    let models = tiny_models();
    let task = unique("task").replace('.', "-");
    let examples_topic = unique("examples");
    let requests_topic = unique("requests");
    create_topic(&examples_topic, 1).await;
    create_topic(&requests_topic, 1).await;
    let nats = async_nats::connect(nats_url()).await.unwrap();
    let mut events = nats.subscribe(subjects::MODEL_ALL).await.unwrap();
    produce_examples(&examples_topic, &task, 100).await;

    // A store the trainer cannot reach is a start-up error naming it.
    let missing_bucket = format!("s3://{}/registry", bucket_name());
    let out = Command::new(bin_path("aifab-trainer"))
        .env("AIFAB_HTTP_ADDR", format!("127.0.0.1:{}", free_port()))
        .env("AIFAB_MODEL_DIR", &models.model_dir)
        .env("AIFAB_ARTIFACT_STORE", &missing_bucket)
        .env("AIFAB_TRAINING_TOPIC", &examples_topic)
        .env("AIFAB_LOG", "warn")
        .envs(moto.envs())
        .output()
        .await
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success(),
        "the trainer started with a missing bucket"
    );
    assert!(
        stderr.contains(&missing_bucket) && stderr.contains("listing failed"),
        "{stderr}"
    );

    let store_uri = format!("s3://{bucket}/registry");
    let trainer_addr = format!("127.0.0.1:{}", free_port());
    let _trainer = Command::new(bin_path("aifab-trainer"))
        .env("AIFAB_HTTP_ADDR", &trainer_addr)
        .env("AIFAB_MODEL_DIR", &models.model_dir)
        .env("AIFAB_ARTIFACT_STORE", &store_uri)
        .env("AIFAB_TRAINING_TOPIC", &examples_topic)
        .env("AIFAB_TRAINER_GROUP", unique("trainer"))
        .env("AIFAB_TRAIN_EVERY", "0")
        .env("AIFAB_PROMOTION_FLOOR", "0")
        .env("AIFAB_LOG", "warn")
        .envs(moto.envs())
        .stdout(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    eventually(
        Duration::from_secs(60),
        "the trainer window to fill",
        || {
            let (addr, task) = (trainer_addr.clone(), task.clone());
            async move {
                let (_, body) = http_get(&addr, "/v1/window").await.ok()?;
                body.contains(&format!("\"{task}\":100")).then_some(())
            }
        },
    )
    .await;
    let ask = TrainRequest {
        schema: tag(),
        task: task.clone(),
        requested_by: Some("test".into()),
        at_ms: aifab_core::now_ms(),
    };
    nats.publish(subjects::TRAIN_REQUEST, encode(&ask).into())
        .await
        .unwrap();
    let promoted = tokio::time::timeout(Duration::from_secs(180), async {
        loop {
            let msg = events.next().await.expect("NATS subscription open");
            let e: ModelEvent = decode(&msg.payload).unwrap();
            if e.task == task && e.kind == ModelEventKind::Promoted {
                return e;
            }
        }
    })
    .await
    .expect("the trained model is promoted in time");
    let uri = format!("{store_uri}/{task}/{}", promoted.version);
    assert_eq!(
        promoted.artifact_uri, uri,
        "the registry names the version's place in the bucket"
    );
    let store = ArtifactStore::open(&store_uri, &moto.s3()).unwrap();
    let manifest: serde_json::Value = serde_json::from_slice(
        &store
            .get(&format!("{task}/{}/manifest.json", promoted.version))
            .await
            .unwrap(),
    )
    .unwrap();
    assert_eq!(manifest["version"], promoted.version.as_str());

    // A worker with no head downloads the production version from the bucket.
    let cache = tempfile::tempdir().unwrap();
    let worker_addr = format!("127.0.0.1:{}", free_port());
    let _worker = Command::new(bin_path("aifab-inference-worker"))
        .env("AIFAB_HTTP_ADDR", &worker_addr)
        .env("AIFAB_MODEL_DIR", &models.model_dir)
        .env("AIFAB_TASK", &task)
        .env("AIFAB_INPUT_TOPIC", &requests_topic)
        .env("AIFAB_WORKER_GROUP", unique("workers"))
        .env("AIFAB_INSTANCE_ID", unique("w"))
        .env("AIFAB_ARTIFACT_CACHE_DIR", cache.path())
        .env("AIFAB_LOG", "warn")
        .envs(moto.envs())
        .stdout(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let version = promoted.version.clone();
    eventually(
        Duration::from_secs(60),
        "the worker to load the production version from S3",
        || {
            let (addr, version) = (worker_addr.clone(), version.clone());
            async move {
                let (code, body) = http_get(&addr, "/readyz").await.ok()?;
                (code == 200 && body.contains(&format!("version {version}"))).then_some(())
            }
        },
    )
    .await;
    let cached = cache
        .path()
        .join("s3")
        .join(&bucket)
        .join("registry")
        .join(&task)
        .join(&promoted.version);
    assert!(
        cached.join("head.safetensors").is_file(),
        "downloaded into the worker's cache"
    );
    delete_topic(&examples_topic).await;
    delete_topic(&requests_topic).await;
}
