//! `run`: the miner. Follows the L1, computes one task per block for every identity (on the farm's agents
//! or locally), and submits one signed SUBMIT_RESULT per identity per block, journaled in the data dir.
//! Settings come from flags, then `CPC_*` environment variables, then `--config farm.toml`, then defaults.
//! With validators configured (`--validator URL=IDENTITY` or `[[validators]]`), it also takes jobs from
//! those PoC validators over WebSocket, on the same compute service behind the priority layer.

use super::{GlobalArgs, output::print_json, usage};
use clap::{ArgMatches, Args, parser::ValueSource};
use cpc_coordinator::{
    data_dir::{self, DataDirLock},
    farm::{self, FarmConfig},
    mining::{
        self, Identity, MinerSettings,
        compute::{ComputeService, LocalCompute},
        journal::ReportRow,
        priority::{PrioritizedCompute, Priority},
        settings::{ComputeMode, DEFAULT_SETTLE_TIMEOUT_SECS, Layer, Settings, Sources},
    },
    validator::{self, ValidatorSettings},
};
use cpc_kernels::BackendKind;
use std::{
    net::SocketAddr,
    path::PathBuf,
    process::ExitCode,
    sync::Arc,
    time::{Duration, Instant},
};

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
    #[arg(long, default_value_t = DEFAULT_SETTLE_TIMEOUT_SECS, help_heading = "Mining")]
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

/// The command line and the environment as two [`Layer`]s, by where clap found each value: on the command
/// line, in a `CPC_*` variable, or nowhere (a clap default is left to the library's, which is the same).
fn layers(g: &GlobalArgs, args: &RunArgs, matches: &ArgMatches) -> (Layer, Layer) {
    let mut split = Split { matches, flags: Layer::default(), env: Layer::default() };
    let v = &args.validators;
    split.put("config", args.config.clone(), |l| &mut l.config);
    split.put("nodes", args.nodes.clone(), |l| &mut l.nodes);
    split.put("node", g.node.clone(), |l| &mut l.node);
    split.put("identities", args.identities.clone(), |l| &mut l.identities);
    split.put("keystore", g.keystore.clone(), |l| &mut l.keystore);
    split.put("data_dir", args.data_dir.clone(), |l| &mut l.data_dir);
    split.put("matrix_size", args.matrix_size, |l| &mut l.matrix_size);
    split.put("gas_price", args.gas_price, |l| &mut l.gas_price);
    split.put("poll_interval_ms", args.poll_interval_ms, |l| &mut l.poll_interval_ms);
    split.put("compute", args.compute.clone(), |l| &mut l.compute);
    split.put("listen", args.listen, |l| &mut l.listen);
    split.put("public_addr", args.public_addr.clone(), |l| &mut l.public_addr);
    split.put("identity_dir", args.identity_dir.clone(), |l| &mut l.identity_dir);
    split.put("metrics", args.metrics, |l| &mut l.metrics);
    split.put("journal_retention_days", args.journal_retention_days, |l| {
        &mut l.journal_retention_days
    });
    split.put("validators", v.validators.clone(), |l| &mut l.validators);
    split.put("max_validator_matrix_size", v.max_validator_matrix_size, |l| {
        &mut l.max_validator_matrix_size
    });
    split.put("scheduling", v.scheduling.clone(), |l| &mut l.scheduling);
    split.put("min_agents", Some(args.min_agents), |l| &mut l.min_agents);
    split.put("stop_after_blocks", Some(args.stop_after_blocks), |l| &mut l.stop_after_blocks);
    split.put("settle_timeout", Some(args.settle_timeout), |l| &mut l.settle_timeout_secs);
    split.put("new_journal", Some(args.new_journal), |l| &mut l.new_journal);
    (split.flags, split.env)
}

/// Sorts clap's values into the layer of the source they came from.
struct Split<'m> {
    matches: &'m ArgMatches,
    flags: Layer,
    env: Layer,
}

impl Split<'_> {
    fn put<T>(&mut self, id: &str, value: T, field: impl Fn(&mut Layer) -> &mut T) {
        match self.matches.value_source(id) {
            Some(ValueSource::EnvVariable) => *field(&mut self.env) = value,
            Some(ValueSource::DefaultValue) => {}
            _ => *field(&mut self.flags) = value,
        }
    }
}

/// The settings of `run`; an invalid one is a usage error (exit 2), an unreadable config file is not.
fn resolve(g: &GlobalArgs, args: &RunArgs, matches: &ArgMatches) -> anyhow::Result<Settings> {
    let (flags, env) = layers(g, args, matches);
    Sources::read(flags, env).and_then(|sources| Settings::resolve(&sources)).map_err(|e| {
        if e.is_usage() {
            anyhow::Error::new(super::UsageError(e.to_string()))
        } else {
            anyhow::Error::new(e)
        }
    })
}

pub(crate) async fn run(
    g: &GlobalArgs,
    args: RunArgs,
    matches: &ArgMatches,
) -> anyhow::Result<ExitCode> {
    let shutdown = super::shutdown_signal();
    tokio::pin!(shutdown);
    let s = resolve(g, &args, matches)?;
    let mut miner_settings = MinerSettings {
        nodes: s.nodes.clone(),
        matrix_size: s.matrix_size,
        gas_price: s.gas_price,
        poll_interval: s.poll_interval,
        recover_from_chain: false,
        readiness: Arc::default(),
    };
    let keystore = s.keystore();
    let load = |name: &String| -> anyhow::Result<Identity> {
        let k = keystore.load(name)?;
        Ok(Identity { name: name.clone(), key: k.secret, address: k.address })
    };
    let identities = s.identities.iter().map(load).collect::<anyhow::Result<Vec<_>>>()?;
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
    let lock = DataDirLock::acquire(&s.data_dir)?;
    let opened = data_dir::open_journal(&lock, s.new_journal)?;
    miner_settings.recover_from_chain = opened.created;
    let journal = opened.journal;
    if opened.created && s.new_journal {
        eprintln!(
            "new journal in {}: each identity first looks for its results of the last blocks on chain",
            s.data_dir.display()
        );
    }
    let validator_settings = s
        .validators
        .iter()
        .map(|entry| {
            let identity = match identities.iter().find(|i| i.name == entry.identity) {
                Some(i) => i.clone(),
                None => load(&entry.identity)?,
            };
            let mut v = ValidatorSettings::new(entry.url.clone(), identity);
            v.submit_to_l1 = entry.submit_to_l1;
            v.max_matrix_size = s.max_validator_matrix_size;
            Ok(v)
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    if let Some(keep) = s.journal_retention {
        spawn_journal_pruning(journal.clone(), keep);
    }

    // The farm also serves the metrics endpoint; in local mode it simply has no agents.
    let (farm_identity, token_file) =
        super::load_farm_identity(&s.data_dir, s.identity_dir.as_deref())?;
    let mut config = FarmConfig::new(s.listen, farm_identity);
    config.metrics_listen = s.metrics;
    // `/readyz`: can mine now (an L1 answers, no identity short of funds, a device in farm mode).
    miner_settings.readiness.require_l1();
    if s.compute == ComputeMode::Farm {
        miner_settings.readiness.require_device();
    }
    config.readiness = Arc::clone(&miner_settings.readiness);
    farm::metrics::init_identity_series(s.identities.iter().map(String::as_str));
    let farm = farm::start(config)?;
    if let Some(m) = farm.metrics_addr() {
        eprintln!("metrics on http://{m}/metrics");
    }
    let inner: Arc<dyn ComputeService> = if s.compute == ComputeMode::Local {
        Arc::new(LocalCompute::new(Arc::from(cpc_kernels::open(BackendKind::Cpu, 0)?)))
    } else {
        let public = s.public_addr.clone().unwrap_or_else(|| farm.local_addr().to_string());
        super::print_join_instructions(&farm, &public, &token_file);
        if s.min_agents > 0 {
            tokio::select! {
                waited = farm.wait_for_agents(s.min_agents, Duration::from_secs(300)) => {
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
    let prioritized = PrioritizedCompute::new(inner, s.scheduling);
    let compute = prioritized.class(Priority::Block);
    // A bounded run's window starts at the head: wait for a node rather than take height 0.
    let start_height = if s.stop_after_blocks > 0 {
        match wait_for_head(&miner_settings.nodes, shutdown.as_mut()).await? {
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
        miner_settings.nodes.join(", "),
        compute.describe(),
        miner_settings.matrix_size,
        s.data_dir.display()
    );
    let miner = mining::spawn(miner_settings.clone(), identities, journal.clone(), compute)?;
    for v in &validator_settings {
        eprintln!(
            "taking jobs from validator {} for {} (max matrix_size {}, {} scheduling{})",
            v.url,
            v.identity.name,
            v.max_matrix_size,
            s.scheduling,
            if v.submit_to_l1 { ", results also submitted to the L1" } else { "" }
        );
    }
    let validators = validator::start(validator_settings, journal.clone(), prioritized)?;

    cpc_common::service::notify_ready();
    cpc_common::service::spawn_watchdog();
    if s.stop_after_blocks == 0 {
        shutdown.await;
        cpc_common::service::notify_stopping();
        eprintln!("stopping: the journal keeps every result; a restart sends what is pending");
        validators.stop().await;
        miner.stop();
        farm.shutdown();
        return Ok(ExitCode::SUCCESS);
    }

    // Bounded run (quick start, tests): wait for the blocks, then for their submissions to settle.
    let last = start_height + s.stop_after_blocks - 1;
    let pool = cpc_coordinator::l1::NodePool::new(&miner_settings.nodes);
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
            settle_deadline = Some(Instant::now() + s.settle_timeout);
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
    let names = &s.identities;
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
    use crate::cli::Cli;
    use clap::CommandFactory as _;

    /// The layers of `cpc-coordinator ARGS` (no `CPC_*` variable is set in unit tests).
    fn layers_of(args: &[&str]) -> (Layer, Layer) {
        let matches = Cli::command().try_get_matches_from(args).expect("valid arguments");
        let cli = <Cli as clap::FromArgMatches>::from_arg_matches(&matches).expect("parsed");
        let super::super::Command::Run(run) = cli.command else { panic!("not run") };
        let run_matches = matches.subcommand_matches("run").expect("run");
        layers(&cli.global, &run, run_matches)
    }

    /// Every argument of `run`, global ones too, lands in the flags layer; clap defaults land nowhere.
    #[test]
    fn command_line_values_are_flags_and_clap_defaults_are_left_to_the_library() {
        let (flags, env) = layers_of(&[
            "cpc-coordinator",
            "--node",
            "http://n:1",
            "run",
            "--keystore",
            "/keys",
            "--identity",
            "w1,w2",
            "--nodes",
            "http://a:1,http://b:1",
            "--settle-timeout",
            "5",
            "--new-journal",
            "--validator",
            "ws://v:1=w1",
            "--scheduling",
            "fifo",
        ]);
        assert_eq!(env, Layer::default());
        assert_eq!(flags.node.as_deref(), Some("http://n:1"));
        assert_eq!(flags.keystore, Some("/keys".into()));
        assert_eq!(flags.identities, ["w1", "w2"]);
        assert_eq!(flags.nodes, ["http://a:1", "http://b:1"]);
        assert_eq!((flags.settle_timeout_secs, flags.new_journal), (Some(5), Some(true)));
        assert_eq!(flags.validators, ["ws://v:1=w1"]);
        assert_eq!(flags.scheduling.as_deref(), Some("fifo"));
        assert_eq!((flags.min_agents, flags.stop_after_blocks), (None, None));

        let (flags, _) = layers_of(&["cpc-coordinator", "run"]);
        assert_eq!(flags, Layer::default(), "nothing given, nothing said");
    }
}
