//! Row leaves: `L_r = sha256(C[r] as little-endian i32)`. `sha2` picks the CPU's SHA extensions itself.

use cpc_common::hashing::Digest32;
use rayon::prelude::*;
use sha2::{Digest, Sha256};

/// Values converted to bytes per `update` call.
const CHUNK: usize = 512;

/// The leaf of one row of C.
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
