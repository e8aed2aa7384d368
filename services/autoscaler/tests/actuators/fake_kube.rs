//! A fake Kubernetes API server: one Deployment's `scale` subresource behind a token.

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::{json, Value};

use crate::fake::{query_of, Request, Shared};

/// A Kubernetes API error answer (`Status`), as the API server sends it.
fn kube_status(code: StatusCode, reason: &str, message: &str) -> Response {
    let body = json!({
        "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
        "message": message, "reason": reason, "code": code.as_u16(),
    });
    (code, Json(body)).into_response()
}

/// Answer one Kubernetes API call, as the API server does.
pub(crate) async fn kube(
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
