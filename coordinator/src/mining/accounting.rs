//! "Why was I not paid?": per identity, what the farm did with each block since a point in time, and why
//! each block it did not get paid for was missed. Built from the journal alone (so `cpc-coordinator
//! identities` works beside a running coordinator, or after it stopped), with the balance and the head
//! from a node when one answers.
//!
//! A block task is *included*, *missed* or still *pending*. A miss has one [`MissReason`]: the cause the
//! mining loop recorded as it happened (superseded, no device, underfunded, rejected), else, for a task
//! that is not included [`IdentitiesQuery::within_blocks`] blocks after its own, `not_included` with
//! how far it got. Validator jobs submitted to the L1 are not block tasks and are not counted here.

use super::journal::{AccountingRow, AccountingWindow, Journal, JournalError, MissCause, now_ms};
use crate::l1::NodePool;
use std::{collections::BTreeMap, fmt, str::FromStr, time::Duration};

/// Default number of blocks after its own within which a task's result must be included.
pub const DEFAULT_WITHIN_BLOCKS: u64 = 10;
/// Longest list of misses per identity in a report (the counts cover every miss).
pub const MAX_LISTED_MISSES: usize = 200;

/// Where a report starts: a block height, or a time before now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Since {
    /// Tasks seeded at this height or later.
    Height(u64),
    /// Tasks planned within this long before now.
    Ago(Duration),
}

/// A `--since` value that is neither a height nor a duration.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "invalid --since `{0}`: expected a block height (e.g. 1200) or a duration with a unit s, m, h or d (e.g. 90m, 2h, 1d)"
)]
pub struct InvalidSince(pub String);

impl FromStr for Since {
    type Err = InvalidSince;
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let invalid = || InvalidSince(text.to_owned());
        if let Ok(height) = text.parse::<u64>() {
            return Ok(Self::Height(height));
        }
        let split = text.find(|c: char| !c.is_ascii_digit()).ok_or_else(invalid)?;
        let (number, unit) = text.split_at(split);
        let number: u64 = number.parse().map_err(|_| invalid())?;
        let seconds = match unit {
            "s" => 1,
            "m" => 60,
            "h" => 3600,
            "d" => 86_400,
            _ => return Err(invalid()),
        };
        Ok(Self::Ago(Duration::from_secs(number.checked_mul(seconds).ok_or_else(invalid)?)))
    }
}

impl fmt::Display for Since {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Height(h) => write!(f, "height {h}"),
            Self::Ago(d) => write!(f, "{}s ago", d.as_secs()),
        }
    }
}

/// In JSON, as `--since` takes it: `"1200"` (a height) or `"5400s"` (a duration), so it reads back.
impl serde::Serialize for Since {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Self::Height(h) => s.collect_str(h),
            Self::Ago(d) => s.collect_str(&format_args!("{}s", d.as_secs())),
        }
    }
}

impl<'de> serde::Deserialize<'de> for Since {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

/// What a report covers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdentitiesQuery {
    /// Where the report starts (`None`: everything the journal holds).
    pub since: Option<Since>,
    /// A task not included this many blocks after its own is missed (`not_included`).
    pub within_blocks: u64,
    /// Identities to list even without a task in the window (a running node's configured ones).
    pub configured: Vec<String>,
}

impl Default for IdentitiesQuery {
    fn default() -> Self {
        Self { since: None, within_blocks: DEFAULT_WITHIN_BLOCKS, configured: Vec::new() }
    }
}

/// Why a block paid nothing.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(tag = "reason", rename_all = "snake_case")]
pub enum MissReason {
    /// A newer block came before its task was computed.
    Superseded,
    /// No usable device was connected while its task waited (it was superseded or failed).
    NoDevice,
    /// The identity could not pay the fee; the result stays journaled and goes out once funded.
    Underfunded {
        /// The balance and what was needed, where known.
        detail: Option<String>,
    },
    /// The node rejected the submission.
    Rejected {
        /// The node's message.
        message: String,
    },
    /// Not included within [`IdentitiesQuery::within_blocks`] blocks of its own.
    NotIncluded {
        /// The window, in blocks.
        within_blocks: u64,
        /// How far the task got: `planned` (never computed), `computed` (never sent) or `submitted`.
        stage: String,
    },
    /// The computation failed with a device connected, or the task failed for another reason.
    Failed {
        /// The error.
        message: String,
    },
}

impl MissReason {
    /// The reason's name, as in the JSON `reason` field.
    pub fn name(&self) -> &'static str {
        match self {
            Self::Superseded => "superseded",
            Self::NoDevice => "no_device",
            Self::Underfunded { .. } => "underfunded",
            Self::Rejected { .. } => "rejected",
            Self::NotIncluded { .. } => "not_included",
            Self::Failed { .. } => "failed",
        }
    }
}

impl fmt::Display for MissReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Superseded => {
                f.write_str("superseded: a newer block came before it was computed")
            }
            Self::NoDevice => f.write_str("no device: no usable device was connected"),
            Self::Underfunded { detail: Some(d) } => write!(f, "underfunded: {d}"),
            Self::Underfunded { detail: None } => f.write_str("underfunded"),
            Self::Rejected { message } => write!(f, "rejected by the node: {message}"),
            Self::NotIncluded { within_blocks, stage } => {
                write!(f, "not included within {within_blocks} blocks ({stage})")
            }
            Self::Failed { message } => write!(f, "failed: {message}"),
        }
    }
}

/// One missed block of an identity.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Miss {
    /// The block's height.
    pub height: u64,
    /// The task id.
    pub task_id: String,
    /// Why.
    #[serde(flatten)]
    pub reason: MissReason,
}

/// One identity's account.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct IdentityAccount {
    /// Key name.
    pub name: String,
    /// Address (from the journal; `None` for a configured identity with no task yet).
    pub address: Option<String>,
    /// Balance in 10^-18 CPC from the node (`None` when no node answered).
    pub balance: Option<String>,
    /// Blocks the planner saw for it (one task each).
    pub blocks_seen: u64,
    /// Tasks whose result was computed.
    pub tasks_computed: u64,
    /// Tasks with at least one signed submission.
    pub submitted: u64,
    /// Tasks included on chain.
    pub included: u64,
    /// Tasks missed (see `misses`).
    pub missed: u64,
    /// Tasks neither included nor missed yet.
    pub pending: u64,
    /// Misses counted by reason name.
    pub missed_by_reason: BTreeMap<String, u64>,
    /// The misses, oldest first (at most [`MAX_LISTED_MISSES`], the newest kept).
    pub misses: Vec<Miss>,
    /// The last block that included one of its results.
    pub last_included_block: Option<u64>,
    /// Fees of its included submissions, in 10^-18 CPC.
    pub fees_spent: String,
}

/// The `identities` report.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct IdentitiesReport {
    /// Where it starts (`None`: the whole journal).
    pub since: Option<Since>,
    /// The head the `not_included` window is judged against.
    pub head: Option<u64>,
    /// Where the head comes from: `node`, or `journal` (its newest task) when no node answered.
    pub head_from: String,
    /// The `not_included` window, in blocks.
    pub within_blocks: u64,
    /// Why the balances are missing, when they are.
    pub node_error: Option<String>,
    /// One account per identity, by name.
    pub identities: Vec<IdentityAccount>,
}

/// Builds the report from `journal`, asking `nodes` (if any) for the head and the balances.
pub async fn identities_report(
    journal: &Journal,
    nodes: Option<&NodePool>,
    query: &IdentitiesQuery,
) -> Result<IdentitiesReport, JournalError> {
    let window = match query.since {
        None => AccountingWindow::default(),
        Some(Since::Height(h)) => AccountingWindow { from_height: h, from_ms: 0 },
        Some(Since::Ago(d)) => AccountingWindow {
            from_height: 0,
            from_ms: now_ms().saturating_sub(d.as_millis().try_into().unwrap_or(i64::MAX)),
        },
    };
    let rows = journal.accounting(window)?;
    let mut names: BTreeMap<String, Option<String>> =
        query.configured.iter().map(|n| (n.clone(), None)).collect();
    for (name, address) in journal.journaled_identities()? {
        names.insert(name, Some(address));
    }
    let mut node_error = None;
    let head = match nodes {
        Some(pool) => match pool.status().await {
            Ok(status) => Some(status.height),
            Err(e) => {
                node_error = Some(e.to_string());
                None
            }
        },
        None => None,
    };
    let (head, head_from) = match head {
        Some(h) => (Some(h), "node".to_owned()),
        None => (journal.highest_task_height()?, "journal".to_owned()),
    };
    let mut identities = Vec::with_capacity(names.len());
    for (name, address) in names {
        let own: Vec<&AccountingRow> = rows.iter().filter(|r| r.identity == name).collect();
        let mut account = account(&name, address, &own, head, query.within_blocks);
        if let (Some(pool), Some(address), None) = (nodes, &account.address, &node_error) {
            match pool.client().balance(address).await {
                Ok(b) => account.balance = Some(b.balance),
                Err(e) => node_error = Some(e.to_string()),
            }
        }
        identities.push(account);
    }
    Ok(IdentitiesReport {
        since: query.since,
        head,
        head_from,
        within_blocks: query.within_blocks,
        node_error,
        identities,
    })
}

/// What became of one task: `Ok(true)` included, `Ok(false)` pending, `Err` missed.
fn outcome(row: &AccountingRow, head: Option<u64>, within: u64) -> Result<bool, MissReason> {
    let overdue = head.is_some_and(|h| h > row.height.saturating_add(within));
    let not_included =
        || MissReason::NotIncluded { within_blocks: within, stage: row.state.clone() };
    match (row.state.as_str(), row.miss) {
        ("included", _) => Ok(true),
        ("superseded", Some(MissCause::NoDevice)) => Err(MissReason::NoDevice),
        ("superseded", _) => Err(MissReason::Superseded),
        ("failed", cause) if cause == Some(MissCause::Rejected) || row.rejected_with.is_some() => {
            Err(MissReason::Rejected {
                message: row
                    .rejected_with
                    .clone()
                    .or_else(|| row.error.clone())
                    .unwrap_or_else(|| "no message".into()),
            })
        }
        ("failed", _) => Err(MissReason::Failed {
            message: row.error.clone().unwrap_or_else(|| "no reason recorded".into()),
        }),
        ("computed", Some(MissCause::Underfunded)) => {
            Err(MissReason::Underfunded { detail: row.error.clone() })
        }
        ("planned", Some(MissCause::NoDevice)) => Err(MissReason::NoDevice),
        ("planned", Some(MissCause::ComputeFailed)) => Err(MissReason::Failed {
            message: row.error.clone().unwrap_or_else(|| "computation failed".into()),
        }),
        _ if overdue => Err(not_included()),
        _ => Ok(false),
    }
}

fn account(
    name: &str,
    address: Option<String>,
    rows: &[&AccountingRow],
    head: Option<u64>,
    within: u64,
) -> IdentityAccount {
    let mut a = IdentityAccount {
        name: name.to_owned(),
        address,
        balance: None,
        blocks_seen: rows.len() as u64,
        tasks_computed: rows.iter().filter(|r| r.computed).count() as u64,
        submitted: rows.iter().filter(|r| r.submissions > 0).count() as u64,
        included: 0,
        missed: 0,
        pending: 0,
        missed_by_reason: BTreeMap::new(),
        misses: Vec::new(),
        last_included_block: rows.iter().filter_map(|r| r.included_in).max(),
        fees_spent: rows.iter().filter_map(|r| r.fee).sum::<u128>().to_string(),
    };
    for row in rows {
        match outcome(row, head, within) {
            Ok(true) => a.included += 1,
            Ok(false) => a.pending += 1,
            Err(reason) => {
                a.missed += 1;
                *a.missed_by_reason.entry(reason.name().to_owned()).or_default() += 1;
                a.misses.push(Miss { height: row.height, task_id: row.task_id.clone(), reason });
            }
        }
    }
    if a.misses.len() > MAX_LISTED_MISSES {
        a.misses.drain(..a.misses.len() - MAX_LISTED_MISSES);
    }
    a
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn since_is_a_height_or_a_duration_with_a_unit() {
        assert_eq!("1200".parse(), Ok(Since::Height(1200)));
        assert_eq!("90m".parse(), Ok(Since::Ago(Duration::from_secs(5400))));
        assert_eq!("2h".parse(), Ok(Since::Ago(Duration::from_secs(7200))));
        assert_eq!("1d".parse(), Ok(Since::Ago(Duration::from_secs(86_400))));
        assert_eq!("30s".parse(), Ok(Since::Ago(Duration::from_secs(30))));
        for bad in ["", "h", "2w", "-3", "1.5h", "99999999999999999999d"] {
            assert!(bad.parse::<Since>().is_err(), "{bad}");
        }
    }

    fn row(height: u64, state: &str, miss: Option<MissCause>) -> AccountingRow {
        AccountingRow {
            identity: "w".into(),
            worker_address: "cpc1w".into(),
            height,
            task_id: format!("t{height}"),
            state: state.into(),
            computed: !matches!(state, "planned" | "superseded"),
            miss,
            error: None,
            submissions: u64::from(matches!(state, "submitted" | "included" | "failed")),
            rejected_with: None,
            included_in: (state == "included").then_some(height + 1),
            fee: (state == "included").then_some(7),
        }
    }

    #[test]
    fn each_task_is_included_pending_or_missed_with_one_reason() {
        let mut rejected = row(5, "failed", Some(MissCause::Rejected));
        rejected.error = Some("invalid result".into());
        let mut underfunded = row(6, "computed", Some(MissCause::Underfunded));
        underfunded.error = Some("balance 0 < 10 needed".into());
        let rows = [
            row(1, "included", None),
            row(2, "superseded", Some(MissCause::Superseded)),
            row(3, "superseded", Some(MissCause::NoDevice)),
            row(4, "submitted", None),
            rejected,
            underfunded,
            row(19, "submitted", None),
            row(20, "planned", None),
            row(21, "included", None),
        ];
        let refs: Vec<&AccountingRow> = rows.iter().collect();
        let a = account("w", Some("cpc1w".into()), &refs, Some(21), 10);
        assert_eq!((a.blocks_seen, a.included, a.missed, a.pending), (9, 2, 5, 2));
        assert_eq!((a.tasks_computed, a.submitted), (6, 5));
        assert_eq!(a.last_included_block, Some(22));
        assert_eq!(a.fees_spent, "14");
        let reasons: Vec<String> = a.misses.iter().map(|m| m.reason.to_string()).collect();
        assert_eq!(
            reasons,
            [
                "superseded: a newer block came before it was computed",
                "no device: no usable device was connected",
                "not included within 10 blocks (submitted)",
                "rejected by the node: invalid result",
                "underfunded: balance 0 < 10 needed",
            ]
        );
        let json = serde_json::to_value(&a.misses[3]).expect("json");
        assert_eq!(json["reason"], "rejected");
        assert_eq!(json["message"], "invalid result");
        assert_eq!(json["height"], 5);
    }
}
