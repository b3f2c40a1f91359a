//! Submissions: every signed `SUBMIT_RESULT`, written before it is sent: `signed` → `sent` → `included`,
//! or `dropped` / `rejected` (its task then goes back to `computed` for a fresh nonce).

use super::{Batch, JournalError, RowResult, now_ms};
use cpc_common::Transaction;
use rusqlite::params;

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

impl Batch<'_> {
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

locked! {
    fn record_signed(identity: &str, task_id: &str, height: u64, tx: &Transaction) -> ();
    fn mark_sent(tx_hash: &str) -> ();
    fn mark_included(tx_hash: &str, height: u64) -> ();
    fn mark_lost(tx_hash: &str, state: SubmissionState, reason: &str) -> ();
    fn open_submissions(identity: &str) -> Vec<SubmissionRecord>;
    fn submissions(identity: &str) -> Vec<SubmissionRecord>;
    fn highest_open_nonce(identity: &str) -> Option<u64>;
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
    use crate::mining::journal::{Journal, TaskState, test_support::signed};
    use cpc_common::{SecretKey, synthetic::BlockTask};

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
