//! `run`: the miner. Follows the L1, computes one task per block for every identity (on the farm's agents
//! or locally), and submits one signed SUBMIT_RESULT per identity per block, journaled in the data dir.
//! Settings come from flags, then `CPC_*` environment variables, then `--config farm.toml`, then defaults.
//! With validators configured (`--validator URL=IDENTITY` or `[[validators]]`), it also takes jobs from
//! those PoC validators over WebSocket, on the same compute service behind the priority layer.

use super::{GlobalArgs, output::print_json, usage};
use clap::Args;
use cpc_common::{
    keystore::Keystore,
    synthetic::{DEFAULT_MATRIX_SIZE, MAX_MATRIX_SIZE},
};
use cpc_coordinator::{
    data_dir::{self, DataDirLock},
    farm::{self, FarmConfig},
    mining::{
        self, Identity, MinerSettings,
        compute::{ComputeService, LocalCompute},
        config::{ConfigFile, ValidatorEntry},
        journal::ReportRow,
        priority::{PrioritizedCompute, Priority, SchedulingPolicy},
    },
    validator::{self, ValidatorSettings, protocol::DEFAULT_MAX_MATRIX_SIZE},
};
use cpc_kernels::BackendKind;
use std::{
    net::SocketAddr,
    path::PathBuf,
    process::ExitCode,
    sync::Arc,
    time::{Duration, Instant},
};

/// Default head polling interval.
const DEFAULT_POLL_MS: u64 = 500;
/// Default days settled journal rows are kept.
const DEFAULT_JOURNAL_RETENTION_DAYS: u64 = 7;

#[derive(Debug, Args)]
pub(crate) struct RunArgs {
    /// TOML configuration file (see deploy/farm.example.toml).
    #[arg(long, env = "CPC_CONFIG", help_heading = "Mining")]
    config: Option<PathBuf>,
    /// L1 node URLs in failover order (comma-separated) [default: the file's, else --node].
    #[arg(long, env = "CPC_NODES", value_delimiter = ',', help_heading = "Mining")]
    nodes: Vec<String>,
    /// Worker identities: key names (repeat or comma-separate).
    #[arg(
        long = "identity",
        env = "CPC_IDENTITIES",
        value_delimiter = ',',
        help_heading = "Mining"
    )]
    identities: Vec<String>,
    /// Data directory: journal, certificate, join token [default: ~/.cpc-farm].
    #[arg(long, env = "CPC_DATA_DIR", help_heading = "Mining")]
    data_dir: Option<PathBuf>,
    /// Matrix size of block tasks [default: 1024].
    #[arg(long, env = "CPC_MATRIX_SIZE", help_heading = "Mining")]
    matrix_size: Option<u32>,
    /// Gas price of submissions [default: 1000].
    #[arg(long, env = "CPC_GAS_PRICE", help_heading = "Mining")]
    gas_price: Option<u64>,
    /// Head polling interval in milliseconds [default: 500].
    #[arg(long, env = "CPC_POLL_INTERVAL_MS", help_heading = "Mining")]
    poll_interval_ms: Option<u64>,
    /// Where tasks run: `farm` (agents over QUIC) or `local` (this process's CPU) [default: farm].
    #[arg(long, env = "CPC_COMPUTE", help_heading = "Mining")]
    compute: Option<String>,
    /// QUIC address agents dial [default: 0.0.0.0:7700].
    #[arg(long, env = "CPC_LISTEN", help_heading = "Mining")]
    listen: Option<SocketAddr>,
    /// Address agents should dial, for the printed command line [default: the listen address].
    #[arg(long, env = "CPC_PUBLIC_ADDR", help_heading = "Mining")]
    public_addr: Option<String>,
    /// Read the farm's certificate, key and join token from this directory (e.g. a mounted Kubernetes
    /// Secret) instead of making them in the data dir.
    #[arg(long, env = "CPC_IDENTITY_DIR", help_heading = "Mining")]
    identity_dir: Option<PathBuf>,
    /// Metrics address (/metrics, /healthz, /readyz).
    #[arg(long, env = "CPC_METRICS", help_heading = "Mining")]
    metrics: Option<SocketAddr>,
    /// Agents to wait for before mining (farm mode).
    #[arg(long, default_value_t = 0, help_heading = "Mining")]
    min_agents: usize,
    /// Stop after this many new blocks have been mined and their submissions settled (0: run until
    /// interrupted), then print the report.
    #[arg(long, default_value_t = 0, help_heading = "Mining")]
    stop_after_blocks: u64,
    /// Seconds to wait for the last submissions to settle when stopping.
    #[arg(long, default_value_t = 60, help_heading = "Mining")]
    settle_timeout: u64,
    /// Start a new journal although this data dir was used before and its journal is missing or empty.
    /// Results an earlier run put on chain are then recovered from the chain before anything is signed.
    #[arg(long, help_heading = "Mining")]
    new_journal: bool,
    /// Days settled tasks and answered validator jobs stay in the journal (0: forever) [default: 7].
    #[arg(long, env = "CPC_JOURNAL_RETENTION_DAYS", help_heading = "Mining")]
    journal_retention_days: Option<u64>,
    #[command(flatten)]
    validators: ValidatorArgs,
}

/// PoC validators that push jobs over WebSocket.
#[derive(Debug, Args)]
struct ValidatorArgs {
    /// A PoC validator to take jobs from, as `ws[s]://HOST[:PORT]/PATH=IDENTITY` (repeat or
    /// comma-separate); replaces the config file's `[[validators]]`.
    #[arg(
        long = "validator",
        env = "CPC_VALIDATORS",
        value_delimiter = ',',
        value_name = "URL=IDENTITY",
        help_heading = "Validators"
    )]
    validators: Vec<String>,
    /// Largest matrix_size a validator job may ask for [default: 8192].
    #[arg(long, env = "CPC_MAX_VALIDATOR_MATRIX_SIZE", help_heading = "Validators")]
    max_validator_matrix_size: Option<u32>,
    /// Order of block tasks and validator jobs: `block_first` or `fifo` [default: block_first].
    #[arg(long, env = "CPC_SCHEDULING", help_heading = "Validators")]
    scheduling: Option<String>,
}

/// Resolved settings (flags > env > file > defaults).
struct Resolved {
    settings: MinerSettings,
    keystore: Keystore,
    identities: Vec<String>,
    data_dir: PathBuf,
    compute: String,
    listen: SocketAddr,
    metrics: Option<SocketAddr>,
    validators: Vec<ValidatorEntry>,
    max_validator_matrix_size: u32,
    scheduling: SchedulingPolicy,
    journal_retention: Option<Duration>,
}

/// `URL=IDENTITY` (split at the last `=`: a URL may hold `=` in its query).
fn parse_validator_flag(flag: &str) -> anyhow::Result<ValidatorEntry> {
    let Some((url, identity)) =
        flag.rsplit_once('=').filter(|(u, i)| !u.is_empty() && !i.is_empty())
    else {
        usage!("invalid --validator `{flag}`: expected URL=IDENTITY");
    };
    Ok(ValidatorEntry { url: url.to_owned(), identity: identity.to_owned(), submit_to_l1: false })
}

fn resolve(g: &GlobalArgs, args: &RunArgs) -> anyhow::Result<Resolved> {
    let file = match &args.config {
        Some(path) => ConfigFile::load(path)?,
        None => ConfigFile::default(),
    };
    let nodes = resolve_nodes(&args.nodes, g.node.as_deref(), &file.nodes);
    for url in &nodes {
        check_node_url(url)?;
    }
    let identities =
        if args.identities.is_empty() { file.identities.clone() } else { args.identities.clone() };
    if identities.is_empty() {
        usage!(
            "no worker identity: pass --identity NAME (a key in the keystore) or list `identities` in --config"
        );
    }
    let mut names = std::collections::BTreeSet::new();
    if let Some(twice) = identities.iter().find(|name| !names.insert(name.as_str())) {
        usage!(
            "identity `{twice}` is listed twice: each identity submits once per block, so list it once"
        );
    }
    let data_dir = super::data_dir_or_default(args.data_dir.clone().or(file.data_dir.clone()))?;
    let parse_addr = |what: &str, text: &str| -> anyhow::Result<SocketAddr> {
        match text.parse() {
            Ok(a) => Ok(a),
            Err(e) => usage!("invalid `{what}` in config: {text}: {e} (expected IP:PORT)"),
        }
    };
    let listen = match (args.listen, &file.listen) {
        (Some(l), _) => l,
        (None, Some(l)) => parse_addr("listen", l)?,
        (None, None) => parse_addr("listen", farm::DEFAULT_LISTEN)?,
    };
    let metrics = match (args.metrics, &file.metrics) {
        (Some(m), _) => Some(m),
        (None, Some(m)) => Some(parse_addr("metrics", m)?),
        (None, None) => None,
    };
    let compute =
        args.compute.clone().or(file.compute.clone()).unwrap_or_else(|| "farm".to_owned());
    if compute != "farm" && compute != "local" {
        usage!("invalid compute `{compute}`: expected `farm` or `local`");
    }
    let matrix_size = args.matrix_size.or(file.matrix_size).unwrap_or(DEFAULT_MATRIX_SIZE);
    if matrix_size == 0 || matrix_size > MAX_MATRIX_SIZE {
        usage!("invalid matrix_size {matrix_size}: expected 1 to {MAX_MATRIX_SIZE}");
    }
    let gas_price = args.gas_price.or(file.gas_price).unwrap_or(cpc_common::tx::MIN_GAS_PRICE);
    if gas_price < cpc_common::tx::MIN_GAS_PRICE {
        usage!(
            "invalid gas_price {gas_price}: the L1 drops transactions under {} (its minimum)",
            cpc_common::tx::MIN_GAS_PRICE
        );
    }
    let v = &args.validators;
    let validators = if v.validators.is_empty() {
        file.validators.clone()
    } else {
        v.validators.iter().map(|f| parse_validator_flag(f)).collect::<anyhow::Result<Vec<_>>>()?
    };
    for entry in &validators {
        if let Err(e) = validator::url_label(&entry.url) {
            usage!("{e}");
        }
        if entry.submit_to_l1 && !identities.contains(&entry.identity) {
            usage!(
                "validator {} has submit_to_l1 for `{}`, which is not a mining identity: add it to `identities`",
                entry.url,
                entry.identity
            );
        }
    }
    let scheduling = match v.scheduling.as_ref().or(file.scheduling.as_ref()) {
        Some(s) => match s.parse() {
            Ok(policy) => policy,
            Err(e) => usage!("{e}"),
        },
        None => SchedulingPolicy::default(),
    };
    let retention_days = args
        .journal_retention_days
        .or(file.journal_retention_days)
        .unwrap_or(DEFAULT_JOURNAL_RETENTION_DAYS);
    let journal_retention =
        (retention_days > 0).then(|| Duration::from_secs(retention_days.saturating_mul(86_400)));
    let max_validator_matrix_size = v
        .max_validator_matrix_size
        .or(file.max_validator_matrix_size)
        .unwrap_or(DEFAULT_MAX_MATRIX_SIZE);
    // --keystore / CPC_KEYSTORE, then the file's `keystore`, then cpc-cli's default.
    let keystore = match (&g.keystore, &file.keystore) {
        (None, Some(dir)) => Keystore::new(dir),
        _ => g.keystore(),
    };
    Ok(Resolved {
        keystore,
        settings: MinerSettings {
            nodes,
            matrix_size,
            gas_price,
            poll_interval: Duration::from_millis(
                args.poll_interval_ms.or(file.poll_interval_ms).unwrap_or(DEFAULT_POLL_MS).max(10),
            ),
            recover_from_chain: false,
            readiness: Arc::default(),
        },
        identities,
        data_dir,
        compute,
        listen,
        metrics,
        validators,
        max_validator_matrix_size,
        scheduling,
        journal_retention,
    })
}

/// The L1 nodes, flags and environment before the file: `--nodes`/`CPC_NODES`, then `--node`/`CPC_NODE`,
/// then the file's `nodes`, then the default node.
fn resolve_nodes(nodes_flag: &[String], node_flag: Option<&str>, file: &[String]) -> Vec<String> {
    if !nodes_flag.is_empty() {
        nodes_flag.to_vec()
    } else if let Some(node) = node_flag {
        vec![node.to_owned()]
    } else if !file.is_empty() {
        file.to_vec()
    } else {
        vec![super::DEFAULT_NODE_URL.to_owned()]
    }
}

/// An L1 node URL must be `http://` or `https://` with a host.
fn check_node_url(url: &str) -> anyhow::Result<()> {
    match reqwest::Url::parse(url) {
        Ok(u) if matches!(u.scheme(), "http" | "https") && u.host().is_some() => Ok(()),
        Ok(u) => usage!(
            "invalid node URL `{url}`: scheme `{}` without a host or not http(s) (expected e.g. http://127.0.0.1:8000)",
            u.scheme()
        ),
        Err(e) => usage!("invalid node URL `{url}`: {e} (expected e.g. http://127.0.0.1:8000)"),
    }
}

pub(crate) async fn run(g: &GlobalArgs, args: RunArgs) -> anyhow::Result<ExitCode> {
    let shutdown = super::shutdown_signal();
    tokio::pin!(shutdown);
    let mut r = resolve(g, &args)?;
    let load = |name: &String| -> anyhow::Result<Identity> {
        let k = r.keystore.load(name)?;
        Ok(Identity { name: name.clone(), key: k.secret, address: k.address })
    };
    let identities = r.identities.iter().map(load).collect::<anyhow::Result<Vec<_>>>()?;
    for (i, a) in identities.iter().enumerate() {
        if let Some(b) = identities[..i].iter().find(|b| b.address == a.address) {
            usage!(
                "identities `{}` and `{}` are the same key ({}): each identity submits once per block, so list it once",
                b.name,
                a.name,
                a.address
            );
        }
    }
    // One coordinator per data dir, for the life of the process (the OS drops the lock if it dies).
    let lock = DataDirLock::acquire(&r.data_dir)?;
    let opened = data_dir::open_journal(&lock, args.new_journal)?;
    r.settings.recover_from_chain = opened.created;
    let journal = opened.journal;
    if opened.created && args.new_journal {
        eprintln!(
            "new journal in {}: each identity first looks for its results of the last blocks on chain",
            r.data_dir.display()
        );
    }
    let validator_settings = r
        .validators
        .iter()
        .map(|entry| {
            let identity = match identities.iter().find(|i| i.name == entry.identity) {
                Some(i) => i.clone(),
                None => load(&entry.identity)?,
            };
            let mut s = ValidatorSettings::new(entry.url.clone(), identity);
            s.submit_to_l1 = entry.submit_to_l1;
            s.max_matrix_size = r.max_validator_matrix_size;
            Ok(s)
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    if let Some(keep) = r.journal_retention {
        spawn_journal_pruning(journal.clone(), keep);
    }

    // The farm also serves the metrics endpoint; in local mode it simply has no agents.
    let (farm_identity, token_file) =
        super::load_farm_identity(&r.data_dir, args.identity_dir.as_deref())?;
    let mut config = FarmConfig::new(r.listen, farm_identity);
    config.metrics_listen = r.metrics;
    // `/readyz`: can mine now (an L1 answers, no identity short of funds, a device in farm mode).
    r.settings.readiness.require_l1();
    if r.compute == "farm" {
        r.settings.readiness.require_device();
    }
    config.readiness = Arc::clone(&r.settings.readiness);
    farm::metrics::init_identity_series(r.identities.iter().map(String::as_str));
    let farm = farm::start(config)?;
    if let Some(m) = farm.metrics_addr() {
        eprintln!("metrics on http://{m}/metrics");
    }
    let inner: Arc<dyn ComputeService> = if r.compute == "local" {
        Arc::new(LocalCompute::new(Arc::from(cpc_kernels::open(BackendKind::Cpu, 0)?)))
    } else {
        let public = args.public_addr.clone().unwrap_or_else(|| farm.local_addr().to_string());
        super::print_join_instructions(&farm, &public, &token_file);
        if args.min_agents > 0 {
            tokio::select! {
                waited = farm.wait_for_agents(args.min_agents, Duration::from_secs(300)) => {
                    waited?;
                }
                () = &mut shutdown => {
                    eprintln!("stopping before mining started");
                    farm.shutdown();
                    return Ok(ExitCode::SUCCESS);
                }
            }
        }
        Arc::new(farm.clone())
    };
    // Block tasks and validator jobs share the compute service, one challenge at a time.
    let prioritized = PrioritizedCompute::new(inner, r.scheduling);
    let compute = prioritized.class(Priority::Block);
    // A bounded run's window starts at the head: wait for a node rather than take height 0.
    let start_height = if args.stop_after_blocks > 0 {
        match wait_for_head(&r.settings.nodes, shutdown.as_mut()).await? {
            Some(h) => h,
            None => return Ok(ExitCode::SUCCESS),
        }
    } else {
        0
    };
    eprintln!(
        "mining for {} on {} with {} (matrix_size {}, data dir {})",
        identities
            .iter()
            .map(|i| format!("{} ({})", i.name, i.address))
            .collect::<Vec<_>>()
            .join(", "),
        r.settings.nodes.join(", "),
        compute.describe(),
        r.settings.matrix_size,
        r.data_dir.display()
    );
    let miner = mining::spawn(r.settings.clone(), identities, journal.clone(), compute)?;
    for v in &validator_settings {
        eprintln!(
            "taking jobs from validator {} for {} (max matrix_size {}, {} scheduling{})",
            v.url,
            v.identity.name,
            v.max_matrix_size,
            r.scheduling,
            if v.submit_to_l1 { ", results also submitted to the L1" } else { "" }
        );
    }
    let validators = validator::start(validator_settings, journal.clone(), prioritized)?;

    cpc_common::service::notify_ready();
    cpc_common::service::spawn_watchdog();
    if args.stop_after_blocks == 0 {
        shutdown.await;
        cpc_common::service::notify_stopping();
        eprintln!("stopping: the journal keeps every result; a restart sends what is pending");
        validators.stop().await;
        miner.stop();
        farm.shutdown();
        return Ok(ExitCode::SUCCESS);
    }

    // Bounded run (quick start, tests): wait for the blocks, then for their submissions to settle.
    let last = start_height + args.stop_after_blocks - 1;
    let pool = cpc_coordinator::l1::NodePool::new(&r.settings.nodes);
    let mut head = start_height;
    let mut settle_deadline: Option<Instant> = None;
    loop {
        tokio::select! {
            () = &mut shutdown => break,
            () = tokio::time::sleep(Duration::from_millis(250)) => {}
        }
        if let Ok(status) = pool.status().await {
            head = head.max(status.height);
        }
        let rows = journal.report(start_height)?;
        // The last block's task exists, or the chain moved past it (then it was planned or missed).
        let reached = head > last || rows.iter().any(|row| row.height >= last);
        if reached && settle_deadline.is_none() {
            settle_deadline = Some(Instant::now() + Duration::from_secs(args.settle_timeout));
        }
        let settled = rows
            .iter()
            .filter(|row| row.height <= last)
            .all(|row| matches!(row.state.as_str(), "included" | "failed" | "superseded"));
        if reached && settled || settle_deadline.is_some_and(|d| Instant::now() >= d) {
            break;
        }
    }
    validators.stop().await;
    miner.stop();
    farm.shutdown();
    let tasks = journal.report(start_height)?;
    let names = &r.identities;
    let rows = window_report(&tasks, names, start_height..=last.min(head));
    let included = rows.iter().filter(|r| r.state == "included").count();
    eprintln!(
        "blocks {start_height}..={}: {included} of {} results included, {} not",
        last.min(head),
        rows.len(),
        rows.len() - included
    );
    if g.json {
        print_json(&rows)?;
    } else {
        println!(
            "{:<7} {:<12} {:<36} {:<64} included",
            "height", "identity", "task_id", "result_hash"
        );
        for row in &rows {
            let included = match (row.included_in, &row.tx_hash, &row.reason) {
                (Some(h), Some(tx), _) => format!("block {h} (tx {})", &tx[..16.min(tx.len())]),
                (_, _, Some(reason)) => format!("{}: {reason}", row.state),
                _ => row.state.clone(),
            };
            println!(
                "{:<7} {:<12} {:<36} {:<64} {included}",
                row.height,
                row.identity,
                row.task_id.as_deref().unwrap_or("-"),
                row.result_hash.as_deref().unwrap_or("-")
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// One line of a bounded run's report: every identity at every chain block of the window, whether the
/// farm planned a task for it or not.
#[derive(Debug, serde::Serialize)]
struct WindowRow {
    height: u64,
    identity: String,
    task_id: Option<String>,
    result_hash: Option<String>,
    /// `included`, `submitted`, `computed`, `planned`, `superseded`, `failed`, or `missed` (no task).
    state: String,
    tx_hash: Option<String>,
    included_in: Option<u64>,
    /// Why the result is not included, where it is not.
    reason: Option<String>,
}

/// Every (height, identity) of `window`, from the journal's tasks; blocks the farm never planned show up
/// as `missed`.
fn window_report(
    tasks: &[ReportRow],
    identities: &[String],
    window: std::ops::RangeInclusive<u64>,
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

/// The node's head, waiting (and saying so) while no node answers; `None` when interrupted.
async fn wait_for_head(
    nodes: &[String],
    mut shutdown: std::pin::Pin<&mut impl std::future::Future<Output = ()>>,
) -> anyhow::Result<Option<u64>> {
    let pool = cpc_coordinator::l1::NodePool::new(nodes);
    let mut told = false;
    loop {
        match pool.status().await {
            Ok(status) => return Ok(Some(status.height)),
            Err(e) if !told => {
                eprintln!("waiting for an L1 node ({e})");
                told = true;
            }
            Err(_) => {}
        }
        tokio::select! {
            () = &mut shutdown => return Ok(None),
            () = tokio::time::sleep(Duration::from_millis(500)) => {}
        }
    }
}

/// Prunes settled journal rows older than `keep`, once at start and every hour.
fn spawn_journal_pruning(journal: mining::journal::Journal, keep: Duration) {
    tokio::spawn(async move {
        let mut every = tokio::time::interval(Duration::from_secs(3600));
        loop {
            every.tick().await;
            let before = mining::journal::now_ms() - keep.as_millis() as i64;
            match journal.prune(before) {
                Ok(0) => {}
                Ok(n) => tracing::info!(rows = n, "pruned settled rows from the journal"),
                Err(e) => tracing::warn!(error = %e, "journal pruning failed"),
            }
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(items: &[&str]) -> Vec<String> {
        items.iter().map(|s| (*s).to_owned()).collect()
    }

    #[test]
    fn node_flags_and_environment_win_over_the_config_file() {
        let file = v(&["http://file:1", "http://file:2"]);
        assert_eq!(
            resolve_nodes(&v(&["http://a:1"]), Some("http://b:1"), &file),
            v(&["http://a:1"])
        );
        assert_eq!(resolve_nodes(&[], Some("http://b:1"), &file), v(&["http://b:1"]));
        assert_eq!(resolve_nodes(&[], None, &file), file);
        assert_eq!(resolve_nodes(&[], None, &[]), v(&[super::super::DEFAULT_NODE_URL]));
    }

    #[test]
    fn node_urls_are_checked() {
        assert!(check_node_url("http://127.0.0.1:8000").is_ok());
        assert!(check_node_url("https://node.example:443/rpc").is_ok());
        for bad in ["not a url", "ftp://x:1", "127.0.0.1:8000", "http://"] {
            let e = check_node_url(bad).expect_err(bad);
            assert!(e.downcast_ref::<super::super::UsageError>().is_some(), "{bad}: {e}");
        }
    }
}
