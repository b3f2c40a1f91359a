//! Blocks as `/block/{h}` returns them, and the header hash (the block JSON carries no hash field).

use crate::{hashing::sha256_hex, tx::Transaction};
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// A block header, field for field as the node serialises it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BlockHeader {
    /// Height; genesis is 0.
    pub height: u64,
    /// Hash of the previous block's header.
    pub prev_hash: String,
    /// Unix time in seconds.
    pub timestamp: i64,
    /// e.g. `cpc-devnet-1`.
    pub chain_id: String,
    /// The proposer's `cpcvalcons1...` address.
    pub proposer_address: String,
    /// Consensus round.
    pub round: u64,
    /// Root over the block's transactions.
    pub tx_root: String,
    /// Root of the state after the block.
    pub state_root: String,
    /// Merkle root over the block's ComputeResults, `""` if none (see [`crate::compute_root`]).
    pub compute_root: String,
    /// Gas used by the block's transactions.
    pub gas_used: u64,
    /// The block's gas limit.
    pub gas_limit: u64,
    /// Reserved by the node; `null` today.
    #[serde(default)]
    pub zk_state_proof_hash: Option<String>,
    /// Reserved by the node; `null` today.
    #[serde(default)]
    pub zk_compute_proof_hash: Option<String>,
}

impl BlockHeader {
    /// The exact string the node hashes.
    pub fn hash_preimage(&self) -> String {
        format!(
            "{}{}{}{}{}{}{}{}{}{}{}",
            self.height,
            self.prev_hash,
            self.timestamp,
            self.chain_id,
            self.proposer_address,
            self.round,
            self.tx_root,
            self.state_root,
            self.compute_root,
            self.gas_used,
            self.gas_limit
        )
    }

    /// The block hash, hex (what `/status` calls `last_hash` and the next header's `prev_hash`).
    pub fn hash(&self) -> String {
        sha256_hex(self.hash_preimage())
    }
}

/// A block as `/block/{h}` returns it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Block {
    /// The header.
    pub header: BlockHeader,
    /// Transactions in block order.
    #[serde(default)]
    pub txs: Vec<Transaction>,
    /// Post-quantum signature of the proposer, when the node adds one.
    #[serde(default)]
    pub pq_signature: Option<Value>,
    /// Scheme of `pq_signature`.
    #[serde(default)]
    pub pq_sig_scheme_id: Option<Value>,
}
