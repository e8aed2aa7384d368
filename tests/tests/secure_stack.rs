//! The secure stack (`scripts/stack-up --secure`): TLS on every connection, a SCRAM user
//! and ACLs per service on Kafka, NATS users with permissions, Redis ACL users. Strangers
//! are refused — no credentials, a wrong password, a service reaching outside its ACLs —
//! and the whole loop (ingest → feature → trainer → worker → predictions) runs on it
//! exactly once, with each service under its own credentials, and no password in any
//! service's log or `/readyz`.

use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use aifab_tests::*;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{ClientConfig, ClientContext};
use tokio::process::Command;

const LIMIT: Duration = Duration::from_secs(15);

#[test]
fn strangers_are_refused_and_the_loop_runs_exactly_once_on_the_secure_stack() {
    let stack = SecureStack::up();
    // This process reads predictions as the operator (`cli`), and the `aifab` commands it
    // runs inherit that: set before any thread or client exists (clients read it once).
    for (k, v) in stack.env("cli") {
        std::env::set_var(k, v);
    }
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(async {
            kafka_refuses_strangers(&stack).await;
            nats_refuses_strangers(&stack).await;
            redis_refuses_strangers(&stack).await;
            the_loop_runs_exactly_once(&stack).await;
        });
}

/// A librdkafka client context that keeps the client's error reports.
#[derive(Clone, Default)]
struct Errors(Arc<Mutex<Vec<String>>>);

impl ClientContext for Errors {
    fn error(&self, error: rdkafka::error::KafkaError, reason: &str) {
        self.0.lock().unwrap().push(format!("{error}: {reason}"));
    }
}

impl rdkafka::consumer::ConsumerContext for Errors {}

impl Errors {
    fn any(&self, needle: &str) -> bool {
        self.0.lock().unwrap().iter().any(|e| e.contains(needle))
    }
}

fn kafka_client(stack: &SecureStack, principal: Option<&str>) -> ClientConfig {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", stack.kafka_brokers())
        .set("group.id", "aifab-tests-refusals")
        .set("message.timeout.ms", "10000");
    if let Some(p) = principal {
        stack.kafka_props(p).apply(&mut c);
    }
    c
}

async fn kafka_refuses_strangers(stack: &SecureStack) {
    let metadata = |c: ClientConfig| {
        tokio::task::spawn_blocking(move || {
            let errors = Errors::default();
            let consumer: BaseConsumer<Errors> = c.create_with_context(errors.clone()).unwrap();
            let r = consumer
                .fetch_metadata(Some("aifab.predictions"), LIMIT)
                .map(|_| ());
            (r, errors)
        })
    };
    // No credentials: a plaintext client on the SASL_SSL listener gets nothing.
    let (r, _) = metadata(kafka_client(stack, None)).await.unwrap();
    assert!(r.is_err(), "a client without credentials read metadata");

    // A wrong password: SCRAM refuses it.
    let mut wrong = kafka_client(stack, Some("ingest"));
    wrong.set("sasl.password", "not-the-password");
    let (r, errors) = metadata(wrong).await.unwrap();
    assert!(r.is_err(), "a wrong password read metadata");
    assert!(
        errors.any("Authentication failed"),
        "{:?}",
        errors.0.lock().unwrap()
    );

    // Ingest's own credentials work, but its ACLs do not let it write predictions.
    let (r, _) = metadata(kafka_client(stack, Some("ingest"))).await.unwrap();
    r.expect("ingest, authenticated, reads metadata");
    let producer: FutureProducer = kafka_client(stack, Some("ingest")).create().unwrap();
    let sent = producer
        .send(
            FutureRecord::to("aifab.predictions")
                .key("forged")
                .payload("{}"),
            LIMIT,
        )
        .await;
    let (e, _) = sent.expect_err("ingest wrote to aifab.predictions");
    assert!(
        e.to_string().contains("Topic authorization failed"),
        "ingest writing predictions: {e}"
    );
}

async fn nats_refuses_strangers(stack: &SecureStack) {
    let url = stack.nats_url();
    let ca = stack.secrets().join("ca.pem");
    let tls_only = || {
        async_nats::ConnectOptions::new()
            .add_root_certificates(ca.clone())
            .require_tls(true)
    };
    let e = tls_only()
        .connect(&url)
        .await
        .expect_err("NATS accepted a client without credentials");
    assert!(
        e.to_string().to_lowercase().contains("authorization"),
        "{e}"
    );
    let e = tls_only()
        .user_and_password("ingest".into(), "not-the-password".into())
        .connect(&url)
        .await
        .expect_err("NATS accepted a wrong password");
    assert!(
        e.to_string().to_lowercase().contains("authorization"),
        "{e}"
    );

    // Ingest may not announce a model: the server says so.
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let ingest = stack
        .nats_auth("ingest")
        .options(&url)
        .await
        .unwrap()
        .event_callback(move |event| {
            let tx = tx.clone();
            async move {
                let _ = tx.send(event.to_string());
            }
        })
        .connect(&url)
        .await
        .expect("ingest connects with its own credentials");
    ingest
        .publish("aifab.model.promoted", "{}".into())
        .await
        .unwrap();
    ingest.flush().await.unwrap();
    let refused = tokio::time::timeout(LIMIT, async {
        while let Some(event) = rx.recv().await {
            if event.to_lowercase().contains("permissions violation") {
                return event;
            }
        }
        panic!("the event stream ended");
    })
    .await
    .expect("no permissions violation for ingest publishing aifab.model.promoted");
    assert!(refused.contains("aifab.model.promoted"), "{refused}");
}

async fn redis_refuses_strangers(stack: &SecureStack) {
    let url = stack.redis_url();
    let ping = |auth: aifab_core::redis_store::RedisAuth| {
        let url = url.clone();
        async move {
            let client = auth.client(&url).unwrap();
            let mut conn = client.get_multiplexed_async_connection().await?;
            redis::cmd("PING").query_async::<String>(&mut conn).await
        }
    };
    let mut nobody = stack.redis_auth("ingest");
    nobody.username = None;
    nobody.password = None;
    let e = ping(nobody)
        .await
        .expect_err("Redis answered a client without credentials");
    assert!(e.to_string().contains("NOAUTH"), "{e}");
    let mut wrong = stack.redis_auth("ingest");
    wrong.password = Some("not-the-password".into());
    let e = ping(wrong)
        .await
        .expect_err("Redis accepted a wrong password");
    assert_eq!(e.kind(), redis::ErrorKind::AuthenticationFailed, "{e}");

    // Ingest writes its own keys, not the model registry.
    let client = stack.redis_auth("ingest").client(&url).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let () = redis::cmd("SET")
        .arg("aifab:ingest:probe")
        .arg("1")
        .query_async(&mut conn)
        .await
        .expect("ingest writes its own keys");
    let e = redis::cmd("SET")
        .arg("aifab:registry:forged:alias:production")
        .arg("v666")
        .query_async::<()>(&mut conn)
        .await
        .expect_err("ingest wrote the model registry");
    assert_eq!(
        e.kind(),
        redis::ErrorKind::Server(redis::ServerErrorKind::NoPerm),
        "{e}"
    );
}

async fn the_loop_runs_exactly_once(stack: &SecureStack) {
    let home = tempfile::Builder::new()
        .prefix("aifab-secure-home-")
        .tempdir()
        .unwrap();
    let aifab = |args: &[&str]| {
        let mut cmd = Command::new(bin_path("aifab"));
        cmd.args(args)
            .env("AIFAB_HOME", home.path())
            .stdin(Stdio::null());
        cmd
    };
    let env_dir = stack.env_dir().display().to_string();
    let _supervisor = SupervisorGuard {
        home: home.path().to_path_buf(),
    };
    run_ok(
        aifab(&["up", "--no-stack", "--detach", "--env-dir", &env_dir]),
        "aifab up on the secure stack",
        Duration::from_secs(180),
    )
    .await;

    let brokers = stack.kafka_brokers();
    let mut reader = tokio::task::spawn_blocking(move || {
        PredictionReader::as_client(&brokers, "aifab-cli", "aifab.predictions")
    })
    .await
    .unwrap();
    let out = run_ok(
        aifab(&[
            "demo",
            "--no-up",
            "--train-limit",
            "400",
            "--test-limit",
            "120",
            "--tenant",
            "secure",
            "--idle-timeout-s",
            "90",
        ]),
        "aifab demo on the secure stack",
        Duration::from_secs(600),
    )
    .await;
    assert!(
        out.contains("120 sent, 120 answered") && out.contains(", 0 missing"),
        "{out}"
    );

    // Exactly once, counted by a read_committed reader: one prediction per request.
    let reader = tokio::task::spawn_blocking(move || {
        assert!(
            reader.read_to_end("", Duration::from_secs(60)),
            "{}",
            reader.describe()
        );
        reader
    })
    .await
    .unwrap();
    let counts = reader.counts();
    assert_eq!(counts.len(), 120, "distinct requests answered");
    assert!(
        counts.values().all(|&n| n == 1),
        "{}",
        reader.duplicates_report(5)
    );

    // No password in any answer or log.
    let passwords = stack.all_passwords();
    assert!(passwords.len() >= 24, "{} passwords", passwords.len());
    for s in aifab::local::SERVICES {
        let (_, body) = http_get(&s.addr(), "/readyz").await.unwrap();
        for p in &passwords {
            assert!(
                !body.contains(p.as_str()),
                "{} /readyz shows a password",
                s.name
            );
        }
    }
    for entry in std::fs::read_dir(home.path().join("logs"))
        .unwrap()
        .flatten()
    {
        let log = std::fs::read_to_string(entry.path()).unwrap();
        for p in &passwords {
            assert!(
                !log.contains(p.as_str()),
                "{} contains a password",
                entry.path().display()
            );
        }
    }
}
