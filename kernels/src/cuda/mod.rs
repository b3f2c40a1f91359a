//! The CUDA backend (feature `cuda`): one [`CudaBackend`] per GPU, everything on the device.
//!
//! A shard runs as: Philox generation of its rows of A and of all of B straight into device memory (B stored
//! transposed, so the GEMM needs no transpose; B is kept for the next shard of the same product), an exact
//! `i8 × i8 → i32` GEMM ([`gemm`]: cuBLASLt `CUBLAS_COMPUTE_32I`, or the NVRTC dp4a kernel), and SHA-256
//! per row of C; only the 32-byte leaves come back (rows of C only when asked for, for spot checks).
//!
//! The module is split by concern: [`slot`] runs one shard (streams, buffers, the chunked pipeline),
//! [`memory`] decides which buffers a slot keeps, [`fault`] what a failed call means for the device,
//! [`driver`] which driver and libraries were loaded, [`gemm`] the cuBLASLt call, [`module`] the NVRTC
//! kernels, [`telemetry`] NVML. This file holds the backend: opening a GPU, slots, quarantine.
//!
//! # Streams and overlap
//!
//! Each backend has [`SLOTS`] slots; a slot owns a `main` stream (generation and GEMM), several hash streams
//! and its device buffers (see [`slot`]). Within a shard, the GEMM runs in row chunks of [`CHUNK_ROWS`] on
//! `main` while the hash streams hash the chunks already multiplied. Across shards, two calls of
//! [`Backend::run_shard`] from two threads (or one [`CudaBackend::run_shards`]) take the two slots, so one
//! shard's generation and hashing overlap the other's GEMM. [`DeviceInfo::memory_bytes`] is the memory one
//! slot may use (half of what was free at open, less a reserve), so two shards in flight always fit.
//!
//! # Drivers and libraries
//!
//! [`CudaBackend::new`] reads the driver's CUDA version and the versions of the NVRTC and cuBLASLt it
//! loaded, and checks them together ([`crate::gpu::check_compatibility`]): R525 (CUDA 12.0) and later
//! drivers are served, R535 included, with the CUDA 12 libraries; a GPU whose cuBLASLt cannot run falls
//! back to the dp4a GEMM loudly (a warning, [`crate::gpu::GpuStatus::fallback`], the engine label).
//!
//! # Failures, watchdog and quarantine (for the agent's per-GPU actor)
//!
//! Every wait is bounded: the host polls CUDA events against a deadline ([`CudaBackend::with_timeout`],
//! default [`DEFAULT_TIMEOUT`]) instead of blocking in the driver. What a failure does depends on its class
//! ([`fault`]):
//! - out of device memory: the slot gives back its buffers and the shard fails with
//!   [`BackendError::OutOfMemory`]; the GPU stays in service;
//! - a transient launch error: the shard is run again, at most [`fault::TRANSIENT_RETRIES`] times;
//! - a sticky error (illegal address, ...): [`BackendError::ContextLost`], the GPU is quarantined, and only
//!   a new process recovers it (the primary context is shared by the whole process);
//! - any other CUDA error ([`BackendError::Cuda`]) or a deadline that passes ([`BackendError::Timeout`]):
//!   the backend quarantines itself and every later call answers [`BackendError::Quarantined`] at once,
//!   while other GPUs' backends are untouched (nothing is shared between devices except the compiled
//!   kernel cache).
//!
//! A driver call that itself never returns (a wedged GPU in an allocation, say) cannot be bounded from
//! inside, so the agent also runs each call on the GPU's own thread and gives up on it after
//! `timeout + grace`.
//!
//! # Memory
//!
//! A shard needs `rows_pad × ldk` (A) + `npad × ldk` (Bᵗ) bytes + `rows_pad × npad × 4` (C) + 32 per row
//! ([`gpu_shard_bytes`]), every dimension padded to [`PAD`], and its Freivalds check a little scratch
//! (`freivalds::scratch_bytes`). A shard over the slot's budget, or over what the device has free right now,
//! is refused with [`BackendError::ShardTooLarge`] before any work; between shards a slot never holds more
//! than its budget ([`memory::plan_buffers`]). [`Backend::max_rows`] advertises that same limit per n
//! ([`memory::max_rows`]).

mod driver;
mod fault;
mod freivalds;
mod gemm;
mod memory;
mod module;
mod slot;
mod telemetry;

pub use telemetry::GpuMonitor;

use crate::{
    Backend, BackendError, BackendKind, CheckCost, DeviceInfo, Shard, ShardOutput,
    gpu::{Compatibility, CudaLibraries, GemmEngine, GpuStatus, ShardStats, check_compatibility},
};
use cudarc::driver::{CudaContext, sys};
use memory::{NoRoom, plan_buffers};
use module::Kernels;
use slot::{Dims, Fail, FallbackLog, Slot};
use std::{
    collections::HashMap,
    panic::{AssertUnwindSafe, catch_unwind},
    sync::{
        Arc, Mutex, MutexGuard,
        atomic::{AtomicUsize, Ordering},
    },
    thread::ThreadId,
    time::{Duration, Instant},
};

/// Every dimension (rows, columns, k) is padded to a multiple of this, with zeros.
pub(crate) const PAD: u32 = 64;
/// Shards that can be in flight on one GPU at once.
pub const SLOTS: usize = 2;
/// Default watchdog timeout of one shard.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(120);
/// Rows per GEMM chunk: hashing of a chunk overlaps the next chunk's GEMM; shards over this many rows take
/// the chunked path (pointer offsets into A and C, a second cuBLASLt plan for a partial last chunk).
pub const CHUNK_ROWS: u32 = 4096;
/// Device memory left out of the shard budget: context, modules, cuBLASLt workspaces, allocator slack.
const RESERVED_BYTES: u64 = 768 << 20;

/// Device bytes a shard of `rows` rows at matrix size `n` needs on a GPU (padded A, Bᵗ, C and the leaves).
pub fn gpu_shard_bytes(n: u32, rows: u32) -> u64 {
    Dims::new(n, rows).bytes()
}

/// The CUDA backend for one GPU. `Send + Sync`: share it (`Arc`) between the GPU's actor and its metrics.
pub struct CudaBackend {
    ordinal: usize,
    name: String,
    model: String,
    ctx: Arc<CudaContext>,
    kernels: Kernels,
    slots: Vec<Mutex<Slot>>,
    next_slot: AtomicUsize,
    memory_bytes: u64,
    compute_units: u32,
    timeout: Duration,
    libraries: CudaLibraries,
    engine: GemmEngine,
    /// Why the backend runs dp4a although cuBLASLt was asked for.
    fallback: Option<String>,
    gemm_note: String,
    fallbacks: FallbackLog,
    quarantine: Mutex<Option<String>>,
    monitor: Option<GpuMonitor>,
    /// Stats of the last shard each thread completed (the agent runs [`SLOTS`] threads per GPU).
    last_stats: Mutex<HashMap<ThreadId, ShardStats>>,
}

impl std::fmt::Debug for CudaBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CudaBackend")
            .field("name", &self.name)
            .field("model", &self.model)
            .field("memory_bytes", &self.memory_bytes)
            .field("gemm", &self.gemm_note)
            .field("timeout", &self.timeout)
            .finish()
    }
}

/// Why the CUDA libraries cannot be used on this machine, if they cannot.
fn libraries_missing() -> Option<String> {
    // SAFETY: these only try to open the shared libraries (no symbol is called).
    let (driver, nvrtc) = unsafe {
        (cudarc::driver::sys::is_culib_present(), cudarc::nvrtc::sys::is_culib_present())
    };
    if !driver {
        return Some(
            "no NVIDIA driver found (libcuda.so could not be loaded): this machine has no usable GPU; \
             use --backend cpu"
                .into(),
        );
    }
    if !nvrtc {
        return Some(
            "libnvrtc could not be loaded: install the NVRTC of the driver's CUDA major version (e.g. pip \
             install nvidia-cuda-nvrtc-cu12 for an R535/R550/R570 driver, nvidia-cuda-nvrtc for R580+) or \
             add it to LD_LIBRARY_PATH; use --backend cpu meanwhile"
                .into(),
        );
    }
    None
}

/// The engine label of a backend: `cublaslt`, `dp4a (asked for)` or `dp4a (fallback: why)`.
fn engine_note(asked: GemmEngine, compat: &Compatibility) -> String {
    match (&compat.fallback, asked) {
        (Some(why), _) => format!("dp4a (fallback: {why})"),
        (None, GemmEngine::Dp4a) => "dp4a (asked for)".into(),
        (None, GemmEngine::CublasLt) => "cublaslt".into(),
    }
}

/// Runs `f`, turning a panic inside cudarc (a missing symbol in an old driver, say) into an error.
fn guarded<T>(what: &str, f: impl FnOnce() -> Result<T, BackendError>) -> Result<T, BackendError> {
    catch_unwind(AssertUnwindSafe(f)).unwrap_or_else(|panic| {
        let why = panic
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| panic.downcast_ref::<&str>().map(|s| (*s).to_owned()))
            .unwrap_or_else(|| "unknown panic".into());
        Err(BackendError::CudaUnavailable(format!("{what}: {why}")))
    })
}

/// `GPU-xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx`, as NVML and nvidia-smi print it.
fn uuid_string(uuid: &sys::CUuuid) -> String {
    let b: Vec<u8> = uuid.bytes.iter().map(|&c| c as u8).collect();
    let hex =
        |r: std::ops::Range<usize>| b[r].iter().map(|x| format!("{x:02x}")).collect::<String>();
    format!("GPU-{}-{}-{}-{}-{}", hex(0..4), hex(4..6), hex(6..8), hex(8..10), hex(10..16))
}

impl CudaBackend {
    /// Opens GPU `device` (CUDA ordinal): creates its context and streams, compiles the kernels with NVRTC
    /// (once per compute capability per process) and sets up cuBLASLt. Without a GPU, driver or NVRTC it
    /// answers [`BackendError::CudaUnavailable`] or [`BackendError::NoDevice`] with what to do.
    pub fn new(device: usize) -> Result<Self, BackendError> {
        Self::with_engine(device, GemmEngine::CublasLt)
    }

    /// Like [`CudaBackend::new`], with a chosen GEMM engine ([`GemmEngine::Dp4a`] skips cuBLASLt).
    pub fn with_engine(device: usize, engine: GemmEngine) -> Result<Self, BackendError> {
        if let Some(why) = libraries_missing() {
            return Err(BackendError::CudaUnavailable(why));
        }
        guarded("opening the CUDA device", || Self::open(device, engine))
    }

    fn open(device: usize, engine: GemmEngine) -> Result<Self, BackendError> {
        let unavailable = |what: &str, e: &dyn std::fmt::Display| {
            BackendError::CudaUnavailable(format!("GPU {device}: {what}: {e}"))
        };
        let found = Self::device_count();
        if device >= found {
            return Err(BackendError::NoDevice { kind: BackendKind::Cuda, index: device, found });
        }
        let libraries =
            driver::libraries().map_err(|e| unavailable("reading CUDA versions", &e))?;
        let ctx =
            CudaContext::new(device).map_err(|e| unavailable("cannot create a context", &e))?;
        // SAFETY: this backend orders its streams itself (events between `main` and the hash streams, buffers
        // only freed when every stream is idle), which is what disabling cudarc's per-buffer event tracking
        // requires.
        unsafe { ctx.disable_event_tracking() };
        let model = ctx.name().unwrap_or_else(|_| "NVIDIA GPU".into());
        let cc = ctx.compute_capability().map_err(|e| unavailable("compute capability", &e))?;
        let compat = check_compatibility(&libraries, cc, engine)
            .map_err(|e| unavailable(&format!("{model} with {libraries}"), &e))?;
        let sms = ctx
            .attribute(sys::CUdevice_attribute::CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT)
            .map_err(|e| unavailable("SM count", &e))?;
        let kernels = Kernels::load(&ctx).map_err(|e| unavailable("loading the kernels", &e))?;
        let mut slots = Vec::with_capacity(SLOTS);
        let mut compat = compat;
        for _ in 0..SLOTS {
            let (slot, unavailable_lt) = Slot::new(&ctx, compat.engine, cc.0)
                .map_err(|e| unavailable("creating a slot", &e))?;
            if let Some(why) = unavailable_lt {
                compat = Compatibility { engine: GemmEngine::Dp4a, fallback: Some(why) };
            }
            slots.push(Mutex::new(slot));
        }
        if compat.engine == GemmEngine::Dp4a && engine == GemmEngine::CublasLt {
            // A slot that did get cuBLASLt would run another engine than the label says: drop them all to
            // dp4a, so that the label, the metric and the stats agree.
            let retry = (0..SLOTS)
                .map(|_| Slot::new(&ctx, GemmEngine::Dp4a, cc.0).map(|(slot, _)| Mutex::new(slot)))
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| unavailable("creating a slot", &e))?;
            slots = retry;
        }
        let gemm_note = engine_note(engine, &compat);
        if let Some(why) = &compat.fallback {
            tracing::warn!(
                gpu = device,
                %model,
                %libraries,
                reason = %why,
                "cuBLASLt cannot run on this GPU: the dp4a GEMM runs instead, 20-30x slower"
            );
        }
        let (free, _total) = ctx.mem_get_info().map_err(|e| unavailable("memory info", &e))?;
        let memory_bytes = (free as u64).saturating_sub(RESERVED_BYTES) / SLOTS as u64;
        let monitor = ctx.uuid().ok().and_then(|u| GpuMonitor::open_by_uuid(&uuid_string(&u)).ok());
        Ok(Self {
            ordinal: device,
            name: format!("cuda:{device}"),
            model: format!("{model} (sm_{}{}, {libraries}, engine {})", cc.0, cc.1, compat.engine),
            ctx,
            kernels,
            slots,
            next_slot: AtomicUsize::new(0),
            memory_bytes,
            compute_units: u32::try_from(sms).unwrap_or(0),
            timeout: DEFAULT_TIMEOUT,
            libraries,
            engine: compat.engine,
            fallback: compat.fallback,
            gemm_note,
            fallbacks: FallbackLog::default(),
            quarantine: Mutex::new(None),
            monitor,
            last_stats: Mutex::new(HashMap::new()),
        })
    }

    /// Number of visible CUDA devices (0 without a driver; honours `CUDA_VISIBLE_DEVICES`).
    pub fn device_count() -> usize {
        if libraries_missing().is_some() {
            return 0;
        }
        guarded("counting CUDA devices", || {
            CudaContext::device_count()
                .map(|n| usize::try_from(n).unwrap_or(0))
                .map_err(|e| BackendError::CudaUnavailable(e.to_string()))
        })
        .unwrap_or(0)
    }

    /// Sets the watchdog timeout of one shard (every wait polls against it; see the module docs).
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// The watchdog timeout of one shard.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// Which GEMM this backend runs, and why when it is the fallback.
    pub fn gemm_engine(&self) -> &str {
        &self.gemm_note
    }

    /// The CUDA ordinal.
    pub fn ordinal(&self) -> usize {
        self.ordinal
    }

    /// The GPU's NVML monitor (`None` when NVML is unavailable).
    pub fn monitor(&self) -> Option<&GpuMonitor> {
        self.monitor.as_ref()
    }

    /// Why this GPU is quarantined, if it is.
    pub fn quarantined(&self) -> Option<String> {
        self.quarantine.lock().map_or_else(|p| p.into_inner().clone(), |q| q.clone())
    }

    /// Stats of the last shard the calling thread completed (so that threads running shards at once each
    /// read their own).
    pub fn last_stats(&self) -> Option<ShardStats> {
        let id = std::thread::current().id();
        self.last_stats.lock().ok().and_then(|s| s.get(&id).cloned())
    }

    /// Device seconds of one `n × n × n` GEMM alone (unchunked, this backend's engine, generated data, after a
    /// warm-up), averaged over `reps`: for benches comparing the pipeline's GEMM phase with the library alone.
    pub fn time_gemm(&self, n: u32, reps: u32) -> Result<f64, BackendError> {
        if let Some(reason) = self.quarantined() {
            return Err(BackendError::Quarantined { device: self.name.clone(), reason });
        }
        let d = Dims::new(n, n);
        let deadline = Instant::now() + self.timeout;
        let mut slot = self.slot();
        let result = guarded("timing the GEMM", || {
            let plan = self.plan(&slot, &d, n, n)?;
            slot.time_gemm(&self.ctx, &self.kernels, n, &plan, reps, deadline, &self.fallbacks)
                .map_err(|fail| self.failed(&mut slot, fail))
        });
        slot.release();
        result
    }

    /// The driver and libraries this backend loaded.
    pub fn libraries(&self) -> &CudaLibraries {
        &self.libraries
    }

    /// Versions, engine and fallbacks, for the agent's advert, metrics and status.
    pub fn status(&self) -> GpuStatus {
        GpuStatus {
            libraries: self.libraries.clone(),
            engine: self.engine,
            fallback: self.fallback.clone(),
            shape_fallbacks: self.fallbacks.shapes.load(Ordering::Relaxed),
        }
    }

    /// Runs several shards, two at a time (one per slot), so that consecutive shards overlap; results in order.
    pub fn run_shards(
        &self,
        shards: &[Shard],
        keep_rows: bool,
    ) -> Vec<Result<ShardOutput, BackendError>> {
        let next = AtomicUsize::new(0);
        let results: Vec<Mutex<Option<Result<ShardOutput, BackendError>>>> =
            shards.iter().map(|_| Mutex::new(None)).collect();
        std::thread::scope(|scope| {
            for _ in 0..SLOTS.min(shards.len()) {
                scope.spawn(|| {
                    loop {
                        let i = next.fetch_add(1, Ordering::Relaxed);
                        let Some(shard) = shards.get(i) else { break };
                        let out = self.run_shard(shard, keep_rows);
                        if let Ok(mut slot) = results[i].lock() {
                            *slot = Some(out);
                        }
                    }
                });
            }
        });
        results
            .into_iter()
            .map(|r| {
                r.into_inner().ok().flatten().unwrap_or_else(|| {
                    Err(BackendError::Cuda {
                        device: self.name.clone(),
                        reason: "a worker thread panicked".into(),
                    })
                })
            })
            .collect()
    }

    /// The Freivalds check's verdict: its cost, or the error (the GPU quarantined) naming the failing rows.
    fn verdict(
        &self,
        shard: &Shard,
        found: &freivalds::DeviceCheck,
        wall_seconds: f64,
    ) -> Result<CheckCost, BackendError> {
        if let Err(mismatch) = crate::freivalds::compare(&found.sums) {
            let err = BackendError::failed_check(&self.name, shard, &mismatch);
            self.quarantine(&err.to_string());
            return Err(err);
        }
        let secs = |s: f64| Duration::try_from_secs_f64(s).unwrap_or_default();
        Ok(CheckCost { check: secs(found.seconds), shard: secs(wall_seconds) })
    }

    fn quarantine(&self, reason: &str) {
        let mut q = self.quarantine.lock().unwrap_or_else(|p| p.into_inner());
        q.get_or_insert_with(|| reason.to_owned());
    }

    /// Which buffers `slot` keeps for a shard of `d` ([`memory::plan_buffers`]), or why it cannot run now.
    fn plan(
        &self,
        slot: &Slot,
        d: &Dims,
        n: u32,
        rows: u32,
    ) -> Result<memory::BufferPlan, BackendError> {
        let free = self.ctx.mem_get_info().map(|(free, _)| free as u64).map_err(|e| {
            BackendError::Cuda { device: self.name.clone(), reason: format!("memory info: {e}") }
        })?;
        // A little of the reserve stays free for the driver and cuBLASLt even when the device is full.
        // The check's scratch comes out of both the budget and what is free (see `memory::max_rows`).
        let scratch = freivalds::scratch_bytes(d);
        let usable = free.saturating_sub(RESERVED_BYTES / 4).saturating_sub(scratch);
        let budget = self.memory_bytes.saturating_sub(scratch);
        plan_buffers(slot.held(), d.buffer_bytes(), budget, usable).map_err(|no_room| match no_room
        {
            NoRoom::OverBudget { needed } => BackendError::ShardTooLarge {
                n,
                rows,
                needed: needed + scratch,
                available: self.memory_bytes,
                device: format!("{} {}", self.name, self.model),
            },
            NoRoom::DeviceFull { needed, available } => BackendError::OutOfMemory {
                device: self.name.clone(),
                reason: format!(
                    "{} bytes needed, {available} free on the device with this slot's own \
                     (another process or a desktop session holds the rest)",
                    needed + scratch
                ),
            },
        })
    }

    /// The error a failed run answers, after the slot and the backend have done what its class asks
    /// (memory given back, or the device quarantined and the buffers leaked).
    fn failed(&self, slot: &mut Slot, fail: Fail) -> BackendError {
        let device = self.name.clone();
        match fail {
            Fail::OutOfMemory(reason) => {
                slot.release();
                BackendError::OutOfMemory { device, reason }
            }
            Fail::Sticky(reason) => {
                self.quarantine(&format!("{reason} (the GPU needs a process restart)"));
                slot.abandon();
                BackendError::ContextLost { device, reason }
            }
            Fail::Transient(reason) | Fail::Fatal(reason) => {
                self.quarantine(&reason);
                slot.abandon();
                BackendError::Cuda { device, reason }
            }
            Fail::Timeout(phase) => {
                let seconds = self.timeout.as_secs_f64();
                self.quarantine(&format!("`{phase}` timed out after {seconds:.1} s"));
                slot.abandon();
                BackendError::Timeout { device, phase, seconds }
            }
        }
    }

    /// A free slot if there is one, else waits for the next one in turn.
    fn slot(&self) -> MutexGuard<'_, Slot> {
        for slot in &self.slots {
            if let Ok(guard) = slot.try_lock() {
                return guard;
            }
        }
        let i = self.next_slot.fetch_add(1, Ordering::Relaxed) % self.slots.len();
        self.slots[i].lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl Backend for CudaBackend {
    fn name(&self) -> &str {
        &self.name
    }

    fn info(&self) -> DeviceInfo {
        DeviceInfo {
            name: self.model.clone(),
            kind: BackendKind::Cuda,
            memory_bytes: self.memory_bytes,
            compute_units: self.compute_units,
        }
    }

    fn run_shard(&self, shard: &Shard, keep_rows: bool) -> Result<ShardOutput, BackendError> {
        shard.validate()?;
        if let Some(reason) = self.quarantined() {
            return Err(BackendError::Quarantined { device: self.name.clone(), reason });
        }
        let (n, rows) = (shard.challenge.matrix_size, shard.row_count());
        let d = Dims::new(n, rows);
        let deadline = Instant::now() + self.timeout;
        let energy_before = self.monitor.as_ref().and_then(GpuMonitor::energy_joules);
        let mut slot = self.slot();
        let result = guarded("running a shard", || {
            let mut attempt = 0;
            loop {
                // Before any work: what this slot holds is reused or freed, the rest must be free now.
                let plan = self.plan(&slot, &d, n, rows)?;
                let run = slot.run(
                    &self.ctx,
                    &self.kernels,
                    shard,
                    &plan,
                    keep_rows,
                    deadline,
                    &self.fallbacks,
                );
                match run {
                    Ok(out) => return Ok(out),
                    Err(Fail::Transient(why)) if attempt < fault::TRANSIENT_RETRIES => {
                        attempt += 1;
                        tracing::warn!(
                            gpu = self.ordinal,
                            attempt,
                            reason = %why,
                            "transient CUDA error: running the shard again"
                        );
                        // Work launched before the failure may still read the buffers: wait it out.
                        if let Err(fail) = slot.drain(deadline) {
                            return Err(self.failed(&mut slot, fail));
                        }
                    }
                    Err(fail) => return Err(self.failed(&mut slot, fail)),
                }
            }
        });
        drop(slot);
        let mut out = result.inspect_err(|e| {
            if matches!(e, BackendError::CudaUnavailable(_)) {
                self.quarantine(&e.to_string());
            }
        })?;
        if let (Some(before), Some(after)) =
            (energy_before, self.monitor.as_ref().and_then(GpuMonitor::energy_joules))
        {
            out.stats.energy_joules = Some((after - before).max(0.0));
        }
        let check = match out.check.take() {
            Some(found) => Some(self.verdict(shard, &found, out.stats.wall_seconds)?),
            None => None,
        };
        if let Ok(mut last) = self.last_stats.lock() {
            last.insert(std::thread::current().id(), out.stats);
        }
        Ok(ShardOutput { leaves: out.leaves, rows: out.rows, check })
    }

    fn keeps_rows_cheaply(&self) -> bool {
        false
    }

    fn concurrent_shards(&self) -> usize {
        SLOTS
    }

    /// What one slot's memory plan accepts ([`memory::max_rows`]): padded `i8` A and Bᵗ, `i32` C, the
    /// leaves and the Freivalds check's scratch within the slot's budget, not the CPU's layout.
    fn max_rows(&self, n: u32) -> u32 {
        memory::max_rows(n, self.memory_bytes)
    }

    fn last_stats(&self) -> Option<ShardStats> {
        Self::last_stats(self)
    }

    fn monitor(&self) -> Option<&GpuMonitor> {
        Self::monitor(self)
    }

    fn gpu_status(&self) -> Option<GpuStatus> {
        Some(self.status())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uuid_formats_like_nvidia_smi() {
        let mut u: sys::CUuuid = sys::CUuuid { bytes: [0; 16] };
        for (i, b) in u.bytes.iter_mut().enumerate() {
            *b = (i * 17) as _;
        }
        assert_eq!(uuid_string(&u), "GPU-00112233-4455-6677-8899-aabbccddeeff");
    }

    #[test]
    fn without_a_gpu_new_says_why() {
        if CudaBackend::device_count() == 0 {
            let err = CudaBackend::new(0).expect_err("no GPU here");
            let msg = err.to_string();
            assert!(msg.contains("cpu") || msg.contains("no cuda device"), "{msg}");
        }
    }
}
