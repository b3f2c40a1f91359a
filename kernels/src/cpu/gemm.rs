//! Exact `i8 × i8 → i32` GEMM: `C (m × n) = A (m × n, [`PackedA`]) · B (n × n, [`PackedB`])`.
//!
//! GotoBLAS-style blocking: C is cut into tiles of [`MC`] rows × [`NC`] columns that run in parallel on the
//! current rayon pool. A tile walks k in blocks of [`KC`] values; for each block it runs the micro-kernel
//! over every group of [`Kernel::panels_per_call`] 16-column panels of B (the panels' k block, 16–32 KiB,
//! stays in L1 while the tile's row groups of A, L2-resident, pass over it). A arrives already packed
//! ([`PackedA`]), generated that way, so the tiles never repack it. The micro-kernel computes an [`MR`] ×
//! (16 × panels) block of C in registers.
//!
//! # Exactness
//!
//! The true value of every element of C is a sum of n ≤ [`MAX_MATRIX_SIZE`] = 2^16 products of two `i8`,
//! each at most 2^14 in magnitude, so `|C| ≤ 2^30` fits in `i32`.
//!
//! - [`Packing::Pairs`] (scalar, AVX2): `_mm256_madd_epi16` adds two `i16 × i16` products into `i32`
//!   without saturation; every partial sum is a sum of at most n exact products, so it is bounded by 2^30
//!   as well and nothing ever wraps.
//! - [`Packing::Quads`] (AVX-512 VNNI, AVX-VNNI): `vpdpbusd` multiplies an unsigned byte by a signed one,
//!   so B is stored as `B + 128 ∈ [0, 255]` and A stays signed. Each product is at most
//!   `255 · 128 = 32 640` in magnitude (exact in the instruction's `i16` intermediates), and `vpdpbusd`
//!   (not the saturating `vpdpbusds`) adds four of them to the `i32` accumulator modulo 2^32. A partial sum
//!   over k ≤ 2^16 values is bounded by `2^16 · 32 640 = 2 139 095 040 < 2^31 − 1`, so even the
//!   accumulators never wrap. C is then `Σ_k A[i][k] · (B[k][j] + 128) − 128 · Σ_k A[i][k]`: each row of C
//!   starts at `−128 · rowsum(A[i])` (`|·| ≤ 2^30`) and the tiles add their blocks to it with wrapping
//!   adds. Wrapping arithmetic is exact modulo 2^32, and the true result lies in `i32`, so the final value
//!   is exact whatever the order of the additions. The tests pin both the all-`−128` and all-`127`
//!   extremes on every kernel.

use super::{
    Kernel,
    generate::{GROUP_ROWS, PANEL_COLUMNS, PackedA, PackedB, Packing},
};
#[cfg(doc)]
use cpc_common::synthetic::MAX_MATRIX_SIZE;
use rayon::prelude::*;

/// Rows of C per micro-kernel call.
pub const MR: usize = GROUP_ROWS;
/// Columns of C per panel of B (one Philox group).
pub const NR: usize = PANEL_COLUMNS;
/// Most panels one micro-kernel call covers (the AVX-512 VNNI kernel's 4 × 16 columns).
pub const MAX_PANELS: usize = 4;
/// Rows of C per tile (a multiple of [`MR`]).
pub const MC: usize = 16 * MR;
/// Columns of C per tile (a multiple of [`NR`] × [`MAX_PANELS`]).
pub const NC: usize = 256;
/// Values of k per block: a panel's k block is `KC` × 16 bytes (`i8`), 16 KiB for the four panels the
/// AVX-512 kernel reads at once, 8 KiB for the others; it stays in L1 while the tile's row groups of A
/// (`MC × KC` bytes, 48 KiB as `i8` quads, twice that as `i16` pairs) stream from L2.
pub const KC: usize = 1024;

/// The micro-kernel's output block: [`MR`] rows × up to [`MAX_PANELS`] panels.
pub(super) type Block = [[i32; NR * MAX_PANELS]; MR];

/// One tile of C: up to [`MC`] row slices, each up to [`NC`] columns wide.
struct Tile<'c> {
    row0: usize,
    col0: usize,
    rows: Vec<&'c mut [i32]>,
}

/// `C = A · B` (`m × n`, row-major, `m = a.rows()`), with the given kernel. Runs on the current rayon pool.
///
/// # Panics
/// If A and B have different n, if they are not both packed for the kernel (see [`Kernel::packing`]), or
/// if this CPU cannot run the kernel ([`Kernel::is_available`]; callers check once, up front).
pub fn gemm(a: &PackedA, b: &PackedB, kernel: Kernel) -> Vec<i32> {
    let (m, n) = (a.rows(), b.n());
    assert_eq!(a.n(), n, "gemm: A and B must have the same n");
    assert!(
        a.packing() == kernel.packing() && b.packing() == kernel.packing(),
        "gemm: the {} kernel wants {:?} packing, got A {:?} and B {:?}",
        kernel.as_str(),
        kernel.packing(),
        a.packing(),
        b.packing()
    );
    assert!(kernel.is_available(), "gemm: this CPU cannot run the {} kernel", kernel.as_str());
    // Each row starts at the offset correction (zero with pairs); see the module's exactness section.
    let mut c = vec![0i32; m * n];
    if m == 0 || n == 0 {
        return c;
    }
    if a.packing() == Packing::Quads {
        for (i, row) in c.chunks_mut(n).enumerate() {
            row.fill(a.row_sum(i).wrapping_mul(-128));
        }
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
    let panels = cols.div_ceil(NR);
    let per_call = kernel.panels_per_call();
    let (steps, kc_steps) = (b.steps(), KC / kernel.packing().k_per_step());
    let mut block: Block = [[0; NR * MAX_PANELS]; MR];
    for q0 in (0..steps).step_by(kc_steps) {
        let q1 = (q0 + kc_steps).min(steps);
        for pj in (0..panels).step_by(per_call) {
            let count = per_call.min(panels - pj);
            let (off, width) = (pj * NR, (count * NR).min(cols - pj * NR));
            for g in 0..groups {
                kernel.run(
                    a.group(first_group + g, q0, q1),
                    b,
                    first_panel + pj,
                    count,
                    q0..q1,
                    &mut block,
                );
                for (i, out) in block.iter().enumerate().take(rows - g * MR) {
                    let dst = &mut tile.rows[g * MR + i][off..off + width];
                    for (d, s) in dst.iter_mut().zip(out) {
                        *d = d.wrapping_add(*s);
                    }
                }
            }
        }
    }
}

/// Portable micro-kernel over [`Packing::Pairs`] (one panel): `block = Σ_q a[q] ⊗ panel[q]`, the same
/// maths as the AVX2 one.
pub(super) fn kernel_scalar(a: &[u32], panel: &[u8], block: &mut Block) {
    *block = [[0; NR * MAX_PANELS]; MR];
    for (b, a) in panel.as_chunks::<{ 2 * NR }>().0.iter().zip(a.as_chunks::<MR>().0) {
        for (out, &pair) in block.iter_mut().zip(a) {
            let lo = i32::from(pair as u16 as i16);
            let hi = i32::from((pair >> 16) as u16 as i16);
            for (j, o) in out.iter_mut().take(NR).enumerate() {
                *o += lo * i32::from(b[2 * j] as i8) + hi * i32::from(b[2 * j + 1] as i8);
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

    /// AVX2 micro-kernel over [`super::Packing::Pairs`] (one panel): for each row pair q, widens the
    /// panel's 32 bytes to two vectors of 16 `i16` (`B[2q][j], B[2q+1][j]` for 8 columns each), broadcasts
    /// each row's `(A[i][2q], A[i][2q+1])` and `madd`s them into 12 `i32x8` accumulators (6 rows × 16
    /// columns).
    ///
    /// Callable only where AVX2 is present (the caller checks [`super::Kernel::is_available`]).
    #[target_feature(enable = "avx2")]
    pub(in crate::cpu) fn kernel(a: &[u32], panel: &[u8], block: &mut Block) {
        let mut acc = [[_mm256_setzero_si256(); 2]; MR];
        for (b, a) in panel.as_chunks::<{ 2 * NR }>().0.iter().zip(a.as_chunks::<MR>().0) {
            // SAFETY: `b` is a `[u8; 32]`, so both unaligned 16-byte loads (offsets 0 and 16) read inside it;
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
            // SAFETY: `out` is a `[i32; 64]`, 256 writable bytes; the two unaligned stores write bytes 0..32
            // and 32..64 of it (`dst.add(1)` is 32 bytes on), and `_mm256_storeu_si256` needs no alignment.
            unsafe {
                _mm256_storeu_si256(dst, acc[0]);
                _mm256_storeu_si256(dst.add(1), acc[1]);
            }
        }
    }
}

#[cfg(target_arch = "x86_64")]
pub(super) mod avx_vnni {
    use super::{Block, MR, NR};
    use std::arch::x86_64::{
        __m256i, _mm256_dpbusd_avx_epi32, _mm256_loadu_si256, _mm256_set1_epi32,
        _mm256_setzero_si256, _mm256_storeu_si256,
    };

    /// AVX-VNNI micro-kernel over [`super::Packing::Quads`] (one panel): for each k quad, loads the
    /// panel's 64 bytes as two vectors of 8 columns × 4 `u8` (`B + 128`), broadcasts each row's four `i8`
    /// of A and `vpdpbusd`s them into 12 `i32x8` accumulators (6 rows × 16 columns): 32 multiply-adds per
    /// instruction, twice AVX2's `madd`, with no widening step.
    ///
    /// Callable only where AVX-VNNI and AVX2 are present (the caller checks
    /// [`super::Kernel::is_available`]).
    #[target_feature(enable = "avx2,avxvnni")]
    pub(in crate::cpu) fn kernel(a: &[u32], panel: &[u8], block: &mut Block) {
        let mut acc = [[_mm256_setzero_si256(); 2]; MR];
        for (b, a) in panel.as_chunks::<{ 4 * NR }>().0.iter().zip(a.as_chunks::<MR>().0) {
            let src = b.as_ptr().cast::<__m256i>();
            // SAFETY: `b` is a `[u8; 64]`, so both unaligned 32-byte loads (offsets 0 and 32) read inside it;
            // `_mm256_loadu_si256` has no alignment requirement.
            let (b0, b1) = unsafe { (_mm256_loadu_si256(src), _mm256_loadu_si256(src.add(1))) };
            for (acc, &quad) in acc.iter_mut().zip(a) {
                let av = _mm256_set1_epi32(quad as i32);
                acc[0] = _mm256_dpbusd_avx_epi32(acc[0], b0, av);
                acc[1] = _mm256_dpbusd_avx_epi32(acc[1], b1, av);
            }
        }
        for (out, acc) in block.iter_mut().zip(&acc) {
            let dst = out.as_mut_ptr().cast::<__m256i>();
            // SAFETY: `out` is a `[i32; 64]`, 256 writable bytes; the two unaligned stores write bytes 0..64
            // of it, and `_mm256_storeu_si256` needs no alignment.
            unsafe {
                _mm256_storeu_si256(dst, acc[0]);
                _mm256_storeu_si256(dst.add(1), acc[1]);
            }
        }
    }
}

#[cfg(target_arch = "x86_64")]
pub(super) mod avx512_vnni {
    use super::{Block, MAX_PANELS, MR, NR};
    use std::arch::x86_64::{
        _mm512_dpbusd_epi32, _mm512_loadu_si512, _mm512_set1_epi32, _mm512_setzero_si512,
        _mm512_storeu_si512,
    };

    /// AVX-512 VNNI micro-kernel over [`super::Packing::Quads`], `P` (1..=4) panels at once: for each k
    /// quad, loads each panel's 64 bytes (16 columns × 4 `u8`, `B + 128`) into one `zmm`, broadcasts each
    /// row's four `i8` of A and `vpdpbusd`s them into `6 × P` `i32x16` accumulators (24 of the 32 `zmm`
    /// registers at `P = 4`): 64 multiply-adds per instruction, and 10 loads per 24 of them.
    ///
    /// Callable only where AVX-512F, AVX-512BW and AVX-512 VNNI are present (the caller checks
    /// [`super::Kernel::is_available`]).
    #[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
    pub(in crate::cpu) fn kernel<const P: usize>(a: &[u32], panels: [&[u8]; P], block: &mut Block) {
        const { assert!(P >= 1 && P <= MAX_PANELS) };
        let a = a.as_chunks::<MR>().0;
        let b = panels.map(|p| p.as_chunks::<{ 4 * NR }>().0);
        let steps = b.iter().fold(a.len(), |s, p| s.min(p.len()));
        // Raw starts of the panels, so the hot loop carries no per-panel bounds checks (LLVM keeps the
        // slices' lengths on the stack and re-checks all four every step otherwise).
        let starts = b.map(|p| p.as_ptr().cast::<u8>());
        let mut acc = [[_mm512_setzero_si512(); P]; MR];
        for (q, a) in a[..steps].iter().enumerate() {
            let mut bv = [_mm512_setzero_si512(); P];
            for (v, start) in bv.iter_mut().zip(&starts) {
                // SAFETY: each panel holds at least `steps` chunks of 64 bytes and q < steps, so the 64 bytes at
                // `start + 64 q` are inside it; `_mm512_loadu_si512` has no alignment requirement.
                *v = unsafe { _mm512_loadu_si512(start.add(4 * NR * q).cast()) };
            }
            for (acc, &quad) in acc.iter_mut().zip(a) {
                let av = _mm512_set1_epi32(quad as i32);
                for (acc, &bv) in acc.iter_mut().zip(&bv) {
                    *acc = _mm512_dpbusd_epi32(*acc, bv, av);
                }
            }
        }
        for (out, acc) in block.iter_mut().zip(&acc) {
            for (p, acc) in acc.iter().enumerate() {
                // SAFETY: `out` is a `[i32; 64]`; panel p < P ≤ 4 writes its 16 values (64 bytes) at
                // `out[16p..16p + 16]`, inside it; `_mm512_storeu_si512` needs no alignment.
                unsafe { _mm512_storeu_si512(out.as_mut_ptr().add(NR * p).cast(), *acc) };
            }
        }
    }
}
