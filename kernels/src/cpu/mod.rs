//! The CPU backend: Philox generation ([`generate`]), the exact `i8` GEMM ([`gemm`]), Freivalds' check of
//! the product ([`freivalds`]) and row hashing ([`hash`]), each multi-threaded on the backend's own rayon
//! pool, and [`c_elements`], single elements of C for spot checks. The GEMM micro-kernel ([`Kernel`]) is
//! picked at run time with `is_x86_feature_detected!`, fastest first (AVX-512 VNNI, AVX-VNNI, AVX2,
//! scalar), and can be forced.
//!
//! The building blocks are public so that benches and tools can time or reuse them one by one; they run
//! on the current rayon pool (the global one unless called inside [`CpuBackend`]'s).

mod elements;
pub mod freivalds;
pub mod gemm;
pub mod generate;
pub mod hash;
mod philox;

use crate::{
    Backend, BackendError, BackendKind, CheckCost, DeviceInfo, Shard, ShardOutput,
    freivalds::{RowSums, check_vector, compare},
};
use cpc_common::{hashing::Digest32, synthetic::matrix_ids};
pub use elements::c_elements;
pub use generate::{PackedA, PackedB, Packing, generate_rows};
pub use hash::{hash_row, hash_rows};
use rayon::prelude::*;
use std::{
    num::NonZeroU32,
    ops::Range,
    str::FromStr,
    sync::atomic::{AtomicU64, Ordering},
    time::{Duration, Instant},
};

/// Which GEMM micro-kernel runs. [`Kernel::detect`] picks the fastest this CPU has; a caller may force
/// one ([`CpuBackend::with_kernel`], `--kernel`), and forcing one the CPU lacks is an error
/// ([`BackendError::KernelUnsupported`]), never a silent fallback.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kernel {
    /// Portable Rust, no SIMD intrinsics (the reference the SIMD kernels are tested against).
    Scalar,
    /// x86-64 AVX2: `i8 → i16` widening and `_mm256_madd_epi16` into `i32` accumulators.
    Avx2,
    /// x86-64 AVX-VNNI (VEX-encoded `vpdpbusd` on 256-bit vectors), with AVX2.
    AvxVnni,
    /// x86-64 AVX-512 VNNI (`vpdpbusd` on 512-bit vectors), with AVX-512F and AVX-512BW.
    Avx512Vnni,
}

impl Kernel {
    /// Every kernel, fastest first (the order [`Kernel::detect`] tries them in).
    pub const ALL: [Self; 4] = [Self::Avx512Vnni, Self::AvxVnni, Self::Avx2, Self::Scalar];

    /// The fastest kernel this CPU can run.
    pub fn detect() -> Self {
        Self::ALL.into_iter().find(|k| k.is_available()).unwrap_or(Self::Scalar)
    }

    /// Every kernel this CPU can run, fastest first.
    pub fn available() -> Vec<Self> {
        Self::ALL.into_iter().filter(|k| k.is_available()).collect()
    }

    /// Whether this CPU can run the kernel (run-time detection, cached by the standard library).
    pub fn is_available(self) -> bool {
        match self {
            Self::Scalar => true,
            #[cfg(target_arch = "x86_64")]
            Self::Avx2 => std::arch::is_x86_feature_detected!("avx2"),
            #[cfg(target_arch = "x86_64")]
            Self::AvxVnni => {
                std::arch::is_x86_feature_detected!("avx2")
                    && std::arch::is_x86_feature_detected!("avxvnni")
            }
            #[cfg(target_arch = "x86_64")]
            Self::Avx512Vnni => {
                std::arch::is_x86_feature_detected!("avx512f")
                    && std::arch::is_x86_feature_detected!("avx512bw")
                    && std::arch::is_x86_feature_detected!("avx512vnni")
            }
            #[cfg(not(target_arch = "x86_64"))]
            Self::Avx2 | Self::AvxVnni | Self::Avx512Vnni => false,
        }
    }

    /// This kernel if the CPU can run it, else [`BackendError::KernelUnsupported`] naming the ones it can.
    pub fn require(self) -> Result<Self, BackendError> {
        if self.is_available() {
            Ok(self)
        } else {
            Err(BackendError::KernelUnsupported {
                kernel: self.as_str(),
                available: Self::available()
                    .iter()
                    .map(|k| k.as_str())
                    .collect::<Vec<_>>()
                    .join(", "),
            })
        }
    }

    /// Lower-case name (`"scalar"`, `"avx2"`, `"avxvnni"`, `"avx512vnni"`), as `--kernel` takes it.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Scalar => "scalar",
            Self::Avx2 => "avx2",
            Self::AvxVnni => "avxvnni",
            Self::Avx512Vnni => "avx512vnni",
        }
    }

    /// How the kernel wants A and B packed.
    pub fn packing(self) -> Packing {
        match self {
            Self::Scalar | Self::Avx2 => Packing::Pairs,
            Self::AvxVnni | Self::Avx512Vnni => Packing::Quads,
        }
    }

    /// 16-column panels of B one micro-kernel call covers.
    pub(crate) fn panels_per_call(self) -> usize {
        match self {
            Self::Avx512Vnni => gemm::MAX_PANELS,
            Self::Scalar | Self::Avx2 | Self::AvxVnni => 1,
        }
    }

    /// Runs the micro-kernel: `block = A-group · panels first..first + count` over k steps `steps`
    /// (`count ≤ panels_per_call`). Only called by [`gemm::gemm`], which checked availability and packing.
    #[inline]
    fn run(
        self,
        a: &[u32],
        b: &PackedB,
        first: usize,
        count: usize,
        steps: Range<usize>,
        block: &mut gemm::Block,
    ) {
        let panel = |p: usize| b.panel(first + p, steps.start, steps.end);
        match self {
            #[cfg(target_arch = "x86_64")]
            // SAFETY (all three arms): `gemm` asserted `is_available()` for this kernel, i.e. that this CPU
            // has every feature the kernel's `#[target_feature]` enables; the kernels touch memory only
            // through the slices they are given.
            Self::Avx2 => unsafe { gemm::avx2::kernel(a, panel(0), block) },
            #[cfg(target_arch = "x86_64")]
            Self::AvxVnni => unsafe { gemm::avx_vnni::kernel(a, panel(0), block) },
            #[cfg(target_arch = "x86_64")]
            Self::Avx512Vnni => unsafe {
                use gemm::avx512_vnni::kernel;
                match count {
                    1 => kernel::<1>(a, [panel(0)], block),
                    2 => kernel::<2>(a, [panel(0), panel(1)], block),
                    3 => kernel::<3>(a, [panel(0), panel(1), panel(2)], block),
                    _ => kernel::<4>(a, [panel(0), panel(1), panel(2), panel(3)], block),
                }
            },
            _ => gemm::kernel_scalar(a, panel(0), block),
        }
    }
}

impl std::fmt::Display for Kernel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Kernel {
    type Err = BackendError;

    /// Parses a name from [`Kernel::as_str`] (case-insensitive; `avx512` and `avx-vnni` as aliases).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim().to_ascii_lowercase().as_str() {
            "scalar" => Ok(Self::Scalar),
            "avx2" => Ok(Self::Avx2),
            "avxvnni" | "avx-vnni" | "avx_vnni" => Ok(Self::AvxVnni),
            "avx512vnni" | "avx512" | "avx512-vnni" | "avx512_vnni" => Ok(Self::Avx512Vnni),
            _ => Err(BackendError::UnknownKernel(s.to_owned())),
        }
    }
}

/// **For tests and demos only**: one bit of one element of one shard, flipped after the GEMM and before the
/// check and the hashing, as a memory fault without ECC would ([`CpuBackend::with_bit_flip`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct BitFlip {
    /// Which of the backend's checked shards (those that carry a Freivalds seed, as every shard a farm sends
    /// does) gets it, from 0. Unchecked runs, such as the agent's start-up measurement, are not counted.
    pub shard: u64,
    /// Row within that shard (an offset from its first row, taken modulo its row count).
    pub row: u32,
    /// Column (modulo n).
    pub col: u32,
    /// Bit of the `i32` (modulo 32; 31 is the sign).
    pub bit: u32,
}

/// The CPU backend: every core (or the number of threads asked for) on one shard at a time.
#[derive(Debug)]
pub struct CpuBackend {
    pool: rayon::ThreadPool,
    kernel: Kernel,
    name: String,
    fault_every: Option<NonZeroU32>,
    bit_flip: Option<BitFlip>,
    checked_shards_run: AtomicU64,
    memory_limit: Option<u64>,
}

impl CpuBackend {
    /// A backend with `threads` worker threads (0: one per logical CPU, or `RAYON_NUM_THREADS`) and the
    /// fastest kernel the CPU supports.
    pub fn new(threads: usize) -> Result<Self, BackendError> {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .thread_name(|i| format!("cpc-cpu-{i}"))
            .build()?;
        let kernel = Kernel::detect();
        Ok(Self {
            pool,
            kernel,
            name: format!("cpu-{}", kernel.as_str()),
            fault_every: None,
            bit_flip: None,
            checked_shards_run: AtomicU64::new(0),
            memory_limit: None,
        })
    }

    /// Forces a kernel (`--kernel`, parity tests, benches). Errs with [`BackendError::KernelUnsupported`]
    /// when this CPU cannot run it.
    pub fn with_kernel(mut self, kernel: Kernel) -> Result<Self, BackendError> {
        self.kernel = kernel.require()?;
        self.name = format!("cpu-{}", self.kernel.as_str());
        Ok(self)
    }

    /// **For tests and demos only**: a dishonest backend that adds 1 to one element of C (column `r % n`) in
    /// every row `r` with `r % every_k_rows == 0`, before hashing, so that spot checks can be shown to catch
    /// it. `0` turns injection off.
    pub fn with_fault_injection(mut self, every_k_rows: u32) -> Self {
        self.fault_every = NonZeroU32::new(every_k_rows);
        self
    }

    /// **For tests and demos only**: flips one bit of one element of one shard (see [`BitFlip`]), before the
    /// Freivalds check and the hashing, so that the check can be shown to catch the smallest fault.
    pub fn with_bit_flip(mut self, flip: BitFlip) -> Self {
        self.bit_flip = Some(flip);
        self
    }

    /// Caps the memory the backend reports for shards (default: the host's available memory).
    pub fn with_memory_limit(mut self, bytes: u64) -> Self {
        self.memory_limit = Some(bytes);
        self
    }

    /// The kernel in use.
    pub fn kernel(&self) -> Kernel {
        self.kernel
    }

    /// Number of worker threads.
    pub fn threads(&self) -> usize {
        self.pool.current_num_threads()
    }

    /// Rows `r0..r1` of C for one iteration, row-major, fault injection included, with the packed A and B
    /// they came from (no bounds checks: callers validate the shard first). `ordinal` counts this backend's
    /// checked `run_shard` calls (`None` for an unchecked one), for [`BitFlip`].
    fn product_rows(&self, shard: &Shard, ordinal: Option<u64>) -> (PackedA, PackedB, Vec<i32>) {
        let n = shard.challenge.matrix_size();
        let km = shard.challenge.key_material();
        let (a_id, b_id) = matrix_ids(shard.iteration);
        let (a, b) = rayon::join(
            || PackedA::generate(&km, a_id, shard.rows.clone(), n, self.kernel),
            || PackedB::generate(&km, b_id, n, self.kernel),
        );
        let mut c = gemm::gemm(&a, &b, self.kernel);
        self.inject_faults(shard, ordinal, &mut c);
        (a, b, c)
    }

    /// The leaves of `c`, after Freivalds' check ([`freivalds`]) when the shard carries a seed: the inputs'
    /// side first, then each row's product side right after the row is hashed, while it is in cache (one
    /// pass over C for both). Answers the leaves and the check's time, or the error naming the failing rows
    /// (no leaf is returned). The time is what the check adds: its inputs' side, and its product side on
    /// rows the hashing already brought in (timed per row, so loading C is the hashing's cost, as it would
    /// be without a check).
    fn checked_leaves(
        &self,
        shard: &Shard,
        a: &PackedA,
        b: &PackedB,
        c: &[i32],
    ) -> Result<(Vec<Digest32>, Option<Duration>), BackendError> {
        let n = shard.challenge.matrix_size() as usize;
        let Some(seed) = shard.check else {
            return Ok((hash_rows(c, n), None));
        };
        let started = Instant::now();
        let r = check_vector(seed, n);
        let inputs = freivalds::input_sums(a, b, &r);
        let inputs_time = started.elapsed();
        let product_nanos = AtomicU64::new(0);
        let (leaves, products): (Vec<Digest32>, Vec<u64>) = c
            .par_chunks(n.max(1))
            .map(|row| {
                let leaf = hash_row(row);
                let t = Instant::now();
                let product = freivalds::c_times_r(row, &r);
                let nanos = u64::try_from(t.elapsed().as_nanos()).unwrap_or(u64::MAX);
                product_nanos.fetch_add(nanos, Ordering::Relaxed);
                (leaf, product)
            })
            .unzip();
        let sums: Vec<RowSums> = products
            .into_iter()
            .zip(inputs)
            .map(|(product, inputs)| RowSums { product, inputs })
            .collect();
        compare(&sums).map_err(|m| BackendError::failed_check(&self.name, shard, &m))?;
        // The product side ran spread over the pool's threads: its share of the wall time.
        let threads = u32::try_from(self.threads().max(1)).unwrap_or(u32::MAX);
        let product_time = Duration::from_nanos(product_nanos.into_inner()) / threads;
        Ok((leaves, Some(inputs_time + product_time)))
    }

    /// The test-only faults: one element off by one every k rows, and the one-bit flip.
    fn inject_faults(&self, shard: &Shard, ordinal: Option<u64>, c: &mut [i32]) {
        let n = shard.challenge.matrix_size();
        if let Some(k) = self.fault_every {
            for (r, row) in shard.rows.clone().zip(c.chunks_mut(n as usize)) {
                if r % k.get() == 0 {
                    let j = (r % n) as usize;
                    row[j] = row[j].wrapping_add(1);
                }
            }
        }
        if let Some(flip) = self.bit_flip.filter(|f| Some(f.shard) == ordinal) {
            let i = (flip.row % shard.row_count()) as usize * n as usize + (flip.col % n) as usize;
            if let Some(v) = c.get_mut(i) {
                *v ^= 1 << (flip.bit % 32);
            }
        }
    }
}

impl Backend for CpuBackend {
    fn name(&self) -> &str {
        &self.name
    }

    fn info(&self) -> DeviceInfo {
        let memory_bytes = self.memory_limit.or_else(host_available_memory).unwrap_or(u64::MAX);
        let threads = self.threads();
        DeviceInfo {
            name: format!(
                "{} ({}, {threads} threads)",
                cpu_model().unwrap_or_else(|| "CPU".into()),
                self.kernel.as_str()
            ),
            kind: BackendKind::Cpu,
            memory_bytes,
            compute_units: u32::try_from(threads).unwrap_or(u32::MAX),
        }
    }

    fn run_shard(&self, shard: &Shard, keep_rows: bool) -> Result<ShardOutput, BackendError> {
        shard.validate()?;
        let info = self.info();
        let needed = shard.memory_bytes();
        if needed > info.memory_bytes {
            return Err(BackendError::ShardTooLarge {
                n: shard.challenge.matrix_size(),
                rows: shard.row_count(),
                needed,
                available: info.memory_bytes,
                device: info.name,
            });
        }
        let ordinal = shard.check.map(|_| self.checked_shards_run.fetch_add(1, Ordering::Relaxed));
        let started = Instant::now();
        self.pool.install(|| {
            let (a, b, c) = self.product_rows(shard, ordinal);
            let (leaves, check) = self.checked_leaves(shard, &a, &b, &c)?;
            drop((a, b));
            let check = check.map(|check| CheckCost { check, shard: started.elapsed() });
            Ok(ShardOutput { leaves, rows: keep_rows.then_some(c), check })
        })
    }
}

/// `MemAvailable` from `/proc/meminfo` (Linux), in bytes.
fn host_available_memory() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = text.lines().find(|l| l.starts_with("MemAvailable:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    kib.checked_mul(1024)
}

/// The CPU model from `/proc/cpuinfo` (Linux).
fn cpu_model() -> Option<String> {
    let text = std::fs::read_to_string("/proc/cpuinfo").ok()?;
    let line = text.lines().find(|l| l.starts_with("model name"))?;
    Some(line.split_once(':')?.1.trim().to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;
    use cpc_common::synthetic::Challenge;

    fn naive(a: &[i8], b: &[i8], m: usize, n: usize) -> Vec<i32> {
        let mut c = vec![0i32; m * n];
        for i in 0..m {
            for k in 0..n {
                let av = i32::from(a[i * n + k]);
                for j in 0..n {
                    c[i * n + j] += av * i32::from(b[k * n + j]);
                }
            }
        }
        c
    }

    fn pseudo(len: usize, seed: u32) -> Vec<i8> {
        let mut x = seed.wrapping_mul(2_654_435_761).max(1);
        (0..len)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 17;
                x ^= x << 5;
                x as i8
            })
            .collect()
    }

    #[test]
    fn gemm_matches_naive_on_odd_shapes() {
        for (m, n) in [(1, 1), (1, 2), (7, 3), (13, 17), (6, 16), (97, 33), (5, 300), (100, 530)] {
            let (a, b) = (pseudo(m * n, m as u32), pseudo(n * n, n as u32));
            let want = naive(&a, &b, m, n);
            for kernel in Kernel::available() {
                let p = kernel.packing();
                let (pa, pb) = (PackedA::from_rows(&a, m, n, p), PackedB::from_rows(&b, n, p));
                assert_eq!(gemm::gemm(&pa, &pb, kernel), want, "m={m} n={n} {kernel:?}");
            }
        }
    }

    #[test]
    fn extreme_values_are_exact() {
        // Every sign combination of the extremes: -128 · -128 = 2^14 is the largest product, and with the
        // VNNI offset -128 · (127 + 128) is the most negative term the accumulators ever see.
        let n = 530;
        for (x, y) in
            [(i8::MIN, i8::MIN), (i8::MIN, i8::MAX), (i8::MAX, i8::MIN), (i8::MAX, i8::MAX)]
        {
            let want = (n as i32) * i32::from(x) * i32::from(y);
            for kernel in Kernel::available() {
                let p = kernel.packing();
                let a = PackedA::from_rows(&vec![x; 3 * n], 3, n, p);
                let packed = PackedB::from_rows(&vec![y; n * n], n, p);
                let c = gemm::gemm(&a, &packed, kernel);
                assert!(c.iter().all(|&v| v == want), "{x}·{y} {kernel:?}");
            }
        }
    }

    #[test]
    fn kernel_names_round_trip_and_unsupported_kernels_are_refused() {
        for kernel in Kernel::ALL {
            assert_eq!(kernel.as_str().parse::<Kernel>().expect("parses"), kernel);
            let forced = CpuBackend::new(1).expect("pool").with_kernel(kernel);
            match forced {
                Ok(backend) => {
                    assert!(kernel.is_available());
                    assert_eq!(backend.name(), format!("cpu-{kernel}"));
                }
                Err(e) => {
                    assert!(!kernel.is_available());
                    assert!(matches!(e, BackendError::KernelUnsupported { .. }), "{e}");
                    assert!(e.to_string().contains(kernel.as_str()), "{e}");
                }
            }
        }
        assert!(matches!("avx9".parse::<Kernel>(), Err(BackendError::UnknownKernel(_))));
        assert_eq!(Kernel::detect(), Kernel::available()[0]);
    }

    #[test]
    fn shard_rows_match_c_element() {
        let backend = CpuBackend::new(2).expect("pool");
        let challenge = Challenge::new("cpu-unit", 37, 2).expect("challenge");
        let shard = Shard::new(challenge.clone(), 1, 5..19).expect("shard");
        let out = backend.run_shard(&shard, true).expect("runs");
        let rows = out.rows.expect("kept");
        for (i, r) in (5..19).enumerate() {
            for j in 0..37 {
                assert_eq!(rows[i * 37 + j as usize], challenge.c_element(1, r, j));
            }
            assert_eq!(out.leaves[i], hash_row(&rows[i * 37..(i + 1) * 37]));
        }
    }

    #[test]
    fn too_large_shard_is_refused() {
        let backend = CpuBackend::new(1).expect("pool").with_memory_limit(1000);
        let shard =
            Shard::whole(Challenge::new("big", 64, 1).expect("challenge"), 0).expect("shard");
        let err = backend.run_shard(&shard, false).expect_err("too large");
        assert!(matches!(err, BackendError::ShardTooLarge { .. }), "{err}");
    }
}
