//! The devnet's state machine: accounts, mempool admission, block production, with no I/O and no clock
//! (callers pass the time), so every rule can be unit-tested.
//!
//! It follows the public node (`blockchain/core/mempool.py`, `blockchain/core/state.py`):
//!
//! - Admission, in the node's order and with its reason strings: `already_in_pool`,
//!   `gas_price X < min Y`, `unknown_tx_type`, `gas_limit X < base_gas Y`, `fee X < needed_fee Y`,
//!   `mempool_full`, `sender_limit_exceeded`, `missing_sig_or_key`, `pub_key_mismatch`,
//!   `invalid_key_format: …`, `invalid_signature`, `crypto_error: …`, `transfer_amount_zero`,
//!   `insufficient_balance…`, `nonce_too_low…`. Where the node's token carries no numbers the devnet
//!   appends them after `: ` (`insufficient_balance: have X, need Y`); match on the token before `:`.
//! - One deliberate difference: the node parks a transaction whose nonce is ahead of the sender's pending
//!   nonce in a side queue and answers `received`; the devnet rejects it with
//!   `nonce_too_high: expected X, got Y`, so a worker's nonce gap shows at once instead of stalling.
//! - Inclusion re-applies every transaction and drops the ones that fail, with the node's messages:
//!   `Invalid nonce: expected X, got Y`, `Insufficient balance: have X, need Y`,
//!   `Transfer must have to_address`, `Invalid ComputeResult: …` (including
//!   `Worker address mismatch: payload X vs tx Y`). The fee charged is `base_gas × gas_price` (burned).
//!
//! Roots the node does not specify are defined here:
//! - `tx_root`: hex Merkle root ([`cpc_common::merkle_root`]) over the 32-byte transaction hashes in block
//!   order; 64 zeros for a block without transactions.
//! - `state_root`: `sha256_hex` of the concatenation, over accounts sorted by address, of
//!   `address:balance:nonce;` (decimal numbers).

use cpc_common::{
    Address, Block, BlockHeader, ComputeResult, Digest32, PublicKey, SecretKey, Signature,
    Transaction, TxType, merkle_root, sha256, sha256_hex, tx::MAX_PENDING_PER_SENDER,
};
use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};

/// The devnet's chain id, as the public devnet names it.
pub const DEVNET_CHAIN_ID: &str = "cpc-devnet-1";
/// The public devnet faucet key (devnet only), which holds the premine.
pub const FAUCET_PRIVATE_KEY: &str =
    "4f3edf982522b4e51b7e8b5f2f9c4d1d7a9e5f8c2b6d4e1a3c5b7d9e0f1a2b3c";
/// Default premine of the faucet: 10^9 CPC in 10^-18 units.
pub const DEFAULT_PREMINE: u128 = 1_000_000_000 * 1_000_000_000_000_000_000;
/// Lowest gas price admitted.
pub const DEFAULT_MIN_GAS_PRICE: u64 = 1000;
/// Gas limit of a block (the value the node's headers carry).
pub const DEFAULT_BLOCK_GAS_LIMIT: u64 = 50_000_000;
/// Most transactions the mempool holds, all senders together.
pub const DEFAULT_MEMPOOL_CAP: usize = 10_000;
/// Blocks per epoch (`/status` `epoch = height / epoch_length`).
pub const DEFAULT_EPOCH_LENGTH: u64 = 100;
/// Seed of the fixed devnet validator key: its private key is `sha256(seed)`.
pub const VALIDATOR_KEY_SEED: &str = "cpc-devnet-1 validator key";
/// `prev_hash` of the genesis block.
pub const GENESIS_PREV_HASH: &str =
    "0000000000000000000000000000000000000000000000000000000000000000";

/// Consensus parameters of the devnet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChainConfig {
    /// Chain id written into every header and answered as `network`.
    pub chain_id: String,
    /// Lowest admitted gas price.
    pub min_gas_price: u64,
    /// Gas limit per block; transactions that do not fit wait for the next block.
    pub block_gas_limit: u64,
    /// Genesis balance of [`Self::faucet_address`].
    pub premine: u128,
    /// The account holding the premine.
    pub faucet_address: String,
    /// `cpcvalcons1…` address written as every block's proposer.
    pub proposer_address: String,
    /// Global mempool cap (`mempool_full` beyond).
    pub mempool_cap: usize,
    /// Per-sender mempool cap (`sender_limit_exceeded` beyond).
    pub per_sender_cap: usize,
    /// Blocks per epoch.
    pub epoch_length: u64,
}

impl Default for ChainConfig {
    fn default() -> Self {
        Self {
            chain_id: DEVNET_CHAIN_ID.to_owned(),
            min_gas_price: DEFAULT_MIN_GAS_PRICE,
            block_gas_limit: DEFAULT_BLOCK_GAS_LIMIT,
            premine: DEFAULT_PREMINE,
            faucet_address: faucet_key().address().to_string(),
            proposer_address: Address::valcons_from_public_key(
                &validator_key().public_key().to_compressed(),
            ),
            mempool_cap: DEFAULT_MEMPOOL_CAP,
            per_sender_cap: MAX_PENDING_PER_SENDER,
            epoch_length: DEFAULT_EPOCH_LENGTH,
        }
    }
}

/// The devnet faucet key ([`FAUCET_PRIVATE_KEY`]).
pub fn faucet_key() -> SecretKey {
    // A valid constant scalar: parsing cannot fail; fall back to the validator key shape if it ever did.
    SecretKey::from_hex(FAUCET_PRIVATE_KEY).unwrap_or_else(|_| validator_key())
}

/// The fixed devnet validator key, `sha256(VALIDATOR_KEY_SEED)`.
pub fn validator_key() -> SecretKey {
    // sha256 of a constant is a valid scalar with overwhelming probability, and this one is.
    SecretKey::from_hex(&sha256_hex(VALIDATOR_KEY_SEED)).unwrap_or_else(|_| SecretKey::generate())
}

/// One account's confirmed state.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Account {
    /// Balance in 10^-18 CPC.
    pub balance: u128,
    /// Next nonce the chain expects (number of included transactions).
    pub nonce: u64,
}

/// Why `/tx/send` answers `rejected`. The `Display` text is the `error` field.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Rejection {
    /// The same transaction hash is already queued.
    #[error("already_in_pool")]
    AlreadyInPool,
    /// `gas_price` below the minimum.
    #[error("gas_price {got} < min {min}")]
    GasPriceTooLow {
        /// Offered.
        got: u64,
        /// Minimum.
        min: u64,
    },
    /// A type without a base gas here (the devnet knows TRANSFER and SUBMIT_RESULT).
    #[error("unknown_tx_type")]
    UnknownTxType,
    /// `gas_limit` below the type's base gas.
    #[error("gas_limit {got} < base_gas {need}")]
    GasLimitTooLow {
        /// Offered.
        got: u64,
        /// Base gas.
        need: u64,
    },
    /// `fee` below `base_gas × gas_price`.
    #[error("fee {got} < needed_fee {need}")]
    FeeTooLow {
        /// Offered.
        got: u128,
        /// Needed.
        need: u128,
    },
    /// The mempool holds its cap.
    #[error("mempool_full")]
    MempoolFull,
    /// The sender has `per_sender_cap` transactions queued.
    #[error("sender_limit_exceeded")]
    SenderLimitExceeded,
    /// Empty `signature` or `pub_key`.
    #[error("missing_sig_or_key")]
    MissingSigOrKey,
    /// `pub_key` derives another address than `from_address`.
    #[error("pub_key_mismatch")]
    PubKeyMismatch,
    /// `pub_key` is not a key.
    #[error("invalid_key_format: {0}")]
    InvalidKeyFormat(String),
    /// The signature does not verify.
    #[error("invalid_signature")]
    InvalidSignature,
    /// The signature is not hex.
    #[error("crypto_error: {0}")]
    CryptoError(String),
    /// A TRANSFER of nothing.
    #[error("transfer_amount_zero")]
    TransferAmountZero,
    /// The sender cannot pay `amount + fee` of this and its queued transactions.
    #[error("insufficient_balance: have {have}, need {need}")]
    InsufficientBalance {
        /// Confirmed balance.
        have: u128,
        /// `amount + fee` of the queued transactions and this one.
        need: u128,
    },
    /// Nonce below the sender's pending nonce.
    #[error("nonce_too_low: expected {expected}, got {got}")]
    NonceTooLow {
        /// Pending nonce.
        expected: u64,
        /// Offered.
        got: u64,
    },
    /// Nonce above the sender's pending nonce (the node would park it; the devnet refuses gaps).
    #[error("nonce_too_high: expected {expected}, got {got}")]
    NonceTooHigh {
        /// Pending nonce.
        expected: u64,
        /// Offered.
        got: u64,
    },
}

/// What became of a transaction that left the mempool.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Included in block `height`.
    Confirmed {
        /// Block height.
        height: u64,
        /// Block timestamp.
        timestamp: i64,
    },
    /// Dropped by the block producer.
    Failed {
        /// The node's message.
        error: String,
        /// When it was dropped.
        timestamp: i64,
    },
}

/// Result of [`Chain::produce_block`]: what the store must persist.
#[derive(Debug, Clone)]
pub struct ProducedBlock {
    /// The new block.
    pub block: Block,
    /// Accounts changed by the block, with their new state.
    pub accounts: Vec<(String, Account)>,
    /// Outcome of every transaction that left the mempool (included or dropped), by hash.
    pub outcomes: Vec<(String, Outcome)>,
}

/// Counters for `/metrics`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ChainStats {
    /// Transactions admitted to the mempool.
    pub received: u64,
    /// Transactions refused at admission.
    pub rejected: u64,
    /// Transactions included in blocks.
    pub included: u64,
    /// Transactions dropped by the block producer.
    pub dropped: u64,
    /// Blocks produced by this process.
    pub blocks: u64,
}

#[derive(Debug, Clone)]
struct PoolEntry {
    hash: String,
    tx: Transaction,
    base_gas: u64,
    received_at: i64,
}

#[derive(Debug, Clone, Copy, Default)]
struct SenderQueue {
    count: usize,
    /// Sum of `amount + fee` of the queued transactions.
    cost: u128,
}

/// The devnet's chain state.
#[derive(Debug)]
pub struct Chain {
    config: ChainConfig,
    accounts: BTreeMap<String, Account>,
    tip: BlockHeader,
    tip_hash: String,
    mempool: VecDeque<PoolEntry>,
    in_pool: HashMap<String, i64>,
    senders: HashMap<String, SenderQueue>,
    stats: ChainStats,
}

impl Chain {
    /// A new chain with the faucet premine; returns the genesis block (height 0) to persist.
    pub fn genesis(config: ChainConfig, timestamp: i64) -> (Self, ProducedBlock) {
        let mut accounts = BTreeMap::new();
        if config.premine > 0 {
            accounts.insert(
                config.faucet_address.clone(),
                Account { balance: config.premine, nonce: 0 },
            );
        }
        let header = BlockHeader {
            height: 0,
            prev_hash: GENESIS_PREV_HASH.to_owned(),
            timestamp,
            chain_id: config.chain_id.clone(),
            proposer_address: config.proposer_address.clone(),
            round: 0,
            tx_root: tx_root(&[]),
            state_root: state_root(&accounts),
            compute_root: String::new(),
            gas_used: 0,
            gas_limit: config.block_gas_limit,
            zk_state_proof_hash: None,
            zk_compute_proof_hash: None,
        };
        let block = Block { header, txs: Vec::new(), pq_signature: None, pq_sig_scheme_id: None };
        let produced = ProducedBlock {
            accounts: accounts.iter().map(|(a, s)| (a.clone(), *s)).collect(),
            block: block.clone(),
            outcomes: Vec::new(),
        };
        (Self::restore(config, block.header, accounts), produced)
    }

    /// A chain resumed from persisted state: the tip header and every account.
    pub fn restore(
        config: ChainConfig,
        tip: BlockHeader,
        accounts: impl IntoIterator<Item = (String, Account)>,
    ) -> Self {
        let tip_hash = tip.hash();
        Self {
            config,
            accounts: accounts.into_iter().collect(),
            tip,
            tip_hash,
            mempool: VecDeque::new(),
            in_pool: HashMap::new(),
            senders: HashMap::new(),
            stats: ChainStats::default(),
        }
    }

    /// The consensus parameters.
    pub fn config(&self) -> &ChainConfig {
        &self.config
    }

    /// Height of the newest block.
    pub fn height(&self) -> u64 {
        self.tip.height
    }

    /// Hash of the newest block.
    pub fn last_hash(&self) -> &str {
        &self.tip_hash
    }

    /// Header of the newest block.
    pub fn tip(&self) -> &BlockHeader {
        &self.tip
    }

    /// Current epoch.
    pub fn epoch(&self) -> u64 {
        self.tip.height / self.config.epoch_length.max(1)
    }

    /// Transactions waiting in the mempool.
    pub fn mempool_len(&self) -> usize {
        self.mempool.len()
    }

    /// Counters since start.
    pub fn stats(&self) -> ChainStats {
        self.stats
    }

    /// Confirmed state of `address` (zero for an unknown address, as the node answers).
    pub fn account(&self, address: &str) -> Account {
        self.accounts.get(address).copied().unwrap_or_default()
    }

    /// Number of accounts with state.
    pub fn account_count(&self) -> usize {
        self.accounts.len()
    }

    /// Next nonce of `address`, counting its queued transactions.
    pub fn pending_nonce(&self, address: &str) -> u64 {
        let queued = self.senders.get(address).map_or(0, |q| q.count);
        self.account(address).nonce.saturating_add(queued as u64)
    }

    /// When the queued transaction `hash` was admitted, if it is queued.
    pub fn pending_since(&self, hash: &str) -> Option<i64> {
        self.in_pool.get(hash).copied()
    }

    /// Mempool admission at time `now`; returns the transaction hash.
    pub fn submit(&mut self, tx: Transaction, now: i64) -> Result<String, (String, Rejection)> {
        let hash = tx.hash_hex();
        match self.admit(&tx, &hash) {
            Ok(base_gas) => {
                let q = self.senders.entry(tx.from_address.clone()).or_default();
                q.count += 1;
                q.cost = q.cost.saturating_add(cost(&tx));
                self.in_pool.insert(hash.clone(), now);
                self.mempool.push_back(PoolEntry {
                    hash: hash.clone(),
                    tx,
                    base_gas,
                    received_at: now,
                });
                self.stats.received += 1;
                Ok(hash)
            }
            Err(r) => {
                self.stats.rejected += 1;
                Err((hash, r))
            }
        }
    }

    fn admit(&self, tx: &Transaction, hash: &str) -> Result<u64, Rejection> {
        if self.in_pool.contains_key(hash) {
            return Err(Rejection::AlreadyInPool);
        }
        if tx.gas_price < self.config.min_gas_price {
            return Err(Rejection::GasPriceTooLow {
                got: tx.gas_price,
                min: self.config.min_gas_price,
            });
        }
        let base_gas = tx.tx_type.base_gas().ok_or(Rejection::UnknownTxType)?;
        if tx.gas_limit < base_gas {
            return Err(Rejection::GasLimitTooLow { got: tx.gas_limit, need: base_gas });
        }
        let need = u128::from(base_gas) * u128::from(tx.gas_price);
        if tx.fee < need {
            return Err(Rejection::FeeTooLow { got: tx.fee, need });
        }
        if self.mempool.len() >= self.config.mempool_cap {
            return Err(Rejection::MempoolFull);
        }
        let queued = self.senders.get(&tx.from_address).copied().unwrap_or_default();
        if queued.count >= self.config.per_sender_cap {
            return Err(Rejection::SenderLimitExceeded);
        }
        if tx.signature.is_empty() || tx.pub_key.is_empty() {
            return Err(Rejection::MissingSigOrKey);
        }
        if let Some(pos) = fromhex_error(&tx.pub_key) {
            return Err(Rejection::InvalidKeyFormat(fromhex_message(pos)));
        }
        let key = PublicKey::from_hex(&tx.pub_key)
            .map_err(|e| Rejection::InvalidKeyFormat(e.to_string()))?;
        if key.address().as_str() != tx.from_address {
            return Err(Rejection::PubKeyMismatch);
        }
        if let Some(pos) = fromhex_error(&tx.signature) {
            return Err(Rejection::CryptoError(fromhex_message(pos)));
        }
        let sig = Signature::from_hex(&tx.signature).map_err(|_| Rejection::InvalidSignature)?;
        if !key.verify_digest(&tx.hash(), &sig) {
            return Err(Rejection::InvalidSignature);
        }
        if tx.tx_type == TxType::Transfer && tx.amount == 0 {
            return Err(Rejection::TransferAmountZero);
        }
        let account = self.account(&tx.from_address);
        let need = queued.cost.saturating_add(cost(tx));
        if account.balance < need {
            return Err(Rejection::InsufficientBalance { have: account.balance, need });
        }
        let expected = account.nonce.saturating_add(queued.count as u64);
        if tx.nonce < expected {
            return Err(Rejection::NonceTooLow { expected, got: tx.nonce });
        }
        if tx.nonce > expected {
            return Err(Rejection::NonceTooHigh { expected, got: tx.nonce });
        }
        Ok(base_gas)
    }

    /// Builds the next block at time `timestamp`: takes mempool transactions in arrival order while they
    /// fit the block gas limit, re-applies each and drops those that fail.
    pub fn produce_block(&mut self, timestamp: i64) -> ProducedBlock {
        let height = self.tip.height + 1;
        let timestamp = timestamp.max(self.tip.timestamp);
        let mut included = Vec::new();
        let mut hashes: Vec<Digest32> = Vec::new();
        let mut leaves: Vec<Digest32> = Vec::new();
        let mut outcomes = Vec::new();
        let mut touched: HashSet<String> = HashSet::new();
        let mut gas_used: u64 = 0;
        let mut rest = VecDeque::new();
        while let Some(entry) = self.mempool.pop_front() {
            if gas_used.saturating_add(entry.base_gas) > self.config.block_gas_limit {
                rest.push_back(entry);
                rest.extend(self.mempool.drain(..));
                break;
            }
            match self.apply(&entry.tx) {
                Ok(leaf) => {
                    gas_used += entry.base_gas;
                    touched.insert(entry.tx.from_address.clone());
                    if let Some(to) = entry
                        .tx
                        .to_address
                        .as_ref()
                        .filter(|_| entry.tx.tx_type == TxType::Transfer)
                    {
                        touched.insert(to.clone());
                    }
                    leaves.extend(leaf);
                    hashes.push(entry.tx.hash());
                    outcomes.push((entry.hash, Outcome::Confirmed { height, timestamp }));
                    included.push(entry.tx);
                    self.stats.included += 1;
                }
                Err(error) => {
                    outcomes.push((entry.hash, Outcome::Failed { error, timestamp }));
                    self.stats.dropped += 1;
                }
            }
        }
        self.mempool = rest;
        self.prune_broken_sequences(timestamp, &mut outcomes);

        let header = BlockHeader {
            height,
            prev_hash: self.tip_hash.clone(),
            timestamp,
            chain_id: self.config.chain_id.clone(),
            proposer_address: self.config.proposer_address.clone(),
            round: 0,
            tx_root: hex::encode(merkle_root(&hashes)),
            state_root: state_root(&self.accounts),
            compute_root: if leaves.is_empty() {
                String::new()
            } else {
                hex::encode(merkle_root(&leaves))
            },
            gas_used,
            gas_limit: self.config.block_gas_limit,
            zk_state_proof_hash: None,
            zk_compute_proof_hash: None,
        };
        self.tip_hash = header.hash();
        self.tip = header.clone();
        self.stats.blocks += 1;
        let mut accounts: Vec<(String, Account)> =
            touched.into_iter().map(|a| (a.clone(), self.account(&a))).collect();
        accounts.sort_by(|x, y| x.0.cmp(&y.0));
        ProducedBlock {
            block: Block { header, txs: included, pq_signature: None, pq_sig_scheme_id: None },
            accounts,
            outcomes,
        }
    }

    /// Applies `tx` to the accounts, or leaves them untouched and says why (the node's message).
    /// Returns the `compute_root` leaf of a SUBMIT_RESULT.
    fn apply(&mut self, tx: &Transaction) -> Result<Option<Digest32>, String> {
        let sender = self.account(&tx.from_address);
        if tx.nonce != sender.nonce {
            return Err(format!("Invalid nonce: expected {}, got {}", sender.nonce, tx.nonce));
        }
        let base_gas = tx.tx_type.base_gas().unwrap_or(0);
        let spent_fee = u128::from(base_gas) * u128::from(tx.gas_price);
        let total = tx.amount.checked_add(spent_fee);
        let total = match total {
            Some(t) if t <= sender.balance => t,
            _ => {
                let need =
                    total.map_or_else(|| format!("{} + {spent_fee}", tx.amount), |t| t.to_string());
                return Err(format!("Insufficient balance: have {}, need {need}", sender.balance));
            }
        };
        let mut leaf = None;
        match tx.tx_type {
            TxType::Transfer if tx.to_address.as_deref().is_none_or(str::is_empty) => {
                return Err("Transfer must have to_address".to_owned());
            }
            TxType::SubmitResult => {
                let result = ComputeResult::from_payload(&tx.payload)
                    .map_err(|e| format!("Invalid ComputeResult: {e}"))?;
                if result.worker_address != tx.from_address {
                    return Err(format!(
                        "Invalid ComputeResult: Worker address mismatch: payload {} vs tx {}",
                        result.worker_address, tx.from_address
                    ));
                }
                leaf = Some(result.leaf());
            }
            _ => {}
        }
        let entry = self.accounts.entry(tx.from_address.clone()).or_default();
        entry.balance -= total;
        entry.nonce += 1;
        if tx.tx_type == TxType::Transfer
            && let Some(to) = &tx.to_address
        {
            let recipient = self.accounts.entry(to.clone()).or_default();
            recipient.balance = recipient.balance.saturating_add(tx.amount);
        }
        Ok(leaf)
    }

    /// After a block, drops queued transactions whose nonce no longer follows the sender's confirmed nonce
    /// (an earlier one was dropped), and recounts the per-sender queues.
    fn prune_broken_sequences(&mut self, timestamp: i64, outcomes: &mut Vec<(String, Outcome)>) {
        let mut next: HashMap<String, u64> = HashMap::new();
        let mut kept = VecDeque::with_capacity(self.mempool.len());
        self.senders.clear();
        self.in_pool.clear();
        for entry in self.mempool.drain(..) {
            let expected = next.entry(entry.tx.from_address.clone()).or_insert_with(|| {
                self.accounts.get(&entry.tx.from_address).map_or(0, |a| a.nonce)
            });
            if entry.tx.nonce == *expected {
                *expected += 1;
                let q = self.senders.entry(entry.tx.from_address.clone()).or_default();
                q.count += 1;
                q.cost = q.cost.saturating_add(cost(&entry.tx));
                self.in_pool.insert(entry.hash.clone(), entry.received_at);
                kept.push_back(entry);
            } else {
                let error = format!("Invalid nonce: expected {expected}, got {}", entry.tx.nonce);
                outcomes.push((entry.hash, Outcome::Failed { error, timestamp }));
                self.stats.dropped += 1;
            }
        }
        self.mempool = kept;
    }
}

/// What admission reserves for a transaction: `amount + fee` as offered (the node's check).
fn cost(tx: &Transaction) -> u128 {
    tx.amount.saturating_add(tx.fee)
}

/// `tx_root` as the devnet defines it (see the module doc).
pub fn tx_root(txs: &[Transaction]) -> String {
    let hashes: Vec<Digest32> = txs.iter().map(Transaction::hash).collect();
    hex::encode(merkle_root(&hashes))
}

/// `state_root` as the devnet defines it (see the module doc).
pub fn state_root(accounts: &BTreeMap<String, Account>) -> String {
    let mut text = String::with_capacity(accounts.len() * 80);
    for (address, a) in accounts {
        text.push_str(address);
        text.push(':');
        text.push_str(&a.balance.to_string());
        text.push(':');
        text.push_str(&a.nonce.to_string());
        text.push(';');
    }
    hex::encode(sha256(text))
}

/// Where Python's `bytes.fromhex` would fail on `s`, if it would: the index of the first character that is
/// not part of a hex pair (spaces between pairs are allowed, as in Python).
fn fromhex_error(s: &str) -> Option<usize> {
    let b = s.as_bytes();
    let mut i = 0;
    while i < b.len() {
        if b[i] == b' ' {
            i += 1;
            continue;
        }
        if !b[i].is_ascii_hexdigit() {
            return Some(i);
        }
        match b.get(i + 1) {
            Some(c) if c.is_ascii_hexdigit() => i += 2,
            _ => return Some(i + 1),
        }
    }
    None
}

fn fromhex_message(pos: usize) -> String {
    format!("non-hexadecimal number found in fromhex() arg at position {pos}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fixtures::{submit_result, transfer};
    use serde_json::json;

    fn funded(keys: &[&SecretKey], balance: u128) -> Chain {
        let config = ChainConfig { premine: 0, ..ChainConfig::default() };
        let (mut chain, _) = Chain::genesis(config, 1_000);
        for k in keys {
            chain.accounts.insert(k.address().to_string(), Account { balance, nonce: 0 });
        }
        chain
    }

    fn reason(chain: &mut Chain, tx: Transaction) -> String {
        chain.submit(tx, 0).err().map(|(_, r)| r.to_string()).unwrap_or_else(|| "received".into())
    }

    #[test]
    fn genesis_funds_the_faucet_and_uses_the_devnet_ids() {
        let (chain, genesis) = Chain::genesis(ChainConfig::default(), 5);
        assert_eq!(chain.height(), 0);
        assert_eq!(chain.account(&faucet_key().address().to_string()).balance, DEFAULT_PREMINE);
        assert_eq!(genesis.block.header.chain_id, "cpc-devnet-1");
        assert!(genesis.block.header.proposer_address.starts_with("cpcvalcons1"));
        assert_eq!(genesis.block.header.tx_root, "0".repeat(64));
        assert_eq!(chain.last_hash(), genesis.block.header.hash());
    }

    #[test]
    fn admission_reasons_follow_the_node() {
        let a = SecretKey::generate();
        let b = SecretKey::generate();
        let mut chain = funded(&[&a], 10u128.pow(18));
        let to = b.address().to_string();

        let mut t = transfer(&a, &to, 1, 0);
        t.gas_price = 999;
        t.sign(&a).expect("sign");
        assert_eq!(reason(&mut chain, t), "gas_price 999 < min 1000");

        let mut t = transfer(&a, &to, 1, 0);
        t.gas_limit = 20_999;
        t.sign(&a).expect("sign");
        assert_eq!(reason(&mut chain, t), "gas_limit 20999 < base_gas 21000");

        let mut t = transfer(&a, &to, 1, 0);
        t.fee -= 1;
        t.sign(&a).expect("sign");
        assert_eq!(reason(&mut chain, t), "fee 20999999 < needed_fee 21000000");

        let mut t = transfer(&a, &to, 1, 0);
        t.tx_type = TxType::Stake;
        assert_eq!(reason(&mut chain, t), "unknown_tx_type");

        let mut t = transfer(&a, &to, 1, 0);
        t.signature.clear();
        assert_eq!(reason(&mut chain, t), "missing_sig_or_key");

        let mut t = transfer(&a, &to, 1, 0);
        t.pub_key = b.public_key().to_hex();
        assert_eq!(reason(&mut chain, t), "pub_key_mismatch");

        let mut t = transfer(&a, &to, 1, 0);
        t.pub_key = "zz".into();
        assert_eq!(
            reason(&mut chain, t),
            "invalid_key_format: non-hexadecimal number found in fromhex() arg at position 0"
        );

        let mut t = transfer(&a, &to, 1, 0);
        t.amount = 2;
        assert_eq!(reason(&mut chain, t), "invalid_signature");

        let mut t = transfer(&a, &to, 1, 0);
        t.signature.replace_range(0..1, "x");
        assert_eq!(
            reason(&mut chain, t),
            "crypto_error: non-hexadecimal number found in fromhex() arg at position 0"
        );

        assert_eq!(reason(&mut chain, transfer(&a, &to, 0, 0)), "transfer_amount_zero");
        assert_eq!(
            reason(&mut chain, transfer(&a, &to, 10u128.pow(18), 0)),
            format!(
                "insufficient_balance: have {}, need {}",
                10u128.pow(18),
                10u128.pow(18) + 21_000_000
            )
        );
        assert_eq!(
            reason(&mut chain, transfer(&a, &to, 1, 1)),
            "nonce_too_high: expected 0, got 1"
        );

        let ok = transfer(&a, &to, 1, 0);
        assert_eq!(reason(&mut chain, ok.clone()), "received");
        assert_eq!(reason(&mut chain, ok), "already_in_pool");
        assert_eq!(reason(&mut chain, transfer(&a, &to, 2, 0)), "nonce_too_low: expected 1, got 0");
        assert_eq!(chain.pending_nonce(&a.address().to_string()), 1);
        assert_eq!(chain.stats().received, 1);
    }

    #[test]
    fn every_check_stateless_failure_is_rejected_too() {
        // The devnet's node-shaped admission must never accept what cpc-common's pre-flight check refuses.
        let a = SecretKey::generate();
        let mut chain = funded(&[&a], 10u128.pow(20));
        let mut variants = Vec::new();
        let base = transfer(&a, &SecretKey::generate().address().to_string(), 5, 0);
        for f in 0..6 {
            let mut t = base.clone();
            match f {
                0 => t.gas_price = 1,
                1 => t.gas_limit = 1,
                2 => t.fee = 0,
                3 => t.signature = "00".repeat(64),
                4 => t.pub_key = "02".into(),
                _ => t.nonce = 9,
            }
            variants.push(t);
        }
        for t in variants {
            if t.check_stateless().is_err() {
                assert!(chain.submit(t, 0).is_err());
            }
        }
    }

    #[test]
    fn per_sender_and_global_caps() {
        let a = SecretKey::generate();
        let b = SecretKey::generate();
        let mut chain = funded(&[&a, &b], 10u128.pow(24));
        chain.config.per_sender_cap = 3;
        chain.config.mempool_cap = 4;
        let to = SecretKey::generate().address().to_string();
        for n in 0..3 {
            assert_eq!(reason(&mut chain, transfer(&a, &to, 1, n)), "received");
        }
        assert_eq!(reason(&mut chain, transfer(&a, &to, 1, 3)), "sender_limit_exceeded");
        assert_eq!(reason(&mut chain, transfer(&b, &to, 1, 0)), "received");
        assert_eq!(reason(&mut chain, transfer(&b, &to, 1, 1)), "mempool_full");
    }

    #[test]
    fn blocks_apply_transfers_charge_base_fee_and_chain_hashes() {
        let a = SecretKey::generate();
        let to = SecretKey::generate().address().to_string();
        let mut chain = funded(&[&a], 10u128.pow(18));
        let mut t = transfer(&a, &to, 7, 0);
        t.fee *= 3; // offered more than needed: only base_gas × gas_price is charged
        t.sign(&a).expect("sign");
        chain.submit(t.clone(), 0).expect("admitted");
        let prev = chain.last_hash().to_owned();
        let b = chain.produce_block(2_000);
        assert_eq!(b.block.header.height, 1);
        assert_eq!(b.block.header.prev_hash, prev);
        assert_eq!(b.block.header.gas_used, 21_000);
        assert_eq!(b.block.header.tx_root, tx_root(&b.block.txs));
        assert_eq!(b.block.header.compute_root, "");
        assert_eq!(chain.account(&to).balance, 7);
        assert_eq!(
            chain.account(&a.address().to_string()),
            Account { balance: 10u128.pow(18) - 7 - 21_000_000, nonce: 1 }
        );
        assert_eq!(
            b.outcomes,
            vec![(t.hash_hex(), Outcome::Confirmed { height: 1, timestamp: 2_000 })]
        );
        assert_eq!(chain.last_hash(), b.block.header.hash());
        assert_eq!(chain.mempool_len(), 0);
    }

    #[test]
    fn bad_compute_results_are_dropped_and_later_nonces_follow() {
        let w = SecretKey::generate();
        let other = SecretKey::generate();
        let mut chain = funded(&[&w], 10u128.pow(18));
        let addr = w.address().to_string();
        let good = |worker: &str| json!({"task_id": "t", "worker_address": worker, "result_hash": "ab", "proof": "", "nonce": 1, "signature": ""});
        let mut null_proof = good(&addr);
        null_proof["proof"] = serde_json::Value::Null;
        chain.submit(submit_result(&w, 0, null_proof), 0).expect("admitted");
        chain.submit(submit_result(&w, 1, good(&addr)), 0).expect("admitted");
        let b = chain.produce_block(1);
        assert!(b.block.txs.is_empty());
        assert!(matches!(&b.outcomes[0].1, Outcome::Failed { error, .. }
            if error == "Invalid ComputeResult: 1 validation error for ComputeResult: proof: input should be a valid string"));
        assert!(
            matches!(&b.outcomes[1].1, Outcome::Failed { error, .. } if error == "Invalid nonce: expected 0, got 1")
        );
        assert_eq!(chain.account(&addr), Account { balance: 10u128.pow(18), nonce: 0 });

        chain
            .submit(submit_result(&w, 0, good(&other.address().to_string())), 0)
            .expect("admitted");
        let b = chain.produce_block(2);
        assert!(b.block.txs.is_empty());
        assert!(
            matches!(&b.outcomes[0].1, Outcome::Failed { error, .. } if error.contains("Worker address mismatch"))
        );

        let tx = submit_result(&w, 0, good(&addr));
        chain.submit(tx.clone(), 0).expect("admitted");
        let b = chain.produce_block(3);
        assert_eq!(b.block.txs, vec![tx]);
        assert_eq!(Ok(b.block.header.compute_root.clone()), cpc_common::compute_root(&b.block.txs));
        assert_eq!(b.block.header.gas_used, 80_000);
    }

    #[test]
    fn gas_limit_defers_and_broken_sequences_are_pruned() {
        let a = SecretKey::generate();
        let mut chain = funded(&[&a], 10u128.pow(18));
        chain.config.block_gas_limit = 50_000; // two transfers per block
        let to = SecretKey::generate().address().to_string();
        for n in 0..3 {
            chain.submit(transfer(&a, &to, 1, n), 0).expect("admitted");
        }
        assert_eq!(chain.produce_block(1).block.txs.len(), 2);
        assert_eq!(chain.mempool_len(), 1);
        assert_eq!(chain.pending_nonce(&a.address().to_string()), 3);
        assert_eq!(chain.produce_block(2).block.txs.len(), 1);

        // A queued tx whose predecessor fails at inclusion goes too, so the pending nonce stays contiguous.
        let poor = SecretKey::generate();
        chain
            .accounts
            .insert(poor.address().to_string(), Account { balance: 50_000_000, nonce: 0 });
        chain.submit(transfer(&poor, &to, 1, 0), 0).expect("admitted");
        chain.submit(transfer(&poor, &to, 1, 1), 0).expect("admitted");
        chain.accounts.insert(poor.address().to_string(), Account { balance: 10, nonce: 0 });
        let b = chain.produce_block(3);
        assert!(b.block.txs.is_empty());
        assert_eq!(b.outcomes.len(), 2);
        assert_eq!(chain.pending_nonce(&poor.address().to_string()), 0);
    }

    #[test]
    fn state_root_is_order_independent_and_sensitive() {
        let mut x = BTreeMap::new();
        x.insert("b".to_owned(), Account { balance: 1, nonce: 0 });
        x.insert("a".to_owned(), Account { balance: 2, nonce: 1 });
        let mut y = BTreeMap::new();
        y.insert("a".to_owned(), Account { balance: 2, nonce: 1 });
        y.insert("b".to_owned(), Account { balance: 1, nonce: 0 });
        assert_eq!(state_root(&x), state_root(&y));
        y.insert("b".to_owned(), Account { balance: 1, nonce: 1 });
        assert_ne!(state_root(&x), state_root(&y));
    }

    #[test]
    fn fromhex_positions_match_python() {
        assert_eq!(fromhex_error("abcd"), None);
        assert_eq!(fromhex_error("ab cd"), None);
        assert_eq!(fromhex_error("zz"), Some(0));
        assert_eq!(fromhex_error("abc"), Some(3));
        assert_eq!(fromhex_error("a z"), Some(1));
    }
}
