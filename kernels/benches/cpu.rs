//! CPU backend benches: GEMM (elements/s = integer ops/s, 2n³ per product), Philox generation, row hashing
//! (bytes/s) and a whole n = 1024 shard. Sample sizes are small so the suite finishes in a few minutes.
//!
//! `cargo bench -p cpc-kernels` (filter with e.g. `-- gemm/1024`).

#![allow(missing_docs)]

use cpc_common::synthetic::{Challenge, KeyMaterial};
use cpc_kernels::{
    Backend, CpuBackend, Shard,
    cpu::{Kernel, PackedA, PackedB, gemm::gemm, generate_rows, hash_rows},
};
use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use std::{hint::black_box, time::Duration};

fn quick<'c>(
    c: &'c mut Criterion,
    name: &str,
) -> criterion::BenchmarkGroup<'c, criterion::measurement::WallTime> {
    let mut group = c.benchmark_group(name);
    group
        .sample_size(10)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(3));
    group
}

fn bench_gemm(c: &mut Criterion) {
    let km = KeyMaterial::from_seed("bench");
    let mut group = quick(c, "gemm");
    for kernel in Kernel::available() {
        let sizes: &[u32] = if kernel == Kernel::Scalar { &[512] } else { &[512, 1024, 2048] };
        for &n in sizes {
            let a = PackedA::generate(&km, 0, 0..n, n, kernel);
            let b = PackedB::generate(&km, 1, n, kernel);
            group.throughput(Throughput::Elements(2 * u64::from(n).pow(3)));
            group.bench_with_input(BenchmarkId::new(kernel.as_str(), n), &n, |bench, _| {
                bench.iter(|| black_box(gemm(&a, &b, kernel)));
            });
        }
    }
    group.finish();
}

fn bench_philox(c: &mut Criterion) {
    let km = KeyMaterial::from_seed("bench");
    let mut group = quick(c, "philox");
    let n = 1024u32;
    // Bytes of matrix produced (one byte per element): 16 per Philox call.
    group.throughput(Throughput::Bytes(u64::from(n) * u64::from(n)));
    group.bench_function("rows/1024", |bench| {
        bench.iter(|| black_box(generate_rows(&km, 0, 0..n, n)))
    });
    for kernel in Kernel::available() {
        group.bench_function(format!("packed_a/{kernel}/1024"), |bench| {
            bench.iter(|| black_box(PackedA::generate(&km, 0, 0..n, n, kernel)))
        });
        group.bench_function(format!("packed_b/{kernel}/1024"), |bench| {
            bench.iter(|| black_box(PackedB::generate(&km, 1, n, kernel)))
        });
    }
    group.finish();
}

fn bench_hash(c: &mut Criterion) {
    let mut group = quick(c, "hash_rows");
    let n = 1024usize;
    let rows: Vec<i32> =
        (0..n * n).map(|i| (i as i32).wrapping_mul(0x9E37_79B9_u32 as i32)).collect();
    group.throughput(Throughput::Bytes(4 * (n * n) as u64));
    group.bench_function("1024x1024", |bench| bench.iter(|| black_box(hash_rows(&rows, n))));
    group.finish();
}

fn bench_shard(c: &mut Criterion) {
    let challenge = Challenge::new("bench", 1024, 1).expect("challenge");
    let shard = Shard::whole(challenge, 0).expect("shard");
    let mut group = quick(c, "run_shard");
    group.throughput(Throughput::Elements(2 * 1024u64.pow(3)));
    for kernel in Kernel::available().into_iter().filter(|&k| k != Kernel::Scalar) {
        let backend =
            CpuBackend::new(0).expect("thread pool").with_kernel(kernel).expect("available");
        group.bench_function(format!("{}/1024", backend.name()), |bench| {
            bench.iter(|| black_box(backend.run_shard(&shard, false).expect("shard runs")));
        });
    }
    group.finish();
}

criterion_group!(benches, bench_gemm, bench_philox, bench_hash, bench_shard);
criterion_main!(benches);
