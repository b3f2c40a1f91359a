//! Tasks: what the planner derived from a block (or a validator job queued for the L1), and how far each
//! got: `planned` → `computed` → `submitted` → `included`, or `superseded` / `failed`.

use super::{Batch, JournalError, RowResult, now_ms};
use cpc_common::synthetic::BlockTask;
use rusqlite::{OptionalExtension, params};

/// Where a task comes from. Block tasks own their ids: a validator's result never takes a block task's id
/// (see [`Batch::record_task`] and [`Batch::record_validator_task`]).
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

/// What [`Batch::record_validator_task`] did.
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

impl Batch<'_> {
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
                task.challenge.seed(),
                task.challenge.matrix_size(),
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
                task.challenge.seed(),
                task.challenge.matrix_size(),
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
}

locked! {
    fn record_task(identity: &str, task: &BlockTask) -> bool;
    fn record_validator_task(
        identity: &str,
        task: &BlockTask,
        result_hash: &str,
    ) -> ValidatorTaskOutcome;
    fn fail_validator_task(identity: &str, task_id: &str, reason: &str) -> ();
    fn is_block_task(identity: &str, task_id: &str) -> bool;
    fn record_result(identity: &str, task_id: &str, result_hash: &str) -> ();
    fn supersede(identity: &str, task_id: &str) -> ();
    fn fail_task(identity: &str, task_id: &str, reason: &str) -> ();
    fn tasks_in_state(identity: &str, state: TaskState) -> Vec<TaskRecord>;
    fn task(identity: &str, task_id: &str) -> Option<TaskRecord>;
}

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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mining::journal::{Journal, test_support::block_task};
    use cpc_common::SecretKey;

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
}
