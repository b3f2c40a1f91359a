//! GPU parity: every CUDA result equals the CPU backend's, leaf for leaf (and row for row where rows are kept).
//!
//! Ignored by default (they need an NVIDIA GPU); run them on purpose:
//! `cargo test -p cpc-kernels --features cuda -- --ignored cuda` (or `deploy/gpu-check.sh`).
//! Random cases print their seed on failure; set `CPC_CUDA_SEED` to replay one.

use crate::vectors;
use cpc_common::{merkle::merkle_root, synthetic::Challenge};
use cpc_kernels::{
    Backend, BackendError, CpuBackend, CudaBackend, Shard, ShardOutput,
    gpu::{CHUNK_ROWS, GemmEngine, GpuMonitor},
    result_hash,
};
use std::{
    sync::OnceLock,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

fn gpu() -> CudaBackend {
    match CudaBackend::new(0) {
        Ok(b) => {
            eprintln!("GPU under test: {:?}", b.info());
            b
        }
        Err(e) => panic!("these tests need a GPU (run them on a CUDA machine): {e}"),
    }
}

fn cpu() -> &'static CpuBackend {
    static CPU: OnceLock<CpuBackend> = OnceLock::new();
    CPU.get_or_init(|| CpuBackend::new(0).expect("thread pool"))
}

fn assert_same(shard: &Shard, got: &ShardOutput, want: &ShardOutput, what: &str) {
    let n = shard.challenge.matrix_size();
    assert_eq!(
        got.leaves.len(),
        want.leaves.len(),
        "{what}: leaf count n={n} rows={:?}",
        shard.rows
    );
    if let Some(i) = (0..got.leaves.len()).find(|&i| got.leaves[i] != want.leaves[i]) {
        let row = shard.rows.start + i as u32;
        if let (Some(g), Some(w)) = (&got.rows, &want.rows) {
            let (n, i) = (n as usize, i);
            let j = (0..n).find(|&j| g[i * n + j] != w[i * n + j]);
            panic!("{what}: n={n} row {row}: first differing column {j:?} (rows kept to help)");
        }
        panic!("{what}: n={n} rows={:?}: leaf of row {row} differs", shard.rows);
    }
    if let (Some(g), Some(w)) = (&got.rows, &want.rows) {
        assert!(g == w, "{what}: rows of C differ (leaves agree?!) n={n}");
    }
}

/// xorshift64*, seeded from `CPC_CUDA_SEED` or the clock (printed).
struct Rng(u64);

impl Rng {
    fn new() -> Self {
        let seed =
            std::env::var("CPC_CUDA_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or_else(|| {
                SystemTime::now().duration_since(UNIX_EPOCH).map_or(1, |d| d.as_nanos() as u64)
            });
        eprintln!("CPC_CUDA_SEED={seed}");
        Self(seed | 1)
    }

    fn below(&mut self, bound: u32) -> u32 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        ((self.0.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 32) % u64::from(bound.max(1))) as u32
    }
}

#[test]
#[ignore = "needs an NVIDIA GPU: cargo test -p cpc-kernels --features cuda -- --ignored cuda"]
fn cuda_every_vector_matches_spec_and_cpu() {
    let Some(vectors) = vectors::load() else {
        panic!("the synthetic-v1 vectors are missing (CPC_VECTORS)")
    };
    let gpu = gpu();
    for v in &vectors {
        let out = v.check(&gpu);
        let shard = Shard::whole(v.challenge.clone(), 0).expect("shard");
        assert_same(&shard, &out, &cpu().run_shard(&shard, true).expect("CPU"), "vector");
    }
}

#[test]
#[ignore = "needs an NVIDIA GPU: cargo test -p cpc-kernels --features cuda -- --ignored cuda"]
fn cuda_odd_sizes_and_random_shards_match_cpu() {
    let gpu = gpu();
    let mut rng = Rng::new();
    // n not a multiple of 4, 16, 32 or 64, around every padding boundary.
    let sizes = [
        1u32, 2, 3, 4, 5, 13, 15, 16, 17, 31, 32, 33, 63, 64, 65, 100, 127, 129, 255, 257, 1000,
        1023,
    ];
    for (t, &n) in sizes.iter().enumerate() {
        let r0 = rng.below(n);
        let r1 = r0 + 1 + rng.below(n - r0);
        let iterations = 1 + (t as u32 % 2);
        let challenge =
            Challenge::new(format!("cuda-parity-{n}-{t}"), n, iterations).expect("challenge");
        for (iteration, rows) in [(0, 0..n), (iterations - 1, r0..r1)] {
            let shard = Shard::new(challenge.clone(), iteration, rows).expect("shard");
            let got = gpu.run_shard(&shard, true).expect("GPU");
            let want = cpu().run_shard(&shard, true).expect("CPU");
            assert_same(&shard, &got, &want, "odd size");
        }
    }
    for _ in 0..12 {
        let n = 1 + rng.below(3000);
        let r0 = rng.below(n);
        let r1 = r0 + 1 + rng.below(n - r0);
        let shard =
            Shard::new(Challenge::new(format!("cuda-random-{n}"), n, 1).expect("ch"), 0, r0..r1)
                .expect("shard");
        let got = gpu.run_shard(&shard, false).expect("GPU");
        let want = cpu().run_shard(&shard, false).expect("CPU");
        assert_same(&shard, &got, &want, "random shard");
    }
}

#[test]
#[ignore = "needs an NVIDIA GPU: cargo test -p cpc-kernels --features cuda -- --ignored cuda"]
fn cuda_dp4a_fallback_matches_cpu() {
    let gpu = CudaBackend::with_engine(0, GemmEngine::Dp4a).expect("GPU with the dp4a GEMM");
    assert!(gpu.gemm_engine().starts_with("dp4a"), "{}", gpu.gemm_engine());
    for n in [1u32, 7, 33, 65, 200, 513, 1025] {
        let shard = Shard::whole(Challenge::new(format!("cuda-dp4a-{n}"), n, 1).expect("ch"), 0)
            .expect("shard");
        let got = gpu.run_shard(&shard, true).expect("GPU");
        assert_same(&shard, &got, &cpu().run_shard(&shard, true).expect("CPU"), "dp4a");
    }
}

#[test]
#[ignore = "needs an NVIDIA GPU: cargo test -p cpc-kernels --features cuda -- --ignored cuda"]
fn cuda_consecutive_shards_overlap_and_recombine() {
    // Several shards of one product through both slots (B generated once per slot, then cached), and a
    // second product interleaved so the cache must be invalidated; the root equals the CPU's.
    let gpu = gpu();
    let n = 4100u32; // > one GEMM chunk, not a multiple of 64
    let a = Challenge::new("cuda-overlap-a", n, 1).expect("ch");
    let b = Challenge::new("cuda-overlap-b", n, 1).expect("ch");
    let cuts = [0u32, 700, 1500, 1501, 3000, 4100];
    let mut shards = Vec::new();
    for w in cuts.windows(2) {
        shards.push(Shard::new(a.clone(), 0, w[0]..w[1]).expect("shard"));
        shards.push(Shard::new(b.clone(), 0, w[0]..w[1]).expect("shard"));
    }
    let outs: Vec<ShardOutput> =
        gpu.run_shards(&shards, false).into_iter().map(|r| r.expect("GPU shard")).collect();
    for (ch, parity) in [(&a, 0), (&b, 1)] {
        let leaves: Vec<_> =
            outs.iter().skip(parity).step_by(2).flat_map(|o| o.leaves.clone()).collect();
        let cpu_root = result_hash(cpu(), ch).expect("CPU");
        assert_eq!(merkle_root(&leaves), cpu_root, "{}", ch.seed());
    }
    // Stats are kept per calling thread (run_shards ran its own): none here until this thread runs one.
    assert!(gpu.last_stats().is_none());
    gpu.run_shard(&shards[0], false).expect("GPU shard");
    let stats = gpu.last_stats().expect("stats");
    assert!(stats.device_seconds > 0.0 && stats.ops > 0, "{stats:?}");
}

#[test]
#[ignore = "needs an NVIDIA GPU: cargo test -p cpc-kernels --features cuda -- --ignored cuda"]
fn cuda_large_shard_matches_cpu() {
    let gpu = gpu();
    let shard = Shard::new(Challenge::new("cuda-large", 8192, 1).expect("ch"), 0, 4000..4300)
        .expect("shard");
    let got = gpu.run_shard(&shard, true).expect("GPU");
    assert_same(&shard, &got, &cpu().run_shard(&shard, true).expect("CPU"), "large");
}

/// The chunked path on the device: a shard over [`CHUNK_ROWS`] rows (pointer offsets into A and C, a second
/// cuBLASLt plan for the partial last chunk, hashing from row 4096 on another hash stream) and a range
/// starting past the first chunk, with cuBLASLt and with dp4a; leaves compared with the CPU's whole product.
#[test]
#[ignore = "needs an NVIDIA GPU: cargo test -p cpc-kernels --features cuda -- --ignored cuda"]
fn cuda_chunked_path_matches_cpu() {
    let n = CHUNK_ROWS + 64;
    let challenge = Challenge::new("cuda-chunked", n, 1).expect("ch");
    let whole = Shard::whole(challenge.clone(), 0).expect("shard");
    let want = cpu().run_shard(&whole, false).expect("CPU");
    for gpu in [gpu(), CudaBackend::with_engine(0, GemmEngine::Dp4a).expect("GPU with dp4a")] {
        let status = gpu.status();
        eprintln!("{}: {} engine {}", gpu.name(), status.libraries, gpu.gemm_engine());
        for rows in [0..n, CHUNK_ROWS + 1..n, 37..CHUNK_ROWS + 1] {
            let shard = Shard::new(challenge.clone(), 0, rows.clone()).expect("shard");
            let got = gpu.run_shard(&shard, false).expect("GPU");
            let slice = ShardOutput {
                leaves: want.leaves[rows.start as usize..rows.end as usize].to_vec(),
                rows: None,
                check: None,
            };
            assert_same(&shard, &got, &slice, "chunked");
        }
        assert_eq!(gpu.status().shape_fallbacks, 0, "cuBLASLt fell back on a chunk shape");
    }
}

#[test]
#[ignore = "needs an NVIDIA GPU: cargo test -p cpc-kernels --features cuda -- --ignored cuda"]
fn cuda_watchdog_timeout_quarantines_the_device() {
    let gpu = gpu().with_timeout(Duration::from_nanos(1));
    let shard =
        Shard::whole(Challenge::new("cuda-timeout", 4096, 1).expect("ch"), 0).expect("shard");
    let err = gpu.run_shard(&shard, false).expect_err("1 ns is too short");
    assert!(matches!(err, BackendError::Timeout { .. }), "{err}");
    let again = gpu.run_shard(&shard, false).expect_err("quarantined");
    assert!(matches!(again, BackendError::Quarantined { .. }), "{again}");
    assert!(gpu.quarantined().is_some());
    // Another backend on the same GPU (as after the agent reopens it) still works.
    let fresh = CudaBackend::new(0).expect("reopen");
    let small = Shard::whole(Challenge::new("cuda-after", 64, 1).expect("ch"), 0).expect("shard");
    assert_same(
        &small,
        &fresh.run_shard(&small, false).expect("GPU"),
        &cpu().run_shard(&small, false).expect("CPU"),
        "reopen",
    );
}

#[test]
#[ignore = "needs an NVIDIA GPU: cargo test -p cpc-kernels --features cuda -- --ignored cuda"]
fn cuda_telemetry_has_dcgm_labels() {
    let gpu = gpu();
    let monitors = GpuMonitor::all().expect("NVML");
    assert!(!monitors.is_empty());
    let own = gpu.monitor().expect("the backend found its GPU in NVML by UUID");
    let t = own.sample();
    assert!(t.uuid.starts_with("GPU-"), "{t:?}");
    assert!(t.memory_total_bytes.unwrap_or(0) > 0, "{t:?}");
    let labels = t.labels();
    assert_eq!(labels.map(|(k, _)| k), ["gpu", "UUID", "modelName", "Hostname"]);
    eprintln!("{t:?}");
}

/// Freivalds' check on the GPU: checked shards of odd sizes (the kernels' 256-column chunk, 128-thread row
/// block and 64 padding, and more than one GEMM chunk) pass on an honest GPU, report their cost, and give the
/// CPU's leaves. (The flipped-element case runs the same kernels on the host: `cuda_host.rs`.)
#[test]
#[ignore = "needs an NVIDIA GPU"]
fn cuda_freivalds_check_passes_honest_shards() {
    let gpu = gpu();
    for (n, rows) in
        [(1u32, 0..1u32), (129, 5..129), (1000, 0..1000), (4100, 4000..4100), (8192, 0..4160)]
    {
        let challenge = Challenge::new(format!("cuda-freivalds-{n}"), n, 1).expect("challenge");
        let shard = Shard::new(challenge, 0, rows).expect("shard");
        let checked = shard.clone().with_check(cpc_kernels::CheckSeed(u64::from(n) ^ 0xfeed));
        let got = gpu.run_shard(&checked, false).unwrap_or_else(|e| panic!("n={n}: {e}"));
        let cost = got.check.unwrap_or_else(|| panic!("n={n}: no check cost"));
        eprintln!("n={n} rows={:?}: check {:?} of shard {:?}", shard.rows, cost.check, cost.shard);
        let want = cpu().run_shard(&shard, false).expect("cpu");
        assert_same(&shard, &got, &want, "freivalds-checked shard");
    }
}
