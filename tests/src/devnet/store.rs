//! Persistence of the devnet chain in SQLite: blocks, accounts and receipts, so that a devnet started
//! again with the same `--data-dir` resumes at the same height with the same balances and nonces.
//! Without a data dir the same schema lives in an in-memory database. The mempool is not persisted (the
//! node keeps it in memory too): queued transactions are lost on restart.
//!
//! Tables: `meta(key, value)` (`chain_id`), `blocks(height, hash, json)`, `accounts(address, balance,
//! nonce)` (balance as decimal text: it exceeds SQLite's i64), `receipts(tx_hash, status, block_height,
//! timestamp, error)`. Each block is committed in one SQLite transaction with its accounts and receipts.

use super::chain::{Account, Outcome, ProducedBlock};
use cpc_common::{Block, BlockHeader};
use rusqlite::{Connection, OptionalExtension, params};
use std::path::{Path, PathBuf};

/// File name of the database inside `--data-dir`.
pub const DB_FILE: &str = "devnet.sqlite3";
/// Receipts kept (newest first); older ones are deleted, as the node's bounded receipt store forgets them.
pub const RECEIPT_RETENTION: i64 = 200_000;

/// Storage failures.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// SQLite refused an operation.
    #[error("devnet database error: {0}")]
    Sqlite(#[from] rusqlite::Error),
    /// The data dir could not be created.
    #[error("cannot create data dir {path}: {source}")]
    DataDir {
        /// The directory.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The data dir holds another chain.
    #[error(
        "data dir holds chain `{found}`, not `{expected}`: pass another --data-dir or the matching chain id"
    )]
    ChainMismatch {
        /// Chain id in the database.
        found: String,
        /// Chain id configured.
        expected: String,
    },
    /// A stored row does not decode.
    #[error("corrupt devnet database: {0}")]
    Corrupt(String),
}

/// A receipt as stored: status `confirmed` or `failed`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredReceipt {
    /// The outcome.
    pub outcome: Outcome,
}

/// What [`Store::load`] finds in a non-empty database.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Persisted {
    /// Header of the newest block.
    pub tip: BlockHeader,
    /// Every account with state.
    pub accounts: Vec<(String, Account)>,
}

/// The SQLite store.
#[derive(Debug)]
pub struct Store {
    conn: Connection,
}

impl Store {
    /// Opens (creating if needed) `dir/devnet.sqlite3`.
    pub fn open(dir: &Path) -> Result<Self, StoreError> {
        std::fs::create_dir_all(dir)
            .map_err(|source| StoreError::DataDir { path: dir.to_owned(), source })?;
        let conn = Connection::open(dir.join(DB_FILE))?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "synchronous", "NORMAL")?;
        Self::init(conn)
    }

    /// A store that lives in memory only.
    pub fn in_memory() -> Result<Self, StoreError> {
        Self::init(Connection::open_in_memory()?)
    }

    fn init(conn: Connection) -> Result<Self, StoreError> {
        conn.execute_batch(
            "CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
             CREATE TABLE IF NOT EXISTS blocks (height INTEGER PRIMARY KEY, hash TEXT NOT NULL, json TEXT NOT NULL);
             CREATE TABLE IF NOT EXISTS accounts (address TEXT PRIMARY KEY, balance TEXT NOT NULL, nonce INTEGER NOT NULL);
             CREATE TABLE IF NOT EXISTS receipts (seq INTEGER PRIMARY KEY AUTOINCREMENT, tx_hash TEXT NOT NULL UNIQUE,
                 status TEXT NOT NULL, block_height INTEGER, timestamp INTEGER NOT NULL, error TEXT);",
        )?;
        Ok(Self { conn })
    }

    /// Checks (or records, on a fresh database) the chain id.
    pub fn check_chain_id(&self, chain_id: &str) -> Result<(), StoreError> {
        let found: Option<String> = self
            .conn
            .query_row("SELECT value FROM meta WHERE key = 'chain_id'", [], |r| r.get(0))
            .optional()?;
        match found {
            Some(found) if found != chain_id => {
                Err(StoreError::ChainMismatch { found, expected: chain_id.to_owned() })
            }
            Some(_) => Ok(()),
            None => {
                self.conn.execute(
                    "INSERT INTO meta (key, value) VALUES ('chain_id', ?1)",
                    params![chain_id],
                )?;
                Ok(())
            }
        }
    }

    /// The newest block's header and all accounts, or `None` for an empty database.
    pub fn load(&self) -> Result<Option<Persisted>, StoreError> {
        let tip: Option<String> = self
            .conn
            .query_row("SELECT json FROM blocks ORDER BY height DESC LIMIT 1", [], |r| r.get(0))
            .optional()?;
        let Some(tip) = tip else { return Ok(None) };
        let block: Block = serde_json::from_str(&tip)
            .map_err(|e| StoreError::Corrupt(format!("tip block: {e}")))?;
        let mut stmt = self.conn.prepare("SELECT address, balance, nonce FROM accounts")?;
        let rows = stmt.query_map([], |r| {
            Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?, r.get::<_, i64>(2)?))
        })?;
        let mut accounts = Vec::new();
        for row in rows {
            let (address, balance, nonce) = row?;
            let balance = balance
                .parse()
                .map_err(|_| StoreError::Corrupt(format!("balance of {address}: {balance}")))?;
            let nonce = u64::try_from(nonce)
                .map_err(|_| StoreError::Corrupt(format!("nonce of {address}")))?;
            accounts.push((address, Account { balance, nonce }));
        }
        Ok(Some(Persisted { tip: block.header, accounts }))
    }

    /// Persists a block with the accounts it changed and the outcomes of the transactions it took.
    pub fn commit(&mut self, produced: &ProducedBlock) -> Result<(), StoreError> {
        let json = serde_json::to_string(&produced.block)
            .map_err(|e| StoreError::Corrupt(e.to_string()))?;
        let tx = self.conn.transaction()?;
        tx.execute(
            "INSERT INTO blocks (height, hash, json) VALUES (?1, ?2, ?3)",
            params![to_i64(produced.block.header.height), produced.block.header.hash(), json],
        )?;
        {
            let mut acc = tx.prepare_cached(
                "INSERT INTO accounts (address, balance, nonce) VALUES (?1, ?2, ?3)
                 ON CONFLICT(address) DO UPDATE SET balance = excluded.balance, nonce = excluded.nonce",
            )?;
            for (address, a) in &produced.accounts {
                acc.execute(params![address, a.balance.to_string(), to_i64(a.nonce)])?;
            }
            let mut rec = tx.prepare_cached(
                "INSERT OR REPLACE INTO receipts (tx_hash, status, block_height, timestamp, error)
                 VALUES (?1, ?2, ?3, ?4, ?5)",
            )?;
            for (hash, outcome) in &produced.outcomes {
                match outcome {
                    Outcome::Confirmed { height, timestamp } => rec.execute(params![
                        hash,
                        "confirmed",
                        to_i64(*height),
                        timestamp,
                        Option::<String>::None
                    ])?,
                    Outcome::Failed { error, timestamp } => {
                        rec.execute(params![hash, "failed", Option::<i64>::None, timestamp, error])?
                    }
                };
            }
        }
        if !produced.outcomes.is_empty() {
            tx.execute(
                "DELETE FROM receipts WHERE seq <= (SELECT MAX(seq) FROM receipts) - ?1",
                params![RECEIPT_RETENTION],
            )?;
        }
        tx.commit()?;
        Ok(())
    }

    /// The stored JSON of block `height`.
    pub fn block_json(&self, height: u64) -> Result<Option<String>, StoreError> {
        let Ok(h) = i64::try_from(height) else { return Ok(None) };
        Ok(self
            .conn
            .query_row("SELECT json FROM blocks WHERE height = ?1", params![h], |r| r.get(0))
            .optional()?)
    }

    /// Block `height`, decoded.
    pub fn block(&self, height: u64) -> Result<Option<Block>, StoreError> {
        self.block_json(height)?
            .map(|j| {
                serde_json::from_str(&j)
                    .map_err(|e| StoreError::Corrupt(format!("block {height}: {e}")))
            })
            .transpose()
    }

    /// The receipt of `tx_hash`, once it left the mempool.
    pub fn receipt(&self, tx_hash: &str) -> Result<Option<StoredReceipt>, StoreError> {
        let row = self
            .conn
            .query_row(
                "SELECT status, block_height, timestamp, error FROM receipts WHERE tx_hash = ?1",
                params![tx_hash],
                |r| {
                    Ok((
                        r.get::<_, String>(0)?,
                        r.get::<_, Option<i64>>(1)?,
                        r.get::<_, i64>(2)?,
                        r.get::<_, Option<String>>(3)?,
                    ))
                },
            )
            .optional()?;
        Ok(row.map(|(status, height, timestamp, error)| {
            let outcome = match (status.as_str(), height) {
                ("confirmed", Some(h)) => {
                    Outcome::Confirmed { height: u64::try_from(h).unwrap_or(0), timestamp }
                }
                _ => Outcome::Failed { error: error.unwrap_or_default(), timestamp },
            };
            StoredReceipt { outcome }
        }))
    }
}

fn to_i64(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::devnet::chain::{Chain, ChainConfig};

    #[test]
    fn round_trips_blocks_accounts_and_receipts() {
        let dir = tempfile::tempdir().expect("tempdir");
        let config = ChainConfig::default();
        let (mut chain, genesis) = Chain::genesis(config.clone(), 10);
        {
            let mut store = Store::open(dir.path()).expect("open");
            store.check_chain_id(&config.chain_id).expect("chain id");
            store.commit(&genesis).expect("genesis");
            let b1 = chain.produce_block(11);
            store.commit(&b1).expect("b1");
        }
        let store = Store::open(dir.path()).expect("reopen");
        store.check_chain_id(&config.chain_id).expect("same chain");
        assert!(matches!(store.check_chain_id("other"), Err(StoreError::ChainMismatch { .. })));
        let Persisted { tip, accounts } = store.load().expect("load").expect("not empty");
        assert_eq!(tip.height, 1);
        assert_eq!(tip.hash(), chain.last_hash());
        let restored = Chain::restore(config.clone(), tip, accounts);
        assert_eq!(restored.account(&config.faucet_address), chain.account(&config.faucet_address));
        assert_eq!(store.block(0).expect("read").map(|b| b.header), Some(genesis.block.header));
        assert_eq!(store.block(5).expect("read"), None);
        assert_eq!(store.receipt("00").expect("read"), None);
    }
}
