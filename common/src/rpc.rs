//! JSON shapes of the node's HTTP answers, shared by the client (coordinator) and the devnet server.

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// `GET /status`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatusResponse {
    /// Height of the newest block.
    pub height: u64,
    /// Hash of block `height`.
    pub last_hash: String,
    /// Network name, e.g. `cpc-devnet-1`.
    pub network: String,
    /// Transactions waiting in the mempool.
    pub mempool_size: u64,
    /// Current epoch.
    #[serde(default)]
    pub epoch: u64,
}

/// `GET /balance/{addr}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BalanceResponse {
    /// The address asked for.
    pub address: String,
    /// Balance in 10^-18 CPC, as a decimal string.
    pub balance: String,
    /// Confirmed nonce (next nonce ignoring the mempool).
    pub nonce: u64,
}

impl BalanceResponse {
    /// The balance as an integer.
    pub fn balance_u128(&self) -> Option<u128> {
        self.balance.parse().ok()
    }
}

/// `GET /nonce/{addr}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NonceResponse {
    /// The address asked for.
    pub address: String,
    /// Next nonce, counting the sender's queued transactions.
    pub nonce: u64,
    /// Always `true`: the answer includes the mempool.
    #[serde(default)]
    pub pending: bool,
}

/// `POST /tx/send` status field.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SendStatus {
    /// Admitted to the mempool.
    Received,
    /// Refused; `error` says why.
    Rejected,
}

/// `POST /tx/send` (HTTP 200 in both cases).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SendTxResponse {
    /// The transaction's hash.
    pub tx_hash: String,
    /// Received or rejected.
    pub status: SendStatus,
    /// The node's reason when rejected.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// Receipt status.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ReceiptStatus {
    /// In the mempool (or, as seen on the real node, already in a block: check the block).
    Pending,
    /// In a block.
    Confirmed,
    /// Dropped.
    Failed,
}

/// `GET /tx/{hash}/receipt`. Receipts can lie (stay `pending` after inclusion): the block is the authority.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReceiptResponse {
    /// The transaction's hash.
    pub tx_hash: String,
    /// Its status.
    pub status: ReceiptStatus,
    /// Block height once included.
    #[serde(default)]
    pub block_height: Option<u64>,
    /// Inclusion time.
    #[serde(default)]
    pub timestamp: Option<Value>,
    /// Why it failed.
    #[serde(default)]
    pub error: Option<String>,
}
