//! Freivalds' check on the GPU (the model: `crate::freivalds`, `docs/VERIFICATION.md`): after a shard's
//! GEMM, on the same stream, the `freivalds_*` kernels of `kernels.cu` compute both sides of
//! `C·r == A·(B·r)` for every row with matrix-vector products on the CUDA cores, a path apart from the
//! tensor-core GEMM. Only 16 bytes per row (the two sums) cross PCIe; the host compares them.
//!
//! `kernels/tests/it/cuda_host.rs` runs these kernels on the host with the grids used here and compares
//! their sums with the CPU check's, bit for bit.

use super::{
    module::Kernels,
    slot::{Dims, Fail, cuda, grid, secs, timing_event, wait_event},
};
use crate::freivalds::{CheckSeed, RowSums, check_vector};
use cudarc::driver::{CudaSlice, CudaStream, LaunchConfig, PushKernelArg};
use std::{sync::Arc, time::Instant};

/// Columns of B per partial sum of `B·r` (`FREIVALDS_CHUNK` in `kernels.cu`).
const CHUNK_COLUMNS: u32 = 256;
/// Threads per block of `freivalds_rows` (`FREIVALDS_THREADS` in `kernels.cu`).
const ROW_THREADS: u32 = 128;
/// Threads per block of the two `B·r` kernels.
const VECTOR_BLOCK: u32 = 256;

/// What the check found on the device: both sides per row, and its device time.
pub(super) struct DeviceCheck {
    /// The row sums, in row order (the shard's rows only).
    pub(super) sums: Vec<RowSums>,
    /// Device seconds from the first upload to the last kernel.
    pub(super) seconds: f64,
}

/// The device buffers of one shard's product, as the slot holds them.
pub(super) struct Product<'a> {
    pub(super) a: &'a CudaSlice<i8>,
    pub(super) bt: &'a CudaSlice<i8>,
    pub(super) c: &'a CudaSlice<i32>,
}

/// Element counts of the check's device scratch, allocated for each run next to the slot's kept buffers:
/// the check vector r (`i32`), the partial sums of `B·r` and `B·r` itself (`i64`), and two sums per row
/// (`u64`).
struct ScratchLens {
    r: usize,
    partial: usize,
    y: usize,
    sums: usize,
}

impl ScratchLens {
    fn of(d: &Dims) -> Self {
        let chunks = d.n.div_ceil(CHUNK_COLUMNS) as usize;
        Self {
            r: d.n as usize,
            partial: chunks * d.ldk as usize,
            y: d.ldk as usize,
            sums: 2 * d.rows as usize,
        }
    }
}

/// Device bytes the check of a shard of `d` allocates on top of the slot's buffers (the memory plan counts
/// them against the slot's budget).
pub(super) fn scratch_bytes(d: &Dims) -> u64 {
    let lens = ScratchLens::of(d);
    4 * lens.r as u64 + 8 * (lens.partial + lens.y + lens.sums) as u64
}

/// Runs the check on `stream`, which must already be ordered after the whole GEMM, and waits for it
/// against `deadline`.
pub(super) fn run(
    stream: &Arc<CudaStream>,
    k: &Kernels,
    product: Product<'_>,
    d: &Dims,
    seed: CheckSeed,
    deadline: Instant,
) -> Result<DeviceCheck, Fail> {
    let start = timing_event(stream)?;
    let lens = ScratchLens::of(d);
    let r = check_vector(seed, lens.r);
    let r_dev = stream.clone_htod(&r).map_err(cuda("the check vector"))?;
    let chunks = d.n.div_ceil(CHUNK_COLUMNS);
    let mut partial = stream.alloc_zeros::<i64>(lens.partial).map_err(cuda("B·r partials"))?;
    let mut y = stream.alloc_zeros::<i64>(lens.y).map_err(cuda("B·r"))?;
    let mut sums = stream.alloc_zeros::<u64>(lens.sums).map_err(cuda("check sums"))?;
    let (n, ldk, ldc, rows) = (d.n, d.ldk, d.npad, d.rows);

    let cfg = grid(u64::from(ldk) * u64::from(chunks), VECTOR_BLOCK)?;
    let mut launch = stream.launch_builder(&k.freivalds_bt_r);
    launch.arg(product.bt).arg(&r_dev).arg(&mut partial).arg(&n).arg(&ldk).arg(&chunks);
    // SAFETY: arguments match `freivalds_bt_r(const i8* bt, const int* r, long long* partial, u32 n, u32 ldk,
    // u32 chunks)`; threads t < ldk × chunks read Bᵗ rows j < n (`npad × ldk` bytes) and r[j < n] (n
    // entries), and write partial[t] (`chunks × ldk` entries).
    unsafe { launch.launch(cfg) }.map_err(cuda("launching freivalds_bt_r"))?;

    let cfg = grid(u64::from(ldk), VECTOR_BLOCK)?;
    let mut launch = stream.launch_builder(&k.freivalds_reduce_y);
    launch.arg(&partial).arg(&mut y).arg(&ldk).arg(&chunks);
    // SAFETY: arguments match `freivalds_reduce_y(const long long* partial, long long* y, u32 ldk, u32 chunks)`;
    // threads k < ldk read `chunks × ldk` partials and write y[k] (ldk entries).
    unsafe { launch.launch(cfg) }.map_err(cuda("launching freivalds_reduce_y"))?;

    let cfg = LaunchConfig {
        grid_dim: (rows.max(1), 1, 1),
        block_dim: (ROW_THREADS, 1, 1),
        shared_mem_bytes: 0,
    };
    let mut launch = stream.launch_builder(&k.freivalds_rows);
    launch.arg(product.c).arg(product.a).arg(&r_dev).arg(&y).arg(&mut sums);
    launch.arg(&n).arg(&ldc).arg(&ldk);
    // SAFETY: arguments match `freivalds_rows(const int* c, const i8* a, const int* r, const long long* y,
    // u64* sums, u32 n, u32 ldc, u32 ldk)`; block i < rows reads row i of C (stride npad ≥ n) and of A (stride
    // ldk ≥ n), r and y up to n, and writes sums[2i], sums[2i + 1] (`2 × rows` entries); rows ≥ 1 for a
    // validated shard.
    unsafe { launch.launch(cfg) }.map_err(cuda("launching freivalds_rows"))?;

    let end = timing_event(stream)?;
    wait_event(&end, deadline, "the Freivalds check")?;
    let host = stream.clone_dtoh(&sums).map_err(cuda("copying the check's sums"))?;
    let seconds = secs(&start, &end)?;
    let sums = host.as_chunks::<2>().0.iter().map(|&[product, inputs]| RowSums { product, inputs });
    Ok(DeviceCheck { sums: sums.collect(), seconds })
}
