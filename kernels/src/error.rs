//! The crate's one error type.

use crate::BackendKind;

/// Why a backend could not be opened or could not run a shard.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BackendError {
    /// The shard's fields break the spec's bounds (empty rows, rows past n, iteration past the count).
    #[error("invalid shard: {0}")]
    InvalidShard(String),
    /// The shard needs more memory than the device has free.
    #[error(
        "shard of {rows} rows at n={n} needs {needed} bytes but the {device} device has {available} available: \
         split the job into shards of fewer rows (see cpc_kernels::shard_memory_bytes)"
    )]
    ShardTooLarge {
        /// Matrix size of the shard.
        n: u32,
        /// Rows in the shard.
        rows: u32,
        /// Bytes the shard needs.
        needed: u64,
        /// Bytes the device has for shards.
        available: u64,
        /// Name of the device.
        device: String,
    },
    /// The `cuda` backend was asked for in a binary built without the `cuda` feature.
    #[error("built without CUDA support: rebuild with --features cuda")]
    CudaNotCompiled,
    /// The CUDA backend is compiled in but cannot run yet or could not start.
    #[error("CUDA backend unavailable: {0}")]
    CudaUnavailable(String),
    /// A CUDA call failed on a GPU (driver, NVRTC, cuBLASLt or a kernel). When the error leaves the device's
    /// context unusable the backend also quarantines itself (see [`BackendError::Quarantined`]).
    #[error(
        "CUDA error on {device}: {reason}: if it repeats, check `nvidia-smi -q` and the kernel log for Xid errors"
    )]
    Cuda {
        /// The GPU (`cuda:<ordinal> <model>`).
        device: String,
        /// What failed and the CUDA status.
        reason: String,
    },
    /// A GPU call did not finish within the backend's watchdog timeout; the device is quarantined.
    #[error(
        "{device} did not finish `{phase}` within {seconds:.1} s: the GPU is quarantined; check `nvidia-smi` \
         (a hung or throttled GPU, or a shard too large for the timeout: raise the timeout or split the job)"
    )]
    Timeout {
        /// The GPU.
        device: String,
        /// The step that was waited for.
        phase: &'static str,
        /// The timeout that expired, in seconds.
        seconds: f64,
    },
    /// An earlier failure quarantined this GPU; it takes no more work until the process reopens it.
    #[error(
        "{device} is quarantined after an earlier failure ({reason}): the other devices keep serving"
    )]
    Quarantined {
        /// The GPU.
        device: String,
        /// The first failure.
        reason: String,
    },
    /// No device of that kind at that index.
    #[error(
        "no {kind} device at index {index} ({found} found): for cuda check `nvidia-smi` and CUDA_VISIBLE_DEVICES, \
         for cpu use device 0"
    )]
    NoDevice {
        /// The kind asked for.
        kind: BackendKind,
        /// The index asked for.
        index: usize,
        /// How many devices of that kind exist.
        found: usize,
    },
    /// The CPU worker threads could not be started.
    #[error("could not start the CPU worker threads (try fewer threads): {0}")]
    ThreadPool(#[from] rayon::ThreadPoolBuildError),
    /// A CPU kernel was forced that this CPU cannot run.
    #[error(
        "this CPU cannot run the `{kernel}` kernel; it can run: {available}. Drop --kernel (or \
         CPC_CPU_KERNEL) to use the fastest one"
    )]
    KernelUnsupported {
        /// The kernel asked for.
        kernel: &'static str,
        /// The kernels this CPU can run, fastest first.
        available: String,
    },
    /// A CPU kernel was forced on a GPU backend.
    #[error(
        "the `{0}` kernel is a CPU kernel: --kernel (and CPC_CPU_KERNEL) only apply with --backend cpu"
    )]
    KernelForCuda(&'static str),
    /// A CPU kernel name that is not one of `avx512vnni`, `avxvnni`, `avx2`, `scalar`.
    #[error("unknown CPU kernel `{0}`: expected avx512vnni, avxvnni, avx2 or scalar")]
    UnknownKernel(String),
    /// A backend name that is neither `cpu` nor `cuda`.
    #[error("unknown backend `{0}`: expected `cpu` or `cuda`")]
    UnknownKind(String),
}

impl BackendError {
    /// Whether the device that answered this can take no more work until the process reopens it: a CUDA
    /// error that may have left its context unusable, a watchdog timeout, an earlier quarantine, or a CUDA
    /// failure at run time. The agent quarantines the device on these; other errors fail only the shard.
    pub fn quarantines_device(&self) -> bool {
        matches!(
            self,
            Self::Cuda { .. }
                | Self::Timeout { .. }
                | Self::Quarantined { .. }
                | Self::CudaUnavailable(_)
        )
    }
}
