//! The AVX2 kernel and the scalar fallback agree exactly, on odd shapes and extreme values.

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

proptest! {
    #![proptest_config(ProptestConfig { cases: 40, ..ProptestConfig::default() })]

    #[test]
    fn avx2_equals_scalar(m in 1usize..80, n in 1usize..300, seed in any::<u64>(), extreme in any::<bool>()) {
        let a = PackedA::from_rows(&matrix(seed, m * n, extreme), m, n);
        let b = PackedB::from_rows(&matrix(seed.rotate_left(17), n * n, extreme), n);
        let fast = gemm(&a, &b, Kernel::detect());
        let slow = gemm(&a, &b, Kernel::Scalar);
        prop_assert_eq!(fast.len(), m * n);
        prop_assert!(fast == slow, "m={} n={} seed={}", m, n, seed);
    }
}

#[test]
fn backends_with_each_kernel_agree_on_odd_sizes() {
    let fast = CpuBackend::new(0).expect("pool");
    let slow = CpuBackend::new(0).expect("pool").with_kernel(Kernel::Scalar);
    assert_eq!(slow.kernel(), Kernel::Scalar);
    for n in [1u32, 2, 5, 15, 17, 31, 33, 63, 65, 97, 127, 129, 255, 257, 515] {
        let shard =
            Shard::whole(Challenge::new(format!("parity-{n}"), n, 1).expect("challenge"), 0)
                .expect("shard");
        let (x, y) = (
            fast.run_shard(&shard, true).expect("fast"),
            slow.run_shard(&shard, true).expect("slow"),
        );
        assert_eq!(x, y, "n={n}");
    }
}

#[test]
#[ignore = "large: n = 2048 on both kernels; run with --ignored"]
fn large_parity() {
    let n = 2048u32;
    let shard = Shard::new(Challenge::new("parity-large", n, 1).expect("challenge"), 0, 1000..1100)
        .expect("shard");
    let fast = CpuBackend::new(0).expect("pool").run_shard(&shard, true).expect("fast");
    let slow = CpuBackend::new(0)
        .expect("pool")
        .with_kernel(Kernel::Scalar)
        .run_shard(&shard, true)
        .expect("slow");
    assert_eq!(fast, slow);
}
