//! The mining report: each task with where its submission landed (`run --stop-after-blocks`).

use super::{Batch, JournalError};
use rusqlite::params;

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

impl Batch<'_> {
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

locked! {
    fn report(from_height: u64) -> Vec<ReportRow>;
}
