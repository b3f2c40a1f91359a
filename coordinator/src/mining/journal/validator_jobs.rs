//! Validator jobs (`validator_jobs`, keyed by validator URL, identity and job id): `received` (written on
//! receipt, before any work) → `computed` → `answered`, or `failed` → `answered`.

use super::{Batch, JournalError, RowResult, now_ms};
use rusqlite::{OptionalExtension, params};

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

impl Batch<'_> {
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
                job.challenge.seed(),
                job.challenge.matrix_size(),
                job.challenge.iterations(),
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

locked! {
    fn record_validator_job(job: &ValidatorJobRecord) -> bool;
    fn record_validator_result(
        validator: &str,
        identity: &str,
        job_id: &str,
        result_hash: &str,
    ) -> ();
    fn fail_validator_job(validator: &str, identity: &str, job_id: &str, reason: &str) -> ();
    fn mark_validator_answered(validator: &str, identity: &str, job_id: &str) -> ();
    fn validator_job(validator: &str, identity: &str, job_id: &str) -> Option<ValidatorJobRecord>;
    fn unanswered_validator_jobs(validator: &str, identity: &str) -> Vec<ValidatorJobRecord>;
    fn validator_jobs() -> Vec<ValidatorJobRecord>;
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mining::journal::Journal;

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
}
