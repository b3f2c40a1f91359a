//! # cpc-agent
//!
//! The per-host agent of a cpc-farm. It dials its coordinator over QUIC (so agents behind NAT work, and adding
//! capacity is starting another agent), trusts only the certificate whose fingerprint it was given, presents
//! the join token, announces its devices with their measured throughput, and then answers the coordinator's
//! requests: run a shard, show a row for a spot check.
//!
//! - [`device`]: one actix actor per device, compute on the device's own worker thread under a watchdog
//!   (a device that errors fatally or hangs is quarantined, reported, and the others keep serving), a
//!   bounded row cache;
//! - [`session`]: one connection's life: handshake, heartbeats, request streams, draining;
//! - `pipe`: the shard pipe, one stream of many whole-iteration shards and their answers (protocol
//!   version 7);
//! - [`tls`]: the pinned-fingerprint certificate verifier;
//! - [`metrics`]: Prometheus metrics and `/metrics`, `/healthz`, `/readyz`;
//! - [`telemetry`]: the per-GPU NVML sampler behind the `cpcfarm_gpu_*` metrics (GPUs only);
//! - [`noop`]: a backend that computes nothing, for transport benchmarks;
//! - [`simulated`]: devices that hold each shard for the time a device of a given speed would take and
//!   answer wrong leaves, for measuring a farm at scale (`--backend simulated --allow-wrong-results`).
//!
//! A shard the coordinator cancels (it stops the shard's request stream,
//! [`cpc_common::wire::SHARD_CANCELLED`]) is dropped while it waits for its device, stopped where the device
//! can stop, and never answered.
//!
//! [`open_devices`] opens what `--backend` and `--devices` name (a clear error, naming `--backend cpu`, where
//! CUDA cannot run), [`open_simulated`] the simulated devices; [`run`] is the whole agent (reconnecting with
//! exponential backoff and jitter until told to drain);
//! [`AgentThread`] runs one on an arbiter of its own on the process's one actix system, for tests, benches and embedding.
//!
//! # Feature flags
//! - `cuda`: run shards on NVIDIA GPUs (enables `cpc-kernels/cuda`); without it `--backend cuda` exits with
//!   a message saying so, and the NVML sampler is absent.

pub mod device;
pub mod metrics;
pub mod noop;
mod pipe;
pub mod session;
pub mod simulated;
pub mod telemetry;
pub mod tls;

use cpc_common::actors::{Subsystem, SubsystemRuntime};
use cpc_kernels::{Backend, BackendError, BackendKind, CudaBackend};
use rand::Rng as _;
use std::{
    net::SocketAddr,
    str::FromStr,
    sync::{Arc, Mutex, atomic::AtomicBool},
    time::Duration,
};

pub use device::DEFAULT_WATCHDOG;
/// Default worker restarts per device after watchdog firings before the agent gives the device up: a driver
/// hiccup costs one shard, a wedged GPU is given up after a few.
pub const DEFAULT_MAX_DEVICE_RESTARTS: u32 = 2;
use tokio::sync::{oneshot, watch};

/// Default bytes of rows kept for spot checks.
pub const DEFAULT_ROW_CACHE_BYTES: u64 = 512 * 1024 * 1024;
/// Default matrix size of the start-up throughput measurement.
pub const DEFAULT_MEASURE_MATRIX_SIZE: u32 = 256;
/// Default QUIC idle timeout: a coordinator that vanished without a word (host down, cable pulled) is given
/// up after this; a restarted one is noticed sooner, by the stateless reset its first answer carries.
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(3);
/// Default first reconnect delay.
pub const DEFAULT_BACKOFF_INITIAL: Duration = Duration::from_millis(500);
/// Default longest reconnect delay.
pub const DEFAULT_BACKOFF_MAX: Duration = Duration::from_secs(30);

/// How an agent runs.
#[derive(Debug, Clone)]
pub struct AgentConfig {
    /// `HOST:PORT` of the coordinator (resolved at every attempt).
    pub coordinator: String,
    /// The coordinator's join token.
    pub token: String,
    /// The coordinator's certificate fingerprint (SHA-256 of its DER, hex).
    pub fingerprint: String,
    /// Name in the coordinator's logs and reports.
    pub name: String,
    /// Where to serve `/metrics`, `/healthz`, `/readyz`.
    pub metrics_listen: Option<SocketAddr>,
    /// QUIC idle timeout.
    pub idle_timeout: Duration,
    /// First reconnect delay (doubles up to `backoff_max`, with jitter).
    pub backoff_initial: Duration,
    /// Longest reconnect delay.
    pub backoff_max: Duration,
    /// Bytes of rows kept for spot checks.
    pub row_cache_bytes: u64,
    /// Matrix size of the throughput measurement at start (0: skip, announce 1 op/s).
    pub measure_matrix_size: u32,
    /// After draining, how long to keep answering spot checks once the last shard is done.
    pub drain_grace: Duration,
    /// Longest a drain may take before the agent leaves anyway.
    pub drain_timeout: Duration,
    /// Time for the coordinator to answer `Hello`.
    pub handshake_timeout: Duration,
    /// Longest one backend call (a shard, the start-up measurement) may take before its device's worker is
    /// restarted, or past `max_device_restarts` the device quarantined (see [`device`]).
    pub watchdog: Duration,
    /// Worker restarts per device after watchdog firings before the agent gives the device up.
    pub max_device_restarts: u32,
    /// The farm protocol version its `Hello` announces: [`cpc_common::wire::PROTOCOL_VERSION`]. An older
    /// one (at least [`cpc_common::wire::MIN_PROTOCOL_VERSION`]) makes a coordinator talk to this agent as
    /// to an agent of that version, which is how a coordinator's support of older agents is tested; the
    /// agent serves the requests of every version up to its own either way.
    pub protocol_version: u16,
}

impl AgentConfig {
    /// Defaults around the three things an agent must be told.
    pub fn new(
        coordinator: impl Into<String>,
        token: impl Into<String>,
        fingerprint: impl Into<String>,
    ) -> Self {
        Self {
            coordinator: coordinator.into(),
            token: token.into(),
            fingerprint: fingerprint.into(),
            name: default_name(),
            metrics_listen: None,
            idle_timeout: DEFAULT_IDLE_TIMEOUT,
            backoff_initial: DEFAULT_BACKOFF_INITIAL,
            backoff_max: DEFAULT_BACKOFF_MAX,
            row_cache_bytes: DEFAULT_ROW_CACHE_BYTES,
            measure_matrix_size: DEFAULT_MEASURE_MATRIX_SIZE,
            drain_grace: Duration::from_millis(500),
            drain_timeout: Duration::from_secs(900),
            handshake_timeout: Duration::from_secs(10),
            watchdog: DEFAULT_WATCHDOG,
            max_device_restarts: DEFAULT_MAX_DEVICE_RESTARTS,
            protocol_version: cpc_common::wire::PROTOCOL_VERSION,
        }
    }
}

fn default_name() -> String {
    std::fs::read_to_string("/etc/hostname")
        .ok()
        .map(|s| s.trim().to_owned())
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "agent".into())
}

/// One device the agent runs.
#[derive(Debug, Clone)]
pub struct DeviceSpec {
    /// Its index (as in `--devices`).
    pub index: u32,
    /// Its backend.
    pub backend: Arc<dyn Backend>,
}

/// Why an agent stopped.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    /// The coordinator refused the agent (wrong token, protocol version...): retrying will not help.
    #[error("the coordinator refused this agent: {0}")]
    Refused(String),
    /// The coordinator's certificate is not the pinned one.
    #[error(
        "the coordinator's certificate has fingerprint {presented}, not the pinned {pinned}: this is not the \
         coordinator you were given (or it has a new certificate); check --coordinator and \
         --coordinator-fingerprint"
    )]
    FingerprintMismatch {
        /// The fingerprint it presented.
        presented: String,
        /// The one pinned.
        pinned: String,
    },
    /// `--coordinator-fingerprint` is not 64 hex digits.
    #[error("--coordinator-fingerprint `{0}` is not a SHA-256 fingerprint (64 hex digits)")]
    BadFingerprint(String),
    /// A device could not start.
    #[error("device {index}: {reason}")]
    Device {
        /// Its index.
        index: u32,
        /// Why.
        reason: String,
    },
    /// No device to run.
    #[error("no device to run: check --backend and --devices")]
    NoDevices,
    /// `--backend cuda`, but CUDA cannot run here (built without it, no driver, no GPU).
    #[error(
        "--backend cuda cannot run on this host: {reason}. Use --backend cpu to run on the CPU instead"
    )]
    NoGpu {
        /// Why, and what to do about it.
        reason: String,
    },
    /// `--devices` is neither `all` nor a list of indices and ranges.
    #[error(
        "--devices `{0}`: expected `all` or a list of indices and ranges such as `0,2` or `0-49`"
    )]
    BadDevices(String),
    /// `--backend simulated` without what it needs: an acknowledgement that its results are wrong, a speed,
    /// devices named by index.
    #[error("--backend simulated: {0}")]
    Simulated(String),
    /// The local socket or TLS setup failed.
    #[error("setup: {0}")]
    Setup(String),
    /// The agent was killed (tests).
    #[error("killed")]
    Killed,
}

impl AgentError {
    /// Whether reconnecting cannot help.
    pub fn is_fatal(&self) -> bool {
        !matches!(self, Self::Setup(_))
    }
}

/// Runs an agent until `shutdown` turns true (then drains: finishes the shards in hand, takes no new one) or a
/// fatal error. Must run inside an actix system.
pub async fn run(
    config: AgentConfig,
    devices: Vec<DeviceSpec>,
    mut shutdown: watch::Receiver<bool>,
) -> Result<(), AgentError> {
    let pinned = tls::parse_fingerprint(&config.fingerprint)
        .ok_or_else(|| AgentError::BadFingerprint(config.fingerprint.clone()))?;
    if devices.is_empty() {
        return Err(AgentError::NoDevices);
    }
    let ready = Arc::new(AtomicBool::new(false));
    if let Some(addr) = config.metrics_listen {
        let bound = metrics::serve(addr, ready.clone()).await.map_err(|e| {
            AgentError::Setup(format!(
                "cannot serve metrics on {addr}: {e} (choose another --metrics)"
            ))
        })?;
        tracing::info!(%bound, "metrics endpoint up");
    }
    let cache = Arc::new(Mutex::new(device::RowCache::new(config.row_cache_bytes)));
    let health = device::Health::default();
    metrics::devices_quarantined(0);
    let samplers = telemetry::start(&devices, telemetry::SAMPLE_INTERVAL, &health);
    if !samplers.is_empty() {
        tracing::info!(gpus = samplers.len(), every = ?telemetry::SAMPLE_INTERVAL, "GPU telemetry (NVML) on /metrics");
    }
    let options = device::DeviceOptions {
        measure_n: config.measure_matrix_size,
        watchdog: config.watchdog,
        max_restarts: config.max_device_restarts,
    };
    let mut actors = session::Devices::default();
    let mut first_failure = None;
    for spec in devices {
        let started =
            device::start(spec.index, spec.backend, cache.clone(), health.clone(), &options)
                .await
                .map_err(|reason| AgentError::Device { index: spec.index, reason })?;
        let advert = &started.advert;
        match &started.quarantined {
            Some(reason) => {
                first_failure.get_or_insert_with(|| (advert.index, reason.clone()));
            }
            None => {
                tracing::info!(device = advert.index, name = %advert.name, ops_per_sec = advert.measured_ops_per_sec, "device ready")
            }
        }
        actors.insert(started.advert, started.addr);
    }
    if let Some((index, reason)) = first_failure
        && health.quarantined().len() >= actors.len()
    {
        return Err(AgentError::Device { index, reason });
    }
    metrics::devices(actors.len());
    let ctx = session::SessionCtx {
        config: config.clone(),
        pinned,
        devices: Arc::new(actors),
        cache,
        ready,
        health,
        sessions: std::sync::atomic::AtomicU64::new(0),
    };
    let mut attempt: u32 = 0;
    loop {
        if *shutdown.borrow() {
            return Ok(());
        }
        if attempt > 0 {
            metrics::reconnect();
        }
        let mut welcomed = false;
        match session::run(&ctx, &mut shutdown, &mut welcomed).await {
            Ok(session::End::Drained) => return Ok(()),
            Ok(session::End::Lost(reason)) => {
                tracing::warn!(%reason, "connection to the coordinator lost")
            }
            Err(e) if e.is_fatal() => return Err(e),
            Err(e) => tracing::warn!("cannot reach the coordinator: {e}"),
        }
        attempt = if welcomed { 1 } else { attempt.saturating_add(1) };
        let delay = backoff(config.backoff_initial, config.backoff_max, attempt);
        tracing::info!(?delay, "reconnecting");
        tokio::select! {
            _ = tokio::time::sleep(delay) => {}
            _ = shutdown.changed() => return Ok(()),
        }
    }
}

/// What `--devices` names: every device of the backend, or some by index.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DeviceSelection {
    /// `all`: every visible GPU (CUDA), or the CPU.
    All,
    /// A list such as `0,2`, or `0-3` for `0,1,2,3` (ranges inclusive, items in the order given).
    List(Vec<u32>),
}

/// Most devices one `--devices` list names (a typo such as `0-4000000000` is refused, not allocated).
pub const MAX_LISTED_DEVICES: usize = 4096;

impl FromStr for DeviceSelection {
    type Err = AgentError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s.trim().eq_ignore_ascii_case("all") {
            return Ok(Self::All);
        }
        let bad = || AgentError::BadDevices(s.to_owned());
        let mut list = Vec::new();
        for item in s.split(',') {
            let (first, last) = match item.split_once('-') {
                Some((a, b)) => (a.trim().parse::<u32>(), b.trim().parse::<u32>()),
                None => (item.trim().parse::<u32>(), item.trim().parse::<u32>()),
            };
            let (first, last) = (first.map_err(|_| bad())?, last.map_err(|_| bad())?);
            if first > last || list.len() + (last - first) as usize >= MAX_LISTED_DEVICES {
                return Err(bad());
            }
            list.extend(first..=last);
        }
        if list.is_empty() {
            return Err(bad());
        }
        Ok(Self::List(list))
    }
}

/// Opens the simulated devices `--backend simulated --devices LIST --device-tops T` names, each a
/// [`simulated::SimulatedBackend`] of `tera_ops_per_sec`. Its results are wrong by design, so it refuses to
/// unless `allow_wrong_results` (`--allow-wrong-results`), and then says so in the log; `all` is refused too
/// (there is nothing to count: name the devices, e.g. `0-49`).
pub fn open_simulated(
    selection: &DeviceSelection,
    tera_ops_per_sec: f64,
    allow_wrong_results: bool,
) -> Result<Vec<DeviceSpec>, AgentError> {
    if !allow_wrong_results {
        return Err(AgentError::Simulated(
            "simulated devices answer WRONG leaves by design (for `cpc-coordinator bench farm`, with spot \
             checks off); pass --allow-wrong-results to run them anyway, and never against a coordinator \
             that submits results to a chain"
                .into(),
        ));
    }
    let DeviceSelection::List(indices) = selection else {
        return Err(AgentError::Simulated(
            "name the simulated devices by index: --devices 0-49 runs 50 of them".into(),
        ));
    };
    // One backend per device, as real devices are: they share no state (no lock between device threads).
    let backend = || {
        simulated::SimulatedBackend::new(tera_ops_per_sec)
            .map_err(|e| AgentError::Simulated(e.to_string()))
    };
    backend()?;
    tracing::warn!(
        devices = indices.len(),
        tera_ops_per_sec,
        "SIMULATED DEVICES: this agent computes nothing and answers WRONG leaves by design; each shard is \
         held for the time a device of this speed would take. For benchmarks of the farm only"
    );
    indices
        .iter()
        .map(|&index| {
            let backend: Arc<dyn Backend> = Arc::new(backend()?);
            Ok(DeviceSpec { index, backend })
        })
        .collect()
}

/// Opens the devices `--backend kind --devices selection` name. CUDA backends get `watchdog` as their own
/// per-shard timeout. For CUDA, `all` opens every visible GPU ([`CudaBackend::device_count`]) and skips, with
/// a warning, one that will not open; a GPU named in a list must open. Where CUDA cannot run at all (built
/// without the `cuda` feature, no driver, no GPU) the error says why and names `--backend cpu`.
pub fn open_devices(
    kind: BackendKind,
    selection: &DeviceSelection,
    watchdog: Duration,
) -> Result<Vec<DeviceSpec>, AgentError> {
    let device_err =
        |index: u32| move |e: BackendError| AgentError::Device { index, reason: e.to_string() };
    let devices = match kind {
        BackendKind::Cpu => {
            let indices = match selection {
                DeviceSelection::All => vec![0],
                DeviceSelection::List(list) => list.clone(),
            };
            indices
                .into_iter()
                .map(|index| {
                    let backend =
                        cpc_kernels::open(kind, index as usize).map_err(device_err(index))?;
                    Ok(DeviceSpec { index, backend: Arc::from(backend) })
                })
                .collect::<Result<Vec<_>, AgentError>>()?
        }
        BackendKind::Cuda => {
            let count = CudaBackend::device_count();
            if count == 0 {
                // Ask the backend why: not compiled in, no driver, no NVRTC, or no GPU.
                let reason = match CudaBackend::new(0) {
                    Err(BackendError::CudaNotCompiled) => {
                        "this cpc-agent was built without CUDA support: \
                         rebuild it with `cargo build --release -p cpc-agent --features cuda`"
                            .to_owned()
                    }
                    Err(e) => e.to_string(),
                    Ok(_) => {
                        "no CUDA device is visible (check `nvidia-smi` and CUDA_VISIBLE_DEVICES)"
                            .to_owned()
                    }
                };
                return Err(AgentError::NoGpu { reason });
            }
            let open = |index: u32| -> Result<DeviceSpec, BackendError> {
                CudaBackend::new(index as usize)
                    .map(|gpu| DeviceSpec { index, backend: Arc::new(gpu.with_timeout(watchdog)) })
            };
            match selection {
                DeviceSelection::List(list) => list
                    .iter()
                    .map(|&index| open(index).map_err(device_err(index)))
                    .collect::<Result<Vec<_>, AgentError>>()?,
                DeviceSelection::All => {
                    let mut opened = Vec::new();
                    let mut first_error = None;
                    for index in 0..u32::try_from(count).unwrap_or(u32::MAX) {
                        match open(index) {
                            Ok(spec) => opened.push(spec),
                            Err(e) => {
                                tracing::error!(
                                    device = index,
                                    "skipping a GPU that will not open: {e}"
                                );
                                first_error.get_or_insert(e);
                            }
                        }
                    }
                    if opened.is_empty() {
                        return Err(AgentError::NoGpu {
                            reason: first_error
                                .map_or_else(|| "no GPU would open".to_owned(), |e| e.to_string()),
                        });
                    }
                    opened
                }
            }
        }
    };
    if devices.is_empty() {
        return Err(AgentError::NoDevices);
    }
    Ok(devices)
}

/// Delay before attempt `attempt` (≥ 1): `initial·2^(attempt-1)` capped at `max`, times a jitter in [0.5, 1].
pub fn backoff(initial: Duration, max: Duration, attempt: u32) -> Duration {
    let exp = initial.saturating_mul(1u32 << attempt.saturating_sub(1).min(20)).min(max);
    exp.mul_f64(rand::thread_rng().gen_range(0.5..=1.0))
}

/// An agent on an arbiter of its own on the process's one actix system ([`cpc_common::actors`]): a test or
/// a bench starts many in one process.
#[derive(Debug)]
pub struct AgentThread {
    shutdown: watch::Sender<bool>,
    kill: Option<oneshot::Sender<()>>,
    outcome: std::sync::mpsc::Receiver<Result<(), AgentError>>,
    subsystem: Option<Subsystem>,
}

impl AgentThread {
    /// Starts an agent.
    pub fn spawn(config: AgentConfig, devices: Vec<DeviceSpec>) -> Self {
        let (shutdown, shutdown_rx) = watch::channel(false);
        let (kill, kill_rx) = oneshot::channel::<()>();
        let (outcome_tx, outcome) = std::sync::mpsc::channel();
        let name = config.name.clone();
        let started = Subsystem::start(SubsystemRuntime::CurrentThread, move || async move {
            let ended = tokio::select! {
                r = run(config, devices, shutdown_rx) => r,
                _ = kill_rx => Err(AgentError::Killed),
            };
            let _ = outcome_tx.send(ended);
        });
        let subsystem = match started {
            Ok(s) => Some(s),
            Err(e) => {
                tracing::error!(agent = %name, "cannot start an agent's arbiter: {e}");
                None
            }
        };
        Self { shutdown, kill: Some(kill), outcome, subsystem }
    }

    /// Asks the agent to drain (as SIGTERM does).
    pub fn drain(&self) {
        let _ = self.shutdown.send(true);
    }

    /// Stops the agent at once, as a crash would: no goodbye to the coordinator.
    pub fn kill(&mut self) {
        if let Some(k) = self.kill.take() {
            let _ = k.send(());
        }
    }

    /// Whether the agent has stopped.
    pub fn is_finished(&self) -> bool {
        self.subsystem.as_ref().is_none_or(Subsystem::is_finished)
    }

    /// Waits for the agent to stop; answers why it did.
    pub fn join(mut self) -> Result<(), AgentError> {
        match self.subsystem.take() {
            Some(subsystem) => {
                subsystem.join();
                self.outcome
                    .try_recv()
                    .map_err(|_| AgentError::Setup("the agent panicked".into()))?
            }
            None => Err(AgentError::Setup("the agent's arbiter never started".into())),
        }
    }
}

impl Drop for AgentThread {
    fn drop(&mut self) {
        if let Some(subsystem) = self.subsystem.take() {
            self.kill();
            subsystem.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn devices_parse() {
        assert_eq!("all".parse::<DeviceSelection>().expect("all"), DeviceSelection::All);
        assert_eq!(
            " 0, 2 ".parse::<DeviceSelection>().expect("list"),
            DeviceSelection::List(vec![0, 2])
        );
        let err = "0,x".parse::<DeviceSelection>().expect_err("bad");
        assert!(err.to_string().contains("`all` or a list"), "{err}");
        assert_eq!(
            "4, 0-2".parse::<DeviceSelection>().expect("ranges"),
            DeviceSelection::List(vec![4, 0, 1, 2])
        );
        for bad in ["3-1", "0-", "-1", "0-4000000000", ""] {
            assert!(bad.parse::<DeviceSelection>().is_err(), "{bad}");
        }
    }

    #[test]
    fn simulated_devices_need_the_acknowledgement_and_indices() {
        let list = DeviceSelection::List(vec![0, 1, 2]);
        let err = open_simulated(&list, 660.0, false).expect_err("no acknowledgement");
        assert!(err.to_string().contains("--allow-wrong-results"), "{err}");
        let err = open_simulated(&DeviceSelection::All, 660.0, true).expect_err("all");
        assert!(err.to_string().contains("--devices 0-49"), "{err}");
        assert!(open_simulated(&list, -1.0, true).is_err());
        let devices = open_simulated(&list, 660.0, true).expect("simulated");
        assert_eq!(devices.iter().map(|d| d.index).collect::<Vec<_>>(), [0, 1, 2]);
        assert_eq!(devices[0].backend.declared_ops_per_sec(), Some(660e12));
    }

    #[test]
    fn cuda_without_a_gpu_says_what_to_do() {
        if CudaBackend::device_count() > 0 {
            return; // a GPU here: `--backend cuda` opens it.
        }
        let err = open_devices(BackendKind::Cuda, &DeviceSelection::All, DEFAULT_WATCHDOG)
            .expect_err("no GPU");
        let msg = err.to_string();
        assert!(matches!(err, AgentError::NoGpu { .. }) && err.is_fatal(), "{err:?}");
        assert!(msg.contains("--backend cpu"), "{msg}");
        if matches!(CudaBackend::new(0), Err(BackendError::CudaNotCompiled)) {
            assert!(msg.contains("--features cuda"), "{msg}");
        }
        let err =
            open_devices(BackendKind::Cuda, &DeviceSelection::List(vec![0, 2]), DEFAULT_WATCHDOG)
                .expect_err("no GPU");
        assert!(err.to_string().contains("--backend cpu"), "{err}");
    }

    #[test]
    fn cpu_backend_is_device_zero() {
        let devices =
            open_devices(BackendKind::Cpu, &DeviceSelection::All, DEFAULT_WATCHDOG).expect("cpu");
        assert_eq!(devices.iter().map(|d| d.index).collect::<Vec<_>>(), [0]);
        assert!(devices[0].backend.monitor().is_none());
        let err = open_devices(BackendKind::Cpu, &DeviceSelection::List(vec![1]), DEFAULT_WATCHDOG)
            .expect_err("no cpu 1");
        assert!(matches!(err, AgentError::Device { index: 1, .. }), "{err:?}");
    }
}
