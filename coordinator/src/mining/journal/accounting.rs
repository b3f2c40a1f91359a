//! What the `identities` report reads: each block task with how far it got and, where the mining loop
//! knew it, why it was missed ([`MissCause`], the `tasks.miss` column), plus its submissions' outcome.
//! The planner and the submitters write the causes as they happen ([`Batch::note_miss`],
//! [`Batch::note_miss_computed`]); the report itself is built in [`crate::mining::accounting`].

use super::{Batch, JournalError};
use rusqlite::params;

/// Why a task missed its block, as the mining loop saw it happen (stored in `tasks.miss`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum MissCause {
    /// A newer block came while it was computing.
    Superseded,
    /// No usable device was connected (superseded, or its computation failed, meanwhile).
    NoDevice,
    /// The identity's balance did not cover the fee when it was to be signed.
    Underfunded,
    /// The node rejected its submission (the node's message is the task's `error`).
    Rejected,
    /// Its computation failed with a device connected (the error is the task's `error`).
    ComputeFailed,
}

impl MissCause {
    /// The stored text.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Superseded => "superseded",
            Self::NoDevice => "no_device",
            Self::Underfunded => "underfunded",
            Self::Rejected => "rejected",
            Self::ComputeFailed => "compute_failed",
        }
    }

    /// The cause stored as `text` (`None` for text a newer version wrote).
    pub fn parse(text: &str) -> Option<Self> {
        Some(match text {
            "superseded" => Self::Superseded,
            "no_device" => Self::NoDevice,
            "underfunded" => Self::Underfunded,
            "rejected" => Self::Rejected,
            "compute_failed" => Self::ComputeFailed,
            _ => return None,
        })
    }
}

/// One block task as the `identities` report needs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccountingRow {
    /// Identity (key name).
    pub identity: String,
    /// Its address.
    pub worker_address: String,
    /// Height of the seeding block.
    pub height: u64,
    /// The task id.
    pub task_id: String,
    /// `planned`, `computed`, `submitted`, `included`, `superseded` or `failed`.
    pub state: String,
    /// A result was computed.
    pub computed: bool,
    /// Why it missed, where the mining loop recorded it.
    pub miss: Option<MissCause>,
    /// The task's error (a node's rejection message, a compute error, an underfunded balance).
    pub error: Option<String>,
    /// How many submissions were signed for it.
    pub submissions: u64,
    /// The message of its last submission the node rejected, if any.
    pub rejected_with: Option<String>,
    /// The block that includes it.
    pub included_in: Option<u64>,
    /// The fee of its included submission (base units).
    pub fee: Option<u128>,
}

/// Which tasks a report covers: seeded at `from_height` or later, and planned at `from_ms` or later.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct AccountingWindow {
    /// Lowest seeding height.
    pub from_height: u64,
    /// Earliest planning time, milliseconds since the epoch.
    pub from_ms: i64,
}

impl Batch<'_> {
    /// Records why `identity`'s task missed (or may miss) its block, with a detail where there is one.
    /// The task's state is left as it is.
    pub fn note_miss(
        &self,
        identity: &str,
        task_id: &str,
        cause: MissCause,
        detail: Option<&str>,
    ) -> Result<(), JournalError> {
        self.db.execute(
            "UPDATE tasks SET miss = ?3, error = COALESCE(?4, error) WHERE identity = ?1 AND task_id = ?2",
            params![identity, task_id, cause.as_str(), detail],
        )?;
        Ok(())
    }

    /// Records `cause` on every computed, not yet signed block task of `identity` (an underfunded balance
    /// holds them all back).
    pub fn note_miss_computed(
        &self,
        identity: &str,
        cause: MissCause,
        detail: &str,
    ) -> Result<(), JournalError> {
        self.db.execute(
            "UPDATE tasks SET miss = ?2, error = ?3
             WHERE identity = ?1 AND state = 'computed' AND origin = 'block'",
            params![identity, cause.as_str(), detail],
        )?;
        Ok(())
    }

    /// Every block task in `window`, by identity then height.
    pub fn accounting(&self, window: AccountingWindow) -> Result<Vec<AccountingRow>, JournalError> {
        // A journal opened read-only is not migrated: one from before miss causes has no column.
        let has_miss = self
            .db
            .prepare("SELECT 1 FROM pragma_table_info('tasks') WHERE name = 'miss'")?
            .exists([])?;
        let miss = if has_miss { "t.miss" } else { "NULL" };
        let mut stmt = self.db.prepare(&format!(
            "SELECT t.identity, t.worker_address, t.height, t.task_id, t.state, t.result_hash IS NOT NULL,
                    {miss}, t.error,
                    (SELECT COUNT(*) FROM submissions s WHERE s.identity = t.identity AND s.task_id = t.task_id),
                    (SELECT s.error FROM submissions s WHERE s.identity = t.identity AND s.task_id = t.task_id
                       AND s.state = 'rejected' ORDER BY s.created_ms DESC LIMIT 1),
                    (SELECT s.included_height FROM submissions s WHERE s.identity = t.identity
                       AND s.task_id = t.task_id AND s.state = 'included' LIMIT 1),
                    (SELECT s.tx_json FROM submissions s WHERE s.identity = t.identity
                       AND s.task_id = t.task_id AND s.state = 'included' LIMIT 1)
             FROM tasks t
             WHERE t.origin = 'block' AND t.height >= ?1 AND t.created_ms >= ?2
             ORDER BY t.identity, t.height"
        ))?;
        let rows = stmt.query_map(params![window.from_height as i64, window.from_ms], |r| {
            let tx_json: Option<String> = r.get(11)?;
            let miss: Option<String> = r.get(6)?;
            Ok(AccountingRow {
                identity: r.get(0)?,
                worker_address: r.get(1)?,
                height: r.get::<_, i64>(2)? as u64,
                task_id: r.get(3)?,
                state: r.get(4)?,
                computed: r.get(5)?,
                miss: miss.as_deref().and_then(MissCause::parse),
                error: r.get(7)?,
                submissions: r.get::<_, i64>(8)? as u64,
                rejected_with: r.get(9)?,
                included_in: r.get::<_, Option<i64>>(10)?.map(|h| h as u64),
                fee: tx_json.as_deref().and_then(included_fee),
            })
        })?;
        Ok(rows.collect::<Result<Vec<_>, _>>()?)
    }

    /// Every identity with a block task in the journal, and its address.
    pub fn journaled_identities(&self) -> Result<Vec<(String, String)>, JournalError> {
        let mut stmt = self.db.prepare(
            "SELECT identity, MAX(worker_address) FROM tasks WHERE origin = 'block'
             GROUP BY identity ORDER BY identity",
        )?;
        let rows = stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?;
        Ok(rows.collect::<Result<Vec<_>, _>>()?)
    }

    /// The highest block height the journal has a task for (the head as the journal last saw it).
    pub fn highest_task_height(&self) -> Result<Option<u64>, JournalError> {
        let h: Option<i64> =
            self.db.query_row("SELECT MAX(height) FROM tasks", [], |r| r.get(0))?;
        Ok(h.map(|h| h as u64))
    }
}

/// The fee of a journaled transaction (`None` if it does not parse: it was checked when signed).
fn included_fee(tx_json: &str) -> Option<u128> {
    serde_json::from_str::<cpc_common::Transaction>(tx_json).ok().map(|tx| tx.fee)
}

locked! {
    fn note_miss(identity: &str, task_id: &str, cause: MissCause, detail: Option<&str>) -> ();
    fn note_miss_computed(identity: &str, cause: MissCause, detail: &str) -> ();
    fn accounting(window: AccountingWindow) -> Vec<AccountingRow>;
    fn journaled_identities() -> Vec<(String, String)>;
    fn highest_task_height() -> Option<u64>;
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mining::journal::{
        Journal, SubmissionState,
        test_support::{block_task, signed},
    };
    use cpc_common::SecretKey;

    #[test]
    fn rows_carry_the_recorded_cause_the_rejection_and_the_included_fee() {
        let j = Journal::in_memory().expect("journal");
        let key = SecretKey::generate();
        let address = key.address().to_string();
        let tasks: Vec<_> = (1..=4).map(|h| block_task(&address, h)).collect();
        for t in &tasks {
            j.record_task("w", t).expect("task");
        }
        let id = |i: usize| tasks[i].task_id.to_string();
        // 1: superseded with no device; 2: underfunded; 3: rejected; 4: included.
        j.supersede("w", &id(0)).expect("supersede");
        j.note_miss("w", &id(0), MissCause::NoDevice, None).expect("cause");
        for i in 1..4 {
            j.record_result("w", &id(i), &"ab".repeat(32)).expect("computed");
        }
        j.note_miss_computed("w", MissCause::Underfunded, "balance 0 < fee 10").expect("cause");
        let rejected = signed(&key, &tasks[2], 0);
        j.record_signed("w", &id(2), 3, &rejected).expect("signed");
        j.mark_lost(&rejected.hash_hex(), SubmissionState::Rejected, "bad result").expect("lost");
        j.fail_task("w", &id(2), "bad result").expect("failed");
        let included = signed(&key, &tasks[3], 1);
        j.record_signed("w", &id(3), 4, &included).expect("signed");
        j.mark_included(&included.hash_hex(), 6).expect("included");

        let rows = j.accounting(AccountingWindow::default()).expect("rows");
        assert_eq!(rows.len(), 4);
        assert_eq!(
            (rows[0].state.as_str(), rows[0].miss),
            ("superseded", Some(MissCause::NoDevice))
        );
        assert!(!rows[0].computed);
        assert_eq!(
            (rows[1].state.as_str(), rows[1].miss),
            ("computed", Some(MissCause::Underfunded))
        );
        assert_eq!(rows[1].error.as_deref(), Some("balance 0 < fee 10"));
        assert_eq!(rows[2].state, "failed");
        assert_eq!(rows[2].rejected_with.as_deref(), Some("bad result"));
        assert_eq!((rows[3].included_in, rows[3].fee), (Some(6), Some(included.fee)));
        assert_eq!(rows[3].submissions, 1);
        let window = AccountingWindow { from_height: 3, from_ms: 0 };
        assert_eq!(j.accounting(window).expect("rows").len(), 2);
        assert_eq!(j.journaled_identities().expect("ids"), [("w".to_owned(), address)]);
        assert_eq!(j.highest_task_height().expect("height"), Some(4));
    }
}
