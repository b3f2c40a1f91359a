//! Plain GPU types shared by the CUDA backend and its stand-in, so that callers (the agent's per-GPU actor,
//! its metrics, the bench) compile the same way with or without the `cuda` feature:
//!
//! - [`GemmEngine`]: which GEMM a [`crate::CudaBackend`] runs;
//! - [`ShardStats`]: what one shard cost on a GPU (per phase times, achieved tera-ops per second, joules);
//! - [`GpuTelemetry`]: one NVML sample of one GPU, with [`dcgm_labels`] to join our metrics with NVIDIA's
//!   DCGM exporter (`gpu`, `UUID`, `modelName`, `Hostname`);
//! - [`GpuMonitor`]: the NVML sampler (real with `cuda`, a stand-in answering
//!   [`crate::BackendError::CudaNotCompiled`] without);
//! - [`gpu_shard_bytes`], [`SLOTS`], [`DEFAULT_TIMEOUT`]: how the CUDA backend sizes and bounds shards.

pub use crate::cuda::{DEFAULT_TIMEOUT, GpuMonitor, SLOTS, gpu_shard_bytes};
use std::fmt;

/// Which exact int8 GEMM the CUDA backend runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum GemmEngine {
    /// cuBLASLt, `CUBLAS_COMPUTE_32I`, int8 tensor cores (the default; falls back to [`GemmEngine::Dp4a`] when
    /// libcublasLt cannot be loaded or has no algorithm for a shape).
    #[default]
    CublasLt,
    /// The NVRTC-compiled `__dp4a` kernel: slower, no library needed. Also for parity tests of the fallback.
    Dp4a,
}

impl GemmEngine {
    /// Lower-case name (`"cublaslt"`, `"dp4a"`).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::CublasLt => "cublaslt",
            Self::Dp4a => "dp4a",
        }
    }
}

impl fmt::Display for GemmEngine {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What one shard cost on a GPU, measured with CUDA events (device time) and NVML's energy counter.
#[derive(Debug, Clone, PartialEq)]
pub struct ShardStats {
    /// Matrix size n.
    pub n: u32,
    /// Rows of C computed.
    pub rows: u32,
    /// Integer operations of the product: `2 · rows · n · n` (one multiply and one add per term).
    pub ops: u64,
    /// Device seconds generating A's rows and (unless cached from the previous shard) B.
    pub generate_seconds: f64,
    /// Device seconds of the GEMM stream (row chunks; hashing of earlier chunks overlaps it).
    pub gemm_seconds: f64,
    /// Device seconds of hashing left after the last GEMM chunk, leaves copy included.
    pub hash_tail_seconds: f64,
    /// Device seconds end to end (first generation to last leaf copied).
    pub device_seconds: f64,
    /// Host wall-clock seconds of the whole call (allocation, launch, waits, copies).
    pub wall_seconds: f64,
    /// Joules the GPU used during the call (NVML total-energy counter), when NVML has it.
    pub energy_joules: Option<f64>,
    /// The GEMM that ran.
    pub gemm_engine: GemmEngine,
    /// Whether B came from the previous shard (same seed, iteration and n) instead of being generated.
    pub b_cached: bool,
}

impl ShardStats {
    /// Achieved tera-ops per second end to end (device time).
    pub fn tera_ops_per_second(&self) -> f64 {
        tops(self.ops, self.device_seconds)
    }

    /// Achieved tera-ops per second of the GEMM phase alone.
    pub fn gemm_tera_ops_per_second(&self) -> f64 {
        tops(self.ops, self.gemm_seconds)
    }
}

/// `ops / seconds / 10^12`, 0 for a zero time.
pub fn tops(ops: u64, seconds: f64) -> f64 {
    if seconds > 0.0 { ops as f64 / seconds / 1e12 } else { 0.0 }
}

/// One NVML sample of one GPU. `None` where the GPU or driver does not report a value.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct GpuTelemetry {
    /// NVML index (DCGM's `gpu` label).
    pub gpu: u32,
    /// `GPU-…` UUID (DCGM's `UUID` label).
    pub uuid: String,
    /// Product name, e.g. `NVIDIA H100 80GB HBM3` (DCGM's `modelName` label).
    pub model_name: String,
    /// Host name (DCGM's `Hostname` label).
    pub hostname: String,
    /// Fraction of the last sample period in which a kernel ran (0–1).
    pub gpu_utilization_ratio: Option<f64>,
    /// Fraction of the last sample period in which device memory was read or written (0–1).
    pub memory_utilization_ratio: Option<f64>,
    /// Device memory in use, bytes.
    pub memory_used_bytes: Option<u64>,
    /// Device memory free, bytes.
    pub memory_free_bytes: Option<u64>,
    /// Device memory installed, bytes.
    pub memory_total_bytes: Option<u64>,
    /// GPU die temperature, degrees Celsius.
    pub temperature_celsius: Option<f64>,
    /// Power draw, watts.
    pub power_watts: Option<f64>,
    /// Enforced power limit, watts.
    pub power_limit_watts: Option<f64>,
    /// Energy used since the driver loaded, joules (a counter).
    pub energy_joules_total: Option<f64>,
    /// SM clock, hertz.
    pub sm_clock_hz: Option<u64>,
    /// Memory clock, hertz.
    pub memory_clock_hz: Option<u64>,
    /// Graphics clock, hertz.
    pub graphics_clock_hz: Option<u64>,
    /// NVML clock-throttle reasons bitmask (DCGM's `DCGM_FI_DEV_CLOCK_THROTTLE_REASONS`); see
    /// [`GpuTelemetry::throttle_reason_names`].
    pub throttle_reasons: Option<u64>,
    /// PCIe replay counter (link errors retried).
    pub pcie_replays_total: Option<u64>,
    /// Critical Xid errors seen since the monitor opened (a counter).
    pub xid_errors_total: u64,
    /// The last Xid error code seen, if any.
    pub last_xid: Option<u64>,
}

/// NVML throttle-reason bits (`nvmlClocksThrottleReason*` in `nvml.h`) and their names.
pub const THROTTLE_REASONS: [(u64, &str); 9] = [
    (0x1, "gpu_idle"),
    (0x2, "applications_clocks_setting"),
    (0x4, "sw_power_cap"),
    (0x8, "hw_slowdown"),
    (0x10, "sync_boost"),
    (0x20, "sw_thermal_slowdown"),
    (0x40, "hw_thermal_slowdown"),
    (0x80, "hw_power_brake_slowdown"),
    (0x100, "display_clock_setting"),
];

impl GpuTelemetry {
    /// The DCGM-compatible label set of this GPU.
    pub fn labels(&self) -> [(&'static str, String); 4] {
        dcgm_labels(self.gpu, &self.uuid, &self.model_name, &self.hostname)
    }

    /// Names of the active throttle reasons (empty when none, or unknown).
    pub fn throttle_reason_names(&self) -> Vec<&'static str> {
        let bits = self.throttle_reasons.unwrap_or(0);
        THROTTLE_REASONS.iter().filter(|(bit, _)| bits & bit != 0).map(|(_, name)| *name).collect()
    }
}

/// The labels NVIDIA's DCGM exporter puts on every GPU series (`gpu`, `UUID`, `modelName`, `Hostname`), so
/// dashboards can join our metrics with DCGM's on them.
pub fn dcgm_labels(
    gpu: u32,
    uuid: &str,
    model_name: &str,
    hostname: &str,
) -> [(&'static str, String); 4] {
    [
        ("gpu", gpu.to_string()),
        ("UUID", uuid.to_owned()),
        ("modelName", model_name.to_owned()),
        ("Hostname", hostname.to_owned()),
    ]
}

/// This host's name as DCGM reports it (the kernel's hostname), `"unknown"` when unreadable.
pub fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|s| s.trim().to_owned())
        .filter(|s| !s.is_empty())
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_else(|| "unknown".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_match_dcgm() {
        let t = GpuTelemetry {
            gpu: 3,
            uuid: "GPU-1234".into(),
            model_name: "NVIDIA H100 80GB HBM3".into(),
            hostname: "node-7".into(),
            throttle_reasons: Some(0x4 | 0x40),
            ..GpuTelemetry::default()
        };
        let labels = t.labels();
        assert_eq!(labels[0], ("gpu", "3".into()));
        assert_eq!(labels[1].0, "UUID");
        assert_eq!(labels[2].0, "modelName");
        assert_eq!(labels[3], ("Hostname", "node-7".into()));
        assert_eq!(t.throttle_reason_names(), ["sw_power_cap", "hw_thermal_slowdown"]);
    }

    #[test]
    fn tops_of_a_shard() {
        assert_eq!(tops(2_000_000_000_000, 2.0), 1.0);
        assert_eq!(tops(1, 0.0), 0.0);
    }
}
