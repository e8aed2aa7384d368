//! The S3 side of the artifact store: its settings (flags and `AWS_*` variables) and
//! the `object_store` client built from them.

use std::sync::Once;
use std::time::Duration;

use object_store::aws::{AmazonS3Builder, AmazonS3ConfigKey};
use object_store::{ClientOptions, RetryConfig};

/// S3 settings on the command line; the rest comes from the standard `AWS_*` variables.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct S3Args {
    /// Endpoint of an S3-compatible store for s3:// artifact URIs, e.g.
    /// `http://127.0.0.1:9000` (MinIO). Default: AWS_ENDPOINT_URL, else AWS itself.
    /// Credentials and region come from AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY and
    /// AWS_REGION / AWS_DEFAULT_REGION.
    #[arg(long = "artifact-store-endpoint", env = "AIFAB_S3_ENDPOINT")]
    pub endpoint: Option<String>,
}

impl S3Args {
    pub fn config(&self) -> S3Config {
        S3Config {
            endpoint: self.endpoint.clone(),
            ..S3Config::default()
        }
    }
}

/// S3 client settings: each `Some` overrides what the `AWS_*` environment says.
#[derive(Debug, Clone, Default)]
pub struct S3Config {
    pub endpoint: Option<String>,
    pub region: Option<String>,
    pub access_key_id: Option<String>,
    pub secret_access_key: Option<String>,
}

pub(super) fn s3_store(
    bucket: &str,
    s3: &S3Config,
) -> object_store::Result<object_store::aws::AmazonS3> {
    install_tls_provider();
    let mut b = AmazonS3Builder::from_env().with_bucket_name(bucket);
    if let Some(e) = &s3.endpoint {
        b = b.with_endpoint(e);
    }
    if let Some(r) = &s3.region {
        b = b.with_region(r);
    }
    if let Some(k) = &s3.access_key_id {
        b = b.with_access_key_id(k);
    }
    if let Some(k) = &s3.secret_access_key {
        b = b.with_secret_access_key(k);
    }
    // `from_env` reads AWS_REGION and AWS_DEFAULT_REGION (the first wins; default us-east-1).
    // Fail in seconds, not minutes, when the store is down: a few quick retries. (Client
    // options first: they hold allow_http, which the next step may set.)
    let retry = RetryConfig {
        max_retries: 3,
        retry_timeout: Duration::from_secs(30),
        ..RetryConfig::default()
    };
    let mut options = ClientOptions::new()
        .with_connect_timeout(Duration::from_secs(5))
        .with_timeout(Duration::from_secs(60));
    if let Some(allow) = b.get_config_value(&AmazonS3ConfigKey::Client(
        object_store::ClientConfigKey::AllowHttp,
    )) {
        options = options.with_allow_http(allow.eq_ignore_ascii_case("true"));
    }
    b = b.with_retry(retry).with_client_options(options);
    let endpoint = b.get_config_value(&AmazonS3ConfigKey::Endpoint);
    if endpoint
        .as_deref()
        .is_some_and(|e| e.starts_with("http://"))
    {
        b = b.with_allow_http(true);
    }
    b.build()
}

/// reqwest is built without a bundled TLS crypto provider (the workspace already has
/// ring through rustls; aws-lc-rs would be a second, large C build): install ring once.
/// Every process that builds a reqwest client calls this first (services through
/// `Service::init`, the CLI at start), or the client panics.
pub fn install_tls_provider() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let _ = rustls::crypto::ring::default_provider().install_default();
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::artifacts::fetch_version;

    #[tokio::test]
    async fn unreachable_s3_names_the_uri_and_the_failure() {
        // A loopback port with nobody listening: the client must fail fast and say so.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let s3 = S3Config {
            endpoint: Some(format!("http://127.0.0.1:{port}")),
            region: Some("us-east-1".into()),
            access_key_id: Some("test".into()),
            secret_access_key: Some("test".into()),
        };
        let cache = tempfile::tempdir().unwrap();
        let started = std::time::Instant::now();
        let err = fetch_version(
            "s3://nobody/models/spam/v1",
            &["labels.json"],
            cache.path(),
            &s3,
        )
        .await
        .unwrap_err();
        let msg = format!("{err}");
        assert!(
            msg.contains("s3://nobody/models/spam/v1/labels.json")
                && msg.contains("the store said"),
            "{msg}"
        );
        // It got as far as connecting (not a client-side configuration error).
        assert!(
            !msg.contains("BadScheme") && msg.contains(&format!("127.0.0.1:{port}")),
            "{msg}"
        );
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "gave up after {:?}",
            started.elapsed()
        );
    }
}
