//! A job's leaves, placed at their row indices as verified shards come in, and the Merkle root built from
//! them once every row of every iteration is in: the result does not depend on how the job was split, in
//! which order its shards answered or who computed what.
//!
//! Plain data owned by the job it belongs to (`schedule.rs`); building the root is the only costly step
//! (one SHA-256 per leaf), so the scheduler actor hands a finished [`JobLeaves`] to a blocking thread.

use cpc_common::{hashing::Digest32, merkle::merkle_root, synthetic::Challenge};

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
}

/// One job's leaves: `iterations × n` slots, each empty until a verified shard fills it.
#[derive(Debug, Clone)]
pub struct JobLeaves {
    n: u32,
    iterations: Vec<IterationLeaves>,
}

/// One iteration's leaves. A shard that covers the whole iteration (every small job: it runs whole on one
/// device) hands its vector over as it is, so placing it copies nothing and no slot vector is ever made;
/// shards of a split job fill slots.
#[derive(Debug, Clone)]
enum IterationLeaves {
    /// Nothing placed yet.
    Empty,
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

    /// Places the leaves of rows `first..first + leaves.len()` of `iteration` (replacing any placed before).
    pub fn place(
        &mut self,
        iteration: u32,
        first: u32,
        leaves: Vec<Digest32>,
    ) -> Result<(), AggregateError> {
        let n = self.n as usize;
        let end = u64::from(first) + leaves.len() as u64;
        let out_of_range = AggregateError::OutOfRange { iteration, first, end, n: self.n };
        if end > u64::from(self.n) {
            return Err(out_of_range);
        }
        let Some(placed) = self.iterations.get_mut(iteration as usize) else {
            return Err(out_of_range);
        };
        if first == 0 && leaves.len() == n {
            *placed = IterationLeaves::Whole(leaves);
            return Ok(());
        }
        let mut slots = match std::mem::replace(placed, IterationLeaves::Empty) {
            IterationLeaves::Empty => vec![None; n],
            IterationLeaves::Whole(all) => all.into_iter().map(Some).collect(),
            IterationLeaves::Slots(slots) => slots,
        };
        for (slot, leaf) in slots[first as usize..].iter_mut().zip(leaves) {
            *slot = Some(leaf);
        }
        *placed = IterationLeaves::Slots(slots);
        Ok(())
    }

    /// Leaves of the whole job (`n × iterations`): the parents its root takes to build.
    pub fn rows(&self) -> u64 {
        u64::from(self.n) * self.iterations.len() as u64
    }

    /// The result: the Merkle root of each iteration's leaves, combined over iterations as the spec says.
    pub fn root(self) -> Result<Digest32, AggregateError> {
        let mut roots = Vec::with_capacity(self.iterations.len());
        for placed in self.iterations {
            let leaves: Vec<Digest32> = match placed {
                IterationLeaves::Empty => return Err(AggregateError::Missing(self.n.into())),
                IterationLeaves::Whole(leaves) => leaves,
                IterationLeaves::Slots(slots) => {
                    let missing = slots.iter().filter(|s| s.is_none()).count() as u64;
                    if missing > 0 {
                        return Err(AggregateError::Missing(missing));
                    }
                    slots.into_iter().flatten().collect()
                }
            };
            roots.push(merkle_root(&leaves));
        }
        Ok(Challenge::combine_iterations(&roots))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use cpc_common::hashing::sha256;

    #[test]
    fn order_of_arrival_does_not_matter() {
        let challenge = Challenge::new("agg", 5, 2).expect("challenge");
        let leaves: Vec<Digest32> = (0u8..10).map(|i| sha256([i])).collect();
        let expect =
            Challenge::combine_iterations(&[merkle_root(&leaves[..5]), merkle_root(&leaves[5..])]);
        let mut job = JobLeaves::new(&challenge);
        for (iteration, first, range) in [(1, 3, 8..10), (0, 0, 0..2), (1, 0, 5..8), (0, 2, 2..5)] {
            job.place(iteration, first, leaves[range].to_vec()).expect("placed");
        }
        assert!(job.place(0, 4, leaves[..2].to_vec()).is_err());
        assert!(job.place(2, 0, leaves[..1].to_vec()).is_err());
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
        job.place(0, 0, leaves[..4].to_vec()).expect("whole");
        job.place(0, 2, leaves[2..3].to_vec()).expect("one row over a whole iteration");
        job.place(1, 2, leaves[6..].to_vec()).expect("placed");
        assert_eq!(job.clone().root(), Err(AggregateError::Missing(2)));
        job.place(1, 0, leaves[4..6].to_vec()).expect("placed");
        assert_eq!(job.root(), Ok(expect));
        assert_eq!(JobLeaves::new(&challenge).root(), Err(AggregateError::Missing(4)));
    }

    #[test]
    fn holes_are_reported() {
        let challenge = Challenge::new("agg", 4, 1).expect("challenge");
        let mut job = JobLeaves::new(&challenge);
        job.place(0, 0, vec![[0; 32]; 3]).expect("placed");
        assert_eq!(job.root(), Err(AggregateError::Missing(1)));
    }
}
