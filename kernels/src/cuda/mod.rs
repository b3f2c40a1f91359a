//! The CUDA backend (feature `cuda`): one [`CudaBackend`] per GPU, everything on the device.
//!
//! A shard runs as: Philox generation of its rows of A and of all of B straight into device memory (B stored
//! transposed, so the GEMM needs no transpose; B is kept for the next shard of the same product), an exact
//! `i8 × i8 → i32` GEMM ([`gemm`]: cuBLASLt `CUBLAS_COMPUTE_32I`, or the NVRTC dp4a kernel), and SHA-256
//! per row of C; only the 32-byte leaves come back (rows of C only when asked for, for spot checks).
//!
//! # Streams and overlap
//!
//! Each backend has [`SLOTS`] slots; a slot owns two streams (`main`: generation and GEMM; `hash`: hashing
//! and copies), its device buffers and a pinned host buffer for the leaves. Within a shard, the GEMM runs in
//! row chunks on `main` while `hash` hashes the chunks already multiplied. Across shards, two calls of
//! [`Backend::run_shard`] from two threads (or one [`CudaBackend::run_shards`]) take the two slots, so one
//! shard's generation and hashing overlap the other's GEMM. [`DeviceInfo::memory_bytes`] is the memory one
//! slot may use (half of what was free at open, less a reserve), so two shards in flight always fit.
//!
//! # Watchdog and quarantine (for the agent's per-GPU actor)
//!
//! Every wait is bounded: the host polls CUDA events against a deadline ([`CudaBackend::with_timeout`],
//! default [`DEFAULT_TIMEOUT`]) instead of blocking in the driver. A deadline that passes returns
//! [`BackendError::Timeout`]; a CUDA error that can leave the context unusable returns
//! [`BackendError::Cuda`]; either way the backend quarantines itself and every later call answers
//! [`BackendError::Quarantined`] at once, while other GPUs' backends are untouched (nothing is shared
//! between devices except the compiled kernel cache). A driver call that itself never returns (a wedged GPU in
//! an allocation, say) cannot be bounded from inside, so the agent should also run each call on the GPU's
//! own thread and give up on it after `timeout + grace`: quarantine the GPU, stop sending it work, and leave
//! the thread behind rather than join it.
//!
//! # Memory
//!
//! A shard needs `rows_pad × ldk` (A) + `npad × ldk` (Bᵗ) bytes + `rows_pad × npad × 4` (C) + 32 per row
//! ([`gpu_shard_bytes`]), every dimension padded to [`PAD`]. A shard over the slot's budget, or over what the
//! device has free right now, is refused with [`BackendError::ShardTooLarge`] before any work.

mod freivalds;
mod gemm;
mod module;
mod telemetry;

pub use telemetry::GpuMonitor;

use crate::{
    Backend, BackendError, BackendKind, CheckCost, DeviceInfo, Shard, ShardOutput,
    gpu::{GemmEngine, ShardStats},
};
use cpc_common::{
    hashing::Digest32,
    synthetic::{KeyMaterial, matrix_ids},
};
use cudarc::driver::{
    CudaContext, CudaEvent, CudaSlice, CudaStream, DevicePtr, DevicePtrMut, DriverError,
    LaunchConfig, PinnedHostSlice, PushKernelArg, sys,
};
use gemm::LtGemm;
use module::Kernels;
use std::{
    collections::HashMap,
    panic::{AssertUnwindSafe, catch_unwind},
    sync::{
        Arc, Mutex, MutexGuard,
        atomic::{AtomicUsize, Ordering},
    },
    thread::ThreadId,
    time::{Duration, Instant},
};

/// Every dimension (rows, columns, k) is padded to a multiple of this, with zeros.
pub(crate) const PAD: u32 = 64;
/// Shards that can be in flight on one GPU at once.
pub const SLOTS: usize = 2;
/// Default watchdog timeout of one shard.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(120);
/// Device memory left out of the shard budget: context, modules, cuBLASLt workspaces, allocator slack.
const RESERVED_BYTES: u64 = 768 << 20;
/// Rows per GEMM chunk (hashing of a chunk overlaps the next chunk's GEMM).
const CHUNK_ROWS: u32 = 4096;
/// Threads per block of the generation kernels.
const GEN_BLOCK: u32 = 256;
/// Threads per block of the hashing kernel (small: one thread per row, spread over every SM).
const HASH_BLOCK: u32 = 32;

/// Padded sizes of one shard on the device.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Dims {
    n: u32,
    rows: u32,
    rows_pad: u32,
    npad: u32,
    ldk: u32,
}

impl Dims {
    fn new(n: u32, rows: u32) -> Self {
        let pad = |x: u32| x.div_ceil(PAD) * PAD;
        Self { n, rows, rows_pad: pad(rows), npad: pad(n), ldk: pad(n) }
    }

    fn a_len(&self) -> usize {
        self.rows_pad as usize * self.ldk as usize
    }

    fn bt_len(&self) -> usize {
        self.npad as usize * self.ldk as usize
    }

    fn c_len(&self) -> usize {
        self.rows_pad as usize * self.npad as usize
    }

    fn leaves_len(&self) -> usize {
        self.rows_pad as usize * 32
    }

    fn bytes(&self) -> u64 {
        (self.a_len() + self.bt_len() + 4 * self.c_len() + self.leaves_len()) as u64
    }
}

/// Device bytes a shard of `rows` rows at matrix size `n` needs on a GPU (padded A, Bᵗ, C and the leaves).
pub fn gpu_shard_bytes(n: u32, rows: u32) -> u64 {
    Dims::new(n, rows).bytes()
}

/// Which B a slot's `bt` buffer holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct BKey {
    km: KeyMaterial,
    matrix_id: u32,
    n: u32,
}

/// One shard's worth of streams and buffers.
struct Slot {
    main: Arc<CudaStream>,
    hash: Arc<CudaStream>,
    a: Option<CudaSlice<i8>>,
    bt: Option<CudaSlice<i8>>,
    c: Option<CudaSlice<i32>>,
    leaves: Option<CudaSlice<u8>>,
    host_leaves: Option<PinnedHostSlice<u8>>,
    b_key: Option<BKey>,
    lt: Option<LtGemm>,
}

impl std::fmt::Debug for Slot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Slot").field("bytes", &self.held_bytes()).field("lt", &self.lt).finish()
    }
}

/// Why a run failed, before it is turned into a [`BackendError`].
enum Fail {
    /// A CUDA error: the context may be unusable, quarantine.
    Fatal(String),
    /// Out of device memory at allocation: not the GPU's fault, no quarantine.
    OutOfMemory(String),
    /// A wait passed its deadline: quarantine.
    Timeout(&'static str),
}

fn fatal(what: &str) -> impl FnOnce(DriverError) -> Fail + '_ {
    move |e| Fail::Fatal(format!("{what}: {e}"))
}

fn alloc_err(what: &'static str) -> impl FnOnce(DriverError) -> Fail {
    move |e| {
        if e.0 == sys::CUresult::CUDA_ERROR_OUT_OF_MEMORY {
            Fail::OutOfMemory(format!("allocating {what}: {e}"))
        } else {
            Fail::Fatal(format!("allocating {what}: {e}"))
        }
    }
}

/// Makes sure `buf` holds at least `len` elements (reallocating, old buffer freed first, when it does not).
fn ensure<T: cudarc::driver::DeviceRepr + cudarc::driver::ValidAsZeroBits>(
    stream: &Arc<CudaStream>,
    buf: &mut Option<CudaSlice<T>>,
    len: usize,
    what: &'static str,
) -> Result<(), Fail> {
    if buf.as_ref().is_some_and(|b| b.len() >= len) {
        return Ok(());
    }
    *buf = None;
    *buf = Some(stream.alloc_zeros::<T>(len.max(1)).map_err(alloc_err(what))?);
    Ok(())
}

/// Polls `event` until it completes or `deadline` passes (never blocks inside the driver).
fn wait_event(event: &CudaEvent, deadline: Instant, phase: &'static str) -> Result<(), Fail> {
    let mut polls = 0u32;
    loop {
        match event.try_is_complete() {
            Ok(true) => return Ok(()),
            Ok(false) => {}
            Err(e) => return Err(Fail::Fatal(format!("waiting for {phase}: {e}"))),
        }
        if Instant::now() >= deadline {
            return Err(Fail::Timeout(phase));
        }
        polls = polls.saturating_add(1);
        if polls < 64 {
            std::thread::yield_now();
        } else {
            std::thread::sleep(Duration::from_micros(if polls < 1024 { 20 } else { 200 }));
        }
    }
}

/// Grid for `threads` threads in blocks of `block` (`None` when it exceeds CUDA's grid limit).
fn grid(threads: u64, block: u32) -> Result<LaunchConfig, Fail> {
    let blocks = threads.div_ceil(u64::from(block));
    let blocks = u32::try_from(blocks)
        .ok()
        .filter(|&b| b < i32::MAX as u32)
        .ok_or_else(|| Fail::Fatal(format!("grid of {blocks} blocks is too large")))?;
    Ok(LaunchConfig {
        grid_dim: (blocks.max(1), 1, 1),
        block_dim: (block, 1, 1),
        shared_mem_bytes: 0,
    })
}

/// Events with timing, to measure phases.
fn timing_event(stream: &CudaStream) -> Result<CudaEvent, Fail> {
    stream
        .record_event(Some(sys::CUevent_flags::CU_EVENT_DEFAULT))
        .map_err(fatal("recording an event"))
}

/// What one run produced (before it is wrapped into a [`ShardOutput`]).
struct RunOutput {
    leaves: Vec<Digest32>,
    rows: Option<Vec<i32>>,
    stats: ShardStats,
    /// The Freivalds check's row sums, when the shard carries a seed (compared by `run_shard`).
    check: Option<freivalds::DeviceCheck>,
}

impl Slot {
    /// Device seconds of one `n × n × n` GEMM alone, unchunked, on generated data (after one warm-up),
    /// averaged over `reps`: the reference the pipeline's GEMM phase is compared with.
    fn time_gemm(
        &mut self,
        ctx: &Arc<CudaContext>,
        k: &Kernels,
        n: u32,
        reps: u32,
        deadline: Instant,
    ) -> Result<f64, Fail> {
        let d = Dims::new(n, n);
        ctx.bind_to_thread().map_err(fatal("binding the context"))?;
        self.b_key = None;
        ensure(&self.main, &mut self.a, d.a_len(), "A")?;
        ensure(&self.main, &mut self.bt, d.bt_len(), "B")?;
        ensure(&self.main, &mut self.c, d.c_len(), "C")?;
        let (Some(a), Some(bt), Some(c)) = (self.a.as_mut(), self.bt.as_mut(), self.c.as_mut())
        else {
            return Err(Fail::Fatal("device buffers missing after allocation".into()));
        };
        let main = &self.main;
        let km = KeyMaterial::from_seed("cpc-kernels/time-gemm");
        let (k0, k1, s, zero, one) = (km.key[0], km.key[1], km.stream, 0u32, 1u32);
        let (rows_pad, npad, ldk) = (d.rows_pad, d.npad, d.ldk);
        let cfg = grid(u64::from(ldk / 4) * u64::from(npad / 16), GEN_BLOCK)?;
        let mut launch = main.launch_builder(&k.gen_bt);
        launch.arg(&mut *bt).arg(&n).arg(&npad).arg(&ldk).arg(&one).arg(&k0).arg(&k1).arg(&s);
        // SAFETY: as in `Slot::run`: the arguments match `gen_bt` and `bt` holds `npad × ldk` bytes.
        unsafe { launch.launch(cfg) }.map_err(fatal("launching gen_bt"))?;
        let cfg = grid(u64::from(rows_pad) * u64::from(ldk / 16), GEN_BLOCK)?;
        let mut launch = main.launch_builder(&k.gen_a);
        launch.arg(&mut *a).arg(&n).arg(&rows_pad).arg(&zero).arg(&n).arg(&ldk);
        launch.arg(&zero).arg(&k0).arg(&k1).arg(&s);
        // SAFETY: as in `Slot::run`: the arguments match `gen_a` and `a` holds `rows_pad × ldk` bytes.
        unsafe { launch.launch(cfg) }.map_err(fatal("launching gen_a"))?;
        let mut once = |a: &CudaSlice<i8>,
                        bt: &CudaSlice<i8>,
                        c: &mut CudaSlice<i32>|
         -> Result<(), Fail> {
            if let Some(lt) = self.lt.as_mut() {
                let (a_ptr, _ra) = a.device_ptr(main);
                let (bt_ptr, _rb) = bt.device_ptr(main);
                let (c_ptr, _rc) = c.device_ptr_mut(main);
                // SAFETY: the whole padded A, Bᵗ and C, allocated above for these dimensions (multiples of 64).
                unsafe { lt.matmul(main, a_ptr, bt_ptr, c_ptr, rows_pad, npad, ldk) }
                    .map_err(|e| Fail::Fatal(format!("cublasLtMatmul: {e}")))
            } else {
                let (ldk_words, ldc) = (ldk / 4, npad);
                let cfg = LaunchConfig {
                    grid_dim: (npad / 64, rows_pad / 64, 1),
                    block_dim: (256, 1, 1),
                    shared_mem_bytes: 0,
                };
                let mut launch = main.launch_builder(&k.gemm_dp4a);
                launch.arg(a).arg(bt).arg(c).arg(&ldk_words).arg(&ldc);
                // SAFETY: as in `Slot::run`, over all `rows_pad` rows.
                unsafe { launch.launch(cfg) }.map_err(fatal("launching gemm_i8_dp4a")).map(|_| ())
            }
        };
        once(a, bt, c)?;
        let start = timing_event(main)?;
        for _ in 0..reps.max(1) {
            once(a, bt, c)?;
        }
        let end = timing_event(main)?;
        wait_event(&end, deadline, "the GEMM timing")?;
        let ms = start.elapsed_ms(&end).map_err(fatal("reading event times"))?;
        Ok(f64::from(ms) / 1000.0 / f64::from(reps.max(1)))
    }
}

impl Slot {
    fn new(
        ctx: &Arc<CudaContext>,
        engine: GemmEngine,
        cc_major: i32,
    ) -> Result<(Self, String), String> {
        let main = ctx.new_stream().map_err(|e| format!("cannot create a stream: {e}"))?;
        let hash = ctx.new_stream().map_err(|e| format!("cannot create a stream: {e}"))?;
        let (lt, note) = match engine {
            GemmEngine::Dp4a => (None, "dp4a (asked for)".to_owned()),
            GemmEngine::CublasLt => match LtGemm::new(&main, cc_major) {
                Ok(lt) => (Some(lt), "cublaslt".to_owned()),
                Err(why) => (None, format!("dp4a (cuBLASLt unavailable: {why})")),
            },
        };
        let slot = Self {
            main,
            hash,
            a: None,
            bt: None,
            c: None,
            leaves: None,
            host_leaves: None,
            b_key: None,
            lt,
        };
        Ok((slot, note))
    }

    fn held_bytes(&self) -> u64 {
        let len = |n: Option<usize>| n.unwrap_or(0) as u64;
        len(self.a.as_ref().map(CudaSlice::len))
            + len(self.bt.as_ref().map(CudaSlice::len))
            + 4 * len(self.c.as_ref().map(CudaSlice::len))
            + len(self.leaves.as_ref().map(CudaSlice::len))
    }

    /// Frees every buffer, for a shard that needs the room (both streams are idle between runs).
    fn release(&mut self) {
        self.a = None;
        self.bt = None;
        self.c = None;
        self.leaves = None;
        self.b_key = None;
    }

    /// Leaks the buffers: after a timeout a kernel may still be using them, so they must never be freed.
    fn abandon(&mut self) {
        std::mem::forget(self.a.take());
        std::mem::forget(self.bt.take());
        std::mem::forget(self.c.take());
        std::mem::forget(self.leaves.take());
        std::mem::forget(self.host_leaves.take());
        self.b_key = None;
    }

    /// The whole shard on this slot. The caller checked the memory and validated the shard.
    fn run(
        &mut self,
        ctx: &Arc<CudaContext>,
        k: &Kernels,
        shard: &Shard,
        keep_rows: bool,
        deadline: Instant,
    ) -> Result<RunOutput, Fail> {
        let started = Instant::now();
        let d = Dims::new(shard.challenge.matrix_size, shard.row_count());
        let km = shard.challenge.key_material();
        let (a_id, b_id) = matrix_ids(shard.iteration);
        let key = BKey { km, matrix_id: b_id, n: d.n };
        ctx.bind_to_thread().map_err(fatal("binding the context"))?;

        if self.bt.as_ref().is_some_and(|b| b.len() < d.bt_len()) {
            self.b_key = None;
        }
        ensure(&self.main, &mut self.a, d.a_len(), "A")?;
        ensure(&self.main, &mut self.bt, d.bt_len(), "B")?;
        ensure(&self.main, &mut self.c, d.c_len(), "C")?;
        ensure(&self.main, &mut self.leaves, d.leaves_len(), "the leaves")?;
        let leaf_bytes = d.rows as usize * 32;
        if self.host_leaves.as_ref().is_none_or(|h| h.len() < leaf_bytes) {
            self.host_leaves = None;
            // SAFETY: page-locked host memory of `leaf_bytes` bytes (flags 0: cached, readable by the host); its
            // contents are only read after the device-to-host copy into it has completed.
            let pinned = unsafe { ctx.alloc_pinned_with_flags::<u8>(leaf_bytes, 0) };
            self.host_leaves = Some(pinned.map_err(alloc_err("pinned host memory"))?);
        }
        let (Some(a), Some(bt), Some(c), Some(leaves), Some(host_leaves)) = (
            self.a.as_mut(),
            self.bt.as_mut(),
            self.c.as_mut(),
            self.leaves.as_mut(),
            self.host_leaves.as_mut(),
        ) else {
            return Err(Fail::Fatal("device buffers missing after allocation".into()));
        };
        let (main, hash) = (&self.main, &self.hash);

        // 1. Generation on `main`: B (unless this slot already holds it), then the shard's rows of A.
        let t0 = timing_event(main)?;
        let b_cached = self.b_key == Some(key);
        if !b_cached {
            self.b_key = None;
            let cfg = grid(u64::from(d.ldk / 4) * u64::from(d.npad / 16), GEN_BLOCK)?;
            let (n, npad, ldk, m, s) = (d.n, d.npad, d.ldk, b_id, km.stream);
            let (k0, k1) = (km.key[0], km.key[1]);
            let mut launch = main.launch_builder(&k.gen_bt);
            launch.arg(&mut *bt).arg(&n).arg(&npad).arg(&ldk).arg(&m).arg(&k0).arg(&k1).arg(&s);
            // SAFETY: arguments match `gen_bt(i8*, u32 n, u32 npad, u32 ldk, u32 matrix_id, u32 k0, u32 k1,
            // u32 stream)`; `bt` holds `npad × ldk` bytes and the grid covers exactly (ldk/4) × (npad/16)
            // threads, each writing 16 words inside it.
            unsafe { launch.launch(cfg) }.map_err(fatal("launching gen_bt"))?;
        }
        {
            let cfg = grid(u64::from(d.rows_pad) * u64::from(d.ldk / 16), GEN_BLOCK)?;
            let (rows, rows_pad, row0, n, ldk) = (d.rows, d.rows_pad, shard.rows.start, d.n, d.ldk);
            let (m, k0, k1, s) = (a_id, km.key[0], km.key[1], km.stream);
            let mut launch = main.launch_builder(&k.gen_a);
            launch.arg(&mut *a).arg(&rows).arg(&rows_pad).arg(&row0).arg(&n).arg(&ldk);
            launch.arg(&m).arg(&k0).arg(&k1).arg(&s);
            // SAFETY: arguments match `gen_a(i8*, u32 rows, u32 rows_pad, u32 row0, u32 n, u32 ldk, u32 matrix_id,
            // u32 k0, u32 k1, u32 stream)`; `a` holds `rows_pad × ldk` bytes, one 16-byte group per thread.
            unsafe { launch.launch(cfg) }.map_err(fatal("launching gen_a"))?;
        }
        let t_gen = timing_event(main)?;

        // 2. GEMM in row chunks on `main`; 3. each chunk hashed on `hash` as soon as it is multiplied.
        let mut engine = if self.lt.is_some() { GemmEngine::CublasLt } else { GemmEngine::Dp4a };
        let mut c0 = 0u32;
        while c0 < d.rows_pad {
            let c1 = (c0 + CHUNK_ROWS).min(d.rows_pad);
            let chunk = c1 - c0;
            let mut done = false;
            if let Some(lt) = self.lt.as_mut() {
                let (a_ptr, _ra) = a.device_ptr(main);
                let (bt_ptr, _rb) = bt.device_ptr(main);
                let (c_ptr, _rc) = c.device_ptr_mut(main);
                let a_ptr = a_ptr + u64::from(c0) * u64::from(d.ldk);
                let c_ptr = c_ptr + u64::from(c0) * u64::from(d.npad) * 4;
                // SAFETY: A rows c0..c1 (`chunk × ldk` bytes from `a_ptr`), all of Bᵗ and C rows c0..c1
                // (`chunk × npad` i32 from `c_ptr`) lie inside the buffers ensured above; every dimension is a
                // multiple of 64 and the offsets are multiples of 64 rows, so alignment holds; the buffers
                // outlive the call (the slot keeps them until both streams are idle).
                match unsafe { lt.matmul(main, a_ptr, bt_ptr, c_ptr, chunk, d.npad, d.ldk) } {
                    Ok(()) => done = true,
                    // No algorithm for this shape (or a descriptor error): the dp4a kernel takes it.
                    Err(_) => engine = GemmEngine::Dp4a,
                }
            }
            if !done {
                let a_view = a.slice(c0 as usize * d.ldk as usize..);
                let mut c_view = c.slice_mut(c0 as usize * d.npad as usize..);
                let (ldk_words, ldc) = (d.ldk / 4, d.npad);
                let cfg = LaunchConfig {
                    grid_dim: (d.npad / 64, chunk / 64, 1),
                    block_dim: (256, 1, 1),
                    shared_mem_bytes: 0,
                };
                let mut launch = main.launch_builder(&k.gemm_dp4a);
                launch.arg(&a_view).arg(&*bt).arg(&mut c_view).arg(&ldk_words).arg(&ldc);
                // SAFETY: arguments match `gemm_i8_dp4a(const int* a, const int* bt, int* c, u32 ldk_words,
                // u32 ldc)`; the grid covers the chunk's `chunk × npad` outputs in 64 × 64 tiles, reading `chunk`
                // rows of A from the view's start and all `npad` rows of Bᵗ, every dimension a multiple of 64.
                unsafe { launch.launch(cfg) }.map_err(fatal("launching gemm_i8_dp4a"))?;
            }
            let multiplied = main.record_event(None).map_err(fatal("recording the chunk event"))?;
            hash.wait(&multiplied).map_err(fatal("ordering the hash stream"))?;
            if c0 < d.rows {
                let (begin, end, n, ldc) = (c0, c1.min(d.rows), d.n, d.npad);
                let cfg = grid(u64::from(end - begin), HASH_BLOCK)?;
                let mut launch = hash.launch_builder(&k.sha256_rows);
                launch.arg(&*c).arg(&mut *leaves).arg(&begin).arg(&end).arg(&n).arg(&ldc);
                // SAFETY: arguments match `sha256_rows(const int* c, uchar* leaves, u32 row_begin, u32 row_end,
                // u32 n, u32 ldc)`; rows begin..end < rows_pad of C (stride npad ≥ n) are read, and 32 bytes per
                // row written inside `leaves` (`rows_pad × 32` bytes).
                unsafe { launch.launch(cfg) }.map_err(fatal("launching sha256_rows"))?;
            }
            c0 = c1;
        }
        let t_gemm = timing_event(main)?;
        hash.wait(&t_gemm).map_err(fatal("ordering the hash stream"))?;
        // 3b. Freivalds' check of the whole product on `main` (after the GEMM), next to the hashing tail.
        let check = match shard.check {
            Some(seed) => {
                let product = freivalds::Product { a: &*a, bt: &*bt, c: &*c };
                Some(freivalds::run(main, k, product, &d, seed, deadline)?)
            }
            None => None,
        };

        // 4. Only the leaves cross PCIe, into pinned memory; the host waits with the watchdog's deadline.
        let leaves_view = leaves.slice(..leaf_bytes);
        hash.memcpy_dtoh(&leaves_view, host_leaves).map_err(fatal("copying the leaves"))?;
        let t_end = timing_event(hash)?;
        wait_event(&t_end, deadline, "generation, GEMM and hashing")?;
        ctx.check_err().map_err(fatal("an earlier asynchronous call"))?;
        self.b_key = Some(key);

        let host = host_leaves.as_slice().map_err(fatal("reading the pinned leaves"))?;
        let leaves: Vec<Digest32> = host[..leaf_bytes].as_chunks::<32>().0.to_vec();
        let rows = if keep_rows {
            // Rare (spot checks): the padded rows, then compacted to `rows × n` on the host.
            let view = c.slice(..d.rows as usize * d.npad as usize);
            let padded = hash.clone_dtoh(&view).map_err(fatal("copying rows of C"))?;
            let done = hash.record_event(None).map_err(fatal("recording an event"))?;
            wait_event(&done, deadline, "copying rows of C")?;
            let n = d.n as usize;
            Some(padded.chunks(d.npad as usize).flat_map(|row| &row[..n]).copied().collect())
        } else {
            None
        };
        let secs = |from: &CudaEvent, to: &CudaEvent| {
            from.elapsed_ms(to)
                .map(|ms| f64::from(ms) / 1000.0)
                .map_err(fatal("reading event times"))
        };
        let stats = ShardStats {
            n: d.n,
            rows: d.rows,
            ops: 2 * u64::from(d.rows) * u64::from(d.n) * u64::from(d.n),
            generate_seconds: secs(&t0, &t_gen)?,
            gemm_seconds: secs(&t_gen, &t_gemm)?,
            hash_tail_seconds: secs(&t_gemm, &t_end)?,
            device_seconds: secs(&t0, &t_end)?,
            wall_seconds: started.elapsed().as_secs_f64(),
            energy_joules: None,
            gemm_engine: engine,
            b_cached,
        };
        Ok(RunOutput { leaves, rows, stats, check })
    }
}

/// The CUDA backend for one GPU. `Send + Sync`: share it (`Arc`) between the GPU's actor and its metrics.
pub struct CudaBackend {
    ordinal: usize,
    name: String,
    model: String,
    ctx: Arc<CudaContext>,
    kernels: Kernels,
    slots: Vec<Mutex<Slot>>,
    next_slot: AtomicUsize,
    memory_bytes: u64,
    compute_units: u32,
    timeout: Duration,
    gemm_note: String,
    quarantine: Mutex<Option<String>>,
    monitor: Option<GpuMonitor>,
    /// Stats of the last shard each thread completed (the agent runs [`SLOTS`] threads per GPU).
    last_stats: Mutex<HashMap<ThreadId, ShardStats>>,
}

impl std::fmt::Debug for CudaBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CudaBackend")
            .field("name", &self.name)
            .field("model", &self.model)
            .field("memory_bytes", &self.memory_bytes)
            .field("gemm", &self.gemm_note)
            .field("timeout", &self.timeout)
            .finish()
    }
}

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
            "libnvrtc (CUDA 13) could not be loaded: install the CUDA runtime libraries (e.g. the \
             nvidia-cuda-nvrtc package) or add them to LD_LIBRARY_PATH; use --backend cpu meanwhile"
                .into(),
        );
    }
    None
}

/// Runs `f`, turning a panic inside cudarc (a missing symbol in an old driver, say) into an error.
fn guarded<T>(what: &str, f: impl FnOnce() -> Result<T, BackendError>) -> Result<T, BackendError> {
    catch_unwind(AssertUnwindSafe(f)).unwrap_or_else(|panic| {
        let why = panic
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| panic.downcast_ref::<&str>().map(|s| (*s).to_owned()))
            .unwrap_or_else(|| "unknown panic".into());
        Err(BackendError::CudaUnavailable(format!("{what}: {why}")))
    })
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
        let ctx =
            CudaContext::new(device).map_err(|e| unavailable("cannot create a context", &e))?;
        // SAFETY: this backend orders its streams itself (events between `main` and `hash`, buffers only freed
        // when both streams are idle), which is what disabling cudarc's per-buffer event tracking requires.
        unsafe { ctx.disable_event_tracking() };
        let model = ctx.name().unwrap_or_else(|_| "NVIDIA GPU".into());
        let cc = ctx.compute_capability().map_err(|e| unavailable("compute capability", &e))?;
        let sms = ctx
            .attribute(sys::CUdevice_attribute::CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT)
            .map_err(|e| unavailable("SM count", &e))?;
        let kernels = Kernels::load(&ctx).map_err(|e| unavailable("loading the kernels", &e))?;
        let mut slots = Vec::with_capacity(SLOTS);
        let mut gemm_note = String::new();
        for _ in 0..SLOTS {
            let (slot, note) =
                Slot::new(&ctx, engine, cc.0).map_err(|e| unavailable("creating a slot", &e))?;
            gemm_note = note;
            slots.push(Mutex::new(slot));
        }
        let (free, _total) = ctx.mem_get_info().map_err(|e| unavailable("memory info", &e))?;
        let memory_bytes = (free as u64).saturating_sub(RESERVED_BYTES) / SLOTS as u64;
        let monitor = ctx.uuid().ok().and_then(|u| GpuMonitor::open_by_uuid(&uuid_string(&u)).ok());
        Ok(Self {
            ordinal: device,
            name: format!("cuda:{device}"),
            model: format!("{model} (sm_{}{}, {})", cc.0, cc.1, gemm_note),
            ctx,
            kernels,
            slots,
            next_slot: AtomicUsize::new(0),
            memory_bytes,
            compute_units: u32::try_from(sms).unwrap_or(0),
            timeout: DEFAULT_TIMEOUT,
            gemm_note,
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

    /// Sets the watchdog timeout of one shard (every wait polls against it; see the module docs).
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// The watchdog timeout of one shard.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// Which GEMM this backend runs, and why when it is the fallback.
    pub fn gemm_engine(&self) -> &str {
        &self.gemm_note
    }

    /// The CUDA ordinal.
    pub fn ordinal(&self) -> usize {
        self.ordinal
    }

    /// The GPU's NVML monitor (`None` when NVML is unavailable).
    pub fn monitor(&self) -> Option<&GpuMonitor> {
        self.monitor.as_ref()
    }

    /// Why this GPU is quarantined, if it is.
    pub fn quarantined(&self) -> Option<String> {
        self.quarantine.lock().map_or_else(|p| p.into_inner().clone(), |q| q.clone())
    }

    /// Stats of the last shard the calling thread completed (so that threads running shards at once each
    /// read their own).
    pub fn last_stats(&self) -> Option<ShardStats> {
        let id = std::thread::current().id();
        self.last_stats.lock().ok().and_then(|s| s.get(&id).cloned())
    }

    /// Device seconds of one `n × n × n` GEMM alone (unchunked, this backend's engine, generated data, after a
    /// warm-up), averaged over `reps`: for benches comparing the pipeline's GEMM phase with the library alone.
    pub fn time_gemm(&self, n: u32, reps: u32) -> Result<f64, BackendError> {
        if let Some(reason) = self.quarantined() {
            return Err(BackendError::Quarantined { device: self.name.clone(), reason });
        }
        let needed = Dims::new(n, n).bytes();
        if needed > self.memory_bytes {
            return Err(BackendError::ShardTooLarge {
                n,
                rows: n,
                needed,
                available: self.memory_bytes,
                device: format!("{} {}", self.name, self.model),
            });
        }
        let deadline = Instant::now() + self.timeout;
        let mut slot = self.slot();
        let result = guarded("timing the GEMM", || {
            slot.release();
            slot.time_gemm(&self.ctx, &self.kernels, n, reps, deadline).map_err(|fail| {
                let reason = match fail {
                    Fail::Fatal(why) | Fail::OutOfMemory(why) => why,
                    Fail::Timeout(phase) => format!("`{phase}` timed out"),
                };
                BackendError::Cuda { device: self.name.clone(), reason }
            })
        });
        slot.release();
        result
    }

    /// Runs several shards, two at a time (one per slot), so that consecutive shards overlap; results in order.
    pub fn run_shards(
        &self,
        shards: &[Shard],
        keep_rows: bool,
    ) -> Vec<Result<ShardOutput, BackendError>> {
        let next = AtomicUsize::new(0);
        let results: Vec<Mutex<Option<Result<ShardOutput, BackendError>>>> =
            shards.iter().map(|_| Mutex::new(None)).collect();
        std::thread::scope(|scope| {
            for _ in 0..SLOTS.min(shards.len()) {
                scope.spawn(|| {
                    loop {
                        let i = next.fetch_add(1, Ordering::Relaxed);
                        let Some(shard) = shards.get(i) else { break };
                        let out = self.run_shard(shard, keep_rows);
                        if let Ok(mut slot) = results[i].lock() {
                            *slot = Some(out);
                        }
                    }
                });
            }
        });
        results
            .into_iter()
            .map(|r| {
                r.into_inner().ok().flatten().unwrap_or_else(|| {
                    Err(BackendError::Cuda {
                        device: self.name.clone(),
                        reason: "a worker thread panicked".into(),
                    })
                })
            })
            .collect()
    }

    fn quarantine(&self, reason: &str) {
        let mut q = self.quarantine.lock().unwrap_or_else(|p| p.into_inner());
        q.get_or_insert_with(|| reason.to_owned());
    }

    /// A free slot if there is one, else waits for the next one in turn.
    fn slot(&self) -> MutexGuard<'_, Slot> {
        for slot in &self.slots {
            if let Ok(guard) = slot.try_lock() {
                return guard;
            }
        }
        let i = self.next_slot.fetch_add(1, Ordering::Relaxed) % self.slots.len();
        self.slots[i].lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The Freivalds check's verdict: its cost, or the error (the GPU quarantined) naming the failing rows.
    fn verdict(
        &self,
        shard: &Shard,
        found: &freivalds::DeviceCheck,
        wall_seconds: f64,
    ) -> Result<CheckCost, BackendError> {
        if let Err(mismatch) = crate::freivalds::compare(&found.sums) {
            let err = BackendError::failed_check(&self.name, shard, &mismatch);
            self.quarantine(&err.to_string());
            return Err(err);
        }
        let secs = |s: f64| Duration::try_from_secs_f64(s).unwrap_or_default();
        Ok(CheckCost { check: secs(found.seconds), shard: secs(wall_seconds) })
    }

    fn too_large(&self, shard: &Shard, needed: u64, available: u64) -> BackendError {
        BackendError::ShardTooLarge {
            n: shard.challenge.matrix_size,
            rows: shard.row_count(),
            needed,
            available,
            device: format!("{} {}", self.name, self.model),
        }
    }
}

impl Backend for CudaBackend {
    fn name(&self) -> &str {
        &self.name
    }

    fn info(&self) -> DeviceInfo {
        DeviceInfo {
            name: self.model.clone(),
            kind: BackendKind::Cuda,
            memory_bytes: self.memory_bytes,
            compute_units: self.compute_units,
        }
    }

    fn run_shard(&self, shard: &Shard, keep_rows: bool) -> Result<ShardOutput, BackendError> {
        shard.validate()?;
        if let Some(reason) = self.quarantined() {
            return Err(BackendError::Quarantined { device: self.name.clone(), reason });
        }
        let d = Dims::new(shard.challenge.matrix_size, shard.row_count());
        let needed = d.bytes();
        if needed > self.memory_bytes {
            return Err(self.too_large(shard, needed, self.memory_bytes));
        }
        let deadline = Instant::now() + self.timeout;
        let energy_before = self.monitor.as_ref().and_then(GpuMonitor::energy_joules);
        let mut slot = self.slot();
        let result = guarded("running a shard", || {
            // Before any work: what this slot holds can be reused or freed, the rest must be free now.
            let held = slot.held_bytes();
            let free = self.ctx.mem_get_info().map(|(free, _)| free as u64).map_err(|e| {
                BackendError::Cuda {
                    device: self.name.clone(),
                    reason: format!("memory info: {e}"),
                }
            })?;
            if needed > free.saturating_sub(RESERVED_BYTES / 4) + held {
                return Err(self.too_large(shard, needed, free + held));
            }
            if needed > held && held > 0 {
                slot.release();
            }
            match slot.run(&self.ctx, &self.kernels, shard, keep_rows, deadline) {
                Ok(out) => Ok(out),
                Err(Fail::OutOfMemory(why)) => {
                    slot.release();
                    Err(BackendError::Cuda { device: self.name.clone(), reason: why })
                }
                Err(Fail::Fatal(why)) => {
                    self.quarantine(&why);
                    slot.abandon();
                    Err(BackendError::Cuda { device: self.name.clone(), reason: why })
                }
                Err(Fail::Timeout(phase)) => {
                    let secs = self.timeout.as_secs_f64();
                    self.quarantine(&format!("`{phase}` timed out after {secs:.1} s"));
                    slot.abandon();
                    Err(BackendError::Timeout { device: self.name.clone(), phase, seconds: secs })
                }
            }
        });
        drop(slot);
        let mut out = result.inspect_err(|e| {
            if matches!(e, BackendError::CudaUnavailable(_)) {
                self.quarantine(&e.to_string());
            }
        })?;
        if let (Some(before), Some(after)) =
            (energy_before, self.monitor.as_ref().and_then(GpuMonitor::energy_joules))
        {
            out.stats.energy_joules = Some((after - before).max(0.0));
        }
        let check = match out.check.take() {
            Some(found) => Some(self.verdict(shard, &found, out.stats.wall_seconds)?),
            None => None,
        };
        if let Ok(mut last) = self.last_stats.lock() {
            last.insert(std::thread::current().id(), out.stats);
        }
        Ok(ShardOutput { leaves: out.leaves, rows: out.rows, check })
    }

    fn keeps_rows_cheaply(&self) -> bool {
        false
    }

    fn concurrent_shards(&self) -> usize {
        SLOTS
    }

    fn last_stats(&self) -> Option<ShardStats> {
        Self::last_stats(self)
    }

    fn monitor(&self) -> Option<&GpuMonitor> {
        Self::monitor(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dims_are_padded_and_counted() {
        let d = Dims::new(100, 3);
        assert_eq!((d.rows_pad, d.npad, d.ldk), (64, 128, 128));
        assert_eq!(d.bytes(), (64 * 128 + 128 * 128 + 4 * 64 * 128 + 64 * 32) as u64);
        let d = Dims::new(16384, 16384);
        assert_eq!((d.rows_pad, d.npad, d.ldk), (16384, 16384, 16384));
        // Never much above the CPU's accounting, which sizes shards in `result_hash`.
        for (n, rows) in [(1u32, 1u32), (65, 7), (1000, 1000), (65_536, 65_536)] {
            let gpu = gpu_shard_bytes(n, rows);
            let cpu = crate::shard_memory_bytes(n, rows);
            assert!(gpu <= cpu + 64 * 64 * 40 + 64 * u64::from(n) * 6, "n={n} rows={rows}");
        }
    }

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
