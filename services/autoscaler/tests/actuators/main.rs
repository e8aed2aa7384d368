//! The Docker Engine and Kubernetes actuators (bollard and kube clients) against fake API
//! servers (small axum servers in the test that keep state, record every request and
//! answer as the Docker Engine and the Kubernetes API server do, errors included).

mod docker;
mod fake;
mod fake_docker;
mod fake_kube;
mod kubernetes;
