//! ComputeChain's Merkle tree: `sha256(left ‖ right)`, the last node duplicated on odd levels, a single
//! leaf is its own root, and no leaves give 32 zero bytes. The same tree builds `compute_root` (over
//! ComputeResult leaves) and the synthetic-v1 `result_hash` (over row leaves).

use crate::{
    compute_result::ComputeResult,
    hashing::Digest32,
    tx::{Transaction, TxType},
};
use std::sync::Arc;

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
                    // Reads nodes 2i and 2i + 1, never below i: those are still this level's.
                    level[i] = parent(&level, i);
                }
                level.truncate(parents);
            }
            level[0]
        }
    }
}

/// Leaves per thread below which [`merkle_root_on_threads`] does not split the work: hashing 4,096 leaves
/// takes about half a millisecond, many times a thread's start.
pub const LEAVES_PER_THREAD: usize = 4096;

/// [`merkle_root`] on up to `threads` threads: the subtrees of equal power-of-two size below the top of the
/// tree, each on a thread of its own, then the few levels above them here. A coordinator builds the root of
/// each large sharded job as its last step, while the job's block waits (at n = 16,384 that is 16,383
/// hashes, about 1.5 ms on one core). Fewer than `2 × LEAVES_PER_THREAD` leaves take one thread.
pub fn merkle_root_on_threads(leaves: &[Digest32], threads: usize) -> Digest32 {
    let threads = threads.min(leaves.len() / LEAVES_PER_THREAD);
    if threads < 2 {
        return merkle_root(leaves);
    }
    let chunk = leaves.len().div_ceil(threads).next_power_of_two();
    let level = chunk.trailing_zeros();
    let nodes: Vec<Digest32> = std::thread::scope(|scope| {
        let subtrees: Vec<_> = leaves
            .chunks(chunk)
            .map(|under| scope.spawn(move || node_at_level(under, level)))
            .collect();
        subtrees
            .into_iter()
            .map(|subtree| subtree.join().unwrap_or_else(|panic| std::panic::resume_unwind(panic)))
            .collect()
    });
    // At least two subtrees (`chunk` < the leaves): the tree's levels above `level` are built over them.
    merkle_root(&nodes)
}

/// The node at `level` over `leaves`, the leaves under one node of that level: `2^level` of them, or fewer
/// under the last node of a level, which the tree builds by pairing each level's last odd node with itself
/// all the way up.
fn node_at_level(leaves: &[Digest32], level: u32) -> Digest32 {
    let mut node = merkle_root(leaves);
    let mut height = leaves.len().next_power_of_two().trailing_zeros();
    while height < level {
        node = hash_pair(&node, &node);
        height += 1;
    }
    node
}

/// The parent of nodes `2i` and `2i + 1` of `level`: the last node of an odd level pairs with itself.
fn parent(level: &[Digest32], i: usize) -> Digest32 {
    let left = &level[2 * i];
    hash_pair(left, level.get(2 * i + 1).unwrap_or(left))
}

/// A Merkle tree with every level kept (the same tree as [`merkle_root`]): what an agent holds for a shard
/// it answered by its root alone, so that a spot check's row path ([`MerkleTree::path`]) is read off in
/// `log₂ n` steps instead of a rebuild of the tree. About twice the leaves' bytes; a tree of equal leaves
/// ([`MerkleTree::uniform`]) keeps one node per level, shared by its clones.
#[derive(Debug, Clone)]
pub struct MerkleTree {
    shape: Shape,
}

#[derive(Debug, Clone)]
enum Shape {
    /// `levels[0]` the leaves, each next level the parents of the one before, the last the root alone.
    Levels(Vec<Vec<Digest32>>),
    /// `count` equal leaves: every node of level `h` is `nodes[h]`. Shared: a stand-in device answers
    /// thousands of shards a second with clones of one such tree, and each clone is kept for spot checks.
    Uniform { count: usize, nodes: Arc<[Digest32]> },
}

impl MerkleTree {
    /// Builds every level over `leaves`.
    pub fn new(leaves: Vec<Digest32>) -> Self {
        let mut levels = vec![leaves];
        while let Some(level) = levels.last().filter(|l| l.len() > 1) {
            let parents = (0..level.len().div_ceil(2)).map(|i| parent(level, i)).collect();
            levels.push(parents);
        }
        Self { shape: Shape::Levels(levels) }
    }

    /// The tree of `count` copies of `leaf`, in `log₂ count` hashes and as many nodes: every level's nodes
    /// are equal (an odd level's last node pairs with its equal self). The same root and paths as
    /// [`MerkleTree::new`] of `vec![leaf; count]`.
    pub fn uniform(leaf: Digest32, count: usize) -> Self {
        let mut nodes = vec![leaf];
        let (mut node, mut width) = (leaf, count);
        while width > 1 {
            node = hash_pair(&node, &node);
            width = width.div_ceil(2);
            nodes.push(node);
        }
        Self { shape: Shape::Uniform { count, nodes: nodes.into() } }
    }

    /// The root: 32 zero bytes without leaves, a single leaf itself.
    pub fn root(&self) -> Digest32 {
        if self.leaf_count() == 0 {
            return [0u8; 32];
        }
        let top = match &self.shape {
            Shape::Levels(levels) => levels.last().and_then(|top| top.first()),
            Shape::Uniform { nodes, .. } => nodes.last(),
        };
        top.copied().unwrap_or([0u8; 32])
    }

    /// How many leaves.
    pub fn leaf_count(&self) -> usize {
        match &self.shape {
            Shape::Levels(levels) => levels.first().map_or(0, Vec::len),
            Shape::Uniform { count, .. } => *count,
        }
    }

    /// Bytes the tree holds (a uniform tree's shared nodes counted in full).
    pub fn bytes(&self) -> u64 {
        match &self.shape {
            Shape::Levels(levels) => levels.iter().map(|l| l.len() as u64 * 32).sum(),
            Shape::Uniform { nodes, .. } => nodes.len() as u64 * 32,
        }
    }

    /// The Merkle path of leaf `index`: the sibling of its node on every level, leaf level first (on an
    /// odd level's last node, the node itself: the tree duplicates it); empty for a single leaf. With the
    /// leaf, its index and the leaf count, the path rebuilds the root ([`root_from_path`]). `None` past
    /// the last leaf.
    pub fn path(&self, index: usize) -> Option<Vec<Digest32>> {
        if index >= self.leaf_count() {
            return None;
        }
        Some(match &self.shape {
            Shape::Levels(levels) => {
                let below_root = &levels[..levels.len() - 1];
                let path = below_root.iter().enumerate().map(|(height, level)| {
                    let at = index >> height;
                    level.get(at ^ 1).copied().unwrap_or(level[at])
                });
                path.collect()
            }
            Shape::Uniform { nodes, .. } => nodes[..nodes.len() - 1].to_vec(),
        })
    }
}

/// The root that `leaf` at `index` of `count` leaves and its `path` ([`MerkleTree::path`]) give; `None` when
/// the path cannot belong to such a tree: the wrong length, an index out of range, or a sibling that the
/// tree's rule says must be the node itself (an odd level's last node) and is not. The caller compares the
/// result with the root it was given.
pub fn root_from_path(
    leaf: &Digest32,
    index: usize,
    count: usize,
    path: &[Digest32],
) -> Option<Digest32> {
    if index >= count {
        return None;
    }
    let (mut node, mut at, mut width) = (*leaf, index, count);
    let mut siblings = path.iter();
    while width > 1 {
        let sibling = siblings.next()?;
        node = if at % 2 == 1 {
            hash_pair(sibling, &node)
        } else if at + 1 == width {
            // The last node of an odd level pairs with itself.
            if sibling != &node {
                return None;
            }
            hash_pair(&node, &node)
        } else {
            hash_pair(&node, sibling)
        };
        at /= 2;
        width = width.div_ceil(2);
    }
    siblings.next().is_none().then_some(node)
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
/// runs SHA-256's compression function on the two blocks directly (the same bytes as
/// [`sha256`](crate::hashing::sha256) of the concatenation, without a hasher's buffering).
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

    /// Split over threads, the root is the same for every count of leaves, the last subtree full or not,
    /// a single leaf beyond a power of two included.
    #[test]
    fn the_root_on_threads_is_the_root() {
        let leaves: Vec<_> = (0u32..20_000).map(|i| sha256(i.to_le_bytes())).collect();
        for count in [0, 1, 2, 8191, 8192, 8193, 12_000, 16_384, 16_385, 20_000] {
            for threads in [0, 1, 2, 3, 8] {
                assert_eq!(
                    merkle_root_on_threads(&leaves[..count], threads),
                    merkle_root(&leaves[..count]),
                    "{count} leaves on {threads} threads"
                );
            }
        }
        // The node of a last, partial subtree, at every height up to its level.
        for count in 1..=9 {
            let under = &leaves[..count];
            for level in count.next_power_of_two().trailing_zeros()..6 {
                // Built level by level, each level's lone last node paired with itself.
                let mut nodes = under.to_vec();
                for _ in 0..level {
                    nodes = nodes
                        .chunks(2)
                        .map(|p| hash_pair(&p[0], p.get(1).unwrap_or(&p[0])))
                        .collect();
                }
                assert_eq!(node_at_level(under, level), nodes[0], "{count} leaves, level {level}");
            }
        }
    }

    #[test]
    fn every_leaf_s_path_gives_the_root_and_nothing_else_does() {
        for count in 1u32..40 {
            let leaves: Vec<_> = (0..count).map(|i| sha256(i.to_le_bytes())).collect();
            let root = merkle_root(&leaves);
            let tree = MerkleTree::new(leaves.clone());
            assert_eq!(tree.root(), root, "{count} leaves");
            let count = leaves.len();
            assert_eq!(tree.path(count), None);
            for (index, leaf) in leaves.iter().enumerate() {
                let path = tree.path(index).expect("a leaf's path");
                assert_eq!(
                    root_from_path(leaf, index, count, &path),
                    Some(root),
                    "{index}/{count}"
                );
                // Another leaf, index or count, a changed sibling, a path too short or too long.
                let other = sha256(b"other");
                assert_ne!(root_from_path(&other, index, count, &path), Some(root));
                if count > 1 {
                    let moved = (index + 1) % count;
                    assert_ne!(root_from_path(leaf, moved, count, &path), Some(root), "{index}");
                    let mut bent = path.clone();
                    bent[0][0] ^= 1;
                    assert_ne!(root_from_path(leaf, index, count, &bent), Some(root));
                    assert_eq!(root_from_path(leaf, index, count, &path[1..]), None);
                }
                let mut long = path.clone();
                long.push(other);
                assert_eq!(root_from_path(leaf, index, count, &long), None);
                assert_eq!(root_from_path(leaf, count, count, &path), None);
            }
        }
    }

    /// A tree that paired an odd level's last node with something other than itself has another root: a
    /// path claiming such a sibling is refused, not merely compared.
    #[test]
    fn an_odd_level_s_last_node_pairs_only_with_itself() {
        let leaves: Vec<_> = (0u8..3).map(|i| sha256([i])).collect();
        let forged = sha256(b"forged");
        let path = vec![forged, hash_pair(&leaves[0], &leaves[1])];
        assert_eq!(root_from_path(&leaves[2], 2, 3, &path), None);
        assert_eq!(MerkleTree::new(leaves.clone()).path(2).expect("path")[0], leaves[2]);
        assert_eq!(MerkleTree::new(vec![]).root(), [0; 32]);
        assert_eq!(MerkleTree::new(vec![leaves[1]]).path(0), Some(vec![]));
    }

    #[test]
    fn a_uniform_tree_is_the_tree_of_equal_leaves() {
        let leaf = sha256(b"zero row");
        for count in 0..70 {
            let (uniform, built) =
                (MerkleTree::uniform(leaf, count), MerkleTree::new(vec![leaf; count]));
            assert_eq!(uniform.root(), built.root(), "{count}");
            assert_eq!(uniform.leaf_count(), count);
            for index in 0..=count {
                assert_eq!(uniform.path(index), built.path(index), "{index} of {count}");
            }
            assert!(uniform.bytes() <= 32 * 8, "{count}: one node a level");
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
