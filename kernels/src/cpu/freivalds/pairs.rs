//! The inputs' side of the check, `A_rows · (B · r)`, on the AVX2 kernel's (and the scalar kernel's)
//! [`Packing::Pairs`]:
//!
//! - `B·r` (exact in `i64`, below 2⁵⁴) streams each 16-column panel of B over 64 rows' accumulators held
//!   in L1, in `i32` lanes with r split into 16-bit halves (`vpmulld`), widened every 128 panels;
//! - `A·(B·r)` multiplies the GEMM's `(A[i][2q], A[i][2q+1])` `i16` pairs by 16-bit digits of `B·r` with
//!   `vpmaddwd`, six rows at once, and recombines the digits modulo 2⁶⁴;
//! - both in parallel (over pairs of rows of B, then over the GEMM's row groups) on the current rayon pool;
//!   without AVX2, portable loops compute the same sums in wrapping `i64`.

use super::super::generate::{GROUP_ROWS, PANEL_COLUMNS, PackedA, PackedB, Packing};
use rayon::prelude::*;

/// Bytes of one pair of rows of a 16-column panel of B in [`Packing::Pairs`].
const PAIR_BYTES: usize = Packing::Pairs.step_bytes();

/// A panel of B in [`Packing::Pairs`] as the signed values it stores.
fn signed(bytes: &[u8]) -> &[i8] {
    // SAFETY: `i8` and `u8` have the same size and alignment, and every byte is a valid `i8`.
    unsafe { std::slice::from_raw_parts(bytes.as_ptr().cast::<i8>(), bytes.len()) }
}

/// Pairs of rows of B per parallel task of `B·r`: their accumulators (16 KiB) stay in L1 while the task
/// streams each panel's 2 KiB slice of them.
const PAIRS_PER_TASK: usize = 64;
/// Panels (AVX2 `B·r`) or pairs of columns (AVX2 `A·y`) summed in `i32` lanes before they are widened:
/// each term is below 2²³ in magnitude, so 128 of them stay below 2³⁰.
const WIDEN_EVERY: usize = 128;

/// `B·r` as exact `i64` values (`2·kpairs` of them: a zero past n when n is odd). `r` is padded with zeros
/// to whole panels here, so the columns past n, which hold Philox values in the last panel, add nothing.
#[cfg_attr(not(target_arch = "x86_64"), allow(unused_variables))]
fn b_times_r(b: &PackedB, r: &[i32], avx2: bool) -> Vec<i64> {
    let n = b.n();
    let kpairs = b.steps();
    let panels = n.div_ceil(PANEL_COLUMNS);
    let mut padded = r.to_vec();
    padded.resize(panels * PANEL_COLUMNS, 0);
    let panel_data: Vec<&[i8]> = (0..panels).map(|p| signed(b.panel(p, 0, kpairs))).collect();
    let mut y = vec![0i64; 2 * kpairs];
    y.par_chunks_mut(2 * PAIRS_PER_TASK).enumerate().for_each(|(task, out)| {
        let q0 = task * PAIRS_PER_TASK;
        #[cfg(target_arch = "x86_64")]
        if avx2 && std::arch::is_x86_feature_detected!("avx2") {
            // SAFETY: AVX2 was just detected on this CPU; the function reads memory only through slices,
            // with the bounds it checks.
            unsafe { avx2::pairs_times_r(&panel_data, q0, &padded, out) };
            return;
        }
        pairs_times_r_scalar(&panel_data, q0, &padded, out);
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

/// `y` in four balanced 16-bit digits, `y ≡ Σ_t d_t · 2^(16t) (mod 2⁶⁴)`, paired for `madd`: entry
/// `[t][q]` holds `(d_t(y[2q]), d_t(y[2q+1]))` as two `i16`, low half first.
fn digit_pairs(y: &[i64]) -> [Vec<u32>; 4] {
    let digits = |mut v: i64| {
        let mut d = [0u16; 4];
        for slot in &mut d {
            let low = v as i16;
            *slot = low as u16;
            v = v.wrapping_sub(i64::from(low)) >> 16;
        }
        d
    };
    let mut out: [Vec<u32>; 4] = Default::default();
    for pair in y.chunks(2) {
        let (e, o) = (digits(pair[0]), digits(pair.get(1).copied().unwrap_or(0)));
        for t in 0..4 {
            out[t].push(u32::from(e[t]) | (u32::from(o[t]) << 16));
        }
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
    sums.par_chunks_mut(GROUP_ROWS).enumerate().for_each(|(g, out)| {
        let words = a.group(g, 0, kpairs);
        let inputs = group_times_y(words, &y, &digits, avx2);
        out.copy_from_slice(&inputs[..out.len()]);
    });
    sums
}

/// `Σ_k A[i][k] · y_k` modulo 2⁶⁴ for the group's rows, with the AVX2 loops (on y's digit pairs) when asked
/// and available.
#[cfg_attr(not(target_arch = "x86_64"), allow(unused_variables))]
fn group_times_y(
    words: &[u32],
    y: &[i64],
    digits: &[Vec<u32>; 4],
    avx2: bool,
) -> [u64; GROUP_ROWS] {
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

/// The AVX2 loops: `B·r` in `i32` lanes (r split into 16-bit halves, `vpmulld`) and `A·y` with
/// `vpmaddwd` on the GEMM's own `(A[i][2q], A[i][2q+1])` pairs against 16-bit digits of y.
#[cfg(target_arch = "x86_64")]
mod avx2 {
    use super::{GROUP_ROWS, PAIR_BYTES, PAIRS_PER_TASK, PANEL_COLUMNS, WIDEN_EVERY};
    use std::arch::x86_64::*;

    /// Adds the 16 `i32` lanes of `(a, b)` as `i64`.
    #[target_feature(enable = "avx2")]
    fn lanes_sum(a: __m256i, b: __m256i) -> i64 {
        let mut lanes = [0i32; 16];
        // SAFETY: `lanes` holds 16 i32, two unaligned 32-byte stores fit.
        unsafe {
            _mm256_storeu_si256(lanes.as_mut_ptr().cast(), a);
            _mm256_storeu_si256(lanes.as_mut_ptr().add(8).cast(), b);
        }
        lanes.iter().map(|&v| i64::from(v)).sum()
    }

    /// Rows `2·q0 ..` of `B·r` into `out` (two per pair of rows, at most [`PAIRS_PER_TASK`] pairs).
    #[target_feature(enable = "avx2")]
    pub(super) fn pairs_times_r(panels: &[&[i8]], q0: usize, r: &[i32], out: &mut [i64]) {
        let pairs = out.len().div_ceil(2).min(PAIRS_PER_TASK);
        // Per pair: even·lo, even·hi, odd·lo, odd·hi, each 16 lanes (two registers).
        let mut acc = [[_mm256_setzero_si256(); 8]; PAIRS_PER_TASK];
        let mut wide = [[0i64; 2]; PAIRS_PER_TASK];
        // Within each 128-bit half: the 8 even bytes (row 2q), then the 8 odd ones (row 2q + 1).
        let split = _mm256_setr_epi8(
            0, 2, 4, 6, 8, 10, 12, 14, 1, 3, 5, 7, 9, 11, 13, 15, 0, 2, 4, 6, 8, 10, 12, 14, 1, 3,
            5, 7, 9, 11, 13, 15,
        );
        let low16 = _mm256_set1_epi32(0xFFFF);
        let widen = |acc: &mut [[__m256i; 8]; PAIRS_PER_TASK],
                     wide: &mut [[i64; 2]; PAIRS_PER_TASK]| {
            for (a, w) in acc.iter_mut().zip(wide.iter_mut()).take(pairs) {
                w[0] += lanes_sum(a[0], a[1]) + (lanes_sum(a[2], a[3]) << 16);
                w[1] += lanes_sum(a[4], a[5]) + (lanes_sum(a[6], a[7]) << 16);
                *a = [_mm256_setzero_si256(); 8];
            }
        };
        for (p, (panel, r16)) in panels.iter().zip(r.as_chunks::<PANEL_COLUMNS>().0).enumerate() {
            // SAFETY: `r16` is 16 i32: two unaligned 32-byte loads.
            let (r_a, r_b) = unsafe {
                (
                    _mm256_loadu_si256(r16.as_ptr().cast()),
                    _mm256_loadu_si256(r16.as_ptr().add(8).cast()),
                )
            };
            // r = hi · 2¹⁶ + lo, lo in [0, 2¹⁶), hi in [−2¹⁵, 2¹⁵): |B · lo| < 2²³, |B · hi| ≤ 2²².
            let (lo_a, lo_b) = (_mm256_and_si256(r_a, low16), _mm256_and_si256(r_b, low16));
            let (hi_a, hi_b) = (_mm256_srai_epi32::<16>(r_a), _mm256_srai_epi32::<16>(r_b));
            let rows = &panel.as_chunks::<PAIR_BYTES>().0[q0..q0 + pairs];
            for (pair, a) in rows.iter().zip(acc.iter_mut()) {
                // SAFETY: `pair` is 32 bytes: one unaligned load.
                let bytes = unsafe { _mm256_loadu_si256(pair.as_ptr().cast()) };
                let sorted = _mm256_shuffle_epi8(bytes, split);
                let (h0, h1) =
                    (_mm256_castsi256_si128(sorted), _mm256_extracti128_si256::<1>(sorted));
                let (e_a, e_b) = (_mm256_cvtepi8_epi32(h0), _mm256_cvtepi8_epi32(h1));
                let o_a = _mm256_cvtepi8_epi32(_mm_srli_si128::<8>(h0));
                let o_b = _mm256_cvtepi8_epi32(_mm_srli_si128::<8>(h1));
                a[0] = _mm256_add_epi32(a[0], _mm256_mullo_epi32(e_a, lo_a));
                a[1] = _mm256_add_epi32(a[1], _mm256_mullo_epi32(e_b, lo_b));
                a[2] = _mm256_add_epi32(a[2], _mm256_mullo_epi32(e_a, hi_a));
                a[3] = _mm256_add_epi32(a[3], _mm256_mullo_epi32(e_b, hi_b));
                a[4] = _mm256_add_epi32(a[4], _mm256_mullo_epi32(o_a, lo_a));
                a[5] = _mm256_add_epi32(a[5], _mm256_mullo_epi32(o_b, lo_b));
                a[6] = _mm256_add_epi32(a[6], _mm256_mullo_epi32(o_a, hi_a));
                a[7] = _mm256_add_epi32(a[7], _mm256_mullo_epi32(o_b, hi_b));
            }
            if (p + 1) % WIDEN_EVERY == 0 {
                widen(&mut acc, &mut wide);
            }
        }
        widen(&mut acc, &mut wide);
        for (rows, w) in out.chunks_mut(2).zip(&wide) {
            rows[0] = w[0];
            if let Some(o) = rows.get_mut(1) {
                *o = w[1];
            }
        }
    }

    /// `Σ_k A[i][k] · y_k` modulo 2⁶⁴ for the group's rows: `words` is the group's packed A (`kpairs ×
    /// GROUP_ROWS` pairs), `digits` y's digit pairs ([`super::digit_pairs`]).
    #[target_feature(enable = "avx2")]
    pub(super) fn group_times_y(words: &[u32], digits: &[Vec<u32>; 4]) -> [u64; GROUP_ROWS] {
        let mut acc = [_mm256_setzero_si256(); 4];
        let mut wide = [[0i64; 8]; 4];
        let widen = |acc: &mut [__m256i; 4], wide: &mut [[i64; 8]; 4]| {
            for (a, w) in acc.iter_mut().zip(wide.iter_mut()) {
                let mut lanes = [0i32; 8];
                // SAFETY: `lanes` holds 8 i32: one unaligned 32-byte store.
                unsafe { _mm256_storeu_si256(lanes.as_mut_ptr().cast(), *a) };
                for (x, l) in w.iter_mut().zip(lanes) {
                    *x += i64::from(l);
                }
                *a = _mm256_setzero_si256();
            }
        };
        let kpairs = words.len() / GROUP_ROWS;
        let mut tail = [0u32; 8];
        for q in 0..kpairs {
            let six = &words[q * GROUP_ROWS..(q + 1) * GROUP_ROWS];
            // Eight lanes from six pairs: read two words past them, or copy the last six.
            let ptr = if (q + 1) * GROUP_ROWS + 2 <= words.len() {
                six.as_ptr()
            } else {
                tail[..GROUP_ROWS].copy_from_slice(six);
                tail.as_ptr()
            };
            // SAFETY: `ptr` has 8 readable u32: six of this q and two of the next, or the `tail` copy.
            let a = unsafe { _mm256_loadu_si256(ptr.cast()) };
            for t in 0..4 {
                let d = _mm256_set1_epi32(digits[t][q] as i32);
                // |A[i][2q]·d + A[i][2q+1]·d'| ≤ 2 · 2⁷ · 2¹⁵ = 2²³.
                acc[t] = _mm256_add_epi32(acc[t], _mm256_madd_epi16(a, d));
            }
            if (q + 1) % WIDEN_EVERY == 0 {
                widen(&mut acc, &mut wide);
            }
        }
        widen(&mut acc, &mut wide);
        let mut out = [0u64; GROUP_ROWS];
        for (i, o) in out.iter_mut().enumerate() {
            *o = (0..4).fold(0u64, |s, t| s.wrapping_add((wide[t][i] as u64) << (16 * t)));
        }
        out
    }
}
