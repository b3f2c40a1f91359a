//! The inputs' side of the check, `A_rows · (B · r)`, on the AVX2 kernel's (and the scalar kernel's)
//! [`Packing::Pairs`]. With AVX2 both matrix-vector products run on `vpmaddwd` (16 `i16 × i16` products a
//! instruction, summed in pairs into `i32` lanes), exactly:
//!
//! - `B·r` (exact in `i64`, below 2⁵⁴ for n ≤ 65536): r is cut into two signed 16-bit digits,
//!   `r = lo + 2¹⁶·hi` with `lo = r as i16`. A pair of rows of a 16-column panel is 16 words
//!   `(B[2q][j], B[2q+1][j])`: arithmetic shifts sign-extend the odd row's bytes and the even row's to
//!   `i16`, and four `vpmaddwd` multiply them by the panel's 16 `lo` and 16 `hi` digits (64 products of a
//!   byte of B and a digit). A task of 128 pairs of rows walks four panels at a time, two pairs of rows
//!   (their eight accumulators) in registers, so that B streams from four places at once; the `i32`
//!   lanes are widened to `i64` every 128 panels. The 2¹⁵ values of r in `[2³¹ − 2¹⁵, 2³¹)` need
//!   `hi = 2¹⁵`, one more than an `i16` holds: their `hi` wraps to −2¹⁵, which multiplies the column by
//!   `r − 2³²`, and the column of B is added back times 2³² afterwards (one column in 2¹⁷ on average);
//! - `A·(B·r)` multiplies the GEMM's `(A[i][2q], A[i][2q+1])` `i16` pairs by balanced 16-bit digits of
//!   `B·r` with `vpmaddwd`, only as many digits as the largest `|B·r|` needs modulo 2⁶⁴ (usually 3 of 4).
//!   A group's six rows fill all eight lanes: four pairs of columns (24 words) are three vectors, and per
//!   digit, four broadcasts and three blends lay the four pairs' digits over the words that match them;
//! - both in parallel (over pairs of rows of B, then over blocks of the GEMM's row groups) on the current
//!   rayon pool; without AVX2, portable loops compute the same sums in wrapping `i64`.

use super::super::generate::{GROUP_ROWS, PANEL_COLUMNS, PackedA, PackedB, Packing};
use rayon::prelude::*;

/// Bytes of one pair of rows of a 16-column panel of B in [`Packing::Pairs`].
const PAIR_BYTES: usize = Packing::Pairs.step_bytes();

/// A panel of B in [`Packing::Pairs`] as the signed values it stores.
fn signed(bytes: &[u8]) -> &[i8] {
    // SAFETY: `i8` and `u8` have the same size and alignment, and every byte is a valid `i8`.
    unsafe { std::slice::from_raw_parts(bytes.as_ptr().cast::<i8>(), bytes.len()) }
}

/// Pairs of rows of B per parallel task of `B·r` (a 4 KiB run of each panel; the AVX2 loops keep their
/// `i32` accumulators, 16 KiB, in L1).
const PAIRS_PER_TASK: usize = 128;
/// Panels of B the AVX2 `B·r` streams at a time, for every pair of rows of its task: few enough streams for
/// the hardware prefetchers (16 ran 1.5× slower at n = 2048 on a Zen 3).
const SUB_PANELS: usize = 4;
/// Row groups of A per parallel task of `A·y`.
const GROUPS_PER_TASK: usize = 8;
/// Panels (AVX2 `B·r`) or blocks of four pairs of columns (AVX2 `A·y`) summed in `i32` lanes before they
/// are widened: a lane adds at most one `vpmaddwd` result per panel or block, below 2²³ in magnitude
/// (two products of an `i8` and an `i16`: `2 · 2⁷ · 2¹⁵`), so 128 of them stay below 2³⁰.
const WIDEN_EVERY: usize = 128;
/// Pairs of columns of A per block of the AVX2 `A·y`: 4 × 6 words are three vectors of eight.
const BLOCK_PAIRS: usize = 4;
/// Words of A per block of the AVX2 `A·y`.
const BLOCK_WORDS: usize = BLOCK_PAIRS * GROUP_ROWS;
/// 16-bit digits of a `u64`.
const MAX_DIGITS: usize = 4;

/// r cut for the AVX2 `B·r`, padded with zeros to whole panels (so the columns past n, which hold Philox
/// values in the last panel, add nothing): `r_j = lo_j + 2¹⁶·hi_j` as integers, except in the columns
/// `wrapped` (r in `[2³¹ − 2¹⁵, 2³¹)`), where `hi_j = −2¹⁵` stands for 2¹⁵, so that the digits give
/// `r_j − 2³²`.
#[derive(Debug)]
struct RDigits {
    lo: Vec<i16>,
    hi: Vec<i16>,
    wrapped: Vec<usize>,
}

impl RDigits {
    fn new(r: &[i32], panels: usize) -> Self {
        let mut digits = Self {
            lo: vec![0; panels * PANEL_COLUMNS],
            hi: vec![0; panels * PANEL_COLUMNS],
            wrapped: Vec::new(),
        };
        for (j, &v) in r.iter().enumerate() {
            // lo in [−2¹⁵, 2¹⁵), hi = (r − lo) / 2¹⁶ in [−2¹⁵, 2¹⁵] (exact: r − lo ≡ 0 mod 2¹⁶).
            let lo = v as i16;
            let hi = (i64::from(v) - i64::from(lo)) >> 16;
            digits.lo[j] = lo;
            digits.hi[j] = hi as i16;
            if hi == 1 << 15 {
                digits.wrapped.push(j);
            }
        }
        digits
    }
}

/// `B·r` as exact `i64` values (`2·kpairs` of them: a zero past n when n is odd).
#[cfg_attr(not(target_arch = "x86_64"), allow(unused_variables))]
fn b_times_r(b: &PackedB, r: &[i32], avx2: bool) -> Vec<i64> {
    let n = b.n();
    let kpairs = b.steps();
    let panels = n.div_ceil(PANEL_COLUMNS);
    let panel_data: Vec<&[i8]> = (0..panels).map(|p| signed(b.panel(p, 0, kpairs))).collect();
    let mut y = vec![0i64; 2 * kpairs];
    #[cfg(target_arch = "x86_64")]
    if avx2 && std::arch::is_x86_feature_detected!("avx2") {
        let digits = RDigits::new(r, panels);
        y.par_chunks_mut(2 * PAIRS_PER_TASK).enumerate().for_each(|(task, out)| {
            let q0 = task * PAIRS_PER_TASK;
            // SAFETY: AVX2 was just detected on this CPU; the function reads memory only through slices,
            // with the bounds it checks.
            unsafe { avx2::pairs_times_r(&panel_data, q0, &digits.lo, &digits.hi, out) };
            // The wrapped columns gave `B[k][j] · (r_j − 2³²)`: add `2³² · B[k][j]` back.
            for &j in &digits.wrapped {
                let (panel, at) = (panel_data[j / PANEL_COLUMNS], 2 * (j % PANEL_COLUMNS));
                let pairs = &panel.as_chunks::<PAIR_BYTES>().0[q0..];
                for (rows, pair) in out.chunks_mut(2).zip(pairs) {
                    for (yk, &v) in rows.iter_mut().zip(&pair[at..at + 2]) {
                        *yk += i64::from(v) << 32;
                    }
                }
            }
        });
        return y;
    }
    let mut padded = r.to_vec();
    padded.resize(panels * PANEL_COLUMNS, 0);
    y.par_chunks_mut(2 * PAIRS_PER_TASK).enumerate().for_each(|(task, out)| {
        pairs_times_r_scalar(&panel_data, task * PAIRS_PER_TASK, &padded, out);
    });
    y
}

/// Rows `2·q0 ..` of `B·r` into `out` (two per pair of rows), portable.
fn pairs_times_r_scalar(panels: &[&[i8]], q0: usize, r: &[i32], out: &mut [i64]) {
    for (local, rows) in out.chunks_mut(2).enumerate() {
        let (mut even, mut odd) = (0i64, 0i64);
        for (panel, r16) in panels.iter().zip(r.as_chunks::<PANEL_COLUMNS>().0) {
            let pair = &panel.as_chunks::<PAIR_BYTES>().0[q0 + local];
            for j in 0..PANEL_COLUMNS {
                // |B·r| < 2⁷ · 2³¹ · 2¹⁶ = 2⁵⁴ for n ≤ 65536: exact, no wrapping needed.
                even += i64::from(pair[2 * j]) * i64::from(r16[j]);
                odd += i64::from(pair[2 * j + 1]) * i64::from(r16[j]);
            }
        }
        rows[0] = even;
        if let Some(o) = rows.get_mut(1) {
            *o = odd;
        }
    }
}

/// y in balanced 16-bit digits, `y ≡ Σ_{t<D} d_t · 2^(16t) (mod 2⁶⁴)`, paired for `madd`: entry `[t][q]`
/// holds `(d_t(y[2q]), d_t(y[2q+1]))` as two `i16`, low half first. The four digits of every y would make
/// up all 64 bits; D keeps only up to the highest digit that is not zero for some y (at least one), which
/// changes no sum modulo 2⁶⁴. Each table is padded with zeros to whole blocks of [`BLOCK_PAIRS`].
fn digit_pairs(y: &[i64]) -> Vec<Vec<u32>> {
    let digits = |mut v: i64| {
        let mut d = [0u16; MAX_DIGITS];
        for slot in &mut d {
            let low = v as i16;
            *slot = low as u16;
            v = v.wrapping_sub(i64::from(low)) >> 16;
        }
        d
    };
    let kpairs = y.len().div_ceil(2);
    let mut out: Vec<Vec<u32>> =
        (0..MAX_DIGITS).map(|_| Vec::with_capacity(kpairs.next_multiple_of(BLOCK_PAIRS))).collect();
    for pair in y.chunks(2) {
        let (e, o) = (digits(pair[0]), digits(pair.get(1).copied().unwrap_or(0)));
        for (t, table) in out.iter_mut().enumerate() {
            table.push(u32::from(e[t]) | (u32::from(o[t]) << 16));
        }
    }
    while out.len() > 1 && out.last().is_some_and(|table| table.iter().all(|&d| d == 0)) {
        out.pop();
    }
    for table in &mut out {
        table.resize(kpairs.next_multiple_of(BLOCK_PAIRS), 0);
    }
    out
}

/// `A_rows · (B · r)` modulo 2⁶⁴, one sum per row, with the AVX2 loops when `avx2` and this CPU has AVX2
/// (the portable ones otherwise). Runs on the current rayon pool.
pub(super) fn input_sums(a: &PackedA, b: &PackedB, r: &[i32], avx2: bool) -> Vec<u64> {
    let rows = a.rows();
    let y = b_times_r(b, r, avx2);
    let digits = digit_pairs(&y);
    let kpairs = b.steps();
    let mut sums = vec![0u64; rows];
    sums.par_chunks_mut(GROUP_ROWS * GROUPS_PER_TASK).enumerate().for_each(|(task, out)| {
        for (local, out) in out.chunks_mut(GROUP_ROWS).enumerate() {
            let words = a.group(task * GROUPS_PER_TASK + local, 0, kpairs);
            let inputs = group_times_y(words, &y, &digits, avx2);
            out.copy_from_slice(&inputs[..out.len()]);
        }
    });
    sums
}

/// `Σ_k A[i][k] · y_k` modulo 2⁶⁴ for the group's rows, with the AVX2 loops (on y's digit pairs) when asked
/// and available.
#[cfg_attr(not(target_arch = "x86_64"), allow(unused_variables))]
fn group_times_y(words: &[u32], y: &[i64], digits: &[Vec<u32>], avx2: bool) -> [u64; GROUP_ROWS] {
    #[cfg(target_arch = "x86_64")]
    if avx2 && std::arch::is_x86_feature_detected!("avx2") {
        // SAFETY: AVX2 was just detected on this CPU; the function reads memory only through slices, with
        // the bounds it checks.
        return unsafe { avx2::group_times_y(words, digits) };
    }
    group_times_y_scalar(words, y)
}

/// `Σ_k A[i][k] · y_k` modulo 2⁶⁴ for the group's rows, portable (wrapping `i64`).
fn group_times_y_scalar(words: &[u32], y: &[i64]) -> [u64; GROUP_ROWS] {
    let mut acc = [0i64; GROUP_ROWS];
    for (six, y2) in words.chunks_exact(GROUP_ROWS).zip(y.chunks_exact(2)) {
        for (sum, &w) in acc.iter_mut().zip(six) {
            let (a0, a1) = (i64::from(w as u16 as i16), i64::from((w >> 16) as u16 as i16));
            *sum = sum.wrapping_add(a0.wrapping_mul(y2[0])).wrapping_add(a1.wrapping_mul(y2[1]));
        }
    }
    acc.map(|v| v as u64)
}

/// The AVX2 loops, both on `vpmaddwd`: `B·r` on bytes of B sign-extended to `i16` against r's two 16-bit
/// digits, and `A·y` on the GEMM's own `(A[i][2q], A[i][2q+1])` pairs against 16-bit digits of y.
#[cfg(target_arch = "x86_64")]
mod avx2 {
    use super::{
        BLOCK_PAIRS, BLOCK_WORDS, GROUP_ROWS, MAX_DIGITS, PAIR_BYTES, PAIRS_PER_TASK,
        PANEL_COLUMNS, SUB_PANELS, WIDEN_EVERY,
    };
    use std::arch::x86_64::*;

    /// Adds the 8 `i32` lanes of `a` as `i64`.
    #[target_feature(enable = "avx2")]
    fn lanes_sum(a: __m256i) -> i64 {
        let mut lanes = [0i32; 8];
        // SAFETY: `lanes` holds 8 i32: one unaligned 32-byte store.
        unsafe { _mm256_storeu_si256(lanes.as_mut_ptr().cast(), a) };
        lanes.iter().map(|&v| i64::from(v)).sum()
    }

    /// Rows `2·q0 ..` of `B·r` into `out` (two per pair of rows, at most [`PAIRS_PER_TASK`] pairs), from
    /// r's digits `lo` and `hi` (whole panels, see [`super::RDigits`]; the wrapped columns are the
    /// caller's).
    #[target_feature(enable = "avx2")]
    pub(super) fn pairs_times_r(
        panels: &[&[i8]],
        q0: usize,
        lo: &[i16],
        hi: &[i16],
        out: &mut [i64],
    ) {
        let pairs = out.len().div_ceil(2).min(PAIRS_PER_TASK);
        // Per pair: even·lo, even·hi, odd·lo, odd·hi; lane m sums columns 2m and 2m + 1 of each panel.
        let mut acc = [[_mm256_setzero_si256(); 4]; PAIRS_PER_TASK];
        let mut wide = [[0i64; 2]; PAIRS_PER_TASK];
        let (lo, hi) = (lo.as_chunks::<PANEL_COLUMNS>().0, hi.as_chunks::<PANEL_COLUMNS>().0);
        for (c, chunk) in panels.chunks(WIDEN_EVERY).enumerate() {
            for (s, sub) in chunk.chunks(SUB_PANELS).enumerate() {
                let p0 = c * WIDEN_EVERY + s * SUB_PANELS;
                let (lo, hi) = (&lo[p0..p0 + sub.len()], &hi[p0..p0 + sub.len()]);
                let (twos, one) = acc[..pairs].as_chunks_mut::<2>();
                for (i, two) in twos.iter_mut().enumerate() {
                    pairs_block(sub, q0 + 2 * i, lo, hi, two);
                }
                if let [last] = one {
                    pairs_block(sub, q0 + pairs - 1, lo, hi, std::array::from_mut(last));
                }
            }
            // Exact in i64: over all of n ≤ 65536 columns, |Σ B·lo| < 2³⁸ and |Σ B·hi| · 2¹⁶ ≤ 2⁵⁴.
            for (w, a) in wide.iter_mut().zip(acc.iter_mut()).take(pairs) {
                w[0] += lanes_sum(a[0]) + (lanes_sum(a[1]) << 16);
                w[1] += lanes_sum(a[2]) + (lanes_sum(a[3]) << 16);
                *a = [_mm256_setzero_si256(); 4];
            }
        }
        for (rows, w) in out.chunks_mut(2).zip(&wide) {
            rows[0] = w[0];
            if let Some(o) = rows.get_mut(1) {
                *o = w[1];
            }
        }
    }

    /// P pairs of rows from `q` on, over the panels of `sub`, added to their accumulators `acc` (kept in
    /// registers meanwhile).
    #[target_feature(enable = "avx2")]
    #[inline]
    fn pairs_block<const P: usize>(
        sub: &[&[i8]],
        q: usize,
        lo: &[[i16; PANEL_COLUMNS]],
        hi: &[[i16; PANEL_COLUMNS]],
        acc: &mut [[__m256i; 4]; P],
    ) {
        let mut regs = *acc;
        for (panel, (lo16, hi16)) in sub.iter().zip(lo.iter().zip(hi)) {
            // SAFETY: `lo16` and `hi16` are 16 i16 each: one unaligned 32-byte load each.
            let (r_lo, r_hi) = unsafe {
                (_mm256_loadu_si256(lo16.as_ptr().cast()), _mm256_loadu_si256(hi16.as_ptr().cast()))
            };
            let rows = &panel.as_chunks::<PAIR_BYTES>().0[q..q + P];
            for (pair, a) in rows.iter().zip(regs.iter_mut()) {
                // SAFETY: `pair` is 32 bytes: one unaligned load. Word j is `(B[2q][j], B[2q+1][j])`.
                let words = unsafe { _mm256_loadu_si256(pair.as_ptr().cast()) };
                // Arithmetic shifts sign-extend the high byte (odd row) and, moved up, the low one.
                let odd = _mm256_srai_epi16::<8>(words);
                let even = _mm256_srai_epi16::<8>(_mm256_slli_epi16::<8>(words));
                // Each lane adds at most 2 · 2⁷ · 2¹⁵ = 2²³ in magnitude (see WIDEN_EVERY).
                a[0] = _mm256_add_epi32(a[0], _mm256_madd_epi16(even, r_lo));
                a[1] = _mm256_add_epi32(a[1], _mm256_madd_epi16(even, r_hi));
                a[2] = _mm256_add_epi32(a[2], _mm256_madd_epi16(odd, r_lo));
                a[3] = _mm256_add_epi32(a[3], _mm256_madd_epi16(odd, r_hi));
            }
        }
        *acc = regs;
    }

    /// `Σ_k A[i][k] · y_k` modulo 2⁶⁴ for the group's rows: `words` is the group's packed A (`kpairs ×
    /// GROUP_ROWS` pairs), `digits` y's 1 ..= 4 digit tables ([`super::digit_pairs`]).
    #[target_feature(enable = "avx2")]
    pub(super) fn group_times_y(words: &[u32], digits: &[Vec<u32>]) -> [u64; GROUP_ROWS] {
        // At most three digits a pass (nine accumulators): four go in two.
        let mut wide = [[0i64; GROUP_ROWS]; MAX_DIGITS];
        match digits {
            [d0] => wide[0] = digits_pass(words, [d0.as_slice()])[0],
            [d0, d1] => [wide[0], wide[1]] = digits_pass(words, [d0.as_slice(), d1]),
            [d0, d1, d2] => {
                [wide[0], wide[1], wide[2]] = digits_pass(words, [d0.as_slice(), d1, d2])
            }
            [d0, d1, d2, d3, ..] => {
                [wide[0], wide[1]] = digits_pass(words, [d0.as_slice(), d1]);
                [wide[2], wide[3]] = digits_pass(words, [d2.as_slice(), d3]);
            }
            [] => {}
        }
        let mut out = [0u64; GROUP_ROWS];
        for (i, o) in out.iter_mut().enumerate() {
            *o = (0..MAX_DIGITS).fold(0u64, |s, t| s.wrapping_add((wide[t][i] as u64) << (16 * t)));
        }
        out
    }

    /// `Σ_k A[i][k] · d_t(y_k)` for the group's rows and the T digit tables given, exact in `i64`.
    #[target_feature(enable = "avx2")]
    #[inline]
    fn digits_pass<const T: usize>(words: &[u32], tables: [&[u32]; T]) -> [[i64; GROUP_ROWS]; T] {
        let windows = tables.map(|table| table.as_chunks::<BLOCK_PAIRS>().0);
        let mut acc = [[_mm256_setzero_si256(); 3]; T];
        let mut wide = [[0i64; GROUP_ROWS]; T];
        let widen = |acc: &mut [[__m256i; 3]; T], wide: &mut [[i64; GROUP_ROWS]; T]| {
            for (a, w) in acc.iter_mut().zip(wide.iter_mut()) {
                for (c, v) in a.iter_mut().enumerate() {
                    let mut lanes = [0i32; 8];
                    // SAFETY: `lanes` holds 8 i32: one unaligned 32-byte store.
                    unsafe { _mm256_storeu_si256(lanes.as_mut_ptr().cast(), *v) };
                    for (m, lane) in lanes.into_iter().enumerate() {
                        w[(8 * c + m) % GROUP_ROWS] += i64::from(lane);
                    }
                    *v = _mm256_setzero_si256();
                }
            }
        };
        // Whole blocks of four pairs of columns, then the last pairs with zeros after them (the tables
        // are padded with zero digits to whole blocks).
        let (blocks, tail) = words.as_chunks::<BLOCK_WORDS>();
        let mut last = [0u32; BLOCK_WORDS];
        last[..tail.len()].copy_from_slice(tail);
        let last = (!tail.is_empty()).then_some(&last);
        for (b, block) in blocks.iter().chain(last).enumerate() {
            // SAFETY: `block` is 24 u32: three unaligned 32-byte loads at words 0, 8 and 16.
            let a = unsafe {
                let p = block.as_ptr();
                [
                    _mm256_loadu_si256(p.cast()),
                    _mm256_loadu_si256(p.add(8).cast()),
                    _mm256_loadu_si256(p.add(16).cast()),
                ]
            };
            for (acc, window) in acc.iter_mut().zip(&windows) {
                // Each pair's digits in every lane, then vector c takes lanes from pairs c and c + 1:
                // word m of vector c holds pair `(8c + m) / 6` of the block (row `(8c + m) mod 6`).
                let d = window[b].map(|d| _mm256_set1_epi32(d as i32));
                let d = [
                    _mm256_blend_epi32::<0b1100_0000>(d[0], d[1]),
                    _mm256_blend_epi32::<0b1111_0000>(d[1], d[2]),
                    _mm256_blend_epi32::<0b1111_1100>(d[2], d[3]),
                ];
                for ((acc, a), d) in acc.iter_mut().zip(&a).zip(&d) {
                    // |A[i][2q]·d + A[i][2q+1]·d'| ≤ 2 · 2⁷ · 2¹⁵ = 2²³ (see WIDEN_EVERY).
                    *acc = _mm256_add_epi32(*acc, _mm256_madd_epi16(*a, *d));
                }
            }
            if (b + 1) % WIDEN_EVERY == 0 {
                widen(&mut acc, &mut wide);
            }
        }
        widen(&mut acc, &mut wide);
        wide
    }
}
