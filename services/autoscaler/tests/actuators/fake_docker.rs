//! A fake Docker Engine: containers with compose labels, a swarm service, API versions.

use std::collections::BTreeMap;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::{json, Value};

use crate::fake::{query_of, Container, Request, Shared, Swarm};

/// Answer one Docker Engine API call, as the Engine does.
pub(crate) async fn docker(
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
        ("GET", ["version"]) => Json(json!({
            "Version": "25.0.5", "ApiVersion": "1.44", "MinAPIVersion": "1.24", "Os": "linux",
        }))
        .into_response(),
        ("GET", ["containers", "json"]) => {
            assert_eq!(query.get("all").map(String::as_str), Some("true"));
            let filters: Value = serde_json::from_str(&query["filters"]).unwrap();
            let wanted: Vec<String> = filters["label"]
                .as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_str().unwrap().to_string())
                .collect();
            let labelled = |c: &Container| {
                wanted.iter().all(|w| {
                    let (k, v) = w.split_once('=').unwrap();
                    c.labels.get(k).map(String::as_str) == Some(v)
                })
            };
            let list: Vec<Value> = f
                .containers
                .iter()
                .filter(|c| labelled(c))
                .map(|c| {
                    let state = if c.running { "running" } else { "exited" };
                    json!({"Id": c.id, "State": state, "Labels": c.labels})
                })
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
            let labels: BTreeMap<String, String> =
                serde_json::from_value(body["Labels"].clone()).unwrap();
            let number = labels["com.docker.compose.container-number"]
                .parse()
                .unwrap();
            f.containers.push(Container {
                id: id.clone(),
                number,
                running: false,
                labels,
                create_body: body,
            });
            (StatusCode::CREATED, Json(json!({"Id": id, "Warnings": []}))).into_response()
        }
        ("POST", ["containers", id, "start"]) => {
            f.containers
                .iter_mut()
                .find(|c| c.id == *id)
                .unwrap()
                .running = true;
            StatusCode::NO_CONTENT.into_response()
        }
        ("POST", ["containers", id, "stop"]) => {
            f.containers
                .iter_mut()
                .find(|c| c.id == *id)
                .unwrap()
                .running = false;
            StatusCode::NO_CONTENT.into_response()
        }
        ("DELETE", ["containers", id]) => {
            f.containers.retain(|c| c.id != *id);
            StatusCode::NO_CONTENT.into_response()
        }
        ("POST", ["networks", _net, "connect"]) => StatusCode::OK.into_response(),
        ("GET", ["services", name]) => {
            if *name != "inference-worker" {
                let message = json!({"message": "service not found"});
                return (StatusCode::NOT_FOUND, Json(message)).into_response();
            }
            Json(json!({
                "ID": "svc123",
                "Version": {"Index": f.swarm.version},
                "Spec": {
                    "Name": "inference-worker",
                    "Labels": {"a": "b"},
                    "Mode": {"Replicated": {"Replicas": f.swarm.replicas}},
                },
            }))
            .into_response()
        }
        ("POST", ["services", "svc123", "update"]) => {
            assert_eq!(
                query["version"],
                f.swarm.version.to_string(),
                "update names the version it read"
            );
            f.swarm = Swarm {
                version: f.swarm.version + 1,
                replicas: body["Mode"]["Replicated"]["Replicas"].as_u64().unwrap() as u32,
            };
            Json(json!({"Warnings": null})).into_response()
        }
        _ => {
            let message = json!({"message": format!("page not found: {method} {path}")});
            (StatusCode::NOT_FOUND, Json(message)).into_response()
        }
    }
}
