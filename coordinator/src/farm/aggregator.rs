//! A job's leaves, placed at their row indices as verified shards come in, and the Merkle root built from
//! them once every row of every iteration is in: the result does not depend on how the job was split, in
//! which order its shards answered or who computed what. A shard that covered a whole iteration may have
//! answered that iteration's root instead of its leaves (its agent built it; the spot checks proved rows
//! against it), which is placed as it is.
//!
//! Plain data owned by the job it belongs to (`schedule.rs`); building the root is the only costly step
//! (one SHA-256 per leaf still to hash), so the scheduler actor hands a finished [`JobLeaves`] with many
//! of them to a blocking thread, which splits a large iteration's tree over the host's cores.

use cpc_common::{hashing::Digest32, merkle::merkle_root_on_threads, synthetic::Challenge};
use std::{num::NonZeroUsize, sync::OnceLock};

/// Why leaves could not be placed or a root built.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AggregateError {
    /// Leaves outside the matrix.
    #[error("leaves for rows {first}..{end} of iteration {iteration} do not fit n={n}")]
    OutOfRange {
        /// Iteration.
        iteration: u32,
        /// First row.
        first: u32,
        /// One past the last row.
        end: u64,
        /// n.
        n: u32,
    },
    /// Rows without a leaf at the end.
    #[error("{0} rows have no leaf")]
    Missing(u64),
    /// A root offered for part of an iteration.
    #[error("a root for rows {first}.. of iteration {iteration}: only a whole iteration has one")]
    RootOfPart {
        /// Iteration.
        iteration: u32,
        /// First row.
        first: u32,
    },
}

/// What a verified shard gives its job.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ShardResult {
    /// `sha256` of each of its rows, in row order.
    Leaves(Vec<Digest32>),
    /// The Merkle root of a whole iteration's leaves.
    Root(Digest32),
}

/// One job's leaves: `iterations × n` slots, each empty until a verified shard fills it.
#[derive(Debug, Clone)]
pub struct JobLeaves {
    n: u32,
    iterations: Vec<IterationLeaves>,
}

/// One iteration's leaves. A shard that covers the whole iteration (every small job: it runs whole on one
/// device) hands over its root, or its vector as it is, so placing it copies nothing and no slot vector is
/// ever made; shards of a split job fill slots.
#[derive(Debug, Clone)]
enum IterationLeaves {
    /// Nothing placed yet.
    Empty,
    /// The iteration's root, from one shard.
    Root(Digest32),
    /// Every row, from one shard.
    Whole(Vec<Digest32>),
    /// Some rows, by slot.
    Slots(Vec<Option<Digest32>>),
}

impl JobLeaves {
    /// Empty slots for every row of every iteration of `challenge`.
    pub fn new(challenge: &Challenge) -> Self {
        let n = challenge.matrix_size();
        let iterations = (0..challenge.iterations()).map(|_| IterationLeaves::Empty).collect();
        Self { n, iterations }
    }

    /// Places what a shard of `iteration` starting at row `first` gave: its leaves, rows
    /// `first..first + leaves.len()`, or the whole iteration's root (`first` 0). Replaces whatever was placed
    /// for those rows before.
    pub fn place(
        &mut self,
        iteration: u32,
        first: u32,
        result: ShardResult,
    ) -> Result<(), AggregateError> {
        let n = self.n as usize;
        let end = match &result {
            ShardResult::Leaves(leaves) => u64::from(first) + leaves.len() as u64,
            ShardResult::Root(_) if first != 0 => {
                return Err(AggregateError::RootOfPart { iteration, first });
            }
            ShardResult::Root(_) => u64::from(self.n),
        };
        let out_of_range = AggregateError::OutOfRange { iteration, first, end, n: self.n };
        if end > u64::from(self.n) {
            return Err(out_of_range);
        }
        let Some(placed) = self.iterations.get_mut(iteration as usize) else {
            return Err(out_of_range);
        };
        let leaves = match result {
            ShardResult::Root(root) => {
                *placed = IterationLeaves::Root(root);
                return Ok(());
            }
            ShardResult::Leaves(leaves) if first == 0 && leaves.len() == n => {
                *placed = IterationLeaves::Whole(leaves);
                return Ok(());
            }
            ShardResult::Leaves(leaves) => leaves,
        };
        let mut slots = match std::mem::replace(placed, IterationLeaves::Empty) {
            // Rows of an iteration placed whole by its root are not known one by one: the new rows begin
            // the slots again (a job's units never mix the two: an iteration is one unit or many).
            IterationLeaves::Empty | IterationLeaves::Root(_) => vec![None; n],
            IterationLeaves::Whole(all) => all.into_iter().map(Some).collect(),
            IterationLeaves::Slots(slots) => slots,
        };
        for (slot, leaf) in slots[first as usize..].iter_mut().zip(leaves) {
            *slot = Some(leaf);
        }
        *placed = IterationLeaves::Slots(slots);
        Ok(())
    }

    /// Leaves still to be hashed into the job's root (about as many parents to build): none for an
    /// iteration placed by its root.
    pub fn leaves_to_hash(&self) -> u64 {
        let per_iteration = |placed: &IterationLeaves| match placed {
            IterationLeaves::Root(_) => 0,
            _ => u64::from(self.n),
        };
        self.iterations.iter().map(per_iteration).sum()
    }

    /// The result: the Merkle root of each iteration's leaves, combined over iterations as the spec says.
    pub fn root(self) -> Result<Digest32, AggregateError> {
        let mut roots = Vec::with_capacity(self.iterations.len());
        for placed in self.iterations {
            let leaves: Vec<Digest32> = match placed {
                IterationLeaves::Empty => return Err(AggregateError::Missing(self.n.into())),
                IterationLeaves::Root(root) => {
                    roots.push(root);
                    continue;
                }
                IterationLeaves::Whole(leaves) => leaves,
                IterationLeaves::Slots(slots) => {
                    let missing = slots.iter().filter(|s| s.is_none()).count() as u64;
                    if missing > 0 {
                        return Err(AggregateError::Missing(missing));
                    }
                    slots.into_iter().flatten().collect()
                }
            };
            roots.push(merkle_root_on_threads(&leaves, root_threads()));
        }
        Ok(Challenge::combine_iterations(&roots))
    }
}

/// Threads a large iteration's tree is split over: the host's cores (its root is the last step before the
/// job's result, while its block waits). Read once: `available_parallelism` reads the cgroup's quota from
/// files, far more than a small job's root costs.
fn root_threads() -> usize {
    static THREADS: OnceLock<usize> = OnceLock::new();
    *THREADS.get_or_init(|| std::thread::available_parallelism().map_or(1, NonZeroUsize::get))
}

#[cfg(test)]
mod tests {
    use super::*;
    use cpc_common::{hashing::sha256, merkle::merkle_root};

    /// An iteration large enough to be split over threads, placed by shards of uneven sizes, gives the
    /// tree's root.
    #[test]
    fn a_large_iteration_s_root_is_the_tree_s_root() {
        let n = 9000;
        let challenge = Challenge::new("agg-large", n, 1).expect("challenge");
        let leaves: Vec<Digest32> = (0..n).map(|i| sha256(i.to_le_bytes())).collect();
        let mut job = JobLeaves::new(&challenge);
        for (first, end) in [(5000, 9000), (0, 1234), (1234, 5000)] {
            let part = leaves[first as usize..end as usize].to_vec();
            job.place(0, first, ShardResult::Leaves(part)).expect("placed");
        }
        assert_eq!(job.root(), Ok(Challenge::combine_iterations(&[merkle_root(&leaves)])));
    }

    #[test]
    fn order_of_arrival_does_not_matter() {
        let challenge = Challenge::new("agg", 5, 2).expect("challenge");
        let leaves: Vec<Digest32> = (0u8..10).map(|i| sha256([i])).collect();
        let expect =
            Challenge::combine_iterations(&[merkle_root(&leaves[..5]), merkle_root(&leaves[5..])]);
        let mut job = JobLeaves::new(&challenge);
        for (iteration, first, range) in [(1, 3, 8..10), (0, 0, 0..2), (1, 0, 5..8), (0, 2, 2..5)] {
            job.place(iteration, first, ShardResult::Leaves(leaves[range].to_vec()))
                .expect("placed");
        }
        assert!(job.place(0, 4, ShardResult::Leaves(leaves[..2].to_vec())).is_err());
        assert!(job.place(2, 0, ShardResult::Leaves(leaves[..1].to_vec())).is_err());
        assert_eq!(job.root(), Ok(expect));
    }

    #[test]
    fn a_whole_iteration_and_slots_mix() {
        let challenge = Challenge::new("agg", 4, 2).expect("challenge");
        let leaves: Vec<Digest32> = (0u8..8).map(|i| sha256([i])).collect();
        let expect =
            Challenge::combine_iterations(&[merkle_root(&leaves[..4]), merkle_root(&leaves[4..])]);
        let mut job = JobLeaves::new(&challenge);
        // Iteration 0 whole, then one row of it again (a twin's answer); iteration 1 in two shards.
        job.place(0, 0, ShardResult::Leaves(leaves[..4].to_vec())).expect("whole");
        job.place(0, 2, ShardResult::Leaves(leaves[2..3].to_vec()))
            .expect("one row over a whole iteration");
        job.place(1, 2, ShardResult::Leaves(leaves[6..].to_vec())).expect("placed");
        assert_eq!(job.clone().root(), Err(AggregateError::Missing(2)));
        job.place(1, 0, ShardResult::Leaves(leaves[4..6].to_vec())).expect("placed");
        assert_eq!(job.root(), Ok(expect));
        assert_eq!(JobLeaves::new(&challenge).root(), Err(AggregateError::Missing(4)));
    }

    /// An iteration answered by its root is placed as it is; roots of parts of an iteration are refused.
    #[test]
    fn a_whole_iteration_s_root_needs_no_hashing() {
        let challenge = Challenge::new("agg", 4, 2).expect("challenge");
        let leaves: Vec<Digest32> = (0u8..8).map(|i| sha256([i])).collect();
        let roots = [merkle_root(&leaves[..4]), merkle_root(&leaves[4..])];
        let mut job = JobLeaves::new(&challenge);
        assert_eq!(job.leaves_to_hash(), 8);
        job.place(0, 0, ShardResult::Root(roots[0])).expect("root");
        assert_eq!(job.leaves_to_hash(), 4);
        assert_eq!(
            job.place(1, 2, ShardResult::Root(roots[1])),
            Err(AggregateError::RootOfPart { iteration: 1, first: 2 })
        );
        assert!(job.place(2, 0, ShardResult::Root(roots[1])).is_err());
        job.place(1, 0, ShardResult::Leaves(leaves[4..].to_vec())).expect("leaves");
        assert_eq!(job.clone().root(), Ok(Challenge::combine_iterations(&roots)));
        job.place(1, 0, ShardResult::Root(roots[1])).expect("root over leaves");
        assert_eq!(job.leaves_to_hash(), 0);
        assert_eq!(job.root(), Ok(Challenge::combine_iterations(&roots)));
    }

    #[test]
    fn holes_are_reported() {
        let challenge = Challenge::new("agg", 4, 1).expect("challenge");
        let mut job = JobLeaves::new(&challenge);
        job.place(0, 0, ShardResult::Leaves(vec![[0; 32]; 3])).expect("placed");
        assert_eq!(job.root(), Err(AggregateError::Missing(1)));
    }
}
