//! The inputs' side of the check, `A_rows · (B · r)`, on the VNNI kernels' [`Packing::Quads`] with AVX-512
//! (F, BW, VNNI): both matrix-vector products run on `vpdpbusd`, the GEMM's own instruction, by cutting the
//! 32-bit r and the 55-bit `B·r` into bytes. Exact throughout: the sums are the plain definition's, bit for
//! bit, so the check's arithmetic (`crate::freivalds`) and every other backend are unchanged.
//!
//! # `B·r`
//!
//! A k step of a panel holds, for each of its 16 columns j, the four `B[4q+t][j] + 128` side by side. One
//! `vpshufb` transposes each 4 × 4 block of bytes (four columns in one 128-bit lane), so that word `4L + t`
//! holds row `4q + t`'s values in columns `4L .. 4L + 4`: four products `vpdpbusd` sums at once against four
//! bytes of r. r is cut into its two's-complement bytes, `r = u₀ + 2⁸u₁ + 2¹⁶u₂ + 2²⁴s₃`, `u` unsigned and
//! `s₃ = r >> 24` signed. The low digits multiply the true B (the stored bytes with their top bit flipped,
//! as the signed operand); the signed top digit multiplies the stored `B + 128` (unsigned), which adds
//! `128 · Σ_j s₃(r_j)` to every row of B, taken off at the end. A word adds at most `4 · 255 · 128 < 2¹⁷`
//! per panel, so 4096 panels (n = 65536) stay below 2³¹ (the `i32` lanes never wrap), and
//! `y = S₀ + 2⁸S₁ + 2¹⁶S₂ + 2²⁴(S₃ − 128·Σs₃)` is exact in `i64`.
//!
//! # `A·y`
//!
//! y is cut the same way, into the fewest bytes D its largest magnitude needs (`|y| ≤ 2⁵⁴` for n ≤ 65536:
//! at most 7; 6 for random data at n = 2048 .. 16384): D − 1 unsigned low bytes and a signed top byte, one
//! table per digit with a word per k step (byte t for `y[4q + t]`). A group of six rows of A is read as the
//! GEMM packed it (a word is four `i8` of one row, words in (step, row) order), 16 words a vector, so word
//! m of a vector belongs to step `q₀ + m / 6` and row `m mod 6`, and the pattern repeats every three
//! vectors (eight steps): one `vpermd` per vector and digit spreads that window of the table over the
//! matching words, and three accumulators per digit, one per phase of the pattern, are folded per row at
//! the end. The low digits multiply A as is; the top one multiplies `A + 128` (the words' top bits
//! flipped), which adds `128 · Σ_k top(y_k)` to every row, taken off at the end. A lane adds one `vpdpbusd`
//! per eight steps: at most `2049 · 130 560 < 2³¹` at n = 65536. At most four digits go in one pass over
//! the group (twelve accumulators), so D > 4 reads the group twice, from L1 or L2.
//!
//! # Why a macro, and a model
//!
//! The loops are written once (`quads_kernels!`) over eight vector operations and instantiated twice: on
//! the AVX-512 intrinsics (`simd`, what runs), and in tests on a portable model of those instructions,
//! each written from Intel's pseudo-code (`model`). Hosts without AVX-512 (this project's CI and development
//! machines among them) thus run every index, digit, lane and correction of the real loops against the
//! plain definition; an AVX-512 host also holds the instructions to the model one by one.

use super::super::generate::{GROUP_ROWS, PANEL_COLUMNS, PackedA, PackedB, Packing};
use rayon::prelude::*;

/// 32-bit words in a 512-bit vector.
const WORDS: usize = 16;
/// Bytes of one k step of one panel of B (one vector).
const STEP_BYTES: usize = Packing::Quads.step_bytes();
/// k steps of B per register block of `B·r` (four steps × four digits: 16 accumulators).
const STEPS_PER_BLOCK: usize = 4;
/// k steps of B per parallel task of `B·r`.
const STEPS_PER_TASK: usize = 16;
/// Digits of y per pass over a group of A (three phases × four digits: 12 accumulators).
const DIGITS_PER_PASS: usize = 4;
/// Vectors of A before the (step, row) pattern repeats: 3 × 16 words = 8 steps × 6 rows.
const PHASES: usize = 3;
/// k steps covered by one round of the pattern.
const PATTERN_STEPS: usize = PHASES * WORDS / GROUP_ROWS;
/// Most digits y needs (`u64`).
const MAX_DIGITS: usize = 8;

/// The lanes of one vector as `i32`, how the kernels hand their accumulators back.
type Lanes = [i32; WORDS];

/// The four digit vectors of one panel's 16 entries of r: in vector s, word `4L + t` holds byte s of
/// `r[16p + 4L + jj]` in its byte jj (the same word for every t).
type PanelDigits = [[u32; WORDS]; 4];

/// `vpshufb` indices that transpose each 4 × 4 block of bytes of a 128-bit lane: byte `4t + jj` takes
/// byte `4jj + t`.
const TRANSPOSE: [u8; 64] = {
    let mut indices = [0u8; 64];
    let mut i = 0;
    while i < 64 {
        let (t, jj) = ((i % 16) / 4, i % 4);
        indices[i] = (4 * jj + t) as u8;
        i += 1;
    }
    indices
};

/// Every byte's top bit.
const SIGN_BITS: [u8; 64] = [0x80; 64];

/// `vpermd` indices of the three phases: word m of phase c takes step `(16c + m) / 6` of the table's
/// window of eight.
const PHASE_STEPS: [[u32; WORDS]; PHASES] = {
    let mut indices = [[0u32; WORDS]; PHASES];
    let mut c = 0;
    while c < PHASES {
        let mut m = 0;
        while m < WORDS {
            indices[c][m] = ((WORDS * c + m) / GROUP_ROWS) as u32;
            m += 1;
        }
        c += 1;
    }
    indices
};

/// One instantiation of the kernels: the AVX-512 intrinsics (`Avx512`), or their portable model (tests).
pub(super) trait QuadsLoops: Copy + Send + Sync {
    /// The raw lane sums of `B·r` for k steps `q0 .. q0 + out.len()` (at most [`STEPS_PER_BLOCK`]), one
    /// vector per digit of r, over every panel (`digits` has one entry per panel).
    fn steps_times_r(self, b: &PackedB, q0: usize, digits: &[PanelDigits], out: &mut [[Lanes; 4]]);

    /// The raw lane sums of one group of A (`words`: its k steps × 6 words) against `tables` (1 ..= 4
    /// digit tables of y, each padded with a window of zero steps), one vector per phase per table; the
    /// last table is the signed top digit when `top`.
    fn group_times_y(
        self,
        words: &[u32],
        tables: &[Vec<u32>],
        top: bool,
        out: &mut [[Lanes; PHASES]],
    );
}

/// `A_rows · (B · r)` modulo 2⁶⁴, one sum per row of A, with `loops`. Runs on the current rayon pool.
pub(super) fn input_sums<L: QuadsLoops>(loops: L, a: &PackedA, b: &PackedB, r: &[i32]) -> Vec<u64> {
    let y = b_times_r(loops, b, r);
    let digits = YDigits::new(&y);
    let steps = b.steps();
    let mut sums = vec![0u64; a.rows()];
    sums.par_chunks_mut(GROUP_ROWS).enumerate().for_each(|(g, out)| {
        let group = digits.group_sums(loops, a.group(g, 0, steps));
        out.copy_from_slice(&group[..out.len()]);
    });
    sums
}

/// `B·r`, exact: one value per row of the packed B (`4 · steps`, zero past n).
fn b_times_r<L: QuadsLoops>(loops: L, b: &PackedB, r: &[i32]) -> Vec<i64> {
    let panels = b.n().div_ceil(PANEL_COLUMNS);
    let digits: Vec<PanelDigits> = (0..panels).map(|p| panel_digits(r, p)).collect();
    // What the signed top digit's `+ 128` adds to every row: 128 · Σ_j s₃(r_j).
    let bias = 128 * r.iter().map(|&v| i64::from(v >> 24)).sum::<i64>();
    let mut y = vec![0i64; 4 * b.steps()];
    y.par_chunks_mut(4 * STEPS_PER_TASK).enumerate().for_each(|(task, out)| {
        let mut lanes = [[[0i32; WORDS]; 4]; STEPS_PER_BLOCK];
        for (block, y_block) in out.chunks_mut(4 * STEPS_PER_BLOCK).enumerate() {
            let q0 = task * STEPS_PER_TASK + block * STEPS_PER_BLOCK;
            let lanes = &mut lanes[..y_block.len() / 4];
            loops.steps_times_r(b, q0, &digits, lanes);
            for (y4, step) in y_block.chunks_exact_mut(4).zip(lanes.iter()) {
                for (t, yk) in y4.iter_mut().enumerate() {
                    // Digit s of row 4q + t: words 4L + t, one per group of four columns.
                    let digit =
                        |s: usize| (0..4).map(|l| i64::from(step[s][4 * l + t])).sum::<i64>();
                    *yk = digit(0) + (digit(1) << 8) + (digit(2) << 16) + ((digit(3) - bias) << 24);
                }
            }
        }
    });
    y
}

/// The digit vectors of panel p's entries of r (zero past n).
fn panel_digits(r: &[i32], p: usize) -> PanelDigits {
    let mut digits = [[0u32; WORDS]; 4];
    for l in 0..4 {
        let first = p * PANEL_COLUMNS + 4 * l;
        let quad: [u32; 4] = std::array::from_fn(|jj| r.get(first + jj).map_or(0, |&v| v as u32));
        for (s, vector) in digits.iter_mut().enumerate() {
            let word = u32::from_le_bytes(quad.map(|v| (v >> (8 * s)) as u8));
            vector[4 * l..4 * l + 4].fill(word);
        }
    }
    digits
}

/// y cut into bytes for `A·y`: one table per digit, the last one signed.
#[derive(Debug)]
struct YDigits {
    /// Per digit s, one word per k step q (byte t: digit s of `y[4q + t]`), then [`WORDS`] zero words so
    /// that a window of 16 steps can start at any step.
    tables: Vec<Vec<u32>>,
    /// What the signed top digit's `+ 128` adds to every row: 128 · Σ_k top(y_k).
    top_bias: i64,
}

impl YDigits {
    /// The fewest bytes whose signed range holds every y: D − 1 unsigned low bytes and a signed top byte
    /// (`y >> 8(D−1)`, in −128 ..= 127).
    fn new(y: &[i64]) -> Self {
        // v for v ≥ 0, −v − 1 for v < 0: below 2^(8D−1) exactly when v is in the signed range of D bytes.
        let widest = y.iter().map(|&v| v ^ (v >> 63)).max().unwrap_or(0);
        let bits = 64 - widest.leading_zeros() as usize;
        let count = (bits + 1).div_ceil(8).clamp(1, MAX_DIGITS);
        let top_shift = 8 * (count - 1);
        let tables = (0..count)
            .map(|s| {
                let mut table: Vec<u32> = y
                    .chunks_exact(4)
                    .map(|y4| u32::from_le_bytes(std::array::from_fn(|t| (y4[t] >> (8 * s)) as u8)))
                    .collect();
                table.resize(table.len() + WORDS, 0);
                table
            })
            .collect();
        let top_bias = 128 * y.iter().map(|&v| v >> top_shift).sum::<i64>();
        Self { tables, top_bias }
    }

    /// `Σ_k A[i][k] · y_k` modulo 2⁶⁴ for the six rows of one group (`words`: its k steps × 6 words).
    fn group_sums<L: QuadsLoops>(&self, loops: L, words: &[u32]) -> [u64; GROUP_ROWS] {
        let count = self.tables.len();
        let last_pass = (count - 1) / DIGITS_PER_PASS;
        let mut per_digit = [[0i64; MAX_DIGITS]; GROUP_ROWS];
        let mut lanes = [[[0i32; WORDS]; PHASES]; DIGITS_PER_PASS];
        for (pass, tables) in self.tables.chunks(DIGITS_PER_PASS).enumerate() {
            let lanes = &mut lanes[..tables.len()];
            loops.group_times_y(words, tables, pass == last_pass, lanes);
            for (d, phases) in lanes.iter().enumerate() {
                for (c, vector) in phases.iter().enumerate() {
                    for (m, &v) in vector.iter().enumerate() {
                        per_digit[(WORDS * c + m) % GROUP_ROWS][pass * DIGITS_PER_PASS + d] +=
                            i64::from(v);
                    }
                }
            }
        }
        per_digit.map(|digits| {
            let mut sum = 0u64;
            for (s, &v) in digits.iter().enumerate().take(count) {
                let v = if s == count - 1 { v - self.top_bias } else { v };
                sum = sum.wrapping_add((v as u64) << (8 * s));
            }
            sum
        })
    }
}

/// The kernels, over the vector operations of the module that invokes this (`zero`, `load_bytes`,
/// `load_words`, `store_words`, `shuffle_bytes`, `xor`, `dpbusd`, `permute_words`), each function with the
/// attributes given (the target features, for the intrinsics).
macro_rules! quads_kernels {
    ($(#[$attr:meta])*) => {
        /// `B·r`'s raw lane sums for `QB` k steps from `q0` (see [`QuadsLoops::steps_times_r`]).
        $(#[$attr])*
        fn steps_times_r_block<const QB: usize>(
            b: &PackedB,
            q0: usize,
            digits: &[PanelDigits],
        ) -> [[Lanes; 4]; QB] {
            let (transpose, sign) = (load_bytes(&TRANSPOSE), load_bytes(&SIGN_BITS));
            let mut acc = [[zero(); 4]; QB];
            for (p, d) in digits.iter().enumerate() {
                let d = [load_words(&d[0]), load_words(&d[1]), load_words(&d[2]), load_words(&d[3])];
                // Exactly QB steps, known at compile time, so that the accumulators stay in registers.
                let steps: &[[u8; STEP_BYTES]; QB] = b
                    .panel(p, q0, q0 + QB)
                    .as_chunks::<STEP_BYTES>()
                    .0
                    .try_into()
                    .expect("a panel's slice of QB steps is QB vectors");
                for (acc, step) in acc.iter_mut().zip(steps) {
                    // B + 128 with row 4q + t of columns 4L .. 4L + 4 in word 4L + t; B itself.
                    let biased = shuffle_bytes(load_bytes(step), transpose);
                    let signed = xor(biased, sign);
                    acc[0] = dpbusd(acc[0], d[0], signed);
                    acc[1] = dpbusd(acc[1], d[1], signed);
                    acc[2] = dpbusd(acc[2], d[2], signed);
                    acc[3] = dpbusd(acc[3], biased, d[3]);
                }
            }
            let mut out = [[[0i32; WORDS]; 4]; QB];
            for (out, acc) in out.iter_mut().zip(&acc) {
                for (out, acc) in out.iter_mut().zip(acc) {
                    *out = store_words(*acc);
                }
            }
            out
        }

        /// One pass of `A·y` over `D` digit tables (see [`QuadsLoops::group_times_y`]); the last one is
        /// the signed top digit when `TOP`.
        $(#[$attr])*
        fn group_times_y_pass<const D: usize, const TOP: bool>(
            words: &[u32],
            tables: [&[u32]; D],
        ) -> [[Lanes; PHASES]; D] {
            let phase =
                [load_words(&PHASE_STEPS[0]), load_words(&PHASE_STEPS[1]), load_words(&PHASE_STEPS[2])];
            let sign = load_bytes(&SIGN_BITS);
            let mut acc = [[zero(); PHASES]; D];
            // Whole rounds of the pattern, then the rest of the group zero-padded to one (zero words add
            // nothing, and the tables are zero past the last step).
            let (rounds, rest) = words.as_chunks::<{ PHASES * WORDS }>();
            let mut tail = [0u32; PHASES * WORDS];
            tail[..rest.len()].copy_from_slice(rest);
            let tail = (!rest.is_empty()).then_some(&tail);
            for (round, block) in rounds.iter().chain(tail).enumerate() {
                let q0 = round * PATTERN_STEPS;
                let (vectors, _) = block.as_chunks::<WORDS>();
                let a = [load_words(&vectors[0]), load_words(&vectors[1]), load_words(&vectors[2])];
                let biased = [xor(a[0], sign), xor(a[1], sign), xor(a[2], sign)];
                for (s, (acc, table)) in acc.iter_mut().zip(tables).enumerate() {
                    let window = table[q0..].first_chunk::<WORDS>().expect("tables are padded by a window");
                    let window = load_words(window);
                    for c in 0..PHASES {
                        let spread = permute_words(phase[c], window);
                        acc[c] = if TOP && s == D - 1 {
                            dpbusd(acc[c], biased[c], spread)
                        } else {
                            dpbusd(acc[c], spread, a[c])
                        };
                    }
                }
            }
            let mut out = [[[0i32; WORDS]; PHASES]; D];
            for (out, acc) in out.iter_mut().zip(&acc) {
                for (out, acc) in out.iter_mut().zip(acc) {
                    *out = store_words(*acc);
                }
            }
            out
        }

        /// [`QuadsLoops::steps_times_r`], the block size chosen at run time.
        $(#[$attr])*
        fn steps_times_r(b: &PackedB, q0: usize, digits: &[PanelDigits], out: &mut [[Lanes; 4]]) {
            match out.len() {
                1 => out.copy_from_slice(&steps_times_r_block::<1>(b, q0, digits)),
                2 => out.copy_from_slice(&steps_times_r_block::<2>(b, q0, digits)),
                3 => out.copy_from_slice(&steps_times_r_block::<3>(b, q0, digits)),
                _ => out.copy_from_slice(&steps_times_r_block::<STEPS_PER_BLOCK>(b, q0, digits)),
            }
        }

        /// [`QuadsLoops::group_times_y`], the number of digits chosen at run time.
        $(#[$attr])*
        fn group_times_y(words: &[u32], tables: &[Vec<u32>], top: bool, out: &mut [[Lanes; PHASES]]) {
            match (tables, top) {
                ([t0], false) => out.copy_from_slice(&group_times_y_pass::<1, false>(words, [t0])),
                ([t0], true) => out.copy_from_slice(&group_times_y_pass::<1, true>(words, [t0])),
                ([t0, t1], false) => {
                    out.copy_from_slice(&group_times_y_pass::<2, false>(words, [t0, t1]))
                }
                ([t0, t1], true) => {
                    out.copy_from_slice(&group_times_y_pass::<2, true>(words, [t0, t1]))
                }
                ([t0, t1, t2], false) => {
                    out.copy_from_slice(&group_times_y_pass::<3, false>(words, [t0, t1, t2]))
                }
                ([t0, t1, t2], true) => {
                    out.copy_from_slice(&group_times_y_pass::<3, true>(words, [t0, t1, t2]))
                }
                ([t0, t1, t2, t3], false) => {
                    out.copy_from_slice(&group_times_y_pass::<4, false>(words, [t0, t1, t2, t3]))
                }
                ([t0, t1, t2, t3], true) => {
                    out.copy_from_slice(&group_times_y_pass::<4, true>(words, [t0, t1, t2, t3]))
                }
                _ => unreachable!("1 to {DIGITS_PER_PASS} digit tables per pass"),
            }
        }
    };
}

/// The kernels on AVX-512 intrinsics, and the token that proves the CPU has them.
#[cfg(target_arch = "x86_64")]
mod simd {
    use super::{
        DIGITS_PER_PASS, Lanes, PATTERN_STEPS, PHASE_STEPS, PHASES, PackedB, PanelDigits,
        QuadsLoops, SIGN_BITS, STEP_BYTES, STEPS_PER_BLOCK, TRANSPOSE, WORDS,
    };
    use std::arch::x86_64::{
        __m512i, _mm512_dpbusd_epi32, _mm512_loadu_si512, _mm512_permutexvar_epi32,
        _mm512_setzero_si512, _mm512_shuffle_epi8, _mm512_storeu_si512, _mm512_xor_si512,
    };

    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
    pub(super) fn zero() -> __m512i {
        _mm512_setzero_si512()
    }

    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
    pub(super) fn load_bytes(bytes: &[u8; 64]) -> __m512i {
        // SAFETY: 64 readable bytes; `_mm512_loadu_si512` needs no alignment.
        unsafe { _mm512_loadu_si512(bytes.as_ptr().cast()) }
    }

    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
    pub(super) fn load_words(words: &[u32; WORDS]) -> __m512i {
        // SAFETY: 16 readable words (64 bytes); `_mm512_loadu_si512` needs no alignment.
        unsafe { _mm512_loadu_si512(words.as_ptr().cast()) }
    }

    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
    pub(super) fn store_words(v: __m512i) -> Lanes {
        let mut lanes = [0i32; WORDS];
        // SAFETY: 16 writable `i32` (64 bytes); `_mm512_storeu_si512` needs no alignment.
        unsafe { _mm512_storeu_si512(lanes.as_mut_ptr().cast(), v) };
        lanes
    }

    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
    pub(super) fn shuffle_bytes(v: __m512i, indices: __m512i) -> __m512i {
        _mm512_shuffle_epi8(v, indices)
    }

    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
    pub(super) fn xor(a: __m512i, b: __m512i) -> __m512i {
        _mm512_xor_si512(a, b)
    }

    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
    pub(super) fn dpbusd(acc: __m512i, unsigned: __m512i, signed: __m512i) -> __m512i {
        _mm512_dpbusd_epi32(acc, unsigned, signed)
    }

    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
    pub(super) fn permute_words(indices: __m512i, table: __m512i) -> __m512i {
        _mm512_permutexvar_epi32(indices, table)
    }

    quads_kernels!(#[target_feature(enable = "avx512f,avx512bw,avx512vnni")]);

    /// Proof that this CPU has AVX-512 F, BW and VNNI: only [`Avx512::detect`] makes one.
    #[derive(Debug, Clone, Copy)]
    pub(in super::super) struct Avx512(());

    impl Avx512 {
        /// The token, when this CPU has the instructions (run-time detection, cached by the standard
        /// library).
        pub(in super::super) fn detect() -> Option<Self> {
            let has = std::arch::is_x86_feature_detected!("avx512f")
                && std::arch::is_x86_feature_detected!("avx512bw")
                && std::arch::is_x86_feature_detected!("avx512vnni");
            has.then_some(Self(()))
        }
    }

    impl QuadsLoops for Avx512 {
        fn steps_times_r(
            self,
            b: &PackedB,
            q0: usize,
            digits: &[PanelDigits],
            out: &mut [[Lanes; 4]],
        ) {
            // SAFETY: a token exists only where `detect` found every feature the kernel enables; the
            // kernel touches memory only through the slices it is given.
            unsafe { steps_times_r(b, q0, digits, out) }
        }

        fn group_times_y(
            self,
            words: &[u32],
            tables: &[Vec<u32>],
            top: bool,
            out: &mut [[Lanes; PHASES]],
        ) {
            // SAFETY: as in `steps_times_r`.
            unsafe { group_times_y(words, tables, top, out) }
        }
    }
}

#[cfg(target_arch = "x86_64")]
pub(super) use simd::Avx512;

/// A portable model of the eight instructions, written from Intel's pseudo-code, and the kernels on it.
#[cfg(test)]
mod model {
    use super::{
        DIGITS_PER_PASS, Lanes, PATTERN_STEPS, PHASE_STEPS, PHASES, PackedB, PanelDigits,
        QuadsLoops, SIGN_BITS, STEP_BYTES, STEPS_PER_BLOCK, TRANSPOSE, WORDS,
    };

    /// A 512-bit vector as its 64 bytes, little-endian.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub(super) struct V(pub(super) [u8; 64]);

    pub(super) fn zero() -> V {
        V([0; 64])
    }

    pub(super) fn load_bytes(bytes: &[u8; 64]) -> V {
        V(*bytes)
    }

    pub(super) fn load_words(words: &[u32; WORDS]) -> V {
        let mut v = [0u8; 64];
        for (bytes, w) in v.as_chunks_mut::<4>().0.iter_mut().zip(words) {
            *bytes = w.to_le_bytes();
        }
        V(v)
    }

    pub(super) fn store_words(v: V) -> Lanes {
        let (words, _) = v.0.as_chunks::<4>();
        std::array::from_fn(|i| i32::from_le_bytes(words[i]))
    }

    /// VPSHUFB: byte i takes byte `indices[i] & 15` of its own 128-bit lane, or 0 when `indices[i]` has its
    /// top bit set.
    pub(super) fn shuffle_bytes(v: V, indices: V) -> V {
        V(std::array::from_fn(|i| {
            let index = indices.0[i];
            if index & 0x80 != 0 { 0 } else { v.0[(i & !15) | usize::from(index & 15)] }
        }))
    }

    /// VPXORD.
    pub(super) fn xor(a: V, b: V) -> V {
        V(std::array::from_fn(|i| a.0[i] ^ b.0[i]))
    }

    /// VPDPBUSD: word i of `acc` plus the four products of unsigned bytes `4i .. 4i + 4` of `unsigned` by
    /// the signed bytes of `signed`, modulo 2³².
    pub(super) fn dpbusd(acc: V, unsigned: V, signed: V) -> V {
        let mut words = store_words(acc);
        for (i, word) in words.iter_mut().enumerate() {
            let products = (4 * i..4 * i + 4)
                .map(|b| i32::from(unsigned.0[b]) * i32::from(signed.0[b] as i8))
                .sum::<i32>();
            *word = word.wrapping_add(products);
        }
        load_words(&words.map(|w| w as u32))
    }

    /// VPERMD: word i takes word `indices[i] & 15` of `table`.
    pub(super) fn permute_words(indices: V, table: V) -> V {
        let (indices, table) = (store_words(indices), store_words(table));
        load_words(&std::array::from_fn(|i| table[(indices[i] & 15) as usize] as u32))
    }

    quads_kernels!();

    /// The kernels on the model.
    #[derive(Debug, Clone, Copy)]
    pub(super) struct Model;

    impl QuadsLoops for Model {
        fn steps_times_r(
            self,
            b: &PackedB,
            q0: usize,
            digits: &[PanelDigits],
            out: &mut [[Lanes; 4]],
        ) {
            steps_times_r(b, q0, digits, out);
        }

        fn group_times_y(
            self,
            words: &[u32],
            tables: &[Vec<u32>],
            top: bool,
            out: &mut [[Lanes; PHASES]],
        ) {
            group_times_y(words, tables, top, out);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{model::Model, *};
    use crate::freivalds::{CheckSeed, check_vector, row_sums_plain};

    fn pseudo(len: usize, seed: u64, extreme: bool) -> Vec<i8> {
        let mut x = seed | 1;
        (0..len)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                if extreme { i8::MIN } else { x as i8 }
            })
            .collect()
    }

    /// The plain definition's inputs side.
    fn plain_inputs(a: &[i8], b: &[i8], r: &[i32], rows: usize, n: usize) -> Vec<u64> {
        let c = vec![0i32; rows * n];
        row_sums_plain(a, b, &c, r, n).iter().map(|s| s.inputs).collect()
    }

    /// The kernels on the model give the plain definition's sums: shapes with partial panels, partial
    /// register blocks (steps mod 4), partial rounds of the pattern (steps mod 8), partial groups of rows,
    /// and every digit count the data reaches (1 for r = 0, 7 at the extremes).
    #[test]
    fn model_kernels_match_the_plain_definition() {
        for (n, rows, extreme) in [
            (1usize, 1usize, false),
            (4, 3, false),
            (5, 7, false),
            (16, 6, false),
            (17, 13, true),
            (33, 12, false),
            (64, 2, false),
            (100, 11, true),
            (129, 19, false),
            (300, 5, false),
        ] {
            let (a, b) =
                (pseudo(rows * n, n as u64, extreme), pseudo(n * n, 7 * n as u64, extreme));
            let packed_a = PackedA::from_rows(&a, rows, n, Packing::Quads);
            let packed_b = PackedB::from_rows(&b, n, Packing::Quads);
            let vectors = [
                check_vector(CheckSeed(n as u64), n),
                vec![0; n],
                vec![1; n],
                vec![-3; n],
                vec![i32::MIN; n],
                vec![i32::MAX; n],
                (0..n as i32).map(|j| (j << 20) ^ 0x00FF_00FF).collect(),
            ];
            for r in vectors {
                let want = plain_inputs(&a, &b, &r, rows, n);
                assert_eq!(input_sums(Model, &packed_a, &packed_b, &r), want, "n={n} rows={rows}");
            }
        }
    }

    /// With the product's side next to them, the model's sums catch a single flipped bit of C anywhere
    /// (row named, no other row failing), and pass the true product, for many seeds.
    #[test]
    fn a_flipped_element_fails_its_row_on_the_model() {
        use crate::freivalds::{RowSums, compare};
        let (rows, n) = (13usize, 150usize);
        let (a, b) = (pseudo(rows * n, 11, false), pseudo(n * n, 12, false));
        let c: Vec<i32> = (0..rows * n)
            .map(|e| {
                (0..n).map(|k| i32::from(a[e / n * n + k]) * i32::from(b[k * n + e % n])).sum()
            })
            .collect();
        let packed_a = PackedA::from_rows(&a, rows, n, Packing::Quads);
        let packed_b = PackedB::from_rows(&b, n, Packing::Quads);
        for seed in 0..40u64 {
            let r = check_vector(CheckSeed(seed), n);
            let inputs = input_sums(Model, &packed_a, &packed_b, &r);
            let verdict = |c: &[i32]| {
                let sums: Vec<RowSums> = c
                    .chunks(n)
                    .zip(&inputs)
                    .map(|(row, &inputs)| RowSums {
                        product: super::super::c_times_r_with(
                            row,
                            &r,
                            super::super::CheckLoops::Portable,
                        ),
                        inputs,
                    })
                    .collect();
                compare(&sums)
            };
            assert_eq!(verdict(&c), Ok(()), "seed {seed}");
            let at = (seed as usize * 7919) % c.len();
            let mut bad = c.clone();
            bad[at] ^= 1 << (seed % 32);
            let caught = verdict(&bad).expect_err("caught");
            assert_eq!((caught.first_rows, caught.failed_rows), (vec![(at / n) as u32], 1));
        }
    }

    /// Every digit count, up to all eight bytes of a `u64`, on y values no `B·r` reaches (so the table and
    /// correction code is held to the definition beyond what the check's data shows).
    #[test]
    fn digits_of_any_width_recombine_exactly() {
        let (rows, n) = (7usize, 70usize);
        let a = pseudo(rows * n, 3, false);
        let packed = PackedA::from_rows(&a, rows, n, Packing::Quads);
        let steps = n.div_ceil(4);
        for bits in [0u32, 1, 7, 8, 9, 15, 23, 31, 40, 47, 54, 55, 56, 62, 63] {
            let y: Vec<i64> = (0..4 * steps)
                .map(|k| {
                    if k >= n {
                        return 0;
                    }
                    let magnitude = if bits == 63 { i64::MAX } else { (1i64 << bits) - 1 };
                    let v = magnitude - (k as i64 * 0x9E37_79B9) % (magnitude / 2 + 1);
                    if k % 3 == 0 { -v - 1 } else { v }
                })
                .collect();
            let digits = YDigits::new(&y);
            for g in 0..rows.div_ceil(GROUP_ROWS) {
                let got = digits.group_sums(Model, packed.group(g, 0, steps));
                for (i, &sum) in got.iter().enumerate().take(rows - g * GROUP_ROWS) {
                    let row = &a[(g * GROUP_ROWS + i) * n..][..n];
                    let want = row.iter().zip(&y).fold(0u64, |s, (&x, &v)| {
                        s.wrapping_add((i64::from(x) as u64).wrapping_mul(v as u64))
                    });
                    assert_eq!(sum, want, "bits={bits} row {}", g * GROUP_ROWS + i);
                }
            }
        }
    }

    #[test]
    fn the_layout_constants_say_what_the_docs_say() {
        assert_eq!(PATTERN_STEPS, 8);
        assert_eq!(&TRANSPOSE[..16], &[0, 4, 8, 12, 1, 5, 9, 13, 2, 6, 10, 14, 3, 7, 11, 15]);
        assert_eq!(TRANSPOSE[16..32], TRANSPOSE[..16]);
        assert_eq!(PHASE_STEPS[0], [0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 2, 2, 2, 2]);
        assert_eq!(PHASE_STEPS[2], [5, 5, 5, 5, 6, 6, 6, 6, 6, 6, 7, 7, 7, 7, 7, 7]);
    }

    /// On an AVX-512 host: each instruction agrees with its model on random and extreme operands, and the
    /// kernels agree with the model's (on other hosts this says so and checks nothing).
    #[test]
    fn the_instructions_match_the_model() {
        #[cfg(target_arch = "x86_64")]
        if Avx512::detect().is_some() {
            use super::{model, simd as ops};
            let bytes = |seed: u64| -> [u8; 64] {
                let v = pseudo(64, seed, false);
                std::array::from_fn(|i| v[i] as u8)
            };
            for seed in 1..200u64 {
                let (x, y, z) = (bytes(seed), bytes(seed + 1000), bytes(seed + 2000));
                let extreme = [[0x80u8; 64], [0x7F; 64], [0xFF; 64], [0; 64]][seed as usize % 4];
                for (x, y) in [(x, y), (x, extreme), (extreme, y), (extreme, extreme)] {
                    let (mx, my, mz) = (model::V(x), model::V(y), model::V(z));
                    // SAFETY: AVX-512 F, BW and VNNI were detected above.
                    let (sx, sy, sz) =
                        unsafe { (ops::load_bytes(&x), ops::load_bytes(&y), ops::load_bytes(&z)) };
                    let same = |simd: std::arch::x86_64::__m512i, modelled: model::V| {
                        // SAFETY: as above.
                        let stored = unsafe { ops::store_words(simd) };
                        stored == model::store_words(modelled)
                    };
                    // SAFETY (each call): as above.
                    assert!(same(unsafe { ops::dpbusd(sz, sx, sy) }, model::dpbusd(mz, mx, my)));
                    assert!(same(unsafe { ops::xor(sx, sy) }, model::xor(mx, my)));
                    assert!(same(
                        unsafe { ops::shuffle_bytes(sx, sy) },
                        model::shuffle_bytes(mx, my)
                    ));
                    assert!(same(
                        unsafe { ops::permute_words(sy, sx) },
                        model::permute_words(my, mx)
                    ));
                }
            }
            let n = 301;
            let (a, b) = (pseudo(29 * n, 5, false), pseudo(n * n, 6, false));
            let packed_a = PackedA::from_rows(&a, 29, n, Packing::Quads);
            let packed_b = PackedB::from_rows(&b, n, Packing::Quads);
            let token = Avx512::detect().expect("detected above");
            for seed in 0..5 {
                let r = check_vector(CheckSeed(seed), n);
                assert_eq!(
                    input_sums(token, &packed_a, &packed_b, &r),
                    input_sums(Model, &packed_a, &packed_b, &r)
                );
            }
            return;
        }
        eprintln!(
            "no AVX-512 F/BW/VNNI on this CPU: the AVX-512 loops were only checked on their model"
        );
    }
}
