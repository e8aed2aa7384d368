//! The checker can fail: a small broken stack on which every check must report its
//! broken case.

use std::collections::BTreeSet;

use crate::addresses::check_addresses;
use crate::binaries::check_binaries;
use crate::checks::{
    check_depends_on, check_gpu_worker, check_image_or_build, check_kafka, check_metrics_scraped,
    check_volumes,
};
use crate::model::{parse_yaml, Compose, Prometheus};
use crate::ports::check_host_ports;
use crate::root;

const BROKEN_COMPOSE: &str = r#"
x-env: &env
  AIFAB_NATS_URL: nats://nats:4222        # there is no nats service
services:
  kafka:
    image: apache/kafka:4.1.1
    environment:
      KAFKA_PROCESS_ROLES: broker,controller
      KAFKA_ADVERTISED_LISTENERS: INTERNAL://kafka:19092,EXTERNAL://localhost:9092
      KAFKA_OFFSETS_TOPIC_REPLICATION_FACTOR: 1
    ports: ["9092:9092"]
  topics:
    image: apache/kafka:4.1.1
    entrypoint: ["/bin/bash", "-c"]
    command:
      - /opt/kafka/bin/kafka-topics.sh --bootstrap-server kafka:19092 --create
        --topic aifab.dlq --partitions 1
    depends_on: {kafka: {condition: service_healthy}}
  ingest:
    image: aifab/runtime:latest
    command: ["aifab-ingest"]
    environment:
      <<: *env
      AIFAB_KAFKA_BROKERS: kafak:19092      # typo: no such service
      AIFAB_HTTP_ADDR: 127.0.0.1:8080       # loopback: Prometheus cannot reach it
    ports: ["127.0.0.1:9092:9092", "8080:8080"]   # 9092 collides with kafka
    depends_on: [kafka, redis]              # no redis service
  feature:
    command: aifab-featurez --fast          # no image/build; no such binary
    environment:
      AIFAB_KAFKA_BROKERS: kafka:9092       # the host listener, advertised as localhost
      AIFAB_HTTP_ADDR: 0.0.0.0:8081
    depends_on: {kafka: {condition: service_started}}
  inference-worker-gpu:
    build: {context: ., target: runtime-cuda}
    command: ["aifab-inference-worker"]
    environment: ["AIFAB_DEVICE=cuda:0", "AIFAB_HTTP_ADDR=0.0.0.0:8083"]
    ports: ["8083:8083", "8080-8081:9000-9001"]   # 8080 collides with ingest
    volumes: ["models:/models", "./no/such/dir:/x"]
"#;

const BROKEN_PROMETHEUS: &str = r#"
scrape_configs:
  - job_name: ingest
    static_configs: [{targets: ["ingest:8080", "grafana:3000"]}]
  - job_name: workers
    static_configs: [{targets: ["inference-worker-gpu:8083"]}]
"#;

fn mentions(problems: &[String], needles: &[&str]) -> bool {
    problems
        .iter()
        .any(|p| needles.iter().all(|n| p.contains(n)))
}

#[test]
fn checker_reports_a_broken_stack() {
    let doc: Compose = parse_yaml(BROKEN_COMPOSE, "broken compose");
    let prom: Prometheus = parse_yaml(BROKEN_PROMETHEUS, "broken prometheus");
    let bins: BTreeSet<String> = [
        "aifab",
        "aifab-ingest",
        "aifab-inference-worker",
        "aifab-monitor",
    ]
    .map(String::from)
    .into();
    let dockerfile = "ARG AIFAB_BINS=\"aifab aifab-ingest\"";

    let expect = |what: &str, problems: &[String], needles: &[&str]| {
        assert!(
            mentions(problems, needles),
            "{what}: expected a problem mentioning {needles:?}, got:\n  - {}",
            problems.join("\n  - ")
        );
    };

    let p = check_image_or_build(&doc);
    expect("image/build", &p, &["`feature`", "neither"]);
    assert_eq!(p.len(), 1, "only `feature` lacks image/build: {p:?}");

    let p = check_metrics_scraped(&doc, &prom);
    expect(
        "a worker published beyond loopback",
        &p,
        &["`inference-worker-gpu`", "only ingest's API"],
    );
    expect(
        "ops routes on a public port",
        &p,
        &["`ingest`", "AIFAB_OPS_ADDR"],
    );

    let p = check_addresses(&doc, &prom);
    expect(
        "dangling broker",
        &p,
        &["ingest: AIFAB_KAFKA_BROKERS", "`kafak`"],
    );
    expect("dangling nats", &p, &["ingest: AIFAB_NATS_URL", "`nats`"]);
    expect(
        "wrong kafka listener",
        &p,
        &["feature: AIFAB_KAFKA_BROKERS", "kafka:9092", "19092"],
    );
    expect(
        "dangling scrape target",
        &p,
        &["prometheus.yml", "`grafana`"],
    );
    assert!(
        !mentions(&p, &["topics:", "kafka:19092", "not a service"]),
        "kafka:19092 from --bootstrap-server is fine: {p:?}"
    );

    let p = check_host_ports(&doc);
    expect("port collision", &p, &["9092/tcp", "`kafka`", "`ingest`"]);
    expect(
        "range collision",
        &p,
        &["8080/tcp", "`ingest`", "`inference-worker-gpu`"],
    );
    assert!(!mentions(&p, &["8083"]), "8083 is published once: {p:?}");

    let p = check_binaries(&doc, &bins, dockerfile);
    expect("unknown binary", &p, &["`feature`", "`aifab-featurez`"]);
    expect(
        "binary not in image",
        &p,
        &["`inference-worker-gpu`", "Dockerfile"],
    );
    expect("unrun binary", &p, &["`aifab-monitor`", "not run"]);
    assert!(
        !mentions(&p, &["`aifab`", "not run"]),
        "the CLI need not run as a service: {p:?}"
    );

    let p = check_depends_on(&doc);
    expect("dangling depends_on", &p, &["`ingest`", "`redis`"]);
    expect(
        "healthy without healthcheck",
        &p,
        &["`topics`", "service_healthy", "no healthcheck"],
    );

    let p = check_gpu_worker(&doc);
    expect("missing cpu worker", &p, &["no `inference-worker`"]);
    expect("gpu profile", &p, &["profile `gpu`"]);
    expect("gpu reservation", &p, &["does not reserve an NVIDIA GPU"]);
    expect(
        "gpu worker ports",
        &p,
        &["`inference-worker-gpu` publishes host ports"],
    );

    let p = check_metrics_scraped(&doc, &prom);
    expect("loopback listener", &p, &["`ingest`", "127.0.0.1"]);
    expect(
        "unscraped service",
        &p,
        &["`feature`", "does not scrape `feature:8081`"],
    );
    expect(
        "static worker target",
        &p,
        &["`inference-worker-gpu`", "dns_sd_configs"],
    );

    let p = check_volumes(&doc, &root());
    expect("undeclared volume", &p, &["`models`", "not declared"]);
    expect("missing bind source", &p, &["./no/such/dir"]);

    let p = check_kafka(&doc, &[("aifab.dlq", 1), ("aifab.usage", 4)]);
    expect("missing topic", &p, &["`aifab.usage`", "4 partition"]);
    expect("not idempotent", &p, &["--if-not-exists"]);
    expect(
        "no wait for topics",
        &p,
        &["`ingest`", "`topics`", "service_completed_successfully"],
    );
    expect(
        "transactions",
        &p,
        &["KAFKA_TRANSACTION_STATE_LOG_REPLICATION_FACTOR=1"],
    );
    assert!(
        !mentions(&p, &["`aifab.dlq`"]),
        "aifab.dlq is created with 1 partition: {p:?}"
    );
}
