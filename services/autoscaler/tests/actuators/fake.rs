//! What the fake API servers share: the requests they record, the state they keep
//! (compose containers, a swarm service, a Deployment's replicas) and how they listen.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use axum::http::{HeaderMap, Method, Uri};
use axum::Router;
use serde_json::Value;

/// One request as a fake server received it.
#[derive(Debug, Clone)]
pub(crate) struct Request {
    pub method: Method,
    /// Without the API version prefix (`/v1.44`), which is in `api_version`.
    pub path: String,
    pub api_version: Option<String>,
    pub query: BTreeMap<String, String>,
    pub headers: HeaderMap,
    pub body: Value,
}

/// A compose container the fake Engine keeps.
#[derive(Debug, Clone)]
pub(crate) struct Container {
    pub id: String,
    pub number: u32,
    pub running: bool,
    pub labels: BTreeMap<String, String>,
    pub create_body: Value,
}

/// A swarm service's spec version (an update names the one it read) and replicas.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Swarm {
    pub version: u64,
    pub replicas: u32,
}

/// Everything the fake servers keep and record.
#[derive(Default)]
pub(crate) struct Fake {
    pub requests: Vec<Request>,
    pub containers: Vec<Container>,
    pub swarm: Swarm,
    /// The Deployment's replicas (Kubernetes).
    pub kube_replicas: u32,
}

pub(crate) type Shared = Arc<Mutex<Fake>>;

pub(crate) fn query_of(uri: &Uri) -> BTreeMap<String, String> {
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

pub(crate) fn compose_labels(number: u32) -> BTreeMap<String, String> {
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

pub(crate) async fn serve_tcp(app: Router) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    format!("http://{addr}")
}

pub(crate) fn fake_with(containers: Vec<Container>) -> Shared {
    Arc::new(Mutex::new(Fake {
        containers,
        ..Default::default()
    }))
}

pub(crate) fn container(id: &str, number: u32, running: bool) -> Container {
    Container {
        id: id.into(),
        number,
        running,
        labels: compose_labels(number),
        create_body: Value::Null,
    }
}
