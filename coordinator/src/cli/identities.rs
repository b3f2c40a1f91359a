//! `identities`: per worker identity, what the farm did with each block and why it missed the ones it
//! was not paid for, from the journal of a data dir (read-only: safe while `run` holds the data dir), with
//! balances and the head from `--node` when it answers. The report is library code
//! ([`cpc_coordinator::mining::accounting`]); this prints it.

use super::{GlobalArgs, output::print_json};
use clap::Args;
use cpc_coordinator::{
    data_dir,
    l1::NodePool,
    mining::accounting::{
        self, DEFAULT_WITHIN_BLOCKS, IdentitiesQuery, IdentitiesReport, IdentityAccount, Since,
    },
};
use std::{path::PathBuf, process::ExitCode};

/// Misses printed per identity in the table (the JSON has them all, up to the library's cap).
const MISSES_SHOWN: usize = 10;

#[derive(Debug, Args)]
pub(crate) struct IdentitiesArgs {
    /// Data directory of the coordinator (its journal is read, never written) [default: ~/.cpc-farm].
    #[arg(long, env = "CPC_DATA_DIR", help_heading = "Report")]
    data_dir: Option<PathBuf>,
    /// Only blocks from this height (e.g. 1200) or from this long ago (e.g. 90m, 2h, 1d).
    #[arg(long, value_name = "HEIGHT|DURATION", help_heading = "Report")]
    since: Option<Since>,
    /// A result not included this many blocks after its own block counts as missed.
    #[arg(long, default_value_t = DEFAULT_WITHIN_BLOCKS, help_heading = "Report")]
    within_blocks: u64,
    /// Work from the journal only: no balances, and the journal's newest block as the head.
    #[arg(long, help_heading = "Report")]
    offline: bool,
}

pub(crate) async fn run(g: &GlobalArgs, args: IdentitiesArgs) -> anyhow::Result<ExitCode> {
    let dir = super::data_dir_or_default(args.data_dir)?;
    let journal = data_dir::open_journal_read_only(&dir)?;
    let nodes = (!args.offline).then(|| NodePool::new(&[g.node_url().to_owned()]));
    let query = IdentitiesQuery {
        since: args.since,
        within_blocks: args.within_blocks,
        configured: Vec::new(),
    };
    let report = accounting::identities_report(&journal, nodes.as_ref(), &query).await?;
    if g.json {
        print_json(&report)?;
    } else {
        print_table(&report);
    }
    Ok(ExitCode::SUCCESS)
}

pub(super) fn print_table(report: &IdentitiesReport) {
    let since = report.since.map_or_else(|| "the whole journal".to_owned(), |s| s.to_string());
    let head = report.head.map_or_else(|| "unknown".to_owned(), |h| h.to_string());
    eprintln!(
        "since {since}; head {head} (from the {}); missed = not included within {} blocks or a reason below",
        report.head_from, report.within_blocks
    );
    if let Some(e) = &report.node_error {
        eprintln!("no balances: the node did not answer ({e})");
    }
    println!(
        "{:<14} {:>26} {:>6} {:>8} {:>9} {:>8} {:>6} {:>7} {:>13} {:>22}",
        "identity",
        "balance",
        "seen",
        "computed",
        "submitted",
        "included",
        "missed",
        "pending",
        "last_included",
        "fees_spent"
    );
    for a in &report.identities {
        print_account(a);
    }
}

fn print_account(a: &IdentityAccount) {
    let balance = a.balance.as_deref().map_or_else(|| "-".to_owned(), cpc);
    println!(
        "{:<14} {:>26} {:>6} {:>8} {:>9} {:>8} {:>6} {:>7} {:>13} {:>22}",
        a.name,
        balance,
        a.blocks_seen,
        a.tasks_computed,
        a.submitted,
        a.included,
        a.missed,
        a.pending,
        a.last_included_block.map_or_else(|| "-".to_owned(), |h| h.to_string()),
        cpc(&a.fees_spent)
    );
    if !a.missed_by_reason.is_empty() {
        let counts: Vec<String> =
            a.missed_by_reason.iter().map(|(reason, n)| format!("{reason} {n}")).collect();
        println!("  missed: {}", counts.join(", "));
    }
    for miss in a.misses.iter().rev().take(MISSES_SHOWN) {
        println!("  block {:<8} {}", miss.height, miss.reason);
    }
}

/// Base units as CPC, or the text as it came where it is not a number.
fn cpc(base_units: &str) -> String {
    base_units.parse().map_or_else(
        |_| base_units.to_owned(),
        |units| format!("{} CPC", super::output::format_cpc(units)),
    )
}
