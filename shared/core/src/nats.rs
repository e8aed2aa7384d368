//! NATS (control plane) connection: retries in the background forever and logs each
//! change of connection state, so a service starts and keeps running while NATS is down.
//!
//! Credentials and TLS come from the environment ([`NatsAuth::from_env`]), secrets from
//! files: a `.creds` file (JWT + NKey, NATS accounts), an NKey seed, a user and password,
//! or a token; `tls://` URLs (or a CA file) require TLS.

use std::path::PathBuf;

use anyhow::Context;
use async_nats::{connection::State, Client, ConnectOptions, Event};

use crate::secret::{env_nonempty, redact_url, secret_from_env_file};

/// How this process authenticates to NATS and checks its certificate. Its `Debug` shows
/// which methods are set, never a secret.
#[derive(Clone, Default)]
pub struct NatsAuth {
    /// `AIFAB_NATS_CREDS_FILE`: a `.creds` file (user JWT and NKey seed).
    pub creds_file: Option<PathBuf>,
    /// `AIFAB_NATS_NKEY_FILE`: a file holding an NKey seed (`SU...`).
    pub nkey_seed: Option<String>,
    /// `AIFAB_NATS_USER` with `AIFAB_NATS_PASSWORD_FILE`.
    pub user_password: Option<(String, String)>,
    /// `AIFAB_NATS_TOKEN_FILE`.
    pub token: Option<String>,
    /// `AIFAB_NATS_CA_FILE`: PEM roots to trust (else the system's); implies TLS.
    pub ca_file: Option<PathBuf>,
    /// `AIFAB_NATS_CERT_FILE` + `AIFAB_NATS_KEY_FILE`: a client certificate (mTLS).
    pub client_cert: Option<(PathBuf, PathBuf)>,
}

impl std::fmt::Debug for NatsAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NatsAuth")
            .field("creds_file", &self.creds_file)
            .field("nkey_seed", &self.nkey_seed.as_ref().map(|_| "<set>"))
            .field("user", &self.user_password.as_ref().map(|(u, _)| u))
            .field("token", &self.token.as_ref().map(|_| "<set>"))
            .field("ca_file", &self.ca_file)
            .field("client_cert", &self.client_cert)
            .finish()
    }
}

impl NatsAuth {
    pub fn from_env() -> anyhow::Result<Self> {
        let user_password = match env_nonempty("AIFAB_NATS_USER") {
            Some(user) => {
                let password = secret_from_env_file("AIFAB_NATS_PASSWORD_FILE")?
                    .context("AIFAB_NATS_USER is set but AIFAB_NATS_PASSWORD_FILE is not")?;
                Some((user, password))
            }
            None => None,
        };
        let client_cert = match (
            env_nonempty("AIFAB_NATS_CERT_FILE"),
            env_nonempty("AIFAB_NATS_KEY_FILE"),
        ) {
            (Some(c), Some(k)) => Some((c.into(), k.into())),
            (None, None) => None,
            _ => anyhow::bail!("AIFAB_NATS_CERT_FILE and AIFAB_NATS_KEY_FILE go together"),
        };
        let auth = NatsAuth {
            creds_file: env_nonempty("AIFAB_NATS_CREDS_FILE").map(Into::into),
            nkey_seed: secret_from_env_file("AIFAB_NATS_NKEY_FILE")?,
            user_password,
            token: secret_from_env_file("AIFAB_NATS_TOKEN_FILE")?,
            ca_file: env_nonempty("AIFAB_NATS_CA_FILE").map(Into::into),
            client_cert,
        };
        let methods = [
            auth.creds_file.is_some(),
            auth.nkey_seed.is_some(),
            auth.user_password.is_some(),
            auth.token.is_some(),
        ];
        anyhow::ensure!(
            methods.iter().filter(|m| **m).count() <= 1,
            "set one of AIFAB_NATS_CREDS_FILE, AIFAB_NATS_NKEY_FILE, AIFAB_NATS_USER, \
             AIFAB_NATS_TOKEN_FILE, not several"
        );
        Ok(auth)
    }

    /// The options with these credentials and TLS settings.
    pub async fn options(&self, url: &str) -> anyhow::Result<ConnectOptions> {
        let mut opts = ConnectOptions::new();
        if let Some(path) = &self.creds_file {
            opts = opts
                .credentials_file(path)
                .await
                .with_context(|| format!("AIFAB_NATS_CREDS_FILE {}", path.display()))?;
        }
        if let Some(seed) = &self.nkey_seed {
            opts = opts.nkey(seed.clone());
        }
        if let Some((user, password)) = &self.user_password {
            opts = opts.user_and_password(user.clone(), password.clone());
        }
        if let Some(token) = &self.token {
            opts = opts.token(token.clone());
        }
        if let Some(ca) = &self.ca_file {
            opts = opts.add_root_certificates(ca.clone());
        }
        if let Some((cert, key)) = &self.client_cert {
            opts = opts.add_client_certificate(cert.clone(), key.clone());
        }
        if url.starts_with("tls://") || self.ca_file.is_some() || self.client_cert.is_some() {
            opts = opts.require_tls(true);
        }
        Ok(opts)
    }
}

/// Connect without waiting: the client retries the first connect and every reconnect in
/// the background. Publishes made while disconnected are buffered by the client.
pub async fn connect(url: &str, service: &str) -> anyhow::Result<Client> {
    connect_with(url, service, &NatsAuth::from_env()?).await
}

/// [`connect`] with explicit credentials (tests, tools).
pub async fn connect_with(url: &str, service: &str, auth: &NatsAuth) -> anyhow::Result<Client> {
    crate::artifacts::install_tls_provider();
    let url_for_log = redact_url(url);
    let client = auth
        .options(url)
        .await?
        .name(format!("aifab-{service}"))
        .retry_on_initial_connect()
        .event_callback(move |event| {
            let url = url_for_log.clone();
            async move {
                match event {
                    Event::Connected => tracing::info!(%url, "nats connected"),
                    Event::Disconnected => tracing::warn!(%url, "nats disconnected; reconnecting"),
                    other => tracing::warn!(%url, event = %other, "nats event"),
                }
            }
        })
        .connect(url)
        .await?;
    Ok(client)
}

/// Connect and wait for the first connection (a CLI verb that has one thing to say).
pub async fn connect_now(url: &str, service: &str) -> anyhow::Result<Client> {
    let opts = NatsAuth::from_env()?.options(url).await?;
    crate::artifacts::install_tls_provider();
    opts.name(format!("aifab-{service}"))
        .connect(url)
        .await
        .with_context(|| format!("connecting to NATS at {}", redact_url(url)))
}

pub fn is_connected(client: &Client) -> bool {
    client.connection_state() == State::Connected
}
