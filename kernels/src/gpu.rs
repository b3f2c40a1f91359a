//! Plain GPU types shared by the CUDA backend and its stand-in, so that callers (the agent's per-GPU actor,
//! its metrics, the bench) compile the same way with or without the `cuda` feature:
//!
//! - [`GemmEngine`]: which GEMM a [`crate::CudaBackend`] runs;
//! - [`ShardStats`]: what one shard cost on a GPU (per phase times, achieved tera-ops per second, joules);
//! - [`GpuTelemetry`]: one NVML sample of one GPU, with [`dcgm_labels`] to join our metrics with NVIDIA's
//!   DCGM exporter (`gpu`, `UUID`, `modelName`, `Hostname`);
//! - [`GpuMonitor`]: the NVML sampler (real with `cuda`, a stand-in answering
//!   [`crate::BackendError::CudaNotCompiled`] without);
//! - [`gpu_shard_bytes`], [`SLOTS`], [`DEFAULT_TIMEOUT`], [`CHUNK_ROWS`]: how the CUDA backend sizes, bounds
//!   and chunks shards;
//! - [`CudaVersion`], [`CudaLibraries`], [`check_compatibility`]: which driver and libraries the backend
//!   loaded, and whether they work together (a pure decision, tested without a GPU), and [`GpuStatus`]:
//!   what the agent advertises and exports about them.
//!
//! # Drivers and libraries
//!
//! The backend needs a CUDA 12 or 13 driver ([`MIN_DRIVER`]: R525 and later; operators run R535, R550,
//! R570, R580) and loads NVRTC and cuBLASLt at run time, whichever major version is installed. A library
//! of a newer major version than the driver (CUDA 13's NVRTC or cuBLASLt on an R535 driver, which is CUDA
//! 12.2) cannot run there: NVRTC's code would not load, so the backend refuses to open and says which
//! package to install; cuBLASLt would fail, so the GEMM falls back to the dp4a kernel, loudly. Within a
//! major version, a library newer than the driver is fine (CUDA's minor-version compatibility: NVRTC builds
//! a CUBIN, which needs no JIT).

pub use crate::cuda::{CHUNK_ROWS, DEFAULT_TIMEOUT, GpuMonitor, SLOTS, gpu_shard_bytes};
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

/// A CUDA version as the driver and the libraries report it: `1000 · major + 10 · minor` (12020 is 12.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct CudaVersion(pub i32);

impl CudaVersion {
    /// `major.minor`.
    pub const fn new(major: i32, minor: i32) -> Self {
        Self(major * 1000 + minor * 10)
    }

    /// From `cublasLtGetVersion`'s `10000 · major + 100 · minor + patch` (the patch level is dropped).
    pub fn from_cublas(version: usize) -> Self {
        let version = i32::try_from(version).unwrap_or(i32::MAX);
        Self::new(version / 10_000, (version / 100) % 100)
    }

    /// The major version (12 for 12.2).
    pub const fn major(self) -> i32 {
        self.0 / 1000
    }

    /// The minor version (2 for 12.2).
    pub const fn minor(self) -> i32 {
        (self.0 % 1000) / 10
    }
}

impl fmt::Display for CudaVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.major(), self.minor())
    }
}

/// The oldest driver the CUDA backend runs on: CUDA 12.0 (R525). Every entry point the backend calls
/// exists there (event times are read with `cuEventElapsedTime`, not the `_v2` of CUDA 12.8).
pub const MIN_DRIVER: CudaVersion = CudaVersion::new(12, 0);
/// The first cuBLASLt with int8 tensor-core kernels for Blackwell (sm_100, sm_120).
pub const CUBLASLT_FOR_BLACKWELL: CudaVersion = CudaVersion::new(12, 8);

/// The driver and the libraries the CUDA backend loaded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CudaLibraries {
    /// The CUDA version the driver supports (`cuDriverGetVersion`; R535 is 12.2).
    pub driver: CudaVersion,
    /// libnvrtc's version.
    pub nvrtc: CudaVersion,
    /// libcublasLt's version (`None`: it could not be loaded).
    pub cublaslt: Option<CudaVersion>,
}

impl fmt::Display for CudaLibraries {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "driver CUDA {}, nvrtc {}, ", self.driver, self.nvrtc)?;
        match self.cublaslt {
            Some(v) => write!(f, "cublaslt {v}"),
            None => f.write_str("no cublaslt"),
        }
    }
}

/// How the backend runs on a driver and its libraries ([`check_compatibility`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Compatibility {
    /// The GEMM it runs.
    pub engine: GemmEngine,
    /// Why it runs the dp4a kernel although cuBLASLt was asked for (20–30× slower): what to install.
    pub fallback: Option<String>,
}

/// Whether the backend can run on `libs` for a GPU of compute capability `cc`, and with which GEMM when
/// `asked` is wanted. An error (the device cannot be opened) only where the driver truly lacks what is
/// needed: a driver before CUDA 12.0, or an NVRTC of a newer major version than the driver (its code would
/// not load). cuBLASLt that cannot run here, or that has no int8 kernels for this GPU, falls back to dp4a
/// with the reason (the caller warns, counts and labels it).
pub fn check_compatibility(
    libs: &CudaLibraries,
    cc: (i32, i32),
    asked: GemmEngine,
) -> Result<Compatibility, String> {
    let driver = libs.driver;
    if driver < MIN_DRIVER {
        return Err(format!(
            "the NVIDIA driver supports CUDA {driver}, older than the CUDA {MIN_DRIVER} this backend needs: \
             install an R535 or newer driver"
        ));
    }
    if libs.nvrtc.major() > driver.major() {
        return Err(format!(
            "libnvrtc {} builds code that this driver (CUDA {driver}) cannot load: install the CUDA \
             {major} NVRTC (e.g. pip install nvidia-cuda-nvrtc-cu{major}) and put it first on \
             LD_LIBRARY_PATH, or update the driver to one for CUDA {} (R580 or newer for CUDA 13)",
            libs.nvrtc,
            libs.nvrtc.major(),
            major = driver.major()
        ));
    }
    if libs.nvrtc < MIN_DRIVER {
        return Err(format!(
            "libnvrtc {} is older than CUDA {MIN_DRIVER}: install the CUDA {} NVRTC",
            libs.nvrtc,
            driver.major()
        ));
    }
    let fallback = match (asked, libs.cublaslt) {
        (GemmEngine::Dp4a, _) => None,
        (GemmEngine::CublasLt, None) => Some(format!(
            "libcublasLt could not be loaded: install the CUDA {} cuBLAS (e.g. pip install \
             nvidia-cublas-cu{}) or add it to LD_LIBRARY_PATH",
            driver.major(),
            driver.major()
        )),
        (GemmEngine::CublasLt, Some(lt)) if lt.major() > driver.major() => Some(format!(
            "cuBLASLt {lt} needs a CUDA {} driver and this one is CUDA {driver}: put the CUDA {} cuBLAS \
             first on LD_LIBRARY_PATH (cudarc loads the first libcublasLt it finds), or update the driver",
            lt.major(),
            driver.major()
        )),
        (GemmEngine::CublasLt, Some(lt)) if cc.0 >= 10 && lt < CUBLASLT_FOR_BLACKWELL => {
            Some(format!(
                "cuBLASLt {lt} has no int8 kernels for sm_{}{} (Blackwell needs {CUBLASLT_FOR_BLACKWELL} or \
             newer): install a newer cuBLAS",
                cc.0, cc.1
            ))
        }
        (GemmEngine::CublasLt, Some(_)) => None,
    };
    let engine = if fallback.is_some() { GemmEngine::Dp4a } else { asked };
    Ok(Compatibility { engine, fallback })
}

/// What a GPU backend reports about itself for the agent's advert, metrics and status.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GpuStatus {
    /// The driver and libraries it loaded.
    pub libraries: CudaLibraries,
    /// The GEMM it runs for shapes cuBLASLt handles.
    pub engine: GemmEngine,
    /// Why it runs dp4a although cuBLASLt was asked for, when it does.
    pub fallback: Option<String>,
    /// Shapes for which cuBLASLt failed and dp4a took over (each remembered, not retried), since it opened.
    pub shape_fallbacks: u64,
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

    fn libs(driver: (i32, i32), nvrtc: (i32, i32), lt: Option<(i32, i32)>) -> CudaLibraries {
        CudaLibraries {
            driver: CudaVersion::new(driver.0, driver.1),
            nvrtc: CudaVersion::new(nvrtc.0, nvrtc.1),
            cublaslt: lt.map(|(a, b)| CudaVersion::new(a, b)),
        }
    }

    const ADA: (i32, i32) = (8, 9);

    #[test]
    fn versions_read_as_cuda_writes_them() {
        assert_eq!(CudaVersion(12020).to_string(), "12.2");
        assert_eq!(CudaVersion::new(13, 0), CudaVersion(13000));
        assert_eq!(CudaVersion::from_cublas(120_804), CudaVersion::new(12, 8));
        assert_eq!(CudaVersion::from_cublas(130_001).to_string(), "13.0");
        let l = libs((12, 2), (12, 8), None);
        assert_eq!(l.to_string(), "driver CUDA 12.2, nvrtc 12.8, no cublaslt");
    }

    /// An operator on R535 (CUDA 12.2) with the CUDA 12 libraries runs cuBLASLt, even a newer 12.x.
    #[test]
    fn driver_535_with_cuda_12_libraries_runs_cublaslt() {
        for lt in [(12, 2), (12, 4), (12, 9)] {
            let ok =
                check_compatibility(&libs((12, 2), (12, 8), Some(lt)), ADA, GemmEngine::CublasLt)
                    .expect("R535 is supported");
            assert_eq!(ok, Compatibility { engine: GemmEngine::CublasLt, fallback: None });
        }
        let r580 = libs((13, 0), (13, 0), Some((13, 0)));
        assert_eq!(
            check_compatibility(&r580, ADA, GemmEngine::CublasLt).expect("ok").fallback,
            None
        );
        // CUDA 12 libraries on a CUDA 13 driver: backward compatible.
        let mixed = libs((13, 0), (12, 4), Some((12, 4)));
        assert!(check_compatibility(&mixed, (9, 0), GemmEngine::CublasLt).is_ok());
    }

    #[test]
    fn a_driver_too_old_or_an_nvrtc_too_new_is_refused_with_what_to_install() {
        let err = check_compatibility(&libs((11, 8), (12, 0), None), ADA, GemmEngine::Dp4a)
            .expect_err("CUDA 11 driver");
        assert!(err.contains("R535"), "{err}");
        let err =
            check_compatibility(&libs((12, 2), (13, 0), Some((12, 2))), ADA, GemmEngine::CublasLt)
                .expect_err("NVRTC 13 on R535");
        assert!(err.contains("nvidia-cuda-nvrtc-cu12") && err.contains("R580"), "{err}");
        let err = check_compatibility(&libs((12, 2), (11, 8), None), ADA, GemmEngine::Dp4a)
            .expect_err("NVRTC 11");
        assert!(err.contains("older than CUDA 12.0"), "{err}");
    }

    #[test]
    fn cublaslt_that_cannot_run_falls_back_to_dp4a_with_the_reason() {
        let too_new =
            check_compatibility(&libs((12, 2), (12, 8), Some((13, 0))), ADA, GemmEngine::CublasLt)
                .expect("still runs");
        assert_eq!(too_new.engine, GemmEngine::Dp4a);
        assert!(
            too_new.fallback.as_deref().is_some_and(|w| w.contains("CUDA 12 cuBLAS")),
            "{too_new:?}"
        );
        let missing = check_compatibility(&libs((12, 2), (12, 8), None), ADA, GemmEngine::CublasLt)
            .expect("still runs");
        assert!(missing.fallback.as_deref().is_some_and(|w| w.contains("nvidia-cublas-cu12")));
        // sm_120 (RTX 5090) with cuBLASLt 12.4: known to be slow, said so.
        let blackwell = check_compatibility(
            &libs((12, 8), (12, 8), Some((12, 4))),
            (12, 0),
            GemmEngine::CublasLt,
        )
        .expect("still runs");
        assert!(
            blackwell.fallback.as_deref().is_some_and(|w| w.contains("sm_120")),
            "{blackwell:?}"
        );
        let fine = check_compatibility(
            &libs((12, 8), (12, 8), Some((12, 8))),
            (12, 0),
            GemmEngine::CublasLt,
        )
        .expect("runs");
        assert_eq!(fine.fallback, None);
        // dp4a asked for: no fallback to report.
        let asked =
            check_compatibility(&libs((12, 2), (12, 8), None), ADA, GemmEngine::Dp4a).expect("ok");
        assert_eq!(asked, Compatibility { engine: GemmEngine::Dp4a, fallback: None });
    }

    #[test]
    fn tops_of_a_shard() {
        assert_eq!(tops(2_000_000_000_000, 2.0), 1.0);
        assert_eq!(tops(1, 0.0), 0.0);
    }
}
