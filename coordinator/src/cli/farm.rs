//! `serve` and `job`: the farm's subcommands. Both start the farm in-process (QUIC endpoint, actors, metrics);
//! `serve` runs until interrupted, `job` waits for agents, runs one job and prints its report. With `--admin`
//! both serve the admin API (the `farm ...` commands of `farm_admin.rs` are its client).

use super::GlobalArgs;
use clap::Args;
use cpc_common::synthetic::Challenge;
use cpc_coordinator::{
    admin,
    farm::{self, FarmConfig, FarmHandle, JobReport},
};
use std::{net::SocketAddr, path::PathBuf, process::ExitCode, time::Duration};
use tokio_util::sync::CancellationToken;

/// Default time `job` waits for agents.
const DEFAULT_WAIT_SECS: u64 = 120;

/// Where the farm listens and keeps its identity.
#[derive(Debug, Args)]
pub(crate) struct FarmArgs {
    /// QUIC address agents dial.
    #[arg(long, default_value = farm::DEFAULT_LISTEN, help_heading = "Farm")]
    pub(crate) listen: SocketAddr,
    /// Directory of the certificate, key and join token (made on first start) [default: ~/.cpc-farm].
    #[arg(long, env = "CPC_FARM_DATA_DIR", help_heading = "Farm")]
    pub(crate) data_dir: Option<PathBuf>,
    /// Serve /metrics, /healthz and /readyz on this address.
    #[arg(long, help_heading = "Farm")]
    pub(crate) metrics: Option<SocketAddr>,
    /// Serve the admin API (`cpc-coordinator farm status|drain|...`) on this address, e.g. 127.0.0.1:7702;
    /// its token is the admin-token file in the data dir (made on first start).
    #[arg(long, env = "CPC_ADMIN_LISTEN", help_heading = "Farm")]
    pub(crate) admin: Option<SocketAddr>,
    /// Address agents should dial, for the printed command line [default: the listen address].
    #[arg(long, env = "CPC_PUBLIC_ADDR", help_heading = "Farm")]
    pub(crate) public_addr: Option<String>,
    /// Read the certificate, key and join token from this directory (e.g. a mounted Kubernetes Secret)
    /// instead of making them in the data dir.
    #[arg(long, env = "CPC_IDENTITY_DIR", help_heading = "Farm")]
    pub(crate) identity_dir: Option<PathBuf>,
    /// Automatic probation: retry a device the farm quarantined (never one an operator did) after this
    /// many seconds, through the same self-test as `farm readmit` [default: off].
    #[arg(long, help_heading = "Farm")]
    pub(crate) probation_cool_down_secs: Option<u64>,
    /// Most automatic readmission attempts per device in 24 hours.
    #[arg(long, default_value_t = farm::probation::DEFAULT_PROBATION_MAX_PER_DAY, help_heading = "Farm")]
    pub(crate) probation_max_per_day: u32,
    /// Seconds a shard may take before its rows go to another device.
    #[arg(long, default_value_t = farm::DEFAULT_SHARD_TIMEOUT.as_secs(), help_heading = "Farm")]
    pub(crate) shard_timeout: u64,
    /// Worker threads for the farm's QUIC I/O; 0 runs it on the scheduler's thread [default: half the
    /// cores beyond two, at most 8].
    #[arg(
        long,
        value_parser = clap::value_parser!(u32).range(0..=i64::from(farm::MAX_IO_THREADS)),
        help_heading = "Farm"
    )]
    pub(crate) io_threads: Option<u32>,
}

#[derive(Debug, Args)]
pub(crate) struct ServeArgs {
    #[command(flatten)]
    pub(crate) farm: FarmArgs,
}

#[derive(Debug, Args)]
pub(crate) struct JobArgs {
    /// The challenge's seed string.
    #[arg(long, help_heading = "Job")]
    pub(crate) seed: String,
    /// n: the matrices are n × n.
    #[arg(long, help_heading = "Job")]
    pub(crate) matrix_size: u32,
    /// Number of products.
    #[arg(long, default_value_t = 1, help_heading = "Job")]
    pub(crate) iterations: u32,
    /// Agents to wait for before starting.
    #[arg(long, default_value_t = 1, help_heading = "Job")]
    pub(crate) min_agents: usize,
    /// Seconds to wait for them.
    #[arg(long, default_value_t = DEFAULT_WAIT_SECS, help_heading = "Job")]
    pub(crate) wait: u64,
    #[command(flatten)]
    pub(crate) farm: FarmArgs,
}

/// Starts the farm; it stops when `shutdown` (the process's token) is cancelled or its handle says so.
fn start(args: &FarmArgs, shutdown: &CancellationToken) -> anyhow::Result<(FarmHandle, String)> {
    let dir = super::data_dir_or_default(args.data_dir.clone())?;
    let (identity, token_file) =
        cpc_coordinator::data_dir::load_farm_identity(&dir, args.identity_dir.as_deref())?;
    let mut config = FarmConfig::new(args.listen, identity);
    config.metrics_listen = args.metrics;
    config.shard_timeout = Duration::from_secs(args.shard_timeout.max(1));
    if let Some(threads) = args.io_threads {
        config.io_threads = threads as usize;
    }
    config.shutdown = shutdown.clone();
    let handle = farm::start(config)?;
    let public = args.public_addr.clone().unwrap_or_else(|| handle.local_addr().to_string());
    if let Some(m) = handle.metrics_addr() {
        eprintln!("metrics on http://{m}/metrics");
    }
    super::print_join_instructions(&handle, &public, &token_file);
    let command = handle.agent_command(&public, &token_file.display().to_string());
    Ok((handle, command))
}

/// Starts automatic probation when `--probation-cool-down-secs` is given; it stops when the answer is dropped.
fn start_probation(args: &FarmArgs, handle: &FarmHandle) -> Option<farm::probation::ProbationTask> {
    let cool_down = Duration::from_secs(args.probation_cool_down_secs?);
    let policy = farm::ProbationPolicy { cool_down, max_per_day: args.probation_max_per_day };
    eprintln!(
        "probation on: devices the farm quarantined are self-tested after {cool_down:?}, at most {} times a day",
        policy.max_per_day
    );
    Some(handle.start_probation(policy))
}

/// Serves the admin API over `handle` when `--admin` is given; the answer stops it when dropped.
async fn start_admin(
    args: &FarmArgs,
    handle: &FarmHandle,
) -> anyhow::Result<Option<admin::RunningServer>> {
    let Some(addr) = args.admin else { return Ok(None) };
    let dir = super::data_dir_or_default(args.data_dir.clone())?;
    let (token, token_file) = admin::AdminToken::load_or_create(&dir)?;
    let server = admin::serve(addr, token, admin::farm_routes(handle.clone())).await?;
    eprintln!("admin API on http://{} (token in {})", server.local_addr(), token_file.display());
    Ok(Some(server))
}

pub(crate) async fn serve(_g: &GlobalArgs, args: ServeArgs) -> anyhow::Result<ExitCode> {
    let shutdown = super::shutdown_token();
    let (handle, command) = start(&args.farm, &shutdown)?;
    let _admin = start_admin(&args.farm, &handle).await?;
    let _probation = start_probation(&args.farm, &handle);
    // For scripts on this host: the command line with this host's token file.
    println!("{command}");
    cpc_common::service::notify_ready();
    cpc_common::service::spawn_watchdog();
    shutdown.cancelled().await;
    cpc_common::service::notify_stopping();
    eprintln!("shutting down");
    tokio::task::spawn_blocking(move || handle.shutdown()).await?;
    Ok(ExitCode::SUCCESS)
}

pub(crate) async fn job(g: &GlobalArgs, args: JobArgs) -> anyhow::Result<ExitCode> {
    let challenge = Challenge::new(args.seed.clone(), args.matrix_size, args.iterations)?;
    let (handle, _) = start(&args.farm, &super::shutdown_token())?;
    let _admin = start_admin(&args.farm, &handle).await?;
    let _probation = start_probation(&args.farm, &handle);
    let agents =
        handle.wait_for_agents(args.min_agents.max(1), Duration::from_secs(args.wait)).await?;
    eprintln!("{agents} agent(s) connected: running the job");
    let report = handle.run_job(challenge).await;
    tokio::task::spawn_blocking({
        let handle = handle.clone();
        move || handle.shutdown()
    })
    .await?;
    let report = report?;
    if g.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print_report(&report);
    }
    Ok(ExitCode::SUCCESS)
}

fn print_report(r: &JobReport) {
    println!("result_hash   {}", hex::encode(r.result_hash));
    println!("makespan      {:.3} s", r.makespan_seconds);
    println!("throughput    {:.3e} ops/s", r.achieved_ops_per_sec);
    println!(
        "shards        {} dispatched, {} reassigned, {} failed; spot checks {} passed, {} failed",
        r.shards_dispatched,
        r.shards_reassigned,
        r.shards_failed,
        r.spot_checks_passed,
        r.spot_checks_failed
    );
    println!(
        "freivalds     {} passed, {} failed, {} unchecked; checking {:.3} % of device time",
        r.freivalds_checks_passed,
        r.freivalds_checks_failed,
        r.shards_unchecked,
        100.0 * r.freivalds_check_share
    );
    if !r.quarantined.is_empty() {
        println!("quarantined   {}", r.quarantined.join(", "));
    }
    for d in &r.devices {
        println!(
            "  {:<16} {:<12} rows {:>6}  shards {:>3}  {:.3e} ops/s  ({})",
            d.device, d.agent, d.rows, d.shards, d.achieved_ops_per_sec, d.name
        );
    }
}
