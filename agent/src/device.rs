//! One actor per device: it runs shards on its backend off the actor thread (on the device's own worker
//! threads: one shard at a time, two on a GPU so that consecutive shards overlap), answers the
//! coordinator's spot checks with rows of its recent shards, and measures its throughput when it starts
//! so that the coordinator can split jobs in proportion.
//!
//! # Rows for spot checks
//!
//! A CPU has the rows of C in host memory anyway: they are kept in a bounded [`RowCache`]. A GPU does not
//! ([`Backend::keeps_rows_cheaply`] is false): copying every row across PCIe would cost several times the
//! shard, so only the shard's description is kept, and a row asked for is recomputed on the device as a
//! one-row shard ([`RecomputeRow`]). That recomputation takes another path through the device (another GEMM
//! shape), so a row the first run got wrong no longer hashes to the leaf it sent.
//!
//! # Freivalds' check
//!
//! Every shard runs with the coordinator's check seed ([`RunShard::check_seed`]): the backend checks its
//! product before hashing (`cpc_kernels::freivalds`). A product that fails is a device fault: the actor
//! quarantines the device, as below, and answers `CheckFailed` so that the coordinator recomputes the shard
//! elsewhere and quarantines the device on its side too.
//!
//! # Watchdog and quarantine
//!
//! Every call into a backend (the start-up measurement and each shard) runs on the device's own worker threads,
//! not on tokio's shared blocking pool, so that a call that never returns (a wedged GPU driver) holds up
//! nothing but its own device. The actor waits for the call against a deadline, [`watchdog_deadline`]: the
//! watchdog timeout (`--watchdog-secs`, [`DEFAULT_WATCHDOG`]) plus a grace that lets the CUDA backend's own
//! polled timeout (given the same value) fire first and name the phase that hung.
//!
//! What a backend error does to the device: out of memory ([`BackendError::retry_later`]) fails the shard
//! only, the coordinator gives it to a device with room, and the GPU keeps serving; a sticky CUDA error
//! ([`BackendError::needs_restart`]) quarantines the device, counts it
//! (`cpcfarm_agent_device_restarts_needed_total`), says that the GPU needs a process restart and stops the
//! device's worker, so that the agent's supervisor (systemd, Kubernetes) can restart the process.
//!
//! When the deadline passes, or the backend answers an error that leaves the device unusable
//! ([`BackendError::quarantines_device`]: a CUDA error, its own timeout, an earlier quarantine), the actor
//! quarantines the device: it answers the shard `ShardFailed` with the reason, records it in [`Health`] (the
//! session tells the coordinator with `DeviceQuarantined`; `/metrics` shows `cpcfarm_agent_device_healthy 0`
//! and `cpcfarm_agent_devices_quarantined`), gives up on the worker threads (never joined: each ends by itself if
//! the call ever returns) and refuses every later shard at once. The agent's other devices have their own
//! actors and threads and keep serving.

use crate::metrics::{self as m, DeviceLabels};
use actix::{Actor, Context, Handler, Message, ResponseFuture};
use cpc_common::{
    synthetic::Challenge,
    wire::{
        CheckTiming, DeviceAdvert, MAX_QUARANTINE_REASON_BYTES, Response, RowCapacity, RunShard,
        advertised_sizes,
    },
};
use cpc_kernels::{
    Backend, BackendError, CancelToken, CheckCost, CheckSeed, Shard, ShardOutput, gpu::ShardStats,
};
use std::{
    collections::{BTreeMap, VecDeque},
    panic::{AssertUnwindSafe, catch_unwind},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};
use tokio::sync::{Semaphore, oneshot, watch};

/// Default watchdog timeout of one backend call (a shard, or the start-up measurement).
pub const DEFAULT_WATCHDOG: Duration = Duration::from_secs(600);
/// Shards remembered for recomputing rows (descriptions only, a few hundred bytes each).
const MAX_RECOMPUTABLE_SHARDS: usize = 4096;

/// Rows of C kept for spot checks, bounded by bytes (the newest shard is always kept), and the shards whose
/// rows were not kept but can be recomputed on their device.
///
/// Entries are keyed by [`ShardKey`]: the coordinator numbers shards per run, so after a reconnect (to the
/// same coordinator or to a restarted one) the same id can name another shard. [`RowCache::begin_session`]
/// forgets every row of the previous connection, and a late shard of an old connection is never cached.
#[derive(Debug)]
pub struct RowCache {
    budget: u64,
    used: u64,
    session: u64,
    shards: VecDeque<CachedShard>,
    recomputable: VecDeque<(ShardKey, u32, Shard)>,
}

/// A shard as this agent knows it: the connection it came on and the coordinator's id for it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ShardKey {
    /// The agent's own number of the connection (one per session, never reused in a process).
    pub session: u64,
    /// The coordinator's id of the shard, unique within its run.
    pub shard_id: u64,
}

/// Where a row a spot check asks for comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RowSource {
    /// Held in the cache.
    Held(Vec<i32>),
    /// To be recomputed on `device` as the one-row `shard`.
    Recompute {
        /// The device that ran the shard.
        device: u32,
        /// The row, as a one-row shard of the same challenge and iteration.
        shard: Shard,
    },
    /// Neither held nor recomputable (evicted, never run here, or a row outside the shard).
    Unknown,
}

#[derive(Debug)]
struct CachedShard {
    key: ShardKey,
    first_row: u32,
    n: u32,
    rows: Vec<i32>,
}

impl RowCache {
    /// A cache holding at most `budget` bytes of rows (plus the newest shard if it alone is larger).
    pub fn new(budget: u64) -> Self {
        Self { budget, used: 0, session: 0, shards: VecDeque::new(), recomputable: VecDeque::new() }
    }

    /// A new connection begins: every row of the previous one is forgotten (nobody can ask for it any more,
    /// and its shard ids may name other shards now).
    pub fn begin_session(&mut self, session: u64) {
        self.session = session;
        self.shards.clear();
        self.recomputable.clear();
        self.used = 0;
        m::row_cache_bytes(0);
    }

    /// Remembers that `shard` ran on `device` without keeping its rows.
    pub fn insert_recomputable(&mut self, key: ShardKey, device: u32, shard: Shard) {
        if key.session != self.session {
            return;
        }
        self.recomputable.push_back((key, device, shard));
        while self.recomputable.len() > MAX_RECOMPUTABLE_SHARDS {
            self.recomputable.pop_front();
        }
    }

    /// Where row `row` (absolute) of shard `key` can be had.
    pub fn source(&self, key: ShardKey, row: u32) -> RowSource {
        if let Some(values) = self.get(key, row) {
            return RowSource::Held(values);
        }
        let found = self.recomputable.iter().rev().find(|(k, _, _)| *k == key);
        match found {
            Some((_, device, shard)) if shard.rows.contains(&row) => {
                match Shard::new(shard.challenge.clone(), shard.iteration, row..row + 1) {
                    Ok(one) => RowSource::Recompute { device: *device, shard: one },
                    Err(_) => RowSource::Unknown,
                }
            }
            _ => RowSource::Unknown,
        }
    }

    /// Keeps the rows (row-major, `n` values a row) of a shard, evicting the oldest beyond the budget.
    /// Rows of a shard from an earlier connection are dropped.
    pub fn insert(&mut self, key: ShardKey, first_row: u32, n: u32, rows: Vec<i32>) {
        if key.session != self.session {
            return;
        }
        self.used += rows.len() as u64 * 4;
        self.shards.push_back(CachedShard { key, first_row, n, rows });
        while self.used > self.budget && self.shards.len() > 1 {
            if let Some(old) = self.shards.pop_front() {
                self.used -= old.rows.len() as u64 * 4;
            }
        }
        m::row_cache_bytes(self.used);
    }

    /// Row `row` (absolute) of shard `key`, if still held.
    pub fn get(&self, key: ShardKey, row: u32) -> Option<Vec<i32>> {
        let s = self.shards.iter().find(|s| s.key == key)?;
        let i = row.checked_sub(s.first_row)? as usize;
        let n = s.n as usize;
        s.rows.get(i * n..(i + 1) * n).map(<[i32]>::to_vec)
    }

    /// Bytes held.
    pub fn used_bytes(&self) -> u64 {
        self.used
    }
}

/// How long the actor waits for one backend call under watchdog timeout `timeout`: the timeout plus a grace
/// of a tenth (between 50 ms and 30 s), so that a backend that bounds its own waits (the CUDA backend, opened
/// with the same timeout) reports first, with the phase that hung.
pub fn watchdog_deadline(timeout: Duration) -> Duration {
    timeout + (timeout / 10).clamp(Duration::from_millis(50), Duration::from_secs(30))
}

/// Which of the agent's devices are quarantined, and why. The device actors write it; the sessions read it
/// (to tell the coordinator, on every connection) and so do the metrics. Clones share it.
#[derive(Debug, Clone)]
pub struct Health {
    tx: Arc<watch::Sender<BTreeMap<u32, String>>>,
}

impl Default for Health {
    fn default() -> Self {
        Self { tx: Arc::new(watch::Sender::new(BTreeMap::new())) }
    }
}

impl Health {
    /// Quarantines device `index` (the first reason stays); answers whether it was healthy until now.
    pub fn quarantine(&self, index: u32, reason: &str) -> bool {
        let newly = self.tx.send_if_modified(|map| {
            if map.contains_key(&index) {
                return false;
            }
            map.insert(index, truncate_reason(reason));
            true
        });
        if newly {
            m::devices_quarantined(self.tx.borrow().len());
        }
        newly
    }

    /// Why device `index` is quarantined, if it is.
    pub fn reason(&self, index: u32) -> Option<String> {
        self.tx.borrow().get(&index).cloned()
    }

    /// Every quarantined device with its reason.
    pub fn quarantined(&self) -> BTreeMap<u32, String> {
        self.tx.borrow().clone()
    }

    /// Changes to come (the current map counts as unseen).
    pub fn subscribe(&self) -> watch::Receiver<BTreeMap<u32, String>> {
        let mut rx = self.tx.subscribe();
        rx.mark_changed();
        rx
    }
}

/// `reason` cut to [`MAX_QUARANTINE_REASON_BYTES`] at a character boundary.
fn truncate_reason(reason: &str) -> String {
    if reason.len() <= MAX_QUARANTINE_REASON_BYTES {
        return reason.to_owned();
    }
    let mut end = MAX_QUARANTINE_REASON_BYTES - 3;
    while !reason.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}...", &reason[..end])
}

type Job = Box<dyn FnOnce(&dyn Backend) + Send>;

/// Why a call on the worker thread gave no answer.
#[derive(Debug)]
enum CallError {
    /// The deadline passed.
    Timeout(Duration),
    /// The call panicked (the thread survives it).
    Panicked(String),
    /// The worker thread is gone or was given up on.
    Gone,
}

/// The device's own threads ([`Backend::concurrent_shards`] of them: two on a GPU, so that consecutive
/// shards overlap), taking backend calls from one queue.
#[derive(Debug)]
struct Worker {
    tx: Mutex<Option<std::sync::mpsc::Sender<Job>>>,
}

impl Worker {
    fn spawn(index: u32, backend: Arc<dyn Backend>, threads: usize) -> Result<Self, String> {
        let (tx, rx) = std::sync::mpsc::channel::<Job>();
        let rx = Arc::new(Mutex::new(rx));
        for t in 0..threads.max(1) {
            let (rx, backend) = (rx.clone(), backend.clone());
            std::thread::Builder::new()
                .name(format!("cpc-device-{index}-{t}"))
                .spawn(move || {
                    loop {
                        // The lock is held only while waiting for the next call, not while running it.
                        let job = match rx.lock() {
                            Ok(rx) => rx.recv(),
                            Err(_) => return,
                        };
                        match job {
                            Ok(job) => job(backend.as_ref()),
                            Err(_) => return, // the worker was given up on, or the device is gone
                        }
                    }
                })
                .map_err(|e| format!("cannot start the device's worker thread: {e}"))?;
        }
        Ok(Self { tx: Mutex::new(Some(tx)) })
    }

    /// Runs `f` on the worker thread and waits for it at most `deadline`.
    async fn call<T: Send + 'static>(
        &self,
        deadline: Duration,
        f: impl FnOnce(&dyn Backend) -> T + Send + 'static,
    ) -> Result<T, CallError> {
        let (tx, rx) = oneshot::channel();
        let job: Job = Box::new(move |backend| {
            let _ = tx.send(catch_unwind(AssertUnwindSafe(|| f(backend))));
        });
        {
            let guard = self.tx.lock().map_err(|_| CallError::Gone)?;
            guard.as_ref().ok_or(CallError::Gone)?.send(job).map_err(|_| CallError::Gone)?;
        }
        match tokio::time::timeout(deadline, rx).await {
            Err(_) => Err(CallError::Timeout(deadline)),
            Ok(Err(_)) => Err(CallError::Gone),
            Ok(Ok(Err(panic))) => Err(CallError::Panicked(
                panic
                    .downcast_ref::<String>()
                    .cloned()
                    .or_else(|| panic.downcast_ref::<&str>().map(|s| (*s).to_owned()))
                    .unwrap_or_else(|| "unknown panic".into()),
            )),
            Ok(Ok(Ok(v))) => Ok(v),
        }
    }

    /// Gives up on the thread: it gets no more work and is never joined (it ends once its call, if any,
    /// returns).
    fn abandon(&self) {
        if let Ok(mut tx) = self.tx.lock() {
            tx.take();
        }
    }
}

/// What the actors of one device share with their futures.
#[derive(Debug)]
struct DeviceState {
    index: u32,
    name: String,
    worker: Worker,
    health: Health,
    watchdog: Duration,
    labels: DeviceLabels,
    cache: Arc<Mutex<RowCache>>,
    /// Calls running on the device at once ([`Backend::concurrent_shards`]).
    in_flight: Semaphore,
    /// [`Backend::keeps_rows_cheaply`]: keep each shard's rows, or recompute the rows asked for.
    keeps_rows: bool,
}

impl DeviceState {
    /// Reacts to a backend error: quarantines the device when the error leaves it unusable, and says and
    /// counts it when only a process restart brings it back.
    fn backend_failed(&self, error: &BackendError, reason: &str) {
        if error.needs_restart() {
            m::device_restart_needed(&self.labels);
            tracing::error!(
                device = self.index,
                name = %self.name,
                %reason,
                "the device's CUDA context is lost: it needs a process restart; its worker stops and the \
                 agent keeps serving with its other devices until its supervisor restarts it"
            );
        }
        if error.quarantines_device() {
            self.quarantine(reason);
        }
    }

    /// Quarantines the device: recorded in [`Health`], worker given up on, metrics and log.
    fn quarantine(&self, reason: &str) {
        self.worker.abandon();
        m::device_healthy(&self.labels, false);
        if self.health.quarantine(self.index, reason) {
            tracing::error!(
                device = self.index,
                name = %self.name,
                %reason,
                "device quarantined: it takes no more shards; the agent keeps serving with its other devices"
            );
        }
    }

    /// Runs a call under the watchdog; quarantines the device on a timeout or a lost worker.
    async fn call<T: Send + 'static>(
        &self,
        what: &str,
        f: impl FnOnce(&dyn Backend) -> T + Send + 'static,
    ) -> Result<T, String> {
        match self.worker.call(watchdog_deadline(self.watchdog), f).await {
            Ok(v) => Ok(v),
            Err(CallError::Panicked(why)) => Err(format!("{what} panicked on the device: {why}")),
            Err(CallError::Timeout(waited)) => {
                let reason = format!(
                    "{}: {what} did not finish within {:.1} s (watchdog --watchdog-secs {:.1} plus grace): \
                     the device is quarantined and its worker thread abandoned; check the device (for a GPU, \
                     `nvidia-smi` and the kernel log for Xid errors) and restart the agent",
                    self.name,
                    waited.as_secs_f64(),
                    self.watchdog.as_secs_f64()
                );
                self.quarantine(&reason);
                Err(reason)
            }
            Err(CallError::Gone) => {
                let reason = self.health.reason(self.index).unwrap_or_else(|| {
                    format!("{}: the device's worker thread is gone", self.name)
                });
                self.quarantine(&reason);
                Err(reason)
            }
        }
    }
}

/// The actor driving one device.
#[derive(Debug)]
pub struct DeviceActor {
    state: Arc<DeviceState>,
}

impl Actor for DeviceActor {
    type Context = Context<Self>;
}

/// Runs a shard that came on connection `session` and answers `ShardDone` or `ShardFailed` (`ShardFailed`
/// too once `cancel` is set: an answer nobody sends).
#[derive(Debug, Message)]
#[rtype(result = "Response")]
pub struct Compute {
    /// The connection the request came on ([`ShardKey::session`]).
    pub session: u64,
    /// The request.
    pub request: RunShard,
    /// Set when the coordinator no longer wants the shard.
    pub cancel: ShardCancel,
}

/// A shard's cancellation, shared by the session that watches the shard's request stream and the device
/// that runs it. Once set, a shard still waiting for its device is dropped without running, a device that
/// can stop early stops ([`Backend::run_shard_cancellable`]), and a product that finishes anyway is neither
/// kept for spot checks nor answered. Clones share it.
#[derive(Debug, Clone)]
pub struct ShardCancel {
    /// What the device's worker thread checks.
    token: CancelToken,
    /// What the actor's futures wait on.
    set: Arc<watch::Sender<bool>>,
}

impl Default for ShardCancel {
    fn default() -> Self {
        Self { token: CancelToken::new(), set: Arc::new(watch::Sender::new(false)) }
    }
}

impl ShardCancel {
    /// Cancels the shard.
    pub fn cancel(&self) {
        self.token.cancel();
        self.set.send_replace(true);
    }

    /// Whether the shard was cancelled.
    pub fn is_cancelled(&self) -> bool {
        *self.set.borrow()
    }

    /// Completes once the shard is cancelled.
    pub async fn cancelled(&self) {
        let mut set = self.set.subscribe();
        // The sender lives in `self`: `wait_for` ends only when the value turns true.
        let _ = set.wait_for(|cancelled| *cancelled).await;
    }
}

/// Where a cancelled shard was when its cancellation came.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CancelledAt {
    /// Waiting for a slot on its device: it never ran.
    Queued,
    /// Running on its device (a simulated device stopped; a product finished and was dropped).
    Running,
}

impl CancelledAt {
    /// The label value of `cpcfarm_agent_shards_cancelled_total`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Queued => "queued",
            Self::Running => "running",
        }
    }
}

impl Handler<Compute> for DeviceActor {
    type Result = ResponseFuture<Response>;

    fn handle(&mut self, msg: Compute, _: &mut Self::Context) -> Self::Result {
        let state = self.state.clone();
        Box::pin(async move {
            let Compute { session, request: req, cancel } = msg;
            let shard_id = req.shard_id;
            let key = ShardKey { session, shard_id };
            let failed = |reason: String| {
                m::shard_done(&state.labels, false, None);
                Response::ShardFailed { shard_id, reason }
            };
            let cancelled = |at: CancelledAt| {
                m::shard_cancelled(at);
                tracing::debug!(
                    device = state.index,
                    shard_id,
                    at = at.as_str(),
                    "shard cancelled"
                );
                Response::ShardFailed { shard_id, reason: "cancelled by the coordinator".into() }
            };
            let check_seed = CheckSeed(req.check_seed);
            let shard = match Challenge::new(req.seed, req.matrix_size, req.iterations)
                .map_err(|e| e.to_string())
                .and_then(|c| {
                    Shard::new(c, req.iteration, req.rows.0..req.rows.1)
                        .map(|s| s.with_check(check_seed))
                        .map_err(|e| e.to_string())
                }) {
                Ok(s) => s,
                Err(e) => return failed(e),
            };
            let permit = tokio::select! {
                biased;
                () = cancel.cancelled() => return cancelled(CancelledAt::Queued),
                permit = state.in_flight.acquire() => permit,
            };
            let Ok(_permit) = permit else {
                return failed("device is shutting down".into());
            };
            if let Some(reason) = state.health.reason(state.index) {
                return failed(format!(
                    "device {} is quarantined ({reason}): the agent's other devices keep serving",
                    state.index
                ));
            }
            let started = Instant::now();
            let (rows, n, first) =
                (shard.row_count(), shard.challenge.matrix_size, shard.rows.start);
            let keep_rows = state.keeps_rows;
            let recomputable = (!keep_rows).then(|| shard.clone());
            let token = cancel.token.clone();
            let running = m::RunningShard::start();
            let out = state
                .call(&format!("shard {shard_id} ({rows} rows at n={n})"), move |backend| {
                    let out = backend.run_shard_cancellable(&shard, keep_rows, &token);
                    let stats = if out.is_ok() { backend.last_stats() } else { None };
                    (out, stats, backend.gpu_status())
                })
                .await;
            drop(running);
            let secs = started.elapsed().as_secs_f64();
            if let Ok((_, _, Some(status))) = &out {
                m::gpu_status(&state.labels, status);
            }
            // Cancelled while it ran: whatever came out (a product that finished anyway, or the device's
            // `Cancelled`) is dropped. A device that failed meanwhile is still dealt with below.
            let device_failed = match &out {
                Err(_) => true, // the watchdog fired, the call panicked or the worker is gone
                Ok((Err(e), _, _)) => !matches!(e, BackendError::Cancelled),
                Ok((Ok(_), _, _)) => false,
            };
            if cancel.is_cancelled() && !device_failed {
                return cancelled(CancelledAt::Running);
            }
            match out {
                Err(reason) => failed(reason),
                Ok((Err(e), _, _)) => {
                    let reason = format!("{}: {e}", state.name);
                    state.backend_failed(&e, &reason);
                    if e.is_failed_check() {
                        m::freivalds_check(&state.labels, false, None);
                        m::shard_done(&state.labels, false, None);
                        tracing::error!(device = state.index, %reason, "Freivalds check failed");
                        return Response::CheckFailed { shard_id, reason };
                    }
                    failed(reason)
                }
                Ok((Ok(output), stats, _)) => {
                    let ops = 2.0 * f64::from(rows) * f64::from(n) * f64::from(n);
                    m::shard_done(&state.labels, true, Some((secs, ops)));
                    record_work(&state.labels, ops, secs, stats.as_ref());
                    let ShardOutput { leaves, rows: values, check } = output;
                    if let Some(cost) = check {
                        let (c, s) = (cost.check.as_secs_f64(), cost.shard.as_secs_f64());
                        m::freivalds_check(&state.labels, true, Some((c, s)));
                    }
                    if let Ok(mut c) = state.cache.lock() {
                        match (values, recomputable) {
                            (Some(values), _) => c.insert(key, first, n, values),
                            (None, Some(shard)) => c.insert_recomputable(key, state.index, shard),
                            (None, None) => {}
                        }
                    }
                    Response::ShardDone { shard_id, leaves, check: check.map(check_timing) }
                }
            }
        })
    }
}

/// A check's cost as the wire carries it.
fn check_timing(cost: CheckCost) -> CheckTiming {
    let micros = |d: Duration| u64::try_from(d.as_micros()).unwrap_or(u64::MAX);
    CheckTiming { check_micros: micros(cost.check), shard_micros: micros(cost.shard) }
}

/// Achieved ops per second and joules of one shard: the backend's own stats (device time, NVML energy) where
/// it has them, the wall time of the call otherwise.
fn record_work(labels: &DeviceLabels, ops: f64, wall_secs: f64, stats: Option<&ShardStats>) {
    let wall = if wall_secs > 0.0 { ops / wall_secs } else { 0.0 };
    let (ops_per_second, joules) = match stats {
        Some(s) if s.device_seconds > 0.0 => (s.tera_ops_per_second() * 1e12, s.energy_joules),
        Some(s) => (wall, s.energy_joules),
        None => (wall, None),
    };
    m::device_work(labels, ops_per_second, joules);
}

/// Recomputes one row of a shard this device ran without keeping its rows, for a spot check; answers `Row`
/// or `RowUnavailable`. Runs between shards, under the same watchdog.
#[derive(Debug, Message)]
#[rtype(result = "Response")]
pub struct RecomputeRow {
    /// The coordinator's id of the shard the row belongs to (for messages).
    pub shard_id: u64,
    /// The row, as a one-row shard ([`RowSource::Recompute`]).
    pub shard: Shard,
}

impl Handler<RecomputeRow> for DeviceActor {
    type Result = ResponseFuture<Response>;

    fn handle(&mut self, msg: RecomputeRow, _: &mut Self::Context) -> Self::Result {
        let state = self.state.clone();
        Box::pin(async move {
            let RecomputeRow { shard_id, shard } = msg;
            let (row, n) = (shard.rows.start, shard.challenge.matrix_size as usize);
            let unavailable = |reason: String| Response::RowUnavailable { reason };
            let Ok(_permit) = state.in_flight.acquire().await else {
                return unavailable("device is shutting down".into());
            };
            if let Some(reason) = state.health.reason(state.index) {
                return unavailable(format!("device {} is quarantined ({reason})", state.index));
            }
            let what = format!("recomputing row {row} of shard {shard_id}");
            match state.call(&what, move |backend| backend.run_shard(&shard, true)).await {
                Err(reason) => unavailable(reason),
                Ok(Err(e)) => {
                    let reason = format!("{}: {what}: {e}", state.name);
                    state.backend_failed(&e, &reason);
                    unavailable(reason)
                }
                Ok(Ok(ShardOutput { rows: Some(values), .. })) if values.len() == n => {
                    Response::Row { values }
                }
                Ok(Ok(_)) => {
                    unavailable(format!("{}: {what}: the backend kept no row", state.name))
                }
            }
        })
    }
}

/// Measures a backend's throughput on a whole `n × n` product (best of two runs), in ops per second. Runs on
/// the calling thread: for the agent's devices [`start`] runs it on the device's worker, under the watchdog.
pub fn measure(backend: &dyn Backend, n: u32) -> Result<f64, BackendError> {
    if n == 0 {
        return Ok(1.0);
    }
    let challenge = Challenge::new("cpc-farm/measure", n, 1)
        .map_err(|e| BackendError::InvalidShard(e.to_string()))?;
    let shard = Shard::whole(challenge, 0)?;
    let mut best = f64::INFINITY;
    for _ in 0..2 {
        let t = Instant::now();
        backend.run_shard(&shard, false)?;
        best = best.min(t.elapsed().as_secs_f64());
    }
    let ops = 2.0 * f64::from(n).powi(3);
    Ok((ops / best.max(1e-9)).min(1e18))
}

/// How one device starts.
#[derive(Debug, Clone)]
pub struct DeviceOptions {
    /// Matrix size of the throughput measurement (0: skip, announce 1 op/s).
    pub measure_n: u32,
    /// Watchdog timeout of one backend call.
    pub watchdog: Duration,
}

/// A started device: its actor, its advert, and whether it failed already (quarantined while measuring).
#[derive(Debug)]
pub struct Started {
    /// The actor.
    pub addr: actix::Addr<DeviceActor>,
    /// What the coordinator is told.
    pub advert: DeviceAdvert,
    /// Why it is quarantined, when the measurement failed.
    pub quarantined: Option<String>,
}

/// Starts a device's worker thread and actor, after measuring it (on the worker, under the watchdog: a device
/// that fails or hangs there starts quarantined). Errs only when the worker thread cannot start.
pub async fn start(
    index: u32,
    backend: Arc<dyn Backend>,
    cache: Arc<Mutex<RowCache>>,
    health: Health,
    options: &DeviceOptions,
) -> Result<Started, String> {
    let info = backend.info();
    let labels = DeviceLabels::of(index, backend.as_ref());
    let state = Arc::new(DeviceState {
        index,
        name: format!("device {index} ({})", backend.name()),
        worker: Worker::spawn(index, backend.clone(), backend.concurrent_shards())?,
        health,
        watchdog: options.watchdog,
        labels,
        cache,
        in_flight: Semaphore::new(backend.concurrent_shards().max(1)),
        keeps_rows: backend.keeps_rows_cheaply(),
    });
    m::device_healthy(&state.labels, true);
    if let Some(status) = backend.gpu_status() {
        m::gpu_status(&state.labels, &status);
    }
    let n = options.measure_n;
    let measured = match backend.declared_ops_per_sec() {
        Some(ops) => Ok(Ok(ops)),
        None => state.call("the start-up measurement", move |backend| measure(backend, n)).await,
    };
    let (ops, quarantined) = match measured {
        Ok(Ok(ops)) => (ops, None),
        Ok(Err(e)) if e.retry_later() => {
            // Out of memory for now (a desktop session, another process): the device serves anyway, and
            // announces the lowest throughput until it measures better.
            tracing::warn!(device = index, name = %state.name, error = %e, "the start-up measurement failed; the device serves anyway");
            (1.0, None)
        }
        Ok(Err(e)) => {
            let reason = format!("{}: the start-up measurement failed: {e}", state.name);
            state.backend_failed(&e, &reason);
            (1.0, Some(reason))
        }
        Err(reason) => {
            state.quarantine(&reason);
            (1.0, Some(reason))
        }
    };
    m::device_measured(&state.labels, ops);
    let advert = DeviceAdvert {
        index,
        kind: backend.kind_name().to_owned(),
        name: format!("{} [{}]", info.name, backend.name()),
        memory_bytes: info.memory_bytes,
        measured_ops_per_sec: ops,
        concurrent_shards: u32::try_from(backend.concurrent_shards()).unwrap_or(u32::MAX),
        row_capacity: advertised_sizes()
            .map(|matrix_size| RowCapacity { matrix_size, max_rows: backend.max_rows(matrix_size) })
            .collect(),
    };
    Ok(Started { addr: DeviceActor { state }.start(), advert, quarantined })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cache_is_bounded_and_keeps_the_newest() {
        let key = |shard_id| ShardKey { session: 0, shard_id };
        let mut c = RowCache::new(64);
        c.insert(key(1), 10, 2, vec![1, 2, 3, 4]); // 16 bytes
        c.insert(key(2), 0, 2, vec![5; 12]); // 48 bytes
        assert_eq!(c.get(key(1), 11), Some(vec![3, 4]));
        assert_eq!(c.get(key(1), 12), None);
        assert_eq!(c.get(key(1), 9), None);
        c.insert(key(3), 0, 4, vec![7; 40]); // 160 bytes: alone over budget, still kept
        assert_eq!(c.get(key(1), 10), None);
        assert_eq!(c.get(key(2), 0), None);
        assert_eq!(c.get(key(3), 9), Some(vec![7; 4]));
        assert_eq!(c.used_bytes(), 160);
    }

    /// The defect a coordinator restart exposed: shard ids start again at 1, and rows cached for the old
    /// connection's shard 1 were served for the new connection's shard 1.
    #[test]
    fn rows_of_an_earlier_connection_are_never_served() {
        let mut c = RowCache::new(1 << 20);
        c.begin_session(1);
        let old = ShardKey { session: 1, shard_id: 1 };
        c.insert(old, 0, 2, vec![1, 2, 3, 4]);
        assert_eq!(c.get(old, 1), Some(vec![3, 4]));
        c.begin_session(2);
        let new = ShardKey { session: 2, shard_id: 1 };
        assert_eq!(c.get(new, 1), None);
        assert_eq!(c.source(new, 1), RowSource::Unknown);
        assert_eq!(c.used_bytes(), 0);
        // A shard of the old connection that finishes late is not cached for the new one.
        c.insert(old, 0, 2, vec![9, 9, 9, 9]);
        assert_eq!(c.get(new, 0), None);
        assert_eq!(c.used_bytes(), 0);
        c.insert(new, 0, 2, vec![5, 6, 7, 8]);
        assert_eq!(c.get(new, 1), Some(vec![7, 8]));
    }

    /// How [`Faulty`] misbehaves on shards of its seed.
    #[derive(Debug, Clone, Copy)]
    enum Fault {
        /// Never returns (well, not for two minutes).
        Hang,
        /// A CUDA error that leaves the context unusable.
        Fatal,
        /// An error that is the shard's fault, not the device's.
        TooLarge,
        /// Out of device memory for now.
        OutOfMemory,
        /// A sticky CUDA error: the context is lost until the process restarts.
        Sticky,
    }

    /// A CPU backend that misbehaves on shards whose seed starts with `seed` (and on everything with `"")`.
    #[derive(Debug)]
    struct Faulty {
        inner: cpc_kernels::CpuBackend,
        seed: &'static str,
        fault: Fault,
    }

    impl Faulty {
        fn backend(seed: &'static str, fault: Fault) -> Arc<dyn Backend> {
            Arc::new(Self { inner: cpc_kernels::CpuBackend::new(1).expect("cpu"), seed, fault })
        }
    }

    impl Backend for Faulty {
        fn name(&self) -> &str {
            "faulty"
        }
        fn info(&self) -> cpc_kernels::DeviceInfo {
            self.inner.info()
        }
        fn run_shard(&self, shard: &Shard, keep_rows: bool) -> Result<ShardOutput, BackendError> {
            if !shard.challenge.seed.starts_with(self.seed) {
                return self.inner.run_shard(shard, keep_rows);
            }
            match self.fault {
                Fault::Hang => {
                    std::thread::sleep(Duration::from_secs(120));
                    Err(BackendError::InvalidShard("woke up".into()))
                }
                Fault::Fatal => Err(BackendError::Cuda {
                    device: "cuda:9 test".into(),
                    reason: "an illegal memory access was encountered".into(),
                }),
                Fault::OutOfMemory => Err(BackendError::OutOfMemory {
                    device: "cuda:9 test".into(),
                    reason: "allocating C: out of memory".into(),
                }),
                Fault::Sticky => Err(BackendError::ContextLost {
                    device: "cuda:9 test".into(),
                    reason: "an illegal memory access was encountered".into(),
                }),
                Fault::TooLarge => Err(BackendError::ShardTooLarge {
                    n: shard.challenge.matrix_size,
                    rows: shard.row_count(),
                    needed: 2,
                    available: 1,
                    device: "test".into(),
                }),
            }
        }
    }

    fn run_shard(shard_id: u64, seed: &str, device: u32) -> Compute {
        Compute {
            session: 0,
            request: RunShard {
                shard_id,
                seed: seed.into(),
                matrix_size: 32,
                iterations: 1,
                iteration: 0,
                rows: (0, 16),
                device,
                check_seed: shard_id.wrapping_mul(0x9E37_79B9_7F4A_7C15),
            },
            cancel: ShardCancel::default(),
        }
    }

    fn options(watchdog: Duration) -> DeviceOptions {
        DeviceOptions { measure_n: 0, watchdog }
    }

    fn reference_leaves(seed: &str) -> Vec<[u8; 32]> {
        let challenge = Challenge::new(seed, 32, 1).expect("challenge");
        let shard = Shard::new(challenge, 0, 0..16).expect("shard");
        cpc_kernels::CpuBackend::new(1).expect("cpu").run_shard(&shard, false).expect("run").leaves
    }

    fn cache() -> Arc<Mutex<RowCache>> {
        Arc::new(Mutex::new(RowCache::new(1 << 20)))
    }

    #[test]
    fn a_hung_call_quarantines_its_device_and_not_the_other() {
        let handle = crate::metrics::install_recorder();
        actix_rt::System::new().block_on(async {
            let health = Health::default();
            let opts = options(Duration::from_millis(200));
            let hung = start(10, Faulty::backend("hang", Fault::Hang), cache(), health.clone(), &opts)
                .await
                .expect("start");
            let good = start(11, Faulty::backend("hang", Fault::Hang), cache(), health.clone(), &opts)
                .await
                .expect("start");
            assert!(hung.quarantined.is_none() && good.quarantined.is_none());

            let t = Instant::now();
            let answer = hung.addr.send(run_shard(1, "hang-1", 10)).await.expect("answer");
            let Response::ShardFailed { shard_id: 1, reason } = answer else {
                panic!("expected ShardFailed, got {answer:?}")
            };
            assert!(reason.contains("did not finish") && reason.contains("watchdog"), "{reason}");
            assert!(t.elapsed() < Duration::from_secs(10), "the watchdog fired late");
            assert_eq!(health.reason(10).as_deref(), Some(reason.as_str()));

            // Refused at once from now on, even for work it could do.
            let answer = hung.addr.send(run_shard(2, "fine", 10)).await.expect("answer");
            assert!(
                matches!(&answer, Response::ShardFailed { reason, .. } if reason.contains("quarantined")),
                "{answer:?}"
            );
            // The other device (same faulty kind, its own thread) keeps serving.
            let answer = good.addr.send(run_shard(3, "fine", 11)).await.expect("answer");
            let Response::ShardDone { shard_id: 3, leaves, check } = answer else {
                panic!("expected ShardDone, got {answer:?}")
            };
            assert_eq!(leaves, reference_leaves("fine"));
            assert!(check.is_some_and(|c| c.check_micros <= c.shard_micros), "{check:?}");
            assert_eq!(health.quarantined().keys().copied().collect::<Vec<_>>(), [10]);
        });
        let text = handle.render();
        // A device without an NVML monitor is labelled by kind and index and host, never `gpu`.
        let host = cpc_kernels::gpu::hostname();
        let labels = |index: u32| format!("{{device=\"cpu{index}\",Hostname=\"{host}\"}}");
        assert!(text.contains(&format!("cpcfarm_agent_device_healthy{} 0", labels(10))), "{text}");
        assert!(text.contains(&format!("cpcfarm_agent_device_healthy{} 1", labels(11))), "{text}");
        assert!(
            text.contains(&format!("cpcfarm_device_achieved_ops_per_second{}", labels(11))),
            "{text}"
        );
    }

    #[test]
    fn a_failed_check_answers_check_failed_and_quarantines_the_device() {
        actix_rt::System::new().block_on(async {
            let health = Health::default();
            let flip = cpc_kernels::cpu::BitFlip { shard: 0, row: 5, col: 7, bit: 13 };
            let backend = Arc::new(cpc_kernels::CpuBackend::new(1).expect("cpu").with_bit_flip(flip));
            let opts = options(Duration::from_secs(60));
            let device = start(50, backend, cache(), health.clone(), &opts).await.expect("start");
            let answer = device.addr.send(run_shard(1, "flip", 50)).await.expect("answer");
            let Response::CheckFailed { shard_id: 1, reason } = answer else {
                panic!("expected CheckFailed, got {answer:?}")
            };
            assert!(reason.contains("Freivalds") && reason.contains("[5]"), "{reason}");
            assert_eq!(health.reason(50).as_deref(), Some(reason.as_str()));
            let answer = device.addr.send(run_shard(2, "flip", 50)).await.expect("answer");
            assert!(
                matches!(&answer, Response::ShardFailed { reason, .. } if reason.contains("quarantined")),
                "{answer:?}"
            );
        });
    }

    #[test]
    fn a_fatal_error_quarantines_and_a_shard_error_does_not() {
        actix_rt::System::new().block_on(async {
            let health = Health::default();
            let opts = options(Duration::from_secs(60));
            let fatal = start(20, Faulty::backend("bad", Fault::Fatal), cache(), health.clone(), &opts)
                .await
                .expect("start");
            let large =
                start(21, Faulty::backend("big", Fault::TooLarge), cache(), health.clone(), &opts)
                    .await
                    .expect("start");

            let answer = large.addr.send(run_shard(1, "big", 21)).await.expect("answer");
            assert!(matches!(answer, Response::ShardFailed { .. }), "{answer:?}");
            assert_eq!(health.reason(21), None, "a shard too large is not the device's fault");
            let answer = large.addr.send(run_shard(2, "ok", 21)).await.expect("answer");
            assert!(matches!(answer, Response::ShardDone { .. }), "{answer:?}");

            let answer = fatal.addr.send(run_shard(3, "bad", 20)).await.expect("answer");
            let Response::ShardFailed { reason, .. } = answer else { panic!("{answer:?}") };
            assert!(reason.contains("illegal memory access"), "{reason}");
            assert!(health.reason(20).is_some_and(|r| r.contains("illegal memory access")));
            let answer = fatal.addr.send(run_shard(4, "ok", 20)).await.expect("answer");
            assert!(
                matches!(&answer, Response::ShardFailed { reason, .. } if reason.contains("quarantined")),
                "{answer:?}"
            );
        });
    }

    /// Out of memory fails the shard and nothing else; a sticky error quarantines the device, says it needs a
    /// process restart and counts it.
    #[test]
    fn out_of_memory_keeps_the_device_and_a_lost_context_asks_for_a_restart() {
        let handle = crate::metrics::install_recorder();
        actix_rt::System::new().block_on(async {
            let health = Health::default();
            let opts = options(Duration::from_secs(60));
            let squeezed =
                start(30, Faulty::backend("oom", Fault::OutOfMemory), cache(), health.clone(), &opts)
                    .await
                    .expect("start");
            let lost = start(31, Faulty::backend("xid", Fault::Sticky), cache(), health.clone(), &opts)
                .await
                .expect("start");

            let answer = squeezed.addr.send(run_shard(1, "oom", 30)).await.expect("answer");
            let Response::ShardFailed { reason, .. } = answer else { panic!("{answer:?}") };
            assert!(reason.contains("out of memory") && reason.contains("stays in service"), "{reason}");
            assert_eq!(health.reason(30), None, "out of memory must not quarantine");
            let answer = squeezed.addr.send(run_shard(2, "ok", 30)).await.expect("answer");
            assert!(matches!(answer, Response::ShardDone { .. }), "{answer:?}");

            let answer = lost.addr.send(run_shard(3, "xid", 31)).await.expect("answer");
            let Response::ShardFailed { reason, .. } = answer else { panic!("{answer:?}") };
            assert!(reason.contains("needs a process restart"), "{reason}");
            assert!(health.reason(31).is_some_and(|r| r.contains("needs a process restart")));
            let answer = lost.addr.send(run_shard(4, "ok", 31)).await.expect("answer");
            assert!(
                matches!(&answer, Response::ShardFailed { reason, .. } if reason.contains("quarantined")),
                "{answer:?}"
            );
        });
        let text = handle.render();
        assert!(
            text.contains("cpcfarm_agent_device_restarts_needed_total{device=\"cpu31\",")
                && text.lines().any(|l| l
                    .starts_with("cpcfarm_agent_device_restarts_needed_total{device=\"cpu31\",")
                    && l.ends_with(" 1")),
            "{text}"
        );
        assert!(
            !text.contains("cpcfarm_agent_device_restarts_needed_total{device=\"cpu30\","),
            "{text}"
        );
    }

    /// A GPU-like device: C is not in host memory, so rows are not kept (asserted) and a spot check's row is
    /// recomputed on the device. `corrupt_row` makes the device get one row wrong on its first run only.
    #[derive(Debug)]
    struct DeviceMemoryBackend {
        inner: cpc_kernels::CpuBackend,
        corrupt_row: Option<u32>,
        runs: Mutex<Vec<(std::ops::Range<u32>, bool)>>,
    }

    impl Backend for DeviceMemoryBackend {
        fn name(&self) -> &str {
            "device-memory"
        }
        fn info(&self) -> cpc_kernels::DeviceInfo {
            self.inner.info()
        }
        fn run_shard(&self, shard: &Shard, keep_rows: bool) -> Result<ShardOutput, BackendError> {
            if let Ok(mut runs) = self.runs.lock() {
                runs.push((shard.rows.clone(), keep_rows));
            }
            let mut out = self.inner.run_shard(shard, keep_rows)?;
            if let Some(r) =
                self.corrupt_row.filter(|r| shard.rows.contains(r) && shard.row_count() > 1)
            {
                // A flipped bit in one element, and the leaf hashed from the wrong row, as a GPU would.
                let mut rows = self.inner.run_shard(shard, true)?.rows.expect("rows");
                let n = shard.challenge.matrix_size as usize;
                let i = (r - shard.rows.start) as usize;
                rows[i * n + 3] ^= 1 << 9;
                let bytes: Vec<u8> =
                    rows[i * n..(i + 1) * n].iter().flat_map(|v| v.to_le_bytes()).collect();
                out.leaves[i] = cpc_common::hashing::sha256(&bytes);
            }
            Ok(out)
        }
        fn keeps_rows_cheaply(&self) -> bool {
            false
        }
    }

    #[test]
    fn a_device_that_keeps_no_rows_recomputes_the_row_a_spot_check_asks_for() {
        actix_rt::System::new().block_on(async {
            let backend = Arc::new(DeviceMemoryBackend {
                inner: cpc_kernels::CpuBackend::new(1).expect("cpu"),
                corrupt_row: Some(9),
                runs: Mutex::new(Vec::new()),
            });
            let rows = cache();
            let opts = options(Duration::from_secs(60));
            let device = start(30, backend.clone(), rows.clone(), Health::default(), &opts)
                .await
                .expect("start");
            let answer = device.addr.send(run_shard(7, "gpu-like", 30)).await.expect("answer");
            let Response::ShardDone { leaves, .. } = answer else { panic!("{answer:?}") };
            assert_eq!(
                backend.runs.lock().expect("runs").as_slice(),
                [(0..16, false)],
                "the shard ran without copying its rows back"
            );
            assert_eq!(rows.lock().expect("cache").used_bytes(), 0, "no rows held");

            let reference =
                Shard::new(Challenge::new("gpu-like", 32, 1).expect("c"), 0, 0..16).expect("shard");
            let want = cpc_kernels::CpuBackend::new(1)
                .expect("cpu")
                .run_shard(&reference, true)
                .expect("run");
            let want_rows = want.rows.expect("rows");
            for row in [0u32, 5, 9, 15] {
                let source =
                    rows.lock().expect("cache").source(ShardKey { session: 0, shard_id: 7 }, row);
                let RowSource::Recompute { device: 30, shard } = source else {
                    panic!("row {row}: {source:?}")
                };
                assert_eq!(shard.rows, row..row + 1);
                let answer =
                    device.addr.send(RecomputeRow { shard_id: 7, shard }).await.expect("answer");
                let Response::Row { values } = answer else { panic!("row {row}: {answer:?}") };
                let i = row as usize;
                assert_eq!(values, want_rows[i * 32..(i + 1) * 32], "row {row} is the true row");
                let bytes: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
                let leaf_matches = cpc_common::hashing::sha256(&bytes) == leaves[i];
                // The row the device got wrong the first time no longer matches the leaf it sent: the
                // coordinator's spot check fails the device.
                assert_eq!(leaf_matches, row != 9, "row {row}");
            }
            assert_eq!(
                rows.lock().expect("cache").source(ShardKey { session: 0, shard_id: 7 }, 16),
                RowSource::Unknown
            );
            assert_eq!(
                rows.lock().expect("cache").source(ShardKey { session: 0, shard_id: 8 }, 0),
                RowSource::Unknown
            );
        });
    }

    /// A device that overlaps two shards (as a GPU does): each call waits, up to 10 s, for a second call to be
    /// inside `run_shard` at the same time, and records how many it saw.
    #[derive(Debug)]
    struct Overlapping {
        inner: cpc_kernels::CpuBackend,
        inside: std::sync::Mutex<(u32, u32)>,
        changed: std::sync::Condvar,
    }

    impl Backend for Overlapping {
        fn name(&self) -> &str {
            "overlapping"
        }
        fn info(&self) -> cpc_kernels::DeviceInfo {
            self.inner.info()
        }
        fn run_shard(&self, shard: &Shard, keep_rows: bool) -> Result<ShardOutput, BackendError> {
            let mut inside = self.inside.lock().expect("lock");
            inside.0 += 1;
            inside.1 = inside.1.max(inside.0);
            self.changed.notify_all();
            let (mut inside, _) = self
                .changed
                .wait_timeout_while(inside, Duration::from_secs(10), |(now, _)| *now < 2)
                .expect("wait");
            inside.1 = inside.1.max(inside.0);
            drop(inside);
            let out = self.inner.run_shard(shard, keep_rows);
            self.inside.lock().expect("lock").0 -= 1;
            out
        }
        fn concurrent_shards(&self) -> usize {
            2
        }
    }

    #[test]
    fn a_device_that_overlaps_shards_gets_two_at_once() {
        actix_rt::System::new().block_on(async {
            let backend = Arc::new(Overlapping {
                inner: cpc_kernels::CpuBackend::new(1).expect("cpu"),
                inside: std::sync::Mutex::new((0, 0)),
                changed: std::sync::Condvar::new(),
            });
            let opts = options(Duration::from_secs(60));
            let device =
                start(40, backend.clone(), cache(), Health::default(), &opts).await.expect("start");
            let (a, b) = tokio::join!(
                device.addr.send(run_shard(1, "overlap-a", 40)),
                device.addr.send(run_shard(2, "overlap-b", 40)),
            );
            for answer in [a.expect("a"), b.expect("b")] {
                assert!(matches!(answer, Response::ShardDone { .. }), "{answer:?}");
            }
            assert_eq!(backend.inside.lock().expect("lock").1, 2, "both shards ran at once");
        });
    }

    #[test]
    fn a_device_that_hangs_while_measured_starts_quarantined() {
        actix_rt::System::new().block_on(async {
            let health = Health::default();
            let opts = DeviceOptions { measure_n: 16, watchdog: Duration::from_millis(100) };
            let started =
                start(30, Faulty::backend("", Fault::Hang), cache(), health.clone(), &opts)
                    .await
                    .expect("start");
            let reason = started.quarantined.expect("quarantined");
            assert!(reason.contains("start-up measurement"), "{reason}");
            assert_eq!(health.reason(30), Some(reason));
        });
    }

    #[test]
    fn reasons_are_cut_at_a_char_boundary() {
        let long = "é".repeat(MAX_QUARANTINE_REASON_BYTES);
        let cut = truncate_reason(&long);
        assert!(cut.len() <= MAX_QUARANTINE_REASON_BYTES && cut.ends_with("..."), "{}", cut.len());
        assert_eq!(truncate_reason("short"), "short");
        assert!(watchdog_deadline(Duration::from_secs(600)) == Duration::from_secs(630));
        assert!(watchdog_deadline(Duration::from_millis(100)) == Duration::from_millis(150));
    }
}
