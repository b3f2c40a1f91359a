//! Row leaves: `L_r = sha256(C[r] as little-endian i32)`. `sha2` picks the CPU's SHA extensions (SHA-NI)
//! itself at run time.

use cpc_common::hashing::Digest32;
use rayon::prelude::*;
use sha2::{Digest, Sha256};

/// Values converted to bytes per `update` call (big-endian targets).
#[cfg_attr(target_endian = "little", allow(dead_code))]
const CHUNK: usize = 512;

/// The leaf of one row of C.
///
/// On little-endian targets the row's memory already is its little-endian encoding, so it is hashed in
/// place (no copy: with a VNNI GEMM, hashing is a third of the CPU backend's time and every pass over C
/// shows); elsewhere the values are converted [`CHUNK`] at a time.
#[cfg(target_endian = "little")]
pub fn hash_row(row: &[i32]) -> Digest32 {
    // SAFETY: an `i32` slice is `4 · len` initialised bytes with no padding, and `u8` has alignment 1, so
    // viewing the same memory as bytes for the slice's lifetime is sound; on a little-endian target those
    // bytes are exactly `v.to_le_bytes()` for each value in order.
    let bytes = unsafe { std::slice::from_raw_parts(row.as_ptr().cast::<u8>(), size_of_val(row)) };
    Sha256::digest(bytes).into()
}

/// The leaf of one row of C (big-endian targets: converted [`CHUNK`] values at a time).
#[cfg(not(target_endian = "little"))]
pub fn hash_row(row: &[i32]) -> Digest32 {
    let mut hasher = Sha256::new();
    let mut buf = [0u8; 4 * CHUNK];
    for values in row.chunks(CHUNK) {
        for (dst, v) in buf.as_chunks_mut::<4>().0.iter_mut().zip(values) {
            *dst = v.to_le_bytes();
        }
        hasher.update(&buf[..4 * values.len()]);
    }
    hasher.finalize().into()
}

/// The leaves of every row of a row-major matrix with `n` columns, in parallel on the current rayon pool.
pub fn hash_rows(c: &[i32], n: usize) -> Vec<Digest32> {
    c.par_chunks(n.max(1)).map(hash_row).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_plain_sha256() {
        let row: Vec<i32> = (0..1500).map(|i| i * 7919 - 3_000_000).collect();
        let bytes: Vec<u8> = row.iter().flat_map(|v| v.to_le_bytes()).collect();
        assert_eq!(hash_row(&row), cpc_common::sha256(&bytes));
        assert_eq!(hash_rows(&row, 500)[2], cpc_common::sha256(&bytes[4000..6000]));
    }
}
