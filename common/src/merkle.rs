//! ComputeChain's Merkle tree: `sha256(left ‖ right)`, the last node duplicated on odd levels, a single
//! leaf is its own root, and no leaves give 32 zero bytes. The same tree builds `compute_root` (over
//! ComputeResult leaves) and the synthetic-v1 `result_hash` (over row leaves).

use crate::{
    compute_result::ComputeResult,
    hashing::{Digest32, sha256},
    tx::{Transaction, TxType},
};

/// The Merkle root of `leaves`.
pub fn merkle_root(leaves: &[Digest32]) -> Digest32 {
    match leaves {
        [] => [0u8; 32],
        [single] => *single,
        _ => {
            let mut level: Vec<Digest32> = leaves.to_vec();
            while level.len() > 1 {
                level = level
                    .chunks(2)
                    .map(|pair| hash_pair(&pair[0], pair.get(1).unwrap_or(&pair[0])))
                    .collect();
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
pub fn hash_pair(left: &Digest32, right: &Digest32) -> Digest32 {
    let mut buf = [0u8; 64];
    buf[..32].copy_from_slice(left);
    buf[32..].copy_from_slice(right);
    sha256(buf)
}
