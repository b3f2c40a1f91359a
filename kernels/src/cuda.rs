//! The CUDA backend (feature `cuda`). The kernels are not written yet: this module holds the API the
//! real backend will fill (cudarc, dynamic loading, one context per device), and answers
//! [`BackendError::CudaUnavailable`] until then, so builds with `--features cuda` compile and say why
//! they cannot run.

use crate::{Backend, BackendError, DeviceInfo, Shard, ShardOutput};

/// The CUDA backend for one GPU; not implemented yet, so no value of this type can exist.
#[derive(Debug)]
pub enum CudaBackend {}

impl CudaBackend {
    /// Opens GPU `device`; for now always [`BackendError::CudaUnavailable`].
    pub fn new(device: usize) -> Result<Self, BackendError> {
        Err(BackendError::CudaUnavailable(format!(
            "the CUDA kernels are not implemented in this version (asked for GPU {device}): use --backend cpu"
        )))
    }

    /// Number of visible CUDA devices (none until the backend exists).
    pub fn device_count() -> usize {
        0
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
}
