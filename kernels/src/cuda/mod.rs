//! The CUDA backend (feature `cuda`): one [`CudaBackend`] per GPU, everything on the device.
//!
//! A shard runs as: Philox generation of its rows of A and of all of B straight into device memory (B stored
//! transposed, so the GEMM needs no transpose; B is kept for the next shard of the same product), an exact
//! `i8 × i8 → i32` GEMM ([`gemm`]: cuBLASLt `CUBLAS_COMPUTE_32I`, or the NVRTC dp4a kernel), and SHA-256
//! per row of C; only the 32-byte leaves come back (rows of C only when asked for, for spot checks).
//!
//! The module is split by concern. The backend itself: this file holds its type, constants and
//! accessors and the [`Backend`] impl; [`open`] opens a GPU (driver and NVRTC checks, context, slots,
//! engine, budget); [`run`] runs shards on its slots (slot choice, memory plan, retries, the Freivalds
//! verdict, per-thread stats); [`health`] says what a failure does to it (quarantine, the operator's
//! error). Below it: [`slot`] runs one shard (streams, buffers, the chunked pipeline), [`memory`] decides
//! which buffers a slot keeps, [`fault`] classifies a failed call, [`freivalds`] the check's kernels,
//! [`driver`] which driver and libraries were loaded, [`gemm`] the cuBLASLt call, [`module`] the NVRTC
//! kernels, [`telemetry`] NVML.
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
mod health;
mod memory;
mod module;
mod open;
mod run;
mod slot;
mod telemetry;

pub use telemetry::GpuMonitor;

use crate::{
    Backend, BackendError, BackendKind, DeviceInfo, Shard, ShardOutput,
    gpu::{CudaLibraries, GemmEngine, GpuStatus, ShardStats},
};
use cudarc::driver::CudaContext;
use module::Kernels;
use slot::{Dims, FallbackLog, Slot};
use std::{
    collections::HashMap,
    sync::{
        Arc, Mutex,
        atomic::{AtomicUsize, Ordering},
    },
    thread::ThreadId,
    time::Duration,
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

impl CudaBackend {
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
        self.run_on_slot(shard, keep_rows)
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
