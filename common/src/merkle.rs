//! ComputeChain's Merkle tree: `sha256(left ‖ right)`, the last node duplicated on odd levels, a single
//! leaf is its own root, and no leaves give 32 zero bytes. The same tree builds `compute_root` (over
//! ComputeResult leaves) and the synthetic-v1 `result_hash` (over row leaves).

use crate::{
    compute_result::ComputeResult,
    hashing::Digest32,
    tx::{Transaction, TxType},
};

/// The Merkle root of `leaves`.
///
/// A coordinator builds one for every job it finishes (n leaves, n - 1 parents: about 0.1 ms at n = 1024),
/// so the levels are built in one buffer, each parent with two direct calls of the compression function.
pub fn merkle_root(leaves: &[Digest32]) -> Digest32 {
    match leaves {
        [] => [0u8; 32],
        [single] => *single,
        _ => {
            let mut level: Vec<Digest32> = leaves.to_vec();
            while level.len() > 1 {
                let parents = level.len().div_ceil(2);
                for i in 0..parents {
                    let left = level[2 * i];
                    let right = level.get(2 * i + 1).copied().unwrap_or(left);
                    level[i] = hash_pair(&left, &right);
                }
                level.truncate(parents);
            }
            level[0]
        }
    }
}

/// A block's `compute_root`: the Merkle root over `sha256(canonical_json)` of each `SUBMIT_RESULT`
/// payload in block order, hex; `""` when the block has none. A payload the node could not have accepted
/// yields an error naming the transaction.
pub fn compute_root(txs: &[Transaction]) -> Result<String, crate::ComputeResultError> {
    let leaves = txs
        .iter()
        .filter(|tx| tx.tx_type == TxType::SubmitResult)
        .map(|tx| ComputeResult::from_payload(&tx.payload).map(|r| r.leaf()))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(if leaves.is_empty() { String::new() } else { hex::encode(merkle_root(&leaves)) })
}

/// A parent node: `sha256(left ‖ right)`.
///
/// The 64-byte message is exactly one block, and its padding the same second block every time, so this
/// runs SHA-256's compression function on the two blocks directly (the same bytes as [`sha256`] of the
/// concatenation, without a hasher's buffering).
pub fn hash_pair(left: &Digest32, right: &Digest32) -> Digest32 {
    /// SHA-256's initial state.
    const INITIAL_STATE: [u32; 8] = [
        0x6a09_e667,
        0xbb67_ae85,
        0x3c6e_f372,
        0xa54f_f53a,
        0x510e_527f,
        0x9b05_688c,
        0x1f83_d9ab,
        0x5be0_cd19,
    ];
    /// The padding of a 64-byte message: `0x80`, zeros, and the length in bits (512) big-endian.
    const PADDING: [u8; 64] = {
        let mut block = [0u8; 64];
        block[0] = 0x80;
        block[62] = 0x02;
        block
    };
    let mut message = [0u8; 64];
    message[..32].copy_from_slice(left);
    message[32..].copy_from_slice(right);
    let mut state = INITIAL_STATE;
    sha2::compress256(&mut state, &[message.into(), PADDING.into()]);
    let mut out = [0u8; 32];
    for (bytes, word) in out.chunks_exact_mut(4).zip(state) {
        bytes.copy_from_slice(&word.to_be_bytes());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hashing::sha256;

    /// The tree as the spec words it, a level at a time with a hasher.
    fn reference_root(leaves: &[Digest32]) -> Digest32 {
        match leaves {
            [] => [0u8; 32],
            [single] => *single,
            _ => {
                let mut level = leaves.to_vec();
                while level.len() > 1 {
                    level = level
                        .chunks(2)
                        .map(|pair| sha256([pair[0], *pair.get(1).unwrap_or(&pair[0])].concat()))
                        .collect();
                }
                level[0]
            }
        }
    }

    #[test]
    fn direct_compression_is_sha256_of_the_pair() {
        let left = sha256(b"left");
        let right = sha256(b"right");
        assert_eq!(hash_pair(&left, &right), sha256([left, right].concat()));
        assert_eq!(hash_pair(&[0; 32], &[0xff; 32]), sha256([[0; 32], [0xff; 32]].concat()));
    }

    #[test]
    fn in_place_levels_give_the_reference_root_at_every_count() {
        for count in 0u32..70 {
            let leaves: Vec<_> = (0..count).map(|i| sha256(i.to_le_bytes())).collect();
            assert_eq!(merkle_root(&leaves), reference_root(&leaves), "{count} leaves");
        }
    }
}
