//! What a failed CUDA or cuBLASLt call means for the GPU, decided once here so that every call site of the
//! backend reacts the same way: retry the shard, give the memory back, quarantine the device, or tell the
//! operator that only a new process brings it back.
//!
//! The classes follow the CUDA driver API's documentation of each `CUresult`:
//! - **out of memory** (`CUDA_ERROR_OUT_OF_MEMORY`, `CUBLAS_STATUS_ALLOC_FAILED`): another process or a
//!   desktop session holds the memory for now. Not the GPU's fault: the shard fails, the slot frees its
//!   buffers, the device keeps serving ([`crate::BackendError::OutOfMemory`]);
//! - **transient** (`CUDA_ERROR_LAUNCH_OUT_OF_RESOURCES`, `CUDA_ERROR_NOT_READY`, `CUDA_ERROR_TIMEOUT`,
//!   `CUDA_ERROR_DEVICE_UNAVAILABLE`, `CUDA_ERROR_MPS_SERVER_NOT_READY`): the call did not happen and may
//!   succeed if made again; the backend retries the shard [`TRANSIENT_RETRIES`] times;
//! - **sticky** (an illegal address, a kernel trap or assert, an uncorrectable ECC or NVLink error, a launch
//!   that failed or timed out, ...): "the process is left in an inconsistent state and any further CUDA work
//!   will return the same error; to continue using CUDA, the process must be terminated and relaunched". The
//!   primary context is shared by everything in the process, so re-opening the device does not help
//!   ([`crate::BackendError::ContextLost`]);
//! - **fatal**, the rest: something this backend did not expect; the device is quarantined.

use cudarc::{cublaslt::result::CublasError, driver::sys::CUresult};

/// Times a shard is run again after a transient error before the error is reported (so 1 + this in all).
pub(crate) const TRANSIENT_RETRIES: u32 = 2;

/// What a failed call means for the device.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum FaultClass {
    /// Out of device memory: free buffers and try later; never quarantine.
    OutOfMemory,
    /// The call did not take place and may succeed again: a bounded retry.
    Transient,
    /// The context is corrupted for the rest of the process: only a process restart recovers the GPU.
    Sticky,
    /// Anything else: quarantine the device.
    Fatal,
}

/// The class of a CUDA driver status.
pub(crate) fn classify_driver(code: CUresult) -> FaultClass {
    use CUresult as R;
    match code {
        R::CUDA_ERROR_OUT_OF_MEMORY => FaultClass::OutOfMemory,
        R::CUDA_ERROR_LAUNCH_OUT_OF_RESOURCES
        | R::CUDA_ERROR_NOT_READY
        | R::CUDA_ERROR_TIMEOUT
        | R::CUDA_ERROR_DEVICE_UNAVAILABLE
        | R::CUDA_ERROR_MPS_SERVER_NOT_READY => FaultClass::Transient,
        R::CUDA_ERROR_ILLEGAL_ADDRESS
        | R::CUDA_ERROR_LAUNCH_TIMEOUT
        | R::CUDA_ERROR_LAUNCH_FAILED
        | R::CUDA_ERROR_HARDWARE_STACK_ERROR
        | R::CUDA_ERROR_ILLEGAL_INSTRUCTION
        | R::CUDA_ERROR_MISALIGNED_ADDRESS
        | R::CUDA_ERROR_INVALID_ADDRESS_SPACE
        | R::CUDA_ERROR_INVALID_PC
        | R::CUDA_ERROR_ASSERT
        | R::CUDA_ERROR_ECC_UNCORRECTABLE
        | R::CUDA_ERROR_NVLINK_UNCORRECTABLE
        | R::CUDA_ERROR_CONTAINED
        | R::CUDA_ERROR_TENSOR_MEMORY_LEAK
        | R::CUDA_ERROR_EXTERNAL_DEVICE
        | R::CUDA_ERROR_CONTEXT_IS_DESTROYED => FaultClass::Sticky,
        _ => FaultClass::Fatal,
    }
}

/// The class of a cuBLASLt status. `CUBLAS_STATUS_EXECUTION_FAILED` means a kernel of the library failed to
/// launch or run: the driver's own status (read with `cuCtxSynchronize`/`check_err` afterwards) says whether
/// the context survived, so it is fatal here rather than sticky.
pub(crate) fn classify_cublas(error: &CublasError) -> FaultClass {
    use cudarc::cublaslt::sys::cublasStatus_t as S;
    match error.0 {
        S::CUBLAS_STATUS_ALLOC_FAILED => FaultClass::OutOfMemory,
        _ => FaultClass::Fatal,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use cudarc::cublaslt::sys::cublasStatus_t as S;

    #[test]
    fn out_of_memory_is_its_own_class() {
        assert_eq!(classify_driver(CUresult::CUDA_ERROR_OUT_OF_MEMORY), FaultClass::OutOfMemory);
        assert_eq!(
            classify_cublas(&CublasError(S::CUBLAS_STATUS_ALLOC_FAILED)),
            FaultClass::OutOfMemory
        );
    }

    #[test]
    fn errors_that_poison_the_context_need_a_restart() {
        for code in [
            CUresult::CUDA_ERROR_ILLEGAL_ADDRESS,
            CUresult::CUDA_ERROR_LAUNCH_FAILED,
            CUresult::CUDA_ERROR_LAUNCH_TIMEOUT,
            CUresult::CUDA_ERROR_MISALIGNED_ADDRESS,
            CUresult::CUDA_ERROR_ASSERT,
            CUresult::CUDA_ERROR_ECC_UNCORRECTABLE,
        ] {
            assert_eq!(classify_driver(code), FaultClass::Sticky, "{code:?}");
        }
    }

    #[test]
    fn launch_resources_are_retried_and_the_rest_quarantines() {
        assert_eq!(
            classify_driver(CUresult::CUDA_ERROR_LAUNCH_OUT_OF_RESOURCES),
            FaultClass::Transient
        );
        assert_eq!(classify_driver(CUresult::CUDA_ERROR_DEVICE_UNAVAILABLE), FaultClass::Transient);
        for code in [
            CUresult::CUDA_ERROR_INVALID_VALUE,
            CUresult::CUDA_ERROR_INVALID_HANDLE,
            CUresult::CUDA_ERROR_UNKNOWN,
        ] {
            assert_eq!(classify_driver(code), FaultClass::Fatal, "{code:?}");
        }
        assert_eq!(
            classify_cublas(&CublasError(S::CUBLAS_STATUS_NOT_SUPPORTED)),
            FaultClass::Fatal
        );
    }
}
