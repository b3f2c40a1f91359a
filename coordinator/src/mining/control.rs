//! Control of a running mining node: [`MiningControl`], a cheap clonable handle for SIGHUP and the admin
//! API, with one typed request per operation and a oneshot reply each (as reth's `NetworkHandle`).
//!
//! **Reload** re-reads the config file and resolves the settings again with the same flags and
//! environment (they keep winning over the file), then applies what changed in place:
//! - identities: a new one gets a submitter and is planned from the next block; a removed one is
//!   retired: no new tasks, while its task in flight finishes and its submitter keeps sending and
//!   confirming what the journal holds for it (it stays listed by `identities`);
//! - nodes, gas price and matrix size: the watcher and every submitter use the new nodes and gas price
//!   from their next round, the planner the matrix size from the next block;
//! - validators (and `max_validator_matrix_size`): when they changed, the validator clients are stopped
//!   and started again with the new list. A job they were computing stays `received` in the journal and
//!   is computed and answered on the next connection (as after a restart).
//!
//! A config that does not resolve, names a key that does not load, or changes a setting that cannot
//! change in place ([`ReloadError::NotInPlace`], by name: the data dir, the listen, public, identity and
//! metrics addresses, the compute mode, the keystore, the farm's `scheduling` policy, the poll interval
//! and the journal retention) is refused with the reason, and the running settings stay as they were.

use super::{
    accounting::{self, IdentitiesQuery, IdentitiesReport, Since},
    journal::JournalError,
    settings::{Layer, Settings, SettingsError, Sources},
};
use tokio::sync::{mpsc, oneshot};

/// How many control requests may wait for the node.
const CONTROL_QUEUE: usize = 16;

/// Why a reload was refused; the running settings are unchanged.
#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    /// The config file cannot be read or a setting is not valid.
    #[error("reload refused, the running config stays: {0}")]
    Invalid(#[from] SettingsError),
    /// An identity's key cannot be loaded, or two names hold one key.
    #[error("reload refused, the running config stays: {0}")]
    Identities(String),
    /// A validator cannot be set up.
    #[error("reload refused, the running config stays: {0}")]
    Validators(String),
    /// Settings that only a restart can change were changed.
    #[error(
        "reload refused, the running config stays: {} cannot change without a restart (restart the coordinator, or put the old value back)",
        .0.join(", ")
    )]
    NotInPlace(Vec<&'static str>),
    /// The node was started without a source to re-read (a library caller that passed only settings).
    #[error("reload refused: this node was started without config sources to re-read")]
    NoSources,
    /// The node is not running (stopped, or a bounded run, which does not take control requests).
    #[error("the mining node is not running or does not take control requests")]
    NotRunning,
}

/// What a reload changed.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ReloadOutcome {
    /// Identities planned from the next block on.
    pub added: Vec<String>,
    /// Identities retired: no new tasks, their journaled results still settle.
    pub removed: Vec<String>,
    /// The settings that changed in place, by name.
    pub changed: Vec<String>,
}

impl ReloadOutcome {
    /// Whether nothing changed.
    pub fn is_empty(&self) -> bool {
        self.added.is_empty() && self.removed.is_empty() && self.changed.is_empty()
    }
}

/// Why an `identities` request failed.
#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    /// The journal cannot be read.
    #[error(transparent)]
    Journal(#[from] JournalError),
    /// The node is not running or does not take control requests.
    #[error("the mining node is not running or does not take control requests")]
    NotRunning,
}

/// One request to the running node.
#[derive(Debug)]
pub(super) enum Request {
    Reload(oneshot::Sender<Result<ReloadOutcome, ReloadError>>),
    Identities(Option<Since>, u64, oneshot::Sender<Result<IdentitiesReport, JournalError>>),
}

/// A cheap clonable handle on a running mining node (SIGHUP, the admin API).
#[derive(Debug, Clone)]
pub struct MiningControl {
    tx: mpsc::Sender<Request>,
}

/// The node's end of [`MiningControl`]: passed to [`super::node::run_controlled`].
#[derive(Debug)]
pub struct ControlInbox {
    pub(super) rx: mpsc::Receiver<Request>,
    pub(super) sources: Option<(Layer, Layer)>,
}

/// A control handle and the inbox to run the node with. `sources` are the flags and environment the
/// settings were resolved from: a reload reads the config file they name again (`None`: no reload).
pub fn channel(sources: Option<(Layer, Layer)>) -> (MiningControl, ControlInbox) {
    let (tx, rx) = mpsc::channel(CONTROL_QUEUE);
    (MiningControl { tx }, ControlInbox { rx, sources })
}

impl ControlInbox {
    /// An inbox nobody holds a handle to (a node run without control).
    pub fn detached() -> Self {
        channel(None).1
    }

    /// The settings as the sources say now (the config file read again).
    pub(super) fn reread(&self) -> Result<Settings, ReloadError> {
        let (flags, env) = self.sources.clone().ok_or(ReloadError::NoSources)?;
        Ok(Settings::resolve(&Sources::read(flags, env)?)?)
    }
}

impl MiningControl {
    /// Re-reads the config and applies it in place (see the module docs), or refuses it with the reason.
    pub async fn reload(&self) -> Result<ReloadOutcome, ReloadError> {
        let (reply, answer) = oneshot::channel();
        self.tx.send(Request::Reload(reply)).await.map_err(|_| ReloadError::NotRunning)?;
        answer.await.map_err(|_| ReloadError::NotRunning)?
    }

    /// The `identities` report of the running node: its configured identities (with none journaled
    /// yet) and every journaled one, with balances from its current nodes.
    pub async fn identities(
        &self,
        since: Option<Since>,
        within_blocks: u64,
    ) -> Result<IdentitiesReport, ControlError> {
        let (reply, answer) = oneshot::channel();
        self.tx
            .send(Request::Identities(since, within_blocks, reply))
            .await
            .map_err(|_| ControlError::NotRunning)?;
        Ok(answer.await.map_err(|_| ControlError::NotRunning)??)
    }
}

/// The report for a running node (see [`MiningControl::identities`]).
pub(super) async fn identities_report(
    journal: &super::journal::Journal,
    miner: &super::MinerHandle,
    since: Option<Since>,
    within_blocks: u64,
) -> Result<IdentitiesReport, JournalError> {
    let query = IdentitiesQuery {
        since,
        within_blocks,
        configured: miner.identities().into_iter().map(|id| id.name).collect(),
    };
    accounting::identities_report(journal, miner.nodes().as_ref(), &query).await
}

/// The names of the settings that differ between `old` and `new` but cannot change in place.
pub(super) fn not_in_place(old: &Settings, new: &Settings) -> Vec<&'static str> {
    let mut names = Vec::new();
    let mut check = |differs: bool, name: &'static str| {
        if differs {
            names.push(name);
        }
    };
    check(old.data_dir != new.data_dir, "data_dir");
    check(old.listen != new.listen, "listen");
    check(old.public_addr != new.public_addr, "public_addr");
    check(old.identity_dir != new.identity_dir, "identity_dir");
    check(old.metrics != new.metrics, "metrics");
    check(old.compute != new.compute, "compute");
    check(old.keystore != new.keystore, "keystore");
    check(old.scheduling != new.scheduling, "scheduling");
    check(old.io_threads != new.io_threads, "io_threads");
    check(old.poll_interval != new.poll_interval, "poll_interval_ms");
    check(old.journal_retention != new.journal_retention, "journal_retention_days");
    names
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settings_that_need_a_restart_are_named_and_the_others_are_not() {
        let flags = Layer {
            identities: vec!["w1".into()],
            data_dir: Some("/d".into()),
            ..Layer::default()
        };
        let old =
            Settings::resolve(&Sources { flags, ..Sources::default() }).expect("valid settings");
        let mut new = old.clone();
        new.identities.push("w2".into());
        new.nodes = vec!["http://other:1".into()];
        new.gas_price += 1;
        new.matrix_size = 16;
        assert!(not_in_place(&old, &new).is_empty());
        new.data_dir = "/elsewhere".into();
        new.listen = "127.0.0.1:1".parse().expect("addr");
        new.scheduling = crate::mining::priority::SchedulingPolicy::Fifo;
        new.io_threads = Some(0);
        assert_eq!(not_in_place(&old, &new), ["data_dir", "listen", "scheduling", "io_threads"]);
        let e = ReloadError::NotInPlace(not_in_place(&old, &new));
        assert!(
            e.to_string().contains(
                "data_dir, listen, scheduling, io_threads cannot change without a restart"
            )
        );
    }

    #[tokio::test]
    async fn a_node_that_is_gone_answers_not_running() {
        let (control, inbox) = channel(None);
        drop(inbox);
        assert!(matches!(control.reload().await, Err(ReloadError::NotRunning)));
        assert!(matches!(control.identities(None, 10).await, Err(ControlError::NotRunning)));
    }
}
