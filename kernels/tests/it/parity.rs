//! Every CPU kernel this host can run agrees exactly with the scalar one: raw GEMMs on odd shapes and
//! extreme values, and whole shards (odd sizes, offset row ranges, every iteration) leaf for leaf.

use cpc_common::synthetic::Challenge;
use cpc_kernels::{
    Backend, CpuBackend, Shard,
    cpu::{Kernel, PackedA, PackedB, gemm::gemm},
};
use proptest::prelude::*;

fn matrix(seed: u64, len: usize, extreme: bool) -> Vec<i8> {
    let mut x = seed | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            if extreme { if x & 1 == 0 { i8::MIN } else { i8::MAX } } else { x as i8 }
        })
        .collect()
}

/// A backend forced to `kernel` (which this host can run).
fn backend(kernel: Kernel) -> CpuBackend {
    CpuBackend::new(0).expect("pool").with_kernel(kernel).expect("available kernel")
}

/// The SIMD kernels this host can run (the scalar one is the reference).
fn simd_kernels() -> Vec<Kernel> {
    Kernel::available().into_iter().filter(|&k| k != Kernel::Scalar).collect()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 40, ..ProptestConfig::default() })]

    #[test]
    fn every_kernel_equals_scalar(
        m in 1usize..80, n in 1usize..300, seed in any::<u64>(), extreme in any::<bool>()
    ) {
        let (a, b) = (matrix(seed, m * n, extreme), matrix(seed.rotate_left(17), n * n, extreme));
        let pairs = cpc_kernels::cpu::Packing::Pairs;
        let slow = gemm(&PackedA::from_rows(&a, m, n, pairs), &PackedB::from_rows(&b, n, pairs), Kernel::Scalar);
        prop_assert_eq!(slow.len(), m * n);
        for kernel in simd_kernels() {
            let p = kernel.packing();
            let fast = gemm(&PackedA::from_rows(&a, m, n, p), &PackedB::from_rows(&b, n, p), kernel);
            prop_assert!(fast == slow, "{} m={} n={} seed={}", kernel, m, n, seed);
        }
    }

    #[test]
    fn shards_agree_on_every_kernel(
        n in 1u32..200, start in 0u32..200, len in 1u32..200, iterations in 1u32..4, seed in any::<u32>()
    ) {
        let start = start % n;
        let rows = start..(start + len).min(n);
        let challenge = Challenge::new(format!("parity-{seed}"), n, iterations).expect("challenge");
        let reference = backend(Kernel::Scalar);
        for iteration in 0..iterations {
            let shard = Shard::new(challenge.clone(), iteration, rows.clone()).expect("shard");
            let want = reference.run_shard(&shard, true).expect("scalar");
            for kernel in simd_kernels() {
                let got = backend(kernel).run_shard(&shard, true).expect("simd");
                prop_assert!(got == want, "{} n={} rows={:?} iteration={}", kernel, n, rows, iteration);
            }
        }
    }
}

#[test]
fn backends_with_each_kernel_agree_on_odd_sizes() {
    let slow = backend(Kernel::Scalar);
    assert_eq!(slow.kernel(), Kernel::Scalar);
    for n in [1u32, 2, 3, 5, 15, 17, 31, 33, 63, 65, 97, 127, 129, 255, 257, 515] {
        let shard =
            Shard::whole(Challenge::new(format!("parity-{n}"), n, 1).expect("challenge"), 0)
                .expect("shard");
        let want = slow.run_shard(&shard, true).expect("slow");
        for kernel in simd_kernels() {
            assert_eq!(
                backend(kernel).run_shard(&shard, true).expect("fast"),
                want,
                "{kernel} n={n}"
            );
        }
    }
}

#[test]
#[ignore = "large: n = 2048 on every kernel; run with --ignored"]
fn large_parity() {
    let n = 2048u32;
    let shard = Shard::new(Challenge::new("parity-large", n, 1).expect("challenge"), 0, 1000..1100)
        .expect("shard");
    let slow = backend(Kernel::Scalar).run_shard(&shard, true).expect("slow");
    for kernel in simd_kernels() {
        assert_eq!(backend(kernel).run_shard(&shard, true).expect("fast"), slow, "{kernel}");
    }
}
