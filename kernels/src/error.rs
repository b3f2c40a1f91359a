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
    /// The shard's product failed its Freivalds check (`C·r ≠ A·(B·r)`, see `crate::freivalds`): the device
    /// computed wrong elements. A device fault: the agent quarantines the device and the coordinator
    /// recomputes the shard elsewhere.
    #[error(
        "{device} computed a wrong product: Freivalds check failed on {failed_rows} of the {rows} rows \
         {first_row}.. at n={n}, iteration {iteration} (first failing rows {failing:?}): the device is \
         quarantined and the shard recomputed elsewhere; check its memory (`nvidia-smi -q -d ECC`, Xid errors \
         in the kernel log) before it serves again"
    )]
    FreivaldsMismatch {
        /// The device.
        device: String,
        /// Matrix size of the shard.
        n: u32,
        /// Which product.
        iteration: u32,
        /// The shard's first row.
        first_row: u32,
        /// Rows in the shard.
        rows: u32,
        /// How many rows failed.
        failed_rows: u32,
        /// The first failing rows (absolute row indices), at most `freivalds::MAX_REPORTED_ROWS`.
        failing: Vec<u32>,
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
    /// A backend name that is neither `cpu` nor `cuda`.
    #[error("unknown backend `{0}`: expected `cpu` or `cuda`")]
    UnknownKind(String),
}

impl BackendError {
    /// Whether the device that answered this can take no more work until the process reopens it: a CUDA
    /// error that may have left its context unusable, a watchdog timeout, an earlier quarantine, a CUDA
    /// failure at run time, or a product that failed its Freivalds check. The agent quarantines the device
    /// on these; other errors fail only the shard.
    pub fn quarantines_device(&self) -> bool {
        matches!(
            self,
            Self::Cuda { .. }
                | Self::Timeout { .. }
                | Self::Quarantined { .. }
                | Self::CudaUnavailable(_)
                | Self::FreivaldsMismatch { .. }
        )
    }

    /// Whether this is a failed Freivalds check: the device computed a wrong product (the agent answers
    /// `CheckFailed`, which the coordinator treats as a device fault).
    pub fn is_failed_check(&self) -> bool {
        matches!(self, Self::FreivaldsMismatch { .. })
    }

    /// The error for a shard whose check found `mismatch`.
    pub(crate) fn failed_check(
        device: &str,
        shard: &crate::Shard,
        mismatch: &crate::freivalds::Mismatch,
    ) -> Self {
        Self::FreivaldsMismatch {
            device: device.to_owned(),
            n: shard.challenge.matrix_size,
            iteration: shard.iteration,
            first_row: shard.rows.start,
            rows: shard.row_count(),
            failed_rows: mismatch.failed_rows,
            failing: mismatch.first_rows.iter().map(|&i| shard.rows.start + i).collect(),
        }
    }
}
