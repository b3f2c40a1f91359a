//! Stand-in for the CUDA backend in builds without the `cuda` feature: the same API, and a constructor
//! that tells the operator how to get the real one (candle's `dummy_cuda_backend` pattern).

use crate::{Backend, BackendError, DeviceInfo, Shard, ShardOutput};

/// The CUDA backend; this build has none, so no value of this type can exist.
#[derive(Debug)]
pub enum CudaBackend {}

impl CudaBackend {
    /// Always [`BackendError::CudaNotCompiled`]: rebuild with `--features cuda`.
    pub fn new(_device: usize) -> Result<Self, BackendError> {
        Err(BackendError::CudaNotCompiled)
    }

    /// Number of visible CUDA devices: none in a build without CUDA.
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
