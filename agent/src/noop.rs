//! A backend that computes nothing, for benchmarks of the farm's transport and scheduling: it answers the
//! right number of leaves (each the hash of an all-zero row) at once, so that shard rates measure the
//! coordinator, QUIC and the agents rather than matrix products. Its results are wrong by design: run it only
//! with spot checks off.

use cpc_common::{
    hashing::{Digest32, sha256},
    merkle::MerkleTree,
};
use cpc_kernels::{
    Backend, BackendError, BackendKind, CancelToken, DeviceInfo, Shard, ShardOutput,
};
use std::time::Duration;

/// The no-op backend.
#[derive(Debug, Clone, Default)]
pub struct NoopBackend;

impl Backend for NoopBackend {
    fn name(&self) -> &str {
        "noop"
    }

    fn info(&self) -> DeviceInfo {
        DeviceInfo {
            name: "no-op".into(),
            kind: BackendKind::Cpu,
            memory_bytes: u64::MAX,
            compute_units: 1,
        }
    }

    fn kind_name(&self) -> &'static str {
        "noop"
    }

    /// Up to n = 4096, where the one row it hashes (4·n bytes) takes a few microseconds: less than handing
    /// the shard to the device's thread and back. It holds nothing.
    fn answers_at_once(&self, shard: &Shard) -> Option<Duration> {
        (shard.challenge.matrix_size() <= 4096).then_some(Duration::ZERO)
    }

    /// Its leaves are all equal: no leaf is made, and the tree comes from the cache
    /// (`simulated::made_up_tree`).
    fn run_shard_for_root(
        &self,
        shard: &Shard,
        keep_rows: bool,
        _cancel: &CancelToken,
    ) -> Result<(ShardOutput, MerkleTree), BackendError> {
        shard.validate()?;
        Ok(crate::simulated::made_up_tree(shard, zero_leaf(shard), keep_rows))
    }

    fn run_shard(&self, shard: &Shard, keep_rows: bool) -> Result<ShardOutput, BackendError> {
        shard.validate()?;
        Ok(crate::simulated::made_up_leaves(shard, zero_leaf(shard), keep_rows))
    }
}

/// The hash of one all-zero row of `shard`'s size.
fn zero_leaf(shard: &Shard) -> Digest32 {
    sha256(vec![0u8; 4 * shard.challenge.matrix_size() as usize])
}

#[cfg(test)]
mod tests {
    use super::*;
    use cpc_common::synthetic::Challenge;

    fn shard(n: u32) -> Shard {
        Shard::new(Challenge::new("noop", n, 1).expect("challenge"), 0, 0..n).expect("shard")
    }

    #[test]
    fn answers_small_sizes_at_once_with_the_tree_of_its_leaves() {
        assert_eq!(NoopBackend.answers_at_once(&shard(1024)), Some(Duration::ZERO));
        assert_eq!(NoopBackend.answers_at_once(&shard(4096)), Some(Duration::ZERO));
        assert_eq!(NoopBackend.answers_at_once(&shard(8192)), None);
        let leaves = NoopBackend.run_shard(&shard(64), false).expect("run").leaves;
        assert_eq!(leaves, vec![sha256(vec![0u8; 4 * 64]); 64]);
        let (output, cheap) =
            NoopBackend.run_shard_for_root(&shard(64), false, &CancelToken::new()).expect("run");
        assert!(output.leaves.is_empty());
        let built = MerkleTree::new(leaves);
        assert_eq!(cheap.root(), built.root());
        assert!((0..64).all(|row| cheap.path(row) == built.path(row)), "the same paths");
    }
}
