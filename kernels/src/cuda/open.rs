//! Opening a GPU: the driver and NVRTC present, their versions checked together
//! ([`crate::gpu::check_compatibility`]), the context, the NVRTC kernels, the slots with their GEMM engine
//! (cuBLASLt, or dp4a loudly when it cannot run), the per-slot memory budget and the NVML monitor.

use super::{
    CudaBackend, DEFAULT_TIMEOUT, FallbackLog, GpuMonitor, Kernels, RESERVED_BYTES, SLOTS, Slot,
    driver, health::guarded,
};
use crate::{
    BackendError, BackendKind,
    gpu::{Compatibility, GemmEngine, check_compatibility},
};
use cudarc::driver::{CudaContext, sys};
use std::{
    collections::HashMap,
    sync::{Mutex, atomic::AtomicUsize},
};

/// Why the CUDA libraries cannot be used on this machine, if they cannot.
fn libraries_missing() -> Option<String> {
    // SAFETY: these only try to open the shared libraries (no symbol is called).
    let (driver, nvrtc) = unsafe {
        (cudarc::driver::sys::is_culib_present(), cudarc::nvrtc::sys::is_culib_present())
    };
    if !driver {
        return Some(
            "no NVIDIA driver found (libcuda.so could not be loaded): this machine has no usable GPU; \
             use --backend cpu"
                .into(),
        );
    }
    if !nvrtc {
        return Some(
            "libnvrtc could not be loaded: install the NVRTC of the driver's CUDA major version (e.g. pip \
             install nvidia-cuda-nvrtc-cu12 for an R535/R550/R570 driver, nvidia-cuda-nvrtc for R580+) or \
             add it to LD_LIBRARY_PATH; use --backend cpu meanwhile"
                .into(),
        );
    }
    None
}

/// The engine label of a backend: `cublaslt`, `dp4a (asked for)` or `dp4a (fallback: why)`.
fn engine_note(asked: GemmEngine, compat: &Compatibility) -> String {
    match (&compat.fallback, asked) {
        (Some(why), _) => format!("dp4a (fallback: {why})"),
        (None, GemmEngine::Dp4a) => "dp4a (asked for)".into(),
        (None, GemmEngine::CublasLt) => "cublaslt".into(),
    }
}

/// `GPU-xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx`, as NVML and nvidia-smi print it.
fn uuid_string(uuid: &sys::CUuuid) -> String {
    let b: Vec<u8> = uuid.bytes.iter().map(|&c| c as u8).collect();
    let hex =
        |r: std::ops::Range<usize>| b[r].iter().map(|x| format!("{x:02x}")).collect::<String>();
    format!("GPU-{}-{}-{}-{}-{}", hex(0..4), hex(4..6), hex(6..8), hex(8..10), hex(10..16))
}

impl CudaBackend {
    /// Opens GPU `device` (CUDA ordinal): creates its context and streams, compiles the kernels with NVRTC
    /// (once per compute capability per process) and sets up cuBLASLt. Without a GPU, driver or NVRTC it
    /// answers [`BackendError::CudaUnavailable`] or [`BackendError::NoDevice`] with what to do.
    pub fn new(device: usize) -> Result<Self, BackendError> {
        Self::with_engine(device, GemmEngine::CublasLt)
    }

    /// Like [`CudaBackend::new`], with a chosen GEMM engine ([`GemmEngine::Dp4a`] skips cuBLASLt).
    pub fn with_engine(device: usize, engine: GemmEngine) -> Result<Self, BackendError> {
        if let Some(why) = libraries_missing() {
            return Err(BackendError::CudaUnavailable(why));
        }
        guarded("opening the CUDA device", || Self::open(device, engine))
    }

    fn open(device: usize, engine: GemmEngine) -> Result<Self, BackendError> {
        let unavailable = |what: &str, e: &dyn std::fmt::Display| {
            BackendError::CudaUnavailable(format!("GPU {device}: {what}: {e}"))
        };
        let found = Self::device_count();
        if device >= found {
            return Err(BackendError::NoDevice { kind: BackendKind::Cuda, index: device, found });
        }
        let libraries =
            driver::libraries().map_err(|e| unavailable("reading CUDA versions", &e))?;
        let ctx =
            CudaContext::new(device).map_err(|e| unavailable("cannot create a context", &e))?;
        // SAFETY: this backend orders its streams itself (events between `main` and the hash streams, buffers
        // only freed when every stream is idle), which is what disabling cudarc's per-buffer event tracking
        // requires.
        unsafe { ctx.disable_event_tracking() };
        let model = ctx.name().unwrap_or_else(|_| "NVIDIA GPU".into());
        let cc = ctx.compute_capability().map_err(|e| unavailable("compute capability", &e))?;
        let compat = check_compatibility(&libraries, cc, engine)
            .map_err(|e| unavailable(&format!("{model} with {libraries}"), &e))?;
        let sms = ctx
            .attribute(sys::CUdevice_attribute::CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT)
            .map_err(|e| unavailable("SM count", &e))?;
        let kernels = Kernels::load(&ctx).map_err(|e| unavailable("loading the kernels", &e))?;
        let mut slots = Vec::with_capacity(SLOTS);
        let mut compat = compat;
        for _ in 0..SLOTS {
            let (slot, unavailable_lt) = Slot::new(&ctx, compat.engine, cc.0)
                .map_err(|e| unavailable("creating a slot", &e))?;
            if let Some(why) = unavailable_lt {
                compat = Compatibility { engine: GemmEngine::Dp4a, fallback: Some(why) };
            }
            slots.push(Mutex::new(slot));
        }
        if compat.engine == GemmEngine::Dp4a && engine == GemmEngine::CublasLt {
            // A slot that did get cuBLASLt would run another engine than the label says: drop them all to
            // dp4a, so that the label, the metric and the stats agree.
            let retry = (0..SLOTS)
                .map(|_| Slot::new(&ctx, GemmEngine::Dp4a, cc.0).map(|(slot, _)| Mutex::new(slot)))
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| unavailable("creating a slot", &e))?;
            slots = retry;
        }
        let gemm_note = engine_note(engine, &compat);
        if let Some(why) = &compat.fallback {
            tracing::warn!(
                gpu = device,
                %model,
                %libraries,
                reason = %why,
                "cuBLASLt cannot run on this GPU: the dp4a GEMM runs instead, 20-30x slower"
            );
        }
        let (free, _total) = ctx.mem_get_info().map_err(|e| unavailable("memory info", &e))?;
        let memory_bytes = (free as u64).saturating_sub(RESERVED_BYTES) / SLOTS as u64;
        let monitor = ctx.uuid().ok().and_then(|u| GpuMonitor::open_by_uuid(&uuid_string(&u)).ok());
        Ok(Self {
            ordinal: device,
            name: format!("cuda:{device}"),
            model: format!("{model} (sm_{}{}, {libraries}, engine {})", cc.0, cc.1, compat.engine),
            ctx,
            kernels,
            slots,
            next_slot: AtomicUsize::new(0),
            memory_bytes,
            compute_units: u32::try_from(sms).unwrap_or(0),
            timeout: DEFAULT_TIMEOUT,
            libraries,
            engine: compat.engine,
            fallback: compat.fallback,
            gemm_note,
            fallbacks: FallbackLog::default(),
            quarantine: Mutex::new(None),
            monitor,
            last_stats: Mutex::new(HashMap::new()),
        })
    }

    /// Number of visible CUDA devices (0 without a driver; honours `CUDA_VISIBLE_DEVICES`).
    pub fn device_count() -> usize {
        if libraries_missing().is_some() {
            return 0;
        }
        guarded("counting CUDA devices", || {
            CudaContext::device_count()
                .map(|n| usize::try_from(n).unwrap_or(0))
                .map_err(|e| BackendError::CudaUnavailable(e.to_string()))
        })
        .unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uuid_formats_like_nvidia_smi() {
        let mut u: sys::CUuuid = sys::CUuuid { bytes: [0; 16] };
        for (i, b) in u.bytes.iter_mut().enumerate() {
            *b = (i * 17) as _;
        }
        assert_eq!(uuid_string(&u), "GPU-00112233-4455-6677-8899-aabbccddeeff");
    }

    #[test]
    fn without_a_gpu_new_says_why() {
        if CudaBackend::device_count() == 0 {
            let err = CudaBackend::new(0).expect_err("no GPU here");
            let msg = err.to_string();
            assert!(msg.contains("cpu") || msg.contains("no cuda device"), "{msg}");
        }
    }
}
