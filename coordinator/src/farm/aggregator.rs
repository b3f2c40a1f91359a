//! The aggregator actor: places each verified shard's leaves at their row indices and, once every row of
//! every iteration is in, builds the Merkle root (and the root over iteration roots), so that the result does
//! not depend on how the job was split or who computed what.

use actix::{Actor, Context, Handler, Message};
use cpc_common::{hashing::Digest32, merkle::merkle_root, synthetic::Challenge};
use std::collections::HashMap;

/// Why a job's root could not be built.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AggregateError {
    /// The job was never opened (or already closed).
    #[error("job {0} is not open")]
    UnknownJob(u64),
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
    /// Rows without a leaf at close.
    #[error("{0} rows have no leaf")]
    Missing(u64),
}

#[derive(Debug)]
struct JobLeaves {
    n: u32,
    iterations: Vec<Vec<Option<Digest32>>>,
}

/// The aggregator actor.
#[derive(Debug, Default)]
pub struct Aggregator {
    jobs: HashMap<u64, JobLeaves>,
}

impl Actor for Aggregator {
    type Context = Context<Self>;
}

/// Starts collecting a job's leaves.
#[derive(Debug, Message)]
#[rtype(result = "()")]
pub struct OpenJob {
    /// The job.
    pub job: u64,
    /// Its challenge.
    pub challenge: Challenge,
}

impl Handler<OpenJob> for Aggregator {
    type Result = ();

    fn handle(&mut self, msg: OpenJob, _: &mut Self::Context) {
        let n = msg.challenge.matrix_size;
        let iterations = (0..msg.challenge.iterations).map(|_| vec![None; n as usize]).collect();
        self.jobs.insert(msg.job, JobLeaves { n, iterations });
    }
}

/// Leaves of rows `first..first + leaves.len()` of one iteration (replacing any placed before).
#[derive(Debug, Message)]
#[rtype(result = "Result<(), AggregateError>")]
pub struct PlaceLeaves {
    /// The job.
    pub job: u64,
    /// Which iteration.
    pub iteration: u32,
    /// Row of the first leaf.
    pub first: u32,
    /// The leaves.
    pub leaves: Vec<Digest32>,
}

impl Handler<PlaceLeaves> for Aggregator {
    type Result = Result<(), AggregateError>;

    fn handle(&mut self, msg: PlaceLeaves, _: &mut Self::Context) -> Self::Result {
        let job = self.jobs.get_mut(&msg.job).ok_or(AggregateError::UnknownJob(msg.job))?;
        let end = u64::from(msg.first) + msg.leaves.len() as u64;
        let out_of_range = || AggregateError::OutOfRange {
            iteration: msg.iteration,
            first: msg.first,
            end,
            n: job.n,
        };
        if end > u64::from(job.n) {
            return Err(out_of_range());
        }
        let Some(slots) = job.iterations.get_mut(msg.iteration as usize) else {
            return Err(out_of_range());
        };
        for (slot, leaf) in slots[msg.first as usize..].iter_mut().zip(msg.leaves) {
            *slot = Some(leaf);
        }
        Ok(())
    }
}

/// Builds a job's result and forgets it.
#[derive(Debug, Message)]
#[rtype(result = "Result<Digest32, AggregateError>")]
pub struct CloseJob {
    /// The job.
    pub job: u64,
}

impl Handler<CloseJob> for Aggregator {
    type Result = Result<Digest32, AggregateError>;

    fn handle(&mut self, msg: CloseJob, _: &mut Self::Context) -> Self::Result {
        let job = self.jobs.remove(&msg.job).ok_or(AggregateError::UnknownJob(msg.job))?;
        let mut roots = Vec::with_capacity(job.iterations.len());
        for slots in job.iterations {
            let missing = slots.iter().filter(|s| s.is_none()).count() as u64;
            if missing > 0 {
                return Err(AggregateError::Missing(missing));
            }
            let leaves: Vec<Digest32> = slots.into_iter().flatten().collect();
            roots.push(merkle_root(&leaves));
        }
        Ok(Challenge::combine_iterations(&roots))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use cpc_common::hashing::sha256;

    #[actix_rt::test]
    async fn order_of_arrival_does_not_matter() {
        let challenge = Challenge::new("agg", 5, 2).expect("challenge");
        let leaves: Vec<Digest32> = (0u8..10).map(|i| sha256([i])).collect();
        let expect =
            Challenge::combine_iterations(&[merkle_root(&leaves[..5]), merkle_root(&leaves[5..])]);
        let agg = Aggregator::default().start();
        agg.send(OpenJob { job: 1, challenge }).await.expect("open");
        for (iteration, first, range) in [(1, 3, 8..10), (0, 0, 0..2), (1, 0, 5..8), (0, 2, 2..5)] {
            let msg = PlaceLeaves { job: 1, iteration, first, leaves: leaves[range].to_vec() };
            agg.send(msg).await.expect("send").expect("placed");
        }
        let bad = PlaceLeaves { job: 1, iteration: 0, first: 4, leaves: leaves[..2].to_vec() };
        assert!(agg.send(bad).await.expect("send").is_err());
        assert_eq!(agg.send(CloseJob { job: 1 }).await.expect("send"), Ok(expect));
        assert_eq!(
            agg.send(CloseJob { job: 1 }).await.expect("send"),
            Err(AggregateError::UnknownJob(1))
        );
    }

    #[actix_rt::test]
    async fn holes_are_reported() {
        let agg = Aggregator::default().start();
        let challenge = Challenge::new("agg", 4, 1).expect("challenge");
        agg.send(OpenJob { job: 2, challenge }).await.expect("open");
        let msg = PlaceLeaves { job: 2, iteration: 0, first: 0, leaves: vec![[0; 32]; 3] };
        agg.send(msg).await.expect("send").expect("placed");
        assert_eq!(
            agg.send(CloseJob { job: 2 }).await.expect("send"),
            Err(AggregateError::Missing(1))
        );
    }
}
