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
//!
//! [`Journal`] is a cheap clonable handle (the planner, each submitter and each validator client hold one):
//! every method takes the journal's lock for one short synchronous call, and [`Journal::batch`] holds it
//! for several writes in one SQLite transaction. The operations are split by concern: [`tasks`],
//! [`submissions`], [`validator_jobs`], [`report`], [`accounting`] (why each task missed, for
//! `identities`), [`pruning`], and the on-disk [`schema`].

use rusqlite::Connection;
use std::{
    path::Path,
    sync::{Arc, Mutex, PoisonError},
    time::SystemTime,
};

/// Gives [`Journal`] each listed [`Batch`] operation, run under the journal's lock:
/// `fn name(args) -> T;` makes `Journal::name(&self, args) -> Result<T, JournalError>`.
macro_rules! locked {
    ($(fn $name:ident($($arg:ident: $ty:ty),* $(,)?) -> $ok:ty;)*) => {
        impl $crate::mining::journal::Journal {
            $(
                #[doc = concat!("[`Batch::", stringify!($name), "`], under the journal's lock.")]
                pub fn $name(
                    &self
                    $(, $arg: $ty)*
                ) -> Result<$ok, $crate::mining::journal::JournalError> {
                    self.locked(|batch| batch.$name($($arg),*))
                }
            )*
        }
    };
}

pub mod accounting;
pub mod pruning;
pub mod report;
pub mod schema;
pub mod submissions;
pub mod tasks;
pub mod validator_jobs;

pub use accounting::{AccountingRow, AccountingWindow, MissCause};
pub use report::ReportRow;
pub use submissions::{SubmissionRecord, SubmissionState};
pub use tasks::{TaskOrigin, TaskRecord, TaskState, ValidatorTaskOutcome};
pub use validator_jobs::{ValidatorJobRecord, ValidatorJobState};

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

/// The journal: a cheap clonable handle on one SQLite connection. Each method is one short synchronous
/// call under the handle's lock; [`Self::batch`] runs several in one transaction.
#[derive(Debug, Clone)]
pub struct Journal {
    db: Arc<Mutex<Connection>>,
}

/// The journal's operations on its locked connection. [`Journal::batch`] hands one to its closure to run
/// several operations in one SQLite transaction; every [`Journal`] method is a batch of one.
#[derive(Debug, Clone, Copy)]
pub struct Batch<'c> {
    db: &'c Connection,
}

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

    /// Opens the journal at `path` for reading only, neither creating nor migrating it: safe while a running
    /// coordinator holds the data dir's lock and writes to it (SQLite's WAL lets one writer and many
    /// readers share the file).
    pub fn open_read_only(path: &Path) -> Result<Self, JournalError> {
        let db = Connection::open_with_flags(
            path,
            rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY | rusqlite::OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )?;
        db.busy_timeout(std::time::Duration::from_secs(5))?;
        Ok(Self { db: Arc::new(Mutex::new(db)) })
    }

    /// An in-memory journal (tests, dry runs).
    pub fn in_memory() -> Result<Self, JournalError> {
        Self::prepare(Connection::open_in_memory()?)
    }

    fn prepare(db: Connection) -> Result<Self, JournalError> {
        schema::prepare(&db)?;
        Ok(Self { db: Arc::new(Mutex::new(db)) })
    }

    /// Runs `writes` in one SQLite transaction: one disk sync for a whole block's tasks instead of one
    /// each. `writes` must not open a transaction itself (e.g. [`Batch::mark_included`]).
    pub fn batch<T>(
        &self,
        writes: impl FnOnce(Batch<'_>) -> Result<T, JournalError>,
    ) -> Result<T, JournalError> {
        self.locked(|batch| {
            let txn = batch.db.unchecked_transaction()?;
            let out = writes(batch)?;
            txn.commit()?;
            Ok(out)
        })
    }

    /// Runs `operation` with the lock held. A panic in an earlier holder cannot have left a write half
    /// done (each statement is atomic, and a dropped transaction rolls back), so a poisoned lock is
    /// taken over rather than failing every later call.
    fn locked<T>(&self, operation: impl FnOnce(Batch<'_>) -> T) -> T {
        let db = self.db.lock().unwrap_or_else(PoisonError::into_inner);
        operation(Batch { db: &db })
    }
}

/// A row that SQLite read but that does not make a record (see [`JournalError::Corrupt`]).
type RowResult<T> = Result<T, JournalError>;

#[cfg(test)]
mod tests {
    use super::{Journal, JournalError, test_support::block_task};
    use cpc_common::SecretKey;

    #[test]
    fn clones_share_one_journal_and_a_failed_batch_writes_nothing() {
        let journal = Journal::in_memory().expect("journal");
        let other = journal.clone();
        let address = SecretKey::generate().address().to_string();
        let (first, second) = (block_task(&address, 1), block_task(&address, 2));
        let failed = journal.batch(|batch| {
            batch.record_task("w", &first)?;
            batch.record_task("w", &second)?;
            Err::<(), _>(JournalError::Corrupt("the batch gives up".into()))
        });
        assert!(failed.is_err());
        assert!(
            other.task("w", &first.task_id.to_string()).expect("read").is_none(),
            "rolled back"
        );
        journal
            .batch(|batch| {
                batch.record_task("w", &first)?;
                batch.record_task("w", &second)
            })
            .expect("batch");
        for task in [&first, &second] {
            assert!(other.task("w", &task.task_id.to_string()).expect("read").is_some());
        }
    }
}

#[cfg(test)]
mod test_support {
    use cpc_common::{
        ComputeResult, SecretKey, Transaction, TxType, synthetic::BlockTask, tx::MIN_GAS_PRICE,
    };

    pub(super) fn signed(key: &SecretKey, task: &BlockTask, nonce: u64) -> Transaction {
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

    pub(super) fn block_task(address: &str, height: u64) -> BlockTask {
        BlockTask::derive(&format!("{height:064x}"), address, 8, height).expect("task")
    }
}
