//! The Helm chart (`deploy/helm/aifab`), checked without a cluster: `helm lint` and
//! `helm template` with the default values and with `ci/gpu-values.yaml` (helm from
//! `scripts/install-helm`, in `AIFAB_HELM`), then every rendered object is parsed and:
//! - each aifab container runs a binary of the workspace that the image ships, and every
//!   setting it gets (env and the shared ConfigMap) is one that binary reads;
//! - probes hit `/readyz` and `/healthz` on the port `AIFAB_OPS_ADDR` opens; mounts,
//!   Services and PodDisruptionBudgets point at what exists;
//! - the autoscaler scales a worker Deployment the chart creates, and its Role allows that
//!   Deployment's scale subresource and nothing else;
//! - GPU workers ask for `nvidia.com/gpu` on GPU nodes, with the CUDA image.
//!
//! And the checks can fail: a setting no binary reads is reported, and an autoscaler aimed at
//! a worker kind that is off does not render.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;

use aifab_tests::bin_path;
use serde::Deserialize;
use serde_yaml::Value;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

fn chart() -> PathBuf {
    root().join("deploy/helm/aifab")
}

fn helm() -> PathBuf {
    let path = std::env::var_os("AIFAB_HELM")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(std::env::var("HOME").unwrap_or_default())
                .join(".cache/aifab/helm-v4.3.2/helm")
        });
    assert!(
        path.exists(),
        "helm not found at {} (run scripts/install-helm, or set AIFAB_HELM)",
        path.display()
    );
    path
}

/// Run helm with `args`; (success, stdout + stderr).
fn run_helm(args: &[&str]) -> (bool, String) {
    let out = Command::new(helm())
        .args(args)
        .env(
            "HELM_CACHE_HOME",
            std::env::temp_dir().join("aifab-helm-cache"),
        )
        .env(
            "HELM_CONFIG_HOME",
            std::env::temp_dir().join("aifab-helm-config"),
        )
        .env(
            "HELM_DATA_HOME",
            std::env::temp_dir().join("aifab-helm-data"),
        )
        .output()
        .expect("run helm");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

fn gpu_values() -> String {
    chart().join("ci/gpu-values.yaml").display().to_string()
}

/// `helm template` with `extra` arguments: every object it renders.
fn render(extra: &[&str]) -> Vec<Value> {
    let chart = chart().display().to_string();
    let mut args = vec!["template", "rel", &chart, "--namespace", "ml"];
    args.extend_from_slice(extra);
    let (ok, text) = run_helm(&args);
    assert!(ok, "helm template {extra:?} failed:\n{text}");
    let mut docs = Vec::new();
    for doc in serde_yaml::Deserializer::from_str(&text) {
        let v = Value::deserialize(doc).expect("every rendered document is YAML");
        if !v.is_null() {
            docs.push(v);
        }
    }
    docs
}

fn s<'a>(v: &'a Value, path: &[&str]) -> Option<&'a str> {
    at(v, path)?.as_str()
}

fn at<'a>(v: &'a Value, path: &[&str]) -> Option<&'a Value> {
    path.iter().try_fold(v, |v, k| v.get(*k))
}

fn seq<'a>(v: &'a Value, path: &[&str]) -> Vec<&'a Value> {
    at(v, path)
        .and_then(Value::as_sequence)
        .map(|s| s.iter().collect())
        .unwrap_or_default()
}

fn kind_of(v: &Value) -> &str {
    s(v, &["kind"]).unwrap_or("")
}

fn name_of(v: &Value) -> &str {
    s(v, &["metadata", "name"]).unwrap_or("")
}

fn of_kind<'a>(docs: &'a [Value], kind: &str) -> Vec<&'a Value> {
    docs.iter().filter(|d| kind_of(d) == kind).collect()
}

/// The `AIFAB_*` settings a binary reads: its `--help` (clap's `[env: NAME=]`), plus the
/// connection settings `aifab-core` reads from the environment itself (Kafka properties,
/// NATS and Redis credentials), found as string literals in its source.
fn settings_read_by(bin: &str, cache: &mut BTreeMap<String, BTreeSet<String>>) -> BTreeSet<String> {
    if let Some(s) = cache.get(bin) {
        return s.clone();
    }
    let out = Command::new(bin_path(bin))
        .arg("--help")
        .output()
        .expect("run --help");
    let help = String::from_utf8_lossy(&out.stdout);
    let mut names: BTreeSet<String> = help
        .split("[env: ")
        .skip(1)
        .filter_map(|rest| rest.split(['=', ']']).next())
        .map(str::to_string)
        .collect();
    let core = root().join("shared/core/src");
    for file in ["kafka/props.rs", "nats.rs", "redis_store.rs"] {
        let text = std::fs::read_to_string(core.join(file)).unwrap();
        for lit in text.split('"').skip(1).step_by(2) {
            if lit.starts_with("AIFAB_") && !lit.ends_with('_') {
                names.insert(lit.to_string());
            }
        }
    }
    cache.insert(bin.to_string(), names.clone());
    names
}

/// What is wrong with a rendering (empty: nothing).
fn problems(docs: &[Value]) -> Vec<String> {
    let mut p = Vec::new();
    let mut seen = BTreeSet::new();
    for d in docs {
        for key in ["apiVersion", "kind"] {
            if s(d, &[key]).is_none() {
                p.push(format!("an object without {key}: {d:?}"));
            }
        }
        if name_of(d).is_empty() {
            p.push(format!("a {} without a name", kind_of(d)));
        }
        if !seen.insert((kind_of(d).to_string(), name_of(d).to_string())) {
            p.push(format!("{} {} twice", kind_of(d), name_of(d)));
        }
    }
    let dockerfile = std::fs::read_to_string(root().join("Dockerfile")).unwrap();
    let shipped: BTreeSet<&str> = dockerfile
        .lines()
        .find_map(|l| l.strip_prefix("ARG AIFAB_BINS="))
        .expect("Dockerfile's AIFAB_BINS")
        .trim_matches('"')
        .split_whitespace()
        .collect();
    let configmaps: BTreeMap<&str, &Value> = of_kind(docs, "ConfigMap")
        .into_iter()
        .map(|c| (name_of(c), c))
        .collect();
    let secrets: BTreeSet<&str> = of_kind(docs, "Secret").into_iter().map(name_of).collect();
    let mut help = BTreeMap::new();
    for dep in of_kind(docs, "Deployment") {
        let name = name_of(dep);
        let pod = at(dep, &["spec", "template", "spec"]).unwrap();
        let pod_labels = at(dep, &["spec", "template", "metadata", "labels"]);
        if at(dep, &["spec", "selector", "matchLabels"]).is_none_or(|sel| !selects(sel, pod_labels))
        {
            p.push(format!(
                "Deployment {name}: its selector does not match its pods"
            ));
        }
        let volumes: BTreeSet<&str> = seq(pod, &["volumes"])
            .into_iter()
            .filter_map(|v| s(v, &["name"]))
            .collect();
        for v in seq(pod, &["volumes"]) {
            if let Some(cm) = s(v, &["configMap", "name"]) {
                if !configmaps.contains_key(cm) {
                    p.push(format!(
                        "Deployment {name}: volume from ConfigMap {cm}, not rendered"
                    ));
                }
            }
        }
        let containers = seq(pod, &["containers"]);
        let all = containers
            .iter()
            .chain(seq(pod, &["initContainers"]).iter())
            .copied()
            .collect::<Vec<_>>();
        for c in &all {
            for m in seq(c, &["volumeMounts"]) {
                let v = s(m, &["name"]).unwrap_or("");
                if !volumes.contains(v) {
                    p.push(format!(
                        "Deployment {name}: mount of volume {v}, not declared"
                    ));
                }
            }
        }
        for c in containers {
            let Some(bin) = seq(c, &["args"]).first().and_then(|v| v.as_str()) else {
                p.push(format!(
                    "Deployment {name}: a container without args (the binary tini runs)"
                ));
                continue;
            };
            if !shipped.contains(bin) {
                p.push(format!(
                    "Deployment {name}: {bin} is not among the Dockerfile's AIFAB_BINS"
                ));
                continue;
            }
            let image = s(c, &["image"]).unwrap_or("");
            if !image.starts_with("aifab/runtime:") && !image.starts_with("aifab/runtime-cuda:") {
                p.push(format!(
                    "Deployment {name}: image {image} is not a Dockerfile runtime target"
                ));
            }
            let reads = settings_read_by(bin, &mut help);
            let mut env: BTreeMap<String, String> = BTreeMap::new();
            for from in seq(c, &["envFrom"]) {
                if let Some(cm) = s(from, &["configMapRef", "name"]) {
                    match configmaps
                        .get(cm)
                        .and_then(|m| at(m, &["data"]))
                        .and_then(Value::as_mapping)
                    {
                        Some(data) => {
                            for (k, v) in data {
                                env.insert(
                                    k.as_str().unwrap_or("").into(),
                                    v.as_str().unwrap_or("").into(),
                                );
                            }
                        }
                        None => p.push(format!(
                            "Deployment {name}: envFrom ConfigMap {cm}, not rendered"
                        )),
                    }
                }
            }
            for e in seq(c, &["env"]) {
                let k = s(e, &["name"]).unwrap_or("").to_string();
                env.insert(k, s(e, &["value"]).unwrap_or("").to_string());
            }
            for k in env.keys().filter(|k| k.starts_with("AIFAB_")) {
                if !reads.contains(k) {
                    p.push(format!("Deployment {name}: {bin} does not read {k}"));
                }
            }
            for (k, path) in &env {
                if k.ends_with("_FILE") && !mounted(c, path) {
                    p.push(format!(
                        "Deployment {name}: {k}={path} is on no mounted volume"
                    ));
                }
            }
            let ops_port = env
                .get("AIFAB_OPS_ADDR")
                .and_then(|a| a.rsplit(':').next())
                .and_then(|p| p.parse::<u64>().ok());
            let named_ops = seq(c, &["ports"])
                .into_iter()
                .find(|port| s(port, &["name"]) == Some("ops"))
                .and_then(|port| at(port, &["containerPort"]))
                .and_then(Value::as_u64);
            if ops_port.is_none() || ops_port != named_ops {
                p.push(format!(
                    "Deployment {name}: AIFAB_OPS_ADDR port {ops_port:?} is not the `ops` port {named_ops:?}"
                ));
            }
            for (probe, path) in [("readinessProbe", "/readyz"), ("livenessProbe", "/healthz")] {
                if s(c, &[probe, "httpGet", "path"]) != Some(path)
                    || s(c, &[probe, "httpGet", "port"]) != Some("ops")
                {
                    p.push(format!(
                        "Deployment {name}: {probe} is not GET {path} on the ops port"
                    ));
                }
            }
        }
        for v in seq(pod, &["volumes"]) {
            if let Some(secret) = s(v, &["secret", "secretName"]) {
                // The chart's own Secret is rendered; others are the operator's (values).
                if secret.starts_with("rel-") && !secrets.contains(secret) {
                    p.push(format!("Deployment {name}: Secret {secret}, not rendered"));
                }
            }
        }
    }
    let pods: Vec<Option<&Value>> = of_kind(docs, "Deployment")
        .into_iter()
        .map(|d| at(d, &["spec", "template", "metadata", "labels"]))
        .collect();
    for svc in of_kind(docs, "Service") {
        let sel = at(svc, &["spec", "selector"]);
        if !sel.is_some_and(|sel| pods.iter().any(|l| selects(sel, *l))) {
            p.push(format!("Service {}: selects no pod", name_of(svc)));
        }
    }
    for pdb in of_kind(docs, "PodDisruptionBudget") {
        let sel = at(pdb, &["spec", "selector", "matchLabels"]);
        if !sel.is_some_and(|sel| pods.iter().any(|l| selects(sel, *l))) {
            p.push(format!(
                "PodDisruptionBudget {}: selects no pod",
                name_of(pdb)
            ));
        }
    }
    p.extend(autoscaler_problems(docs));
    p
}

/// True when every label of `selector` is on `labels`.
fn selects(selector: &Value, labels: Option<&Value>) -> bool {
    let (Some(sel), Some(labels)) = (selector.as_mapping(), labels) else {
        return false;
    };
    !sel.is_empty() && sel.iter().all(|(k, v)| labels.get(k) == Some(v))
}

/// True when `path` lies under one of the container's mounts.
fn mounted(container: &Value, path: &str) -> bool {
    seq(container, &["volumeMounts"])
        .into_iter()
        .filter_map(|m| s(m, &["mountPath"]))
        .any(|m| path.starts_with(&format!("{}/", m.trim_end_matches('/'))))
}

fn container_env<'a>(dep: &'a Value, key: &str) -> Option<&'a str> {
    seq(dep, &["spec", "template", "spec", "containers"])
        .into_iter()
        .flat_map(|c| seq(c, &["env"]))
        .find(|e| s(e, &["name"]) == Some(key))
        .and_then(|e| s(e, &["value"]))
}

fn autoscaler_problems(docs: &[Value]) -> Vec<String> {
    let mut p = Vec::new();
    let deployments = of_kind(docs, "Deployment");
    let Some(autoscaler) = deployments
        .iter()
        .find(|d| name_of(d).ends_with("-autoscaler"))
    else {
        return vec!["no autoscaler Deployment".into()];
    };
    if container_env(autoscaler, "AIFAB_AUTOSCALER_ACTUATOR") != Some("kubernetes") {
        p.push("the autoscaler's actuator is not kubernetes".into());
    }
    let target = container_env(autoscaler, "AIFAB_KUBE_DEPLOYMENT").unwrap_or("");
    let runs_worker = deployments.iter().any(|d| {
        name_of(d) == target
            && seq(d, &["spec", "template", "spec", "containers"])
                .iter()
                .any(|c| {
                    seq(c, &["args"]).first().and_then(|v| v.as_str())
                        == Some("aifab-inference-worker")
                })
    });
    if !runs_worker {
        p.push(format!(
            "the autoscaler scales {target:?}, not a worker Deployment of the chart"
        ));
    }
    let account = s(
        autoscaler,
        &["spec", "template", "spec", "serviceAccountName"],
    )
    .unwrap_or("");
    if !of_kind(docs, "ServiceAccount")
        .iter()
        .any(|a| name_of(a) == account)
    {
        p.push(format!(
            "the autoscaler's ServiceAccount {account:?} is not rendered"
        ));
    }
    let roles = of_kind(docs, "Role");
    let bound: Vec<&str> = of_kind(docs, "RoleBinding")
        .into_iter()
        .filter(|b| {
            seq(b, &["subjects"]).iter().any(|sub| {
                s(sub, &["kind"]) == Some("ServiceAccount") && s(sub, &["name"]) == Some(account)
            })
        })
        .filter_map(|b| s(b, &["roleRef", "name"]))
        .collect();
    if bound.is_empty() {
        p.push("no RoleBinding for the autoscaler's ServiceAccount".into());
    }
    for role in roles.iter().filter(|r| bound.contains(&name_of(r))) {
        for rule in seq(role, &["rules"]) {
            let strs = |k: &str| -> Vec<&str> {
                seq(rule, &[k]).iter().filter_map(|v| v.as_str()).collect()
            };
            if strs("apiGroups") != ["apps"]
                || strs("resources") != ["deployments/scale"]
                || strs("resourceNames") != [target]
                || strs("verbs").iter().any(|v| !["get", "patch"].contains(v))
            {
                p.push(format!(
                    "Role {}: a rule beyond {target}'s scale subresource: {rule:?}",
                    name_of(role)
                ));
            }
        }
    }
    p
}

#[test]
fn the_chart_lints_with_default_and_gpu_values() {
    let chart = chart().display().to_string();
    for extra in [vec![], vec!["-f".to_string(), gpu_values()]] {
        let mut args = vec!["lint", "--strict", chart.as_str()];
        args.extend(extra.iter().map(String::as_str));
        let (ok, text) = run_helm(&args);
        assert!(
            ok && text.contains("0 chart(s) failed"),
            "helm {args:?}:\n{text}"
        );
    }
}

#[test]
fn the_default_rendering_is_consistent() {
    let docs = render(&[]);
    let p = problems(&docs);
    assert!(p.is_empty(), "{}", p.join("\n"));
    let deployments: BTreeSet<&str> = of_kind(&docs, "Deployment")
        .into_iter()
        .map(name_of)
        .collect();
    for c in [
        "ingest",
        "feature",
        "trainer",
        "monitor",
        "cost-accountant",
        "autoscaler",
        "worker-cpu",
    ] {
        assert!(
            deployments.contains(format!("rel-aifab-{c}").as_str()),
            "{c}: {deployments:?}"
        );
    }
    assert!(!deployments.contains("rel-aifab-worker-gpu"));
    let cpu = of_kind(&docs, "Deployment")
        .into_iter()
        .find(|d| name_of(d) == "rel-aifab-worker-cpu")
        .unwrap();
    assert_eq!(container_env(cpu, "AIFAB_DEVICE"), Some("cpu"));
    // The RWX volume for model versions, and random tokens of the chart's own.
    assert_eq!(of_kind(&docs, "PersistentVolumeClaim").len(), 1);
    let tokens = of_kind(&docs, "Secret");
    assert_eq!(tokens.len(), 1);
    for key in ["admin-token", "read-token"] {
        let b64 = s(tokens[0], &["data", key]).unwrap();
        assert!(aifab_tests::base64_decode(b64).len() >= 32, "{key}");
    }
    assert!(
        of_kind(&docs, "ServiceMonitor").is_empty(),
        "no ServiceMonitor by default"
    );
    assert!(
        !of_kind(&docs, "ConfigMap")
            .iter()
            .any(|c| name_of(c) == "rel-aifab-dashboard"),
        "no dashboard ConfigMap by default"
    );
}

#[test]
fn the_gpu_rendering_puts_workers_on_gpu_nodes() {
    let docs = render(&["-f", &gpu_values()]);
    let p = problems(&docs);
    assert!(p.is_empty(), "{}", p.join("\n"));
    let deployments = of_kind(&docs, "Deployment");
    assert!(!deployments
        .iter()
        .any(|d| name_of(d) == "rel-aifab-worker-cpu"));
    let gpu = deployments
        .iter()
        .find(|d| name_of(d) == "rel-aifab-worker-gpu")
        .expect("GPU workers");
    let pod = at(gpu, &["spec", "template", "spec"]).unwrap();
    let c = seq(pod, &["containers"])[0];
    assert!(s(c, &["image"]).unwrap().starts_with("aifab/runtime-cuda:"));
    assert_eq!(
        at(c, &["resources", "limits", "nvidia.com/gpu"]).and_then(Value::as_u64),
        Some(1)
    );
    assert_eq!(
        s(pod, &["nodeSelector", "nvidia.com/gpu.present"]),
        Some("true")
    );
    assert!(seq(pod, &["tolerations"])
        .iter()
        .any(|t| s(t, &["key"]) == Some("nvidia.com/gpu")));
    assert_eq!(container_env(gpu, "AIFAB_DEVICE"), Some("cuda:0"));
    let autoscaler = deployments
        .iter()
        .find(|d| name_of(d) == "rel-aifab-autoscaler")
        .unwrap();
    assert_eq!(
        container_env(autoscaler, "AIFAB_KUBE_DEPLOYMENT"),
        Some("rel-aifab-worker-gpu")
    );
    // Model versions from S3: no volume, the store named; connection secrets as files.
    assert!(of_kind(&docs, "PersistentVolumeClaim").is_empty());
    let trainer = deployments
        .iter()
        .find(|d| name_of(d) == "rel-aifab-trainer")
        .unwrap();
    assert_eq!(
        container_env(trainer, "AIFAB_ARTIFACT_STORE"),
        Some("s3://models/aifab")
    );
    assert_eq!(
        container_env(trainer, "AIFAB_KAFKA_PROPERTIES_FILE"),
        Some("/etc/aifab/kafka/client.properties")
    );
    assert_eq!(
        container_env(trainer, "AIFAB_REDIS_PASSWORD_FILE"),
        Some("/etc/aifab/redis/password")
    );
    assert_eq!(of_kind(&docs, "ServiceMonitor").len(), 1);
    let dashboard = of_kind(&docs, "ConfigMap")
        .into_iter()
        .find(|c| name_of(c) == "rel-aifab-dashboard")
        .unwrap();
    let json = s(dashboard, &["data", "aifab-overview.json"]).unwrap();
    let parsed: serde_json::Value = serde_json::from_str(json).expect("the dashboard is JSON");
    assert!(parsed["panels"].as_array().is_some_and(|p| !p.is_empty()));
    let shipped =
        std::fs::read_to_string(root().join("deploy/grafana/dashboards/aifab-overview.json"))
            .unwrap();
    assert_eq!(
        std::fs::read_to_string(chart().join("files/aifab-overview.json")).unwrap(),
        shipped,
        "the chart's dashboard is a copy of deploy/grafana's: copy it again"
    );
}

#[test]
fn worker_kinds_keep_their_own_settings() {
    let docs = render(&[
        "--set",
        "workers.gpu.enabled=true",
        "--set",
        "workers.cpu.env.AIFAB_MAX_WAIT_MS=7",
        "--set",
        "workers.gpu.env.AIFAB_MAX_BATCH_TOKENS=9000",
    ]);
    let p = problems(&docs);
    assert!(p.is_empty(), "{}", p.join("\n"));
    let dep = |n: &str| {
        of_kind(&docs, "Deployment")
            .into_iter()
            .find(|d| name_of(d) == n)
            .unwrap()
    };
    let (cpu, gpu) = (dep("rel-aifab-worker-cpu"), dep("rel-aifab-worker-gpu"));
    assert_eq!(container_env(cpu, "AIFAB_MAX_WAIT_MS"), Some("7"));
    assert_eq!(container_env(gpu, "AIFAB_MAX_WAIT_MS"), None);
    assert_eq!(container_env(gpu, "AIFAB_MAX_BATCH_TOKENS"), Some("9000"));
    assert_eq!(container_env(cpu, "AIFAB_MAX_BATCH_TOKENS"), None);
    // With no cluster to look the live count up in, both start at their values.
    assert_eq!(
        at(cpu, &["spec", "replicas"]).and_then(Value::as_u64),
        Some(2)
    );
    assert_eq!(
        at(gpu, &["spec", "replicas"]).and_then(Value::as_u64),
        Some(1)
    );
}

#[test]
fn the_checks_fail_on_a_broken_rendering() {
    // A setting no binary reads.
    let docs = render(&["--set", "ingest.env.AIFAB_NOT_A_SETTING=1"]);
    let p = problems(&docs);
    assert!(
        p.iter()
            .any(|x| x.contains("aifab-ingest does not read AIFAB_NOT_A_SETTING")),
        "{p:?}"
    );
    // An autoscaler aimed at a kind of worker that is not deployed does not render.
    let chart = chart().display().to_string();
    let (ok, text) = run_helm(&["template", "rel", &chart, "--set", "autoscaler.target=gpu"]);
    assert!(
        !ok && text.contains("workers.gpu.enabled is false"),
        "{text}"
    );
    // A Role with more than the scale subresource is reported.
    let mut docs = render(&[]);
    for d in docs.iter_mut().filter(|d| kind_of(d) == "Role") {
        d["rules"][0]["resources"] = serde_yaml::from_str("[deployments]").unwrap();
    }
    let p = problems(&docs);
    assert!(p.iter().any(|x| x.contains("a rule beyond")), "{p:?}");
}
