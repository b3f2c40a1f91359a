//! Which CUDA driver and libraries this process loaded, and the one driver entry point the backend calls
//! itself because cudarc's own choice needs a newer driver than operators run.
//!
//! cudarc is built against CUDA 13's headers (`cuda-13000`) and resolves every driver symbol lazily, on its
//! first call. Its `CudaEvent::elapsed_ms` calls `cuEventElapsedTime_v2`, which drivers have only from CUDA
//! 12.8 (R570) on: on an R535 or R550 driver the first read of a phase time panicked with "missing symbol",
//! after the shard's work was done, and the GPU was quarantined. [`elapsed_seconds`] calls
//! `cuEventElapsedTime`, which every driver since CUDA 2 exports (CUDA 13 keeps it for binaries built
//! earlier). Every other entry point the backend reaches through cudarc exists from CUDA 12.0 on
//! (`cuDeviceGetUuid_v2` since 11.4, `cuMemAllocAsync` since 11.2).

use crate::gpu::{CudaLibraries, CudaVersion};
use cudarc::driver::{CudaEvent, DriverError, sys};
use std::{ffi::c_int, sync::OnceLock};

/// The CUDA version the driver supports (`cuDriverGetVersion`, which needs no `cuInit`).
pub(crate) fn driver_version() -> Result<CudaVersion, String> {
    let mut version: c_int = 0;
    // SAFETY: a valid out-pointer; the symbol exists in every driver.
    unsafe { sys::cuDriverGetVersion(&raw mut version) }
        .result()
        .map_err(|e| format!("cuDriverGetVersion: {e}"))?;
    Ok(CudaVersion(version))
}

/// libcublasLt's version, `None` when it cannot be loaded.
pub(crate) fn cublaslt_version() -> Option<CudaVersion> {
    // SAFETY: only tries to open the shared library.
    if !unsafe { cudarc::cublaslt::sys::is_culib_present() } {
        return None;
    }
    // SAFETY: takes no arguments; the library is present (checked above), so the symbol loads.
    Some(CudaVersion::from_cublas(unsafe { cudarc::cublaslt::sys::cublasLtGetVersion() }))
}

/// The driver's and the libraries' versions.
pub(crate) fn libraries() -> Result<CudaLibraries, String> {
    let driver = driver_version()?;
    let (major, minor) = super::module::nvrtc_version()?;
    Ok(CudaLibraries {
        driver,
        nvrtc: CudaVersion::new(major, minor),
        cublaslt: cublaslt_version(),
    })
}

/// `cuEventElapsedTime` (the CUDA 12.0 entry point; cudarc's CUDA 13 bindings only declare the `_v2`).
type EventElapsedTime = unsafe extern "C" fn(*mut f32, sys::CUevent, sys::CUevent) -> sys::CUresult;

/// `cuEventElapsedTime` looked up in the loaded driver library once (`None`: not exported, which no
/// driver since CUDA 2 does).
fn event_elapsed_time() -> Option<EventElapsedTime> {
    static SYMBOL: OnceLock<Option<EventElapsedTime>> = OnceLock::new();
    *SYMBOL.get_or_init(|| {
        // SAFETY: `culib` is the driver library cudarc loaded (the caller has a context, so it is loaded);
        // the symbol's C signature is `CUresult cuEventElapsedTime(float*, CUevent, CUevent)` in every
        // `cuda.h` that declares it, which is `EventElapsedTime`.
        unsafe { sys::culib().get::<EventElapsedTime>(b"cuEventElapsedTime\0").ok().map(|f| *f) }
    })
}

/// Seconds between two completed events of one context (`end - start`), with the entry point every driver
/// has. Both events must have been recorded with timing (`CU_EVENT_DEFAULT`) and have completed; otherwise
/// the driver answers `CUDA_ERROR_NOT_READY` or `CUDA_ERROR_INVALID_HANDLE`.
pub(crate) fn elapsed_seconds(start: &CudaEvent, end: &CudaEvent) -> Result<f64, DriverError> {
    let elapsed = event_elapsed_time().ok_or(DriverError(sys::CUresult::CUDA_ERROR_NOT_FOUND))?;
    let mut ms: f32 = 0.0;
    // SAFETY: both events are live (borrowed) events of the same context, which is current on this thread
    // (the caller bound it); `ms` is a valid out-pointer; `elapsed` has the driver's signature.
    unsafe { elapsed(&raw mut ms, start.cu_event(), end.cu_event()) }.result()?;
    Ok(f64::from(ms) / 1000.0)
}
