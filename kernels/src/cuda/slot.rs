//! One shard in flight on a GPU: a slot's streams, device buffers and pinned leaves, and the pipeline that
//! runs a shard on them (generation, chunked GEMM, hashing spread over several streams, the leaves back).
//!
//! # Pipeline
//!
//! On `main`: Philox generation of Bᵗ (unless the slot holds it already) and of the shard's rows of A, then
//! the GEMM in chunks of [`CHUNK_ROWS`] rows (pointer offsets into A and C; the last, partial chunk gets
//! its own cuBLASLt plan). Chunk `i` is hashed on hash stream `i mod HASH_STREAMS` as soon as it is
//! multiplied: one thread hashes one row (SHA-256 is sequential within a row), so one chunk only fills
//! about one warp per SM, and a single hash stream would hash the chunks one after another, slower than
//! the GEMM makes them at n ≥ 8192. Spread over [`HASH_STREAMS`] streams, up to that many chunks are hashed
//! at once, the hashing keeps up with the GEMM, and what is left after the last chunk (the "hash tail" of
//! the bench's phase table) is about one chunk's hashing.

use super::{
    CHUNK_ROWS, PAD,
    driver::elapsed_seconds,
    fault::{FaultClass, classify_cublas, classify_driver},
    gemm::LtGemm,
    memory::{BUFFERS, BufferPlan},
    module::Kernels,
};
use crate::{
    Shard,
    gpu::{GemmEngine, ShardStats},
};
use cpc_common::{
    hashing::Digest32,
    synthetic::{KeyMaterial, matrix_ids},
};
use cudarc::{
    cublaslt::result::CublasError,
    driver::{
        CudaContext, CudaEvent, CudaSlice, CudaStream, DevicePtr, DevicePtrMut, DriverError,
        LaunchConfig, PinnedHostSlice, PushKernelArg, sys,
    },
};
use std::{
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

/// Streams a slot hashes on (chunk `i` on stream `i mod HASH_STREAMS`).
pub(crate) const HASH_STREAMS: usize = 4;
/// Threads per block of the generation kernels.
const GEN_BLOCK: u32 = 256;
/// Threads per block of the hashing kernel (small: one thread per row, spread over every SM).
const HASH_BLOCK: u32 = 32;

/// Padded sizes of one shard on the device.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Dims {
    pub(crate) n: u32,
    pub(crate) rows: u32,
    pub(crate) rows_pad: u32,
    pub(crate) npad: u32,
    pub(crate) ldk: u32,
}

impl Dims {
    pub(crate) fn new(n: u32, rows: u32) -> Self {
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

    /// Bytes of each buffer, in [`BUFFERS`] order.
    pub(crate) fn buffer_bytes(&self) -> [u64; 4] {
        [
            self.a_len() as u64,
            self.bt_len() as u64,
            4 * self.c_len() as u64,
            self.leaves_len() as u64,
        ]
    }

    pub(crate) fn bytes(&self) -> u64 {
        self.buffer_bytes().iter().sum()
    }

    /// The row chunks of the GEMM, `(c0, c1)` over the padded rows.
    pub(crate) fn chunks(&self) -> impl Iterator<Item = (u32, u32)> + use<> {
        let rows_pad = self.rows_pad;
        (0..rows_pad.div_ceil(CHUNK_ROWS)).map(move |i| {
            let c0 = i * CHUNK_ROWS;
            (c0, (c0 + CHUNK_ROWS).min(rows_pad))
        })
    }
}

/// Which B a slot's `bt` buffer holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct BKey {
    km: KeyMaterial,
    matrix_id: u32,
    n: u32,
}

/// Why a run failed, before it is turned into a [`crate::BackendError`] ([`super::fault`] classes).
#[derive(Debug)]
pub(crate) enum Fail {
    /// Out of device memory: the slot gives its memory back; no quarantine.
    OutOfMemory(String),
    /// The call did not happen and may succeed again: the run is retried (bounded).
    Transient(String),
    /// The context is corrupted until the process ends.
    Sticky(String),
    /// Any other CUDA error: quarantine.
    Fatal(String),
    /// A wait passed its deadline: quarantine.
    Timeout(&'static str),
}

impl Fail {
    fn of(class: FaultClass, why: String) -> Self {
        match class {
            FaultClass::OutOfMemory => Self::OutOfMemory(why),
            FaultClass::Transient => Self::Transient(why),
            FaultClass::Sticky => Self::Sticky(why),
            FaultClass::Fatal => Self::Fatal(why),
        }
    }
}

/// Turns a driver error of `what` into its [`Fail`] class.
pub(super) fn cuda(what: &str) -> impl FnOnce(DriverError) -> Fail + '_ {
    move |e| Fail::of(classify_driver(e.0), format!("{what}: {e}"))
}

fn internal(why: &str) -> Fail {
    Fail::Fatal(why.to_owned())
}

/// Polls `event` until it completes or `deadline` passes (never blocks inside the driver).
pub(super) fn wait_event(
    event: &CudaEvent,
    deadline: Instant,
    phase: &'static str,
) -> Result<(), Fail> {
    let mut polls = 0u32;
    loop {
        match event.try_is_complete() {
            Ok(true) => return Ok(()),
            Ok(false) => {}
            Err(e) => return Err(cuda(&format!("waiting for {phase}"))(e)),
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

/// Grid for `threads` threads in blocks of `block` (an error when it exceeds CUDA's grid limit).
pub(super) fn grid(threads: u64, block: u32) -> Result<LaunchConfig, Fail> {
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

/// An event with timing, to measure phases.
pub(super) fn timing_event(stream: &CudaStream) -> Result<CudaEvent, Fail> {
    stream
        .record_event(Some(sys::CUevent_flags::CU_EVENT_DEFAULT))
        .map_err(cuda("recording an event"))
}

/// Seconds between two completed timing events.
pub(super) fn secs(from: &CudaEvent, to: &CudaEvent) -> Result<f64, Fail> {
    elapsed_seconds(from, to).map_err(cuda("reading event times"))
}

/// What one run produced (before it is wrapped into a [`crate::ShardOutput`]).
pub(crate) struct RunOutput {
    pub(crate) leaves: Vec<Digest32>,
    pub(crate) rows: Option<Vec<i32>>,
    pub(crate) stats: ShardStats,
    /// The Freivalds check's row sums, when the shard carries a seed (compared by `run_shard`).
    pub(crate) check: Option<super::freivalds::DeviceCheck>,
}

/// How the backend's GEMM fallbacks are reported: shapes cuBLASLt failed on, counted across the slots.
#[derive(Debug, Default)]
pub(crate) struct FallbackLog {
    /// Shapes that fell back to dp4a since the backend opened.
    pub(crate) shapes: AtomicU64,
}

/// One shard's worth of streams and buffers.
pub(crate) struct Slot {
    main: Arc<CudaStream>,
    hash: Vec<Arc<CudaStream>>,
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

/// Makes `buf` hold exactly `len` elements unless the plan keeps it (freed first, then allocated).
fn realloc<T: cudarc::driver::DeviceRepr + cudarc::driver::ValidAsZeroBits>(
    stream: &Arc<CudaStream>,
    buf: &mut Option<CudaSlice<T>>,
    keep: bool,
    len: usize,
    what: &str,
) -> Result<(), Fail> {
    if keep && buf.as_ref().is_some_and(|b| b.len() >= len) {
        return Ok(());
    }
    *buf = None;
    *buf = Some(stream.alloc_zeros::<T>(len.max(1)).map_err(cuda(&format!("allocating {what}")))?);
    Ok(())
}

impl Slot {
    /// Streams and, when `engine` is cuBLASLt, a cuBLASLt handle (the second value says which GEMM runs).
    pub(crate) fn new(
        ctx: &Arc<CudaContext>,
        engine: GemmEngine,
        cc_major: i32,
    ) -> Result<(Self, Option<String>), String> {
        let stream = || ctx.new_stream().map_err(|e| format!("cannot create a stream: {e}"));
        let main = stream()?;
        let hash = (0..HASH_STREAMS).map(|_| stream()).collect::<Result<Vec<_>, _>>()?;
        let (lt, fallback) = match engine {
            GemmEngine::Dp4a => (None, None),
            GemmEngine::CublasLt => match LtGemm::new(&main, cc_major) {
                Ok(lt) => (Some(lt), None),
                Err(why) => (None, Some(format!("cuBLASLt unavailable: {why}"))),
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
        Ok((slot, fallback))
    }

    /// Device bytes of each buffer held, in [`BUFFERS`] order.
    pub(crate) fn held(&self) -> [u64; 4] {
        let len = |n: Option<usize>| n.unwrap_or(0) as u64;
        [
            len(self.a.as_ref().map(CudaSlice::len)),
            len(self.bt.as_ref().map(CudaSlice::len)),
            4 * len(self.c.as_ref().map(CudaSlice::len)),
            len(self.leaves.as_ref().map(CudaSlice::len)),
        ]
    }

    pub(crate) fn held_bytes(&self) -> u64 {
        self.held().iter().sum()
    }

    /// Frees every buffer, for a shard that needs the room (every stream is idle between runs).
    pub(crate) fn release(&mut self) {
        self.a = None;
        self.bt = None;
        self.c = None;
        self.leaves = None;
        self.b_key = None;
    }

    /// Leaks the buffers: after a timeout or a corrupted context a kernel may still be using them, so they
    /// must never be freed.
    pub(crate) fn abandon(&mut self) {
        std::mem::forget(self.a.take());
        std::mem::forget(self.bt.take());
        std::mem::forget(self.c.take());
        std::mem::forget(self.leaves.take());
        std::mem::forget(self.host_leaves.take());
        self.b_key = None;
    }

    /// Waits until every stream of the slot is idle (before a retry reuses the buffers).
    pub(crate) fn drain(&self, deadline: Instant) -> Result<(), Fail> {
        for stream in std::iter::once(&self.main).chain(&self.hash) {
            let idle = stream.record_event(None).map_err(cuda("recording an event"))?;
            wait_event(&idle, deadline, "the streams to drain before a retry")?;
        }
        Ok(())
    }

    /// Carries out a [`BufferPlan`] for `d` (every stream is idle between runs).
    fn apply(&mut self, d: &Dims, plan: &BufferPlan) -> Result<(), Fail> {
        let [keep_a, keep_bt, keep_c, keep_leaves] = plan.keep;
        if !keep_bt {
            self.b_key = None;
        }
        // Free every buffer the plan gives back before allocating any, so the peak stays within the plan.
        if !keep_a {
            self.a = None;
        }
        if !keep_bt {
            self.bt = None;
        }
        if !keep_c {
            self.c = None;
        }
        if !keep_leaves {
            self.leaves = None;
        }
        realloc(&self.main, &mut self.a, keep_a, d.a_len(), BUFFERS[0])?;
        realloc(&self.main, &mut self.bt, keep_bt, d.bt_len(), BUFFERS[1])?;
        realloc(&self.main, &mut self.c, keep_c, d.c_len(), BUFFERS[2])?;
        realloc(&self.main, &mut self.leaves, keep_leaves, d.leaves_len(), BUFFERS[3])?;
        Ok(())
    }

    /// Enqueues `C[c0..c1] = A[c0..c1] · B` on `main`: cuBLASLt unless it failed on this shape before (then,
    /// or when it fails now, the dp4a kernel; a new failure is remembered and logged). Answers the engine.
    #[allow(clippy::too_many_arguments)] // the operands of one chunk
    fn gemm_chunk(
        main: &Arc<CudaStream>,
        lt: Option<&mut LtGemm>,
        k: &Kernels,
        d: &Dims,
        (c0, c1): (u32, u32),
        a: &CudaSlice<i8>,
        bt: &CudaSlice<i8>,
        c: &mut CudaSlice<i32>,
        fallbacks: &FallbackLog,
    ) -> Result<GemmEngine, Fail> {
        let chunk = c1 - c0;
        let shape = (d.npad, chunk, d.ldk);
        if let Some(lt) = lt
            && lt.failed(shape).is_none()
        {
            let (a_ptr, _ra) = a.device_ptr(main);
            let (bt_ptr, _rb) = bt.device_ptr(main);
            let (c_ptr, _rc) = c.device_ptr_mut(main);
            let a_ptr = a_ptr + u64::from(c0) * u64::from(d.ldk);
            let c_ptr = c_ptr + u64::from(c0) * u64::from(d.npad) * 4;
            // SAFETY: A rows c0..c1 (`chunk × ldk` bytes from `a_ptr`), all of Bᵗ and C rows c0..c1 (`chunk ×
            // npad` i32 from `c_ptr`) lie inside the buffers of `d`'s sizes; every dimension is a multiple of
            // 64 and the offsets are multiples of 64 rows, so alignment holds; the buffers outlive the call
            // (the slot keeps them until every stream is idle).
            match unsafe { lt.matmul(main, a_ptr, bt_ptr, c_ptr, chunk, d.npad, d.ldk) } {
                Ok(()) => return Ok(GemmEngine::CublasLt),
                Err(e) => match classify_cublas(&e) {
                    FaultClass::OutOfMemory => {
                        return Err(Fail::OutOfMemory(format!("cublasLtMatmul: {e}")));
                    }
                    _ => remember_fallback(lt, shape, &e, fallbacks),
                },
            }
        }
        let a_view = a.slice(c0 as usize * d.ldk as usize..);
        let mut c_view = c.slice_mut(c0 as usize * d.npad as usize..);
        let (ldk_words, ldc) = (d.ldk / 4, d.npad);
        let cfg = LaunchConfig {
            grid_dim: (d.npad / 64, chunk / 64, 1),
            block_dim: (256, 1, 1),
            shared_mem_bytes: 0,
        };
        let mut launch = main.launch_builder(&k.gemm_dp4a);
        launch.arg(&a_view).arg(bt).arg(&mut c_view).arg(&ldk_words).arg(&ldc);
        // SAFETY: arguments match `gemm_i8_dp4a(const int* a, const int* bt, int* c, u32 ldk_words, u32 ldc)`;
        // the grid covers the chunk's `chunk × npad` outputs in 64 × 64 tiles, reading `chunk` rows of A from
        // the view's start and all `npad` rows of Bᵗ, every dimension a multiple of 64.
        unsafe { launch.launch(cfg) }.map_err(cuda("launching gemm_i8_dp4a"))?;
        Ok(GemmEngine::Dp4a)
    }

    /// The whole shard on this slot. The caller planned the memory ([`super::memory::plan_buffers`]) and
    /// validated the shard.
    #[allow(clippy::too_many_arguments)] // a run's context: device, kernels, shard, plan, deadline, counters
    pub(crate) fn run(
        &mut self,
        ctx: &Arc<CudaContext>,
        k: &Kernels,
        shard: &Shard,
        plan: &BufferPlan,
        keep_rows: bool,
        deadline: Instant,
        fallbacks: &FallbackLog,
    ) -> Result<RunOutput, Fail> {
        let started = Instant::now();
        let d = Dims::new(shard.challenge.matrix_size(), shard.row_count());
        let km = shard.challenge.key_material();
        let (a_id, b_id) = matrix_ids(shard.iteration);
        let key = BKey { km, matrix_id: b_id, n: d.n };
        ctx.bind_to_thread().map_err(cuda("binding the context"))?;
        self.apply(&d, plan)?;
        let leaf_bytes = d.rows as usize * 32;
        if self.host_leaves.as_ref().is_none_or(|h| h.len() < leaf_bytes) {
            self.host_leaves = None;
            // SAFETY: page-locked host memory of `leaf_bytes` bytes (flags 0: cached, readable by the host); its
            // contents are only read after the device-to-host copy into it has completed.
            let pinned = unsafe { ctx.alloc_pinned_with_flags::<u8>(leaf_bytes, 0) };
            self.host_leaves = Some(pinned.map_err(cuda("allocating pinned host memory"))?);
        }
        let (Some(a), Some(bt), Some(c), Some(leaves), Some(host_leaves)) = (
            self.a.as_mut(),
            self.bt.as_mut(),
            self.c.as_mut(),
            self.leaves.as_mut(),
            self.host_leaves.as_mut(),
        ) else {
            return Err(internal("device buffers missing after allocation"));
        };
        let main = &self.main;

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
            unsafe { launch.launch(cfg) }.map_err(cuda("launching gen_bt"))?;
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
            unsafe { launch.launch(cfg) }.map_err(cuda("launching gen_a"))?;
        }
        let t_gen = timing_event(main)?;

        // 2. GEMM in row chunks on `main`; 3. chunk i hashed on hash stream i mod HASH_STREAMS once multiplied.
        let mut engine = GemmEngine::CublasLt;
        for (i, (c0, c1)) in d.chunks().enumerate() {
            let chunk_engine =
                Self::gemm_chunk(main, self.lt.as_mut(), k, &d, (c0, c1), a, bt, c, fallbacks)?;
            if chunk_engine == GemmEngine::Dp4a {
                engine = GemmEngine::Dp4a;
            }
            let hash = &self.hash[i % self.hash.len()];
            let multiplied = main.record_event(None).map_err(cuda("recording the chunk event"))?;
            hash.wait(&multiplied).map_err(cuda("ordering a hash stream"))?;
            if c0 < d.rows {
                let (begin, end, n, ldc) = (c0, c1.min(d.rows), d.n, d.npad);
                let cfg = grid(u64::from(end - begin), HASH_BLOCK)?;
                let mut launch = hash.launch_builder(&k.sha256_rows);
                launch.arg(&*c).arg(&mut *leaves).arg(&begin).arg(&end).arg(&n).arg(&ldc);
                // SAFETY: arguments match `sha256_rows(const int* c, uchar* leaves, u32 row_begin, u32 row_end,
                // u32 n, u32 ldc)`; rows begin..end < rows_pad of C (stride npad ≥ n) are read, and 32 bytes per
                // row written inside `leaves` (`rows_pad × 32` bytes); chunks on different hash streams write
                // disjoint rows.
                unsafe { launch.launch(cfg) }.map_err(cuda("launching sha256_rows"))?;
            }
        }
        let t_gemm = timing_event(main)?;
        // 3b. Freivalds' check of the whole product on `main` (after the GEMM), next to the hashing tail.
        let check = match shard.check {
            Some(seed) => {
                let product = super::freivalds::Product { a: &*a, bt: &*bt, c: &*c };
                Some(super::freivalds::run(main, k, product, &d, seed, deadline)?)
            }
            None => None,
        };

        // 4. Only the leaves cross PCIe, into pinned memory, once every hash stream is done; the host waits
        // with the watchdog's deadline.
        let copy = &self.hash[0];
        copy.wait(&t_gemm).map_err(cuda("ordering the copy stream"))?;
        for other in &self.hash[1..] {
            let hashed = other.record_event(None).map_err(cuda("recording a hash event"))?;
            copy.wait(&hashed).map_err(cuda("ordering the copy stream"))?;
        }
        let leaves_view = leaves.slice(..leaf_bytes);
        copy.memcpy_dtoh(&leaves_view, host_leaves).map_err(cuda("copying the leaves"))?;
        let t_end = timing_event(copy)?;
        wait_event(&t_end, deadline, "generation, GEMM and hashing")?;
        ctx.check_err().map_err(cuda("an earlier asynchronous call"))?;
        self.b_key = Some(key);

        let host = host_leaves.as_slice().map_err(cuda("reading the pinned leaves"))?;
        let leaves: Vec<Digest32> = host[..leaf_bytes].as_chunks::<32>().0.to_vec();
        let rows = if keep_rows {
            // Rare (spot checks): the padded rows, then compacted to `rows × n` on the host.
            let view = c.slice(..d.rows as usize * d.npad as usize);
            let padded = copy.clone_dtoh(&view).map_err(cuda("copying rows of C"))?;
            let done = copy.record_event(None).map_err(cuda("recording an event"))?;
            wait_event(&done, deadline, "copying rows of C")?;
            let n = d.n as usize;
            Some(padded.chunks(d.npad as usize).flat_map(|row| &row[..n]).copied().collect())
        } else {
            None
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
            gemm_engine: if self.lt.is_some() { engine } else { GemmEngine::Dp4a },
            b_cached,
        };
        Ok(RunOutput { leaves, rows, stats, check })
    }

    /// Device seconds of one `n × n × n` GEMM alone, unchunked, on generated data (after one warm-up),
    /// averaged over `reps`: the reference the pipeline's GEMM phase is compared with. The caller planned the
    /// memory for an `n × n` shard.
    #[allow(clippy::too_many_arguments)] // as `run`
    pub(crate) fn time_gemm(
        &mut self,
        ctx: &Arc<CudaContext>,
        k: &Kernels,
        n: u32,
        plan: &BufferPlan,
        reps: u32,
        deadline: Instant,
        fallbacks: &FallbackLog,
    ) -> Result<f64, Fail> {
        let d = Dims::new(n, n);
        ctx.bind_to_thread().map_err(cuda("binding the context"))?;
        self.apply(&d, plan)?;
        self.b_key = None;
        let (Some(a), Some(bt), Some(c)) = (self.a.as_mut(), self.bt.as_mut(), self.c.as_mut())
        else {
            return Err(internal("device buffers missing after allocation"));
        };
        let main = &self.main;
        let km = KeyMaterial::from_seed("cpc-kernels/time-gemm");
        let (k0, k1, s, zero, one) = (km.key[0], km.key[1], km.stream, 0u32, 1u32);
        let (rows_pad, npad, ldk) = (d.rows_pad, d.npad, d.ldk);
        let cfg = grid(u64::from(ldk / 4) * u64::from(npad / 16), GEN_BLOCK)?;
        let mut launch = main.launch_builder(&k.gen_bt);
        launch.arg(&mut *bt).arg(&n).arg(&npad).arg(&ldk).arg(&one).arg(&k0).arg(&k1).arg(&s);
        // SAFETY: as in `Slot::run`: the arguments match `gen_bt` and `bt` holds `npad × ldk` bytes.
        unsafe { launch.launch(cfg) }.map_err(cuda("launching gen_bt"))?;
        let cfg = grid(u64::from(rows_pad) * u64::from(ldk / 16), GEN_BLOCK)?;
        let mut launch = main.launch_builder(&k.gen_a);
        launch.arg(&mut *a).arg(&n).arg(&rows_pad).arg(&zero).arg(&n).arg(&ldk);
        launch.arg(&zero).arg(&k0).arg(&k1).arg(&s);
        // SAFETY: as in `Slot::run`: the arguments match `gen_a` and `a` holds `rows_pad × ldk` bytes.
        unsafe { launch.launch(cfg) }.map_err(cuda("launching gen_a"))?;
        let whole = (0, rows_pad);
        Self::gemm_chunk(main, self.lt.as_mut(), k, &d, whole, a, bt, c, fallbacks)?;
        let start = timing_event(main)?;
        for _ in 0..reps.max(1) {
            Self::gemm_chunk(main, self.lt.as_mut(), k, &d, whole, a, bt, c, fallbacks)?;
        }
        let end = timing_event(main)?;
        wait_event(&end, deadline, "the GEMM timing")?;
        Ok(secs(&start, &end)? / f64::from(reps.max(1)))
    }
}

/// Remembers that cuBLASLt failed on `shape` (dp4a takes it from now on), counts it and says so loudly.
fn remember_fallback(
    lt: &mut LtGemm,
    shape: super::gemm::Shape,
    error: &CublasError,
    fallbacks: &FallbackLog,
) {
    let (npad, rows, ldk) = shape;
    tracing::warn!(
        npad,
        rows,
        ldk,
        %error,
        "cuBLASLt failed on this GEMM shape: the dp4a kernel (20-30x slower) runs it from now on; \
         check the cuBLAS version against the GPU (deploy/gpu-check.sh)"
    );
    lt.remember_failure(shape, error.to_string());
    fallbacks.shapes.fetch_add(1, Ordering::Relaxed);
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
            let gpu = super::super::gpu_shard_bytes(n, rows);
            let cpu = crate::shard_memory_bytes(n, rows);
            assert!(gpu <= cpu + 64 * 64 * 40 + 64 * u64::from(n) * 6, "n={n} rows={rows}");
        }
    }

    /// Chunks cover the padded rows exactly, start at multiples of 64 (cuBLASLt's alignment), and the last
    /// one is partial when the rows are not a multiple of [`CHUNK_ROWS`] (its own cuBLASLt plan).
    #[test]
    fn chunks_cover_the_padded_rows() {
        let d = Dims::new(4160, 4160);
        assert_eq!(d.chunks().collect::<Vec<_>>(), [(0, 4096), (4096, 4160)]);
        let d = Dims::new(8192, 300);
        assert_eq!(d.chunks().collect::<Vec<_>>(), [(0, 320)]);
        let d = Dims::new(32768, 32768);
        let chunks: Vec<_> = d.chunks().collect();
        assert_eq!(chunks.len(), 8);
        assert!(chunks.windows(2).all(|w| w[0].1 == w[1].0));
        assert!(chunks.iter().all(|&(c0, c1)| c0 % 64 == 0 && c1 > c0));
        assert_eq!(chunks.last(), Some(&(28672, 32768)));
    }
}
