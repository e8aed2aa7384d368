//! Redis connection: a `ConnectionManager` (reconnects by itself once it exists), created
//! by a background task that retries with backoff until Redis first answers; and the
//! prefix every service's keys start with.

use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::backoff::Backoff;

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
    let client = redis::Client::open(url)?;
    let (tx, rx) = watch::channel(None);
    let url = url.to_string();
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
