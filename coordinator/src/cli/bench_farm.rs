//! `bench farm`: how the farm's coordinator keeps up with many identities on many devices, measured on one
//! host with simulated devices. It starts a farm on loopback (spot checks off: simulated devices answer
//! wrong leaves), spawns `--agents` real `cpc-agent --backend simulated` processes (each device holds a shard
//! for the time a device of `--device-tops` would take), and then, per block, derives one synthetic task per
//! made-up identity and submits them all at once, as the mining loop does at a block. Per block it prints
//! the time until every result is ready next to the ideal, shards dispatched per second, the shard round
//! trip, and this process's CPU time and resident memory (the agents are other processes).
//!
//! It never talks to a chain: no node, no keys; the block hashes and addresses are made up. The agents are
//! killed when it ends, also on an error or Ctrl-C.

use super::{GlobalArgs, output::print_json};
use anyhow::Context as _;
use clap::Args;
use cpc_common::{
    Address, sha256, sha256_hex,
    synthetic::{BlockTask, MAX_MATRIX_SIZE},
};
use cpc_coordinator::farm::{
    self, FarmConfig, FarmHandle, Identity, JobReport, JobSpec, SpotCheckConfig,
};
use serde::Serialize;
use std::{
    path::{Path, PathBuf},
    process::{Child, Command, ExitCode, Stdio},
    time::{Duration, Instant},
};

/// Default agent processes.
pub(crate) const DEFAULT_AGENTS: u32 = 4;
/// Default simulated devices per agent.
pub(crate) const DEFAULT_DEVICES_PER_AGENT: u32 = 50;
/// Default identities (tasks per block).
pub(crate) const DEFAULT_IDENTITIES: u32 = 200;
/// Default matrix size of the block tasks (the worker guide's).
pub(crate) const DEFAULT_MATRIX_SIZE: u32 = cpc_common::synthetic::DEFAULT_MATRIX_SIZE;
/// Default speed of a simulated device, tera-ops per second (an H100's dense INT8 rate in practice).
pub(crate) const DEFAULT_DEVICE_TOPS: f64 = 660.0;
/// Default blocks.
pub(crate) const DEFAULT_BLOCKS: u32 = 5;
/// Default seconds to wait for every simulated device to connect.
pub(crate) const DEFAULT_WAIT_SECS: u64 = 120;
/// Most devices one agent runs: its `--devices` list limit, `cpc_agent::MAX_LISTED_DEVICES` (restated: the
/// coordinator does not depend on the agent crate).
const MAX_DEVICES_PER_AGENT: i64 = 4096;

#[derive(Debug, Args)]
pub(crate) struct FarmBenchArgs {
    /// Agent processes to start, each `cpc-agent --backend simulated`.
    #[arg(
        long,
        default_value_t = DEFAULT_AGENTS,
        value_parser = clap::value_parser!(u32).range(1..=1024),
        help_heading = "Farm bench"
    )]
    agents: u32,
    /// Simulated devices per agent.
    #[arg(
        long,
        default_value_t = DEFAULT_DEVICES_PER_AGENT,
        value_parser = clap::value_parser!(u32).range(1..=MAX_DEVICES_PER_AGENT),
        help_heading = "Farm bench"
    )]
    devices_per_agent: u32,
    /// Worker identities: tasks submitted at once per block.
    #[arg(
        long,
        default_value_t = DEFAULT_IDENTITIES,
        value_parser = clap::value_parser!(u32).range(1..=100_000),
        help_heading = "Farm bench"
    )]
    identities: u32,
    /// n of every block task.
    #[arg(
        long,
        default_value_t = DEFAULT_MATRIX_SIZE,
        value_parser = clap::value_parser!(u32).range(1..=i64::from(MAX_MATRIX_SIZE)),
        help_heading = "Farm bench"
    )]
    matrix_size: u32,
    /// Speed of each simulated device, in tera-ops per second (2·rows·n² operations per shard).
    #[arg(
        long,
        value_name = "TOPS",
        default_value_t = DEFAULT_DEVICE_TOPS,
        value_parser = parse_tops,
        help_heading = "Farm bench"
    )]
    device_tops: f64,
    /// Blocks to run.
    #[arg(
        long,
        default_value_t = DEFAULT_BLOCKS,
        value_parser = clap::value_parser!(u32).range(1..=100_000),
        help_heading = "Farm bench"
    )]
    blocks: u32,
    /// The `cpc-agent` binary [default: the one next to this executable].
    #[arg(long, value_name = "PATH", help_heading = "Farm bench")]
    agent_bin: Option<PathBuf>,
    /// Seconds to wait for every simulated device to connect.
    #[arg(long, default_value_t = DEFAULT_WAIT_SECS, help_heading = "Farm bench")]
    wait: u64,
    /// Worker threads for the farm's QUIC I/O; 0 runs it on the scheduler's thread [default: half the
    /// cores beyond two, at most 8].
    #[arg(
        long,
        value_parser = clap::value_parser!(u32).range(0..=i64::from(farm::MAX_IO_THREADS)),
        help_heading = "Farm bench"
    )]
    io_threads: Option<u32>,
}

fn parse_tops(text: &str) -> Result<f64, String> {
    match text.trim().parse::<f64>() {
        Ok(x) if x.is_finite() && x > 0.0 => Ok(x),
        _ => Err(format!("`{text}` is not a positive number of tera-ops per second (e.g. 660)")),
    }
}

/// How the ideal time of a block is counted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum IdealMode {
    /// Every task ran whole on one device: `ceil(identities / devices) × task time`.
    Whole,
    /// Tasks were split over devices: `identities × task time / devices`.
    Sharded,
}

impl IdealMode {
    /// The mode the reports show: whole when every task's rows came from one device.
    fn of(reports: &[JobReport]) -> Self {
        let whole = reports.iter().all(|r| {
            r.devices.len() <= 1 && r.devices.iter().all(|d| d.rows == u64::from(r.matrix_size))
        });
        if whole { Self::Whole } else { Self::Sharded }
    }

    /// The ideal time until all `identities` results are ready on `devices` devices.
    fn ideal_seconds(self, identities: u32, devices: u32, task_seconds: f64) -> f64 {
        let (identities, devices) = (f64::from(identities), f64::from(devices.max(1)));
        match self {
            Self::Whole => (identities / devices).ceil() * task_seconds,
            Self::Sharded => identities * task_seconds / devices,
        }
    }

    fn formula(self) -> &'static str {
        match self {
            Self::Whole => "tasks ran whole: ceil(identities / devices) x task time",
            Self::Sharded => "tasks were sharded: identities x task time / devices",
        }
    }
}

/// One block's measurements.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct BlockReport {
    /// 1-based.
    block: u32,
    /// The made-up block hash the tasks were derived from.
    block_hash: String,
    /// Time from submitting the block's tasks until every result was ready.
    all_ready_seconds: f64,
    /// When each identity's result was ready, in identity order.
    ready_seconds: Vec<f64>,
    /// Results (one per identity).
    results: usize,
    /// How the ideal is counted.
    ideal_mode: IdealMode,
    /// The ideal time until every result is ready.
    ideal_seconds: f64,
    /// Shards sent to devices (duplicates and retries included).
    shards_dispatched: u64,
    /// `shards_dispatched / all_ready_seconds`.
    shards_per_second: f64,
    /// Median shard round trip (dispatch to verified) over the block's shards.
    round_trip_p50_seconds: f64,
    /// 99th percentile shard round trip.
    round_trip_p99_seconds: f64,
    /// CPU time (user + system) this process spent during the block (none where /proc is absent).
    coordinator_cpu_seconds: Option<f64>,
    /// This process's resident memory at the end of the block.
    coordinator_rss_bytes: Option<u64>,
}

/// The whole run.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct FarmBenchReport {
    /// The farm's I/O worker threads (0: on the scheduler's thread).
    io_threads: usize,
    agents: u32,
    devices_per_agent: u32,
    devices: u32,
    identities: u32,
    matrix_size: u32,
    device_tops: f64,
    blocks: u32,
    /// Time one task takes whole on one device: `2·n³ / (T·10¹²)`.
    task_seconds: f64,
    per_block: Vec<BlockReport>,
    /// Median over blocks of the time until every result was ready.
    all_ready_p50_seconds: f64,
    /// 99th percentile over blocks.
    all_ready_p99_seconds: f64,
    /// Shards dispatched over all blocks, divided by the sum of the blocks' times until every result
    /// was ready.
    shards_per_second: f64,
    /// Median shard round trip over every shard of every block.
    round_trip_p50_seconds: f64,
    /// 99th percentile shard round trip over every shard of every block.
    round_trip_p99_seconds: f64,
    /// CPU time this process spent over all blocks.
    coordinator_cpu_seconds: Option<f64>,
    /// Highest resident memory of this process (VmHWM).
    coordinator_peak_rss_bytes: Option<u64>,
}

/// The `p`th percentile (nearest rank) of sorted `values`; 0 when empty.
fn percentile(sorted: &[f64], p: usize) -> f64 {
    let rank = (sorted.len() * p).div_ceil(100).saturating_sub(1);
    sorted.get(rank).copied().unwrap_or(0.0)
}

fn sorted(mut values: Vec<f64>) -> Vec<f64> {
    values.sort_by(f64::total_cmp);
    values
}

/// CPU time and memory of this process, from `/proc/self` (Linux).
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct ProcessUsage {
    /// User plus system CPU time.
    cpu_seconds: f64,
    /// Resident memory now (VmRSS).
    rss_bytes: u64,
    /// Highest resident memory so far (VmHWM).
    peak_rss_bytes: u64,
}

/// Clock ticks per second of `/proc/<pid>/stat` (`USER_HZ`: 100 on every Linux ABI).
const USER_HZ: f64 = 100.0;

impl ProcessUsage {
    /// Now, or `None` where `/proc/self` cannot be read.
    fn read() -> Option<Self> {
        let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
        let status = std::fs::read_to_string("/proc/self/status").ok()?;
        Some(Self {
            cpu_seconds: parse_stat_cpu_seconds(&stat)?,
            rss_bytes: parse_status_kib(&status, "VmRSS")? * 1024,
            peak_rss_bytes: parse_status_kib(&status, "VmHWM")? * 1024,
        })
    }
}

/// `utime + stime` of a `/proc/<pid>/stat` line, in seconds (fields 14 and 15; the command name, field 2,
/// may hold spaces and parentheses, so fields are counted after its last `)`).
fn parse_stat_cpu_seconds(stat: &str) -> Option<f64> {
    let after_name = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = after_name.split_whitespace().collect();
    // After the name: field 3 (state) is at index 0, so field k is at index k - 3.
    let utime: u64 = fields.get(14 - 3)?.parse().ok()?;
    let stime: u64 = fields.get(15 - 3)?.parse().ok()?;
    Some((utime + stime) as f64 / USER_HZ)
}

/// The `kB` value of `key` in `/proc/<pid>/status`.
fn parse_status_kib(status: &str, key: &str) -> Option<u64> {
    status.lines().find_map(|line| {
        let value = line.strip_prefix(key)?.strip_prefix(':')?;
        value.trim().strip_suffix("kB")?.trim().parse().ok()
    })
}

/// A made-up worker address: that of a made-up compressed public key, one per identity.
fn made_up_address(identity: u32) -> String {
    let mut key = vec![0x02];
    key.extend_from_slice(&sha256(format!("cpc-farm/bench-farm/identity/{identity}")));
    Address::from_public_key(&key).as_str().to_owned()
}

/// The made-up hash of block `block`.
fn made_up_block_hash(block: u32) -> String {
    sha256_hex(format!("cpc-farm/bench-farm/block/{block}"))
}

/// The agent processes; every one still running is killed when this is dropped.
#[derive(Debug, Default)]
struct AgentProcesses(Vec<Child>);

impl AgentProcesses {
    /// Starts agent `i` with `devices` simulated devices of `tops`, joining `farm`.
    fn spawn(
        &mut self,
        bin: &Path,
        farm: &FarmHandle,
        i: u32,
        devices: u32,
        tops: f64,
    ) -> anyhow::Result<()> {
        let mut cmd = Command::new(bin);
        cmd.args(["--coordinator", &farm.local_addr().to_string()])
            .args(["--coordinator-fingerprint", farm.fingerprint()])
            .args(["--name", &format!("bench-farm-{}-{i}", std::process::id())])
            .args(["--backend", "simulated", "--allow-wrong-results"])
            .args(["--devices", &format!("0-{}", devices.saturating_sub(1))])
            .args(["--device-tops", &tops.to_string()])
            // The token travels in the environment, not on a command line others can read.
            .env("CPC_JOIN_TOKEN", farm.token())
            .env_remove("CPC_JOIN_TOKEN_FILE")
            .env_remove("CPC_AGENT_METRICS")
            .stdin(Stdio::null())
            .stdout(Stdio::null());
        if std::env::var_os("RUST_LOG").is_none() {
            // Warnings only: each agent says that its devices are simulated and its results wrong.
            cmd.env("RUST_LOG", "warn");
        }
        let child = cmd.spawn().with_context(|| format!("cannot start {}", bin.display()))?;
        self.0.push(child);
        Ok(())
    }

    /// Fails when an agent has exited (a bad flag, a crash).
    fn check_alive(&mut self) -> anyhow::Result<()> {
        for (i, child) in self.0.iter_mut().enumerate() {
            if let Some(status) = child.try_wait().context("checking an agent process")? {
                anyhow::bail!(
                    "agent {i} exited ({status}) before the bench ended: see its log above"
                );
            }
        }
        Ok(())
    }

    /// Kills and reaps every agent.
    fn kill_all(&mut self) {
        for mut child in self.0.drain(..) {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for AgentProcesses {
    fn drop(&mut self) {
        self.kill_all();
    }
}

/// `--agent-bin`, else `cpc-agent` next to this executable.
fn locate_agent(given: Option<&Path>) -> anyhow::Result<PathBuf> {
    if let Some(path) = given {
        anyhow::ensure!(path.is_file(), "--agent-bin {}: no such file", path.display());
        return Ok(path.to_owned());
    }
    let exe = std::env::current_exe().context("cannot find this executable's path")?;
    let next_to = exe.with_file_name(format!("cpc-agent{}", std::env::consts::EXE_SUFFIX));
    anyhow::ensure!(
        next_to.is_file(),
        "cpc-agent not found next to {}: build it (`cargo build --release -p cpc-agent`) or pass \
         --agent-bin PATH",
        exe.display()
    );
    Ok(next_to)
}

/// Waits until `want` usable devices are connected, failing early if an agent exits.
async fn wait_for_devices(
    farm: &FarmHandle,
    agents: &mut AgentProcesses,
    want: usize,
    wait: Duration,
) -> anyhow::Result<()> {
    let deadline = Instant::now() + wait;
    loop {
        let usable = farm.devices().await?.iter().filter(|d| !d.draining && !d.quarantined).count();
        if usable >= want {
            return Ok(());
        }
        agents.check_alive()?;
        anyhow::ensure!(
            Instant::now() < deadline,
            "only {usable} of {want} simulated devices connected within {} s (raise --wait)",
            wait.as_secs()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Runs `bench farm` and prints as it goes, or one JSON document at the end with `--json`.
pub(crate) async fn run(g: &GlobalArgs, args: FarmBenchArgs) -> anyhow::Result<ExitCode> {
    let shutdown = super::shutdown_token();
    if g.node.is_some() {
        eprintln!("note: bench farm never talks to a chain: --node (or CPC_NODE) is ignored");
    }
    let agent_bin = locate_agent(args.agent_bin.as_deref())?;
    let loopback = "127.0.0.1:0".parse().context("loopback address")?;
    let mut config = FarmConfig::new(loopback, Identity::generate()?);
    config.shutdown = shutdown.clone();
    // Simulated devices answer wrong leaves: a spot check would quarantine every one of them.
    config.spot_check = SpotCheckConfig { rows_per_shard: 0, ..SpotCheckConfig::default() };
    if let Some(threads) = args.io_threads {
        config.io_threads = threads as usize;
    }
    let io_threads = config.io_threads;
    let farm = farm::start(config)?;
    let mut agents = AgentProcesses::default();
    // The farm stops on the same token, so its jobs may fail with "shut down" in the same instant:
    // the token is polled first, and an interrupted bench says so whichever branch finished.
    let result = tokio::select! {
        biased;
        () = shutdown.cancelled() => Err(anyhow::anyhow!("interrupted: the agents are stopped")),
        r = bench(&farm, &args, io_threads, &agent_bin, &mut agents, g.json) => r,
    };
    let result = match result {
        Err(e) if shutdown.is_cancelled() => Err(e.context("interrupted: the agents are stopped")),
        other => other,
    };
    agents.kill_all();
    tokio::task::spawn_blocking({
        let farm = farm.clone();
        move || farm.shutdown()
    })
    .await?;
    let report = result?;
    if g.json {
        print_json(&report)?;
    } else {
        print_summary(&report);
    }
    Ok(ExitCode::SUCCESS)
}

async fn bench(
    farm: &FarmHandle,
    args: &FarmBenchArgs,
    io_threads: usize,
    agent_bin: &Path,
    agents: &mut AgentProcesses,
    json: bool,
) -> anyhow::Result<FarmBenchReport> {
    let devices = args.agents.saturating_mul(args.devices_per_agent);
    for i in 0..args.agents {
        agents.spawn(agent_bin, farm, i, args.devices_per_agent, args.device_tops)?;
    }
    wait_for_devices(farm, agents, devices as usize, Duration::from_secs(args.wait)).await?;
    let n = args.matrix_size;
    let task_seconds = 2.0 * f64::from(n).powi(3) / (args.device_tops * 1e12);
    if !json {
        println!(
            "farm bench: {} agents x {} simulated devices of {} TOPS, {} identities at n = {n}, {} blocks; \
             one task takes {} on one device; the farm's I/O {}",
            args.agents,
            args.devices_per_agent,
            args.device_tops,
            args.identities,
            args.blocks,
            show_seconds(task_seconds),
            match io_threads {
                0 => "on the scheduler's thread".to_owned(),
                n => format!("on {n} worker threads"),
            }
        );
    }
    let addresses: Vec<String> = (0..args.identities).map(made_up_address).collect();
    let start = ProcessUsage::read();
    let mut per_block = Vec::with_capacity(args.blocks as usize);
    let mut every_trip = Vec::new();
    for block in 1..=args.blocks {
        let block_hash = made_up_block_hash(block);
        let tasks = addresses
            .iter()
            .map(|address| BlockTask::derive(&block_hash, address, n, u64::from(block)))
            .collect::<Result<Vec<_>, _>>()?;
        let before = ProcessUsage::read();
        let submitted = Instant::now();
        // Handed over at once, as the miner's planner hands over a block's tasks.
        let runs =
            farm.run_all(tasks.into_iter().map(|task| JobSpec::new(task.challenge)).collect());
        let outcomes = futures_util::future::join_all(runs.into_iter().map(|run| async move {
            let report = run.await;
            (report, submitted.elapsed())
        }))
        .await;
        let all_ready = submitted.elapsed();
        let after = ProcessUsage::read();
        let mut reports = Vec::with_capacity(outcomes.len());
        let mut ready_seconds = Vec::with_capacity(outcomes.len());
        for (identity, (report, ready)) in outcomes.into_iter().enumerate() {
            let report = report.with_context(|| format!("block {block}, identity {identity}"))?;
            every_trip.extend(report.shard_round_trips.iter().map(Duration::as_secs_f64));
            reports.push(report);
            ready_seconds.push(ready.as_secs_f64());
        }
        let report = block_report(BlockMeasure {
            block,
            block_hash,
            all_ready,
            ready_seconds,
            reports: &reports,
            identities: args.identities,
            devices,
            task_seconds,
            before,
            after,
        });
        if !json {
            print_block(&report, args.blocks);
        }
        agents.check_alive()?;
        per_block.push(report);
    }
    let end = ProcessUsage::read();
    let all_ready = sorted(per_block.iter().map(|b| b.all_ready_seconds).collect());
    let every_trip = sorted(every_trip);
    let shards: u64 = per_block.iter().map(|b| b.shards_dispatched).sum();
    let busy: f64 = per_block.iter().map(|b| b.all_ready_seconds).sum();
    Ok(FarmBenchReport {
        io_threads,
        agents: args.agents,
        devices_per_agent: args.devices_per_agent,
        devices,
        identities: args.identities,
        matrix_size: n,
        device_tops: args.device_tops,
        blocks: args.blocks,
        task_seconds,
        per_block,
        all_ready_p50_seconds: percentile(&all_ready, 50),
        all_ready_p99_seconds: percentile(&all_ready, 99),
        shards_per_second: shards as f64 / busy.max(1e-9),
        round_trip_p50_seconds: percentile(&every_trip, 50),
        round_trip_p99_seconds: percentile(&every_trip, 99),
        coordinator_cpu_seconds: start.zip(end).map(|(s, e)| e.cpu_seconds - s.cpu_seconds),
        coordinator_peak_rss_bytes: end.map(|e| e.peak_rss_bytes),
    })
}

/// What one block measured, before it is summarised.
struct BlockMeasure<'a> {
    block: u32,
    block_hash: String,
    all_ready: Duration,
    ready_seconds: Vec<f64>,
    reports: &'a [JobReport],
    identities: u32,
    devices: u32,
    task_seconds: f64,
    before: Option<ProcessUsage>,
    after: Option<ProcessUsage>,
}

fn block_report(m: BlockMeasure<'_>) -> BlockReport {
    let all_ready_seconds = m.all_ready.as_secs_f64();
    let shards_dispatched: u64 = m.reports.iter().map(|r| r.shards_dispatched).sum();
    let trips = sorted(
        m.reports
            .iter()
            .flat_map(|r| r.shard_round_trips.iter().map(Duration::as_secs_f64))
            .collect(),
    );
    let ideal_mode = IdealMode::of(m.reports);
    BlockReport {
        block: m.block,
        block_hash: m.block_hash,
        all_ready_seconds,
        results: m.reports.len(),
        ready_seconds: m.ready_seconds,
        ideal_mode,
        ideal_seconds: ideal_mode.ideal_seconds(m.identities, m.devices, m.task_seconds),
        shards_dispatched,
        shards_per_second: shards_dispatched as f64 / all_ready_seconds.max(1e-9),
        round_trip_p50_seconds: percentile(&trips, 50),
        round_trip_p99_seconds: percentile(&trips, 99),
        coordinator_cpu_seconds: m.before.zip(m.after).map(|(b, a)| a.cpu_seconds - b.cpu_seconds),
        coordinator_rss_bytes: m.after.map(|a| a.rss_bytes),
    }
}

/// Seconds for people: `0.79 ns`, `3.25 us`, `12.3 ms`, `4.56 s`.
fn show_seconds(secs: f64) -> String {
    if secs < 1e-6 {
        format!("{:.2} ns", secs * 1e9)
    } else if secs < 1e-3 {
        format!("{:.2} us", secs * 1e6)
    } else if secs < 1.0 {
        format!("{:.1} ms", secs * 1e3)
    } else {
        format!("{secs:.2} s")
    }
}

fn show_mib(bytes: Option<u64>) -> String {
    bytes.map_or_else(|| "n/a".into(), |b| format!("{:.1} MiB", b as f64 / f64::from(1u32 << 20)))
}

fn show_cpu(secs: Option<f64>) -> String {
    secs.map_or_else(|| "n/a".into(), |s| format!("{s:.2} s"))
}

fn print_block(b: &BlockReport, blocks: u32) {
    println!(
        "block {}/{blocks}: {} results ready in {} (ideal {}, {}); {} shards, {:.0} shards/s; \
         round trip p50 {} p99 {}; coordinator CPU {}, RSS {}",
        b.block,
        b.results,
        show_seconds(b.all_ready_seconds),
        show_seconds(b.ideal_seconds),
        b.ideal_mode.formula(),
        b.shards_dispatched,
        b.shards_per_second,
        show_seconds(b.round_trip_p50_seconds),
        show_seconds(b.round_trip_p99_seconds),
        show_cpu(b.coordinator_cpu_seconds),
        show_mib(b.coordinator_rss_bytes),
    );
}

fn print_summary(r: &FarmBenchReport) {
    println!(
        "all results ready: p50 {}, p99 {} over {} blocks; {:.0} shards/s; round trip p50 {} p99 {} over \
         every shard; coordinator CPU {} in all, peak RSS {}",
        show_seconds(r.all_ready_p50_seconds),
        show_seconds(r.all_ready_p99_seconds),
        r.blocks,
        r.shards_per_second,
        show_seconds(r.round_trip_p50_seconds),
        show_seconds(r.round_trip_p99_seconds),
        show_cpu(r.coordinator_cpu_seconds),
        show_mib(r.coordinator_peak_rss_bytes),
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ideal_times() {
        // 200 tasks of 1 ms on 64 devices: 4 rounds whole, 3.125 ms sharded.
        assert_eq!(IdealMode::Whole.ideal_seconds(200, 64, 1e-3), 4e-3);
        assert!((IdealMode::Sharded.ideal_seconds(200, 64, 1e-3) - 3.125e-3).abs() < 1e-12);
        assert_eq!(IdealMode::Whole.ideal_seconds(8, 8, 2.0), 2.0);
    }

    #[test]
    fn percentiles_are_nearest_rank() {
        let v = sorted((1..=100).rev().map(f64::from).collect());
        assert_eq!((percentile(&v, 50), percentile(&v, 99)), (50.0, 99.0));
        assert_eq!(percentile(&[7.0], 99), 7.0);
        assert_eq!(percentile(&[], 50), 0.0);
    }

    #[test]
    fn proc_files_parse() {
        let stat = "4242 (cpc (co) ord) S 1 4242 4242 0 -1 4194560 5000 0 0 0 250 75 0 0 20 0 9 0 100 \
                    1000000 2000 18446744073709551615";
        assert_eq!(parse_stat_cpu_seconds(stat), Some(3.25));
        let status = "Name:\tcpc-coordinator\nVmHWM:\t   20480 kB\nVmRSS:\t   10240 kB\n";
        assert_eq!(parse_status_kib(status, "VmRSS"), Some(10240));
        assert_eq!(parse_status_kib(status, "VmHWM"), Some(20480));
        assert_eq!(parse_status_kib(status, "VmSwap"), None);
        if cfg!(target_os = "linux") {
            let now = ProcessUsage::read().expect("/proc/self");
            assert!(now.rss_bytes > 0 && now.peak_rss_bytes >= now.rss_bytes, "{now:?}");
        }
    }

    #[test]
    fn made_up_identities_are_distinct_addresses() {
        let a = made_up_address(0);
        assert!(a.starts_with("cpc1"), "{a}");
        assert_ne!(a, made_up_address(1));
        assert_ne!(made_up_block_hash(1), made_up_block_hash(2));
        assert_eq!(made_up_block_hash(1).len(), 64);
    }
}
