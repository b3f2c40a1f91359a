//! The coordinator's admin API: HTTP + JSON on loopback by default, so that an operator (and the
//! `cpc-coordinator farm ...` commands) can ask a running farm what it does and act on one device without a
//! restart. Prometheus metrics say how much; this says which device, why, and lets one change it.
//!
//! - [`Server`]: the listener, with the metrics endpoint's defences (connection cap, header read timeout,
//!   connection age), and the bearer-token check as one layer over the whole router: every route merged in,
//!   now or later, gets it. Every state-changing call (any method but `GET` and `HEAD`) must carry
//!   `Authorization: Bearer TOKEN`, compared in constant time; reads are open only while the server listens
//!   on a loopback address, and need the token too anywhere else.
//! - [`farm_routes`]: `/v1/farm/...`, the farm's status and device control (see [`routes`]).
//! - [`mining_routes`]: `/v1/identities` and `/v1/reload`, the mining node's accounting and config reload
//!   (see [`mining_routes`](mod@mining_routes)).
//! - [`client`]: the typed client the CLI uses.
//! - The token lives in the data directory ([`ADMIN_TOKEN_FILE`], mode 0600, 192 random bits, made on first
//!   start like the join token), and is never printed or logged.

pub mod client;
pub mod mining_routes;
pub mod routes;

use crate::farm::identity::{
    MIN_TOKEN_CHARS, random_token, refuse_if_shared, token_matches, write_private,
};
use axum::{
    Json, Router,
    extract::{Request, State},
    http::{Method, StatusCode, header},
    middleware::{self, Next},
    response::{IntoResponse, Response},
};
use cpc_common::metrics_endpoint::{ConnectionStats, EndpointLimits};
use serde::{Deserialize, Serialize};
use std::{
    fmt,
    net::SocketAddr,
    path::{Path, PathBuf},
    sync::Arc,
};

pub use client::AdminClient;
pub use mining_routes::mining_routes;
pub use routes::farm_routes;

/// File name of the admin token in the data directory.
pub const ADMIN_TOKEN_FILE: &str = "admin-token";
/// The address the docs suggest for `--admin` (loopback: reads need no token there).
pub const DEFAULT_ADMIN_LISTEN: &str = "127.0.0.1:7702";

/// Why the admin API cannot start, or its token cannot be read.
#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    /// The token file cannot be made or read, or others can read it.
    #[error("admin token {path}: {reason}")]
    Token {
        /// The file.
        path: PathBuf,
        /// What is wrong and what to do.
        reason: String,
    },
    /// The listen address cannot be bound.
    #[error(
        "cannot listen on {addr} for the admin API: {source} (choose another address with --admin)"
    )]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// The OS error.
        source: std::io::Error,
    },
}

/// The bearer token of the admin API. Its `Debug` does not show it.
#[derive(Clone, PartialEq, Eq)]
pub struct AdminToken(String);

impl fmt::Debug for AdminToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("AdminToken(..)")
    }
}

impl AdminToken {
    /// A token from its text (surrounding white space dropped).
    pub fn new(text: &str) -> Self {
        Self(text.trim().to_owned())
    }

    /// The token's text, for an `Authorization` header.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// Reads the token in `path` (what `--token-file` names); refuses a file others can read and a token
    /// shorter than 128 bits.
    pub fn read(path: &Path) -> Result<Self, AdminError> {
        let token_err = |reason: String| AdminError::Token { path: path.to_owned(), reason };
        refuse_if_shared(path).map_err(|e| token_err(e.to_string()))?;
        let text = std::fs::read_to_string(path).map_err(|e| token_err(e.to_string()))?;
        let token = Self::new(&text);
        if token.0.len() < MIN_TOKEN_CHARS {
            return Err(token_err(format!(
                "{} characters; at least {MIN_TOKEN_CHARS} are needed (128 bits of hex): delete the file \
                 and restart the coordinator to get a new random token",
                token.0.len()
            )));
        }
        Ok(token)
    }

    /// The token of the data directory `dir`, made (mode 0600) on first start; answers it and its path.
    pub fn load_or_create(dir: &Path) -> Result<(Self, PathBuf), AdminError> {
        let path = dir.join(ADMIN_TOKEN_FILE);
        if !path.exists() {
            std::fs::create_dir_all(dir)
                .and_then(|()| write_private(&path, format!("{}\n", random_token()).as_bytes()))
                .map_err(|e| AdminError::Token {
                    path: path.clone(),
                    reason: format!("cannot write it: {e} (check --data-dir and its permissions)"),
                })?;
        }
        Ok((Self::read(&path)?, path))
    }
}

/// The body of every error the API answers.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ErrorReply {
    /// What went wrong and what to do.
    pub error: String,
}

/// `status` with `{"error": message}`.
pub(crate) fn error_reply(status: StatusCode, message: impl Into<String>) -> Response {
    (status, Json(ErrorReply { error: message.into() })).into_response()
}

/// The admin API before it listens: routes merged in, one token over all of them.
#[derive(Debug)]
pub struct Server {
    router: Router,
    token: AdminToken,
    limits: EndpointLimits,
}

impl Server {
    /// An API with no routes yet, guarded by `token`.
    pub fn new(token: AdminToken) -> Self {
        Self { router: Router::new(), token, limits: EndpointLimits::default() }
    }

    /// Adds `routes` (their own state already applied): they get the token check with the rest.
    #[must_use]
    pub fn merge(mut self, routes: Router) -> Self {
        self.router = self.router.merge(routes);
        self
    }

    /// Other connection limits than the default.
    #[must_use]
    pub fn with_limits(mut self, limits: EndpointLimits) -> Self {
        self.limits = limits;
        self
    }

    /// Binds `addr` and serves in the background until the answered [`RunningServer`] is dropped.
    pub async fn serve(self, addr: SocketAddr) -> Result<RunningServer, AdminError> {
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .map_err(|source| AdminError::Bind { addr, source })?;
        self.serve_on(listener)
    }

    /// Serves on `listener`, bound earlier (so that a taken port fails a command before it starts
    /// anything else); must be called on a tokio runtime.
    pub fn serve_std(self, listener: std::net::TcpListener) -> Result<RunningServer, AdminError> {
        let addr = listener.local_addr().unwrap_or_else(|_| SocketAddr::from(([0, 0, 0, 0], 0)));
        let bind = |source| AdminError::Bind { addr, source };
        listener.set_nonblocking(true).map_err(bind)?;
        self.serve_on(tokio::net::TcpListener::from_std(listener).map_err(bind)?)
    }

    fn serve_on(self, listener: tokio::net::TcpListener) -> Result<RunningServer, AdminError> {
        let bound = listener.local_addr().map_err(|source| AdminError::Bind {
            addr: SocketAddr::from(([0, 0, 0, 0], 0)),
            source,
        })?;
        if !bound.ip().is_loopback() {
            tracing::warn!(
                %bound,
                "the admin API listens beyond loopback: every call, reads included, needs the admin token"
            );
        }
        let auth = Arc::new(Auth { token: self.token, reads_open: bound.ip().is_loopback() });
        let app = self.router.layer(middleware::from_fn_with_state(auth, require_token));
        let stats = ConnectionStats::default();
        let task = tokio::spawn(cpc_common::metrics_endpoint::serve_router(
            listener,
            app,
            self.limits,
            stats.clone(),
        ));
        Ok(RunningServer { addr: bound, stats, task })
    }
}

/// A serving admin API; dropping it stops the listener.
#[derive(Debug)]
pub struct RunningServer {
    addr: SocketAddr,
    stats: ConnectionStats,
    task: tokio::task::JoinHandle<()>,
}

impl RunningServer {
    /// The bound address.
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Live connection counts.
    pub fn stats(&self) -> &ConnectionStats {
        &self.stats
    }
}

impl Drop for RunningServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Serves `routes` on `addr` behind `token`: [`Server::new`], [`Server::merge`], [`Server::serve`].
pub async fn serve(
    addr: SocketAddr,
    token: AdminToken,
    routes: Router,
) -> Result<RunningServer, AdminError> {
    Server::new(token).merge(routes).serve(addr).await
}

#[derive(Debug)]
struct Auth {
    token: AdminToken,
    /// Reads need no token (the server listens on loopback).
    reads_open: bool,
}

/// The one gate of the API: lets a read through on loopback, else wants the bearer token.
async fn require_token(State(auth): State<Arc<Auth>>, req: Request, next: Next) -> Response {
    let read = matches!(*req.method(), Method::GET | Method::HEAD);
    if !(read && auth.reads_open) {
        let presented = req
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "));
        let Some(presented) = presented else {
            return unauthorized(
                "this call needs `Authorization: Bearer TOKEN` (the admin-token file in the coordinator's --data-dir; pass it with --token-file)",
            );
        };
        if !token_matches(presented.trim(), auth.token.expose()) {
            tracing::warn!(method = %req.method(), path = %req.uri().path(), "admin API: wrong token");
            return unauthorized(
                "wrong admin token: use the admin-token file in the coordinator's --data-dir",
            );
        }
    }
    next.run(req).await
}

fn unauthorized(message: &str) -> Response {
    let mut response = error_reply(StatusCode::UNAUTHORIZED, message);
    response
        .headers_mut()
        .insert(header::WWW_AUTHENTICATE, header::HeaderValue::from_static("Bearer"));
    response
}
