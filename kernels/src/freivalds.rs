//! Freivalds' check of a shard's product, shared by every backend: a device that just computed rows
//! `C_rows = A_rows · B` checks `C_rows · r == A_rows · (B · r)` for a random vector `r` before any leaf of
//! the rows leaves it, so that a single wrong element (a flipped bit in memory without ECC, a broken GEMM) fails the
//! shard instead of reaching the chain. `docs/VERIFICATION.md` states the model; this module holds what
//! every backend must agree on:
//!
//! - [`CheckSeed`] and [`check_vector`]: the vector, derived from a seed the coordinator draws afresh for
//!   every dispatch (so the device cannot know it while it computes);
//! - [`RowSums`] and [`compare`]: the per-row sums both sides of the check give, and the verdict;
//! - [`row_sums_plain`]: the plainest implementation, from row-major A, B and C, that the fast CPU path
//!   (`cpu/freivalds/`) and the CUDA kernels (`freivalds_*` in `cuda/kernels.cu`) are tested against.
//!
//! # Arithmetic and detection probability
//!
//! Everything is exact in the ring of integers modulo 2⁶⁴ (wrapping `u64`): every step is a ring
//! operation, so `C = A·B` implies `C·r ≡ A·(B·r)` for every r. The entries of `r` are uniform over the
//! 2³² values of an `i32`. Let `e = C_device − C_true` on one row (as integers, `|e_j| < 2³²` since both
//! are `i32`), not all zero. The check on that row passes only if `Σ e_j r_j ≡ 0 (mod 2⁶⁴)`. Take one
//! `e_j ≠ 0`, written `2^k · odd` with `k ≤ 31`; with every other `r` fixed, two values of `r_j` that give
//! the same `e_j r_j` modulo 2⁶⁴ differ by a multiple of `2^(64−k) ≥ 2³³`, impossible for two distinct
//! `i32`. So at most one of the 2³² values of `r_j` hides the error: **a wrong product passes with
//! probability at most 2⁻³² per check**, whatever the error (one flipped bit or many), i.e. it is caught
//! with probability ≥ 1 − 2⁻³² > 1 − 2⁻³⁰.
//!
//! The cost is `n²` multiply-adds for `B·r` and `2·rows·n` for the two row sums, against the GEMM's
//! `rows·n²`. What every backend must agree on is the sums, not how they are computed: any exact method
//! will do (the CPU's AVX-512 loops cut r and `B·r` into bytes for `vpdpbusd`, the GPU multiplies in
//! wrapping `u64`), and the tests hold each to [`row_sums_plain`] bit for bit.

use std::time::Duration;

/// The seed of one check's random vector. The coordinator draws it from a CSPRNG seeded from the operating
/// system's randomness for every dispatch and sends it with the shard (`RunShard::check_seed`), so it is unknown while the
/// device computes and differs between the first run of a shard and any re-run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct CheckSeed(pub u64);

/// SplitMix64's increment (the golden ratio in 64 bits).
const SPLITMIX_GAMMA: u64 = 0x9E37_79B9_7F4A_7C15;

/// SplitMix64's output function (Steele, Lea and Flood 2014): a bijection of `u64` with full avalanche.
fn splitmix64(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// The check vector `r` of length `n` for `seed`: `r_j` is the high 32 bits of the SplitMix64 output
/// `splitmix64(seed + (j + 1)·γ)`, as an `i32` (uniform over all 2³² values). Every backend uses this one
/// definition (the CUDA backend computes it on the host and copies it to the device).
pub fn check_vector(seed: CheckSeed, n: usize) -> Vec<i32> {
    (1..=n as u64)
        .map(|j| {
            (splitmix64(seed.0.wrapping_add(j.wrapping_mul(SPLITMIX_GAMMA))) >> 32) as u32 as i32
        })
        .collect()
}

/// The two sides of the check for one row `i` of the shard, modulo 2⁶⁴.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct RowSums {
    /// `Σ_j C[i][j] · r_j`: from the product the device computed.
    pub product: u64,
    /// `Σ_k A[i][k] · (B·r)_k`: from the inputs alone.
    pub inputs: u64,
}

impl RowSums {
    /// Whether the row passes.
    pub fn agree(&self) -> bool {
        self.product == self.inputs
    }
}

/// Rows that failed a check, as offsets within the shard.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mismatch {
    /// Offsets (0-based, within the shard) of the first failing rows, at most [`MAX_REPORTED_ROWS`].
    pub first_rows: Vec<u32>,
    /// How many rows failed in all.
    pub failed_rows: u32,
}

/// Failing rows named in a [`Mismatch`] (and in the error the operator reads).
pub const MAX_REPORTED_ROWS: usize = 8;

/// The verdict over a shard's row sums: `Ok` when every row agrees.
pub fn compare(sums: &[RowSums]) -> Result<(), Mismatch> {
    let mut failed = sums.iter().enumerate().filter(|(_, s)| !s.agree()).map(|(i, _)| i as u32);
    let first_rows: Vec<u32> = failed.by_ref().take(MAX_REPORTED_ROWS).collect();
    if first_rows.is_empty() {
        return Ok(());
    }
    let failed_rows = u32::try_from(first_rows.len() + failed.count()).unwrap_or(u32::MAX);
    Err(Mismatch { first_rows, failed_rows })
}

/// What a shard's check cost, when the backend ran one: the check itself and the whole shard around it
/// (generation, product, check and hashing), so that `check / shard` is the share of the device's time.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct CheckCost {
    /// Time spent in the check.
    pub check: Duration,
    /// Time of the whole shard, the check included.
    pub shard: Duration,
}

/// The row sums from plain row-major matrices: `a` is `rows × n` (the shard's rows of A), `b` is `n × n`,
/// `c` is `rows × n`, `r` has n entries. The definition the fast paths are tested against: straight
/// wrapping `u64` arithmetic, no splitting, no layout.
///
/// # Panics
/// If the lengths do not match `n`.
pub fn row_sums_plain(a: &[i8], b: &[i8], c: &[i32], r: &[i32], n: usize) -> Vec<RowSums> {
    assert_eq!(r.len(), n, "r has n entries");
    assert_eq!(b.len(), n * n, "B is n × n");
    assert_eq!(a.len(), c.len(), "A and C have the same rows × n shape");
    let wide = |v: i64| v as u64;
    let br: Vec<u64> = b
        .chunks(n.max(1))
        .map(|row| {
            row.iter().zip(r).fold(0u64, |acc, (&x, &y)| {
                acc.wrapping_add(wide(i64::from(x)).wrapping_mul(wide(i64::from(y))))
            })
        })
        .collect();
    a.chunks(n.max(1))
        .zip(c.chunks(n.max(1)))
        .map(|(a_row, c_row)| RowSums {
            product: c_row.iter().zip(r).fold(0u64, |acc, (&x, &y)| {
                acc.wrapping_add(wide(i64::from(x)).wrapping_mul(wide(i64::from(y))))
            }),
            inputs: a_row
                .iter()
                .zip(&br)
                .fold(0u64, |acc, (&x, &y)| acc.wrapping_add(wide(i64::from(x)).wrapping_mul(y))),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vector_is_deterministic_and_seed_dependent() {
        let r = check_vector(CheckSeed(7), 1000);
        assert_eq!(r, check_vector(CheckSeed(7), 1000));
        assert_eq!(r[..10], check_vector(CheckSeed(7), 10)[..]);
        let other = check_vector(CheckSeed(8), 1000);
        assert!(r.iter().zip(&other).filter(|(x, y)| x == y).count() < 5);
        // Both signs and the full range show up.
        assert!(r.iter().any(|&v| v < -(1 << 30)) && r.iter().any(|&v| v > 1 << 30));
    }

    #[test]
    fn compare_names_the_first_failing_rows() {
        let mut sums = vec![RowSums { product: 3, inputs: 3 }; 20];
        assert_eq!(compare(&sums), Ok(()));
        for i in [2, 5, 6, 7, 9, 10, 11, 12, 13, 19] {
            sums[i].product ^= 1;
        }
        let m = compare(&sums).expect_err("mismatch");
        assert_eq!(m.first_rows, [2, 5, 6, 7, 9, 10, 11, 12]);
        assert_eq!(m.failed_rows, 10);
    }

    /// A single changed element, anywhere and by any amount an `i32` allows, fails its row (for these seeds:
    /// the bound is 2⁻³² per check, so a pass here would be a bug, not bad luck).
    #[test]
    fn plain_check_passes_the_true_product_and_fails_one_changed_element() {
        let n = 24;
        let pseudo = |len: usize, s: u64| -> Vec<i8> {
            (0..len).map(|i| (splitmix64(s + i as u64) >> 56) as u8 as i8).collect()
        };
        let (a, b) = (pseudo(5 * n, 1), pseudo(n * n, 2));
        let mut c = vec![0i32; 5 * n];
        for i in 0..5 {
            for j in 0..n {
                c[i * n + j] =
                    (0..n).map(|k| i32::from(a[i * n + k]) * i32::from(b[k * n + j])).sum();
            }
        }
        for seed in 0..50u64 {
            let r = check_vector(CheckSeed(seed), n);
            assert_eq!(compare(&row_sums_plain(&a, &b, &c, &r, n)), Ok(()), "seed {seed}");
            let (row, col, bit) = ((seed % 5) as usize, (seed * 7 % n as u64) as usize, seed % 32);
            let mut bad = c.clone();
            bad[row * n + col] ^= 1 << bit;
            let m = compare(&row_sums_plain(&a, &b, &bad, &r, n)).expect_err("caught");
            assert_eq!((m.first_rows.as_slice(), m.failed_rows), (&[row as u32][..], 1));
            bad[row * n + col] = c[row * n + col].wrapping_add(i32::MIN);
            assert!(compare(&row_sums_plain(&a, &b, &bad, &r, n)).is_err(), "seed {seed}");
        }
    }
}
