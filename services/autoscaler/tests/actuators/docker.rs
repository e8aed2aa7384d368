//! The Docker actuator, compose and swarm, against the fake Engine (over its Unix socket
//! and over TCP).

use aifab_autoscaler::actuators::{DockerActuator, DockerMode};
use axum::http::Method;
use axum::Router;
use serde_json::{json, Value};

use crate::fake::{container, fake_with, serve_tcp, Request, Swarm};
use crate::fake_docker::docker;

#[tokio::test]
async fn docker_compose_scales_up_by_copying_a_replica_and_down_by_removing_the_highest() {
    let mut other = container("x1", 1, true);
    other
        .labels
        .insert("com.docker.compose.service".into(), "monitor".into());
    let fake = fake_with(vec![container("w1", 1, true), other]);
    // Over the Unix socket, as the Docker Engine listens by default.
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("docker.sock");
    let listener = tokio::net::UnixListener::bind(&sock).unwrap();
    let app = Router::new().fallback(docker).with_state(fake.clone());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    let host = format!("unix://{}", sock.display());
    let d =
        DockerActuator::new(&host, DockerMode::Compose, "aifab", "inference-worker", 7).unwrap();

    assert_eq!(
        d.replicas().await.unwrap(),
        1,
        "only the inference-worker service counts"
    );
    {
        // The API version is asked once, first; nothing newer than the daemon's is used.
        let f = fake.lock().unwrap();
        assert_eq!(f.requests[0].path, "/version");
        assert_eq!(
            f.requests.iter().filter(|r| r.path == "/version").count(),
            1
        );
        let req = f
            .requests
            .iter()
            .find(|r| r.path == "/containers/json")
            .unwrap();
        assert!(
            matches!(req.api_version.as_deref(), None | Some("1.44")),
            "{req:?}"
        );
        let filters: Value = serde_json::from_str(&req.query["filters"]).unwrap();
        assert_eq!(
            filters,
            json!({"label": [
                "com.docker.compose.project=aifab",
                "com.docker.compose.service=inference-worker",
            ]})
        );
    }
    assert_eq!(d.scale(3).await.unwrap(), 3);
    assert_eq!(d.replicas().await.unwrap(), 3);
    {
        let f = fake.lock().unwrap();
        let creates: Vec<&Request> = f
            .requests
            .iter()
            .filter(|r| r.path == "/containers/create")
            .collect();
        assert_eq!(creates.len(), 2);
        assert_eq!(creates[0].query["name"], "aifab-inference-worker-2");
        assert_eq!(creates[1].query["name"], "aifab-inference-worker-3");
        let body = &creates[0].body;
        assert_eq!(body["Image"], "aifab:latest");
        assert_eq!(body["Env"], json!(["AIFAB_KAFKA_BROKERS=kafka:9092"]));
        assert_eq!(body["Labels"]["com.docker.compose.container-number"], "2");
        assert_eq!(
            body["Labels"]["com.docker.compose.service"],
            "inference-worker"
        );
        assert!(
            body["HostConfig"].get("PortBindings").is_none(),
            "host ports dropped: {body}"
        );
        assert_eq!(
            body["HostConfig"]["RestartPolicy"]["Name"],
            "unless-stopped"
        );
        assert_eq!(
            body["NetworkingConfig"]["EndpointsConfig"]["aifab_default"]["Aliases"],
            json!(["inference-worker"])
        );
        let connects: Vec<&Request> = f
            .requests
            .iter()
            .filter(|r| r.path.ends_with("/connect"))
            .collect();
        assert_eq!(
            connects.len(),
            2,
            "the second network is joined after create"
        );
        assert_eq!(connects[0].path, "/networks/aifab_gpu/connect");
        let started = f
            .requests
            .iter()
            .filter(|r| r.path.ends_with("/start"))
            .count();
        assert_eq!(started, 2);
        assert!(f
            .containers
            .iter()
            .all(|c| c.number == 1 || c.create_body.is_object()));
    }

    assert_eq!(d.scale(1).await.unwrap(), 1);
    assert_eq!(d.replicas().await.unwrap(), 1);
    let f = fake.lock().unwrap();
    let stops: Vec<&Request> = f
        .requests
        .iter()
        .filter(|r| r.path.ends_with("/stop"))
        .collect();
    assert_eq!(stops.len(), 2);
    assert_eq!(
        stops[0].query["t"], "7",
        "the stop timeout lets the worker drain"
    );
    let removed: Vec<&str> = f
        .requests
        .iter()
        .filter(|r| r.method == Method::DELETE)
        .map(|r| r.path.as_str())
        .collect();
    assert_eq!(
        removed,
        vec!["/containers/c4", "/containers/c3"],
        "highest number first"
    );
    assert!(f
        .requests
        .iter()
        .all(|r| matches!(r.api_version.as_deref(), None | Some("1.44"))));
    assert_eq!(
        f.requests.iter().filter(|r| r.path == "/version").count(),
        1,
        "negotiated once"
    );
    let left: Vec<u32> = f
        .containers
        .iter()
        .filter(|c| c.labels["com.docker.compose.service"] == "inference-worker")
        .map(|c| c.number)
        .collect();
    assert_eq!(left, vec![1]);
}

#[tokio::test]
async fn docker_compose_restarts_stopped_replicas_before_creating() {
    let fake = fake_with(vec![container("w1", 1, true), container("w2", 2, false)]);
    let base = serve_tcp(Router::new().fallback(docker).with_state(fake.clone())).await;
    let d = DockerActuator::new(
        &base.replace("http://", "tcp://"),
        DockerMode::Compose,
        "aifab",
        "inference-worker",
        30,
    )
    .unwrap();
    assert_eq!(d.scale(2).await.unwrap(), 2);
    let f = fake.lock().unwrap();
    assert!(f.requests.iter().any(|r| r.path == "/containers/w2/start"));
    assert!(!f.requests.iter().any(|r| r.path == "/containers/create"));
}

#[tokio::test]
async fn docker_compose_without_a_replica_to_copy_says_so() {
    let fake = fake_with(vec![]);
    let base = serve_tcp(Router::new().fallback(docker).with_state(fake)).await;
    let d =
        DockerActuator::new(&base, DockerMode::Compose, "aifab", "inference-worker", 30).unwrap();
    let err = d.scale(2).await.unwrap_err().to_string();
    assert!(err.contains("no container to copy"), "{err}");
}

#[tokio::test]
async fn docker_swarm_updates_the_service_replicas() {
    let fake = fake_with(vec![]);
    fake.lock().unwrap().swarm = Swarm {
        version: 41,
        replicas: 2,
    };
    let base = serve_tcp(Router::new().fallback(docker).with_state(fake.clone())).await;
    let d = DockerActuator::new(&base, DockerMode::Swarm, "aifab", "inference-worker", 30).unwrap();
    assert_eq!(d.replicas().await.unwrap(), 2);
    assert_eq!(d.scale(5).await.unwrap(), 5);
    assert_eq!(d.replicas().await.unwrap(), 5);
    {
        let f = fake.lock().unwrap();
        let update = f
            .requests
            .iter()
            .find(|r| r.path == "/services/svc123/update")
            .unwrap();
        assert_eq!(update.query["version"], "41");
        assert_eq!(update.body["Mode"]["Replicated"]["Replicas"], 5);
        assert_eq!(
            update.body["Labels"]["a"], "b",
            "the rest of the spec is sent back unchanged"
        );
        assert_eq!(update.body["Name"], "inference-worker");
    }
    let missing = DockerActuator::new(&base, DockerMode::Swarm, "aifab", "nope", 30).unwrap();
    let err = missing.replicas().await.unwrap_err().to_string();
    assert!(
        err.contains("404")
            && err.contains("service not found")
            && err.contains("docker GET /services/nope"),
        "{err}"
    );
}
