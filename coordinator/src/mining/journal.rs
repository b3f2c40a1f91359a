//! The mining journal: an SQLite database in the data dir that records every task, result and
//! submission *before* anything is sent, so that a crash or restart loses no computed result and
//! submits nothing twice.
//!
//! States move forward only:
//! - task: `planned` → `computed` (result_hash stored) → `submitted` (a signed tx exists) → `included`;
//!   or `superseded` (a newer block won before it was computed) / `failed` (cannot be submitted: reason).
//! - submission: `signed` (written before sending) → `sent` → `included` (found in a block), or
//!   `dropped` / `rejected` (then the task gets a fresh submission with a new nonce).

use cpc_common::{Transaction, synthetic::BlockTask};
use rusqlite::{Connection, OptionalExtension, params};
use std::{path::Path, time::SystemTime};

/// Errors from the journal.
#[derive(Debug, thiserror::Error)]
pub enum JournalError {
    /// SQLite failed (disk full, corrupted file, locked by another coordinator).
    #[error("journal database error: {0} (is another coordinator using the same --data-dir?)")]
    Sqlite(#[from] rusqlite::Error),
    /// A stored transaction no longer parses.
    #[error("journal holds a transaction that does not parse: {0}")]
    Corrupt(String),
}

/// A task's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TaskState {
    /// Derived, not computed yet.
    Planned,
    /// Computed; the result waits for a submission.
    Computed,
    /// A signed submission exists.
    Submitted,
    /// Its submission is in a block.
    Included,
    /// A newer block won before it was computed.
    Superseded,
    /// It cannot be submitted (the reason is stored).
    Failed,
}

impl TaskState {
    fn as_str(self) -> &'static str {
        match self {
            Self::Planned => "planned",
            Self::Computed => "computed",
            Self::Submitted => "submitted",
            Self::Included => "included",
            Self::Superseded => "superseded",
            Self::Failed => "failed",
        }
    }

    fn parse(s: &str) -> Self {
        match s {
            "computed" => Self::Computed,
            "submitted" => Self::Submitted,
            "included" => Self::Included,
            "superseded" => Self::Superseded,
            "failed" => Self::Failed,
            _ => Self::Planned,
        }
    }
}

/// A submission's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SubmissionState {
    /// Signed and written; maybe sent (a crash may have hit in between).
    Signed,
    /// The node answered `received`.
    Sent,
    /// Found in a block.
    Included,
    /// Not in the mempool any more and not in a block.
    Dropped,
    /// The node answered `rejected`.
    Rejected,
}

impl SubmissionState {
    fn as_str(self) -> &'static str {
        match self {
            Self::Signed => "signed",
            Self::Sent => "sent",
            Self::Included => "included",
            Self::Dropped => "dropped",
            Self::Rejected => "rejected",
        }
    }

    fn parse(s: &str) -> Self {
        match s {
            "sent" => Self::Sent,
            "included" => Self::Included,
            "dropped" => Self::Dropped,
            "rejected" => Self::Rejected,
            _ => Self::Signed,
        }
    }
}

/// A task as journaled.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TaskRecord {
    /// Identity (key name).
    pub identity: String,
    /// The task.
    pub task: BlockTask,
    /// Its state.
    pub state: TaskState,
    /// The computed result hash.
    pub result_hash: Option<String>,
    /// Why it failed.
    pub error: Option<String>,
}

/// A submission as journaled.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubmissionRecord {
    /// The transaction's hash.
    pub tx_hash: String,
    /// Identity (key name).
    pub identity: String,
    /// The task it submits.
    pub task_id: String,
    /// The seeding block's height.
    pub height: u64,
    /// The L1 nonce used.
    pub nonce: u64,
    /// The signed transaction, exactly as sent.
    pub tx: Transaction,
    /// Its state.
    pub state: SubmissionState,
    /// Block that includes it.
    pub included_height: Option<u64>,
    /// Milliseconds since the epoch when it was first sent.
    pub sent_ms: Option<i64>,
}

/// The journal.
#[derive(Debug)]
pub struct Journal {
    db: Connection,
}

const SCHEMA: &str = "
PRAGMA journal_mode = WAL;
PRAGMA synchronous = FULL;
CREATE TABLE IF NOT EXISTS tasks (
    identity TEXT NOT NULL,
    task_id TEXT NOT NULL,
    height INTEGER NOT NULL,
    block_hash TEXT NOT NULL,
    worker_address TEXT NOT NULL,
    seed TEXT NOT NULL,
    matrix_size INTEGER NOT NULL,
    state TEXT NOT NULL,
    result_hash TEXT,
    error TEXT,
    created_ms INTEGER NOT NULL,
    computed_ms INTEGER,
    PRIMARY KEY (identity, task_id)
);
CREATE INDEX IF NOT EXISTS tasks_by_state ON tasks (state);
CREATE TABLE IF NOT EXISTS submissions (
    tx_hash TEXT PRIMARY KEY,
    identity TEXT NOT NULL,
    task_id TEXT NOT NULL,
    height INTEGER NOT NULL,
    nonce INTEGER NOT NULL,
    tx_json TEXT NOT NULL,
    state TEXT NOT NULL,
    included_height INTEGER,
    error TEXT,
    created_ms INTEGER NOT NULL,
    sent_ms INTEGER,
    included_ms INTEGER
);
CREATE INDEX IF NOT EXISTS submissions_by_identity ON submissions (identity, state);
";

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

impl Journal {
    /// Opens (or creates) the journal at `path`.
    pub fn open(path: &Path) -> Result<Self, JournalError> {
        let db = Connection::open(path)?;
        db.busy_timeout(std::time::Duration::from_secs(5))?;
        db.execute_batch(SCHEMA)?;
        Ok(Self { db })
    }

    /// An in-memory journal (tests, dry runs).
    pub fn in_memory() -> Result<Self, JournalError> {
        let db = Connection::open_in_memory()?;
        db.execute_batch(SCHEMA)?;
        Ok(Self { db })
    }

    /// Records a derived task; `false` if it was already known (a restart re-derives the same id).
    pub fn record_task(&self, identity: &str, task: &BlockTask) -> Result<bool, JournalError> {
        let n = self.db.execute(
            "INSERT OR IGNORE INTO tasks (identity, task_id, height, block_hash, worker_address, seed, matrix_size, state, created_ms)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, 'planned', ?8)",
            params![
                identity,
                task.task_id.to_string(),
                task.height as i64,
                task.block_hash,
                task.worker_address,
                task.challenge.seed,
                task.challenge.matrix_size,
                now_ms()
            ],
        )?;
        Ok(n == 1)
    }

    fn set_task_state(
        &self,
        identity: &str,
        task_id: &str,
        state: TaskState,
        error: Option<&str>,
    ) -> Result<(), JournalError> {
        self.db.execute(
            "UPDATE tasks SET state = ?3, error = COALESCE(?4, error) WHERE identity = ?1 AND task_id = ?2",
            params![identity, task_id, state.as_str(), error],
        )?;
        Ok(())
    }

    /// Stores a computed result (before anything is signed or sent).
    pub fn record_result(
        &self,
        identity: &str,
        task_id: &str,
        result_hash: &str,
    ) -> Result<(), JournalError> {
        self.db.execute(
            "UPDATE tasks SET state = 'computed', result_hash = ?3, computed_ms = ?4
             WHERE identity = ?1 AND task_id = ?2 AND state IN ('planned', 'superseded')",
            params![identity, task_id, result_hash, now_ms()],
        )?;
        Ok(())
    }

    /// Marks a planned task superseded by a newer block.
    pub fn supersede(&self, identity: &str, task_id: &str) -> Result<(), JournalError> {
        self.db.execute(
            "UPDATE tasks SET state = 'superseded' WHERE identity = ?1 AND task_id = ?2 AND state = 'planned'",
            params![identity, task_id],
        )?;
        Ok(())
    }

    /// Marks a task as impossible to submit, with the reason.
    pub fn fail_task(
        &self,
        identity: &str,
        task_id: &str,
        reason: &str,
    ) -> Result<(), JournalError> {
        self.set_task_state(identity, task_id, TaskState::Failed, Some(reason))
    }

    /// Tasks of `identity` in `state`, oldest block first.
    pub fn tasks_in_state(
        &self,
        identity: &str,
        state: TaskState,
    ) -> Result<Vec<TaskRecord>, JournalError> {
        let mut stmt = self.db.prepare(
            "SELECT identity, task_id, height, block_hash, worker_address, seed, matrix_size, state, result_hash, error
             FROM tasks WHERE identity = ?1 AND state = ?2 ORDER BY height, task_id",
        )?;
        let rows = stmt.query_map(params![identity, state.as_str()], task_from_row)?;
        rows.map(|r| r.map_err(JournalError::from).and_then(|r| r)).collect()
    }

    /// One task.
    pub fn task(&self, identity: &str, task_id: &str) -> Result<Option<TaskRecord>, JournalError> {
        let mut stmt = self.db.prepare(
            "SELECT identity, task_id, height, block_hash, worker_address, seed, matrix_size, state, result_hash, error
             FROM tasks WHERE identity = ?1 AND task_id = ?2",
        )?;
        stmt.query_row(params![identity, task_id], task_from_row).optional()?.transpose()
    }

    /// Records a signed transaction before it is sent; moves the task to `submitted`. Re-signing a lost
    /// submission with the same nonce yields the same bytes (RFC 6979), so the row is reopened.
    pub fn record_signed(
        &self,
        identity: &str,
        task_id: &str,
        height: u64,
        tx: &Transaction,
    ) -> Result<(), JournalError> {
        let json = serde_json::to_string(tx).map_err(|e| JournalError::Corrupt(e.to_string()))?;
        let txn = self.db.unchecked_transaction()?;
        txn.execute(
            "INSERT INTO submissions (tx_hash, identity, task_id, height, nonce, tx_json, state, created_ms)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, 'signed', ?7)
             ON CONFLICT (tx_hash) DO UPDATE SET state = 'signed', error = NULL",
            params![tx.hash_hex(), identity, task_id, height as i64, tx.nonce as i64, json, now_ms()],
        )?;
        txn.execute(
            "UPDATE tasks SET state = 'submitted' WHERE identity = ?1 AND task_id = ?2",
            params![identity, task_id],
        )?;
        txn.commit()?;
        Ok(())
    }

    /// The node answered `received`.
    pub fn mark_sent(&self, tx_hash: &str) -> Result<(), JournalError> {
        self.db.execute(
            "UPDATE submissions SET state = 'sent', sent_ms = COALESCE(sent_ms, ?2) WHERE tx_hash = ?1 AND state = 'signed'",
            params![tx_hash, now_ms()],
        )?;
        Ok(())
    }

    /// Found in block `height`; the task is done.
    pub fn mark_included(&self, tx_hash: &str, height: u64) -> Result<(), JournalError> {
        let txn = self.db.unchecked_transaction()?;
        txn.execute(
            "UPDATE submissions SET state = 'included', included_height = ?2, included_ms = ?3 WHERE tx_hash = ?1",
            params![tx_hash, height as i64, now_ms()],
        )?;
        txn.execute(
            "UPDATE tasks SET state = 'included' WHERE (identity, task_id) IN
               (SELECT identity, task_id FROM submissions WHERE tx_hash = ?1)",
            params![tx_hash],
        )?;
        txn.commit()?;
        Ok(())
    }

    /// The submission will never be included (`rejected` by the node or `dropped` from its mempool):
    /// its task goes back to `computed`, to be re-signed with a fresh nonce.
    pub fn mark_lost(
        &self,
        tx_hash: &str,
        state: SubmissionState,
        reason: &str,
    ) -> Result<(), JournalError> {
        let txn = self.db.unchecked_transaction()?;
        txn.execute(
            "UPDATE submissions SET state = ?2, error = ?3 WHERE tx_hash = ?1",
            params![tx_hash, state.as_str(), reason],
        )?;
        txn.execute(
            "UPDATE tasks SET state = 'computed' WHERE state = 'submitted' AND (identity, task_id) IN
               (SELECT identity, task_id FROM submissions WHERE tx_hash = ?1)",
            params![tx_hash],
        )?;
        txn.commit()?;
        Ok(())
    }

    /// Submissions of `identity` that may still land (`signed` or `sent`), lowest nonce first.
    pub fn open_submissions(&self, identity: &str) -> Result<Vec<SubmissionRecord>, JournalError> {
        let mut stmt = self.db.prepare(
            "SELECT tx_hash, identity, task_id, height, nonce, tx_json, state, included_height, sent_ms
             FROM submissions WHERE identity = ?1 AND state IN ('signed', 'sent') ORDER BY nonce",
        )?;
        let rows = stmt.query_map(params![identity], submission_from_row)?;
        rows.map(|r| r.map_err(JournalError::from).and_then(|r| r)).collect()
    }

    /// Every submission of `identity`, oldest first (reports and tests).
    pub fn submissions(&self, identity: &str) -> Result<Vec<SubmissionRecord>, JournalError> {
        let mut stmt = self.db.prepare(
            "SELECT tx_hash, identity, task_id, height, nonce, tx_json, state, included_height, sent_ms
             FROM submissions WHERE identity = ?1 ORDER BY created_ms, nonce",
        )?;
        let rows = stmt.query_map(params![identity], submission_from_row)?;
        rows.map(|r| r.map_err(JournalError::from).and_then(|r| r)).collect()
    }

    /// The highest L1 nonce `identity` has used in a submission that may still land.
    pub fn highest_open_nonce(&self, identity: &str) -> Result<Option<u64>, JournalError> {
        let n: Option<i64> = self.db.query_row(
            "SELECT MAX(nonce) FROM submissions WHERE identity = ?1 AND state IN ('signed', 'sent', 'included')",
            params![identity],
            |r| r.get(0),
        )?;
        Ok(n.map(|n| n as u64))
    }
}

/// One line of the mining report: a task and where its submission landed.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct ReportRow {
    /// Identity (key name).
    pub identity: String,
    /// Height of the seeding block.
    pub height: u64,
    /// The task id.
    pub task_id: String,
    /// The computed result hash.
    pub result_hash: Option<String>,
    /// The task's state.
    pub state: String,
    /// The included (or latest) submission's hash.
    pub tx_hash: Option<String>,
    /// The block that includes it.
    pub included_in: Option<u64>,
    /// Why the task failed.
    pub error: Option<String>,
}

impl Journal {
    /// Every task seeded at `from_height` or later, with its latest submission, by height then identity.
    pub fn report(&self, from_height: u64) -> Result<Vec<ReportRow>, JournalError> {
        let mut stmt = self.db.prepare(
            "SELECT t.identity, t.height, t.task_id, t.result_hash, t.state,
                    (SELECT s.tx_hash FROM submissions s WHERE s.identity = t.identity AND s.task_id = t.task_id
                       ORDER BY (s.state = 'included') DESC, s.created_ms DESC LIMIT 1),
                    (SELECT MAX(s.included_height) FROM submissions s WHERE s.identity = t.identity AND s.task_id = t.task_id),
                    t.error
             FROM tasks t WHERE t.height >= ?1 ORDER BY t.height, t.identity",
        )?;
        let rows = stmt.query_map(params![from_height as i64], |r| {
            Ok(ReportRow {
                identity: r.get(0)?,
                height: r.get::<_, i64>(1)? as u64,
                task_id: r.get(2)?,
                result_hash: r.get(3)?,
                state: r.get(4)?,
                tx_hash: r.get(5)?,
                included_in: r.get::<_, Option<i64>>(6)?.map(|h| h as u64),
                error: r.get(7)?,
            })
        })?;
        Ok(rows.collect::<Result<Vec<_>, _>>()?)
    }
}

type RowResult<T> = Result<T, JournalError>;

fn task_from_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<RowResult<TaskRecord>> {
    let task_id: String = r.get(1)?;
    let height: i64 = r.get(2)?;
    let seed: String = r.get(5)?;
    let n: u32 = r.get(6)?;
    let state: String = r.get(7)?;
    let build = || -> RowResult<TaskRecord> {
        let task = BlockTask {
            task_id: task_id
                .parse()
                .map_err(|e| JournalError::Corrupt(format!("task id {task_id}: {e}")))?,
            challenge: cpc_common::synthetic::Challenge::new(seed.clone(), n, 1)
                .map_err(|e| JournalError::Corrupt(e.to_string()))?,
            block_hash: r.get(3)?,
            worker_address: r.get(4)?,
            height: height as u64,
        };
        Ok(TaskRecord {
            identity: r.get(0)?,
            task,
            state: TaskState::parse(&state),
            result_hash: r.get(8)?,
            error: r.get(9)?,
        })
    };
    Ok(build())
}

fn submission_from_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<RowResult<SubmissionRecord>> {
    let json: String = r.get(5)?;
    let state: String = r.get(6)?;
    let height: i64 = r.get(3)?;
    let nonce: i64 = r.get(4)?;
    let included: Option<i64> = r.get(7)?;
    let tx_hash: String = r.get(0)?;
    let identity: String = r.get(1)?;
    let task_id: String = r.get(2)?;
    let sent_ms: Option<i64> = r.get(8)?;
    Ok(serde_json::from_str::<Transaction>(&json)
        .map_err(|e| JournalError::Corrupt(e.to_string()))
        .map(|tx| SubmissionRecord {
            tx_hash,
            identity,
            task_id,
            height: height as u64,
            nonce: nonce as u64,
            tx,
            state: SubmissionState::parse(&state),
            included_height: included.map(|h| h as u64),
            sent_ms,
        }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use cpc_common::{ComputeResult, SecretKey, TxType, tx::MIN_GAS_PRICE};

    fn signed(key: &SecretKey, task: &BlockTask, nonce: u64) -> Transaction {
        let mut r = ComputeResult {
            task_id: task.task_id.to_string(),
            worker_address: key.address().to_string(),
            result_hash: "ab".repeat(32),
            proof: String::new(),
            nonce: task.height.into(),
            signature: String::new(),
        };
        r.sign(key).expect("sign");
        let mut tx = Transaction::new_unsigned(
            TxType::SubmitResult,
            key,
            None,
            0,
            nonce,
            MIN_GAS_PRICE,
            r.to_payload(),
        )
        .expect("tx");
        tx.sign(key).expect("sign");
        tx
    }

    #[test]
    fn a_task_moves_through_its_states_and_survives_reopening() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("journal.sqlite");
        let key = SecretKey::generate();
        let task =
            BlockTask::derive(&"11".repeat(32), key.address().as_str(), 16, 5).expect("task");
        let id = task.task_id.to_string();
        {
            let j = Journal::open(&path).expect("open");
            assert!(j.record_task("w", &task).expect("record"));
            assert!(!j.record_task("w", &task).expect("again"), "a re-derived task is not new");
            j.record_result("w", &id, &"ab".repeat(32)).expect("result");
        }
        let j = Journal::open(&path).expect("reopen");
        let computed = j.tasks_in_state("w", TaskState::Computed).expect("computed");
        assert_eq!(computed.len(), 1);
        assert_eq!(computed[0].task, task);
        let tx = signed(&key, &task, 3);
        j.record_signed("w", &id, 5, &tx).expect("signed");
        assert_eq!(j.open_submissions("w").expect("open")[0].tx, tx);
        assert_eq!(j.highest_open_nonce("w").expect("nonce"), Some(3));
        j.mark_lost(&tx.hash_hex(), SubmissionState::Dropped, "not in mempool").expect("lost");
        assert_eq!(j.task("w", &id).expect("task").map(|t| t.state), Some(TaskState::Computed));
        assert!(j.open_submissions("w").expect("open").is_empty());
        // Re-signing at the same nonce gives the same bytes (RFC 6979): the row is reopened, not doubled.
        j.record_signed("w", &id, 5, &tx).expect("same bytes again");
        assert_eq!(j.open_submissions("w").expect("open").len(), 1);
        j.mark_lost(&tx.hash_hex(), SubmissionState::Dropped, "nonce consumed").expect("lost again");
        let tx2 = signed(&key, &task, 4);
        j.record_signed("w", &id, 5, &tx2).expect("signed with a new nonce");
        j.mark_sent(&tx2.hash_hex()).expect("sent");
        j.mark_included(&tx2.hash_hex(), 7).expect("included");
        assert_eq!(j.task("w", &id).expect("task").map(|t| t.state), Some(TaskState::Included));
        let subs = j.submissions("w").expect("all");
        assert_eq!(
            subs.iter().map(|s| s.state).collect::<Vec<_>>(),
            [SubmissionState::Dropped, SubmissionState::Included]
        );
    }
}
