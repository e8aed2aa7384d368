//! The Docker Engine and Kubernetes actuators (bollard and kube clients) against fake API
//! servers (small axum servers in the test that keep state, record every request and
//! answer as the Docker Engine and the Kubernetes API server do, errors included).

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use aifab_autoscaler::actuators::{DockerActuator, DockerMode, KubeActuator};
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::{Json, Router};
use serde_json::{json, Value};

#[derive(Debug, Clone)]
struct Request {
    method: Method,
    /// Without the API version prefix (`/v1.44`), which is in `api_version`.
    path: String,
    api_version: Option<String>,
    query: BTreeMap<String, String>,
    headers: HeaderMap,
    body: Value,
}

#[derive(Debug, Clone)]
struct Container {
    id: String,
    number: u32,
    running: bool,
    labels: BTreeMap<String, String>,
    create_body: Value,
}

#[derive(Default)]
struct Fake {
    requests: Vec<Request>,
    containers: Vec<Container>,
    /// Swarm: (version, replicas); Kubernetes: replicas.
    swarm: (u64, u32),
    kube_replicas: u32,
}

type Shared = Arc<Mutex<Fake>>;

fn query_of(uri: &Uri) -> BTreeMap<String, String> {
    uri.query()
        .map(|q| {
            q.split('&')
                .filter_map(|kv| kv.split_once('='))
                .map(|(k, v)| (k.to_string(), percent_decode(v)))
                .collect()
        })
        .unwrap_or_default()
}

fn percent_decode(s: &str) -> String {
    let bytes = s.replace('+', " ").into_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' && i + 3 <= bytes.len() {
            let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).unwrap();
            out.push(u8::from_str_radix(hex, 16).unwrap());
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).unwrap()
}

fn compose_labels(number: u32) -> BTreeMap<String, String> {
    [
        ("com.docker.compose.project", "aifab".to_string()),
        ("com.docker.compose.service", "inference-worker".to_string()),
        ("com.docker.compose.container-number", number.to_string()),
        ("com.docker.compose.oneoff", "False".to_string()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect()
}

async fn docker(
    State(fake): State<Shared>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let body: Value = if body.is_empty() {
        Value::Null
    } else {
        serde_json::from_slice(&body).unwrap()
    };
    let query = query_of(&uri);
    // The Engine serves every route with or without a `/v<major>.<minor>` prefix.
    let mut parts: Vec<&str> = uri.path().trim_start_matches('/').split('/').collect();
    let api_version = match parts.first() {
        Some(v) if v.starts_with('v') && v[1..].split('.').all(|n| n.parse::<u32>().is_ok()) => {
            Some(parts.remove(0)[1..].to_string())
        }
        _ => None,
    };
    let path = format!("/{}", parts.join("/"));
    let mut f = fake.lock().unwrap();
    f.requests.push(Request {
        method: method.clone(),
        path: path.clone(),
        api_version,
        query: query.clone(),
        headers,
        body: body.clone(),
    });
    match (method.as_str(), parts.as_slice()) {
        // An older daemon than bollard's default API version: the client must step down.
        ("GET", ["version"]) => Json(json!({"Version": "25.0.5", "ApiVersion": "1.44", "MinAPIVersion": "1.24", "Os": "linux"})).into_response(),
        ("GET", ["containers", "json"]) => {
            assert_eq!(query.get("all").map(String::as_str), Some("true"));
            let filters: Value = serde_json::from_str(&query["filters"]).unwrap();
            let wanted: Vec<String> = filters["label"].as_array().unwrap().iter().map(|v| v.as_str().unwrap().to_string()).collect();
            let list: Vec<Value> = f
                .containers
                .iter()
                .filter(|c| wanted.iter().all(|w| {
                    let (k, v) = w.split_once('=').unwrap();
                    c.labels.get(k).map(String::as_str) == Some(v)
                }))
                .map(|c| json!({"Id": c.id, "State": if c.running {"running"} else {"exited"}, "Labels": c.labels}))
                .collect();
            Json(list).into_response()
        }
        ("GET", ["containers", id, "json"]) => {
            let c = f.containers.iter().find(|c| c.id == *id).unwrap();
            Json(json!({
                "Id": c.id,
                "Name": format!("/aifab-inference-worker-{}", c.number),
                "Config": {
                    "Image": "aifab:latest",
                    "Env": ["AIFAB_KAFKA_BROKERS=kafka:9092"],
                    "Cmd": ["aifab-inference-worker"],
                    "Labels": c.labels,
                    "ExposedPorts": {"8083/tcp": {}},
                },
                "HostConfig": {
                    "PortBindings": {"8083/tcp": [{"HostPort": "8083"}]},
                    "RestartPolicy": {"Name": "unless-stopped"},
                    "DeviceRequests": null,
                },
                "NetworkSettings": {"Networks": {"aifab_default": {}, "aifab_gpu": {}}},
            }))
            .into_response()
        }
        ("POST", ["containers", "create"]) => {
            let id = format!("c{}", f.containers.len() + 1);
            let labels: BTreeMap<String, String> = serde_json::from_value(body["Labels"].clone()).unwrap();
            let number = labels["com.docker.compose.container-number"].parse().unwrap();
            f.containers.push(Container { id: id.clone(), number, running: false, labels, create_body: body });
            (StatusCode::CREATED, Json(json!({"Id": id, "Warnings": []}))).into_response()
        }
        ("POST", ["containers", id, "start"]) => {
            f.containers.iter_mut().find(|c| c.id == *id).unwrap().running = true;
            StatusCode::NO_CONTENT.into_response()
        }
        ("POST", ["containers", id, "stop"]) => {
            f.containers.iter_mut().find(|c| c.id == *id).unwrap().running = false;
            StatusCode::NO_CONTENT.into_response()
        }
        ("DELETE", ["containers", id]) => {
            f.containers.retain(|c| c.id != *id);
            StatusCode::NO_CONTENT.into_response()
        }
        ("POST", ["networks", _net, "connect"]) => StatusCode::OK.into_response(),
        ("GET", ["services", name]) => {
            if *name != "inference-worker" {
                return (StatusCode::NOT_FOUND, Json(json!({"message": "service not found"}))).into_response();
            }
            Json(json!({
                "ID": "svc123",
                "Version": {"Index": f.swarm.0},
                "Spec": {"Name": "inference-worker", "Labels": {"a": "b"}, "Mode": {"Replicated": {"Replicas": f.swarm.1}}},
            }))
            .into_response()
        }
        ("POST", ["services", "svc123", "update"]) => {
            assert_eq!(query["version"], f.swarm.0.to_string(), "update names the version it read");
            f.swarm = (f.swarm.0 + 1, body["Mode"]["Replicated"]["Replicas"].as_u64().unwrap() as u32);
            Json(json!({"Warnings": null})).into_response()
        }
        _ => (StatusCode::NOT_FOUND, Json(json!({"message": format!("page not found: {method} {path}")}))).into_response(),
    }
}

/// A Kubernetes API error answer (`Status`), as the API server sends it.
fn kube_status(code: StatusCode, reason: &str, message: &str) -> Response {
    let body = json!({
        "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
        "message": message, "reason": reason, "code": code.as_u16(),
    });
    (code, Json(body)).into_response()
}

async fn kube(
    State(fake): State<Shared>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let body: Value = if body.is_empty() {
        Value::Null
    } else {
        serde_json::from_slice(&body).unwrap()
    };
    let path = uri.path().to_string();
    let mut f = fake.lock().unwrap();
    f.requests.push(Request {
        method: method.clone(),
        path: path.clone(),
        api_version: None,
        query: query_of(&uri),
        headers: headers.clone(),
        body: body.clone(),
    });
    if headers.get("authorization").and_then(|v| v.to_str().ok()) != Some("Bearer sa-token") {
        return kube_status(StatusCode::UNAUTHORIZED, "Unauthorized", "Unauthorized");
    }
    let Some(name) = path
        .strip_prefix("/apis/apps/v1/namespaces/ml/deployments/")
        .and_then(|p| p.strip_suffix("/scale"))
    else {
        return kube_status(
            StatusCode::NOT_FOUND,
            "NotFound",
            &format!("the server could not find the requested resource ({path})"),
        );
    };
    if name != "aifab-inference-worker" {
        return kube_status(
            StatusCode::NOT_FOUND,
            "NotFound",
            &format!("deployments.apps \"{name}\" not found"),
        );
    }
    if method != Method::GET && method != Method::PATCH {
        return kube_status(
            StatusCode::METHOD_NOT_ALLOWED,
            "MethodNotAllowed",
            &format!("{method} is not supported"),
        );
    }
    if method == Method::PATCH {
        assert_eq!(headers["content-type"], "application/merge-patch+json");
        f.kube_replicas = body["spec"]["replicas"].as_u64().unwrap() as u32;
    }
    Json(json!({
        "kind": "Scale",
        "apiVersion": "autoscaling/v1",
        "metadata": {"name": "aifab-inference-worker", "namespace": "ml"},
        "spec": {"replicas": f.kube_replicas},
        "status": {"replicas": f.kube_replicas, "selector": "app=aifab-inference-worker"},
    }))
    .into_response()
}

async fn serve_tcp(app: Router) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    format!("http://{addr}")
}

fn fake_with(containers: Vec<Container>) -> Shared {
    Arc::new(Mutex::new(Fake {
        containers,
        ..Default::default()
    }))
}

fn container(id: &str, number: u32, running: bool) -> Container {
    Container {
        id: id.into(),
        number,
        running,
        labels: compose_labels(number),
        create_body: Value::Null,
    }
}

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
            json!({"label": ["com.docker.compose.project=aifab", "com.docker.compose.service=inference-worker"]})
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
    fake.lock().unwrap().swarm = (41, 2);
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

#[tokio::test]
async fn kubernetes_patches_the_deployment_scale_subresource() {
    let fake = fake_with(vec![]);
    fake.lock().unwrap().kube_replicas = 1;
    let base = serve_tcp(Router::new().fallback(kube).with_state(fake.clone())).await;
    let k = KubeActuator::new(
        &base,
        "ml",
        "aifab-inference-worker",
        Some("sa-token".into()),
    )
    .unwrap();
    assert_eq!(k.replicas().await.unwrap(), 1);
    assert_eq!(k.scale(4).await.unwrap(), 4);
    assert_eq!(k.replicas().await.unwrap(), 4);
    {
        let f = fake.lock().unwrap();
        let patch = f
            .requests
            .iter()
            .find(|r| r.method == Method::PATCH)
            .unwrap();
        assert_eq!(patch.body, json!({"spec": {"replicas": 4}}));
        assert_eq!(
            patch.headers["content-type"],
            "application/merge-patch+json"
        );
        assert_eq!(patch.headers["authorization"], "Bearer sa-token");
    }
    // Wrong token and wrong deployment: errors that quote the API server.
    let bad =
        KubeActuator::new(&base, "ml", "aifab-inference-worker", Some("nope".into())).unwrap();
    let err = bad.scale(2).await.unwrap_err().to_string();
    assert!(
        err.contains("401")
            && err.contains("Unauthorized")
            && err.contains(
                "PATCH /apis/apps/v1/namespaces/ml/deployments/aifab-inference-worker/scale"
            ),
        "{err}"
    );
    let gone = KubeActuator::new(&base, "ml", "other", Some("sa-token".into())).unwrap();
    let err = gone.replicas().await.unwrap_err().to_string();
    assert!(
        err.contains("404")
            && err.contains("/deployments/other/scale")
            && err.contains(r#"deployments.apps "other" not found"#),
        "{err}"
    );
    assert_eq!(
        fake.lock().unwrap().kube_replicas,
        4,
        "failed calls changed nothing"
    );
    // A bad --kube-api is refused up front; an HTTPS one is fine (TLS is rustls).
    let err = KubeActuator::new("not a url", "ml", "d", None)
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("--kube-api"), "{err}");
    assert!(KubeActuator::new("https://10.0.0.1:443", "ml", "d", None).is_ok());
    // Nothing listening: the error names the call and the cause.
    let closed = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    let down = KubeActuator::new(
        &format!("http://{closed}"),
        "ml",
        "aifab-inference-worker",
        None,
    )
    .unwrap();
    let err = down.replicas().await.unwrap_err().to_string();
    assert!(
        err.contains(
            "kubernetes GET /apis/apps/v1/namespaces/ml/deployments/aifab-inference-worker/scale"
        ),
        "{err}"
    );
}

/// Without `--kube-api` the cluster is found as kubectl finds it: here `$KUBECONFIG`,
/// whose context names the server, the token and the namespace.
#[tokio::test]
async fn kubernetes_finds_the_cluster_in_the_kubeconfig() {
    let fake = fake_with(vec![]);
    fake.lock().unwrap().kube_replicas = 2;
    let base = serve_tcp(Router::new().fallback(kube).with_state(fake.clone())).await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("kubeconfig");
    std::fs::write(
        &path,
        format!(
            "apiVersion: v1\nkind: Config\ncurrent-context: test\n\
             clusters:\n- name: fake\n  cluster:\n    server: {base}\n\
             users:\n- name: sa\n  user:\n    token: sa-token\n\
             contexts:\n- name: test\n  context:\n    cluster: fake\n    user: sa\n    namespace: ml\n"
        ),
    )
    .unwrap();
    // The only test in this binary that reads the environment's kubeconfig.
    std::env::set_var("KUBECONFIG", &path);
    let config = KubeActuator::config(None).await.unwrap();
    assert_eq!(config.default_namespace, "ml", "the context's namespace");
    let k = KubeActuator::from_config(config, "ml", "aifab-inference-worker").unwrap();
    assert_eq!(k.replicas().await.unwrap(), 2);
    assert_eq!(k.scale(3).await.unwrap(), 3);
    {
        let f = fake.lock().unwrap();
        assert_eq!(f.kube_replicas, 3);
        assert!(f
            .requests
            .iter()
            .all(|r| r.headers["authorization"] == "Bearer sa-token"));
    }

    // --kube-api URL: that address.
    let config = KubeActuator::config(Some(&base)).await.unwrap();
    assert_eq!(config.cluster_url.to_string().trim_end_matches('/'), base);
    let err = KubeActuator::config(Some("::"))
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("--kube-api"), "{err}");
}
