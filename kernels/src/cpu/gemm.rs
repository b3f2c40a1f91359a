//! Exact `i8 × i8 → i32` GEMM: `C (m × n) = A (m × n, row-major) · B (n × n, [`PackedB`])`.
//!
//! GotoBLAS-style blocking: C is cut into tiles of [`MC`] rows × [`NC`] columns that run in parallel on the
//! current rayon pool. A tile walks k in blocks of [`KC_PAIRS`] row pairs; for each block it runs the
//! micro-kernel over every 16-column panel of B (the panel's k block, 8 KiB, stays in L1 while the tile's
//! row groups of A, 48 KiB per k block and L2-resident, pass over it). A arrives already packed as `i16`
//! pairs ([`PackedA`]), generated that way, so the tiles never repack it. The micro-kernel computes an
//! [`MR`] × 16 block of C in registers.
//!
//! Exactness: every product is at most 2^14 in magnitude and a row of C sums n ≤ 65536 of them, so every
//! partial sum fits in `i32` (the spec's bound); `_mm256_madd_epi16` adds two such products into `i32`
//! without saturation, so the AVX2 and scalar kernels give identical, exact results.

use super::{
    Kernel,
    generate::{GROUP_ROWS, PackedA, PackedB},
};
use rayon::prelude::*;

/// Rows of C per micro-kernel call.
pub const MR: usize = GROUP_ROWS;
/// Columns of C per micro-kernel call (one panel of B).
pub const NR: usize = super::generate::PANEL_COLUMNS;
/// Rows of C per tile (a multiple of [`MR`]).
pub const MC: usize = 16 * MR;
/// Columns of C per tile (a multiple of [`NR`]).
pub const NC: usize = 256;
/// Row pairs of B per k block: `KC_PAIRS × 32` bytes of a panel stay in L1.
pub const KC_PAIRS: usize = 512;

/// The micro-kernel's output block.
type Block = [[i32; NR]; MR];

/// One tile of C: up to [`MC`] row slices, each up to [`NC`] columns wide.
struct Tile<'c> {
    row0: usize,
    col0: usize,
    rows: Vec<&'c mut [i32]>,
}

/// `C = A · B` (`m × n`, row-major, `m = a.rows()`), with the given kernel (an unavailable kernel falls
/// back to the scalar one). Runs on the current rayon pool.
///
/// # Panics
/// If A and B have different n.
pub fn gemm(a: &PackedA, b: &PackedB, kernel: Kernel) -> Vec<i32> {
    let (m, n) = (a.rows(), b.n());
    assert_eq!(a.n(), n, "gemm: A and B must have the same n");
    let kernel = kernel.resolve();
    let mut c = vec![0i32; m * n];
    if m == 0 || n == 0 {
        return c;
    }
    let col_tiles = n.div_ceil(NC);
    let mut tiles: Vec<Tile<'_>> = (0..m.div_ceil(MC) * col_tiles)
        .map(|t| Tile {
            row0: (t / col_tiles) * MC,
            col0: (t % col_tiles) * NC,
            rows: Vec::with_capacity(MC),
        })
        .collect();
    for (r, row) in c.chunks_mut(n).enumerate() {
        for (j, piece) in row.chunks_mut(NC).enumerate() {
            tiles[(r / MC) * col_tiles + j].rows.push(piece);
        }
    }
    tiles.into_par_iter().for_each(|tile| compute_tile(tile, a, b, kernel));
    c
}

fn compute_tile(mut tile: Tile<'_>, a: &PackedA, b: &PackedB, kernel: Kernel) {
    let rows = tile.rows.len();
    let Some(cols) = tile.rows.first().map(|r| r.len()) else { return };
    let (first_group, groups) = (tile.row0 / MR, rows.div_ceil(MR));
    let first_panel = tile.col0 / NR;
    let kpairs = b.kpairs();
    let mut block: Block = [[0; NR]; MR];
    for q0 in (0..kpairs).step_by(KC_PAIRS) {
        let q1 = (q0 + KC_PAIRS).min(kpairs);
        for pj in 0..cols.div_ceil(NR) {
            let panel = b.panel(first_panel + pj, q0, q1);
            let (off, width) = (pj * NR, NR.min(cols - pj * NR));
            for g in 0..groups {
                kernel.run(a.group(first_group + g, q0, q1), panel, &mut block);
                for (i, out) in block.iter().enumerate().take(rows - g * MR) {
                    let dst = &mut tile.rows[g * MR + i][off..off + width];
                    for (d, s) in dst.iter_mut().zip(out) {
                        *d += *s;
                    }
                }
            }
        }
    }
}

/// Portable micro-kernel: `block = Σ_q a[q] ⊗ panel[q]`, same maths as the AVX2 one.
pub(super) fn kernel_scalar(a: &[u32], panel: &[i8], block: &mut Block) {
    *block = [[0; NR]; MR];
    for (b, a) in panel.as_chunks::<{ 2 * NR }>().0.iter().zip(a.as_chunks::<MR>().0) {
        for (out, &pair) in block.iter_mut().zip(a) {
            let lo = i32::from(pair as u16 as i16);
            let hi = i32::from((pair >> 16) as u16 as i16);
            for (j, o) in out.iter_mut().enumerate() {
                *o += lo * i32::from(b[2 * j]) + hi * i32::from(b[2 * j + 1]);
            }
        }
    }
}

#[cfg(target_arch = "x86_64")]
pub(super) mod avx2 {
    use super::{Block, MR, NR};
    use std::arch::x86_64::{
        __m128i, __m256i, _mm_loadu_si128, _mm256_add_epi32, _mm256_cvtepi8_epi16,
        _mm256_madd_epi16, _mm256_set1_epi32, _mm256_setzero_si256, _mm256_storeu_si256,
    };

    /// AVX2 micro-kernel: for each row pair q, widens the panel's 32 bytes to two vectors of 16 `i16`
    /// (`B[2q][j], B[2q+1][j]` for 8 columns each), broadcasts each row's `(A[i][2q], A[i][2q+1])` and
    /// `madd`s them into 12 `i32x8` accumulators (6 rows × 16 columns).
    ///
    /// Callable only where AVX2 is present (the caller checks `is_x86_feature_detected!("avx2")`).
    #[target_feature(enable = "avx2")]
    pub(in crate::cpu) fn kernel(a: &[u32], panel: &[i8], block: &mut Block) {
        let mut acc = [[_mm256_setzero_si256(); 2]; MR];
        for (b, a) in panel.as_chunks::<{ 2 * NR }>().0.iter().zip(a.as_chunks::<MR>().0) {
            // SAFETY: `b` is a `[i8; 32]`, so both unaligned 16-byte loads (offsets 0 and 16) read inside it;
            // `_mm_loadu_si128` has no alignment requirement.
            let (lo, hi) = unsafe {
                (
                    _mm_loadu_si128(b.as_ptr().cast::<__m128i>()),
                    _mm_loadu_si128(b.as_ptr().add(16).cast::<__m128i>()),
                )
            };
            let (b0, b1) = (_mm256_cvtepi8_epi16(lo), _mm256_cvtepi8_epi16(hi));
            for (acc, &pair) in acc.iter_mut().zip(a) {
                let av = _mm256_set1_epi32(pair as i32);
                acc[0] = _mm256_add_epi32(acc[0], _mm256_madd_epi16(av, b0));
                acc[1] = _mm256_add_epi32(acc[1], _mm256_madd_epi16(av, b1));
            }
        }
        for (out, acc) in block.iter_mut().zip(&acc) {
            let dst = out.as_mut_ptr().cast::<__m256i>();
            // SAFETY: `out` is a `[i32; 16]`, 64 writable bytes; the two unaligned stores write bytes 0..32 and
            // 32..64 of it (`dst.add(1)` is 32 bytes on), and `_mm256_storeu_si256` needs no alignment.
            unsafe {
                _mm256_storeu_si256(dst, acc[0]);
                _mm256_storeu_si256(dst.add(1), acc[1]);
            }
        }
    }
}
