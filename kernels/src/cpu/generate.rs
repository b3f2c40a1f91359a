//! Philox generation of the shard's matrices, multi-threaded, straight into the GEMM's packed layouts
//! ([`PackedA`], [`PackedB`]); [`generate_rows`] gives plain rows.

use cpc_common::synthetic::{COLUMNS_PER_GROUP, KeyMaterial};
use rayon::prelude::*;
use std::ops::Range;

/// Columns per B panel: one Philox group, the GEMM kernel's width.
pub const PANEL_COLUMNS: usize = COLUMNS_PER_GROUP;
/// Bytes of one k-pair of one panel: 16 columns × 2 rows of B.
pub(crate) const PAIR_BYTES: usize = 2 * PANEL_COLUMNS;

/// Rows `rows` of matrix `matrix_id`, row-major (`rows.len() × n` bytes), generated in parallel on the
/// current rayon pool.
pub fn generate_rows(km: &KeyMaterial, matrix_id: u32, rows: Range<u32>, n: u32) -> Vec<i8> {
    let width = n as usize;
    let mut out = vec![0i8; rows.len() * width];
    out.par_chunks_mut(width.max(1)).zip(rows).for_each(|(row, r)| km.fill_row(matrix_id, r, row));
    out
}

/// Rows of A per group in [`PackedA`] (the micro-kernel's height).
pub const GROUP_ROWS: usize = 6;

/// `m` rows of an n-column `i8` matrix packed for the GEMM kernel: `[row group][q][row in group]`, one
/// `u32` per `(A[i][2q], A[i][2q+1])` as two `i16` (low half first), ready for `vpbroadcastd`. Rows are
/// padded with zeros to whole groups of [`GROUP_ROWS`], and the column past an odd n is zero. Twice the
/// bytes of the plain rows.
#[derive(Clone, PartialEq, Eq)]
pub struct PackedA {
    rows: usize,
    n: usize,
    kpairs: usize,
    data: Vec<u32>,
}

impl std::fmt::Debug for PackedA {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PackedA").field("rows", &self.rows).field("n", &self.n).finish()
    }
}

/// Two `i8` as the `i16` pair `madd` wants.
#[inline(always)]
fn pair(lo: i8, hi: i8) -> u32 {
    u32::from(lo as i16 as u16) | (u32::from(hi as i16 as u16) << 16)
}

impl PackedA {
    fn zeroed(rows: usize, n: usize) -> Self {
        let kpairs = n.div_ceil(2);
        Self { rows, n, kpairs, data: vec![0; rows.div_ceil(GROUP_ROWS) * GROUP_ROWS * kpairs] }
    }

    /// Packs one group of rows from plain rows (`rows.len() ≤ GROUP_ROWS`, each n long).
    fn pack_group<'r>(dst: &mut [u32], rows: impl Iterator<Item = &'r [i8]>) {
        for (i, row) in rows.enumerate() {
            let (pairs, rest) = row.as_chunks::<2>();
            for (q, p) in pairs.iter().enumerate() {
                dst[q * GROUP_ROWS + i] = pair(p[0], p[1]);
            }
            if let [last] = rest {
                dst[pairs.len() * GROUP_ROWS + i] = pair(*last, 0);
            }
        }
    }

    /// Generates rows `rows` of matrix `matrix_id` straight into the packed layout, in parallel over groups.
    pub fn generate(km: &KeyMaterial, matrix_id: u32, rows: Range<u32>, n: u32) -> Self {
        let mut packed = Self::zeroed(rows.len(), n as usize);
        let (width, start, end) = (n as usize, rows.start, rows.end);
        let chunks = packed.data.par_chunks_mut((packed.kpairs * GROUP_ROWS).max(1)).enumerate();
        // One row buffer per worker, reused across groups.
        chunks.for_each_init(
            || vec![0i8; GROUP_ROWS * width],
            |buf, (g, dst)| {
                let r0 = start + (g * GROUP_ROWS) as u32;
                let count = (end - r0).min(GROUP_ROWS as u32) as usize;
                for (i, row) in buf.chunks_mut(width.max(1)).take(count).enumerate() {
                    km.fill_row(matrix_id, r0 + i as u32, row);
                }
                Self::pack_group(dst, buf.chunks(width.max(1)).take(count));
            },
        );
        packed
    }

    /// Packs `m` plain rows of n columns (for tests and benches with arbitrary values).
    ///
    /// # Panics
    /// If `a.len() != m * n`.
    pub fn from_rows(a: &[i8], m: usize, n: usize) -> Self {
        assert_eq!(a.len(), m * n, "PackedA::from_rows wants m × n values");
        let mut packed = Self::zeroed(m, n);
        let group = (packed.kpairs * GROUP_ROWS).max(1);
        for (dst, rows) in packed.data.chunks_mut(group).zip(a.chunks((GROUP_ROWS * n).max(1))) {
            Self::pack_group(dst, rows.chunks(n.max(1)));
        }
        packed
    }

    /// Number of rows (before padding).
    pub fn rows(&self) -> usize {
        self.rows
    }

    /// Number of columns n.
    pub fn n(&self) -> usize {
        self.n
    }

    /// Row pairs `q0..q1` of row group `g`.
    pub(crate) fn group(&self, g: usize, q0: usize, q1: usize) -> &[u32] {
        let base = g * self.kpairs;
        &self.data[(base + q0) * GROUP_ROWS..(base + q1) * GROUP_ROWS]
    }
}

/// An n × n `i8` matrix packed for the GEMM kernel.
///
/// The columns are cut into panels of 16 (one Philox group each). Within a panel, rows come in pairs
/// `(2q, 2q+1)`, and each pair is 32 bytes `B[2q][j], B[2q+1][j]` for `j = 0..16`: widened to `i16`, two
/// adjacent lanes are exactly what `_mm256_madd_epi16` multiplies by a broadcast `(A[i][2q], A[i][2q+1])`.
/// With n odd the last pair's second row is zero; columns past n (in the last panel) hold whatever the
/// Philox group produced and only ever reach columns of C that are discarded.
#[derive(Clone, PartialEq, Eq)]
pub struct PackedB {
    n: usize,
    kpairs: usize,
    panels: usize,
    data: Vec<i8>,
}

impl std::fmt::Debug for PackedB {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PackedB")
            .field("n", &self.n)
            .field("kpairs", &self.kpairs)
            .field("panels", &self.panels)
            .finish()
    }
}

impl PackedB {
    fn zeroed(n: usize) -> Self {
        let (kpairs, panels) = (n.div_ceil(2), n.div_ceil(PANEL_COLUMNS));
        Self { n, kpairs, panels, data: vec![0i8; kpairs * panels * PAIR_BYTES] }
    }

    /// Generates matrix `matrix_id` (n × n) straight into the packed layout, in parallel over panels.
    pub fn generate(km: &KeyMaterial, matrix_id: u32, n: u32) -> Self {
        let mut packed = Self::zeroed(n as usize);
        let panel_bytes = packed.kpairs * PAIR_BYTES;
        packed.data.par_chunks_mut(panel_bytes.max(1)).enumerate().for_each(|(p, panel)| {
            for (q, pair) in panel.as_chunks_mut::<PAIR_BYTES>().0.iter_mut().enumerate() {
                let k = 2 * q as u32;
                let even = km.group(matrix_id, k, p as u32);
                let odd = if k + 1 < n {
                    km.group(matrix_id, k + 1, p as u32)
                } else {
                    [0; PANEL_COLUMNS]
                };
                for j in 0..PANEL_COLUMNS {
                    pair[2 * j] = even[j];
                    pair[2 * j + 1] = odd[j];
                }
            }
        });
        packed
    }

    /// Packs a row-major n × n matrix (for tests and benches with arbitrary values).
    ///
    /// # Panics
    /// If `b.len() != n * n`.
    pub fn from_rows(b: &[i8], n: usize) -> Self {
        assert_eq!(b.len(), n * n, "PackedB::from_rows wants an n × n matrix");
        let mut packed = Self::zeroed(n);
        let kpairs = packed.kpairs;
        for (p, panel) in packed.data.chunks_mut((kpairs * PAIR_BYTES).max(1)).enumerate() {
            for (q, pair) in panel.as_chunks_mut::<PAIR_BYTES>().0.iter_mut().enumerate() {
                for j in 0..PANEL_COLUMNS {
                    let col = p * PANEL_COLUMNS + j;
                    if col >= n {
                        break;
                    }
                    pair[2 * j] = b[2 * q * n + col];
                    if 2 * q + 1 < n {
                        pair[2 * j + 1] = b[(2 * q + 1) * n + col];
                    }
                }
            }
        }
        packed
    }

    /// The matrix size n.
    pub fn n(&self) -> usize {
        self.n
    }

    /// Number of row pairs (`ceil(n / 2)`).
    pub(crate) fn kpairs(&self) -> usize {
        self.kpairs
    }

    /// Row pairs `q0..q1` of panel `p`.
    pub(crate) fn panel(&self, p: usize, q0: usize, q1: usize) -> &[i8] {
        let base = p * self.kpairs;
        &self.data[(base + q0) * PAIR_BYTES..(base + q1) * PAIR_BYTES]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn packed_a_generated_matches_from_rows() {
        let km = KeyMaterial::from_seed("pack-a");
        for (n, rows) in [(1u32, 0..1u32), (3, 1..3), (17, 2..15), (33, 0..33), (40, 39..40)] {
            let plain = generate_rows(&km, 0, rows.clone(), n);
            let packed = PackedA::generate(&km, 0, rows.clone(), n);
            assert_eq!(
                packed,
                PackedA::from_rows(&plain, rows.len(), n as usize),
                "n={n} rows={rows:?}"
            );
        }
    }

    #[test]
    fn generated_and_packed_agree() {
        let km = KeyMaterial::from_seed("pack");
        for n in [1u32, 2, 3, 15, 16, 17, 33, 70] {
            let rows = generate_rows(&km, 1, 0..n, n);
            for (r, row) in rows.chunks(n as usize).enumerate() {
                for (c, v) in row.iter().enumerate() {
                    assert_eq!(*v, km.element(1, r as u32, c as u32));
                }
            }
            let generated = PackedB::generate(&km, 1, n);
            let packed = PackedB::from_rows(&rows, n as usize);
            // Columns past n differ (Philox values vs zeros); every real column must agree.
            for p in 0..generated.panels {
                let (g, k) =
                    (generated.panel(p, 0, generated.kpairs), packed.panel(p, 0, packed.kpairs));
                for (i, (x, y)) in g.iter().zip(k).enumerate() {
                    let col = p * PANEL_COLUMNS + (i % PAIR_BYTES) / 2;
                    if col < n as usize {
                        assert_eq!(x, y, "n={n} panel {p} byte {i}");
                    }
                }
            }
        }
    }
}
