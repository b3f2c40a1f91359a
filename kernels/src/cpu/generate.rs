//! Philox generation of the shard's matrices, multi-threaded and 16 Philox calls at a time
//! ([`super::philox`]), straight into the layouts the GEMM kernels read ([`PackedA`], [`PackedB`], in
//! [`Packing::Pairs`] or [`Packing::Quads`]); [`generate_rows`] gives plain rows.

use super::{
    Kernel,
    philox::{LANES, Path},
};
use cpc_common::synthetic::{COLUMNS_PER_GROUP, KeyMaterial};
use rayon::prelude::*;
use std::ops::Range;

/// Columns per B panel: one Philox group, the GEMM kernel's width.
pub const PANEL_COLUMNS: usize = COLUMNS_PER_GROUP;

/// Rows `rows` of matrix `matrix_id`, row-major (`rows.len() × n` bytes), generated in parallel on the
/// current rayon pool.
pub fn generate_rows(km: &KeyMaterial, matrix_id: u32, rows: Range<u32>, n: u32) -> Vec<i8> {
    let width = n as usize;
    let path = Path::for_kernel(Kernel::detect());
    let mut out = vec![0i8; rows.len() * width];
    out.par_chunks_mut(width.max(1))
        .zip(rows)
        .for_each(|(row, r)| fill_row(path, km, matrix_id, r, row));
    out
}

/// Row `row` of matrix `matrix_id` into `out` (n long), 256 columns per Philox batch; the same values as
/// [`KeyMaterial::fill_row`].
pub(crate) fn fill_row(path: Path, km: &KeyMaterial, matrix_id: u32, row: u32, out: &mut [i8]) {
    let (batches, tail) = out.as_chunks_mut::<{ PANEL_COLUMNS * LANES }>();
    for (b, batch) in batches.iter_mut().enumerate() {
        path.row_groups(km, matrix_id, row, (b * LANES) as u32, batch);
    }
    let first = (batches.len() * LANES) as u32;
    for (g, chunk) in tail.chunks_mut(PANEL_COLUMNS).enumerate() {
        let values = km.group(matrix_id, row, first + g as u32);
        chunk.copy_from_slice(&values[..chunk.len()]);
    }
}

/// Rows of A per group in [`PackedA`] (the micro-kernels' height).
pub const GROUP_ROWS: usize = 6;

/// How the packed matrices hold k, which decides the micro-kernels that can read them
/// ([`super::Kernel::packing`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Packing {
    /// k in pairs, for `_mm256_madd_epi16` (AVX2) and the scalar kernel: A as two `i16` per `u32`, B as
    /// 32-byte pair rows of `i8` (`B[2q][j], B[2q+1][j]` for 16 columns).
    Pairs,
    /// k in quads, for `vpdpbusd` (AVX-512 VNNI, AVX-VNNI): A as four `i8` per `u32` (the signed, broadcast
    /// operand), B as 64-byte quad rows of `B + 128` stored as `u8` (the unsigned operand:
    /// `B[4q][j]..B[4q+3][j]` for 16 columns). `A · (B + 128) = A · B + 128 · rowsum(A)`, so the GEMM starts
    /// each row of C at `-128 · rowsum(A[i])` ([`PackedA::row_sum`]) to stay exact.
    Quads,
}

impl Packing {
    /// Values of k per step (2 or 4).
    pub const fn k_per_step(self) -> usize {
        match self {
            Self::Pairs => 2,
            Self::Quads => 4,
        }
    }

    /// Bytes of one k step of one 16-column panel of B.
    pub const fn step_bytes(self) -> usize {
        self.k_per_step() * PANEL_COLUMNS
    }

    /// Number of k steps of an n-column matrix.
    pub const fn steps(self, n: usize) -> usize {
        n.div_ceil(self.k_per_step())
    }
}

/// `m` rows of an n-column `i8` matrix packed for the GEMM kernel: `[row group][k step][row in group]`,
/// one `u32` per k step of a row, ready for a broadcast: two `i16` (`(A[i][2q], A[i][2q+1])`, low half
/// first) with [`Packing::Pairs`], four `i8` (`A[i][4q..4q+4]`, little-endian) with [`Packing::Quads`].
/// Rows are padded with zeros to whole groups of [`GROUP_ROWS`], and columns past n are zero.
#[derive(Clone, PartialEq, Eq)]
pub struct PackedA {
    rows: usize,
    n: usize,
    packing: Packing,
    steps: usize,
    data: Vec<u32>,
    /// `Σ_k A[i][k]` per row ([`Packing::Quads`] only, empty otherwise).
    row_sums: Vec<i32>,
}

impl std::fmt::Debug for PackedA {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PackedA")
            .field("rows", &self.rows)
            .field("n", &self.n)
            .field("packing", &self.packing)
            .finish()
    }
}

/// Two `i8` as the `i16` pair `madd` wants.
#[inline(always)]
fn pair(lo: i8, hi: i8) -> u32 {
    u32::from(lo as i16 as u16) | (u32::from(hi as i16 as u16) << 16)
}

/// Up to four `i8` (missing ones zero) as one little-endian `u32`.
#[inline(always)]
fn quad(values: &[i8]) -> u32 {
    let mut bytes = [0u8; 4];
    for (b, v) in bytes.iter_mut().zip(values) {
        *b = *v as u8;
    }
    u32::from_le_bytes(bytes)
}

impl PackedA {
    fn zeroed(rows: usize, n: usize, packing: Packing) -> Self {
        let steps = packing.steps(n);
        let row_sums = match packing {
            Packing::Pairs => Vec::new(),
            Packing::Quads => vec![0; rows],
        };
        let data = vec![0; rows.div_ceil(GROUP_ROWS) * GROUP_ROWS * steps];
        Self { rows, n, packing, steps, data, row_sums }
    }

    /// Packs one group of rows from plain rows (`rows.len() ≤ GROUP_ROWS`, each n long) into `dst`, and
    /// with [`Packing::Quads`] writes their sums into `sums`.
    fn pack_group<'r>(
        packing: Packing,
        dst: &mut [u32],
        sums: &mut [i32],
        rows: impl Iterator<Item = &'r [i8]>,
    ) {
        for (i, row) in rows.enumerate() {
            match packing {
                Packing::Pairs => {
                    for (q, p) in row.chunks(2).enumerate() {
                        dst[q * GROUP_ROWS + i] = pair(p[0], p.get(1).copied().unwrap_or(0));
                    }
                }
                Packing::Quads => {
                    let (quads, tail) = row.as_chunks::<4>();
                    for (q, p) in quads.iter().enumerate() {
                        dst[q * GROUP_ROWS + i] = u32::from_le_bytes(p.map(|v| v as u8));
                    }
                    if !tail.is_empty() {
                        dst[quads.len() * GROUP_ROWS + i] = quad(tail);
                    }
                    sums[i] = row.iter().map(|&v| i32::from(v)).sum();
                }
            }
        }
    }

    /// Generates rows `rows` of matrix `matrix_id` straight into the layout `kernel` reads, in parallel
    /// over groups, with the Philox path that goes with the kernel ([`Path::for_kernel`]).
    pub fn generate(
        km: &KeyMaterial,
        matrix_id: u32,
        rows: Range<u32>,
        n: u32,
        kernel: Kernel,
    ) -> Self {
        let (packing, path) = (kernel.packing(), Path::for_kernel(kernel));
        let mut packed = Self::zeroed(rows.len(), n as usize, packing);
        let (width, start, end) = (n as usize, rows.start, rows.end);
        let group_words = (packed.steps * GROUP_ROWS).max(1);
        // Row sums per group (written with Packing::Quads only), one slot per padded row.
        let mut sums = vec![0i32; packed.data.len() / group_words * GROUP_ROWS];
        let chunks = packed
            .data
            .par_chunks_mut(group_words)
            .zip(sums.par_chunks_mut(GROUP_ROWS))
            .enumerate();
        // One row buffer per worker, reused across groups.
        chunks.for_each_init(
            || vec![0i8; GROUP_ROWS * width],
            |buf, (g, (dst, group_sums))| {
                let r0 = start + (g * GROUP_ROWS) as u32;
                let count = (end - r0).min(GROUP_ROWS as u32) as usize;
                for (i, row) in buf.chunks_mut(width.max(1)).take(count).enumerate() {
                    fill_row(path, km, matrix_id, r0 + i as u32, row);
                }
                Self::pack_group(packing, dst, group_sums, buf.chunks(width.max(1)).take(count));
            },
        );
        if packing == Packing::Quads {
            sums.truncate(packed.rows);
            packed.row_sums = sums;
        }
        packed
    }

    /// Packs `m` plain rows of n columns (for tests and benches with arbitrary values).
    ///
    /// # Panics
    /// If `a.len() != m * n`.
    pub fn from_rows(a: &[i8], m: usize, n: usize, packing: Packing) -> Self {
        assert_eq!(a.len(), m * n, "PackedA::from_rows wants m × n values");
        let mut packed = Self::zeroed(m, n, packing);
        let group = (packed.steps * GROUP_ROWS).max(1);
        let mut sums = vec![0i32; m.div_ceil(GROUP_ROWS) * GROUP_ROWS];
        for ((dst, rows), group_sums) in packed
            .data
            .chunks_mut(group)
            .zip(a.chunks((GROUP_ROWS * n).max(1)))
            .zip(sums.chunks_mut(GROUP_ROWS))
        {
            Self::pack_group(packing, dst, group_sums, rows.chunks(n.max(1)));
        }
        if packing == Packing::Quads {
            sums.truncate(m);
            packed.row_sums = sums;
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

    /// How k is packed.
    pub fn packing(&self) -> Packing {
        self.packing
    }

    /// `Σ_k A[i][k]` of row `i` with [`Packing::Quads`] (0 with [`Packing::Pairs`], which needs no
    /// correction). `|sum| ≤ 128 · n ≤ 2^23`.
    pub fn row_sum(&self, i: usize) -> i32 {
        self.row_sums.get(i).copied().unwrap_or(0)
    }

    /// k steps `q0..q1` of row group `g`.
    pub(crate) fn group(&self, g: usize, q0: usize, q1: usize) -> &[u32] {
        let base = g * self.steps;
        &self.data[(base + q0) * GROUP_ROWS..(base + q1) * GROUP_ROWS]
    }
}

/// An n × n `i8` matrix packed for the GEMM kernel.
///
/// The columns are cut into panels of 16 (one Philox group each). Within a panel, k comes in steps of
/// [`Packing::k_per_step`] rows, each step [`Packing::step_bytes`] bytes: for each column j, the step's
/// values of column j side by side. With [`Packing::Pairs`] they are the `i8` values
/// (`B[2q][j], B[2q+1][j]`): widened to `i16`, two adjacent lanes are exactly what `_mm256_madd_epi16`
/// multiplies by a broadcast `(A[i][2q], A[i][2q+1])`. With [`Packing::Quads`] they are `B + 128` as `u8`
/// (`B[4q..4q+4][j]`), the unsigned operand of `vpdpbusd`. Rows past n hold zero (`128` offset); columns
/// past n (in the last panel) hold whatever the Philox group produced and only ever reach columns of C that
/// are discarded.
#[derive(Clone, PartialEq, Eq)]
pub struct PackedB {
    n: usize,
    packing: Packing,
    steps: usize,
    panels: usize,
    data: Vec<u8>,
}

impl std::fmt::Debug for PackedB {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PackedB")
            .field("n", &self.n)
            .field("packing", &self.packing)
            .field("steps", &self.steps)
            .field("panels", &self.panels)
            .finish()
    }
}

impl PackedB {
    /// The stored byte of value `v`.
    #[inline(always)]
    fn byte(packing: Packing, v: i8) -> u8 {
        match packing {
            Packing::Pairs => v as u8,
            Packing::Quads => (v as u8) ^ 0x80,
        }
    }

    fn zeroed(n: usize, packing: Packing) -> Self {
        let (steps, panels) = (packing.steps(n), n.div_ceil(PANEL_COLUMNS));
        let data = vec![Self::byte(packing, 0); steps * panels * packing.step_bytes()];
        Self { n, packing, steps, panels, data }
    }

    /// Generates matrix `matrix_id` (n × n) straight into the layout `kernel` reads, in parallel over
    /// panels, 16 rows of a panel per Philox batch ([`Path::for_kernel`]).
    pub fn generate(km: &KeyMaterial, matrix_id: u32, n: u32, kernel: Kernel) -> Self {
        let (packing, path) = (kernel.packing(), Path::for_kernel(kernel));
        let mut packed = Self::zeroed(n as usize, packing);
        let (per, step_bytes) = (packing.k_per_step(), packing.step_bytes());
        let panel_bytes = packed.steps * step_bytes;
        packed.data.par_chunks_mut(panel_bytes.max(1)).enumerate().for_each(|(p, panel)| {
            for k0 in (0..n).step_by(LANES) {
                let rows: [u32; LANES] = std::array::from_fn(|i| k0.wrapping_add(i as u32));
                let words = path.run(km, matrix_id, [p as u32; LANES], rows);
                for (i, k) in (k0..n.min(k0.saturating_add(LANES as u32))).enumerate() {
                    let (q, r) = (k as usize / per, k as usize % per);
                    let step = &mut panel[q * step_bytes..(q + 1) * step_bytes];
                    for (w, word) in words.iter().enumerate() {
                        for (t, byte) in word[i].to_le_bytes().into_iter().enumerate() {
                            step[per * (4 * w + t) + r] = Self::byte(packing, byte as i8);
                        }
                    }
                }
            }
        });
        packed
    }

    /// Packs a row-major n × n matrix (for tests and benches with arbitrary values).
    ///
    /// # Panics
    /// If `b.len() != n * n`.
    pub fn from_rows(b: &[i8], n: usize, packing: Packing) -> Self {
        assert_eq!(b.len(), n * n, "PackedB::from_rows wants an n × n matrix");
        let mut packed = Self::zeroed(n, packing);
        let (per, step_bytes) = (packing.k_per_step(), packing.step_bytes());
        let panel_bytes = packed.steps * step_bytes;
        for (p, panel) in packed.data.chunks_mut(panel_bytes.max(1)).enumerate() {
            for (q, step) in panel.chunks_exact_mut(step_bytes).enumerate() {
                for j in 0..PANEL_COLUMNS {
                    let col = p * PANEL_COLUMNS + j;
                    if col >= n {
                        break;
                    }
                    for r in 0..per {
                        let k = per * q + r;
                        if k < n {
                            step[per * j + r] = Self::byte(packing, b[k * n + col]);
                        }
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

    /// How k is packed.
    pub fn packing(&self) -> Packing {
        self.packing
    }

    /// Number of k steps (`ceil(n / k_per_step)`).
    pub(crate) fn steps(&self) -> usize {
        self.steps
    }

    /// k steps `q0..q1` of panel `p`.
    pub(crate) fn panel(&self, p: usize, q0: usize, q1: usize) -> &[u8] {
        let (base, step) = (p * self.steps, self.packing.step_bytes());
        &self.data[(base + q0) * step..(base + q1) * step]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The kernels this host runs, one per packing and Philox path.
    fn kernels() -> Vec<Kernel> {
        Kernel::available()
    }

    #[test]
    fn packed_a_generated_matches_from_rows() {
        let km = KeyMaterial::from_seed("pack-a");
        for kernel in kernels() {
            let packing = kernel.packing();
            for (n, rows) in
                [(1u32, 0..1u32), (3, 1..3), (17, 2..15), (33, 0..33), (40, 39..40), (300, 5..20)]
            {
                let plain = generate_rows(&km, 0, rows.clone(), n);
                let packed = PackedA::generate(&km, 0, rows.clone(), n, kernel);
                let from_rows = PackedA::from_rows(&plain, rows.len(), n as usize, packing);
                assert_eq!(packed, from_rows, "n={n} rows={rows:?} {packing:?}");
                if packing == Packing::Quads {
                    for (i, row) in plain.chunks(n as usize).enumerate() {
                        let sum: i32 = row.iter().map(|&v| i32::from(v)).sum();
                        assert_eq!(packed.row_sum(i), sum, "row {i}");
                    }
                }
            }
        }
    }

    #[test]
    fn generated_and_packed_agree() {
        let km = KeyMaterial::from_seed("pack");
        for kernel in kernels() {
            let packing = kernel.packing();
            let step_bytes = packing.step_bytes();
            for n in [1u32, 2, 3, 5, 15, 16, 17, 33, 70, 300] {
                let rows = generate_rows(&km, 1, 0..n, n);
                for (r, row) in rows.chunks(n as usize).enumerate() {
                    for (c, v) in row.iter().enumerate() {
                        assert_eq!(*v, km.element(1, r as u32, c as u32), "n={n} [{r}][{c}]");
                    }
                }
                let generated = PackedB::generate(&km, 1, n, kernel);
                let packed = PackedB::from_rows(&rows, n as usize, packing);
                // Columns past n differ (Philox values vs zeros); every real column must agree.
                for p in 0..generated.panels {
                    let (g, k) =
                        (generated.panel(p, 0, generated.steps), packed.panel(p, 0, packed.steps));
                    for (i, (x, y)) in g.iter().zip(k).enumerate() {
                        let col = p * PANEL_COLUMNS + (i % step_bytes) / packing.k_per_step();
                        if col < n as usize {
                            assert_eq!(x, y, "n={n} panel {p} byte {i} {kernel}");
                        }
                    }
                }
            }
        }
    }
}
