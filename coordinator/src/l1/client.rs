use super::deadline::AdaptiveDeadline;
use cpc_common::{
    Block, Transaction,
    rpc::{
        BalanceResponse, NonceResponse, ReceiptResponse, SendStatus, SendTxResponse, StatusResponse,
    },
};
use serde::de::DeserializeOwned;
use std::time::Duration;

/// How long to wait for a TCP connection to the node.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// How long to wait for a whole answer.
pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// Errors talking to a node.
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    /// The node could not be reached at all (refused, DNS, TLS, timeout).
    #[error(
        "L1 node at {url} is unreachable ({reason}); check --node / CPC_NODE and that the node is running"
    )]
    Unreachable {
        /// The URL called.
        url: String,
        /// What failed.
        reason: String,
    },
    /// The node answered 404.
    #[error("not found on the L1 node: {url}")]
    NotFound {
        /// The URL called.
        url: String,
    },
    /// The node answered with an unexpected HTTP status.
    #[error("L1 node answered HTTP {status} for {url}: {body}")]
    Status {
        /// The URL called.
        url: String,
        /// The status code.
        status: u16,
        /// The start of the body.
        body: String,
    },
    /// The answer was not the JSON the RPC promises.
    #[error("L1 node at {url} sent an answer this client does not understand: {reason}")]
    Decode {
        /// The URL called.
        url: String,
        /// What did not parse.
        reason: String,
    },
    /// The node refused the transaction.
    #[error("the node rejected transaction {tx_hash}: {reason}")]
    Rejected {
        /// The transaction's hash.
        tx_hash: String,
        /// The node's reason.
        reason: String,
    },
}

/// A client for one node.
#[derive(Debug, Clone)]
pub struct NodeClient {
    base: String,
    http: reqwest::Client,
    budget: std::sync::Arc<super::budget::RequestBudget>,
    deadline: std::sync::Arc<AdaptiveDeadline>,
}

impl NodeClient {
    /// A client for the node at `base_url` (e.g. `http://localhost:8000` or `https://node.example`),
    /// with the default timeouts of one-off operator commands.
    pub fn new(base_url: &str) -> Self {
        Self::with_timeouts(base_url, DEFAULT_CONNECT_TIMEOUT, DEFAULT_REQUEST_TIMEOUT)
    }

    /// A client whose connections (TCP and TLS) time out after `connect` and whose requests each have
    /// a deadline of `request`. `https://` URLs are checked against the system's trusted roots
    /// (`SSL_CERT_FILE` / `SSL_CERT_DIR` override them) and the bundled Mozilla roots.
    pub fn with_timeouts(base_url: &str, connect: Duration, request: Duration) -> Self {
        Self::with_adaptive_deadline(base_url, connect, request, request)
    }

    /// As [`Self::with_timeouts`], but each request's deadline follows the node's answer times between
    /// `floor` and `ceiling` (see [`AdaptiveDeadline`]): a node that answers quickly is given up on after
    /// `floor`, one that is slow under load is waited for.
    pub fn with_adaptive_deadline(
        base_url: &str,
        connect: Duration,
        floor: Duration,
        ceiling: Duration,
    ) -> Self {
        let deadline = std::sync::Arc::new(AdaptiveDeadline::new(floor, ceiling));
        let ceiling = ceiling.max(floor);
        let builder = || {
            reqwest::Client::builder().use_rustls_tls().connect_timeout(connect).timeout(ceiling)
        };
        let http = builder().build().or_else(|e| {
            // Only an unreadable system root store gets here: keep https working on the Mozilla roots.
            tracing::warn!(
                "system TLS roots unusable ({e}); trusting the bundled Mozilla roots only"
            );
            builder().tls_built_in_native_certs(false).build()
        });
        // Building with the bundled roots alone cannot fail short of a broken TLS library.
        let http = http.unwrap_or_default();
        Self {
            base: base_url.trim_end_matches('/').to_owned(),
            http,
            budget: Default::default(),
            deadline,
        }
    }

    /// The node's base URL.
    pub fn url(&self) -> &str {
        &self.base
    }

    async fn get<T: DeserializeOwned>(&self, path: &str) -> Result<T, NodeError> {
        let url = format!("{}{path}", self.base);
        let resp = self.send_within_budget(self.http.get(&url), &url).await?;
        self.decode(url, resp).await
    }

    async fn decode<T: DeserializeOwned>(
        &self,
        url: String,
        resp: reqwest::Response,
    ) -> Result<T, NodeError> {
        let status = resp.status();
        let bytes = resp.bytes().await.map_err(|e| self.failed(&url, &e))?;
        decode_answer(url, status, &bytes)
    }

    /// The error of a request that failed in transport; a timeout lengthens the next deadline.
    fn failed(&self, url: &str, e: &reqwest::Error) -> NodeError {
        if e.is_timeout() {
            self.deadline.timed_out();
        }
        unreachable(url, e)
    }

    /// Sends one try of a request with the current deadline, and tells the deadline how it went.
    async fn send_once(
        &self,
        request: reqwest::RequestBuilder,
        url: &str,
    ) -> Result<reqwest::Response, NodeError> {
        let started = std::time::Instant::now();
        let resp = request
            .timeout(self.deadline.current())
            .send()
            .await
            .map_err(|e| self.failed(url, &e))?;
        self.deadline.answered(started.elapsed());
        Ok(resp)
    }

    /// Sends a request under the node's [`super::budget::RequestBudget`]: a 429 pauses every caller of
    /// this client for the node's `Retry-After`, and the request is tried again after the pause (a few
    /// times, then the 429 is the caller's error).
    async fn send_within_budget(
        &self,
        request: reqwest::RequestBuilder,
        url: &str,
    ) -> Result<reqwest::Response, NodeError> {
        const TRIES: usize = 3;
        for attempt in 1..=TRIES {
            let Some(req) = request.try_clone() else { break };
            let _permit = self.budget.permit().await;
            let resp = self.send_once(req, url).await?;
            if resp.status() != reqwest::StatusCode::TOO_MANY_REQUESTS || attempt == TRIES {
                return Ok(resp);
            }
            let retry_after = resp
                .headers()
                .get(reqwest::header::RETRY_AFTER)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.trim().parse::<u64>().ok())
                .map(Duration::from_secs);
            self.budget.overloaded(retry_after);
        }
        let _permit = self.budget.permit().await;
        self.send_once(request, url).await
    }

    /// `GET /status`.
    pub async fn status(&self) -> Result<StatusResponse, NodeError> {
        self.get("/status").await
    }

    /// `GET /block/{height}`; `Ok(None)` when the node has no such block yet.
    pub async fn block(&self, height: u64) -> Result<Option<Block>, NodeError> {
        match self.get(&format!("/block/{height}")).await {
            Ok(b) => Ok(Some(b)),
            Err(NodeError::NotFound { .. }) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// `GET /balance/{address}`.
    pub async fn balance(&self, address: &str) -> Result<BalanceResponse, NodeError> {
        self.get(&format!("/balance/{address}")).await
    }

    /// `GET /nonce/{address}`: the next nonce, counting queued transactions.
    pub async fn pending_nonce(&self, address: &str) -> Result<u64, NodeError> {
        self.get::<NonceResponse>(&format!("/nonce/{address}")).await.map(|r| r.nonce)
    }

    /// `GET /tx/{hash}/receipt`; `Ok(None)` when the node does not know the hash.
    pub async fn receipt(&self, tx_hash: &str) -> Result<Option<ReceiptResponse>, NodeError> {
        match self.get(&format!("/tx/{tx_hash}/receipt")).await {
            Ok(r) => Ok(Some(r)),
            Err(NodeError::NotFound { .. }) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// `POST /tx/send`. A `rejected` answer is an error carrying the node's reason.
    pub async fn send_tx(&self, tx: &Transaction) -> Result<String, NodeError> {
        let url = format!("{}/tx/send", self.base);
        let resp = self.send_within_budget(self.http.post(&url).json(tx), &url).await?;
        let answer: SendTxResponse = self.decode(url, resp).await?;
        match answer.status {
            SendStatus::Received => Ok(answer.tx_hash),
            SendStatus::Rejected => Err(NodeError::Rejected {
                tx_hash: answer.tx_hash,
                reason: answer.error.unwrap_or_else(|| "no reason given".to_owned()),
            }),
        }
    }

    /// Looks for `tx_hash` in blocks `from..=head`; the block list is the authority on inclusion
    /// (receipts can stay `pending` after a tx is in a block). Answers the including height, if any, and
    /// the last height scanned, so a caller can resume from there.
    pub async fn find_tx(&self, tx_hash: &str, from: u64) -> Result<(Option<u64>, u64), NodeError> {
        let head = self.status().await?.height;
        for h in from..=head {
            let Some(block) = self.block(h).await? else { return Ok((None, h.saturating_sub(1))) };
            if block.txs.iter().any(|tx| tx.hash_hex() == tx_hash) {
                return Ok((Some(h), h));
            }
        }
        Ok((None, head))
    }
}

fn unreachable(url: &str, e: &reqwest::Error) -> NodeError {
    // reqwest's errors repeat their source in their own message: keep each cause once.
    let mut reason = e.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        let cause = s.to_string();
        if !reason.contains(&cause) {
            reason = format!("{reason}: {cause}");
        }
        source = s.source();
    }
    NodeError::Unreachable { url: url.to_owned(), reason }
}

/// An answer's status and body as a `T`, or the error an operator sees; no I/O, so that it can be fuzzed.
pub(crate) fn decode_answer<T: DeserializeOwned>(
    url: String,
    status: reqwest::StatusCode,
    bytes: &[u8],
) -> Result<T, NodeError> {
    if status == reqwest::StatusCode::NOT_FOUND {
        return Err(NodeError::NotFound { url });
    }
    if !status.is_success() {
        let body: String = String::from_utf8_lossy(bytes).chars().take(500).collect();
        return Err(NodeError::Status { url, status: status.as_u16(), body });
    }
    serde_json::from_slice(bytes).map_err(|e| NodeError::Decode { url, reason: e.to_string() })
}
