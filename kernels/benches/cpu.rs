//! CPU backend benches: GEMM (elements/s = integer ops/s, 2n³ per product), Philox generation, row hashing
//! (bytes/s), a whole n = 1024 shard, and Freivalds' check against the GEMM it checks at n = 2048 and 4096
//! (see [`bench_freivalds`]). Sample sizes are small so the suite finishes in a few minutes.
//!
//! `cargo bench -p cpc-kernels` (filter with e.g. `-- gemm/1024`).

#![allow(missing_docs)]

use cpc_common::synthetic::{Challenge, KeyMaterial};
use cpc_kernels::{
    Backend, CpuBackend, Shard,
    cpu::{
        Kernel, PackedA, PackedB,
        freivalds::{CheckLoops, c_times_r, input_sums, input_sums_with, row_sums},
        gemm::gemm,
        generate_rows, hash_row, hash_rows,
    },
    freivalds::{CheckSeed, check_vector, compare},
};
use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use rayon::prelude::*;
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

/// Freivalds' check against the GEMM it checks, on the same A, B and C, as `CpuBackend::run_shard` runs it:
/// `check-inputs/N` is the inputs' side (`A·(B·r)`, the fastest loops this CPU has), `hash/N` the row
/// hashing alone and `hash+check/N` the hashing pass with each row's `C·r` fused in, so the check costs
/// `check-inputs + (hash+check − hash)`, to set against `gemm/N`. `check-inputs-portable/N` is the
/// inputs' side on the portable loops (what a VNNI CPU ran before the AVX-512 loops). On the global rayon pool, and at n = 2048 on one thread too, where the ratio
/// is the work's and not the thread pool's (short parallel phases suffer most when other processes share
/// the cores).
fn bench_freivalds(c: &mut Criterion) {
    let km = KeyMaterial::from_seed("bench-freivalds");
    let one = rayon::ThreadPoolBuilder::new().num_threads(1).build().expect("one-thread pool");
    let mut group = quick(c, "freivalds");
    for n in [2048u32, 4096] {
        let kernel = Kernel::detect();
        let a = PackedA::generate(&km, 0, 0..n, n, kernel);
        let b = PackedB::generate(&km, 1, n, kernel);
        let product = gemm(&a, &b, kernel);
        let r = check_vector(CheckSeed(0x5eed), n as usize);
        assert_eq!(compare(&row_sums(&a, &b, &product, &r)), Ok(()), "the true product passes");
        let hash_and_check = || -> Vec<(cpc_common::hashing::Digest32, u64)> {
            product.par_chunks(n as usize).map(|row| (hash_row(row), c_times_r(row, &r))).collect()
        };
        let threads: &[(&str, Option<&rayon::ThreadPool>)] =
            if n == 2048 { &[("", None), ("-1-thread", Some(&one))] } else { &[("", None)] };
        for &(suffix, pool) in threads {
            let run = |f: &mut (dyn FnMut() + Send)| match pool {
                Some(p) => p.install(f),
                None => f(),
            };
            group.throughput(Throughput::Elements(2 * u64::from(n).pow(3)));
            group.bench_with_input(BenchmarkId::new(format!("gemm{suffix}"), n), &n, |bench, _| {
                bench.iter(|| run(&mut || drop(black_box(gemm(&a, &b, Kernel::detect())))));
            });
            group.bench_with_input(
                BenchmarkId::new(format!("check-inputs{suffix}"), n),
                &n,
                |bench, _| {
                    bench.iter(|| run(&mut || drop(black_box(input_sums(&a, &b, &r)))));
                },
            );
            if suffix.is_empty() && CheckLoops::detect() != CheckLoops::Portable {
                // The same side on the portable loops, for the SIMD loops' gain on this CPU.
                group.bench_with_input(
                    BenchmarkId::new("check-inputs-portable", n),
                    &n,
                    |bench, _| {
                        let portable = || input_sums_with(&a, &b, &r, CheckLoops::Portable);
                        bench.iter(|| drop(black_box(portable())));
                    },
                );
            }
            group.bench_with_input(BenchmarkId::new(format!("hash{suffix}"), n), &n, |bench, _| {
                bench.iter(|| run(&mut || drop(black_box(hash_rows(&product, n as usize)))));
            });
            group.bench_with_input(
                BenchmarkId::new(format!("hash+check{suffix}"), n),
                &n,
                |bench, _| {
                    bench.iter(|| run(&mut || drop(black_box(hash_and_check()))));
                },
            );
        }
    }
    group.finish();
}

criterion_group!(benches, bench_gemm, bench_philox, bench_hash, bench_shard, bench_freivalds);
criterion_main!(benches);
