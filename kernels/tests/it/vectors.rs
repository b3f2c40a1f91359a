//! The synthetic-v1 vectors (`synthetic_v1.json`), parsed.

use cpc_common::{hashing::Digest32, synthetic::Challenge};
use cpc_kernels::{Backend, Shard, ShardOutput, result_hash};
use serde_json::Value;

/// One sampled element: `A[row][col]`, `B[row][col]` and `C[row][col]` of iteration 0.
#[derive(Debug, Clone)]
pub(crate) struct Sample {
    pub(crate) row: u32,
    pub(crate) col: u32,
    pub(crate) a: i8,
    pub(crate) b: i8,
    pub(crate) c: i32,
}

/// One vector: a block task (with block hash, worker, task id) or a bare validator-style challenge.
#[derive(Debug, Clone)]
pub(crate) struct Vector {
    pub(crate) block: Option<(String, String, String)>,
    pub(crate) challenge: Challenge,
    pub(crate) result_hash: Digest32,
    pub(crate) samples: Vec<Sample>,
    pub(crate) row_leaves: Option<Vec<Digest32>>,
}

fn digest(v: &Value) -> Digest32 {
    cpc_common::hashing::digest_from_hex(v.as_str().expect("hex string"))
        .expect("64 hex characters")
}

fn int(v: &Value, key: &str) -> i64 {
    v[key].as_i64().unwrap_or_else(|| panic!("`{key}` is not an integer in {v}"))
}

/// Every vector of `synthetic_v1.json`, or `None` (after a loud message; a panic under `CI=true`) when the
/// vectors folder is absent. The folder is `CPC_VECTORS`, else `shared/vectors` beside the repository.
pub(crate) fn load() -> Option<Vec<Vector>> {
    let json = cpc_common::test_vectors::load("synthetic_v1.json")?;
    let list = json.as_array().expect("synthetic_v1.json is a list");
    Some(
        list.iter()
            .map(|v| {
                let seed = v["seed"].as_str().expect("seed").to_owned();
                let n = u32::try_from(int(v, "matrix_size")).expect("matrix_size fits u32");
                let iterations = v.get("iterations").map_or(1, |_| int(v, "iterations")) as u32;
                let block = v.get("block_hash").map(|bh| {
                    let s = |x: &Value| x.as_str().expect("string").to_owned();
                    (s(bh), s(&v["worker_address"]), s(&v["task_id"]))
                });
                let samples = v
                    .get("samples")
                    .and_then(Value::as_array)
                    .map(|s| {
                        s.iter()
                            .map(|x| Sample {
                                row: int(x, "row") as u32,
                                col: int(x, "col") as u32,
                                a: int(x, "a") as i8,
                                b: int(x, "b") as i8,
                                c: int(x, "c") as i32,
                            })
                            .collect()
                    })
                    .unwrap_or_default();
                let row_leaves = v
                    .get("row_leaves")
                    .and_then(Value::as_array)
                    .map(|l| l.iter().map(digest).collect());
                Vector {
                    block,
                    challenge: Challenge::new(seed, n, iterations)
                        .expect("vector challenge is valid"),
                    result_hash: digest(&v["result_hash"]),
                    samples,
                    row_leaves,
                }
            })
            .collect(),
    )
}

impl Vector {
    /// Checks `backend` against this vector: its `result_hash`, then one whole-matrix shard of iteration 0
    /// with the rows kept: the row leaves (when the vector lists them) and every sampled element of C.
    /// Answers that shard's output, for callers that compare it further.
    pub(crate) fn check(&self, backend: &dyn Backend) -> ShardOutput {
        let ch = &self.challenge;
        let what = format!("{} n={} t={}", backend.name(), ch.matrix_size(), ch.iterations());
        let got = result_hash(backend, ch).expect("result hash");
        assert_eq!(hex::encode(got), hex::encode(self.result_hash), "result_hash, {what}");
        let shard = Shard::whole(ch.clone(), 0).expect("shard");
        let out = backend.run_shard(&shard, true).expect("whole shard");
        assert_eq!(out.leaves.len(), ch.matrix_size() as usize, "{what}");
        if let Some(leaves) = &self.row_leaves {
            assert_eq!(&out.leaves, leaves, "row leaves, {what}");
        }
        let n = ch.matrix_size() as usize;
        let rows = out.rows.as_ref().expect("rows kept");
        for s in &self.samples {
            assert_eq!(
                rows[s.row as usize * n + s.col as usize],
                s.c,
                "C[{}][{}], {what}",
                s.row,
                s.col
            );
        }
        out
    }
}
