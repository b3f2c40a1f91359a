//! Command-line surface of `cpc-coordinator`: one argument struct per concern, one module per group of
//! subcommands. Each command resolves its arguments, calls the library and prints; `--json` switches
//! data output to one JSON document on stdout.

mod bench;
mod bench_farm;
mod chain;
mod compute;
mod farm;
mod farm_admin;
mod identities;
mod keys;
mod mine;
mod output;

use clap::{Args, Parser, Subcommand};
use cpc_common::keystore::Keystore;
use cpc_coordinator::l1::NodeClient;
use std::{path::PathBuf, process::ExitCode};
use tokio_util::sync::CancellationToken;

pub(crate) use cpc_coordinator::l1::DEFAULT_NODE_URL;

/// Exit code for "checked, and it is wrong" (as opposed to 1: "could not check").
pub(crate) const EXIT_MISMATCH: u8 = 3;
/// Exit code for a usage error: a flag, variable or config setting that is not valid.
pub(crate) const EXIT_USAGE: u8 = 2;

/// An invalid setting, found by the program rather than by clap: `main` exits with [`EXIT_USAGE`].
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub(crate) struct UsageError(pub(crate) String);

impl UsageError {
    /// `e` for `main`: a [`UsageError`] with its message when the operator's input is at fault
    /// (`is_usage`), else `e` itself (exit 1).
    pub(crate) fn or_failure(
        e: impl std::error::Error + Send + Sync + 'static,
        is_usage: bool,
    ) -> anyhow::Error {
        if is_usage { anyhow::Error::new(Self(e.to_string())) } else { anyhow::Error::new(e) }
    }
}

/// cpc-farm coordinator and operator tool for ComputeChain Proof-of-Compute.
#[derive(Debug, Parser)]
#[command(name = "cpc-coordinator", version, about)]
pub(crate) struct Cli {
    #[command(flatten)]
    pub(crate) global: GlobalArgs,
    #[command(subcommand)]
    pub(crate) command: Command,
}

/// Options every subcommand understands.
#[derive(Debug, Args)]
pub(crate) struct GlobalArgs {
    /// URL of the ComputeChain L1 node [default: http://localhost:8000].
    #[arg(long, global = true, env = "CPC_NODE", help_heading = "Global")]
    pub(crate) node: Option<String>,
    /// Keystore directory (cpc-cli's layout) [default: ~/.computechain/keys].
    #[arg(long, global = true, env = "CPC_KEYSTORE", help_heading = "Global")]
    pub(crate) keystore: Option<PathBuf>,
    /// Print data as JSON.
    #[arg(long, global = true, help_heading = "Global")]
    pub(crate) json: bool,
    /// Log lines on stderr as `text` (colours only on a terminal) or `json` (one object per line, for
    /// journald or a log shipper).
    #[arg(long, global = true, env = "CPC_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text, help_heading = "Global")]
    pub(crate) log_format: LogFormat,
}

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum LogFormat {
    /// Human-readable; ANSI colours only when stderr is a terminal.
    Text,
    /// One JSON object per line.
    Json,
}

/// Sets up tracing on stderr in `format`, filtered by `RUST_LOG` (else `default_filter`).
pub(crate) fn init_logging(format: LogFormat, default_filter: &str) {
    use std::io::IsTerminal as _;
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| default_filter.into());
    let logs = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    match format {
        LogFormat::Text => logs.with_ansi(std::io::stderr().is_terminal()).init(),
        LogFormat::Json => logs.json().init(),
    }
}

impl GlobalArgs {
    pub(crate) fn keystore(&self) -> Keystore {
        Keystore::new(self.keystore.clone().unwrap_or_else(Keystore::default_dir))
    }

    /// The node URL: `--node` / `CPC_NODE`, else [`DEFAULT_NODE_URL`].
    pub(crate) fn node_url(&self) -> &str {
        self.node.as_deref().unwrap_or(DEFAULT_NODE_URL)
    }

    pub(crate) fn node(&self) -> NodeClient {
        NodeClient::new(self.node_url())
    }
}

#[derive(Debug, Subcommand)]
pub(crate) enum Command {
    /// Manage worker keys (cpc-cli compatible files).
    #[command(subcommand)]
    Keys(keys::KeysCommand),
    /// Show the node's head.
    Status,
    /// Show the balance and nonce of an address or key name.
    Balance {
        /// A `cpc1...` address or a key name from the keystore.
        who: String,
    },
    /// Send transactions.
    #[command(subcommand)]
    Tx(chain::TxCommand),
    /// Sign and send a SUBMIT_RESULT (validated locally first).
    SubmitResult(chain::SubmitResultArgs),
    /// Query the chain.
    #[command(subcommand)]
    Query(chain::QueryCommand),
    /// Derive a block task and compute it locally.
    Task(compute::TaskArgs),
    /// Recompute a worker's on-chain result for a block and check it.
    Verify(compute::VerifyArgs),
    /// Mine: follow the L1 and submit one SUBMIT_RESULT per identity per block.
    Run(mine::RunArgs),
    /// Per identity: blocks seen, computed, submitted, included and missed (with each miss's reason),
    /// balance and fees, from the journal of a data dir (safe while `run` uses it).
    Identities(identities::IdentitiesArgs),
    /// Run the farm coordinator: accept agents and print the command line that joins them.
    Serve(farm::ServeArgs),
    /// Run one synthetic job on the farm (starts it, waits for agents, prints the result).
    Job(farm::JobArgs),
    /// Ask a running farm what it does, and act on its devices, through its admin API.
    #[command(subcommand)]
    Farm(farm_admin::FarmCommand),
    /// Benchmark this host's CPU or GPU (per phase and end to end, ms and tera-ops per second), or with
    /// `bench farm` the coordinator on a farm of simulated devices.
    Bench(bench::BenchCommand),
}

/// Prints how agents join `farm`, dialling `public_addr`: the fingerprint and where the join token is
/// read, never the token itself (stderr ends up in journald and container logs).
pub(crate) fn print_join_instructions(
    farm: &cpc_coordinator::farm::FarmHandle,
    public_addr: &str,
    token_file: &std::path::Path,
) {
    eprintln!(
        "farm listening on {} (certificate fingerprint {})",
        farm.local_addr(),
        farm.fingerprint()
    );
    eprintln!(
        "join agents with:\n  {}\n  (FILE: a copy of {} (mode 0600), or CPC_JOIN_TOKEN set from it; add --backend cuda on GPU hosts)",
        farm.agent_command(public_addr, "FILE"),
        token_file.display()
    );
}

/// The data directory when none is given: `~/.cpc-farm` (journal, certificate, join token).
pub(crate) fn data_dir_or_default(given: Option<PathBuf>) -> anyhow::Result<PathBuf> {
    match given {
        Some(dir) => Ok(dir),
        None => cpc_coordinator::data_dir::default_dir()
            .ok_or_else(|| anyhow::anyhow!("no --data-dir and no HOME: pass --data-dir")),
    }
}

/// The process's one shutdown token, cancelled on the first SIGINT (Ctrl-C) or SIGTERM (what systemd and
/// Kubernetes send): every long-running command hands it (or children of it) to what it starts, so all of
/// it stops gracefully on either signal. The handlers are installed when this is called, so call it early:
/// from then on neither signal kills the process outright.
pub(crate) fn shutdown_token() -> CancellationToken {
    let token = CancellationToken::new();
    let signal = shutdown_signal();
    let cancel = token.clone();
    tokio::spawn(async move {
        signal.await;
        cancel.cancel();
    });
    token
}

/// Completes on the first SIGINT or SIGTERM (see [`shutdown_token`]); the handlers are installed when this
/// is called, not when first polled.
fn shutdown_signal() -> impl std::future::Future<Output = ()> {
    #[cfg(unix)]
    let streams = {
        use tokio::signal::unix::{SignalKind, signal};
        (signal(SignalKind::terminate()), signal(SignalKind::interrupt()))
    };
    async move {
        #[cfg(unix)]
        match streams {
            (Ok(mut term), Ok(mut interrupt)) => {
                tokio::select! {
                    _ = term.recv() => tracing::info!("SIGTERM received"),
                    _ = interrupt.recv() => tracing::info!("SIGINT received"),
                }
            }
            (Err(e), _) | (_, Err(e)) => {
                tracing::warn!(
                    "cannot listen for SIGTERM/SIGINT ({e}): only Ctrl-C stops gracefully"
                );
                let _ = tokio::signal::ctrl_c().await;
            }
        }
        #[cfg(not(unix))]
        {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}

/// Runs the parsed command; `matches` are what it was parsed from (where each value came from).
pub(crate) async fn run(cli: Cli, matches: &clap::ArgMatches) -> anyhow::Result<ExitCode> {
    let g = &cli.global;
    match cli.command {
        Command::Keys(cmd) => keys::run(g, cmd),
        Command::Status => chain::status(g).await,
        Command::Balance { who } => chain::balance(g, &who).await,
        Command::Tx(cmd) => chain::tx(g, cmd).await,
        Command::SubmitResult(args) => chain::submit_result(g, args).await,
        Command::Query(cmd) => chain::query(g, cmd).await,
        Command::Task(args) => compute::task(g, args).await,
        Command::Verify(args) => compute::verify(g, args).await,
        Command::Run(args) => match matches.subcommand_matches("run") {
            Some(run) => mine::run(g, args, run).await,
            None => unreachable!("clap parsed `run` from these matches"),
        },
        Command::Identities(args) => identities::run(g, args).await,
        Command::Serve(args) => farm::serve(g, args).await,
        Command::Job(args) => farm::job(g, args).await,
        Command::Farm(cmd) => farm_admin::run(g, cmd).await,
        Command::Bench(bench::BenchCommand {
            farm: Some(bench::BenchFarm::Farm(args)), ..
        }) => bench_farm::run(g, args).await,
        // Minutes of blocking compute: keep it off the runtime's async workers.
        Command::Bench(cmd) => tokio::task::block_in_place(|| bench::run(g, &cmd.device)),
    }
}
