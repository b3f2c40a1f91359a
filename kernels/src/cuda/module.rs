//! The device code: `kernels.cu` (Philox generation, SHA-256 per row, the fallback dp4a GEMM) compiled by
//! NVRTC at start-up and loaded into each GPU's context.
//!
//! NVRTC rather than a `build.rs` + `nvcc` step, so that the crate builds on machines without a CUDA
//! toolkit (CI, developers) and the PTX always matches the GPU it runs on: the source is compiled once per
//! compute capability per process (cached here) and JIT-linked by the driver into each device's context.

use cudarc::{
    driver::{CudaContext, CudaFunction},
    nvrtc::{CompileOptions, Ptx, compile_ptx_with_opts},
};
use std::{
    collections::HashMap,
    sync::{Arc, Mutex, OnceLock},
};

/// The CUDA C source of every kernel.
pub(crate) const SOURCE: &str = include_str!("kernels.cu");

/// PTX per compute capability `(major, minor)`, compiled at most once per process.
static PTX_CACHE: OnceLock<Mutex<HashMap<(i32, i32), Ptx>>> = OnceLock::new();

/// The kernels of one device's context.
#[derive(Debug, Clone)]
pub(crate) struct Kernels {
    /// `gen_a`: the shard's rows of A, row-major, zero-padded.
    pub(crate) gen_a: CudaFunction,
    /// `gen_bt`: all of B, transposed (the GEMM's "TN" layout), zero-padded.
    pub(crate) gen_bt: CudaFunction,
    /// `gemm_i8_dp4a`: exact GEMM used when cuBLASLt is unavailable.
    pub(crate) gemm_dp4a: CudaFunction,
    /// `sha256_rows`: one leaf per row of C.
    pub(crate) sha256_rows: CudaFunction,
}

/// Compiles (or takes from the cache) the PTX for compute capability `cc`.
fn ptx_for(cc: (i32, i32)) -> Result<Ptx, String> {
    let cache = PTX_CACHE.get_or_init(|| Mutex::new(HashMap::new()));
    let mut cache = cache.lock().map_err(|_| "the PTX cache lock is poisoned".to_owned())?;
    if let Some(ptx) = cache.get(&cc) {
        return Ok(ptx.clone());
    }
    let options = CompileOptions {
        options: vec![format!("--gpu-architecture=compute_{}{}", cc.0, cc.1), "--std=c++17".into()],
        name: Some("cpc_kernels.cu".into()),
        ..CompileOptions::default()
    };
    let ptx = compile_ptx_with_opts(SOURCE, options).map_err(|e| {
        format!("NVRTC could not compile the kernels for compute capability {}.{}: {e}", cc.0, cc.1)
    })?;
    cache.insert(cc, ptx.clone());
    Ok(ptx)
}

impl Kernels {
    /// Compiles the kernels for `ctx`'s device and loads them into its context.
    pub(crate) fn load(ctx: &Arc<CudaContext>) -> Result<Self, String> {
        let cc = ctx
            .compute_capability()
            .map_err(|e| format!("cannot read the compute capability: {e}"))?;
        let ptx = ptx_for(cc)?;
        let module = ctx.load_module(ptx).map_err(|e| {
            format!(
                "the driver could not load the NVRTC PTX ({e}): the NVRTC library is newer than the driver; \
                 update the NVIDIA driver or use an NVRTC matching it"
            )
        })?;
        let function = |name: &str| {
            module
                .load_function(name)
                .map_err(|e| format!("kernel `{name}` missing from the module: {e}"))
        };
        Ok(Self {
            gen_a: function("gen_a")?,
            gen_bt: function("gen_bt")?,
            gemm_dp4a: function("gemm_i8_dp4a")?,
            sha256_rows: function("sha256_rows")?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::SOURCE;

    #[test]
    fn source_declares_every_kernel() {
        for name in ["gen_a(", "gen_bt(", "gemm_i8_dp4a(", "sha256_rows("] {
            assert!(SOURCE.contains(name), "{name}");
        }
        assert!(!SOURCE.contains('\0'), "NVRTC takes the source as a C string");
    }
}
