//! Freivalds' check on the CPU backend (the model and its probability: `crate::freivalds`,
//! `docs/VERIFICATION.md`), run by [`CpuBackend`](super::CpuBackend) on every shard that carries a
//! [`CheckSeed`](crate::freivalds::CheckSeed), between the GEMM and the hashing.
//!
//! It reads the same packed A and B the GEMM read (so it checks the product, not the generation: the
//! coordinator's spot checks recompute elements from the definition for that), but through its own loops:
//! matrix-vector products, no tiling. Every set of loops computes the plain definition's sums exactly
//! (`crate::freivalds::row_sums_plain`, bit for bit, held to it by the tests below), so the verdict never
//! depends on which ran; [`CheckLoops::detect`] picks the fastest this CPU has:
//!
//! - the inputs' side `A_rows · (B · r)`, after the GEMM, in the GEMM's own packing: [`Packing::Quads`]
//!   (the VNNI kernels) with AVX-512 `vpdpbusd` on byte digits of r and of `B·r` (`avx512`), or portable
//!   loops (`quads`); [`Packing::Pairs`] (AVX2 and scalar kernels) with AVX2 `vpmaddwd` on 16-bit digits
//!   of r and of `B·r`, or portable loops (`pairs`);
//! - the product's side `C·r`, `i32 × i32 → i64` (`vpmuldq`, 512- or 256-bit) summed modulo 2⁶⁴, one row
//!   at a time right after the backend hashed that row, while it is in cache, so that C is read from
//!   memory once for both (no leaf leaves the backend before every row passed).
//!
//! Everything runs in parallel on the backend's pool (over blocks of rows of B, then over the GEMM's row
//! groups, then over the rows of C).

#[cfg(any(target_arch = "x86_64", test))]
mod avx512;
mod pairs;
mod quads;

use super::generate::{PackedA, PackedB, Packing};
use crate::freivalds::RowSums;
use rayon::prelude::*;

/// Which loops compute the check's sums. They all give the same sums; they differ in speed and in what
/// the CPU must have.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CheckLoops {
    /// Portable Rust in wrapping `i64`: any CPU, either packing.
    Portable,
    /// x86-64 AVX2: the inputs' side on [`Packing::Pairs`] (portable on [`Packing::Quads`]), `C·r` on
    /// 256-bit `vpmuldq`.
    Avx2,
    /// x86-64 AVX-512 F, BW and VNNI: the inputs' side on [`Packing::Quads`] with `vpdpbusd` (AVX2 on
    /// [`Packing::Pairs`]), `C·r` on 512-bit `vpmuldq`.
    Avx512,
}

impl CheckLoops {
    /// Every set of loops, fastest first (the order [`CheckLoops::detect`] tries them in).
    pub const ALL: [Self; 3] = [Self::Avx512, Self::Avx2, Self::Portable];

    /// The fastest loops this CPU can run.
    pub fn detect() -> Self {
        Self::ALL.into_iter().find(|l| l.is_available()).unwrap_or(Self::Portable)
    }

    /// Every set of loops this CPU can run, fastest first.
    pub fn available() -> Vec<Self> {
        Self::ALL.into_iter().filter(|l| l.is_available()).collect()
    }

    /// Whether this CPU can run them (run-time detection, cached by the standard library).
    pub fn is_available(self) -> bool {
        match self {
            Self::Portable => true,
            #[cfg(target_arch = "x86_64")]
            Self::Avx2 => std::arch::is_x86_feature_detected!("avx2"),
            #[cfg(target_arch = "x86_64")]
            Self::Avx512 => {
                std::arch::is_x86_feature_detected!("avx2") && avx512::Avx512::detect().is_some()
            }
            #[cfg(not(target_arch = "x86_64"))]
            Self::Avx2 | Self::Avx512 => false,
        }
    }
}

/// The row sums of a shard: `c` holds its `a.rows()` rows of C (row-major, n each), `r` the check vector
/// (n entries). Runs on the current rayon pool, with the fastest loops this CPU has. (The backend computes
/// the two sides apart: [`input_sums`] after the GEMM, [`c_times_r`] on each row right after it hashes it,
/// while the row is in cache.)
///
/// # Panics
/// If the shapes disagree.
pub fn row_sums(a: &PackedA, b: &PackedB, c: &[i32], r: &[i32]) -> Vec<RowSums> {
    row_sums_with(a, b, c, r, CheckLoops::detect())
}

/// [`row_sums`] with the given loops (loops this CPU cannot run fall back to the portable ones): for the
/// tests that hold each to the plain definition, and the benches that compare them.
///
/// # Panics
/// If the shapes disagree.
pub fn row_sums_with(
    a: &PackedA,
    b: &PackedB,
    c: &[i32],
    r: &[i32],
    loops: CheckLoops,
) -> Vec<RowSums> {
    let n = b.n();
    assert!(c.len() == a.rows() * n, "freivalds: C is not rows × n");
    let inputs = input_sums_with(a, b, r, loops);
    let products = c.par_chunks(n.max(1)).map(|row| c_times_r_with(row, r, loops));
    let products: Vec<u64> = products.collect();
    inputs.into_iter().zip(products).map(|(inputs, product)| RowSums { product, inputs }).collect()
}

/// The inputs' side, `A_rows · (B · r)` modulo 2⁶⁴, one sum per row of the shard. Runs on the current rayon
/// pool.
///
/// # Panics
/// If A, B and r disagree on n, or A and B on their packing.
pub fn input_sums(a: &PackedA, b: &PackedB, r: &[i32]) -> Vec<u64> {
    input_sums_with(a, b, r, CheckLoops::detect())
}

/// [`input_sums`] with the given loops (see [`row_sums_with`]).
///
/// # Panics
/// As [`input_sums`].
pub fn input_sums_with(a: &PackedA, b: &PackedB, r: &[i32], loops: CheckLoops) -> Vec<u64> {
    let n = b.n();
    assert!(a.n() == n && r.len() == n, "freivalds: shapes disagree");
    assert!(a.packing() == b.packing(), "freivalds: A and B packed differently");
    match b.packing() {
        Packing::Pairs => pairs::input_sums(a, b, r, loops != CheckLoops::Portable),
        Packing::Quads => {
            #[cfg(target_arch = "x86_64")]
            if loops == CheckLoops::Avx512
                && let Some(avx512) = avx512::Avx512::detect()
            {
                return avx512::input_sums(avx512, a, b, r);
            }
            quads::input_sums(a, b, r)
        }
    }
}

/// The product's side for one row, `Σ_j C[i][j] · r_j` modulo 2⁶⁴ (`c` and `r` of the same length).
pub fn c_times_r(c: &[i32], r: &[i32]) -> u64 {
    c_times_r_with(c, r, CheckLoops::detect())
}

/// [`c_times_r`] with the given loops (see [`row_sums_with`]).
#[cfg_attr(not(target_arch = "x86_64"), allow(unused_variables))]
pub fn c_times_r_with(c: &[i32], r: &[i32], loops: CheckLoops) -> u64 {
    #[cfg(target_arch = "x86_64")]
    match loops {
        CheckLoops::Avx512 if std::arch::is_x86_feature_detected!("avx512f") => {
            // SAFETY: AVX-512 F was just detected on this CPU; the function touches memory only through
            // slices.
            return unsafe { c_times_r_avx512(c, r) };
        }
        CheckLoops::Avx2 | CheckLoops::Avx512 if std::arch::is_x86_feature_detected!("avx2") => {
            // SAFETY: AVX2 was just detected on this CPU; the function touches memory only through slices.
            return unsafe { c_times_r_avx2(c, r) };
        }
        _ => {}
    }
    c_times_r_body(c, r)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
fn c_times_r_avx512(c: &[i32], r: &[i32]) -> u64 {
    c_times_r_body(c, r)
}

/// `c_times_r` on AVX2: `vpmuldq` multiplies the even `i32` lanes of two vectors of eight into exact
/// `i64` products, and again after a 32-bit shift of each 64-bit lane brings the odd ones down (two loads,
/// two shifts, two multiplies per eight elements, where the compiler's loop widened each operand with
/// `vpmovzxdq` first). Summed modulo 2⁶⁴ (wrapping `vpaddq`); the last `len mod 8` in plain Rust.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
fn c_times_r_avx2(c: &[i32], r: &[i32]) -> u64 {
    use std::arch::x86_64::*;
    let len = c.len().min(r.len());
    let blocks = len / 8;
    let mut acc = [_mm256_setzero_si256(); 2];
    let (c8, r8) = (c[..8 * blocks].as_chunks::<8>().0, r[..8 * blocks].as_chunks::<8>().0);
    for (c8, r8) in c8.iter().zip(r8) {
        // SAFETY: `c8` and `r8` hold 8 i32: one unaligned 32-byte load each.
        let (cv, rv) = unsafe {
            (_mm256_loadu_si256(c8.as_ptr().cast()), _mm256_loadu_si256(r8.as_ptr().cast()))
        };
        acc[0] = _mm256_add_epi64(acc[0], _mm256_mul_epi32(cv, rv));
        let (c_odd, r_odd) = (_mm256_srli_epi64::<32>(cv), _mm256_srli_epi64::<32>(rv));
        acc[1] = _mm256_add_epi64(acc[1], _mm256_mul_epi32(c_odd, r_odd));
    }
    let mut lanes = [0u64; 4];
    let total = acc.into_iter().fold(_mm256_setzero_si256(), |s, a| _mm256_add_epi64(s, a));
    // SAFETY: `lanes` holds 4 u64: one unaligned 32-byte store.
    unsafe { _mm256_storeu_si256(lanes.as_mut_ptr().cast(), total) };
    let tail = c_times_r_body(&c[8 * blocks..len], &r[8 * blocks..len]);
    lanes.into_iter().fold(tail, u64::wrapping_add)
}

/// `i32 × i32` products (the compiler's `vpmuldq` in the AVX-512 build, where both operands are
/// sign-extended 32-bit values), summed modulo 2⁶⁴: the portable loop, and the AVX2 loop's tail.
#[inline(always)]
fn c_times_r_body(c: &[i32], r: &[i32]) -> u64 {
    c.iter().zip(r).fold(0i64, |s, (&x, &y)| s.wrapping_add(i64::from(x) * i64::from(y))) as u64
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        cpu::{Kernel, gemm::gemm, generate_rows},
        freivalds::{CheckSeed, check_vector, compare, row_sums_plain},
    };
    use cpc_common::synthetic::KeyMaterial;

    /// Every set of loops this CPU runs, with a note of the ones it cannot (which fall back, so their
    /// runs below check nothing new).
    fn loops() -> Vec<CheckLoops> {
        let available = CheckLoops::available();
        for missing in CheckLoops::ALL.iter().filter(|l| !available.contains(l)) {
            eprintln!("this CPU cannot run the {missing:?} check loops: not tested here");
        }
        available
    }

    /// A shard's inputs packed for one kernel, its product, and the inputs in plain row-major form.
    struct Case {
        a: PackedA,
        b: PackedB,
        c: Vec<i32>,
        a_plain: Vec<i8>,
        b_plain: Vec<i8>,
    }

    impl Case {
        fn new(km: &KeyMaterial, n: u32, rows: std::ops::Range<u32>, kernel: Kernel) -> Self {
            let a = PackedA::generate(km, 0, rows.clone(), n, kernel);
            let b = PackedB::generate(km, 1, n, kernel);
            let c = gemm(&a, &b, kernel);
            let (a_plain, b_plain) = (generate_rows(km, 0, rows, n), generate_rows(km, 1, 0..n, n));
            Self { a, b, c, a_plain, b_plain }
        }
    }

    /// Each set of loops gives the plain definition's sums, bit for bit, on odd shapes and offset rows, in
    /// every packing, for the true product and for products with one element changed (anywhere, by any
    /// single bit), which fail exactly their row.
    #[test]
    fn fast_sums_match_the_plain_definition() {
        let km = KeyMaterial::from_seed("freivalds-cpu");
        // Odd shapes, offset rows, and sizes past the AVX2 loops' widening points (128 column pairs of A,
        // 128 panels of B).
        for (n, rows) in [
            (1u32, 0..1u32),
            (2, 0..2),
            (7, 1..6),
            (16, 0..16),
            (17, 3..17),
            (33, 0..13),
            (100, 40..100),
            (301, 290..301),
            (2100, 5..12),
        ] {
            for packed_for in Kernel::available() {
                let Case { a, b, c, a_plain, b_plain } =
                    Case::new(&km, n, rows.clone(), packed_for);
                for loops in loops() {
                    for seed in [0u64, 1, u64::MAX] {
                        let r = check_vector(CheckSeed(seed), n as usize);
                        let fast = row_sums_with(&a, &b, &c, &r, loops);
                        let plain = row_sums_plain(&a_plain, &b_plain, &c, &r, n as usize);
                        assert_eq!(fast, plain, "n={n} rows={rows:?} {packed_for} {loops:?}");
                        assert_eq!(compare(&fast), Ok(()), "n={n} rows={rows:?} seed={seed}");
                    }
                    for flip in 0..4usize {
                        let mut bad = c.clone();
                        let at = (flip * 7919 + n as usize) % bad.len();
                        bad[at] ^= 1 << (flip * 11 % 32);
                        let r = check_vector(CheckSeed(5 + flip as u64), n as usize);
                        let fast = row_sums_with(&a, &b, &bad, &r, loops);
                        let plain = row_sums_plain(&a_plain, &b_plain, &bad, &r, n as usize);
                        assert_eq!(fast, plain, "n={n} {packed_for} {loops:?} flip at {at}");
                        let caught = compare(&fast).expect_err("a flipped element is caught");
                        assert_eq!(caught.first_rows, [(at / n as usize) as u32]);
                    }
                }
            }
        }
    }

    /// Extreme values: every A and B entry −128, r at its extremes; the sums stay exact.
    #[test]
    fn extreme_values_stay_exact() {
        // Past both widening points, every product at its largest magnitude.
        let n = 2100usize;
        let a_plain = vec![i8::MIN; 7 * n];
        let b_plain = vec![i8::MIN; n * n];
        for packed_for in Kernel::available() {
            let a = PackedA::from_rows(&a_plain, 7, n, packed_for.packing());
            let b = PackedB::from_rows(&b_plain, n, packed_for.packing());
            let c = gemm(&a, &b, packed_for);
            for r in [
                vec![i32::MIN; n],
                vec![i32::MAX; n],
                (0..n).map(|j| (j as i32) | 0xFFFF).collect::<Vec<_>>(),
            ] {
                for loops in loops() {
                    let fast = row_sums_with(&a, &b, &c, &r, loops);
                    assert_eq!(fast, row_sums_plain(&a_plain, &b_plain, &c, &r, n), "{loops:?}");
                    assert_eq!(compare(&fast), Ok(()), "{loops:?}");
                }
            }
        }
    }

    /// r at and around the edges of its 16-bit digits (the AVX2 pairs loops' `lo`/`hi` split, whose `hi`
    /// wraps for r in `[2³¹ − 2¹⁵, 2³¹)`), and r small or zero (so that `B·r` needs one or two 16-bit
    /// digits, not three or four), on shapes that are not whole panels, blocks or tasks.
    #[test]
    fn r_at_its_digit_edges_stays_exact() {
        const EDGES: [i32; 16] = [
            i32::MIN,
            i32::MIN + 1,
            -0x8001,
            -0x8000,
            -1,
            0,
            1,
            0x7FFF,
            0x8000,
            0xFFFF,
            0x1_0000,
            i32::MAX - 0x8000,
            i32::MAX - 0x7FFF,
            i32::MAX - 0x7FFE,
            i32::MAX - 1,
            i32::MAX,
        ];
        let km = KeyMaterial::from_seed("freivalds-edges");
        for (n, rows) in [(1u32, 0..1u32), (15, 2..9), (33, 0..7), (47, 5..18), (300, 1..14)] {
            let len = n as usize;
            let vectors = [
                (0..len).map(|j| EDGES[j % EDGES.len()]).collect::<Vec<_>>(),
                (0..len).map(|j| EDGES[(j * 7 + 3) % EDGES.len()]).collect(),
                vec![i32::MAX - 0x7FFF; len],
                vec![0; len],
                (0..len).map(|j| (j % 7) as i32 - 3).collect(),
                (0..len).map(|j| ((j * 37 % 1001) as i32 - 500) << 6).collect(),
            ];
            for packed_for in Kernel::available() {
                let Case { a, b, c, a_plain, b_plain } =
                    Case::new(&km, n, rows.clone(), packed_for);
                for (v, r) in vectors.iter().enumerate() {
                    let plain = row_sums_plain(&a_plain, &b_plain, &c, r, len);
                    for loops in loops() {
                        let fast = row_sums_with(&a, &b, &c, r, loops);
                        assert_eq!(fast, plain, "n={n} {packed_for} {loops:?} vector {v}");
                        assert_eq!(
                            compare(&fast),
                            Ok(()),
                            "n={n} {packed_for} {loops:?} vector {v}"
                        );
                    }
                }
            }
        }
    }

    /// The product's side alone on every length up to a few vectors, C and r at their extremes.
    #[test]
    fn c_times_r_matches_the_plain_sum() {
        let edges =
            [i32::MIN, i32::MIN + 1, -0x8000, -1, 0, 1, 0x7FFF, 0x8000, i32::MAX - 1, i32::MAX];
        for len in 0..40usize {
            let c: Vec<i32> = (0..len).map(|j| edges[(j * 3 + len) % edges.len()]).collect();
            let r: Vec<i32> = (0..len).map(|j| edges[(j * 7 + 1) % edges.len()]).collect();
            let plain = c.iter().zip(&r).fold(0u64, |s, (&x, &y)| {
                s.wrapping_add((i64::from(x) as u64).wrapping_mul(i64::from(y) as u64))
            });
            for loops in loops() {
                assert_eq!(c_times_r_with(&c, &r, loops), plain, "len={len} {loops:?}");
            }
        }
    }

    /// Both packings through every set of loops, whatever the GEMM kernels this CPU has: the quads' and
    /// pairs' loops each see both kinds of data (the packing is plain arithmetic, no SIMD needed).
    #[test]
    fn every_packing_on_every_loops() {
        let n = 203usize;
        let (a_plain, b_plain): (Vec<i8>, Vec<i8>) = (
            (0..9 * n).map(|i| (i * 37 % 251) as i8).collect(),
            (0..n * n).map(|i| (i * 101 % 241) as i8).collect(),
        );
        for packing in [Packing::Pairs, Packing::Quads] {
            let a = PackedA::from_rows(&a_plain, 9, n, packing);
            let b = PackedB::from_rows(&b_plain, n, packing);
            let r = check_vector(CheckSeed(42), n);
            let want: Vec<u64> = row_sums_plain(&a_plain, &b_plain, &vec![0; 9 * n], &r, n)
                .iter()
                .map(|s| s.inputs)
                .collect();
            for loops in CheckLoops::ALL {
                assert_eq!(input_sums_with(&a, &b, &r, loops), want, "{packing:?} {loops:?}");
            }
        }
    }
}
