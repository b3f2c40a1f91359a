//! The device code: `kernels.cu` (Philox generation, SHA-256 per row, the fallback dp4a GEMM) compiled by
//! NVRTC at start-up and loaded into each GPU's context.
//!
//! NVRTC rather than a `build.rs` + `nvcc` step, so that the crate builds on machines without a CUDA
//! toolkit (CI, developers) and the code always matches the GPU it runs on. The source is compiled once per
//! compute capability per process (cached here) straight to a CUBIN for that exact architecture: no PTX
//! JIT in the driver at start-up, and, unlike PTX, a CUBIN loads under CUDA's minor-version compatibility
//! (an NVRTC 13.x newer than the driver's 13.0 is fine). Only when this NVRTC does not know the GPU's
//! architecture (a GPU newer than the library) is PTX built for the newest architecture it knows, for the
//! driver to JIT forward.

use cudarc::{
    driver::{CudaContext, CudaFunction},
    nvrtc::{Ptx, result as nvrtc, sys},
};
use std::{
    collections::HashMap,
    ffi::{CString, c_char, c_int},
    sync::{Arc, Mutex, OnceLock},
};

/// The CUDA C source of every kernel.
pub(crate) const SOURCE: &str = include_str!("kernels.cu");

/// Device code per compute capability `(major, minor)`, compiled at most once per process.
static CODE_CACHE: OnceLock<Mutex<HashMap<(i32, i32), Code>>> = OnceLock::new();

/// What NVRTC built for one compute capability.
#[derive(Debug, Clone)]
pub(crate) enum Code {
    /// Machine code for exactly this architecture (`sm_XY`).
    Cubin(Vec<u8>),
    /// PTX for an older virtual architecture (`compute_XY`, `arch` = 10·X + Y), JIT-compiled by the driver.
    Ptx { ptx: String, arch: i32 },
}

/// A live NVRTC program, destroyed on drop.
struct Program(sys::nvrtcProgram);

impl Drop for Program {
    fn drop(&mut self) {
        // SAFETY: the program came from `nvrtc::create_program` and is destroyed once, here.
        let _ = unsafe { nvrtc::destroy_program(self.0) };
    }
}

impl Program {
    fn log(&self) -> String {
        // SAFETY: the program is live (owned by `self`).
        let log = unsafe { nvrtc::get_program_log(self.0) }.unwrap_or_default();
        let bytes: Vec<u8> = log.iter().map(|&c| c as u8).take_while(|&b| b != 0).collect();
        String::from_utf8_lossy(&bytes).trim().to_owned()
    }

    /// A buffer filled by one of NVRTC's `get size` / `get bytes` pairs.
    fn output(
        &self,
        what: &str,
        size: unsafe fn(sys::nvrtcProgram, *mut usize) -> sys::nvrtcResult,
        fill: unsafe fn(sys::nvrtcProgram, *mut c_char) -> sys::nvrtcResult,
    ) -> Result<Vec<u8>, String> {
        let mut len = 0usize;
        // SAFETY: the program is live and compiled; `len` is a valid out-pointer.
        unsafe { size(self.0, &raw mut len) }
            .result()
            .map_err(|e| format!("reading the {what} size: {e}"))?;
        let mut buf = vec![0u8; len];
        // SAFETY: `buf` holds exactly the `len` bytes NVRTC said it will write.
        unsafe { fill(self.0, buf.as_mut_ptr().cast::<c_char>()) }
            .result()
            .map_err(|e| format!("reading the {what}: {e}"))?;
        Ok(buf)
    }
}

/// The NVRTC library's version, `(major, minor)`.
pub(crate) fn nvrtc_version() -> Result<(i32, i32), String> {
    let (mut major, mut minor): (c_int, c_int) = (0, 0);
    // SAFETY: two valid out-pointers.
    unsafe { sys::nvrtcVersion(&raw mut major, &raw mut minor) }
        .result()
        .map_err(|e| format!("nvrtcVersion: {e}"))?;
    Ok((major, minor))
}

/// The real architectures this NVRTC can build CUBINs for (`10·major + minor`, ascending).
pub(crate) fn supported_archs() -> Result<Vec<i32>, String> {
    let mut count: c_int = 0;
    // SAFETY: a valid out-pointer.
    unsafe { sys::nvrtcGetNumSupportedArchs(&raw mut count) }
        .result()
        .map_err(|e| format!("nvrtcGetNumSupportedArchs: {e}"))?;
    let mut archs = vec![0 as c_int; usize::try_from(count).unwrap_or(0)];
    // SAFETY: `archs` holds the `count` entries NVRTC writes.
    unsafe { sys::nvrtcGetSupportedArchs(archs.as_mut_ptr()) }
        .result()
        .map_err(|e| format!("nvrtcGetSupportedArchs: {e}"))?;
    archs.sort_unstable();
    Ok(archs)
}

/// Compiles [`SOURCE`] for compute capability `cc` (see the module docs for CUBIN vs PTX), with NVRTC's
/// log: its warnings, and with `verbose` ptxas's registers, shared memory and spills per kernel.
pub(crate) fn compile(cc: (i32, i32), verbose: bool) -> Result<(Code, String), String> {
    let version = nvrtc_version()?;
    let arch = cc.0 * 10 + cc.1;
    let archs = supported_archs()?;
    // `None`: a CUBIN for `sm_{arch}`; `Some(older)`: PTX for `compute_{older}`.
    let ptx_arch = if archs.contains(&arch) {
        None
    } else {
        let Some(&older) = archs.iter().rev().find(|&&a| a < arch) else {
            return Err(format!(
                "NVRTC {}.{} knows no architecture up to sm_{arch} (it knows {archs:?})",
                version.0, version.1
            ));
        };
        Some(older)
    };
    let target = match ptx_arch {
        None => format!("--gpu-architecture=sm_{arch}"),
        Some(older) => format!("--gpu-architecture=compute_{older}"),
    };
    let fail = |what: String| {
        format!(
            "NVRTC {}.{} could not compile the kernels for compute capability {}.{} ({target}): {what}",
            version.0, version.1, cc.0, cc.1
        )
    };
    let source = CString::new(SOURCE).map_err(|e| fail(format!("the source holds a NUL: {e}")))?;
    let program = Program(
        nvrtc::create_program(&source, Some(c"cpc_kernels.cu"))
            .map_err(|e| fail(format!("nvrtcCreateProgram: {e}")))?,
    );
    let mut options = vec![target.clone(), "--std=c++17".to_owned()];
    if verbose {
        options.push("--ptxas-options=-v".to_owned());
    }
    // SAFETY: the program is live; the options are plain strings without NUL bytes.
    if let Err(e) = unsafe { nvrtc::compile_program(program.0, &options) } {
        return Err(fail(format!("{e}\n{}", program.log())));
    }
    let code = match ptx_arch {
        None => Code::Cubin(
            program.output("CUBIN", sys::nvrtcGetCUBINSize, sys::nvrtcGetCUBIN).map_err(fail)?,
        ),
        Some(arch) => {
            let mut ptx =
                program.output("PTX", sys::nvrtcGetPTXSize, sys::nvrtcGetPTX).map_err(fail)?;
            ptx.retain(|&b| b != 0);
            let ptx = String::from_utf8(ptx).map_err(|e| fail(format!("PTX is not UTF-8: {e}")))?;
            Code::Ptx { ptx, arch }
        }
    };
    Ok((code, program.log()))
}

/// Compiles (or takes from the cache) the code for compute capability `cc`.
fn code_for(cc: (i32, i32)) -> Result<Code, String> {
    let cache = CODE_CACHE.get_or_init(|| Mutex::new(HashMap::new()));
    let mut cache = cache.lock().map_err(|_| "the kernel cache lock is poisoned".to_owned())?;
    if let Some(code) = cache.get(&cc) {
        return Ok(code.clone());
    }
    let (code, _log) = compile(cc, false)?;
    cache.insert(cc, code.clone());
    Ok(code)
}

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
    /// `freivalds_bt_r`: partial sums of `B·r` for Freivalds' check.
    pub(crate) freivalds_bt_r: CudaFunction,
    /// `freivalds_reduce_y`: `B·r` from its partial sums.
    pub(crate) freivalds_reduce_y: CudaFunction,
    /// `freivalds_rows`: both sides of the check, one block per row.
    pub(crate) freivalds_rows: CudaFunction,
}

impl Kernels {
    /// Compiles the kernels for `ctx`'s device and loads them into its context.
    pub(crate) fn load(ctx: &Arc<CudaContext>) -> Result<Self, String> {
        let cc = ctx
            .compute_capability()
            .map_err(|e| format!("cannot read the compute capability: {e}"))?;
        let (module, hint) = match code_for(cc)? {
            Code::Cubin(cubin) => (
                ctx.load_module(Ptx::from_binary(cubin)),
                match nvrtc_version() {
                    Ok((major, minor)) => format!(
                        "NVRTC {major}.{minor} built it; the driver must support CUDA {major}.0 or newer \
                         (install the NVRTC of the driver's CUDA major version, or update the driver)"
                    ),
                    Err(e) => e,
                },
            ),
            Code::Ptx { ptx, arch } => (
                ctx.load_module(Ptx::from_src(ptx)),
                format!(
                    "PTX for compute_{arch} (this NVRTC does not know sm_{}{}) needs a driver at least as new \
                     as NVRTC; update the driver or NVRTC",
                    cc.0, cc.1
                ),
            ),
        };
        let module =
            module.map_err(|e| format!("the driver could not load the kernels ({e}): {hint}"))?;
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
            freivalds_bt_r: function("freivalds_bt_r")?,
            freivalds_reduce_y: function("freivalds_reduce_y")?,
            freivalds_rows: function("freivalds_rows")?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The entry points of [`SOURCE`].
    const KERNEL_NAMES: [&str; 7] = [
        "gen_a",
        "gen_bt",
        "gemm_i8_dp4a",
        "sha256_rows",
        "freivalds_bt_r",
        "freivalds_reduce_y",
        "freivalds_rows",
    ];

    /// The GPUs the farm targets: A100, RTX 3090, RTX 4090 / L40S, H100 / H200, B200, RTX 5090.
    const TARGETS: [(i32, i32); 6] = [(8, 0), (8, 6), (8, 9), (9, 0), (10, 0), (12, 0)];

    #[test]
    fn source_declares_every_kernel() {
        for name in KERNEL_NAMES {
            assert!(SOURCE.contains(&format!(" {name}(")), "{name}");
        }
        assert!(!SOURCE.contains('\0'), "NVRTC takes the source as a C string");
    }

    /// Whether libnvrtc (CUDA 13) loads here. Without it the NVRTC tests skip loudly, unless
    /// `CPC_REQUIRE_NVRTC=1` (CI installs NVRTC and sets it), where they fail.
    fn nvrtc_or_skip(test: &str) -> bool {
        // SAFETY: only tries to open the shared library.
        if unsafe { sys::is_culib_present() } {
            return true;
        }
        assert!(
            std::env::var("CPC_REQUIRE_NVRTC").as_deref() != Ok("1"),
            "{test}: CPC_REQUIRE_NVRTC=1 but libnvrtc.so.13 does not load (check LD_LIBRARY_PATH)"
        );
        eprintln!(
            "\n*** SKIPPED {test}: libnvrtc.so.13 not found. Install it (pip install nvidia-cuda-nvrtc==13.0.*) \
             and add its lib folder to LD_LIBRARY_PATH to run this test. ***\n"
        );
        false
    }

    /// No GPU needed: NVRTC and its ptxas build every kernel into a CUBIN for every target GPU, with no
    /// register spills (a spill in the SHA-256 or GEMM loop would cost the throughput the benches promise).
    #[test]
    fn nvrtc_builds_every_kernel_for_every_target_gpu() {
        if !nvrtc_or_skip("nvrtc_builds_every_kernel_for_every_target_gpu") {
            return;
        }
        let version = nvrtc_version().expect("NVRTC version");
        eprintln!("NVRTC {}.{}", version.0, version.1);
        for cc in TARGETS {
            let (code, log) = compile(cc, true).unwrap_or_else(|e| panic!("{e}"));
            let sm = format!("sm_{}{}", cc.0, cc.1);
            let Code::Cubin(cubin) = &code else {
                panic!("NVRTC {version:?} built PTX, not a CUBIN, for {sm}");
            };
            assert!(cubin.starts_with(b"\x7fELF"), "{sm}: the CUBIN is not an ELF image");
            for name in KERNEL_NAMES {
                assert!(
                    log.contains(&format!("Compiling entry function '{name}' for '{sm}'")),
                    "{sm}: ptxas did not build `{name}`:\n{}",
                    log
                );
            }
            let spills: Vec<&str> = log
                .lines()
                .filter(|l| {
                    l.contains("spill") && !l.contains("0 bytes spill stores, 0 bytes spill loads")
                })
                .collect();
            assert!(spills.is_empty(), "{sm}: register spills: {spills:?}\n{}", log);
            let warnings: Vec<&str> = log.lines().filter(|l| l.contains("warning")).collect();
            assert!(warnings.is_empty(), "{sm}: NVRTC warnings: {warnings:?}");
        }
    }

    /// A GPU newer than the NVRTC library gets PTX for the newest architecture NVRTC knows.
    #[test]
    fn an_unknown_gpu_gets_ptx_for_the_newest_known_architecture() {
        if !nvrtc_or_skip("an_unknown_gpu_gets_ptx_for_the_newest_known_architecture") {
            return;
        }
        let newest =
            *supported_archs().expect("archs").last().expect("NVRTC knows some architecture");
        let (code, _log) = compile((99, 9), false).unwrap_or_else(|e| panic!("{e}"));
        let Code::Ptx { ptx, arch } = code else { panic!("expected PTX for sm_999") };
        assert_eq!(arch, newest);
        assert!(ptx.contains(&format!(".target sm_{newest}")), "{}", &ptx[..ptx.len().min(400)]);
        for name in KERNEL_NAMES {
            assert!(ptx.contains(&format!(".entry {name}(")), "{name} missing from the PTX");
        }
        let err = compile((1, 0), false).expect_err("no NVRTC builds for sm_10");
        assert!(err.contains("knows no architecture"), "{err}");
    }
}
