//! Sharding invariance: any split of any vector's rows gives the vector's leaves and result hash.

use crate::vectors;
use cpc_common::{merkle::merkle_root, synthetic::Challenge};
use cpc_kernels::{Backend, CpuBackend, Shard};
use proptest::prelude::*;
use std::sync::OnceLock;

fn backend() -> &'static CpuBackend {
    static BACKEND: OnceLock<CpuBackend> = OnceLock::new();
    BACKEND.get_or_init(|| CpuBackend::new(0).expect("thread pool"))
}

fn all() -> &'static Option<Vec<vectors::Vector>> {
    static VECTORS: OnceLock<Option<Vec<vectors::Vector>>> = OnceLock::new();
    VECTORS.get_or_init(vectors::load)
}

/// Cuts `0..n` at the given fractions (deduplicated), one shard per piece.
fn cuts(n: u32, fractions: &[f64]) -> Vec<std::ops::Range<u32>> {
    let mut points: Vec<u32> =
        fractions.iter().map(|f| (f * f64::from(n)) as u32).filter(|&p| p > 0 && p < n).collect();
    points.push(0);
    points.push(n);
    points.sort_unstable();
    points.dedup();
    points.windows(2).map(|w| w[0]..w[1]).collect()
}

fn sharded_hash(
    ch: &Challenge,
    ranges: &[std::ops::Range<u32>],
) -> (Vec<cpc_common::hashing::Digest32>, [u8; 32]) {
    let mut roots = Vec::new();
    let mut first = Vec::new();
    for t in 0..ch.iterations() {
        let mut leaves = Vec::new();
        for r in ranges {
            let shard = Shard::new(ch.clone(), t, r.clone()).expect("valid shard");
            let out = backend().run_shard(&shard, false).expect("runs");
            assert_eq!(out.leaves.len(), r.len());
            leaves.extend(out.leaves);
        }
        roots.push(merkle_root(&leaves));
        if t == 0 {
            first = leaves;
        }
    }
    (first, Challenge::combine_iterations(&roots))
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

    #[test]
    fn any_row_split_gives_the_vector(index in 0usize..64, fractions in prop::collection::vec(0.0f64..1.0, 0..8)) {
        let Some(vectors) = all() else { return Ok(()) };
        let v = &vectors[index % vectors.len()];
        let ranges = cuts(v.challenge.matrix_size(), &fractions);
        let (leaves, hash) = sharded_hash(&v.challenge, &ranges);
        prop_assert_eq!(hex::encode(hash), hex::encode(v.result_hash), "n={} ranges={:?}", v.challenge.matrix_size(), ranges);
        if let Some(want) = &v.row_leaves {
            prop_assert_eq!(&leaves, want);
        }
    }
}

#[test]
fn one_row_shards_match_whole() {
    let Some(vectors) = all() else { return };
    for v in vectors.iter().filter(|v| v.challenge.matrix_size() <= 64) {
        let n = v.challenge.matrix_size();
        let ranges: Vec<_> = (0..n).map(|r| r..r + 1).collect();
        assert_eq!(sharded_hash(&v.challenge, &ranges).1, v.result_hash, "n={n}");
    }
}
