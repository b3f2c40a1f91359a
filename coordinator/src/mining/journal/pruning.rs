//! Pruning: settled rows older than the retention (`--journal-retention-days`) are deleted; open work
//! never is.

use super::{Batch, JournalError};
use rusqlite::params;

impl Batch<'_> {
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
}

locked! {
    fn prune(before_ms: i64) -> usize;
}

#[cfg(test)]
mod tests {
    use crate::mining::journal::{
        Journal, TaskState, now_ms,
        test_support::{block_task, signed},
    };
    use cpc_common::SecretKey;

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
}
