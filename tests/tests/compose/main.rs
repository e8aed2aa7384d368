//! Static checks of the production stack, no Docker engine needed: `docker-compose.yml`,
//! the `Dockerfile`, `deploy/prometheus/prometheus.yml` and the workspace manifests.
//!
//! Each check is a function returning the problems it found (empty = fine), so the same
//! functions run on the real files and, in `broken::checker_reports_a_broken_stack`, on a
//! small broken stack to prove they can fail.
//!
//! - `model`: the compose and Prometheus documents as typed values.
//! - `addresses`: brokers, NATS, Redis and scrape targets, check (2).
//! - `ports`: published host ports, check (3); `binaries`: check (4).
//! - `checks`: checks (1), (5)-(7), volumes and Kafka topics.
//! - `grafana`: provisioning and the dashboard's metric names.
//! - `broken`: the broken stack every check must catch.
//!
//! Run: `scripts/test -p aifab-tests --test compose`

mod addresses;
mod binaries;
mod broken;
mod checks;
mod grafana;
mod model;
mod ports;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use addresses::{addresses, check_addresses, Kind};
use binaries::{cargo_metadata, check_binaries, service_binaries};
use checks::{
    check_depends_on, check_gpu_worker, check_image_or_build, check_kafka, check_metrics_scraped,
    check_volumes, core_topics,
};
use model::{parse_yaml, Compose, Prometheus};
use ports::{check_host_ports, published_ports};

const COMPOSE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../docker-compose.yml");
const PROMETHEUS: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../deploy/prometheus/prometheus.yml"
);
const DOCKERFILE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../Dockerfile");

/// The workspace root (where docker-compose.yml lives).
fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn read(path: &str) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("cannot read {path}: {e}"))
}

/// Everything the checks look at, from the real files.
struct Stack {
    compose: Compose,
    prometheus: Prometheus,
    dockerfile: String,
    bins: BTreeSet<String>,
}

fn stack() -> Stack {
    Stack {
        compose: parse_yaml(&read(COMPOSE), "docker-compose.yml"),
        prometheus: parse_yaml(&read(PROMETHEUS), "deploy/prometheus/prometheus.yml"),
        dockerfile: read(DOCKERFILE),
        bins: service_binaries(&cargo_metadata(&root())),
    }
}

fn assert_clean(what: &str, problems: Vec<String>) {
    assert!(
        problems.is_empty(),
        "{what}: {} problem(s) in docker-compose.yml / deploy/ / Dockerfile:\n  - {}",
        problems.len(),
        problems.join("\n  - ")
    );
}

// ------------------------------------------------------------------------------------
// The checks on the real files

#[test]
fn every_service_has_image_or_build() {
    assert_clean("image/build", check_image_or_build(&stack().compose));
}

#[test]
fn broker_nats_redis_and_scrape_hosts_are_services() {
    let s = stack();
    let found = addresses(&s.compose);
    for kind in [Kind::Kafka, Kind::Nats, Kind::Redis] {
        assert!(
            found.iter().any(|a| a.kind == kind),
            "no {kind:?} address found in docker-compose.yml: the address scan is broken or \
             the services lost their config"
        );
    }
    assert_clean("addresses", check_addresses(&s.compose, &s.prometheus));
}

#[test]
fn published_host_ports_do_not_collide() {
    let s = stack();
    let published: BTreeSet<u16> = s
        .compose
        .services
        .iter()
        .flat_map(|(n, svc)| published_ports(n, svc).0)
        .map(|p| p.port)
        .collect();
    assert_clean("host ports", check_host_ports(&s.compose));
    for port in [9092, 4222, 8222, 6379, 8080, 8084, 8085, 9090, 3000] {
        assert!(
            published.contains(&port),
            "host port {port} is not published (published: {published:?})"
        );
    }
}

#[test]
fn aifab_binaries_exist_in_the_workspace() {
    let s = stack();
    assert!(
        s.bins.contains("aifab"),
        "cargo metadata lists no `aifab` CLI under services/ (found {:?})",
        s.bins
    );
    assert_clean(
        "binaries",
        check_binaries(&s.compose, &s.bins, &s.dockerfile),
    );
}

#[test]
fn depends_on_targets_exist() {
    assert_clean("depends_on", check_depends_on(&stack().compose));
}

#[test]
fn gpu_worker_reserves_an_nvidia_gpu_under_profile_gpu() {
    assert_clean("gpu worker", check_gpu_worker(&stack().compose));
}

#[test]
fn every_aifab_service_is_scraped_by_prometheus() {
    let s = stack();
    assert_clean("metrics", check_metrics_scraped(&s.compose, &s.prometheus));
}

#[test]
fn volumes_are_declared_and_bind_mounts_exist() {
    let s = stack();
    assert_clean("volumes", check_volumes(&s.compose, &root()));
    let dashboards = root().join("deploy/grafana/dashboards");
    assert!(
        dashboards.is_dir(),
        "{} is missing (Grafana's dashboards provider points at it)",
        dashboards.display()
    );
    let provisioning = root().join("deploy/grafana/provisioning");
    for sub in ["datasources", "dashboards"] {
        let dir = provisioning.join(sub);
        let yamls = std::fs::read_dir(&dir)
            .unwrap_or_else(|e| panic!("{} is missing: {e}", dir.display()))
            .flatten()
            .filter(|e| {
                e.path()
                    .extension()
                    .is_some_and(|x| x == "yml" || x == "yaml")
            })
            .count();
        assert!(yamls > 0, "{} has no provisioning YAML", dir.display());
    }
}

#[test]
fn kafka_init_creates_every_topic_of_aifab_core() {
    assert_clean("kafka", check_kafka(&stack().compose, &core_topics()));
}
