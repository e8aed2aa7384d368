//! The Kubernetes actuator against the fake API server: the scale subresource, errors
//! that quote the server, and finding the cluster as kubectl does.

use aifab_autoscaler::actuators::KubeActuator;
use axum::http::Method;
use axum::Router;
use serde_json::json;

use crate::fake::{fake_with, serve_tcp};
use crate::fake_kube::kube;

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
    // A token goes over https or to loopback (kubectl proxy), not in the clear elsewhere.
    let err = KubeActuator::new("http://10.0.0.1:8080", "ml", "d", Some("sa".into()))
        .err()
        .expect("a token over plain http to another host is refused")
        .to_string();
    assert!(err.contains("refusing to send"), "{err}");
    assert!(KubeActuator::new("http://10.0.0.1:8080", "ml", "d", None).is_ok());
    assert!(KubeActuator::new("https://10.0.0.1:443", "ml", "d", Some("sa".into())).is_ok());
    let allowed = aifab_autoscaler::actuators::token_transport_ok(
        &"http://10.0.0.1:8080".parse().unwrap(),
        true,
        true,
    );
    assert!(allowed.is_ok(), "explicitly allowed");
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
             contexts:\n- name: test\n  context:\n    cluster: fake\n    user: sa\n\
             \x20   namespace: ml\n"
        ),
    )
    .unwrap();
    // The only test in this binary that reads the environment's kubeconfig.
    std::env::set_var("KUBECONFIG", &path);
    let config = KubeActuator::config(None).await.unwrap();
    assert_eq!(config.default_namespace, "ml", "the context's namespace");
    let k = KubeActuator::from_config(config, "ml", "aifab-inference-worker", false).unwrap();
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
