//! Fault injection: the dishonest backend differs from the honest one on exactly the rows it corrupts.

use cpc_common::synthetic::Challenge;
use cpc_kernels::{Backend, CpuBackend, Shard};

#[test]
fn faulty_rows_are_exactly_every_kth() {
    let honest = CpuBackend::new(0).expect("pool");
    for (n, k, rows) in [(64u32, 7u32, 0..64u32), (100, 3, 10..61), (33, 1, 0..33), (50, 64, 0..50)]
    {
        let faulty = CpuBackend::new(0).expect("pool").with_fault_injection(k);
        let shard = Shard::new(Challenge::new("fault", n, 1).expect("challenge"), 0, rows.clone())
            .expect("shard");
        let good = honest.run_shard(&shard, true).expect("honest");
        let bad = faulty.run_shard(&shard, true).expect("faulty");
        for (i, r) in rows.clone().enumerate() {
            assert_eq!(good.leaves[i] != bad.leaves[i], r % k == 0, "n={n} k={k} row {r}");
        }
        // Exactly one element per corrupted row, off by one.
        let (g, b) = (good.rows.expect("kept"), bad.rows.expect("kept"));
        let diffs: Vec<usize> =
            g.iter().zip(&b).enumerate().filter(|(_, (x, y))| x != y).map(|(i, _)| i).collect();
        assert_eq!(diffs.len(), rows.clone().filter(|r| r % k == 0).count());
        assert!(diffs.iter().all(|&i| b[i] == g[i].wrapping_add(1)));
    }
}

#[test]
fn zero_disables_injection() {
    let shard =
        Shard::whole(Challenge::new("fault-off", 20, 1).expect("challenge"), 0).expect("shard");
    let a = CpuBackend::new(1).expect("pool").run_shard(&shard, false).expect("runs");
    let b = CpuBackend::new(1)
        .expect("pool")
        .with_fault_injection(0)
        .run_shard(&shard, false)
        .expect("runs");
    assert_eq!(a, b);
}
