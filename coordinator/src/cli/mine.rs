//! `run`: the miner. Follows the L1, computes one task per block for every identity (on the farm's agents
//! or locally), and submits one signed SUBMIT_RESULT per identity per block, journaled in the data dir.
//! Settings come from flags, then `CPC_*` environment variables, then `--config farm.toml`, then defaults.
//! With validators configured (`--validator URL=IDENTITY` or `[[validators]]`), it also takes jobs from
//! those PoC validators over WebSocket, on the same compute service behind the priority layer.
//!
//! The node itself is library code ([`cpc_coordinator::mining::run`], settings in
//! [`cpc_coordinator::mining::settings`]); this module parses the flags, sorts clap's values into the
//! flags and environment layers, prints the node's events and the bounded run's report, and maps errors
//! to exit codes (2: an invalid setting, 1: anything else).

use super::{GlobalArgs, output::print_json};
use clap::{ArgMatches, Args, parser::ValueSource};
use cpc_coordinator::{
    admin,
    mining::{
        self, RunEvent, RunReport, WindowReport,
        settings::{DEFAULT_SETTLE_TIMEOUT_SECS, Layer, Settings, Sources},
    },
};
use std::{net::SocketAddr, path::PathBuf, process::ExitCode};

#[derive(Debug, Args)]
pub(crate) struct RunArgs {
    /// TOML configuration file (see deploy/farm.example.toml).
    #[arg(long, env = "CPC_CONFIG", help_heading = "Mining")]
    config: Option<PathBuf>,
    /// L1 node URLs in failover order (comma-separated) [default: --node, else the file's `nodes`].
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
    /// Serve the admin API (`cpc-coordinator farm status|drain|...`) on this address once the farm is up,
    /// e.g. 127.0.0.1:7702; its token is the admin-token file in the data dir (made on first start).
    #[arg(long, env = "CPC_ADMIN_LISTEN", help_heading = "Mining")]
    admin: Option<SocketAddr>,
    /// Metrics address (/metrics, /healthz, /readyz).
    #[arg(long, env = "CPC_METRICS", help_heading = "Mining")]
    metrics: Option<SocketAddr>,
    /// Agents to wait for before mining (farm mode).
    #[arg(long, default_value_t = 0, help_heading = "Mining")]
    min_agents: usize,
    /// Worker threads for the farm's QUIC I/O; 0 runs it on the scheduler's thread [default: half the
    /// cores beyond two, at most 8].
    #[arg(long, env = "CPC_IO_THREADS", help_heading = "Mining")]
    io_threads: Option<u32>,
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
    split.put("io_threads", args.io_threads, |l| &mut l.io_threads);
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
        let usage = e.is_usage();
        super::UsageError::or_failure(e, usage)
    })
}

pub(crate) async fn run(
    g: &GlobalArgs,
    args: RunArgs,
    matches: &ArgMatches,
) -> anyhow::Result<ExitCode> {
    // Installed first: from here on SIGINT and SIGTERM stop the run gracefully.
    let shutdown = super::shutdown_token();
    let settings = resolve(g, &args, matches)?;
    // SIGHUP re-reads the config file with these same flags and environment (they keep winning).
    let (control, inbox) = mining::control::channel(Some(layers(g, &args, matches)));
    let _reload_on_hangup = reload_on_hangup(control.clone());
    let admin = AdminSlot::bind(args.admin, &settings.data_dir, control)?;
    let on_event = |event: RunEvent<'_>| {
        match &event {
            RunEvent::FarmListening { farm, .. } => admin.serve(Some(farm)),
            // Local compute: no farm, the identity and reload routes only.
            RunEvent::Ready => admin.serve(None),
            _ => {}
        }
        print_event(event);
    };
    let report =
        mining::run_controlled(settings, inbox, shutdown, on_event).await.map_err(|e| {
            let usage = e.is_usage();
            super::UsageError::or_failure(e, usage)
        })?;
    if let RunReport::Window(window) = report {
        print_window(g, &window)?;
    }
    Ok(ExitCode::SUCCESS)
}

/// Reloads the config on every SIGHUP, saying on stderr what changed or why it was refused; ends with the
/// returned guard.
fn reload_on_hangup(control: mining::MiningControl) -> Option<AbortOnDrop> {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let mut hangups = match signal(SignalKind::hangup()) {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!("cannot listen for SIGHUP ({e}): reload needs a restart");
                return None;
            }
        };
        Some(AbortOnDrop(tokio::spawn(async move {
            while hangups.recv().await.is_some() {
                match control.reload().await {
                    Ok(outcome) if outcome.is_empty() => {
                        eprintln!("SIGHUP: config reloaded, nothing changed")
                    }
                    Ok(outcome) => eprintln!(
                        "SIGHUP: config reloaded: added [{}], removed [{}], changed [{}]",
                        outcome.added.join(", "),
                        outcome.removed.join(", "),
                        outcome.changed.join(", ")
                    ),
                    Err(e) => eprintln!("SIGHUP: {e}"),
                }
            }
        })))
    }
    #[cfg(not(unix))]
    {
        let _ = control;
        None
    }
}

/// A background task that ends with the command that started it.
#[derive(Debug)]
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// The admin API of `run --admin`: its port bound before the node starts (a taken port fails at once), served
/// once the farm is up, stopped when the run returns.
struct AdminSlot {
    pending: std::sync::Mutex<Option<(std::net::TcpListener, admin::AdminToken)>>,
    control: mining::MiningControl,
    running: std::sync::Mutex<Option<admin::RunningServer>>,
}

impl AdminSlot {
    fn bind(
        addr: Option<SocketAddr>,
        data_dir: &std::path::Path,
        control: mining::MiningControl,
    ) -> anyhow::Result<Self> {
        let pending = match addr {
            None => None,
            Some(addr) => {
                let (token, token_file) = admin::AdminToken::load_or_create(data_dir)?;
                let listener = std::net::TcpListener::bind(addr)
                    .map_err(|source| admin::AdminError::Bind { addr, source })?;
                eprintln!(
                    "admin API on http://{} once mining starts (token in {})",
                    listener.local_addr()?,
                    token_file.display()
                );
                Some((listener, token))
            }
        };
        Ok(Self {
            pending: std::sync::Mutex::new(pending),
            control,
            running: std::sync::Mutex::new(None),
        })
    }

    /// Serves the admin API (once: the first call wins) with the farm's routes when there is a farm, and
    /// the mining node's identity and reload routes.
    fn serve(&self, farm: Option<&cpc_coordinator::farm::FarmHandle>) {
        let Some((listener, token)) = self.pending.lock().ok().and_then(|mut p| p.take()) else {
            return;
        };
        let mut server =
            admin::Server::new(token).merge(admin::mining_routes(self.control.clone()));
        if let Some(farm) = farm {
            server = server.merge(admin::farm_routes(farm.clone()));
        }
        match server.serve_std(listener) {
            Ok(server) => {
                if let Ok(mut running) = self.running.lock() {
                    *running = Some(server);
                }
            }
            Err(e) => tracing::error!("the admin API did not start: {e}"),
        }
    }
}

/// What the operator sees on stderr (and tells systemd) as the node starts and stops.
fn print_event(event: RunEvent<'_>) {
    match event {
        RunEvent::NewJournal { data_dir } => eprintln!(
            "new journal in {}: each identity first looks for its results of the last blocks on chain",
            data_dir.display()
        ),
        RunEvent::MetricsListening(addr) => eprintln!("metrics on http://{addr}/metrics"),
        RunEvent::FarmListening { farm, public_addr, token_file } => {
            super::print_join_instructions(farm, public_addr, token_file);
        }
        RunEvent::WaitingForNode(e) => eprintln!("waiting for an L1 node ({e})"),
        RunEvent::Mining { identities, nodes, compute, matrix_size, data_dir } => eprintln!(
            "mining for {} on {} with {} (matrix_size {}, data dir {})",
            identities
                .iter()
                .map(|i| format!("{} ({})", i.name, i.address))
                .collect::<Vec<_>>()
                .join(", "),
            nodes.join(", "),
            compute,
            matrix_size,
            data_dir.display()
        ),
        RunEvent::TakingValidatorJobs { validator: v, scheduling } => eprintln!(
            "taking jobs from validator {} for {} (max matrix_size {}, {} scheduling{})",
            v.url,
            v.identity.name,
            v.max_matrix_size,
            scheduling,
            if v.submit_to_l1 { ", results also submitted to the L1" } else { "" }
        ),
        RunEvent::Ready => {
            cpc_common::service::notify_ready();
            cpc_common::service::spawn_watchdog();
        }
        RunEvent::StoppingBeforeMining => eprintln!("stopping before mining started"),
        RunEvent::Stopping => {
            cpc_common::service::notify_stopping();
            eprintln!("stopping: the journal keeps every result; a restart sends what is pending");
        }
    }
}

/// A bounded run's summary (stderr) and its rows (stdout: a table, or JSON with `--json`).
fn print_window(g: &GlobalArgs, window: &WindowReport) -> anyhow::Result<()> {
    let rows = &window.rows;
    let included = window.included();
    eprintln!(
        "blocks {}..={}: {included} of {} results included, {} not",
        window.first,
        window.last,
        rows.len(),
        rows.len() - included
    );
    if g.json {
        print_json(rows)?;
    } else {
        println!(
            "{:<7} {:<12} {:<36} {:<64} included",
            "height", "identity", "task_id", "result_hash"
        );
        for row in rows {
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
    Ok(())
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
