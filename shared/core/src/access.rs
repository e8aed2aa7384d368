//! Who may use a service's control API. Two roles:
//! - **admin**: anything that changes state (budgets, training, ...);
//! - **read**: anything that reveals tenants' spend or traffic (costs, the dashboard).
//!
//! A role is granted by `Authorization: Bearer <token>` with the token from
//! `--admin-token-file` / `--read-token-file` (the admin token also reads). A role with no
//! token configured is granted only to loopback peers: a service on its default
//! 127.0.0.1 address works as before, and one reachable from a network refuses
//! strangers until a token is set. Tokens are compared in constant time and never logged.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::{ConnectInfo, Request, State};
use axum::http::{header, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::{Json, Router};

use crate::messages::{Actor, Credential};
use crate::secret::read_secret_file;

/// What a route needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Admin,
    Read,
}

/// The tokens of a service's control API.
#[derive(Default)]
pub struct Access {
    admin: Option<String>,
    read: Option<String>,
}

impl std::fmt::Debug for Access {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Access")
            .field("admin", &self.admin.as_ref().map(|_| "<set>"))
            .field("read", &self.read.as_ref().map(|_| "<set>"))
            .finish()
    }
}

/// The shortest token accepted: shorter ones are guessable.
pub const MIN_TOKEN_LEN: usize = 24;

/// Why a request was not let through.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Denied {
    /// No (or a wrong) token where one is configured: 401.
    BadToken,
    /// No token configured for the role, and the peer is not on loopback: 403.
    NotLoopback,
}

impl Access {
    pub fn new(admin: Option<String>, read: Option<String>) -> anyhow::Result<Self> {
        for (role, t) in [("admin", &admin), ("read", &read)] {
            if let Some(t) = t {
                anyhow::ensure!(
                    t.len() >= MIN_TOKEN_LEN,
                    "the {role} token is {} characters; at least {MIN_TOKEN_LEN} are required",
                    t.len()
                );
            }
        }
        Ok(Access { admin, read })
    }

    /// From the token files (either may be absent).
    pub fn from_files(
        admin: Option<&std::path::Path>,
        read: Option<&std::path::Path>,
    ) -> anyhow::Result<Self> {
        let load = |p: Option<&std::path::Path>| p.map(read_secret_file).transpose();
        Self::new(load(admin)?, load(read)?)
    }

    /// Whether a request with bearer `token` from `peer` may act as `role`, and by
    /// which credential.
    pub fn check(
        &self,
        role: Role,
        token: Option<&str>,
        peer: Option<SocketAddr>,
    ) -> Result<Credential, Denied> {
        let mut accepted: Vec<(&str, Credential)> = Vec::new();
        accepted.extend(self.admin.as_deref().map(|t| (t, Credential::AdminToken)));
        if role == Role::Read {
            accepted.extend(self.read.as_deref().map(|t| (t, Credential::ReadToken)));
        }
        if accepted.is_empty() {
            return match peer {
                Some(p) if p.ip().is_loopback() => Ok(Credential::Loopback),
                _ => Err(Denied::NotLoopback),
            };
        }
        let token = token.ok_or(Denied::BadToken)?;
        accepted
            .into_iter()
            .find(|(a, _)| constant_time_eq(a.as_bytes(), token.as_bytes()))
            .map(|(_, credential)| credential)
            .ok_or(Denied::BadToken)
    }
}

/// Equal in time that does not depend on where the bytes differ (length may leak).
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    use subtle::ConstantTimeEq;
    a.ct_eq(b).into()
}

/// `router`'s routes, each requiring `role`.
pub fn require(router: Router, access: Arc<Access>, role: Role) -> Router {
    router.route_layer(axum::middleware::from_fn_with_state((access, role), guard))
}

async fn guard(
    State((access, role)): State<(Arc<Access>, Role)>,
    request: Request,
    next: Next,
) -> Response {
    let token = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            v.strip_prefix("Bearer ")
                .or_else(|| v.strip_prefix("bearer "))
        })
        .map(str::trim);
    let peer = request
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0);
    match access.check(role, token, peer) {
        Ok(credential) => {
            // Handlers that change state record who did it (`audit`).
            let actor = Actor {
                credential,
                address: peer.map(|p| p.to_string()),
                name: None,
            };
            let mut request = request;
            request.extensions_mut().insert(actor);
            next.run(request).await
        }
        Err(denied) => {
            let what = match role {
                Role::Admin => "admin",
                Role::Read => "read",
            };
            let (status, error) = match denied {
                Denied::BadToken => (
                    StatusCode::UNAUTHORIZED,
                    format!("this route needs the {what} token: Authorization: Bearer <token>"),
                ),
                Denied::NotLoopback => (
                    StatusCode::FORBIDDEN,
                    format!(
                        "this route is open to loopback only until a {what} token is configured \
                         (--{what}-token-file)"
                    ),
                ),
            };
            (status, Json(serde_json::json!({ "error": error }))).into_response()
        }
    }
}

/// The token a client sends for `role`, from `AIFAB_ADMIN_TOKEN_FILE` /
/// `AIFAB_READ_TOKEN_FILE` (read falls back to admin); `None` when neither is set.
pub fn client_token(role: Role) -> anyhow::Result<Option<String>> {
    let admin = crate::secret::secret_from_env_file("AIFAB_ADMIN_TOKEN_FILE")?;
    Ok(match role {
        Role::Admin => admin,
        Role::Read => crate::secret::secret_from_env_file("AIFAB_READ_TOKEN_FILE")?.or(admin),
    })
}

/// An HTTP client that sends the token of `role` (see [`client_token`]) with every
/// request, and gives up after `timeout`.
pub fn http_client(role: Role, timeout: std::time::Duration) -> anyhow::Result<reqwest::Client> {
    crate::artifacts::install_tls_provider();
    let mut headers = reqwest::header::HeaderMap::new();
    if let Some(token) = client_token(role)? {
        let mut v = reqwest::header::HeaderValue::from_str(&format!("Bearer {token}"))?;
        v.set_sensitive(true);
        headers.insert(reqwest::header::AUTHORIZATION, v);
    }
    Ok(reqwest::Client::builder()
        .default_headers(headers)
        .timeout(timeout)
        .build()?)
}

#[cfg(test)]
mod tests {
    use super::*;

    const ADMIN: &str = "admin-token-0123456789abcdef";
    const READ: &str = "read-token-0123456789abcdef";

    fn peer(ip: [u8; 4]) -> Option<SocketAddr> {
        Some(SocketAddr::from((ip, 4000)))
    }

    #[test]
    fn without_tokens_only_loopback_peers_pass() {
        let open = Access::default();
        assert_eq!(
            open.check(Role::Admin, None, peer([127, 0, 0, 1])),
            Ok(Credential::Loopback)
        );
        assert_eq!(
            open.check(Role::Read, None, peer([10, 0, 0, 7])),
            Err(Denied::NotLoopback)
        );
        assert_eq!(
            open.check(Role::Admin, Some("x"), None),
            Err(Denied::NotLoopback)
        );
    }

    #[test]
    fn with_tokens_the_role_s_token_passes_from_anywhere_and_admin_also_reads() {
        let a = Access::new(Some(ADMIN.into()), Some(READ.into())).unwrap();
        let far = peer([10, 0, 0, 7]);
        let admin = Ok(Credential::AdminToken);
        assert_eq!(a.check(Role::Admin, Some(ADMIN), far), admin);
        assert_eq!(a.check(Role::Admin, Some(READ), far), Err(Denied::BadToken));
        assert_eq!(
            a.check(Role::Read, Some(READ), far),
            Ok(Credential::ReadToken)
        );
        assert_eq!(a.check(Role::Read, Some(ADMIN), far), admin);
        // A configured token is needed from loopback too.
        assert_eq!(
            a.check(Role::Read, None, peer([127, 0, 0, 1])),
            Err(Denied::BadToken)
        );
        // Admin only: reads need the admin token.
        let a = Access::new(Some(ADMIN.into()), None).unwrap();
        assert_eq!(a.check(Role::Read, Some(READ), far), Err(Denied::BadToken));
        assert!(Access::new(Some("short".into()), None).is_err());
    }
}
