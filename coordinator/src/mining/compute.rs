//! Where a task's matrix work runs, as seen by the mining loop and the validator clients: the farm (QUIC
//! agents, which queues and runs many jobs at once) or a backend in this process (one challenge at a time,
//! behind `priority.rs`). Callers only need "run this job, give me its root"; the job says its class,
//! deadline and owner, and dropping the future cancels it.

use crate::farm::{JobError, JobSpec};
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
    /// The compute service is shutting down (the process is stopping): the job was not run, and is no
    /// failure of its task.
    #[error("the farm is shutting down")]
    Stopped,
}

/// A boxed computation.
pub type ComputeFuture = Pin<Box<dyn Future<Output = Result<Digest32, ComputeError>> + Send>>;

/// Something that computes synthetic-v1 result hashes.
pub trait ComputeService: Send + Sync + fmt::Debug {
    /// Short description for logs.
    fn describe(&self) -> String;
    /// Runs `spec`'s challenge in its class, by its deadline; dropping the future cancels it.
    fn run(&self, spec: JobSpec) -> ComputeFuture;
    /// Runs jobs handed over together (a block's tasks): one future per job, in the order given, each as
    /// [`ComputeService::run`]'s. By default each job on its own; the farm takes them in one message and
    /// places them all before it sends any shard.
    fn run_all(&self, specs: Vec<JobSpec>) -> Vec<ComputeFuture> {
        specs.into_iter().map(|spec| self.run(spec)).collect()
    }
    /// Computes `challenge`'s result hash as a block-class job with no deadline.
    fn compute(&self, challenge: Challenge) -> ComputeFuture {
        self.run(JobSpec::new(challenge))
    }
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

    fn run(&self, spec: JobSpec) -> ComputeFuture {
        let backend = Arc::clone(&self.backend);
        let challenge = spec.challenge;
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

    fn run(&self, spec: JobSpec) -> ComputeFuture {
        let farm = self.clone();
        Box::pin(async move { farm_answer(farm.run(spec).await) })
    }

    fn run_all(&self, specs: Vec<JobSpec>) -> Vec<ComputeFuture> {
        Self::run_all(self, specs)
            .into_iter()
            .map(|run| -> ComputeFuture { Box::pin(async move { farm_answer(run.await) }) })
            .collect()
    }
}

/// A farm job's answer as the mining loop and validator clients take it.
fn farm_answer(answer: Result<crate::farm::JobReport, JobError>) -> Result<Digest32, ComputeError> {
    match answer {
        Ok(report) => Ok(report.result_hash),
        Err(JobError::DeadlineExceeded) => Err(ComputeError::DeadlineExceeded),
        Err(JobError::Shutdown) => Err(ComputeError::Stopped),
        Err(e) => Err(ComputeError::Farm(e.to_string())),
    }
}
