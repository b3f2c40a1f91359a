//! The on-disk schema, and the migrations that let journals written by older versions open.

use super::{Batch, JournalError};
use rusqlite::Connection;

/// The tables; `CREATE ... IF NOT EXISTS`, so opening an existing journal leaves it as it is.
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
    miss TEXT,
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

/// Creates what is missing and migrates older journals.
pub(super) fn prepare(db: &Connection) -> Result<(), JournalError> {
    db.execute_batch(SCHEMA)?;
    // Journals written before task origins existed hold block tasks only.
    let has_origin =
        db.prepare("SELECT 1 FROM pragma_table_info('tasks') WHERE name = 'origin'")?.exists([])?;
    if !has_origin {
        db.execute_batch("ALTER TABLE tasks ADD COLUMN origin TEXT NOT NULL DEFAULT 'block'")?;
    }
    // Journals written before miss causes were recorded (`identities` then derives what it can).
    let has_miss =
        db.prepare("SELECT 1 FROM pragma_table_info('tasks') WHERE name = 'miss'")?.exists([])?;
    if !has_miss {
        db.execute_batch("ALTER TABLE tasks ADD COLUMN miss TEXT")?;
    }
    Ok(())
}

impl Batch<'_> {
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
}

locked! {
    fn check_integrity() -> ();
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mining::journal::{Journal, TaskOrigin, test_support::block_task};
    use cpc_common::SecretKey;
    use rusqlite::params;

    #[test]
    fn a_journal_written_before_task_origins_opens_and_reads_as_block_tasks() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("journal.sqlite");
        let key = SecretKey::generate();
        let task = block_task(&key.address().to_string(), 3);
        {
            let db = Connection::open(&path).expect("open");
            db.execute_batch(
                &SCHEMA
                    .replace("    origin TEXT NOT NULL DEFAULT 'block',\n", "")
                    .replace("    miss TEXT,\n", ""),
            )
            .expect("old schema");
            db.execute(
                "INSERT INTO tasks (identity, task_id, height, block_hash, worker_address, seed, matrix_size, state, created_ms)
                 VALUES ('w', ?1, 3, ?2, ?3, ?4, 8, 'planned', 0)",
                params![task.task_id.to_string(), task.block_hash, task.worker_address, task.challenge.seed()],
            )
            .expect("old row");
        }
        let j = Journal::open(&path).expect("migrates");
        j.check_integrity().expect("intact");
        let t = j.task("w", &task.task_id.to_string()).expect("read").expect("task");
        assert_eq!(t.origin, TaskOrigin::Block);
        j.note_miss(
            "w",
            &task.task_id.to_string(),
            crate::mining::journal::MissCause::NoDevice,
            None,
        )
        .expect("the added miss column takes writes");
    }
}
