//! `run`: the miner. Follows the L1, computes one task per block for every identity (on the farm's agents
//! or locally), and submits one signed SUBMIT_RESULT per identity per block, journaled in the data dir.
//! Settings come from flags, then `CPC_*` environment variables, then `--config farm.toml`, then defaults.
//! With validators configured (`--validator URL=IDENTITY` or `[[validators]]`), it also takes jobs from
//! those PoC validators over WebSocket, on the same compute service behind the priority layer.

use super::{GlobalArgs, output::print_json};
use anyhow::Context as _;
use clap::Args;
use cpc_common::{keystore::Keystore, synthetic::DEFAULT_MATRIX_SIZE};
use cpc_coordinator::{
    farm::{self, FarmConfig},
    mining::{
        self, Identity, MinerSettings,
        compute::{ComputeService, LocalCompute},
        config::{ConfigFile, ValidatorEntry},
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
}

/// `URL=IDENTITY` (split at the last `=`: a URL may hold `=` in its query).
fn parse_validator_flag(flag: &str) -> anyhow::Result<ValidatorEntry> {
    let (url, identity) = flag
        .rsplit_once('=')
        .filter(|(u, i)| !u.is_empty() && !i.is_empty())
        .with_context(|| format!("invalid --validator `{flag}`: expected URL=IDENTITY"))?;
    Ok(ValidatorEntry { url: url.to_owned(), identity: identity.to_owned(), submit_to_l1: false })
}

fn resolve(g: &GlobalArgs, args: &RunArgs) -> anyhow::Result<Resolved> {
    let file = match &args.config {
        Some(path) => ConfigFile::load(path)?,
        None => ConfigFile::default(),
    };
    let nodes = if !args.nodes.is_empty() {
        args.nodes.clone()
    } else if !file.nodes.is_empty() {
        file.nodes.clone()
    } else {
        vec![g.node.clone()]
    };
    let identities =
        if args.identities.is_empty() { file.identities.clone() } else { args.identities.clone() };
    if identities.is_empty() {
        anyhow::bail!(
            "no worker identity: pass --identity NAME (a key in the keystore) or list `identities` in --config"
        );
    }
    let data_dir = super::data_dir_or_default(args.data_dir.clone().or(file.data_dir.clone()))?;
    let listen = match (args.listen, &file.listen) {
        (Some(l), _) => l,
        (None, Some(l)) => l.parse().with_context(|| format!("invalid `listen` in config: {l}"))?,
        (None, None) => farm::DEFAULT_LISTEN.parse()?,
    };
    let metrics = match (args.metrics, &file.metrics) {
        (Some(m), _) => Some(m),
        (None, Some(m)) => {
            Some(m.parse().with_context(|| format!("invalid `metrics` in config: {m}"))?)
        }
        (None, None) => None,
    };
    let compute =
        args.compute.clone().or(file.compute.clone()).unwrap_or_else(|| "farm".to_owned());
    if compute != "farm" && compute != "local" {
        anyhow::bail!("invalid compute `{compute}`: expected `farm` or `local`");
    }
    let v = &args.validators;
    let validators = if v.validators.is_empty() {
        file.validators.clone()
    } else {
        v.validators.iter().map(|f| parse_validator_flag(f)).collect::<anyhow::Result<Vec<_>>>()?
    };
    for entry in &validators {
        validator::url_label(&entry.url)?;
        if entry.submit_to_l1 && !identities.contains(&entry.identity) {
            anyhow::bail!(
                "validator {} has submit_to_l1 for `{}`, which is not a mining identity: add it to `identities`",
                entry.url,
                entry.identity
            );
        }
    }
    let scheduling = match v.scheduling.as_ref().or(file.scheduling.as_ref()) {
        Some(s) => s.parse().map_err(anyhow::Error::msg)?,
        None => SchedulingPolicy::default(),
    };
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
            matrix_size: args.matrix_size.or(file.matrix_size).unwrap_or(DEFAULT_MATRIX_SIZE),
            gas_price: args.gas_price.or(file.gas_price).unwrap_or(cpc_common::tx::MIN_GAS_PRICE),
            poll_interval: Duration::from_millis(
                args.poll_interval_ms.or(file.poll_interval_ms).unwrap_or(DEFAULT_POLL_MS).max(10),
            ),
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
    })
}

pub(crate) async fn run(g: &GlobalArgs, args: RunArgs) -> anyhow::Result<ExitCode> {
    let shutdown = super::shutdown_signal();
    tokio::pin!(shutdown);
    let r = resolve(g, &args)?;
    let load = |name: &String| -> anyhow::Result<Identity> {
        let k = r.keystore.load(name)?;
        Ok(Identity { name: name.clone(), key: k.secret, address: k.address })
    };
    let identities = r.identities.iter().map(load).collect::<anyhow::Result<Vec<_>>>()?;
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
    let journal = mining::open_journal(&r.data_dir)?;

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
    let start_height = cpc_coordinator::l1::NodePool::new(&r.settings.nodes)
        .status()
        .await
        .map(|s| s.height)
        .unwrap_or(0);
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
    let miner = mining::spawn(r.settings.clone(), identities, Arc::clone(&journal), compute)?;
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
    let validators = validator::start(validator_settings, Arc::clone(&journal), prioritized)?;

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
    let mut settle_deadline: Option<Instant> = None;
    loop {
        tokio::select! {
            () = &mut shutdown => break,
            () = tokio::time::sleep(Duration::from_millis(250)) => {}
        }
        let rows = journal
            .lock()
            .map_err(|e| anyhow::anyhow!("journal lock: {e}"))?
            .report(start_height)?;
        let reached = rows.iter().any(|row| row.height >= last);
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
    let rows: Vec<_> = journal
        .lock()
        .map_err(|e| anyhow::anyhow!("journal lock: {e}"))?
        .report(start_height)?
        .into_iter()
        .filter(|row| row.height <= last)
        .collect();
    if g.json {
        print_json(&rows)?;
    } else {
        println!(
            "{:<7} {:<12} {:<36} {:<64} included",
            "height", "identity", "task_id", "result_hash"
        );
        for row in &rows {
            let included = match (row.included_in, &row.tx_hash) {
                (Some(h), Some(tx)) => format!("block {h} (tx {})", &tx[..16.min(tx.len())]),
                _ => row.state.clone(),
            };
            println!(
                "{:<7} {:<12} {:<36} {:<64} {included}",
                row.height,
                row.identity,
                row.task_id,
                row.result_hash.as_deref().unwrap_or("-")
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}
