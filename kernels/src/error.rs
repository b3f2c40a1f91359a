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
