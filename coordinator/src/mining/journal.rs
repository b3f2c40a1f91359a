//! The mining journal: an SQLite database in the data dir that records every task, result and
//! submission *before* anything is sent, so that a crash or restart loses no computed result and
//! submits nothing twice.
//!
//! States move forward only:
//! - task: `planned` → `computed` (result_hash stored) → `submitted` (a signed tx exists) → `included`;
//!   or `superseded` (a newer block won before it was computed) / `failed` (cannot be submitted: reason).
//! - submission: `signed` (written before sending) → `sent` → `included` (found in a block), or
//!   `dropped` / `rejected` (then the task gets a fresh submission with a new nonce).
//! - validator job (`validator_jobs`, keyed by validator URL, identity and job id): `received` (written on
//!   receipt, before any work) → `computed` (result_hash stored) → `answered` (after the `job_result`
//!   frame was written to the socket); or `failed` (cannot be computed: reason stored) → `answered` (after
//!   the `job_error` frame was written). A job that is not `answered` is answered on the next connection to
//!   its validator, after a reconnect or a restart: `computed` and `failed` ones from the journal,
//!   `received` ones by computing them again.

use cpc_common::{Transaction, synthetic::BlockTask};
use rusqlite::{Connection, OptionalExtension, params};
use std::{path::Path, time::SystemTime};

/// Errors from the journal.
#[derive(Debug, thiserror::Error)]
pub enum JournalError {
    /// SQLite failed: the message says how (disk full, I/O error, corrupted file, busy).
    #[error("journal database error: {0}{hint}", hint = sqlite_hint(.0))]
    Sqlite(#[from] rusqlite::Error),
    /// `PRAGMA quick_check` found damage.
    #[error(
        "journal failed its integrity check ({0}): restore it from a backup, or move it aside and start with --new-journal"
    )]
    Damaged(String),
    /// A stored transaction no longer parses.
    #[error("journal holds a transaction that does not parse: {0}")]
    Corrupt(String),
}

/// What to tell the operator about an SQLite error: only a busy or locked database points at another
/// process; corruption and I/O errors say so themselves.
fn sqlite_hint(e: &rusqlite::Error) -> &'static str {
    use rusqlite::ErrorCode as C;
    match e.sqlite_error_code() {
        Some(C::DatabaseBusy | C::DatabaseLocked) => {
            " (another process holds the journal: is another coordinator using the same --data-dir?)"
        }
        Some(C::DatabaseCorrupt | C::NotADatabase) => {
            " (the file is damaged: restore it, or move it aside and start with --new-journal)"
        }
        Some(C::DiskFull) => " (free some disk space)",
        Some(C::ReadOnly | C::PermissionDenied | C::CannotOpen) => {
            " (check the data dir's permissions)"
        }
        _ => "",
    }
}

/// Where a task comes from. Block tasks own their ids: a validator's result never takes a block task's id
/// (see [`Journal::record_task`] and [`Journal::record_validator_task`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TaskOrigin {
    /// Derived from a block by the planner.
    Block,
    /// A PoC validator's job with `submit_to_l1`.
    Validator,
}

impl TaskOrigin {
    fn parse(s: &str) -> Self {
        if s == "validator" { Self::Validator } else { Self::Block }
    }
}

/// What [`Journal::record_validator_task`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ValidatorTaskOutcome {
    /// Queued for the L1.
    Queued,
    /// Already queued (the same job answered twice).
    AlreadyQueued,
    /// The id is a block task's: refused.
    CollidesWithBlockTask,
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
    /// Where it comes from.
    pub origin: TaskOrigin,
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
    origin TEXT NOT NULL DEFAULT 'block',
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
CREATE TABLE IF NOT EXISTS validator_jobs (
    validator TEXT NOT NULL,
    identity TEXT NOT NULL,
    job_id TEXT NOT NULL,
    task_id TEXT NOT NULL,
    seed TEXT NOT NULL,
    matrix_size INTEGER NOT NULL,
    iterations INTEGER NOT NULL,
    nonce TEXT NOT NULL,
    deadline_ms INTEGER,
    state TEXT NOT NULL,
    result_hash TEXT,
    error TEXT,
    received_ms INTEGER NOT NULL,
    computed_ms INTEGER,
    answered_ms INTEGER,
    PRIMARY KEY (validator, identity, job_id)
);
CREATE INDEX IF NOT EXISTS validator_jobs_by_state ON validator_jobs (validator, identity, state);
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
        Self::prepare(db)
    }

    /// An in-memory journal (tests, dry runs).
    pub fn in_memory() -> Result<Self, JournalError> {
        Self::prepare(Connection::open_in_memory()?)
    }

    fn prepare(db: Connection) -> Result<Self, JournalError> {
        db.execute_batch(SCHEMA)?;
        // Journals written before task origins existed hold block tasks only.
        let has_origin = db
            .prepare("SELECT 1 FROM pragma_table_info('tasks') WHERE name = 'origin'")?
            .exists([])?;
        if !has_origin {
            db.execute_batch("ALTER TABLE tasks ADD COLUMN origin TEXT NOT NULL DEFAULT 'block'")?;
        }
        Ok(Self { db })
    }

    /// Runs `writes` in one SQLite transaction: one disk sync for a whole block's tasks instead of one
    /// each. `writes` must not open a transaction itself (e.g. [`Self::mark_included`]).
    pub fn batch<T>(
        &self,
        writes: impl FnOnce(&Self) -> Result<T, JournalError>,
    ) -> Result<T, JournalError> {
        let txn = self.db.unchecked_transaction()?;
        let out = writes(self)?;
        txn.commit()?;
        Ok(out)
    }

    /// `PRAGMA quick_check`: the journal is readable through and through.
    pub fn check_integrity(&self) -> Result<(), JournalError> {
        let mut stmt = self.db.prepare("PRAGMA quick_check")?;
        let findings: Vec<String> =
            stmt.query_map([], |r| r.get::<_, String>(0))?.collect::<Result<_, _>>()?;
        match findings.as_slice() {
            [ok] if ok == "ok" => Ok(()),
            _ => Err(JournalError::Damaged(findings.join("; "))),
        }
    }

    /// Records a block task derived by the planner; `false` if it was already known (a restart re-derives
    /// the same id). The id belongs to the block: a validator's task that holds it and has not been
    /// submitted is replaced (a validator can compute a block task's id from public data, and its result
    /// must never stand in for the block's).
    pub fn record_task(&self, identity: &str, task: &BlockTask) -> Result<bool, JournalError> {
        let n = self.db.execute(
            "INSERT INTO tasks (identity, task_id, height, block_hash, worker_address, seed, matrix_size, state, created_ms, origin)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, 'planned', ?8, 'block')
             ON CONFLICT (identity, task_id) DO UPDATE SET
                height = excluded.height, block_hash = excluded.block_hash,
                worker_address = excluded.worker_address, seed = excluded.seed,
                matrix_size = excluded.matrix_size, state = 'planned', result_hash = NULL, error = NULL,
                created_ms = excluded.created_ms, computed_ms = NULL, origin = 'block'
             WHERE tasks.origin <> 'block' AND tasks.state NOT IN ('submitted', 'included')",
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

    /// Queues a validator job's result for the L1 as a computed task of its own origin. Refused when the id
    /// is a block task's of this identity.
    pub fn record_validator_task(
        &self,
        identity: &str,
        task: &BlockTask,
        result_hash: &str,
    ) -> Result<ValidatorTaskOutcome, JournalError> {
        let task_id = task.task_id.to_string();
        if let Some(known) = self.task(identity, &task_id)? {
            return Ok(match known.origin {
                TaskOrigin::Block => ValidatorTaskOutcome::CollidesWithBlockTask,
                TaskOrigin::Validator => ValidatorTaskOutcome::AlreadyQueued,
            });
        }
        self.db.execute(
            "INSERT INTO tasks (identity, task_id, height, block_hash, worker_address, seed, matrix_size, state, result_hash, created_ms, computed_ms, origin)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, 'computed', ?8, ?9, ?9, 'validator')",
            params![
                identity,
                task_id,
                task.height as i64,
                task.block_hash,
                task.worker_address,
                task.challenge.seed,
                task.challenge.matrix_size,
                result_hash,
                now_ms()
            ],
        )?;
        Ok(ValidatorTaskOutcome::Queued)
    }

    /// Fails a validator's task (its id collides with a block task on chain). Only a row still of validator
    /// origin is touched: the planner may have taken the id over for its block task meanwhile.
    pub fn fail_validator_task(
        &self,
        identity: &str,
        task_id: &str,
        reason: &str,
    ) -> Result<(), JournalError> {
        self.db.execute(
            "UPDATE tasks SET state = 'failed', error = ?3
             WHERE identity = ?1 AND task_id = ?2 AND origin = 'validator' AND state = 'computed'",
            params![identity, task_id, reason],
        )?;
        Ok(())
    }

    /// Whether `task_id` is a block task of `identity` in this journal.
    pub fn is_block_task(&self, identity: &str, task_id: &str) -> Result<bool, JournalError> {
        Ok(self.task(identity, task_id)?.is_some_and(|t| t.origin == TaskOrigin::Block))
    }

    /// Deletes what is settled and older than `before_ms`: answered validator jobs, and tasks that are
    /// included, superseded or failed with their submissions. Open work is never pruned. Returns the number
    /// of rows deleted.
    pub fn prune(&self, before_ms: i64) -> Result<usize, JournalError> {
        let jobs = self.db.execute(
            "DELETE FROM validator_jobs WHERE state = 'answered' AND received_ms < ?1",
            params![before_ms],
        )?;
        let settled = "t.state IN ('included', 'superseded', 'failed') AND t.created_ms < ?1";
        let subs = self.db.execute(
            &format!(
                "DELETE FROM submissions WHERE state IN ('included', 'dropped', 'rejected') AND EXISTS
                 (SELECT 1 FROM tasks t WHERE t.identity = submissions.identity AND t.task_id = submissions.task_id AND {settled})"
            ),
            params![before_ms],
        )?;
        let tasks = self.db.execute(
            &format!(
                "DELETE FROM tasks AS t WHERE {settled} AND NOT EXISTS
                 (SELECT 1 FROM submissions s WHERE s.identity = t.identity AND s.task_id = t.task_id)"
            ),
            params![before_ms],
        )?;
        Ok(jobs + subs + tasks)
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
            "SELECT identity, task_id, height, block_hash, worker_address, seed, matrix_size, state, result_hash, error, origin
             FROM tasks WHERE identity = ?1 AND state = ?2 ORDER BY height, task_id",
        )?;
        let rows = stmt.query_map(params![identity, state.as_str()], task_from_row)?;
        rows.map(|r| r.map_err(JournalError::from).and_then(|r| r)).collect()
    }

    /// One task.
    pub fn task(&self, identity: &str, task_id: &str) -> Result<Option<TaskRecord>, JournalError> {
        let mut stmt = self.db.prepare(
            "SELECT identity, task_id, height, block_hash, worker_address, seed, matrix_size, state, result_hash, error, origin
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

/// A validator job's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ValidatorJobState {
    /// Written on receipt; not computed yet.
    Received,
    /// Computed; the `job_result` waits to be sent.
    Computed,
    /// Cannot be computed (reason stored); the `job_error` waits to be sent.
    Failed,
    /// The answer (`job_result`, or `job_error` when `error` is set) was written to the validator.
    Answered,
}

impl ValidatorJobState {
    fn as_str(self) -> &'static str {
        match self {
            Self::Received => "received",
            Self::Computed => "computed",
            Self::Failed => "failed",
            Self::Answered => "answered",
        }
    }

    fn parse(s: &str) -> Self {
        match s {
            "computed" => Self::Computed,
            "failed" => Self::Failed,
            "answered" => Self::Answered,
            _ => Self::Received,
        }
    }
}

/// A validator job as journaled.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ValidatorJobRecord {
    /// The validator's URL.
    pub validator: String,
    /// The identity the job is computed for (key name).
    pub identity: String,
    /// The validator's job id.
    pub job_id: String,
    /// The task id that goes into the signed result.
    pub task_id: String,
    /// The challenge.
    pub challenge: cpc_common::synthetic::Challenge,
    /// The signed result's nonce, as decimal text.
    pub nonce: String,
    /// Deadline, milliseconds since the epoch.
    pub deadline_ms: Option<i64>,
    /// Its state.
    pub state: ValidatorJobState,
    /// The computed result hash.
    pub result_hash: Option<String>,
    /// Why it failed.
    pub error: Option<String>,
    /// When it was received, milliseconds since the epoch.
    pub received_ms: i64,
}

const VALIDATOR_JOB_COLUMNS: &str = "validator, identity, job_id, task_id, seed, matrix_size, iterations, nonce, deadline_ms, state, result_hash, error, received_ms";

impl Journal {
    /// Records a job on receipt, before any work; `false` if the job id was already known for this
    /// validator and identity (a validator re-sending it after a reconnect).
    pub fn record_validator_job(&self, job: &ValidatorJobRecord) -> Result<bool, JournalError> {
        let n = self.db.execute(
            "INSERT OR IGNORE INTO validator_jobs (validator, identity, job_id, task_id, seed, matrix_size, iterations, nonce, deadline_ms, state, result_hash, error, received_ms)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13)",
            params![
                job.validator,
                job.identity,
                job.job_id,
                job.task_id,
                job.challenge.seed,
                job.challenge.matrix_size,
                job.challenge.iterations,
                job.nonce,
                job.deadline_ms,
                job.state.as_str(),
                job.result_hash,
                job.error,
                job.received_ms,
            ],
        )?;
        Ok(n == 1)
    }

    /// Stores a validator job's result (before the answer is sent).
    pub fn record_validator_result(
        &self,
        validator: &str,
        identity: &str,
        job_id: &str,
        result_hash: &str,
    ) -> Result<(), JournalError> {
        self.db.execute(
            "UPDATE validator_jobs SET state = 'computed', result_hash = ?4, computed_ms = ?5
             WHERE validator = ?1 AND identity = ?2 AND job_id = ?3 AND state = 'received'",
            params![validator, identity, job_id, result_hash, now_ms()],
        )?;
        Ok(())
    }

    /// Marks a validator job as impossible to compute, with the reason (sent as `job_error`).
    pub fn fail_validator_job(
        &self,
        validator: &str,
        identity: &str,
        job_id: &str,
        reason: &str,
    ) -> Result<(), JournalError> {
        self.db.execute(
            "UPDATE validator_jobs SET state = 'failed', error = ?4
             WHERE validator = ?1 AND identity = ?2 AND job_id = ?3 AND state IN ('received', 'computed')",
            params![validator, identity, job_id, reason],
        )?;
        Ok(())
    }

    /// The answer was written to the validator.
    pub fn mark_validator_answered(
        &self,
        validator: &str,
        identity: &str,
        job_id: &str,
    ) -> Result<(), JournalError> {
        self.db.execute(
            "UPDATE validator_jobs SET state = 'answered', answered_ms = ?4
             WHERE validator = ?1 AND identity = ?2 AND job_id = ?3 AND state IN ('computed', 'failed')",
            params![validator, identity, job_id, now_ms()],
        )?;
        Ok(())
    }

    /// One validator job.
    pub fn validator_job(
        &self,
        validator: &str,
        identity: &str,
        job_id: &str,
    ) -> Result<Option<ValidatorJobRecord>, JournalError> {
        let mut stmt = self.db.prepare(&format!(
            "SELECT {VALIDATOR_JOB_COLUMNS} FROM validator_jobs WHERE validator = ?1 AND identity = ?2 AND job_id = ?3"
        ))?;
        stmt.query_row(params![validator, identity, job_id], validator_job_from_row)
            .optional()?
            .transpose()
    }

    /// The jobs of a validator and identity not answered yet, oldest first.
    pub fn unanswered_validator_jobs(
        &self,
        validator: &str,
        identity: &str,
    ) -> Result<Vec<ValidatorJobRecord>, JournalError> {
        let mut stmt = self.db.prepare(&format!(
            "SELECT {VALIDATOR_JOB_COLUMNS} FROM validator_jobs
             WHERE validator = ?1 AND identity = ?2 AND state != 'answered' ORDER BY received_ms, job_id"
        ))?;
        let rows = stmt.query_map(params![validator, identity], validator_job_from_row)?;
        rows.map(|r| r.map_err(JournalError::from).and_then(|r| r)).collect()
    }

    /// Every validator job, oldest first (reports and tests).
    pub fn validator_jobs(&self) -> Result<Vec<ValidatorJobRecord>, JournalError> {
        let mut stmt = self.db.prepare(&format!(
            "SELECT {VALIDATOR_JOB_COLUMNS} FROM validator_jobs ORDER BY received_ms, job_id"
        ))?;
        let rows = stmt.query_map([], validator_job_from_row)?;
        rows.map(|r| r.map_err(JournalError::from).and_then(|r| r)).collect()
    }
}

fn validator_job_from_row(
    r: &rusqlite::Row<'_>,
) -> rusqlite::Result<RowResult<ValidatorJobRecord>> {
    let seed: String = r.get(4)?;
    let n: u32 = r.get(5)?;
    let iterations: u32 = r.get(6)?;
    let state: String = r.get(9)?;
    let challenge = cpc_common::synthetic::Challenge::new(seed, n, iterations)
        .map_err(|e| JournalError::Corrupt(e.to_string()));
    Ok(match challenge {
        Err(e) => Err(e),
        Ok(challenge) => Ok(ValidatorJobRecord {
            validator: r.get(0)?,
            identity: r.get(1)?,
            job_id: r.get(2)?,
            task_id: r.get(3)?,
            challenge,
            nonce: r.get(7)?,
            deadline_ms: r.get(8)?,
            state: ValidatorJobState::parse(&state),
            result_hash: r.get(10)?,
            error: r.get(11)?,
            received_ms: r.get(12)?,
        }),
    })
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
    let origin: String = r.get(10)?;
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
            origin: TaskOrigin::parse(&origin),
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
        Transaction::new_signed(
            TxType::SubmitResult,
            key,
            None,
            0,
            nonce,
            MIN_GAS_PRICE,
            r.to_payload(),
        )
        .expect("tx")
    }

    fn block_task(address: &str, height: u64) -> BlockTask {
        BlockTask::derive(&format!("{height:064x}"), address, 8, height).expect("task")
    }

    /// The hostile-validator defect: a validator derives a block task's id, gets its own result journaled
    /// under it first, and the planner then skipped the block's real task as "already computed".
    #[test]
    fn a_block_task_id_belongs_to_the_block_and_never_to_a_validator_result() {
        let j = Journal::in_memory().expect("journal");
        let key = SecretKey::generate();
        let address = key.address().to_string();
        let real = block_task(&address, 5);
        let id = real.task_id.to_string();
        let mut forged = real.clone();
        forged.challenge = cpc_common::synthetic::Challenge::new("evil", 1, 1).expect("challenge");
        forged.block_hash = "validator:v".into();

        // The validator's result comes first: queued, then taken over by the block task.
        assert_eq!(
            j.record_validator_task("w", &forged, &"ee".repeat(32)).expect("queue"),
            ValidatorTaskOutcome::Queued
        );
        assert_eq!(
            j.record_validator_task("w", &forged, &"ee".repeat(32)).expect("again"),
            ValidatorTaskOutcome::AlreadyQueued
        );
        assert!(j.record_task("w", &real).expect("block task takes the id over"));
        let t = j.task("w", &id).expect("read").expect("task");
        assert_eq!((t.state, t.origin), (TaskState::Planned, TaskOrigin::Block));
        assert_eq!(t.task.challenge, real.challenge);
        assert_eq!(t.result_hash, None);
        // Re-planning the same block is a no-op, and a validator can no longer take the id.
        assert!(!j.record_task("w", &real).expect("known"));
        assert_eq!(
            j.record_validator_task("w", &forged, &"ee".repeat(32)).expect("refused"),
            ValidatorTaskOutcome::CollidesWithBlockTask
        );
        assert!(j.is_block_task("w", &id).expect("read"));
        assert!(!j.is_block_task("other", &id).expect("read"));
    }

    #[test]
    fn pruning_removes_only_settled_rows_older_than_the_cutoff() {
        let j = Journal::in_memory().expect("journal");
        let key = SecretKey::generate();
        let address = key.address().to_string();
        let (done, open) = (block_task(&address, 1), block_task(&address, 2));
        for t in [&done, &open] {
            j.record_task("w", t).expect("task");
            j.record_result("w", &t.task_id.to_string(), &"ab".repeat(32)).expect("result");
        }
        let tx = signed(&key, &done, 0);
        j.record_signed("w", &done.task_id.to_string(), 1, &tx).expect("signed");
        j.mark_included(&tx.hash_hex(), 2).expect("included");
        // Nothing is older than a cutoff in the past.
        assert_eq!(j.prune(0).expect("prune"), 0);
        let deleted = j.prune(now_ms() + 1).expect("prune");
        assert_eq!(deleted, 2, "the included task and its submission");
        assert!(j.task("w", &done.task_id.to_string()).expect("read").is_none());
        assert_eq!(
            j.task("w", &open.task_id.to_string()).expect("read").map(|t| t.state),
            Some(TaskState::Computed),
            "a computed result is never pruned"
        );
    }

    #[test]
    fn a_journal_written_before_task_origins_opens_and_reads_as_block_tasks() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("journal.sqlite");
        let key = SecretKey::generate();
        let task = block_task(&key.address().to_string(), 3);
        {
            let db = Connection::open(&path).expect("open");
            db.execute_batch(&SCHEMA.replace("    origin TEXT NOT NULL DEFAULT 'block',\n", ""))
                .expect("old schema");
            db.execute(
                "INSERT INTO tasks (identity, task_id, height, block_hash, worker_address, seed, matrix_size, state, created_ms)
                 VALUES ('w', ?1, 3, ?2, ?3, ?4, 8, 'planned', 0)",
                params![task.task_id.to_string(), task.block_hash, task.worker_address, task.challenge.seed],
            )
            .expect("old row");
        }
        let j = Journal::open(&path).expect("migrates");
        j.check_integrity().expect("intact");
        let t = j.task("w", &task.task_id.to_string()).expect("read").expect("task");
        assert_eq!(t.origin, TaskOrigin::Block);
    }

    #[test]
    fn a_validator_job_moves_through_its_states_and_survives_reopening() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("journal.sqlite");
        let job = ValidatorJobRecord {
            validator: "ws://v".into(),
            identity: "w".into(),
            job_id: "j1".into(),
            task_id: "t1".into(),
            challenge: cpc_common::synthetic::Challenge::new("not hex", 8, 2).expect("challenge"),
            nonce: "7".into(),
            deadline_ms: None,
            state: ValidatorJobState::Received,
            result_hash: None,
            error: None,
            received_ms: now_ms(),
        };
        {
            let j = Journal::open(&path).expect("open");
            assert!(j.record_validator_job(&job).expect("record"));
            assert!(!j.record_validator_job(&job).expect("again"), "a re-sent job is not new");
            let mut other = job.clone();
            other.job_id = "j2".into();
            j.record_validator_job(&other).expect("record j2");
            j.record_validator_result("ws://v", "w", "j1", "ab").expect("result");
            j.fail_validator_job("ws://v", "w", "j2", "deadline exceeded").expect("fail");
        }
        let j = Journal::open(&path).expect("reopen");
        let open = j.unanswered_validator_jobs("ws://v", "w").expect("unanswered");
        assert_eq!(
            open.iter().map(|r| (r.job_id.as_str(), r.state)).collect::<Vec<_>>(),
            [("j1", ValidatorJobState::Computed), ("j2", ValidatorJobState::Failed)]
        );
        assert_eq!(open[0].challenge, job.challenge);
        assert_eq!(open[0].result_hash.as_deref(), Some("ab"));
        assert_eq!(open[1].error.as_deref(), Some("deadline exceeded"));
        j.mark_validator_answered("ws://v", "w", "j1").expect("answered");
        j.mark_validator_answered("ws://v", "w", "j2").expect("answered");
        assert!(j.unanswered_validator_jobs("ws://v", "w").expect("none").is_empty());
        assert!(j.unanswered_validator_jobs("ws://other", "w").expect("none").is_empty());
        let done = j.validator_job("ws://v", "w", "j2").expect("get").expect("some");
        assert_eq!(done.state, ValidatorJobState::Answered);
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
        j.mark_lost(&tx.hash_hex(), SubmissionState::Dropped, "nonce consumed")
            .expect("lost again");
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
