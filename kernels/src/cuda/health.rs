//! What a failure does to the backend, by its class ([`super::fault`]): out of memory gives the slot's
//! buffers back and leaves the GPU in service; anything else quarantines the GPU (every later call answers
//! [`BackendError::Quarantined`] at once) and leaks the slot's buffers, which a kernel may still be using;
//! and a panic inside cudarc becomes an error instead of unwinding through the agent.

use super::{CudaBackend, Slot, slot::Fail};
use crate::BackendError;
use std::panic::{AssertUnwindSafe, catch_unwind};

/// Runs `f`, turning a panic inside cudarc (a missing symbol in an old driver, say) into an error.
pub(super) fn guarded<T>(
    what: &str,
    f: impl FnOnce() -> Result<T, BackendError>,
) -> Result<T, BackendError> {
    catch_unwind(AssertUnwindSafe(f)).unwrap_or_else(|panic| {
        let why = crate::panic_message(panic.as_ref());
        Err(BackendError::CudaUnavailable(format!("{what}: {why}")))
    })
}

impl CudaBackend {
    /// Why this GPU is quarantined, if it is.
    pub fn quarantined(&self) -> Option<String> {
        self.quarantine.lock().map_or_else(|p| p.into_inner().clone(), |q| q.clone())
    }

    /// Quarantines the GPU with `reason` (the first reason stays).
    pub(super) fn quarantine(&self, reason: &str) {
        let mut q = self.quarantine.lock().unwrap_or_else(|p| p.into_inner());
        q.get_or_insert_with(|| reason.to_owned());
    }

    /// The error a failed run answers, after the slot and the backend have done what its class asks
    /// (memory given back, or the device quarantined and the buffers leaked).
    pub(super) fn failed(&self, slot: &mut Slot, fail: Fail) -> BackendError {
        let device = self.name.clone();
        match fail {
            Fail::OutOfMemory(reason) => {
                slot.release();
                BackendError::OutOfMemory { device, reason }
            }
            Fail::Sticky(reason) => {
                self.quarantine(&format!("{reason} (the GPU needs a process restart)"));
                slot.abandon();
                BackendError::ContextLost { device, reason }
            }
            Fail::Transient(reason) | Fail::Fatal(reason) => {
                self.quarantine(&reason);
                slot.abandon();
                BackendError::Cuda { device, reason }
            }
            Fail::Timeout(phase) => {
                let seconds = self.timeout.as_secs_f64();
                self.quarantine(&format!("`{phase}` timed out after {seconds:.1} s"));
                slot.abandon();
                BackendError::Timeout { device, phase, seconds }
            }
        }
    }
}
