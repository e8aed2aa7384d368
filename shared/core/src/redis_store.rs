//! Redis connection: a `ConnectionManager` (reconnects by itself once it exists), created
//! by a background task that retries with backoff until Redis first answers; and the
//! prefix every service's keys start with.
//!
//! Credentials and TLS come from the environment ([`RedisAuth::from_env`]): an ACL user and
//! a password file, and for `rediss://` URLs a CA file and an optional client certificate.

use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use anyhow::Context;

use crate::backoff::Backoff;
use crate::secret::{env_nonempty, redact_url, secret_from_env_file};

/// How this process authenticates to Redis and checks its certificate. Its `Debug` never
/// shows the password or the client key.
#[derive(Clone, Default)]
pub struct RedisAuth {
    /// `AIFAB_REDIS_USERNAME`: the ACL user (else `default`, or the URL's).
    pub username: Option<String>,
    /// `AIFAB_REDIS_PASSWORD_FILE`.
    pub password: Option<String>,
    /// `AIFAB_REDIS_CA_FILE`: PEM roots for `rediss://` (else the system's).
    pub ca_pem: Option<Vec<u8>>,
    /// `AIFAB_REDIS_CERT_FILE` + `AIFAB_REDIS_KEY_FILE`: a client certificate (mTLS).
    pub client_cert_pem: Option<(Vec<u8>, Vec<u8>)>,
}

impl std::fmt::Debug for RedisAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisAuth")
            .field("username", &self.username)
            .field("password", &self.password.as_ref().map(|_| "<set>"))
            .field("ca", &self.ca_pem.as_ref().map(|_| "<set>"))
            .field(
                "client_cert",
                &self.client_cert_pem.as_ref().map(|_| "<set>"),
            )
            .finish()
    }
}

impl RedisAuth {
    pub fn from_env() -> anyhow::Result<Self> {
        let read = |var: &str| -> anyhow::Result<Option<Vec<u8>>> {
            env_nonempty(var)
                .map(|p| std::fs::read(&p).with_context(|| format!("{var}: cannot read {p}")))
                .transpose()
        };
        let client_cert_pem = match (
            read("AIFAB_REDIS_CERT_FILE")?,
            read("AIFAB_REDIS_KEY_FILE")?,
        ) {
            (Some(c), Some(k)) => Some((c, k)),
            (None, None) => None,
            _ => anyhow::bail!("AIFAB_REDIS_CERT_FILE and AIFAB_REDIS_KEY_FILE go together"),
        };
        Ok(RedisAuth {
            username: env_nonempty("AIFAB_REDIS_USERNAME"),
            password: secret_from_env_file("AIFAB_REDIS_PASSWORD_FILE")?,
            ca_pem: read("AIFAB_REDIS_CA_FILE")?,
            client_cert_pem,
        })
    }

    /// A client for `url` with these credentials; TLS settings apply to `rediss://` URLs.
    pub fn client(&self, url: &str) -> anyhow::Result<redis::Client> {
        use redis::IntoConnectionInfo;
        crate::artifacts::install_tls_provider();
        let info = url
            .into_connection_info()
            .with_context(|| format!("bad Redis url {}", redact_url(url)))?;
        let mut settings = info.redis_settings().clone();
        if let Some(user) = &self.username {
            settings = settings.set_username(user);
        }
        if let Some(password) = &self.password {
            settings = settings.set_password(password);
        }
        let info = info.set_redis_settings(settings);
        let tls = url.starts_with("rediss://");
        if !tls && (self.ca_pem.is_some() || self.client_cert_pem.is_some()) {
            anyhow::bail!("AIFAB_REDIS_CA_FILE/CERT_FILE are set but the URL is not rediss://");
        }
        if tls && (self.ca_pem.is_some() || self.client_cert_pem.is_some()) {
            let certs = redis::TlsCertificates {
                client_tls: self
                    .client_cert_pem
                    .clone()
                    .map(|(client_cert, client_key)| redis::ClientTlsConfig {
                        client_cert,
                        client_key,
                    }),
                root_cert: self.ca_pem.clone(),
            };
            return Ok(redis::Client::build_with_tls(info, certs)?);
        }
        Ok(redis::Client::open(info)?)
    }
}

/// A Redis client for `url` with this process's credentials (see [`RedisAuth::from_env`]).
pub fn client(url: &str) -> anyhow::Result<redis::Client> {
    RedisAuth::from_env()?.client(url)
}

/// A Redis connection that may not exist yet; cheap to clone.
#[derive(Clone)]
pub struct RedisHandle {
    rx: watch::Receiver<Option<ConnectionManager>>,
}

#[derive(Debug, thiserror::Error)]
#[error("redis is not connected yet (service shutting down or still retrying)")]
pub struct NotConnected;

impl RedisHandle {
    /// The connection once it exists; waits for it.
    pub async fn get(&self) -> Result<ConnectionManager, NotConnected> {
        let mut rx = self.rx.clone();
        let conn = rx
            .wait_for(|c| c.is_some())
            .await
            .map_err(|_| NotConnected)?;
        Ok(conn.clone().expect("checked is_some"))
    }

    /// The connection if it exists now.
    pub fn try_get(&self) -> Option<ConnectionManager> {
        self.rx.borrow().clone()
    }
}

/// Start connecting in the background; the handle resolves when Redis first answers.
pub fn connect_in_background(
    url: &str,
    shutdown: CancellationToken,
) -> anyhow::Result<RedisHandle> {
    let client = client(url)?;
    let (tx, rx) = watch::channel(None);
    let url = redact_url(url);
    tokio::spawn(async move {
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(Duration::from_secs(3)))
            .set_response_timeout(Some(Duration::from_secs(5)))
            .set_max_delay(Duration::from_secs(5));
        let mut backoff = Backoff::for_dependencies();
        loop {
            match client
                .get_connection_manager_with_config(config.clone())
                .await
            {
                Ok(conn) => {
                    tracing::info!(%url, "redis connected");
                    let _ = tx.send(Some(conn));
                    return;
                }
                Err(e) => {
                    let delay = backoff.next_delay_jittered();
                    tracing::warn!(%url, attempt = backoff.attempt(), retry_in = ?delay,
                        error = %e, "redis unreachable; retrying");
                    tokio::select! {
                        _ = tokio::time::sleep(delay) => {}
                        _ = shutdown.cancelled() => return,
                    }
                }
            }
        }
    });
    Ok(RedisHandle { rx })
}

/// PING with a timeout: the readiness probe for Redis.
pub async fn ping(conn: &mut ConnectionManager) -> anyhow::Result<()> {
    let reply: String =
        tokio::time::timeout(Duration::from_secs(2), redis::cmd("PING").query_async(conn))
            .await
            .map_err(|_| anyhow::anyhow!("PING timed out after 2s"))??;
    anyhow::ensure!(reply == "PONG", "PING answered {reply:?}");
    Ok(())
}

/// The start of every Redis key a service reads or writes (`--redis-prefix`), so tests and
/// several deployments can share one Redis. Shown without a trailing `:`, so `aifab` and
/// `aifab:` name the same keys: `format!("{prefix}:ingest:tenant:{tenant}")`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyPrefix(String);

impl KeyPrefix {
    pub fn new(prefix: &str) -> Self {
        KeyPrefix(prefix.trim_end_matches(':').to_string())
    }
}

impl std::fmt::Display for KeyPrefix {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::KeyPrefix;

    #[test]
    fn a_prefix_names_the_same_keys_with_or_without_its_colon() {
        assert_eq!(KeyPrefix::new("aifab:").to_string(), "aifab");
        assert_eq!(KeyPrefix::new("aifab"), KeyPrefix::new("aifab:"));
        assert_eq!(KeyPrefix::new("t1::").to_string(), "t1");
    }
}
