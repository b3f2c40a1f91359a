//! Stand-in for the CUDA backend in builds without the `cuda` feature: the same API as `src/cuda/`, and
//! constructors that tell the operator how to get the real one (candle's `dummy_cuda_backend` pattern).
//! Keep every public item here in sync with `src/cuda/mod.rs` and `src/cuda/telemetry.rs`.

use crate::{
    Backend, BackendError, DeviceInfo, Shard, ShardOutput,
    gpu::{CudaLibraries, GemmEngine, GpuStatus, GpuTelemetry, ShardStats},
};
use std::time::Duration;

/// Shards that can be in flight on one GPU at once (as in the real backend).
pub const SLOTS: usize = 2;
/// Default watchdog timeout of one shard (as in the real backend).
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(120);
/// Rows per GEMM chunk (as in the real backend).
pub const CHUNK_ROWS: u32 = 4096;

/// Device bytes a shard of `rows` rows at matrix size `n` would need on a GPU (same formula as the real
/// backend: every dimension padded to 64; A and Bᵗ as `i8`, C as `i32`, 32 bytes of leaf per padded row).
pub fn gpu_shard_bytes(n: u32, rows: u32) -> u64 {
    let pad = |x: u32| u64::from(x.div_ceil(64) * 64);
    let (rows_pad, npad) = (pad(rows), pad(n));
    rows_pad * npad + npad * npad + 4 * rows_pad * npad + 32 * rows_pad
}

/// The CUDA backend; this build has none, so no value of this type can exist.
#[derive(Debug)]
pub enum CudaBackend {}

impl CudaBackend {
    /// Always [`BackendError::CudaNotCompiled`]: rebuild with `--features cuda`.
    pub fn new(_device: usize) -> Result<Self, BackendError> {
        Err(BackendError::CudaNotCompiled)
    }

    /// Always [`BackendError::CudaNotCompiled`]: rebuild with `--features cuda`.
    pub fn with_engine(_device: usize, _engine: GemmEngine) -> Result<Self, BackendError> {
        Err(BackendError::CudaNotCompiled)
    }

    /// Number of visible CUDA devices: none in a build without CUDA.
    pub fn device_count() -> usize {
        0
    }

    /// Sets the watchdog timeout of one shard.
    pub fn with_timeout(self, _timeout: Duration) -> Self {
        match self {}
    }

    /// The watchdog timeout of one shard.
    pub fn timeout(&self) -> Duration {
        match *self {}
    }

    /// Which GEMM this backend runs.
    pub fn gemm_engine(&self) -> &str {
        match *self {}
    }

    /// The CUDA ordinal.
    pub fn ordinal(&self) -> usize {
        match *self {}
    }

    /// The GPU's NVML monitor.
    pub fn monitor(&self) -> Option<&GpuMonitor> {
        match *self {}
    }

    /// Why this GPU is quarantined, if it is.
    pub fn quarantined(&self) -> Option<String> {
        match *self {}
    }

    /// Stats of the last shard that completed.
    pub fn last_stats(&self) -> Option<ShardStats> {
        match *self {}
    }

    /// Device seconds of one `n × n × n` GEMM alone.
    pub fn time_gemm(&self, _n: u32, _reps: u32) -> Result<f64, BackendError> {
        match *self {}
    }

    /// The driver and libraries this backend loaded.
    pub fn libraries(&self) -> &CudaLibraries {
        match *self {}
    }

    /// Versions, engine and fallbacks.
    pub fn status(&self) -> GpuStatus {
        match *self {}
    }

    /// Runs several shards, two at a time.
    pub fn run_shards(
        &self,
        _shards: &[Shard],
        _keep_rows: bool,
    ) -> Vec<Result<ShardOutput, BackendError>> {
        match *self {}
    }
}

impl Backend for CudaBackend {
    fn name(&self) -> &str {
        match *self {}
    }

    fn info(&self) -> DeviceInfo {
        match *self {}
    }

    fn run_shard(&self, _shard: &Shard, _keep_rows: bool) -> Result<ShardOutput, BackendError> {
        match *self {}
    }

    fn keeps_rows_cheaply(&self) -> bool {
        match *self {}
    }

    fn concurrent_shards(&self) -> usize {
        match *self {}
    }
}

/// The NVML sampler; this build has none, so no value of this type can exist.
#[derive(Debug)]
pub enum GpuMonitor {}

impl GpuMonitor {
    /// Always [`BackendError::CudaNotCompiled`].
    pub fn open(_index: u32) -> Result<Self, BackendError> {
        Err(BackendError::CudaNotCompiled)
    }

    /// Always [`BackendError::CudaNotCompiled`].
    pub fn open_by_uuid(_uuid: &str) -> Result<Self, BackendError> {
        Err(BackendError::CudaNotCompiled)
    }

    /// Always [`BackendError::CudaNotCompiled`].
    pub fn all() -> Result<Vec<Self>, BackendError> {
        Err(BackendError::CudaNotCompiled)
    }

    /// NVML index.
    pub fn index(&self) -> u32 {
        match *self {}
    }

    /// `GPU-…` UUID.
    pub fn uuid(&self) -> &str {
        match *self {}
    }

    /// Product name.
    pub fn model_name(&self) -> &str {
        match *self {}
    }

    /// Energy used since the driver loaded, joules.
    pub fn energy_joules(&self) -> Option<f64> {
        match *self {}
    }

    /// One sample of every reading.
    pub fn sample(&self) -> GpuTelemetry {
        match *self {}
    }
}
