//! The farm: a pool of devices on many hosts, reached over QUIC, that runs many synthetic-v1 jobs at once
//! on all of them, each answering the same `result_hash` as a single machine would.
//!
//! [`start`] binds the QUIC endpoint and starts the actors on an arbiter of their own on the process's one
//! actix system ([`cpc_common::actors`]), so that any caller (the CLI, the mining loop, a test on any
//! tokio runtime) drives the farm through the cheap, clonable [`FarmHandle`]:
//!
//! - [`server`]: the endpoint, the handshake (protocol version, constant-time join-token check) and one
//!   control task per agent connection;
//! - [`registry`]: the agent registry actor (devices, capabilities, heartbeats, quarantine), which tells
//!   the scheduler at once when a device comes or goes;
//! - [`schedule`]: the pure scheduling state (the one queue of jobs, placement, reassignment, stragglers,
//!   check verdicts, deadlines), tested without a network;
//! - [`plan`]: the pure rule that cuts a large job into row ranges;
//! - [`scheduler`]: the actor that owns the schedule and carries out its decisions; `shard` is the I/O
//!   task of one dispatch (QUIC request, answer, spot check);
//! - [`aggregator`]: places leaves by row and builds the Merkle root;
//! - [`spot_check`]: fetches random rows of every shard and recomputes elements on the CPU;
//! - [`identity`]: certificate, key and join token in the data directory;
//! - `control`, [`self_test`], [`probation`]: what an operator does to a running farm (status, drain,
//!   quarantine, readmission after a known-answer self-test, automatic probation);
//! - [`metrics`]: Prometheus metrics and the `/metrics`, `/healthz`, `/readyz` endpoint.

pub mod aggregator;
mod control;
pub mod identity;
pub mod metrics;
mod pipe;
pub mod plan;
pub mod probation;
pub mod registry;
pub mod schedule;
pub mod scheduler;
pub mod self_test;
pub mod server;
mod shard;
pub mod spot_check;

use actix::{Actor as _, Addr};
use cpc_common::{
    actors::{Subsystem, SubsystemRuntime},
    hashing::Digest32,
    synthetic::Challenge,
};
use serde::Serialize;
use std::{
    fmt,
    net::SocketAddr,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};
use tokio::sync::oneshot;
use tokio_util::sync::CancellationToken;

pub use control::{ControlError, FarmStatus, Target};
pub use identity::Identity;
pub use plan::{SplitPolicy, StragglerPolicy};
pub use probation::ProbationPolicy;
pub use schedule::{JobSpec, Priority, SchedulingPolicy};
pub use spot_check::SpotCheckConfig;

/// Default QUIC listen address of `cpc-coordinator serve`.
pub const DEFAULT_LISTEN: &str = "0.0.0.0:7700";
/// Default interval between agent heartbeats (a few dozen bytes each: cheap at any farm size, and what lets
/// a dead agent be noticed within [`DEFAULT_HEARTBEAT_TIMEOUT`], and a restarted coordinator be noticed by
/// its agents within one interval through the stateless reset its next packet draws).
pub const DEFAULT_HEARTBEAT_INTERVAL: Duration = Duration::from_millis(250);
/// Default time without a heartbeat after which an agent is dropped and its shards go elsewhere: six
/// missed heartbeats, checked every quarter of it, so a dead agent is gone within 2 s.
pub const DEFAULT_HEARTBEAT_TIMEOUT: Duration = Duration::from_millis(1500);
/// Default QUIC idle timeout (QUIC keep-alives every heartbeat interval keep a quiet link open).
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(3);
/// Default time one shard may take before its rows go to another device.
pub const DEFAULT_SHARD_TIMEOUT: Duration = Duration::from_secs(600);
/// Default time a job waits for a usable device before failing.
pub const DEFAULT_NO_DEVICE_WAIT: Duration = Duration::from_secs(60);
/// Default time an unauthenticated connection has to present its `Hello`.
pub const DEFAULT_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(3);

/// Default number of handshakes in progress at once; past half of it peers must validate their address
/// (QUIC Retry), past all of it they are refused.
pub const DEFAULT_MAX_PENDING_HANDSHAKES: usize = 64;

/// Identifies a device in the farm: the agent connection and the agent's own device index.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
pub struct DeviceId {
    /// The coordinator's id of the agent connection.
    pub agent: u64,
    /// The agent's index of the device.
    pub index: u32,
}

impl fmt::Display for DeviceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "agent{}/gpu{}", self.agent, self.index)
    }
}

/// Everything a farm needs to start.
#[derive(Debug, Clone)]
pub struct FarmConfig {
    /// QUIC listen address (port 0: any free port).
    pub listen: SocketAddr,
    /// Certificate, key and join token.
    pub identity: Identity,
    /// Where to serve `/metrics`, `/healthz` and `/readyz` (none: no HTTP endpoint).
    pub metrics_listen: Option<SocketAddr>,
    /// How often agents send heartbeats.
    pub heartbeat_interval: Duration,
    /// Time without a heartbeat after which an agent is dropped and its shards reassigned.
    pub heartbeat_timeout: Duration,
    /// QUIC idle timeout (a silent peer is gone after this).
    pub idle_timeout: Duration,
    /// Time an unauthenticated connection has to complete TLS and present its `Hello`.
    pub handshake_timeout: Duration,
    /// Time a shard may take before its rows go to another device.
    pub shard_timeout: Duration,
    /// Time a job waits for a usable device before failing.
    pub no_device_wait: Duration,
    /// How jobs are split over devices.
    pub split: SplitPolicy,
    /// When a slow shard's rows are re-issued to an idle device.
    pub straggler: StragglerPolicy,
    /// How every shard is checked.
    pub spot_check: SpotCheckConfig,
    /// Which waiting job goes first.
    pub scheduling: SchedulingPolicy,
    /// Handshakes in progress at once (more are refused).
    pub max_pending_handshakes: usize,
    /// Worker threads for the farm's QUIC and shard I/O tasks; 0 runs them on the scheduler's own thread.
    /// [`default_io_threads`] by default.
    pub io_threads: usize,
    /// What `/readyz` requires besides a started farm (nothing by default; `run` adds an L1, funded
    /// identities and, in farm mode, a usable device).
    pub readiness: Arc<crate::readiness::Readiness>,
    /// The farm stops when this is cancelled: a child of the process's one shutdown token (`run` passes
    /// the node's), so a signal stops it with everything else. [`FarmHandle::shutdown`] cancels it too,
    /// which stops this farm alone. A fresh token by default.
    pub shutdown: CancellationToken,
}

impl FarmConfig {
    /// Production defaults around an identity and a listen address.
    pub fn new(listen: SocketAddr, identity: Identity) -> Self {
        Self {
            listen,
            identity,
            metrics_listen: None,
            heartbeat_interval: DEFAULT_HEARTBEAT_INTERVAL,
            heartbeat_timeout: DEFAULT_HEARTBEAT_TIMEOUT,
            idle_timeout: DEFAULT_IDLE_TIMEOUT,
            handshake_timeout: DEFAULT_HANDSHAKE_TIMEOUT,
            shard_timeout: DEFAULT_SHARD_TIMEOUT,
            no_device_wait: DEFAULT_NO_DEVICE_WAIT,
            split: SplitPolicy::default(),
            straggler: StragglerPolicy::default(),
            spot_check: SpotCheckConfig::default(),
            scheduling: SchedulingPolicy::default(),
            max_pending_handshakes: DEFAULT_MAX_PENDING_HANDSHAKES,
            io_threads: default_io_threads(),
            readiness: Arc::default(),
            shutdown: CancellationToken::new(),
        }
    }
}

/// Why the farm could not start.
#[derive(Debug, thiserror::Error)]
pub enum FarmError {
    /// Certificate, key or token could not be made, read or written.
    #[error("coordinator identity: {0}")]
    Identity(String),
    /// TLS configuration was refused (bad key or certificate).
    #[error(
        "TLS configuration: {0} (delete coordinator.crt and coordinator.key in --data-dir to make new ones)"
    )]
    Tls(String),
    /// The QUIC or metrics socket could not be bound.
    #[error(
        "cannot listen on {addr}: {source} (is another coordinator running? choose another port with --listen or --metrics)"
    )]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// The OS error.
        source: std::io::Error,
    },
    /// The farm's arbiter could not be started or stopped while starting.
    #[error("farm runtime: {0}")]
    Runtime(String),
}

/// Why a job did not produce a result.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum JobError {
    /// No usable device (none connected, all quarantined or draining) for the configured wait.
    #[error(
        "no usable device for {0:?}: start agents with the command `cpc-coordinator serve` prints, or check quarantined devices"
    )]
    NoDevices(Duration),
    /// The farm has shut down.
    #[error("the farm has shut down")]
    Shutdown,
    /// The job's deadline passed before its result was ready (its shards were aborted).
    #[error("deadline exceeded")]
    DeadlineExceeded,
    /// A bug: leaves missing at the end of a job.
    #[error("internal error: {0}")]
    Internal(String),
}

/// One device's part in a job.
#[derive(Debug, Clone, Serialize)]
pub struct DeviceReport {
    /// `agentN/gpuI`.
    pub device: String,
    /// The agent's name.
    pub agent: String,
    /// The device's name.
    pub name: String,
    /// Rows of C it computed that were accepted.
    pub rows: u64,
    /// Shards it completed and passed.
    pub shards: u64,
    /// Sum of its accepted shards' round trips.
    pub busy_seconds: f64,
    /// `2·rows·n²` over its busy time.
    pub achieved_ops_per_sec: f64,
}

/// What a job produced.
#[derive(Debug, Clone, Serialize)]
pub struct JobReport {
    /// The farm's id of the job.
    pub job_id: u64,
    /// The challenge's seed.
    pub seed: String,
    /// n.
    pub matrix_size: u32,
    /// Iterations.
    pub iterations: u32,
    /// The Merkle root over row leaves (or over per-iteration roots); lower-case hex when printed.
    #[serde(serialize_with = "serialize_hex")]
    pub result_hash: Digest32,
    /// Wall time from start to result.
    pub makespan_seconds: f64,
    /// `2·n³·iterations` over the makespan.
    pub achieved_ops_per_sec: f64,
    /// Shards sent to devices (duplicates and retries included).
    pub shards_dispatched: u64,
    /// Shards whose rows were sent again (lost agent, timeout, failure, quarantine, straggler).
    pub shards_reassigned: u64,
    /// Shards that failed (transport, timeout, device error).
    pub shards_failed: u64,
    /// Rows spot-checked and found right.
    pub spot_checks_passed: u64,
    /// Rows spot-checked and found wrong.
    pub spot_checks_failed: u64,
    /// Shards whose device ran the Freivalds check on its product and passed (accepted or not).
    pub freivalds_checks_passed: u64,
    /// Shards whose product failed its Freivalds check on the device: device faults, each device
    /// quarantined and the shard recomputed elsewhere.
    pub freivalds_checks_failed: u64,
    /// Shards answered without a Freivalds check (a backend that does not run one).
    pub shards_unchecked: u64,
    /// Time in the Freivalds checks as a share of the checked shards' device time (0-1).
    pub freivalds_check_share: f64,
    /// Devices quarantined during this job.
    pub quarantined: Vec<String>,
    /// Median shard round trip (dispatch to verified).
    pub shard_round_trip_p50_seconds: f64,
    /// 99th percentile shard round trip.
    pub shard_round_trip_p99_seconds: f64,
    /// Per-device rows and throughput.
    pub devices: Vec<DeviceReport>,
    /// Every shard's round trip, in completion order (not printed).
    #[serde(skip)]
    pub shard_round_trips: Vec<Duration>,
}

fn serialize_hex<S: serde::Serializer>(digest: &Digest32, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&hex::encode(digest))
}

/// A device as the registry sees it.
#[derive(Debug, Clone, Serialize, serde::Deserialize)]
pub struct DeviceStatus {
    /// The coordinator's id of the agent connection.
    pub agent_id: u64,
    /// `agentN/gpuI`.
    pub device: String,
    /// The agent's name.
    pub agent: String,
    /// The device's name.
    pub name: String,
    /// Its kind (`cpu`, `cuda`, ...).
    pub kind: String,
    /// Memory for shards.
    pub memory_bytes: u64,
    /// Throughput the agent measured at start.
    pub measured_ops_per_sec: f64,
    /// The agent announced it is draining.
    pub draining: bool,
    /// Failed a spot check, or its agent reported it broken: gets no more shards.
    pub quarantined: bool,
    /// Why it is quarantined.
    pub quarantine_reason: Option<String>,
    /// The agent's address as the coordinator sees it (its host).
    pub host: String,
    /// The agent's index of the device.
    pub index: u32,
    /// An operator drained it (`farm drain`): it finishes its shards and gets no new one until resumed.
    pub drained: bool,
    /// When it was quarantined, in milliseconds since the Unix epoch.
    pub quarantined_at_unix_ms: Option<u64>,
    /// Shards it holds now (filled in by [`FarmHandle::status`]; 0 from [`FarmHandle::devices`]).
    pub shards_in_flight: u32,
    /// The agent's last report of the device: UUID, temperature, power, restarts, watchdog firings, Xid
    /// errors (none from an agent older than protocol version 4, or before its first report).
    pub report: Option<cpc_common::wire::DeviceReport>,
    /// The farm protocol version its agent speaks (0 from a coordinator that did not say).
    #[serde(default)]
    pub protocol_version: u16,
}

struct Inner {
    local_addr: SocketAddr,
    metrics_addr: Option<SocketAddr>,
    fingerprint: String,
    token: String,
    scheduler: Addr<scheduler::Scheduler>,
    registry: Addr<registry::Registry>,
    next_job: AtomicU64,
    stop: CancellationToken,
    subsystem: Mutex<Option<Subsystem>>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// A running farm. Clones share it; the farm stops when [`FarmHandle::shutdown`] is called or the last
/// clone is dropped.
#[derive(Clone)]
pub struct FarmHandle {
    inner: Arc<Inner>,
}

impl fmt::Debug for FarmHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FarmHandle")
            .field("local_addr", &self.inner.local_addr)
            .field("fingerprint", &self.inner.fingerprint)
            .finish_non_exhaustive()
    }
}

impl FarmHandle {
    /// The bound QUIC address.
    pub fn local_addr(&self) -> SocketAddr {
        self.inner.local_addr
    }

    /// The bound metrics address, if any.
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.inner.metrics_addr
    }

    /// SHA-256 fingerprint of the certificate, hex.
    pub fn fingerprint(&self) -> &str {
        &self.inner.fingerprint
    }

    /// The join token.
    pub fn token(&self) -> &str {
        &self.inner.token
    }

    /// The command line that joins an agent to this farm, dialling `public_addr`, reading the join
    /// token from `token_file` on the agent's host (the token itself is never printed or logged).
    pub fn agent_command(&self, public_addr: &str, token_file: &str) -> String {
        format!(
            "cpc-agent --coordinator {public_addr} --coordinator-fingerprint {} --token-file {token_file} --devices all",
            self.inner.fingerprint
        )
    }

    /// Runs one challenge on the farm's devices, as a block-class job with no deadline.
    pub async fn run_job(&self, challenge: Challenge) -> Result<JobReport, JobError> {
        self.run(JobSpec::new(challenge)).await
    }

    /// Runs one job. Calls run concurrently: the farm keeps every usable device busy with whatever is
    /// waiting, in the order [`SchedulingPolicy`] sets. Dropping the future cancels the job and aborts its
    /// shards in flight.
    pub async fn run(&self, spec: JobSpec) -> Result<JobReport, JobError> {
        let mut runs = self.run_all(vec![spec]);
        match runs.pop() {
            Some(run) => run.await,
            None => Err(JobError::Internal("a submitted job got no answer".into())),
        }
    }

    /// Runs jobs handed over together (a block's tasks, one per identity) in one message to the
    /// scheduler, which places them all before any shard goes out: each agent then gets its share in one
    /// frame, and the scheduler's thread is woken once instead of once a job. Answers one future per job,
    /// in the order given, each ready when its job is; dropping one (polled or not) cancels its job.
    pub fn run_all(
        &self,
        specs: Vec<JobSpec>,
    ) -> Vec<impl Future<Output = Result<JobReport, JobError>> + Send + use<>> {
        let mut jobs = Vec::with_capacity(specs.len());
        let mut runs = Vec::with_capacity(specs.len());
        for spec in specs {
            let job = self.inner.next_job.fetch_add(1, Ordering::Relaxed);
            let (reply, answer) = oneshot::channel();
            jobs.push(scheduler::NewJob { job, spec, reply });
            let guard = CancelOnDrop { scheduler: Some(self.inner.scheduler.clone()), job };
            runs.push(async move {
                let mut guard = guard;
                let result = answer.await.map_err(|_| JobError::Shutdown);
                guard.scheduler = None;
                result?
            });
        }
        // `do_send`: a block hands the farm hundreds of jobs at once, past any mailbox bound; a stopped
        // scheduler drops each `reply`, which answers `Shutdown`.
        self.inner.scheduler.do_send(scheduler::Submit { jobs });
        runs
    }

    /// The devices connected now.
    pub async fn devices(&self) -> Result<Vec<DeviceStatus>, JobError> {
        self.inner.registry.send(registry::ListDevices).await.map_err(|_| JobError::Shutdown)
    }

    /// Waits until at least `count` usable devices are connected; answers how many are.
    pub async fn wait_for_devices(
        &self,
        count: usize,
        timeout: Duration,
    ) -> Result<usize, JobError> {
        self.wait_until(count, timeout, |usable| usable.count()).await
    }

    /// Waits until at least `count` agents with a usable device are connected; answers how many are.
    pub async fn wait_for_agents(
        &self,
        count: usize,
        timeout: Duration,
    ) -> Result<usize, JobError> {
        self.wait_until(count, timeout, |usable| {
            usable.map(|d| d.agent_id).collect::<std::collections::BTreeSet<u64>>().len()
        })
        .await
    }

    /// Polls the usable (not draining, not quarantined) devices until `measure` of them reaches `count`.
    async fn wait_until(
        &self,
        count: usize,
        timeout: Duration,
        measure: impl Fn(&mut dyn Iterator<Item = &DeviceStatus>) -> usize,
    ) -> Result<usize, JobError> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let devices = self.devices().await?;
            let found = measure(
                &mut devices.iter().filter(|d| !d.draining && !d.quarantined && !d.drained),
            );
            if found >= count {
                return Ok(found);
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(JobError::NoDevices(timeout));
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    /// Stops the farm (closes every agent connection) and waits for its arbiter to stop. The farm also
    /// stops by itself when its config's shutdown token is cancelled; this then only waits.
    pub fn shutdown(&self) {
        self.inner.stop.cancel();
        let subsystem = self.inner.subsystem.lock().ok().and_then(|mut s| s.take());
        if let Some(subsystem) = subsystem {
            subsystem.join();
        }
    }
}

/// Tells the scheduler a job's caller went away, unless the job was answered.
struct CancelOnDrop {
    scheduler: Option<Addr<scheduler::Scheduler>>,
    job: schedule::JobId,
}

impl Drop for CancelOnDrop {
    fn drop(&mut self) {
        if let Some(scheduler) = self.scheduler.take() {
            scheduler.do_send(scheduler::Cancel { job: self.job });
        }
    }
}

/// Starts a farm on an arbiter of its own (on the process's actix system).
pub fn start(config: FarmConfig) -> Result<FarmHandle, FarmError> {
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    // Its own child: `FarmHandle::shutdown` stops this farm, not whatever else shares the parent.
    let stop = config.shutdown.child_token();
    let stopped = stop.clone();
    // The actors run on the arbiter's thread; QUIC and the shard I/O tasks (`tokio::spawn`) there too, or
    // on worker threads of their own (see `default_io_threads`).
    let runtime = match config.io_threads {
        0 => SubsystemRuntime::CurrentThread,
        workers => SubsystemRuntime::MultiThread { workers, name: "cpc-farm-io" },
    };
    let subsystem = Subsystem::start(runtime, move || async move {
        let (endpoint, scheduler) = match start_actors(config).await {
            Ok((parts, endpoint)) => {
                let scheduler = parts.4.clone();
                let _ = ready_tx.send(Ok(parts));
                (endpoint, scheduler)
            }
            Err(e) => {
                let _ = ready_tx.send(Err(e));
                return;
            }
        };
        stopped.cancelled().await;
        // Every waiting job is answered `Shutdown` before the arbiter (and every actor on it) stops.
        scheduler.do_send(scheduler::Stop);
        endpoint.close(0u32.into(), b"coordinator shutting down");
        let _ = tokio::time::timeout(Duration::from_secs(1), endpoint.wait_idle()).await;
    })
    .map_err(|e| FarmError::Runtime(format!("cannot start the farm's arbiter: {e}")))?;
    let parts = ready_rx
        .recv()
        .map_err(|_| FarmError::Runtime("the farm's arbiter stopped while starting".into()))??;
    let (local_addr, metrics_addr, fingerprint, token, scheduler, registry) = parts;
    Ok(FarmHandle {
        inner: Arc::new(Inner {
            local_addr,
            metrics_addr,
            fingerprint,
            token,
            scheduler,
            registry,
            next_job: AtomicU64::new(1),
            stop,
            subsystem: Mutex::new(Some(subsystem)),
        }),
    })
}

type Parts = (
    SocketAddr,
    Option<SocketAddr>,
    String,
    String,
    Addr<scheduler::Scheduler>,
    Addr<registry::Registry>,
);

async fn start_actors(config: FarmConfig) -> Result<(Parts, quinn::Endpoint), FarmError> {
    let config = Arc::new(config);
    let farm_metrics = metrics::FarmMetrics::with_readiness(Arc::clone(&config.readiness));
    let metrics_addr = match config.metrics_listen {
        Some(addr) => Some(metrics::serve(addr, metrics::install_recorder(), &farm_metrics).await?),
        None => None,
    };
    let endpoint = server::bind(&config)?;
    let local_addr =
        endpoint.local_addr().map_err(|source| FarmError::Bind { addr: config.listen, source })?;
    let registry = registry::Registry::new(config.heartbeat_timeout, farm_metrics.clone()).start();
    let scheduler =
        scheduler::Scheduler::new(config.clone(), registry.clone(), farm_metrics.clone()).start();
    registry.do_send(registry::Subscribe {
        up: scheduler.clone().recipient(),
        down: scheduler.clone().recipient(),
        readmitted: scheduler.clone().recipient(),
    });
    actix_rt::spawn(server::accept_loop(endpoint.clone(), config.clone(), registry.clone()));
    farm_metrics.set_ready(true);
    let parts = (
        local_addr,
        metrics_addr,
        config.identity.fingerprint(),
        config.identity.token.clone(),
        scheduler,
        registry,
    );
    Ok((parts, endpoint))
}

/// Most worker threads [`FarmConfig::io_threads`] is set to by the operator's settings.
pub const MAX_IO_THREADS: u32 = 64;

/// Worker threads of the farm's I/O runtime by default: half of the cores beyond two, at most 8; none (the
/// I/O runs on the scheduler's thread) on a host of 3 cores or fewer.
///
/// Each hand-off between the scheduler's thread and an I/O worker is a thread wake-up. On 2 vCPUs
/// (`bench farm` with 200 devices, sixteen interleaved pairs of runs), the coordinator spent 3-32 % less
/// CPU with none than with two, and the shard round trip's p99 was lower in 11 of 16. Workers pay off where
/// they have cores of their own, leaving one to the scheduler and one to the rest of the process (the
/// miner, blocking threads for roots and spot checks): there the I/O of a very busy farm (its QUIC
/// encryption above all) no longer shares the scheduler's thread.
pub fn default_io_threads() -> usize {
    std::thread::available_parallelism().map_or(0, |n| (n.get().saturating_sub(2) / 2).min(8))
}
