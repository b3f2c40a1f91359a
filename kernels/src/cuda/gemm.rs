//! The exact `i8 × i8 → i32` GEMM on the device: cuBLASLt (`CUBLAS_COMPUTE_32I`, `CUDA_R_8I` inputs,
//! `CUDA_R_32I` output and scale), called through cudarc's result-level API because cudarc's safe
//! `Matmul` only covers floating point; the NVRTC `gemm_i8_dp4a` kernel when cuBLASLt cannot be used.
//!
//! # Layout ("TN")
//!
//! cuBLASLt is column-major and its int8 tensor-core (IMMA) kernels want `op(A) = Aᵀ`, `op(B) = B`. Our
//! buffers are row-major: A (`rows × ldk`), Bᵗ (`npad × ldk`, B stored transposed by the generator) and C
//! (`rows × npad`). Read column-major, row-major C is Cᵀ (`npad × rows`), and
//! `Cᵀ = Bᵀ · Aᵀ`; so the cuBLASLt call is `D (m' × n') = op(X) · Y` with
//! - `m' = npad`, `n' = rows`, `k' = ldk`;
//! - X = our Bᵗ buffer, stored `k' × m'` column-major (ld `ldk`), `TRANSA = T`;
//! - Y = our A buffer, stored `k' × n'` column-major (ld `ldk`), `TRANSB = N`;
//! - D = our C buffer, `m' × n'` column-major (ld `npad`).
//!
//! IMMA needs m', k' and every leading dimension to be multiples of 4 and 4-byte-aligned pointers (16 for
//! speed); every dimension is padded to a multiple of [`super::PAD`] (64) with zeros (zero k-padding in
//! both A and Bᵗ adds nothing to any sum), and row chunks start at multiples of 64 rows, so all of that
//! holds and the result stays exact.

use cudarc::{
    cublaslt::{result as lt, result::CublasError, sys},
    driver::{CudaSlice, CudaStream, DevicePtr},
};
use std::{collections::HashMap, ffi::c_void, mem::size_of, sync::Arc};

/// cuBLASLt workspace: NVIDIA's recommendation, 32 MiB on Hopper and newer, 4 MiB before.
pub(crate) fn workspace_bytes(cc_major: i32) -> usize {
    if cc_major >= 9 { 32 << 20 } else { 4 << 20 }
}

/// `CUBLAS_OP_N` of `cublasOperation_t` (cublas_api.h).
const CUBLAS_OP_N: i32 = 0;
/// `CUBLAS_OP_T` of `cublasOperation_t` (cublas_api.h).
const CUBLAS_OP_T: i32 = 1;

/// The cuBLASLt problem for `C[0..rows] = A[0..rows] · B` on our row-major buffers (see the module docs):
/// `D (m × n) = op(X) · op(Y)`, column-major, with X = our Bᵗ buffer and Y = our A buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct LtShape {
    m: u64,
    n: u64,
    k: u64,
    /// `TRANSA`: X is stored `k × m` and used transposed.
    trans_x: bool,
    /// `TRANSB`: Y is stored `k × n` and used as is.
    trans_y: bool,
    /// X's layout: `(rows, cols, ld)` as stored.
    x: (u64, u64, i64),
    /// Y's layout: `(rows, cols, ld)` as stored.
    y: (u64, u64, i64),
    /// D's (and C's) layout: `(rows, cols, ld)`.
    d: (u64, u64, i64),
}

impl LtShape {
    /// The "TN" problem for `rows` rows of A (`rows × ldk`), Bᵗ (`npad × ldk`) and C (`rows × npad`).
    fn tn(npad: u32, rows: u32, ldk: u32) -> Self {
        let (m, n, k) = (u64::from(npad), u64::from(rows), u64::from(ldk));
        Self {
            m,
            n,
            k,
            trans_x: true,
            trans_y: false,
            x: (k, m, i64::from(ldk)),
            y: (k, n, i64::from(ldk)),
            d: (m, n, i64::from(npad)),
        }
    }
}

/// One shape's descriptors and chosen algorithm, kept for the next shard of the same shape.
struct Plan {
    desc: sys::cublasLtMatmulDesc_t,
    x_layout: sys::cublasLtMatrixLayout_t,
    y_layout: sys::cublasLtMatrixLayout_t,
    d_layout: sys::cublasLtMatrixLayout_t,
    algo: sys::cublasLtMatmulAlgo_t,
}

impl Drop for Plan {
    fn drop(&mut self) {
        // SAFETY: each handle was created by the matching cublasLt create call in `LtGemm::plan` and is destroyed
        // exactly once, here; errors on destruction cannot be acted on and are ignored.
        unsafe {
            let _ = lt::destroy_matrix_layout(self.x_layout);
            let _ = lt::destroy_matrix_layout(self.y_layout);
            let _ = lt::destroy_matrix_layout(self.d_layout);
            let _ = lt::destroy_matmul_desc(self.desc);
        }
    }
}

/// A GEMM shape as cuBLASLt is asked for it: `(npad, rows, ldk)`.
pub(crate) type Shape = (u32, u32, u32);

/// A cuBLASLt handle, its workspace, the plans made so far and the shapes cuBLASLt failed on (each given to
/// the dp4a kernel from then on, without asking cuBLASLt again). Used by one slot at a time.
pub(crate) struct LtGemm {
    handle: sys::cublasLtHandle_t,
    workspace: CudaSlice<u8>,
    plans: HashMap<Shape, Plan>,
    failed: HashMap<Shape, String>,
}

impl std::fmt::Debug for LtGemm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LtGemm")
            .field("workspace_bytes", &self.workspace.len())
            .field("plans", &self.plans.len())
            .field("failed_shapes", &self.failed.len())
            .finish()
    }
}

// SAFETY: the cuBLASLt handle and descriptors are plain heap objects of the library, not tied to a thread;
// `LtGemm` lives inside a slot behind a `Mutex`, so exactly one thread uses it at a time.
unsafe impl Send for LtGemm {}

impl Drop for LtGemm {
    fn drop(&mut self) {
        self.plans.clear();
        // SAFETY: `handle` came from `create_handle` in `LtGemm::new` and is destroyed once, after its plans.
        let _ = unsafe { lt::destroy_handle(self.handle) };
    }
}

/// `size_of::<T>()` for attribute setters.
fn attr<T>(value: &T) -> (*const c_void, usize) {
    (std::ptr::from_ref(value).cast::<c_void>(), size_of::<T>())
}

impl LtGemm {
    /// A handle and a workspace allocated on `stream`. Fails when libcublasLt cannot be loaded.
    pub(crate) fn new(stream: &Arc<CudaStream>, cc_major: i32) -> Result<Self, String> {
        // SAFETY: only probes whether the shared library can be opened (no symbol is called).
        if !unsafe { sys::is_culib_present() } {
            return Err("libcublasLt was not found (install the cuBLAS libraries of the driver's CUDA major \
                        version or add them to LD_LIBRARY_PATH)"
                .into());
        }
        stream.context().bind_to_thread().map_err(|e| format!("cannot bind the context: {e}"))?;
        let handle = lt::create_handle().map_err(|e| format!("cublasLtCreate failed: {e}"))?;
        let workspace = match stream.alloc_zeros::<u8>(workspace_bytes(cc_major)) {
            Ok(w) => w,
            Err(e) => {
                // SAFETY: the handle was just created and nothing else refers to it.
                let _ = unsafe { lt::destroy_handle(handle) };
                return Err(format!("cannot allocate the cuBLASLt workspace: {e}"));
            }
        };
        Ok(Self { handle, workspace, plans: HashMap::new(), failed: HashMap::new() })
    }

    /// Why cuBLASLt failed on `shape` before, if it did: the caller runs the dp4a kernel instead.
    pub(crate) fn failed(&self, shape: Shape) -> Option<&str> {
        self.failed.get(&shape).map(String::as_str)
    }

    /// Remembers that cuBLASLt failed on `shape` (its plan is dropped), so that it is not asked again.
    pub(crate) fn remember_failure(&mut self, shape: Shape, why: String) {
        self.plans.remove(&shape);
        self.failed.insert(shape, why);
    }

    /// The plan for `D (npad × rows) = op(Bᵗ) · A` (see the module docs), made on first use.
    fn ensure_plan(&mut self, npad: u32, rows: u32, ldk: u32) -> Result<(), CublasError> {
        use std::collections::hash_map::Entry;
        let entry = match self.plans.entry((npad, rows, ldk)) {
            Entry::Occupied(_) => return Ok(()),
            Entry::Vacant(v) => v,
        };
        let shape = LtShape::tn(npad, rows, ldk);
        let desc = lt::create_matmul_desc(
            sys::cublasComputeType_t::CUBLAS_COMPUTE_32I,
            sys::cudaDataType_t::CUDA_R_32I,
        )?;
        // From here on `plan` owns every handle, so an early return destroys what was made.
        let mut plan = Plan {
            desc,
            x_layout: std::ptr::null_mut(),
            y_layout: std::ptr::null_mut(),
            d_layout: std::ptr::null_mut(),
            // SAFETY: `cublasLtMatmulAlgo_t` is a plain C struct of integers, valid when zeroed; it is
            // overwritten by the heuristic below before use.
            algo: unsafe { std::mem::zeroed() },
        };
        // `cublasOperation_t` (not re-exported by cudarc's cublaslt bindings): CUBLAS_OP_N = 0, CUBLAS_OP_T = 1,
        // a 32-bit C enum; cudarc's own safe matmul passes it the same way.
        let op = |trans: bool| if trans { CUBLAS_OP_T } else { CUBLAS_OP_N };
        let (trans_x, trans_y) = (op(shape.trans_x), op(shape.trans_y));
        let (tx, ty) = (attr(&trans_x), attr(&trans_y));
        // SAFETY: `plan.desc` is a live descriptor; the buffers point at local `i32`s, the size of the attribute's
        // type (`cublasOperation_t`, a 32-bit enum), with their exact sizes.
        unsafe {
            lt::set_matmul_desc_attribute(
                plan.desc,
                sys::cublasLtMatmulDescAttributes_t::CUBLASLT_MATMUL_DESC_TRANSA,
                tx.0,
                tx.1,
            )?;
            lt::set_matmul_desc_attribute(
                plan.desc,
                sys::cublasLtMatmulDescAttributes_t::CUBLASLT_MATMUL_DESC_TRANSB,
                ty.0,
                ty.1,
            )?;
        }
        let ((xr, xc, xld), (yr, yc, yld), (dr, dc, dld)) = (shape.x, shape.y, shape.d);
        plan.x_layout = lt::create_matrix_layout(sys::cudaDataType_t::CUDA_R_8I, xr, xc, xld)?;
        plan.y_layout = lt::create_matrix_layout(sys::cudaDataType_t::CUDA_R_8I, yr, yc, yld)?;
        plan.d_layout = lt::create_matrix_layout(sys::cudaDataType_t::CUDA_R_32I, dr, dc, dld)?;
        let pref = lt::create_matmul_pref()?;
        let workspace = self.workspace.len();
        let w = attr(&workspace);
        // SAFETY: `pref` and the plan's handles are live; the workspace attribute is a `usize` (the API's `size_t`)
        // passed with its size; the heuristic only reads the descriptors. `pref` is destroyed once, right after.
        let heuristic = unsafe {
            let set = lt::set_matmul_pref_attribute(
                pref,
                sys::cublasLtMatmulPreferenceAttributes_t::CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES,
                w.0,
                w.1,
            );
            let heuristic = set.and_then(|()| {
                lt::get_matmul_algo_heuristic(
                    self.handle,
                    plan.desc,
                    plan.x_layout,
                    plan.y_layout,
                    plan.d_layout,
                    plan.d_layout,
                    pref,
                )
            });
            let _ = lt::destroy_matmul_pref(pref);
            heuristic?
        };
        plan.algo = heuristic.algo;
        entry.insert(plan);
        Ok(())
    }

    /// Enqueues `C[0..rows] = A[0..rows] · B` on `stream` (see the module docs for the layout).
    ///
    /// # Safety
    /// `a`, `bt` and `c` must be device pointers of the stream's context, valid until the stream passes this
    /// call, holding `rows × ldk` bytes, `npad × ldk` bytes and `rows × npad` `i32` respectively, 16-byte
    /// aligned, with `rows`, `npad` and `ldk` multiples of 4.
    #[allow(clippy::too_many_arguments)] // the operands of one GEMM; a struct would only rename them
    pub(crate) unsafe fn matmul(
        &mut self,
        stream: &CudaStream,
        a: u64,
        bt: u64,
        c: u64,
        rows: u32,
        npad: u32,
        ldk: u32,
    ) -> Result<(), CublasError> {
        let (alpha, beta) = (1i32, 0i32);
        self.ensure_plan(npad, rows, ldk)?;
        let Some(plan) = self.plans.get(&(npad, rows, ldk)) else {
            return Err(CublasError(sys::cublasStatus_t::CUBLAS_STATUS_INTERNAL_ERROR));
        };
        let workspace_len = self.workspace.len();
        let (workspace, _sync) = self.workspace.device_ptr(stream);
        let workspace = workspace as *mut c_void;
        // SAFETY: the descriptors are live (owned by `plan`); alpha/beta are `i32` as the `CUDA_R_32I` scale type
        // wants (host pointer mode, the default); the caller guarantees the device buffers; C is both the input
        // (ignored: beta = 0) and the output; the workspace is ours and the stream is of the same context.
        unsafe {
            lt::matmul(
                self.handle,
                plan.desc,
                std::ptr::from_ref(&alpha).cast(),
                std::ptr::from_ref(&beta).cast(),
                bt as *const c_void,
                plan.x_layout,
                a as *const c_void,
                plan.y_layout,
                c as *const c_void,
                plan.d_layout,
                c as *mut c_void,
                plan.d_layout,
                &plan.algo,
                workspace,
                workspace_len,
                stream.cu_stream() as sys::cudaStream_t,
            )
        }
    }
}

#[cfg(test)]
mod tests {
    use super::LtShape;

    /// cuBLASLt's definition of `D = op(X) · op(Y)` (cuBLAS docs: column-major, element `(r, c)` of a stored
    /// matrix at `r + c · ld`; `op(M)` is `Mᵀ` when transposed), for the int8 → int32 case, checked against
    /// what the shape says X, Y and D are.
    fn lt_product(s: &LtShape, x: &[i8], y: &[i8]) -> Vec<i32> {
        let at = |layout: (u64, u64, i64), r: u64, c: u64| {
            assert!(r < layout.0 && c < layout.1, "({r}, {c}) outside a {layout:?} matrix");
            (r + c * layout.2 as u64) as usize
        };
        let op_x = |i: u64, p: u64| if s.trans_x { x[at(s.x, p, i)] } else { x[at(s.x, i, p)] };
        let op_y = |p: u64, j: u64| if s.trans_y { y[at(s.y, j, p)] } else { y[at(s.y, p, j)] };
        let mut d = vec![i32::MIN; (s.d.2 as u64 * s.d.1) as usize];
        for j in 0..s.n {
            for i in 0..s.m {
                d[at(s.d, i, j)] =
                    (0..s.k).map(|p| i32::from(op_x(i, p)) * i32::from(op_y(p, j))).sum();
            }
        }
        d
    }

    /// The shape handed to cuBLASLt computes exactly row-major `C[i][j] = Σₖ A[i][k] · Bᵗ[j][k]` on our
    /// buffers, with the alignment IMMA needs (dimensions and leading dimensions multiples of 4).
    #[test]
    fn the_tn_problem_is_our_row_major_product() {
        let (npad, rows, ldk) = (128u32, 64u32, 192u32);
        let s = LtShape::tn(npad, rows, ldk);
        for v in [s.m, s.k, s.x.2 as u64, s.y.2 as u64, s.d.2 as u64] {
            assert_eq!(v % 4, 0, "{s:?}");
        }
        let fill = |len: usize, seed: u32| -> Vec<i8> {
            (0..len as u32)
                .map(|i| (i.wrapping_mul(2_654_435_761).wrapping_add(seed) >> 24) as i8)
                .collect()
        };
        let a = fill(rows as usize * ldk as usize, 7); // row-major rows × ldk
        let bt = fill(npad as usize * ldk as usize, 11); // row-major npad × ldk (B transposed)
        let d = lt_product(&s, &bt, &a);
        for i in 0..rows as usize {
            for j in 0..npad as usize {
                let want: i32 = (0..ldk as usize)
                    .map(|k| {
                        i32::from(a[i * ldk as usize + k]) * i32::from(bt[j * ldk as usize + k])
                    })
                    .sum();
                assert_eq!(d[i * npad as usize + j], want, "C[{i}][{j}]");
            }
        }
    }
}
