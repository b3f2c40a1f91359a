//! The mining node as a library call: [`run`] takes resolved [`Settings`] and the process's shutdown
//! token, and wires what `cpc-coordinator run` runs: the identities' keys, the data dir's lock and journal,
//! the farm (QUIC agents and the metrics endpoint), the compute service, the mining loop
//! ([`super::spawn`]) and the PoC validator clients. It stops everything it started before it returns.
//!
//! A run is unbounded (until the token is cancelled), or bounded (`stop_after_blocks`): then it waits for a
//! node, mines that many new blocks, waits for their submissions to settle, and answers a [`RunReport`]
//! with every (block, identity) of the window. What an operator should see on the way comes out as
//! [`RunEvent`]s; the caller prints them (the CLI) or ignores them (a test).

use super::{
    Identity, MinerSettings,
    compute::{ComputeService, LocalCompute},
    control::{self, ControlInbox, ReloadError, ReloadOutcome, Request},
    journal::{self, Journal, JournalError, ReportRow},
    priority::{PrioritizedCompute, SchedulingPolicy},
    settings::{ComputeMode, Settings},
};
use crate::{
    data_dir::{self, DataDirError, DataDirLock},
    farm::{self, FarmConfig, FarmError, FarmHandle, JobError},
    l1::{NodeError, NodePool},
    readiness::Readiness,
    validator::{self, ValidatorError, ValidatorSettings},
};
use cpc_common::{
    Address,
    keystore::{Keystore, KeystoreError},
};
use cpc_kernels::{BackendError, BackendKind};
use std::{
    net::SocketAddr,
    ops::RangeInclusive,
    path::Path,
    sync::Arc,
    time::{Duration, Instant},
};
use tokio_util::sync::CancellationToken;

/// How long the farm waits for `min_agents` before giving up.
const AGENT_WAIT: Duration = Duration::from_secs(300);
/// How often a bounded run looks at the head and the journal.
const WINDOW_POLL: Duration = Duration::from_millis(250);
/// How often a bounded run asks for the head while no node answers.
const NODE_WAIT_POLL: Duration = Duration::from_millis(500);
/// How often settled journal rows are pruned.
const PRUNE_EVERY: Duration = Duration::from_secs(3600);

/// Why the mining node could not start or went wrong.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// An identity's key cannot be read from the keystore.
    #[error(transparent)]
    Keystore(#[from] KeystoreError),
    /// Two identity names hold the same key: both would submit for the same address.
    #[error(
        "identities `{first}` and `{second}` are the same key ({address}): each identity submits once per block, so list it once"
    )]
    SameKey {
        /// The first name.
        first: String,
        /// The name listed later.
        second: String,
        /// Their address.
        address: Address,
    },
    /// The data dir is in use, or its journal lost or damaged.
    #[error(transparent)]
    DataDir(#[from] DataDirError),
    /// The farm cannot start (its identity, its listen or metrics address).
    #[error(transparent)]
    Farm(#[from] FarmError),
    /// The agents asked for by `min_agents` did not come.
    #[error(transparent)]
    Agents(#[from] JobError),
    /// The local compute backend cannot be opened.
    #[error(transparent)]
    Backend(#[from] BackendError),
    /// The mining loop's thread cannot be started.
    #[error(transparent)]
    Spawn(#[from] std::io::Error),
    /// A validator client cannot start.
    #[error(transparent)]
    Validator(#[from] ValidatorError),
    /// The journal cannot be read for the report.
    #[error(transparent)]
    Journal(#[from] JournalError),
}

impl RunError {
    /// Whether the settings are at fault (the CLI exits 2) rather than the environment (it exits 1).
    pub fn is_usage(&self) -> bool {
        matches!(self, Self::SameKey { .. })
    }
}

/// What happens on the way, for the operator.
#[derive(Debug)]
pub enum RunEvent<'a> {
    /// A new journal was made where an earlier run's was lost (`new_journal`).
    NewJournal {
        /// The data dir.
        data_dir: &'a Path,
    },
    /// The metrics endpoint listens.
    MetricsListening(SocketAddr),
    /// The farm listens for agents (farm mode).
    FarmListening {
        /// The farm (its address, fingerprint and agent command line).
        farm: &'a FarmHandle,
        /// The address agents should dial.
        public_addr: &'a str,
        /// Where the join token is read.
        token_file: &'a Path,
    },
    /// No L1 node answers yet, so a bounded run cannot take its first height (said once).
    WaitingForNode(&'a NodeError),
    /// Mining starts.
    Mining {
        /// The worker identities.
        identities: &'a [Identity],
        /// The L1 nodes.
        nodes: &'a [String],
        /// The compute service, described.
        compute: &'a str,
        /// Matrix size of block tasks.
        matrix_size: u32,
        /// The data dir.
        data_dir: &'a Path,
    },
    /// Jobs are taken from a PoC validator.
    TakingValidatorJobs {
        /// The validator's settings.
        validator: &'a ValidatorSettings,
        /// How its jobs and the block tasks share the compute service.
        scheduling: SchedulingPolicy,
    },
    /// Everything runs: the node can be reported ready (systemd).
    Ready,
    /// The shutdown signal came before mining started.
    StoppingBeforeMining,
    /// The shutdown signal came: everything stops (the journal keeps every result).
    Stopping,
}

/// How a run ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RunReport {
    /// Stopped by the shutdown signal, with nothing to report.
    Stopped,
    /// A bounded run's blocks and what became of each identity's result.
    Window(WindowReport),
}

/// A bounded run's report: every identity at every block of `first..=last`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WindowReport {
    /// First block of the window (the head when the run began).
    pub first: u64,
    /// Last block of the window (or the head, where the run was stopped before).
    pub last: u64,
    /// One row per block and identity, by height then in the order of the identities.
    pub rows: Vec<WindowRow>,
}

impl WindowReport {
    /// How many of the rows are included on chain.
    pub fn included(&self) -> usize {
        self.rows.iter().filter(|row| row.state == "included").count()
    }
}

/// One line of a bounded run's report: every identity at every chain block of the window, whether the
/// farm planned a task for it or not.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct WindowRow {
    /// Height of the block.
    pub height: u64,
    /// Identity (key name).
    pub identity: String,
    /// The task id, where a task was planned.
    pub task_id: Option<String>,
    /// The computed result hash.
    pub result_hash: Option<String>,
    /// `included`, `submitted`, `computed`, `planned`, `superseded`, `failed`, or `missed` (no task).
    pub state: String,
    /// The included (or latest) submission's hash.
    pub tx_hash: Option<String>,
    /// The block that includes it.
    pub included_in: Option<u64>,
    /// Why the result is not included, where it is not.
    pub reason: Option<String>,
}

/// Runs the mining node until `shutdown` is cancelled or, with `stop_after_blocks`, until that many blocks
/// are mined and settled. `on_event` hears what the operator should see.
///
/// `shutdown` is the process's one shutdown token (the binary cancels it on SIGTERM or SIGINT). The farm,
/// the mining loop and the validator clients each stop on a child of it, all at once, and this waits for
/// them: the validator clients close their connections (jobs still computing stay `received` and are
/// computed again on the next start), the mining loop's actors stop (a task the farm was still
/// computing is neither a result nor a miss: it stays `planned`), and the farm closes every agent
/// connection.
pub async fn run(
    settings: Settings,
    shutdown: CancellationToken,
    on_event: impl Fn(RunEvent<'_>),
) -> Result<RunReport, RunError> {
    run_controlled(settings, ControlInbox::detached(), shutdown, on_event).await
}

/// [`run`], answering the requests of the [`super::control::MiningControl`] that `inbox` belongs to
/// (reload, identities) while it mines without a bound; a bounded run drops them (`NotRunning`).
pub async fn run_controlled(
    settings: Settings,
    inbox: ControlInbox,
    shutdown: CancellationToken,
    on_event: impl Fn(RunEvent<'_>),
) -> Result<RunReport, RunError> {
    let mut inbox = inbox;
    let keystore = settings.keystore();
    let identities = load_identities(&keystore, &settings.identities)?;
    // One coordinator per data dir, for the life of the run (the OS drops the lock if the process dies).
    let lock = DataDirLock::acquire(&settings.data_dir)?;
    let opened = data_dir::open_journal(&lock, settings.new_journal)?;
    let journal = opened.journal;
    if opened.created && settings.new_journal {
        on_event(RunEvent::NewJournal { data_dir: &settings.data_dir });
    }
    let validators = validator_settings(&settings, &identities, &keystore)?;
    let _pruning =
        settings.journal_retention.map(|keep| spawn_journal_pruning(journal.clone(), keep));

    // `/readyz`: can mine now (an L1 answers, no identity short of funds, a device in farm mode).
    let readiness = Arc::new(Readiness::default());
    readiness.require_l1();
    if settings.compute == ComputeMode::Farm {
        readiness.require_device();
    }
    // The farm also serves the metrics endpoint; in local mode it simply has no agents.
    let (farm, token_file) = start_farm(&settings, &readiness, &shutdown)?;
    if let Some(addr) = farm.metrics_addr() {
        on_event(RunEvent::MetricsListening(addr));
    }
    if settings.compute == ComputeMode::Farm {
        let public_addr =
            settings.public_addr.clone().unwrap_or_else(|| farm.local_addr().to_string());
        on_event(RunEvent::FarmListening {
            farm: &farm,
            public_addr: &public_addr,
            token_file: &token_file,
        });
        if settings.min_agents > 0 {
            tokio::select! {
                waited = farm.wait_for_agents(settings.min_agents, AGENT_WAIT) => {
                    waited?;
                }
                () = shutdown.cancelled() => {
                    on_event(RunEvent::StoppingBeforeMining);
                    farm.shutdown();
                    return Ok(RunReport::Stopped);
                }
            }
        }
    }
    let compute = compute_service(settings.compute, &farm, settings.scheduling)?;
    // A bounded run's window starts at the head: wait for a node rather than take height 0.
    let start_height = if settings.stop_after_blocks > 0 {
        match wait_for_head(&settings.nodes, &shutdown, &on_event).await {
            Some(height) => height,
            None => {
                farm.shutdown();
                return Ok(RunReport::Stopped);
            }
        }
    } else {
        0
    };
    on_event(RunEvent::Mining {
        identities: &identities,
        nodes: &settings.nodes,
        compute: &compute.describe(),
        matrix_size: settings.matrix_size,
        data_dir: &settings.data_dir,
    });
    let (planned_height, planned) = tokio::sync::watch::channel(0);
    let chain = validator::ChainView {
        planned_height: planned,
        hold: (settings.poll_interval * 3).max(Duration::from_secs(1)),
    };
    let miner_settings = MinerSettings {
        nodes: settings.nodes.clone(),
        matrix_size: settings.matrix_size,
        gas_price: settings.gas_price,
        poll_interval: settings.poll_interval,
        recover_from_chain: opened.created,
        readiness,
        planned_height,
        shutdown: shutdown.clone(),
    };
    let miner = super::spawn(miner_settings, identities, journal.clone(), Arc::clone(&compute))?;
    for validator in &validators {
        on_event(RunEvent::TakingValidatorJobs { validator, scheduling: settings.scheduling });
    }
    let validator_clients = validator::start(
        validators.clone(),
        journal.clone(),
        Arc::clone(&compute),
        chain.clone(),
        &shutdown,
    )?;
    on_event(RunEvent::Ready);

    if settings.stop_after_blocks == 0 {
        let mut node = LiveNode {
            settings,
            validators,
            validator_clients,
            compute,
            journal,
            chain,
            shutdown: shutdown.clone(),
        };
        loop {
            tokio::select! {
                () = shutdown.cancelled() => break,
                Some(request) = inbox.rx.recv() => node.serve(request, &inbox, &miner).await,
            }
        }
        on_event(RunEvent::Stopping);
        node.validator_clients.stop().await;
        miner.stop();
        farm.shutdown();
        return Ok(RunReport::Stopped);
    }
    // Bounded run (quick start, tests): wait for the blocks, then for their submissions to settle. It
    // takes no control requests: they are answered `NotRunning` at once rather than left waiting.
    drop(inbox);
    let last = start_height + settings.stop_after_blocks - 1;
    let waited = wait_for_window(&settings, &journal, start_height..=last, &shutdown).await;
    validator_clients.stop().await;
    miner.stop();
    farm.shutdown();
    let head = waited?;
    let window = start_height..=last.min(head);
    let tasks = journal.report(start_height)?;
    Ok(RunReport::Window(WindowReport {
        first: *window.start(),
        last: *window.end(),
        rows: window_report(&tasks, &settings.identities, window),
    }))
}

/// What an unbounded run holds while it takes control requests.
struct LiveNode {
    settings: Settings,
    validators: Vec<ValidatorSettings>,
    validator_clients: validator::ValidatorClients,
    compute: Arc<dyn ComputeService>,
    /// What the validator clients (restarted by a reload) know of the planner's progress.
    chain: validator::ChainView,
    journal: Journal,
    /// The process's shutdown token, whose children the restarted validator clients get.
    shutdown: CancellationToken,
}

impl std::fmt::Debug for LiveNode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LiveNode").field("settings", &self.settings).finish_non_exhaustive()
    }
}

impl LiveNode {
    async fn serve(&mut self, request: Request, inbox: &ControlInbox, miner: &super::MinerHandle) {
        match request {
            Request::Reload(reply) => {
                let outcome = self.reload(inbox, miner).await;
                match &outcome {
                    Ok(o) if o.is_empty() => tracing::info!("config reloaded: nothing changed"),
                    Ok(o) => {
                        tracing::info!(added = ?o.added, removed = ?o.removed, changed = ?o.changed, "config reloaded")
                    }
                    Err(e) => tracing::error!(error = %e, "config reload refused"),
                }
                let _ = reply.send(outcome);
            }
            Request::Identities(since, within, reply) => {
                let report = control::identities_report(&self.journal, miner, since, within).await;
                let _ = reply.send(report);
            }
        }
    }

    /// Re-reads the config and applies it in place, or refuses it and keeps the running one.
    async fn reload(
        &mut self,
        inbox: &ControlInbox,
        miner: &super::MinerHandle,
    ) -> Result<ReloadOutcome, ReloadError> {
        let new = inbox.reread()?;
        let fixed = control::not_in_place(&self.settings, &new);
        if !fixed.is_empty() {
            return Err(ReloadError::NotInPlace(fixed));
        }
        let keystore = new.keystore();
        let identities = load_identities(&keystore, &new.identities)
            .map_err(|e| ReloadError::Identities(e.to_string()))?;
        let validators = validator_settings(&new, &identities, &keystore)
            .map_err(|e| ReloadError::Validators(e.to_string()))?;
        let old = &self.settings;
        let mut outcome = ReloadOutcome {
            added: new.identities.iter().filter(|n| !old.identities.contains(n)).cloned().collect(),
            removed: old
                .identities
                .iter()
                .filter(|n| !new.identities.contains(n))
                .cloned()
                .collect(),
            changed: Vec::new(),
        };
        for (differs, name) in [
            (old.nodes != new.nodes, "nodes"),
            (old.gas_price != new.gas_price, "gas_price"),
            (old.matrix_size != new.matrix_size, "matrix_size"),
            (old.validators != new.validators, "validators"),
            (
                old.max_validator_matrix_size != new.max_validator_matrix_size,
                "max_validator_matrix_size",
            ),
        ] {
            if differs {
                outcome.changed.push(name.to_owned());
            }
        }
        // Validators first: one connection per validator at a time (the old clients close before the new
        // ones dial), and a new list that cannot start brings the old one back, so a refusal changes nothing.
        if old.validators != new.validators
            || old.max_validator_matrix_size != new.max_validator_matrix_size
        {
            let journal = self.journal.clone();
            let compute = Arc::clone(&self.compute);
            let chain = self.chain.clone();
            let shutdown = self.shutdown.clone();
            let start = |list: Vec<ValidatorSettings>| {
                validator::start(
                    list,
                    journal.clone(),
                    Arc::clone(&compute),
                    chain.clone(),
                    &shutdown,
                )
                .map_err(|e| ReloadError::Validators(e.to_string()))
            };
            let stopped = std::mem::replace(&mut self.validator_clients, start(Vec::new())?);
            stopped.stop().await;
            match start(validators.clone()) {
                Ok(clients) => {
                    self.validator_clients = clients;
                    self.validators = validators;
                }
                Err(e) => {
                    self.validator_clients = start(self.validators.clone())?;
                    return Err(ReloadError::Validators(e.to_string()));
                }
            }
        }
        farm::metrics::init_identity_series(outcome.added.iter().map(String::as_str));
        miner
            .reconfigure(super::MinerChange {
                identities,
                nodes: new.nodes.clone(),
                gas_price: new.gas_price,
                matrix_size: new.matrix_size,
            })
            .await
            .map_err(|_| ReloadError::NotRunning)?;
        self.settings = new;
        Ok(outcome)
    }
}

/// The compute service block tasks and validator jobs share, with one queue: the farm's own (many jobs at
/// once on its agents, in `scheduling` order), or, for this process's CPU, the priority layer (one
/// challenge at a time).
fn compute_service(
    mode: ComputeMode,
    farm: &FarmHandle,
    scheduling: SchedulingPolicy,
) -> Result<Arc<dyn ComputeService>, RunError> {
    Ok(match mode {
        ComputeMode::Local => {
            let local = LocalCompute::new(Arc::from(cpc_kernels::open(BackendKind::Cpu, 0)?));
            Arc::new(PrioritizedCompute::new(Arc::new(local), scheduling))
        }
        ComputeMode::Farm => Arc::new(farm.clone()),
    })
}

/// The identities' keys; two names for one key are refused.
fn load_identities(keystore: &Keystore, names: &[String]) -> Result<Vec<Identity>, RunError> {
    let identities =
        names.iter().map(|name| load_identity(keystore, name)).collect::<Result<Vec<_>, _>>()?;
    for (i, later) in identities.iter().enumerate() {
        if let Some(first) = identities[..i].iter().find(|id| id.address == later.address) {
            return Err(RunError::SameKey {
                first: first.name.clone(),
                second: later.name.clone(),
                address: later.address.clone(),
            });
        }
    }
    Ok(identities)
}

fn load_identity(keystore: &Keystore, name: &str) -> Result<Identity, KeystoreError> {
    let key = keystore.load(name)?;
    Ok(Identity { name: name.to_owned(), key: key.secret, address: key.address })
}

/// One client setting per configured validator; its identity need not be a mining one.
fn validator_settings(
    settings: &Settings,
    identities: &[Identity],
    keystore: &Keystore,
) -> Result<Vec<ValidatorSettings>, RunError> {
    settings
        .validators
        .iter()
        .map(|entry| {
            let identity = match identities.iter().find(|i| i.name == entry.identity) {
                Some(i) => i.clone(),
                None => load_identity(keystore, &entry.identity)?,
            };
            let mut v = ValidatorSettings::new(entry.url.clone(), identity);
            v.submit_to_l1 = entry.submit_to_l1;
            v.max_matrix_size = settings.max_validator_matrix_size;
            Ok(v)
        })
        .collect()
}

/// Starts the farm with its identity (from `identity_dir`, else the data dir) and the metrics endpoint;
/// answers it and the path of its join-token file.
fn start_farm(
    settings: &Settings,
    readiness: &Arc<Readiness>,
    shutdown: &CancellationToken,
) -> Result<(FarmHandle, std::path::PathBuf), RunError> {
    let (farm_identity, token_file) =
        data_dir::load_farm_identity(&settings.data_dir, settings.identity_dir.as_deref())?;
    let mut config = FarmConfig::new(settings.listen, farm_identity);
    config.metrics_listen = settings.metrics;
    config.readiness = Arc::clone(readiness);
    config.scheduling = settings.scheduling;
    if let Some(threads) = settings.io_threads {
        config.io_threads = threads;
    }
    config.shutdown = shutdown.clone();
    farm::metrics::init_identity_series(settings.identities.iter().map(String::as_str));
    Ok((farm::start(config)?, token_file))
}

/// The node's head, waiting (and saying so once) while no node answers; `None` when interrupted.
async fn wait_for_head(
    nodes: &[String],
    shutdown: &CancellationToken,
    on_event: &impl Fn(RunEvent<'_>),
) -> Option<u64> {
    let pool = NodePool::new(nodes);
    let mut told = false;
    loop {
        match pool.status().await {
            Ok(status) => return Some(status.height),
            Err(e) if !told => {
                on_event(RunEvent::WaitingForNode(&e));
                told = true;
            }
            Err(_) => {}
        }
        tokio::select! {
            () = shutdown.cancelled() => return None,
            () = tokio::time::sleep(NODE_WAIT_POLL) => {}
        }
    }
}

/// Waits until the window's last block was reached and every task of the window settled (or the settle
/// timeout passed since it was reached, or the shutdown signal came); answers the highest head seen.
async fn wait_for_window(
    settings: &Settings,
    journal: &Journal,
    window: RangeInclusive<u64>,
    shutdown: &CancellationToken,
) -> Result<u64, RunError> {
    let (start, last) = (*window.start(), *window.end());
    let pool = NodePool::new(&settings.nodes);
    let mut head = start;
    let mut settle_deadline: Option<Instant> = None;
    loop {
        tokio::select! {
            () = shutdown.cancelled() => break,
            () = tokio::time::sleep(WINDOW_POLL) => {}
        }
        if let Ok(status) = pool.status().await {
            head = head.max(status.height);
        }
        let rows = journal.report(start)?;
        // The last block's task exists, or the chain moved past it (then it was planned or missed).
        let reached = head > last || rows.iter().any(|row| row.height >= last);
        if reached && settle_deadline.is_none() {
            settle_deadline = Some(Instant::now() + settings.settle_timeout);
        }
        let settled = rows
            .iter()
            .filter(|row| row.height <= last)
            .all(|row| matches!(row.state.as_str(), "included" | "failed" | "superseded"));
        if reached && settled || settle_deadline.is_some_and(|d| Instant::now() >= d) {
            break;
        }
    }
    Ok(head)
}

/// Every (height, identity) of `window`, from the journal's tasks; blocks the farm never planned show up
/// as `missed`.
fn window_report(
    tasks: &[ReportRow],
    identities: &[String],
    window: RangeInclusive<u64>,
) -> Vec<WindowRow> {
    let mut rows = Vec::new();
    for height in window {
        for identity in identities {
            let task = tasks.iter().find(|t| t.height == height && &t.identity == identity);
            rows.push(match task {
                Some(t) => WindowRow {
                    height,
                    identity: identity.clone(),
                    task_id: Some(t.task_id.clone()),
                    result_hash: t.result_hash.clone(),
                    state: t.state.clone(),
                    tx_hash: t.tx_hash.clone(),
                    included_in: t.included_in,
                    reason: miss_reason(t),
                },
                None => WindowRow {
                    height,
                    identity: identity.clone(),
                    task_id: None,
                    result_hash: None,
                    state: "missed".into(),
                    tx_hash: None,
                    included_in: None,
                    reason: Some(
                        "no task: the block was never seen as the head (a newer one came first, or \
                         the coordinator or the node was down)"
                            .into(),
                    ),
                },
            });
        }
    }
    rows
}

fn miss_reason(t: &ReportRow) -> Option<String> {
    match t.state.as_str() {
        "included" => None,
        "superseded" => Some("superseded: a newer block came before it was computed".into()),
        "failed" => Some(t.error.clone().unwrap_or_else(|| "failed".into())),
        "planned" => Some("not computed before the run ended".into()),
        "computed" => Some("computed, not submitted (underfunded, or no node)".into()),
        "submitted" => Some("submitted, not included before the run ended".into()),
        other => Some(other.to_owned()),
    }
}

/// Prunes settled journal rows older than `keep`, once at start and every hour, until dropped.
fn spawn_journal_pruning(journal: Journal, keep: Duration) -> AbortOnDrop {
    AbortOnDrop(tokio::spawn(async move {
        let mut every = tokio::time::interval(PRUNE_EVERY);
        loop {
            every.tick().await;
            let before = journal::now_ms() - keep.as_millis() as i64;
            match journal.prune(before) {
                Ok(0) => {}
                Ok(n) => tracing::info!(rows = n, "pruned settled rows from the journal"),
                Err(e) => tracing::warn!(error = %e, "journal pruning failed"),
            }
        }
    }))
}

/// A background task that ends with the run that started it.
#[derive(Debug)]
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}
