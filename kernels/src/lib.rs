//! # cpc-kernels
//!
//! The compute side of synthetic-v1 (`../shared/spec/SYNTHETIC_V1.md`): given a challenge, a device
//! produces the row leaves `L_r = sha256(C[r] as little-endian i32)` of `C = A · B` for a range of rows.
//! `cpc-common` holds the readable definition (Philox, one element at a time); this crate holds the fast
//! paths that are tested against it, behind one trait so that the agent never cares which device it drives:
//!
//! - [`Backend`]: what a device does, shaped for [`Shard`]s (one iteration, rows `r0..r1`), so one job can be
//!   split over many devices and recombined by row index;
//! - [`BackendKind`] and [`open`]: which device, chosen at run time (`"cpu"` or `"cuda"`);
//! - [`cpu`]: the CPU backend: multi-threaded Philox generation, a cache-blocked exact `i8 × i8 → i32` GEMM
//!   (AVX-512 VNNI, AVX-VNNI or AVX2, the fastest the CPU has, a portable scalar kernel otherwise; see
//!   [`cpu::Kernel`]) and SHA-256 per row;
//! - [`result_hash`]: a whole challenge on one backend, as the chain wants it.
//! - [`cancel`]: the [`CancelToken`] a caller sets to stop a shard it no longer wants
//!   ([`Backend::run_shard_cancellable`]).
//! - [`freivalds`]: Freivalds' check of a shard's product (`C·r == A·(B·r)`), run by the device before it
//!   hashes when the shard carries a [`CheckSeed`] (the farm's shards always do; `docs/VERIFICATION.md`).
//! - [`gpu`]: plain GPU types (per-shard stats, NVML telemetry with DCGM labels) that compile with or
//!   without the `cuda` feature.
//! - [`bench`](mod@bench): per-phase and end-to-end timings of whole products on one device, with the GEMM alone on
//!   CUDA (what `cpc-coordinator bench` prints).
//!
//! # Feature flags
//!
//! - `cuda`: the CUDA backend (cudarc with dynamic loading, so it builds without a GPU or toolkit; NVRTC
//!   kernels, cuBLASLt int8 GEMM, NVML telemetry; see `src/cuda/mod.rs`). Without it [`CudaBackend`] is a
//!   stand-in with the same API whose constructor answers [`BackendError::CudaNotCompiled`] ("built
//!   without CUDA support: rebuild with --features cuda"), so callers never write `#[cfg(feature = "cuda")]`
//!   themselves.

use cpc_common::{
    hashing::Digest32,
    merkle::{MerkleTree, merkle_root},
    synthetic::Challenge,
};
use std::{fmt, ops::Range, str::FromStr, time::Duration};

pub mod bench;
pub mod cancel;
pub mod cpu;
mod error;
pub mod freivalds;
pub mod gpu;

#[cfg(feature = "cuda")]
mod cuda;
#[cfg(not(feature = "cuda"))]
mod dummy_cuda;
#[cfg(not(feature = "cuda"))]
use dummy_cuda as cuda;

pub use cancel::CancelToken;
pub use cpu::CpuBackend;
pub use cuda::CudaBackend;
pub use error::BackendError;
pub use freivalds::{CheckCost, CheckSeed};

/// One unit of work: rows `r0..r1` of `C = A · B` for one iteration of a challenge.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Shard {
    /// The challenge (seed, n, iterations).
    pub challenge: Challenge,
    /// Which product: `A = matrix 2t`, `B = matrix 2t + 1`.
    pub iteration: u32,
    /// Rows `r0..r1` of C.
    pub rows: Range<u32>,
    /// The seed of the Freivalds check the device runs on the product before hashing it (none: no check).
    /// [`Shard::new`] leaves it empty; [`Shard::with_check`] sets it.
    pub check: Option<CheckSeed>,
}

impl Shard {
    /// A shard, checked: rows non-empty and within `0..n`, iteration below the challenge's count.
    pub fn new(
        challenge: Challenge,
        iteration: u32,
        rows: Range<u32>,
    ) -> Result<Self, BackendError> {
        let shard = Self { challenge, iteration, rows, check: None };
        shard.validate()?;
        Ok(shard)
    }

    /// The same shard, checked with Freivalds' vector of `seed` before its rows are hashed.
    pub fn with_check(mut self, seed: CheckSeed) -> Self {
        self.check = Some(seed);
        self
    }

    /// Every row of one iteration.
    pub fn whole(challenge: Challenge, iteration: u32) -> Result<Self, BackendError> {
        let n = challenge.matrix_size();
        Self::new(challenge, iteration, 0..n)
    }

    /// Checks the bounds [`Shard::new`] checks (the fields are public, so backends check again). The
    /// challenge itself is valid by construction ([`Challenge::new`]); the rows and iteration are checked
    /// against it.
    pub fn validate(&self) -> Result<(), BackendError> {
        let n = self.challenge.matrix_size();
        if self.rows.start >= self.rows.end {
            return Err(BackendError::InvalidShard(format!("rows {:?} are empty", self.rows)));
        }
        if self.rows.end > n {
            return Err(BackendError::InvalidShard(format!(
                "rows {:?} go past the matrix size {n}",
                self.rows
            )));
        }
        if self.iteration >= self.challenge.iterations() {
            return Err(BackendError::InvalidShard(format!(
                "iteration {} is not below the challenge's {} iterations",
                self.iteration,
                self.challenge.iterations()
            )));
        }
        Ok(())
    }

    /// Number of rows.
    pub fn row_count(&self) -> u32 {
        self.rows.end.saturating_sub(self.rows.start)
    }

    /// Bytes this shard needs on a device (see [`shard_memory_bytes`]).
    pub fn memory_bytes(&self) -> u64 {
        shard_memory_bytes(self.challenge.matrix_size(), self.row_count())
    }
}

/// What a shard produced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShardOutput {
    /// Leaves `L_r0 .. L_{r1-1}`, in row order.
    pub leaves: Vec<Digest32>,
    /// The rows of C, row-major (`rows × n`), when the caller asked to keep them (for spot checks).
    pub rows: Option<Vec<i32>>,
    /// What the shard's Freivalds check cost, when the shard asked for one and the backend ran it (a failed
    /// check is an error, [`BackendError::FreivaldsMismatch`], not an output).
    pub check: Option<CheckCost>,
}

/// Which kind of device.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum BackendKind {
    /// The host CPU.
    Cpu,
    /// An NVIDIA GPU.
    Cuda,
}

impl BackendKind {
    /// The lower-case name (`"cpu"`, `"cuda"`).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Cpu => "cpu",
            Self::Cuda => "cuda",
        }
    }
}

impl fmt::Display for BackendKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for BackendKind {
    type Err = BackendError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim().to_ascii_lowercase().as_str() {
            "cpu" => Ok(Self::Cpu),
            "cuda" | "gpu" => Ok(Self::Cuda),
            _ => Err(BackendError::UnknownKind(s.to_owned())),
        }
    }
}

/// What a device is and how much it can take.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceInfo {
    /// Human-readable name (CPU model and SIMD kernel, or GPU model).
    pub name: String,
    /// Which kind of device.
    pub kind: BackendKind,
    /// Bytes available for shards (`u64::MAX` when the device cannot tell).
    pub memory_bytes: u64,
    /// Parallel units: worker threads on a CPU, streaming multiprocessors on a GPU.
    pub compute_units: u32,
}

/// A device that computes shards. Implementations are exact: every backend returns the same leaves.
pub trait Backend: Send + Sync + fmt::Debug {
    /// Short name for logs (e.g. `cpu-avx2`).
    fn name(&self) -> &str;
    /// What the device is and how much memory it has for shards.
    fn info(&self) -> DeviceInfo;
    /// Computes one shard: its row leaves, and the rows of C themselves when `keep_rows`.
    fn run_shard(&self, shard: &Shard, keep_rows: bool) -> Result<ShardOutput, BackendError>;
    /// [`Backend::run_shard`], stopping early with [`BackendError::Cancelled`] once `cancel` is set, for
    /// backends that can: by default the shard runs to its end whatever `cancel` says (a CPU or GPU product
    /// in progress finishes; the caller drops its answer).
    fn run_shard_cancellable(
        &self,
        shard: &Shard,
        keep_rows: bool,
        cancel: &CancelToken,
    ) -> Result<ShardOutput, BackendError> {
        let _ = cancel;
        self.run_shard(shard, keep_rows)
    }
    /// The kind's name the agent advertises and labels the device's metrics with: that of
    /// [`DeviceInfo::kind`] by default. Stand-ins that compute nothing (simulated and no-op devices) name
    /// themselves, so that no report or dashboard takes them for a CPU.
    fn kind_name(&self) -> &'static str {
        self.info().kind.as_str()
    }
    /// A throughput the backend knows without measuring, in `2·rows·n²` operations per second (a simulated
    /// device's configured speed): the agent advertises it and skips the start-up measurement. `None` by
    /// default: real devices are measured.
    fn declared_ops_per_sec(&self) -> Option<f64> {
        None
    }
    /// Whether `keep_rows` costs next to nothing: the rows are in host memory anyway (the CPU, the default).
    /// `false` for a GPU, where C stays on the device and keeping its rows would copy all of them across
    /// PCIe (1 GiB for a whole n = 16384 product, several times the compute): callers keep no rows and
    /// recompute the few a spot check asks for as one-row shards, which cost the device next to nothing.
    fn keeps_rows_cheaply(&self) -> bool {
        true
    }
    /// `Some(hold)` when the backend answers `shard` sooner than handing it to another thread would take
    /// (a thread wake-up each way, some microseconds): a simulated device's microsecond hold, a device that
    /// computes nothing. The agent then runs the shard on its own thread instead of the device's worker,
    /// with no watchdog (nothing in such a call can hang).
    ///
    /// Such a call returns without spending the device's time for the shard: `hold` is that time (zero
    /// for a device that computes nothing). The caller lets the answer go no sooner than `hold` after the
    /// call began, and serves the host's other devices meanwhile, as a host's devices run side by side.
    /// `None` by default, and for every backend that computes.
    fn answers_at_once(&self, shard: &Shard) -> Option<Duration> {
        let _ = shard;
        None
    }
    /// How many `run_shard` calls from different threads the device overlaps usefully: 1 by default (the CPU
    /// backend already uses every core for one shard); [`gpu::SLOTS`] on a GPU, where one shard's generation
    /// and hashing overlap the other's GEMM, each shard within the memory of [`DeviceInfo::memory_bytes`].
    fn concurrent_shards(&self) -> usize {
        1
    }
    /// [`Backend::run_shard_cancellable`] for an answer by its root: the output without its leaves, and the
    /// Merkle tree over them (an agent keeps the tree for the rows a spot check asks for with their paths).
    /// By default the tree is built from the leaves with SHA-256 on the calling thread (the device's worker),
    /// about 0.1 ms at n = 1024; a backend that knows its tree without its leaves (the stand-ins, whose
    /// leaves are all equal) answers it directly.
    fn run_shard_for_root(
        &self,
        shard: &Shard,
        keep_rows: bool,
        cancel: &CancelToken,
    ) -> Result<(ShardOutput, MerkleTree), BackendError> {
        let mut output = self.run_shard_cancellable(shard, keep_rows, cancel)?;
        let tree = MerkleTree::new(std::mem::take(&mut output.leaves));
        Ok((output, tree))
    }
    /// The most rows of one shard at matrix size `n` the device holds (what its agent advertises, so the
    /// coordinator never applies one device's memory layout to another): by default what fits
    /// [`DeviceInfo::memory_bytes`] as the CPU lays a shard out ([`max_rows_for_memory`]).
    fn max_rows(&self, n: u32) -> u32 {
        max_rows_for_memory(n, self.info().memory_bytes)
    }
    /// What the last shard the calling thread completed cost, for backends that measure it (the CUDA
    /// backend: device time, achieved tera-ops per second, joules); `None` by default.
    fn last_stats(&self) -> Option<gpu::ShardStats> {
        None
    }
    /// The device's NVML monitor, for backends that have one (the CUDA backend, when NVML loads); `None` by
    /// default, and always in builds without the `cuda` feature.
    fn monitor(&self) -> Option<&gpu::GpuMonitor> {
        None
    }
    /// The CUDA driver and library versions, GEMM engine and fallbacks of a GPU backend, for the agent's
    /// advert, metrics and status; `None` by default.
    fn gpu_status(&self) -> Option<gpu::GpuStatus> {
        None
    }
}

/// Bytes a shard of `rows` rows at matrix size `n` needs: its rows of A, all of B and its rows of C.
///
/// Counted as the CPU backend lays them out: A as `i16` pairs (2 bytes per element, rows padded to groups
/// of 6, n to even), B as `i8` (padded to whole 16-column groups and an even number of rows), C as `i32`
/// (`rows × n × 4`). An upper bound for plain `i8`/`i8`/`i32` storage too.
pub fn shard_memory_bytes(n: u32, rows: u32) -> u64 {
    let (n, rows) = (u64::from(n), u64::from(rows));
    let kpairs = n.div_ceil(2);
    let a = rows.div_ceil(6) * 6 * kpairs * 4;
    let b = n.div_ceil(16) * 16 * kpairs * 2;
    a + b + rows * n * 4
}

/// The largest number of rows at matrix size `n` that fits in `memory_bytes` (0 when not even one does).
pub fn max_rows_for_memory(n: u32, memory_bytes: u64) -> u32 {
    let fixed = shard_memory_bytes(n, 0);
    let per_row = u64::from(n).div_ceil(2) * 4 + u64::from(n) * 4;
    let mut rows =
        u32::try_from((memory_bytes.saturating_sub(fixed) / per_row.max(1)).min(u64::from(n)))
            .unwrap_or(n);
    while rows > 0 && shard_memory_bytes(n, rows) > memory_bytes {
        rows -= 1;
    }
    rows
}

/// The `result_hash` of a whole challenge on one backend: every iteration's leaves, their Merkle root, and
/// with more than one iteration the Merkle root over the roots. Each iteration runs as one shard, or as
/// several when the device cannot hold all n rows at once ([`Backend::max_rows`]).
pub fn result_hash(backend: &dyn Backend, challenge: &Challenge) -> Result<Digest32, BackendError> {
    let n = challenge.matrix_size();
    let step = backend.max_rows(n).max(1);
    let mut roots = Vec::with_capacity(challenge.iterations() as usize);
    for iteration in 0..challenge.iterations() {
        let mut leaves = Vec::with_capacity(n as usize);
        let mut r0 = 0;
        while r0 < n {
            let r1 = r0.saturating_add(step).min(n);
            let shard = Shard::new(challenge.clone(), iteration, r0..r1)?;
            leaves.extend(backend.run_shard(&shard, false)?.leaves);
            r0 = r1;
        }
        roots.push(merkle_root(&leaves));
    }
    Ok(Challenge::combine_iterations(&roots))
}

/// What a panic caught around a backend call says (its message, when it carries one), for the error that
/// reports it.
pub fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
    panic
        .downcast_ref::<String>()
        .cloned()
        .or_else(|| panic.downcast_ref::<&str>().map(|s| (*s).to_owned()))
        .unwrap_or_else(|| "unknown panic".into())
}

/// Opens device `device` of kind `kind`. The CPU is device 0 and uses every core; CUDA needs the `cuda`
/// feature (without it this answers [`BackendError::CudaNotCompiled`]).
pub fn open(kind: BackendKind, device: usize) -> Result<Box<dyn Backend>, BackendError> {
    match kind {
        BackendKind::Cpu => Ok(Box::new(open_cpu(device)?)),
        BackendKind::Cuda => Ok(Box::new(CudaBackend::new(device)?)),
    }
}

/// Like [`open`], with the CPU backend's GEMM kernel forced to `cpu_kernel` when given (`--kernel`):
/// [`BackendError::KernelUnsupported`] when this CPU cannot run it, [`BackendError::KernelForCuda`] when
/// the device is a GPU.
pub fn open_with_kernel(
    kind: BackendKind,
    device: usize,
    cpu_kernel: Option<cpu::Kernel>,
) -> Result<Box<dyn Backend>, BackendError> {
    match (kind, cpu_kernel) {
        (BackendKind::Cpu, kernel) => Ok(Box::new(open_cpu_with(device, kernel)?)),
        (BackendKind::Cuda, None) => open(kind, device),
        (BackendKind::Cuda, Some(kernel)) => Err(BackendError::KernelForCuda(kernel.as_str())),
    }
}

/// The CPU as device `device`: there is one, device 0, using every core.
pub(crate) fn open_cpu(device: usize) -> Result<CpuBackend, BackendError> {
    open_cpu_with(device, None)
}

/// [`open_cpu`] with the kernel forced when given.
pub(crate) fn open_cpu_with(
    device: usize,
    kernel: Option<cpu::Kernel>,
) -> Result<CpuBackend, BackendError> {
    if device != 0 {
        return Err(BackendError::NoDevice { kind: BackendKind::Cpu, index: device, found: 1 });
    }
    let backend = CpuBackend::new(0)?;
    match kernel {
        Some(kernel) => backend.with_kernel(kernel),
        None => Ok(backend),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn challenge(n: u32, iterations: u32) -> Challenge {
        Challenge::new("unit", n, iterations).expect("valid challenge")
    }

    #[test]
    fn a_caught_panic_says_its_message() {
        let caught = |f: fn()| std::panic::catch_unwind(f).expect_err("panicked");
        assert_eq!(panic_message(caught(|| panic!("static")).as_ref()), "static");
        assert_eq!(panic_message(caught(|| panic!("formatted {}", 7)).as_ref()), "formatted 7");
        assert_eq!(panic_message(caught(|| std::panic::panic_any(7u8)).as_ref()), "unknown panic");
    }

    #[test]
    fn shard_bounds() {
        assert!(Shard::new(challenge(8, 1), 0, 0..8).is_ok());
        assert!(Shard::new(challenge(8, 1), 0, 3..3).is_err());
        assert!(Shard::new(challenge(8, 1), 0, 0..9).is_err());
        assert!(Shard::new(challenge(8, 2), 2, 0..8).is_err());
        #[allow(clippy::reversed_empty_ranges)] // the point: a reversed range must be refused
        let raw = Shard { challenge: challenge(8, 1), iteration: 0, rows: 5..2, check: None };
        assert!(matches!(raw.validate(), Err(BackendError::InvalidShard(_))));
    }

    #[test]
    fn kind_round_trips() {
        for kind in [BackendKind::Cpu, BackendKind::Cuda] {
            assert_eq!(kind.to_string().parse::<BackendKind>().expect("parses"), kind);
        }
        assert!("tpu".parse::<BackendKind>().is_err());
    }

    #[test]
    fn memory_accounting() {
        assert_eq!(shard_memory_bytes(1024, 1026), 1026 * 1024 * 6 + 1024 * 1024);
        assert_eq!(shard_memory_bytes(3, 1), 6 * 2 * 4 + 16 * 4 + 12);
        assert_eq!(max_rows_for_memory(1024, u64::MAX), 1024);
        assert_eq!(max_rows_for_memory(1024, shard_memory_bytes(1024, 12)), 12);
        assert_eq!(max_rows_for_memory(1024, shard_memory_bytes(1024, 12) - 1), 11);
        assert_eq!(max_rows_for_memory(1024, 10), 0);
        for n in [1, 7, 100, 1023] {
            for rows in [1, 5, 6, 7, n] {
                let fit = max_rows_for_memory(n, shard_memory_bytes(n, rows));
                assert!(
                    fit >= rows.min(n) && shard_memory_bytes(n, fit) <= shard_memory_bytes(n, rows),
                    "n={n} rows={rows}"
                );
            }
        }
    }

    #[test]
    fn cuda_without_feature_says_so() {
        if cfg!(not(feature = "cuda")) {
            let err = open(BackendKind::Cuda, 0).expect_err("no cuda");
            assert!(err.to_string().contains("rebuild with --features cuda"), "{err}");
        }
    }
}
