//! The device's own threads, and the watchdog around every call into its backend that runs on them: a call
//! that never returns (a wedged GPU driver) holds up nothing but its own device, and is given up on at
//! [`watchdog_deadline`]. A call the backend answers at once runs on the caller's thread ([`Worker::run_here`]).

use cpc_kernels::{Backend, panic_message};
use std::{
    panic::{AssertUnwindSafe, catch_unwind},
    sync::{Arc, Mutex},
    time::Duration,
};
use tokio::sync::oneshot;

/// Default watchdog timeout of one backend call (a shard, or the start-up measurement).
pub const DEFAULT_WATCHDOG: Duration = Duration::from_secs(600);

/// How long the actor waits for one backend call under watchdog timeout `timeout`: the timeout plus a grace
/// of a tenth (between 50 ms and 30 s), so that a backend that bounds its own waits (the CUDA backend, opened
/// with the same timeout) reports first, with the phase that hung.
pub fn watchdog_deadline(timeout: Duration) -> Duration {
    timeout + (timeout / 10).clamp(Duration::from_millis(50), Duration::from_secs(30))
}

type Job = Box<dyn FnOnce(&dyn Backend) + Send>;

/// Why a call on the worker thread gave no answer.
#[derive(Debug)]
pub(super) enum CallError {
    /// The deadline passed.
    Timeout(Duration),
    /// The call panicked (the thread survives it).
    Panicked(String),
    /// The worker thread is gone or was given up on.
    Gone,
}

/// The device's own threads ([`Backend::concurrent_shards`] of them: two on a GPU, so that consecutive
/// shards overlap), taking backend calls from one queue.
#[derive(Debug)]
pub(super) struct Worker {
    tx: Mutex<Option<std::sync::mpsc::Sender<Job>>>,
    index: u32,
    backend: Arc<dyn Backend>,
    threads: usize,
}

impl Worker {
    pub(super) fn spawn(
        index: u32,
        backend: Arc<dyn Backend>,
        threads: usize,
    ) -> Result<Self, String> {
        let tx = spawn_threads(index, &backend, threads)?;
        Ok(Self { tx: Mutex::new(Some(tx)), index, backend, threads })
    }

    /// Restarts the device's worker: new threads on the same backend take the calls from now on; the old
    /// ones (one of them stuck in a call the watchdog gave up on) get no more work and end once their call
    /// returns, never joined.
    pub(super) fn restart(&self) -> Result<(), String> {
        let tx = spawn_threads(self.index, &self.backend, self.threads)?;
        let mut guard = self.tx.lock().map_err(|_| "the worker's lock is poisoned".to_owned())?;
        *guard = Some(tx);
        Ok(())
    }
}

/// Starts `threads` threads taking calls into `backend` from one queue; answers the queue's sender.
fn spawn_threads(
    index: u32,
    backend: &Arc<dyn Backend>,
    threads: usize,
) -> Result<std::sync::mpsc::Sender<Job>, String> {
    let (tx, rx) = std::sync::mpsc::channel::<Job>();
    let rx = Arc::new(Mutex::new(rx));
    for t in 0..threads.max(1) {
        let (rx, backend) = (rx.clone(), backend.clone());
        std::thread::Builder::new()
            .name(format!("cpc-device-{index}-{t}"))
            .spawn(move || {
                loop {
                    // The lock is held only while waiting for the next call, not while running it.
                    let job = match rx.lock() {
                        Ok(rx) => rx.recv(),
                        Err(_) => return,
                    };
                    match job {
                        Ok(job) => job(backend.as_ref()),
                        Err(_) => return, // the worker was given up on, or the device is gone
                    }
                }
            })
            .map_err(|e| format!("cannot start the device's worker thread: {e}"))?;
    }
    Ok(tx)
}

impl Worker {
    /// Runs `f` on the worker thread and waits for it at most `deadline`.
    pub(super) async fn call<T: Send + 'static>(
        &self,
        deadline: Duration,
        f: impl FnOnce(&dyn Backend) -> T + Send + 'static,
    ) -> Result<T, CallError> {
        let (tx, rx) = oneshot::channel();
        let job: Job = Box::new(move |backend| {
            let _ = tx.send(catch_unwind(AssertUnwindSafe(|| f(backend))));
        });
        {
            let guard = self.tx.lock().map_err(|_| CallError::Gone)?;
            guard.as_ref().ok_or(CallError::Gone)?.send(job).map_err(|_| CallError::Gone)?;
        }
        match tokio::time::timeout(deadline, rx).await {
            Err(_) => Err(CallError::Timeout(deadline)),
            Ok(Err(_)) => Err(CallError::Gone),
            Ok(Ok(Err(panic))) => Err(CallError::Panicked(panic_message(panic.as_ref()))),
            Ok(Ok(Ok(v))) => Ok(v),
        }
    }

    /// Whether the backend answers `shard` sooner than a hand-off to the worker thread would take, and
    /// the device time it leaves to the caller ([`Backend::answers_at_once`]).
    pub(super) fn answers_at_once(&self, shard: &cpc_kernels::Shard) -> Option<Duration> {
        self.backend.answers_at_once(shard)
    }

    /// Runs `f` on the calling thread, for a call the backend answers at once: no hand-off, no watchdog.
    /// A worker given up on takes no more calls here either.
    pub(super) fn run_here<T>(&self, f: impl FnOnce(&dyn Backend) -> T) -> Result<T, CallError> {
        if self.tx.lock().map_or(true, |tx| tx.is_none()) {
            return Err(CallError::Gone);
        }
        catch_unwind(AssertUnwindSafe(|| f(self.backend.as_ref())))
            .map_err(|panic| CallError::Panicked(panic_message(panic.as_ref())))
    }

    /// Gives up on the thread: it gets no more work and is never joined (it ends once its call, if any,
    /// returns).
    pub(super) fn abandon(&self) {
        if let Ok(mut tx) = self.tx.lock() {
            tx.take();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_deadline_is_the_timeout_plus_a_grace() {
        assert!(watchdog_deadline(Duration::from_secs(600)) == Duration::from_secs(630));
        assert!(watchdog_deadline(Duration::from_millis(100)) == Duration::from_millis(150));
    }
}
