//! Every synthetic-v1 vector, computed by the CPU backend with each kernel.

use crate::vectors;
use cpc_common::synthetic::{matrix_ids, task_id, task_seed};
use cpc_kernels::{CpuBackend, cpu::Kernel, result_hash};

#[test]
fn task_derivation_and_samples() {
    let Some(vectors) = vectors::load() else { return };
    for v in &vectors {
        let ch = &v.challenge;
        if let Some((block_hash, worker, id)) = &v.block {
            assert_eq!(task_seed(block_hash, worker), ch.seed(), "seed of {block_hash}");
            assert_eq!(
                task_id(ch.seed()).expect("hex seed").to_string(),
                *id,
                "task id of {}",
                ch.seed()
            );
        }
        let km = ch.key_material();
        let (a_id, b_id) = matrix_ids(0);
        for s in &v.samples {
            assert_eq!(
                km.element(a_id, s.row, s.col),
                s.a,
                "A[{}][{}] n={}",
                s.row,
                s.col,
                ch.matrix_size()
            );
            assert_eq!(
                km.element(b_id, s.row, s.col),
                s.b,
                "B[{}][{}] n={}",
                s.row,
                s.col,
                ch.matrix_size()
            );
            assert_eq!(
                ch.c_element(0, s.row, s.col),
                s.c,
                "C[{}][{}] n={}",
                s.row,
                s.col,
                ch.matrix_size()
            );
        }
    }
}

#[test]
fn result_hash_and_leaves_every_kernel() {
    let Some(vectors) = vectors::load() else { return };
    for kernel in Kernel::available() {
        let backend =
            CpuBackend::new(0).expect("thread pool").with_kernel(kernel).expect("available");
        for v in &vectors {
            let ch = &v.challenge;
            if kernel == Kernel::Scalar && ch.matrix_size() > 256 {
                continue; // the scalar kernel is covered by parity tests; keep the suite fast
            }
            v.check(&backend);
        }
    }
}

#[test]
fn result_hash_splits_when_memory_is_short() {
    let Some(vectors) = vectors::load() else { return };
    let v = vectors.iter().find(|v| v.challenge.matrix_size() == 100).expect("an n=100 vector");
    // Room for B and 7 rows: result_hash must cut every iteration into shards and still agree.
    let limit = cpc_kernels::shard_memory_bytes(100, 7);
    let backend = CpuBackend::new(2).expect("thread pool").with_memory_limit(limit);
    assert_eq!(result_hash(&backend, &v.challenge).expect("runs"), v.result_hash);
}
