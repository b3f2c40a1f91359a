//! Where a task's matrix work runs, as seen by the mining loop: the farm (QUIC agents) or a backend in
//! this process. The planner only needs "compute this challenge, give me its root".

use cpc_common::{hashing::Digest32, synthetic::Challenge};
use cpc_kernels::{Backend, BackendError};
use std::{fmt, future::Future, pin::Pin, sync::Arc};

/// Why a challenge could not be computed.
#[derive(Debug, thiserror::Error)]
pub enum ComputeError {
    /// The local backend failed.
    #[error(transparent)]
    Backend(#[from] BackendError),
    /// The farm could not run the job (no agents, every device failed, ...).
    #[error("farm job failed: {0}")]
    Farm(String),
    /// The compute thread died.
    #[error("compute thread failed: {0}")]
    Thread(String),
    /// The job's deadline passed before it could start.
    #[error("deadline exceeded")]
    DeadlineExceeded,
}

/// A boxed computation.
pub type ComputeFuture = Pin<Box<dyn Future<Output = Result<Digest32, ComputeError>> + Send>>;

/// Something that computes synthetic-v1 result hashes.
pub trait ComputeService: Send + Sync + fmt::Debug {
    /// Short description for logs.
    fn describe(&self) -> String;
    /// Computes `challenge`'s result hash.
    fn compute(&self, challenge: Challenge) -> ComputeFuture;
}

/// One backend in this process (a single-box miner, or the fallback when no agent is connected).
#[derive(Debug, Clone)]
pub struct LocalCompute {
    backend: Arc<dyn Backend>,
}

impl LocalCompute {
    /// Computes on `backend`.
    pub fn new(backend: Arc<dyn Backend>) -> Self {
        Self { backend }
    }
}

impl ComputeService for LocalCompute {
    fn describe(&self) -> String {
        format!("local {}", self.backend.name())
    }

    fn compute(&self, challenge: Challenge) -> ComputeFuture {
        let backend = Arc::clone(&self.backend);
        Box::pin(async move {
            tokio::task::spawn_blocking(move || {
                cpc_kernels::result_hash(backend.as_ref(), &challenge)
            })
            .await
            .map_err(|e| ComputeError::Thread(e.to_string()))?
            .map_err(ComputeError::from)
        })
    }
}

impl ComputeService for crate::farm::FarmHandle {
    fn describe(&self) -> String {
        format!("farm on {}", self.local_addr())
    }

    fn compute(&self, challenge: Challenge) -> ComputeFuture {
        let farm = self.clone();
        Box::pin(async move {
            let report =
                farm.run_job(challenge).await.map_err(|e| ComputeError::Farm(e.to_string()))?;
            Ok(report.result_hash)
        })
    }
}
