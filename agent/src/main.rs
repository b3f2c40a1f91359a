//! `cpc-agent`: joins this host's devices to a cpc-farm coordinator. Parses arguments, sets up tracing and
//! signals, and hands over to `cpc_agent::run`.

use clap::Parser;
use cpc_agent::{AgentConfig, DeviceSelection, DeviceSpec};
use cpc_kernels::BackendKind;
use std::{net::SocketAddr, sync::Arc, time::Duration};

/// mimalloc rather than glibc's malloc: the farm's hot path allocates and frees many small frames,
/// messages and tasks a second, and glibc consolidates its fast bins on every request of a kilobyte or
/// more (a batch of orders or answers), which cost the agent about a sixth of its CPU in the farm bench.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Joins this host's GPUs (or CPU) to a cpc-farm coordinator.
#[derive(Debug, Parser)]
#[command(name = "cpc-agent", version, about)]
struct Args {
    /// The coordinator's QUIC address, HOST:PORT (as printed by `cpc-coordinator serve`).
    #[arg(long, env = "CPC_COORDINATOR", help_heading = "Coordinator")]
    coordinator: String,
    /// The coordinator's join token.
    #[arg(
        long,
        env = "CPC_JOIN_TOKEN",
        hide_env_values = true,
        required_unless_present = "token_file",
        conflicts_with = "token_file",
        help_heading = "Coordinator"
    )]
    token: Option<String>,
    /// A file holding the join token (a copy of the coordinator's `join-token`, or a mounted Secret).
    #[arg(long, env = "CPC_JOIN_TOKEN_FILE", help_heading = "Coordinator")]
    token_file: Option<std::path::PathBuf>,
    /// SHA-256 fingerprint of the coordinator's certificate (hex); no other coordinator is trusted.
    #[arg(long, env = "CPC_COORDINATOR_FINGERPRINT", help_heading = "Coordinator")]
    coordinator_fingerprint: String,
    /// Name in the coordinator's reports [default: the host name].
    #[arg(long, help_heading = "Coordinator")]
    name: Option<String>,
    /// Which backend runs shards: `cpu`, `cuda` (needs a build with `--features cuda` and an NVIDIA GPU), or
    /// `simulated` (computes nothing and answers WRONG leaves, for `cpc-coordinator bench farm`; needs
    /// `--device-tops` and `--allow-wrong-results`).
    #[arg(long, default_value = "cpu", help_heading = "Devices")]
    backend: String,
    /// Devices to run: `all` (every visible GPU; the CPU for `cpu`), or a list of indices and ranges such as
    /// `0,2` or `0-3` (for `simulated`, the devices to simulate: `0-49` runs 50).
    #[arg(long, default_value = "all", help_heading = "Devices")]
    devices: String,
    /// Speed of each simulated device, in tera-ops per second (2·rows·n² operations per shard): a shard is
    /// held for the time such a device would take (`--backend simulated` only).
    #[arg(long, value_name = "TOPS", help_heading = "Devices")]
    device_tops: Option<f64>,
    /// Run simulated devices although they answer WRONG leaves by design (`--backend simulated` refuses to
    /// start without it). Only against a benchmark coordinator with spot checks off, never one that submits
    /// to a chain.
    #[arg(long, help_heading = "Devices")]
    allow_wrong_results: bool,
    /// Longest one shard may run on a device before the device is quarantined (its other shards go
    /// elsewhere; the agent keeps serving with its other devices), in seconds.
    #[arg(
        long,
        default_value_t = cpc_agent::DEFAULT_WATCHDOG.as_secs(),
        value_parser = clap::value_parser!(u64).range(1..),
        help_heading = "Devices"
    )]
    watchdog_secs: u64,
    /// Times a device's worker is restarted after its watchdog fired before the agent gives the device up
    /// (quarantines it until the agent restarts); 0: give it up at the first firing.
    #[arg(long, default_value_t = cpc_agent::DEFAULT_MAX_DEVICE_RESTARTS, help_heading = "Devices")]
    max_device_restarts: u32,
    /// Bytes of rows kept for spot checks, in MiB.
    #[arg(long, default_value_t = cpc_agent::DEFAULT_ROW_CACHE_BYTES >> 20, help_heading = "Devices")]
    row_cache_mib: u64,
    /// TEST ONLY: corrupt one element every K rows (CPU backend), to demonstrate the checks.
    #[arg(long, hide = true)]
    fault_injection: Option<u32>,
    /// TEST ONLY: flip one bit of one element of one shard (CPU backend), `SHARD:ROW:COL:BIT` (SHARD counts
    /// the shards the farm sends, from 0; the start-up measurement is not counted), to demonstrate Freivalds'
    /// check.
    #[arg(long, hide = true, value_parser = parse_bit_flip)]
    fault_flip: Option<cpc_kernels::cpu::BitFlip>,
    /// Serve /metrics, /healthz and /readyz on this address.
    #[arg(long, env = "CPC_AGENT_METRICS", help_heading = "Observability")]
    metrics: Option<SocketAddr>,
    /// Log lines on stderr as `text` (colours only on a terminal) or `json` (one object per line).
    #[arg(long, env = "CPC_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text, help_heading = "Observability")]
    log_format: LogFormat,
}

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum LogFormat {
    /// Human-readable; ANSI colours only when stderr is a terminal.
    Text,
    /// One JSON object per line.
    Json,
}

fn init_logging(format: LogFormat) {
    use std::io::IsTerminal as _;
    let filter =
        tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into());
    let logs = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    match format {
        LogFormat::Text => logs.with_ansi(std::io::stderr().is_terminal()).init(),
        LogFormat::Json => logs.json().init(),
    }
}

/// `--backend` for simulated devices.
const SIMULATED_BACKEND: &str = "simulated";

fn open_devices(args: &Args, watchdog: Duration) -> anyhow::Result<Vec<DeviceSpec>> {
    let selection: DeviceSelection = args.devices.parse()?;
    if args.backend.trim().eq_ignore_ascii_case(SIMULATED_BACKEND) {
        let Some(tops) = args.device_tops else {
            anyhow::bail!(
                "--backend simulated needs --device-tops TOPS: the speed of each simulated device (e.g. 660)"
            );
        };
        return Ok(cpc_agent::open_simulated(&selection, tops, args.allow_wrong_results)?);
    }
    if args.device_tops.is_some() || args.allow_wrong_results {
        anyhow::bail!("--device-tops and --allow-wrong-results apply to --backend simulated only");
    }
    let kind: BackendKind = args.backend.parse()?;
    if kind == BackendKind::Cpu && (args.fault_injection.is_some() || args.fault_flip.is_some()) {
        let mut backend = cpc_kernels::CpuBackend::new(0)?;
        if let Some(k) = args.fault_injection {
            tracing::warn!("fault injection on: this agent computes WRONG results every {k} rows");
            backend = backend.with_fault_injection(k);
        }
        if let Some(flip) = args.fault_flip {
            tracing::warn!(?flip, "fault injection on: this agent flips one bit of one shard");
            backend = backend.with_bit_flip(flip);
        }
        return Ok(vec![DeviceSpec { index: 0, backend: Arc::new(backend) }]);
    }
    Ok(cpc_agent::open_devices(kind, &selection, watchdog)?)
}

/// `SHARD:ROW:COL:BIT` for `--fault-flip`.
fn parse_bit_flip(text: &str) -> anyhow::Result<cpc_kernels::cpu::BitFlip> {
    let parts: Vec<&str> = text.split(':').collect();
    let [shard, row, col, bit] = parts.as_slice() else {
        anyhow::bail!("expected SHARD:ROW:COL:BIT, got `{text}`");
    };
    Ok(cpc_kernels::cpu::BitFlip {
        shard: shard.parse()?,
        row: row.parse()?,
        col: col.parse()?,
        bit: bit.parse()?,
    })
}

fn main() -> anyhow::Result<()> {
    cpc_common::service::disable_transparent_huge_pages();
    let args = Args::parse();
    init_logging(args.log_format);
    let watchdog = Duration::from_secs(args.watchdog_secs);
    let devices = open_devices(&args, watchdog)?;
    let token = match (&args.token, &args.token_file) {
        (Some(token), _) => token.clone(),
        (None, Some(path)) => std::fs::read_to_string(path)
            .map_err(|e| {
                anyhow::anyhow!("cannot read the join token from {}: {e}", path.display())
            })?
            .trim()
            .to_owned(),
        (None, None) => {
            anyhow::bail!("no join token: pass --token-file FILE or set CPC_JOIN_TOKEN")
        }
    };
    let mut config = AgentConfig::new(&args.coordinator, &token, &args.coordinator_fingerprint);
    if let Some(name) = &args.name {
        config.name.clone_from(name);
    }
    config.metrics_listen = args.metrics;
    config.row_cache_bytes = args.row_cache_mib << 20;
    config.watchdog = watchdog;
    config.max_device_restarts = args.max_device_restarts;
    actix_rt::System::new().block_on(async move {
        let (tx, rx) = tokio::sync::watch::channel(false);
        actix_rt::spawn(async move {
            wait_for_signal().await;
            tracing::info!("signal received: draining (a second signal exits at once)");
            cpc_common::service::notify_stopping();
            let _ = tx.send(true);
            wait_for_signal().await;
            std::process::exit(130);
        });
        // The devices are open: ready for systemd (joining the coordinator is the agent's own business,
        // retried for ever and reported by /readyz and cpcfarm_agent_connected).
        cpc_common::service::notify_ready();
        cpc_common::service::spawn_watchdog();
        cpc_agent::run(config, devices, rx).await
    })?;
    Ok(())
}

async fn wait_for_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = term.recv() => {}
                    _ = tokio::signal::ctrl_c() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}
