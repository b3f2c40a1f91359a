//! Rows of C kept for spot checks, bounded by bytes, the shards whose rows a device did not keep but can
//! recompute, and the Merkle trees of shards answered by their root: what a `FetchRow` or a
//! `FetchRowProof` is answered from. Keyed by connection as well as shard id, because a coordinator
//! numbers its shards per run.

use crate::metrics as m;
use cpc_common::{hashing::Digest32, merkle::MerkleTree};
use cpc_kernels::Shard;
use std::collections::VecDeque;

/// Shards remembered for recomputing rows (descriptions only, a few hundred bytes each).
const MAX_RECOMPUTABLE_SHARDS: usize = 4096;

/// Bytes of Merkle trees kept for row proofs (the newest tree is always kept): about 64 bytes a row, so
/// 1,024 shards at n = 1024. A coordinator fetches its proofs right after the answer.
const MAX_TREE_BYTES: u64 = 64 << 20;

/// Rows of C kept for spot checks, bounded by bytes (the newest shard is always kept), and the shards whose
/// rows were not kept but can be recomputed on their device.
///
/// Entries are keyed by [`ShardKey`]: the coordinator numbers shards per run, so after a reconnect (to the
/// same coordinator or to a restarted one) the same id can name another shard. [`RowCache::begin_session`]
/// forgets every row of the previous connection, and a late shard of an old connection is never cached.
#[derive(Debug)]
pub struct RowCache {
    budget: u64,
    used: u64,
    session: u64,
    shards: VecDeque<CachedShard>,
    recomputable: VecDeque<(ShardKey, u32, Shard)>,
    trees: VecDeque<(ShardKey, u32, MerkleTree)>,
    tree_bytes: u64,
}

/// A shard as this agent knows it: the connection it came on and the coordinator's id for it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ShardKey {
    /// The agent's own number of the connection (one per session, never reused in a process).
    pub session: u64,
    /// The coordinator's id of the shard, unique within its run.
    pub shard_id: u64,
}

/// Where a row a spot check asks for comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RowSource {
    /// Held in the cache.
    Held(Vec<i32>),
    /// To be recomputed on `device` as the one-row `shard`.
    Recompute {
        /// The device that ran the shard.
        device: u32,
        /// The row, as a one-row shard of the same challenge and iteration.
        shard: Shard,
    },
    /// Neither held nor recomputable (evicted, never run here, or a row outside the shard).
    Unknown,
}

#[derive(Debug)]
struct CachedShard {
    key: ShardKey,
    first_row: u32,
    n: u32,
    rows: Vec<i32>,
}

impl RowCache {
    /// A cache holding at most `budget` bytes of rows (plus the newest shard if it alone is larger).
    pub fn new(budget: u64) -> Self {
        Self {
            budget,
            used: 0,
            session: 0,
            shards: VecDeque::new(),
            recomputable: VecDeque::new(),
            trees: VecDeque::new(),
            tree_bytes: 0,
        }
    }

    /// A new connection begins: every row of the previous one is forgotten (nobody can ask for it any more,
    /// and its shard ids may name other shards now).
    pub fn begin_session(&mut self, session: u64) {
        self.session = session;
        self.shards.clear();
        self.recomputable.clear();
        self.trees.clear();
        self.tree_bytes = 0;
        self.used = 0;
        m::row_cache_bytes(0);
    }

    /// Remembers that `shard` ran on `device` without keeping its rows.
    pub fn insert_recomputable(&mut self, key: ShardKey, device: u32, shard: Shard) {
        if key.session != self.session {
            return;
        }
        self.recomputable.push_back((key, device, shard));
        while self.recomputable.len() > MAX_RECOMPUTABLE_SHARDS {
            self.recomputable.pop_front();
        }
    }

    /// Keeps the Merkle tree of a shard answered by its root (its leaves are rows `first_row ..`), evicting
    /// the oldest once they hold more than 64 MiB (`MAX_TREE_BYTES`). Trees of an earlier connection are
    /// dropped.
    pub fn insert_tree(&mut self, key: ShardKey, first_row: u32, tree: MerkleTree) {
        if key.session != self.session {
            return;
        }
        let entry = (key, first_row, tree);
        push_bounded(&mut self.trees, &mut self.tree_bytes, MAX_TREE_BYTES, entry, |(_, _, t)| {
            t.bytes()
        });
    }

    /// The Merkle path of row `row` (absolute) of shard `key`, if its tree is still held.
    pub fn path(&self, key: ShardKey, row: u32) -> Option<Vec<Digest32>> {
        let (_, first_row, tree) = self.trees.iter().rev().find(|(k, _, _)| *k == key)?;
        tree.path(row.checked_sub(*first_row)? as usize)
    }

    /// Where row `row` (absolute) of shard `key` can be had.
    pub fn source(&self, key: ShardKey, row: u32) -> RowSource {
        if let Some(values) = self.get(key, row) {
            return RowSource::Held(values);
        }
        let found = self.recomputable.iter().rev().find(|(k, _, _)| *k == key);
        match found {
            Some((_, device, shard)) if shard.rows.contains(&row) => {
                match Shard::new(shard.challenge.clone(), shard.iteration, row..row + 1) {
                    Ok(one) => RowSource::Recompute { device: *device, shard: one },
                    Err(_) => RowSource::Unknown,
                }
            }
            _ => RowSource::Unknown,
        }
    }

    /// Keeps the rows (row-major, `n` values a row) of a shard, evicting the oldest beyond the budget.
    /// Rows of a shard from an earlier connection are dropped.
    pub fn insert(&mut self, key: ShardKey, first_row: u32, n: u32, rows: Vec<i32>) {
        if key.session != self.session {
            return;
        }
        let entry = CachedShard { key, first_row, n, rows };
        push_bounded(&mut self.shards, &mut self.used, self.budget, entry, |s| {
            s.rows.len() as u64 * 4
        });
        m::row_cache_bytes(self.used);
    }

    /// Row `row` (absolute) of shard `key`, if still held.
    pub fn get(&self, key: ShardKey, row: u32) -> Option<Vec<i32>> {
        let s = self.shards.iter().find(|s| s.key == key)?;
        let i = row.checked_sub(s.first_row)? as usize;
        let n = s.n as usize;
        s.rows.get(i * n..(i + 1) * n).map(<[i32]>::to_vec)
    }

    /// Bytes held.
    pub fn used_bytes(&self) -> u64 {
        self.used
    }
}

/// Appends `entry` to `queue`, whose entries hold `used` bytes in all (`bytes` of each), then drops the
/// oldest while `used` exceeds `budget`, always keeping the newest.
fn push_bounded<T>(
    queue: &mut VecDeque<T>,
    used: &mut u64,
    budget: u64,
    entry: T,
    bytes: impl Fn(&T) -> u64,
) {
    *used += bytes(&entry);
    queue.push_back(entry);
    while *used > budget && queue.len() > 1 {
        if let Some(old) = queue.pop_front() {
            *used -= bytes(&old);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cache_is_bounded_and_keeps_the_newest() {
        let key = |shard_id| ShardKey { session: 0, shard_id };
        let mut c = RowCache::new(64);
        c.insert(key(1), 10, 2, vec![1, 2, 3, 4]); // 16 bytes
        c.insert(key(2), 0, 2, vec![5; 12]); // 48 bytes
        assert_eq!(c.get(key(1), 11), Some(vec![3, 4]));
        assert_eq!(c.get(key(1), 12), None);
        assert_eq!(c.get(key(1), 9), None);
        c.insert(key(3), 0, 4, vec![7; 40]); // 160 bytes: alone over budget, still kept
        assert_eq!(c.get(key(1), 10), None);
        assert_eq!(c.get(key(2), 0), None);
        assert_eq!(c.get(key(3), 9), Some(vec![7; 4]));
        assert_eq!(c.used_bytes(), 160);
    }

    /// The defect a coordinator restart exposed: shard ids start again at 1, and rows cached for the old
    /// connection's shard 1 were served for the new connection's shard 1.
    #[test]
    fn rows_of_an_earlier_connection_are_never_served() {
        let mut c = RowCache::new(1 << 20);
        c.begin_session(1);
        let old = ShardKey { session: 1, shard_id: 1 };
        c.insert(old, 0, 2, vec![1, 2, 3, 4]);
        assert_eq!(c.get(old, 1), Some(vec![3, 4]));
        c.begin_session(2);
        let new = ShardKey { session: 2, shard_id: 1 };
        assert_eq!(c.get(new, 1), None);
        assert_eq!(c.source(new, 1), RowSource::Unknown);
        assert_eq!(c.used_bytes(), 0);
        // A shard of the old connection that finishes late is not cached for the new one.
        c.insert(old, 0, 2, vec![9, 9, 9, 9]);
        assert_eq!(c.get(new, 0), None);
        assert_eq!(c.used_bytes(), 0);
        c.insert(new, 0, 2, vec![5, 6, 7, 8]);
        assert_eq!(c.get(new, 1), Some(vec![7, 8]));
    }

    #[test]
    fn trees_give_paths_of_their_own_connection_and_rows() {
        let leaves: Vec<Digest32> = (0u8..5).map(|i| [i; 32]).collect();
        let tree = MerkleTree::new(leaves.clone());
        let mut c = RowCache::new(0);
        c.begin_session(1);
        let key = ShardKey { session: 1, shard_id: 7 };
        c.insert_tree(key, 10, tree.clone());
        assert_eq!(c.path(key, 13), tree.path(3));
        assert_eq!(c.path(key, 9), None);
        assert_eq!(c.path(key, 15), None);
        assert_eq!(c.path(ShardKey { session: 1, shard_id: 8 }, 10), None);
        c.begin_session(2);
        assert_eq!(c.path(ShardKey { session: 2, shard_id: 7 }, 13), None);
        c.insert_tree(key, 10, tree);
        assert_eq!(c.path(key, 13), None, "a late shard of the old connection is not kept");
    }
}
