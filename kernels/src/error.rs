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
    /// The GPU had not enough free memory for the shard (another process or a desktop session holds it for
    /// now). The shard failed, the slot gave its memory back, and the GPU stays in service.
    #[error(
        "{device} is out of memory: {reason}: the shard can be retried later or split into fewer rows; \
         the GPU stays in service"
    )]
    OutOfMemory {
        /// The GPU.
        device: String,
        /// What was being allocated and the CUDA status.
        reason: String,
    },
    /// A sticky CUDA error (an illegal address, a kernel trap, an uncorrectable ECC error, ...): the context
    /// every caller in the process shares is corrupted, so re-opening the device cannot help. The device is
    /// quarantined; only a process restart brings it back.
    #[error(
        "{device} hit a CUDA error that corrupts its context for the rest of the process ({reason}): the GPU \
         needs a process restart (the agent's supervisor, e.g. systemd, restarts it); if it repeats, check \
         `nvidia-smi -q` and the kernel log for Xid errors"
    )]
    ContextLost {
        /// The GPU.
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
    /// The caller cancelled the shard before it finished ([`crate::Backend::run_shard_cancellable`]): it is
    /// no longer wanted, and nothing is wrong with the device.
    #[error("the shard was cancelled before it finished (it is no longer wanted)")]
    Cancelled,
    /// A backend name that is neither `cpu` nor `cuda`.
    #[error("unknown backend `{0}`: expected `cpu` or `cuda`")]
    UnknownKind(String),
}

impl BackendError {
    /// Whether the device that answered this can take no more work until the process reopens it: a CUDA
    /// error that may have left its context unusable, a watchdog timeout, an earlier quarantine, a CUDA
    /// failure at run time, or a product that failed its Freivalds check. The agent quarantines the device
    /// on these; other errors fail only the shard (out of memory among them: a passing squeeze, not the
    /// GPU's fault).
    pub fn quarantines_device(&self) -> bool {
        matches!(
            self,
            Self::Cuda { .. }
                | Self::ContextLost { .. }
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
            n: shard.challenge.matrix_size(),
            iteration: shard.iteration,
            first_row: shard.rows.start,
            rows: shard.row_count(),
            failed_rows: mismatch.failed_rows,
            failing: mismatch.first_rows.iter().map(|&i| shard.rows.start + i).collect(),
        }
    }

    /// Whether only a new process can bring the device back ([`BackendError::ContextLost`]): the agent says
    /// so, counts it and stops the device's worker, so that its supervisor can restart it.
    pub fn needs_restart(&self) -> bool {
        matches!(self, Self::ContextLost { .. })
    }

    /// Whether the same shard may succeed later on the same device ([`BackendError::OutOfMemory`]).
    pub fn retry_later(&self) -> bool {
        matches!(self, Self::OutOfMemory { .. })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cuda(reason: &str) -> BackendError {
        BackendError::Cuda { device: "cuda:0".into(), reason: reason.into() }
    }

    /// Out of memory fails the shard and leaves the GPU in service; a sticky error quarantines it and asks
    /// for a restart; other CUDA errors quarantine it without one.
    #[test]
    fn out_of_memory_does_not_quarantine_and_a_lost_context_needs_a_restart() {
        let oom =
            BackendError::OutOfMemory { device: "cuda:0".into(), reason: "allocating C".into() };
        assert!(!oom.quarantines_device() && !oom.needs_restart() && oom.retry_later());
        assert!(oom.to_string().contains("stays in service"), "{oom}");
        let lost = BackendError::ContextLost {
            device: "cuda:0".into(),
            reason: "an illegal memory access was encountered".into(),
        };
        assert!(lost.quarantines_device() && lost.needs_restart() && !lost.retry_later());
        assert!(lost.to_string().contains("needs a process restart"), "{lost}");
        let other = cuda("invalid handle");
        assert!(other.quarantines_device() && !other.needs_restart());
        let too_large = BackendError::ShardTooLarge {
            n: 1,
            rows: 1,
            needed: 2,
            available: 1,
            device: "cuda:0".into(),
        };
        assert!(!too_large.quarantines_device() && !too_large.retry_later());
        let cancelled = BackendError::Cancelled;
        assert!(!cancelled.quarantines_device() && !cancelled.needs_restart());
    }
}
