//! The devnet's HTTP API: the node's paths, JSON shapes, status codes and `detail` errors (FastAPI's), on
//! axum. Bodies are capped at [`MAX_BODY_BYTES`] (413) and requests in flight at [`MAX_IN_FLIGHT`], so a
//! flood of large or malformed requests cannot grow the process without bound.

use super::{
    chain::{Chain, Outcome},
    store::Store,
    wire::{self, BodyError},
};
use axum::{
    Json, Router,
    body::Bytes,
    extract::{
        DefaultBodyLimit, Path, Query, Request, State,
        rejection::{BytesRejection, QueryRejection},
    },
    http::{StatusCode, header},
    middleware::{self, Next},
    response::{IntoResponse, Response},
    routing::{get, post},
};
use cpc_common::rpc::{BalanceResponse, NonceResponse, SendStatus, SendTxResponse, StatusResponse};
use serde_json::{Value, json};
use std::{
    collections::HashMap,
    fmt::Write as _,
    sync::{
        Arc, Mutex, MutexGuard,
        atomic::{AtomicU64, Ordering},
    },
    time::{SystemTime, UNIX_EPOCH},
};
use tokio::sync::Semaphore;

/// Largest request body accepted; larger ones get 413.
pub const MAX_BODY_BYTES: usize = 1024 * 1024;
/// Requests served at once; more wait for a slot.
pub const MAX_IN_FLIGHT: usize = 256;

/// HTTP-level counters for `/metrics`.
#[derive(Debug, Default)]
pub struct HttpStats {
    /// Requests answered.
    pub requests: AtomicU64,
    /// Bodies that were not JSON (400).
    pub unparseable: AtomicU64,
    /// Bodies that failed the schema (422).
    pub invalid: AtomicU64,
    /// Bodies over the cap (413).
    pub too_large: AtomicU64,
    /// Requests refused with 429 by `--max-requests-per-sec`.
    pub throttled: AtomicU64,
    /// Requests by route, in [`Route`] order (counted before throttling).
    pub by_route: [AtomicU64; Route::ALL.len()],
}

/// The routes a worker calls, for per-route request counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route {
    /// `GET /status`.
    Status,
    /// `GET /block/{h}`.
    Block,
    /// `GET /balance/{a}`.
    Balance,
    /// `GET /nonce/{a}`.
    Nonce,
    /// `POST /tx/send`.
    Send,
    /// Anything else (receipts, metrics, unknown paths).
    Other,
}

impl Route {
    /// Every route, in counter order.
    pub const ALL: [Self; 6] =
        [Self::Status, Self::Block, Self::Balance, Self::Nonce, Self::Send, Self::Other];

    fn of(path: &str) -> Self {
        let first = path.trim_start_matches('/').split('/').next().unwrap_or("");
        match first {
            "status" => Self::Status,
            "block" => Self::Block,
            "balance" => Self::Balance,
            "nonce" => Self::Nonce,
            "tx" if path.ends_with("/send") => Self::Send,
            _ => Self::Other,
        }
    }

    /// The `route` label value.
    pub fn label(self) -> &'static str {
        match self {
            Self::Status => "status",
            Self::Block => "block",
            Self::Balance => "balance",
            Self::Nonce => "nonce",
            Self::Send => "send",
            Self::Other => "other",
        }
    }
}

/// `--max-requests-per-sec`: a token bucket of one second's worth of requests; beyond it a request is
/// answered 429 with `Retry-After: 1`, as an overloaded public node behind a rate limiter would.
#[derive(Debug)]
pub struct RateLimit {
    per_sec: f64,
    bucket: Mutex<(f64, std::time::Instant)>,
}

impl RateLimit {
    /// At most `per_sec` requests a second (bursts up to one second's worth).
    pub fn new(per_sec: u32) -> Self {
        let per_sec = f64::from(per_sec.max(1));
        Self { per_sec, bucket: Mutex::new((per_sec, std::time::Instant::now())) }
    }

    fn admit(&self) -> bool {
        let mut b = self.bucket.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let now = std::time::Instant::now();
        let refill = now.duration_since(b.1).as_secs_f64() * self.per_sec;
        b.0 = (b.0 + refill).min(self.per_sec);
        b.1 = now;
        if b.0 >= 1.0 {
            b.0 -= 1.0;
            true
        } else {
            false
        }
    }
}

/// State shared by the handlers and the block producer. Lock order: `chain` before `store`.
#[derive(Debug)]
pub struct Shared {
    /// The state machine.
    pub chain: Mutex<Chain>,
    /// Blocks and receipts; written under the chain lock, so `/status` never runs ahead of `/block`.
    pub store: Mutex<Store>,
    /// HTTP counters.
    pub http: HttpStats,
    /// The request rate limit, if any.
    pub rate_limit: Option<RateLimit>,
}

impl Shared {
    /// Locks the chain (a panic elsewhere does not make the devnet unusable).
    pub fn chain(&self) -> MutexGuard<'_, Chain> {
        self.chain.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Locks the store.
    pub fn store(&self) -> MutexGuard<'_, Store> {
        self.store.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// Seconds since the Unix epoch.
pub fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

/// The devnet's routes.
pub fn router(shared: Arc<Shared>) -> Router {
    let slots = Arc::new(Semaphore::new(MAX_IN_FLIGHT));
    Router::new()
        .route("/status", get(status))
        .route("/block/{height}", get(block))
        .route("/balance/{address}", get(balance))
        .route("/nonce/{address}", get(nonce))
        .route("/tx/send", post(send))
        .route("/tx/{hash}/receipt", get(receipt))
        .route("/metrics", get(metrics))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .layer(middleware::from_fn_with_state(slots, limit_in_flight))
        .layer(middleware::from_fn_with_state(shared.clone(), count_and_throttle))
        .with_state(shared)
}

async fn count_and_throttle(
    State(s): State<Arc<Shared>>,
    request: Request,
    next: Next,
) -> Response {
    let route = Route::of(request.uri().path());
    if let Some(i) = Route::ALL.iter().position(|r| *r == route) {
        s.http.by_route[i].fetch_add(1, Ordering::Relaxed);
    }
    if s.rate_limit.as_ref().is_some_and(|limit| !limit.admit()) {
        s.http.throttled.fetch_add(1, Ordering::Relaxed);
        return (
            StatusCode::TOO_MANY_REQUESTS,
            [(header::RETRY_AFTER, "1")],
            Json(json!({ "detail": "Too Many Requests" })),
        )
            .into_response();
    }
    next.run(request).await
}

async fn limit_in_flight(
    State(slots): State<Arc<Semaphore>>,
    request: Request,
    next: Next,
) -> Response {
    // The semaphore is never closed, so acquiring only fails if it were; serve anyway then.
    let _permit = slots.acquire_owned().await.ok();
    next.run(request).await
}

fn detail(status: StatusCode, detail: impl Into<Value>) -> Response {
    (status, Json(json!({ "detail": detail.into() }))).into_response()
}

fn internal(error: impl std::fmt::Display) -> Response {
    tracing::error!(%error, "devnet internal error");
    detail(StatusCode::INTERNAL_SERVER_ERROR, error.to_string())
}

async fn not_found() -> Response {
    detail(StatusCode::NOT_FOUND, "Not Found")
}

async fn method_not_allowed() -> Response {
    detail(StatusCode::METHOD_NOT_ALLOWED, "Method Not Allowed")
}

async fn status(State(s): State<Arc<Shared>>) -> Json<StatusResponse> {
    s.http.requests.fetch_add(1, Ordering::Relaxed);
    let chain = s.chain();
    Json(StatusResponse {
        height: chain.height(),
        last_hash: chain.last_hash().to_owned(),
        network: chain.config().chain_id.clone(),
        mempool_size: chain.mempool_len() as u64,
        epoch: chain.epoch(),
    })
}

async fn block(State(s): State<Arc<Shared>>, Path(height): Path<String>) -> Response {
    s.http.requests.fetch_add(1, Ordering::Relaxed);
    let Some(h) = cpc_common::PyInt::from_lax_json(&Value::String(height.clone()))
        .filter(|_| !height.contains('.'))
        .and_then(|p| p.to_i128())
    else {
        let mut e = wire::error(
            "int_parsing",
            &[],
            "Input should be a valid integer, unable to parse string as an integer",
            Value::String(height),
        );
        e["loc"] = json!(["path", "height"]);
        return detail(StatusCode::UNPROCESSABLE_ENTITY, json!([e]));
    };
    let Ok(h) = u64::try_from(h) else { return detail(StatusCode::NOT_FOUND, "Block not found") };
    let found = s.store().block_json(h);
    match found {
        Ok(Some(json)) => ([(header::CONTENT_TYPE, "application/json")], json).into_response(),
        Ok(None) => detail(StatusCode::NOT_FOUND, "Block not found"),
        Err(e) => internal(e),
    }
}

async fn balance(
    State(s): State<Arc<Shared>>,
    Path(address): Path<String>,
) -> Json<BalanceResponse> {
    s.http.requests.fetch_add(1, Ordering::Relaxed);
    let account = s.chain().account(&address);
    Json(BalanceResponse { address, balance: account.balance.to_string(), nonce: account.nonce })
}

/// Pydantic's lax `bool` from a query string.
fn lax_bool(s: &str) -> Option<bool> {
    match s.to_ascii_lowercase().as_str() {
        "1" | "true" | "t" | "yes" | "y" | "on" => Some(true),
        "0" | "false" | "f" | "no" | "n" | "off" => Some(false),
        _ => None,
    }
}

async fn nonce(
    State(s): State<Arc<Shared>>,
    Path(address): Path<String>,
    query: Result<Query<HashMap<String, String>>, QueryRejection>,
) -> Response {
    s.http.requests.fetch_add(1, Ordering::Relaxed);
    let query = match query {
        Ok(Query(q)) => q,
        Err(rej) => return detail(rej.status(), rej.body_text()),
    };
    let pending = match query.get("pending") {
        None => true,
        Some(v) => match lax_bool(v) {
            Some(b) => b,
            None => {
                let e = json!({"type": "bool_parsing", "loc": ["query", "pending"],
                    "msg": "Input should be a valid boolean, unable to interpret input", "input": v});
                return detail(StatusCode::UNPROCESSABLE_ENTITY, json!([e]));
            }
        },
    };
    let chain = s.chain();
    let nonce = if pending { chain.pending_nonce(&address) } else { chain.account(&address).nonce };
    Json(NonceResponse { address, nonce, pending }).into_response()
}

async fn send(State(s): State<Arc<Shared>>, body: Result<Bytes, BytesRejection>) -> Response {
    s.http.requests.fetch_add(1, Ordering::Relaxed);
    let body = match body {
        Ok(b) => b,
        Err(rej) if rej.status() == StatusCode::PAYLOAD_TOO_LARGE => {
            s.http.too_large.fetch_add(1, Ordering::Relaxed);
            // The unread rest of the body makes the connection unusable: tell the client not to reuse it.
            let mut r = detail(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!("Request body exceeds {MAX_BODY_BYTES} bytes"),
            );
            r.headers_mut().insert(header::CONNECTION, header::HeaderValue::from_static("close"));
            return r;
        }
        Err(rej) => {
            s.http.unparseable.fetch_add(1, Ordering::Relaxed);
            return detail(StatusCode::BAD_REQUEST, rej.body_text());
        }
    };
    let tx = match wire::parse_transaction(&body) {
        Ok(tx) => tx,
        Err(BodyError::Unparseable) => {
            s.http.unparseable.fetch_add(1, Ordering::Relaxed);
            return detail(StatusCode::BAD_REQUEST, "There was an error parsing the body");
        }
        Err(BodyError::Invalid(errors)) => {
            s.http.invalid.fetch_add(1, Ordering::Relaxed);
            return detail(StatusCode::UNPROCESSABLE_ENTITY, errors);
        }
    };
    let result = s.chain().submit(tx, now());
    let answer = match result {
        Ok(tx_hash) => SendTxResponse { tx_hash, status: SendStatus::Received, error: None },
        Err((tx_hash, reason)) => {
            tracing::debug!(%tx_hash, %reason, "rejected transaction");
            SendTxResponse {
                tx_hash,
                status: SendStatus::Rejected,
                error: Some(reason.to_string()),
            }
        }
    };
    Json(answer).into_response()
}

async fn receipt(State(s): State<Arc<Shared>>, Path(hash): Path<String>) -> Response {
    s.http.requests.fetch_add(1, Ordering::Relaxed);
    // Chain first, then store: a transaction leaves the mempool and enters the store under the chain lock.
    let (pending_since, height) = {
        let chain = s.chain();
        (chain.pending_since(&hash), chain.height())
    };
    if let Some(ts) = pending_since {
        return Json(json!({"tx_hash": hash, "status": "pending", "block_height": null, "timestamp": ts, "error": null}))
            .into_response();
    }
    let stored = s.store().receipt(&hash);
    match stored {
        Ok(Some(r)) => match r.outcome {
            Outcome::Confirmed { height: h, timestamp } => Json(json!({
                "tx_hash": hash, "status": "confirmed", "block_height": h, "timestamp": timestamp, "error": null,
                "confirmations": height.saturating_sub(h) + 1,
            }))
            .into_response(),
            Outcome::Failed { error, timestamp } => Json(json!({
                "tx_hash": hash, "status": "failed", "block_height": null, "timestamp": timestamp, "error": error,
            }))
            .into_response(),
        },
        Ok(None) => detail(StatusCode::NOT_FOUND, "Transaction not found"),
        Err(e) => internal(e),
    }
}

async fn metrics(State(s): State<Arc<Shared>>) -> Response {
    s.http.requests.fetch_add(1, Ordering::Relaxed);
    let (height, mempool, accounts, stats) = {
        let c = s.chain();
        (c.height(), c.mempool_len(), c.account_count(), c.stats())
    };
    let h = &s.http;
    let mut out = String::new();
    let mut metric = |name: &str, kind: &str, help: &str, value: u64| {
        // Writing to a String cannot fail.
        let _ = write!(out, "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}\n");
    };
    metric("cpcfarm_devnet_height", "gauge", "Height of the newest block.", height);
    metric(
        "cpcfarm_devnet_mempool_size",
        "gauge",
        "Transactions waiting in the mempool.",
        mempool as u64,
    );
    metric("cpcfarm_devnet_accounts", "gauge", "Accounts with state.", accounts as u64);
    metric(
        "cpcfarm_devnet_blocks_produced_total",
        "counter",
        "Blocks produced by this process.",
        stats.blocks,
    );
    metric(
        "cpcfarm_devnet_txs_received_total",
        "counter",
        "Transactions admitted to the mempool.",
        stats.received,
    );
    metric(
        "cpcfarm_devnet_txs_rejected_total",
        "counter",
        "Transactions refused at admission.",
        stats.rejected,
    );
    metric(
        "cpcfarm_devnet_txs_included_total",
        "counter",
        "Transactions included in blocks.",
        stats.included,
    );
    metric(
        "cpcfarm_devnet_txs_dropped_total",
        "counter",
        "Transactions dropped at inclusion.",
        stats.dropped,
    );
    metric(
        "cpcfarm_devnet_http_requests_total",
        "counter",
        "HTTP requests routed.",
        h.requests.load(Ordering::Relaxed),
    );
    metric(
        "cpcfarm_devnet_http_unparseable_bodies_total",
        "counter",
        "Bodies that were not JSON (400).",
        h.unparseable.load(Ordering::Relaxed),
    );
    metric(
        "cpcfarm_devnet_http_invalid_bodies_total",
        "counter",
        "Bodies that failed the schema (422).",
        h.invalid.load(Ordering::Relaxed),
    );
    metric(
        "cpcfarm_devnet_http_oversized_bodies_total",
        "counter",
        "Bodies over the size cap (413).",
        h.too_large.load(Ordering::Relaxed),
    );
    metric(
        "cpcfarm_devnet_http_throttled_total",
        "counter",
        "Requests answered 429 by --max-requests-per-sec.",
        h.throttled.load(Ordering::Relaxed),
    );
    let _ = write!(
        out,
        "# HELP cpcfarm_devnet_http_route_requests_total Requests by route, before throttling.\n# TYPE cpcfarm_devnet_http_route_requests_total counter\n"
    );
    for (route, count) in Route::ALL.iter().zip(&h.by_route) {
        let _ = writeln!(
            out,
            "cpcfarm_devnet_http_route_requests_total{{route=\"{}\"}} {}",
            route.label(),
            count.load(Ordering::Relaxed)
        );
    }
    let _ = write!(
        out,
        "# HELP cpcfarm_build_info Build of this binary.\n# TYPE cpcfarm_build_info gauge\ncpcfarm_build_info{{crate=\"cpc-tests\",version=\"{}\"}} 1\n",
        env!("CARGO_PKG_VERSION")
    );
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")], out).into_response()
}
