//! GPU benchmark: per phase and end to end, time and tera-ops per second of one whole synthetic-v1 product
//! (`n × n × n`) on one GPU, for n = 4096, 8192, 16384 and 32768 (where memory allows), next to the
//! cuBLASLt GEMM alone on the same sizes.
//!
//! ```text
//! cargo run --release -p cpc-kernels --features cuda --example cuda_bench -- [--device 0] [--reps 5] [--sizes 4096,8192]
//! ```
//!
//! Every repetition uses a fresh seed, so B is generated each time (no cache hit). Peak for reference: H100 SXM
//! dense INT8 is 1979 TOPS; the goal is ≥ 50 % end to end at n = 16384 and the GEMM phase within 10 % of
//! cuBLASLt alone.

use anyhow::{Context, bail};
use cpc_common::synthetic::Challenge;
use cpc_kernels::{
    Backend, CudaBackend, Shard,
    gpu::{GpuMonitor, ShardStats, gpu_shard_bytes, tops},
};

/// H100 SXM dense INT8 peak, tera-ops per second.
const H100_SXM_INT8_PEAK_TOPS: f64 = 1979.0;

struct Args {
    device: usize,
    reps: u32,
    sizes: Vec<u32>,
}

fn parse_args() -> anyhow::Result<Args> {
    let mut args = Args { device: 0, reps: 5, sizes: vec![4096, 8192, 16384, 32768] };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().with_context(|| format!("{flag} needs a value"));
        match flag.as_str() {
            "--device" => args.device = value()?.parse()?,
            "--reps" => args.reps = value()?.parse()?,
            "--sizes" => {
                args.sizes = value()?.split(',').map(str::parse).collect::<Result<_, _>>()?;
            }
            "--bench" => {} // passed by `cargo bench`-style runners
            other => {
                bail!("unknown argument {other}: expected --device N, --reps N, --sizes A,B,C")
            }
        }
    }
    Ok(args)
}

fn row(phase: &str, seconds: f64, ops: u64) {
    println!("  {phase:<26} {:>10.3} ms {:>10.1} TOPS", seconds * 1e3, tops(ops, seconds));
}

fn median(mut xs: Vec<f64>) -> f64 {
    xs.sort_by(f64::total_cmp);
    xs.get(xs.len() / 2).copied().unwrap_or(0.0)
}

fn main() -> anyhow::Result<()> {
    let args = parse_args()?;
    let found = CudaBackend::device_count();
    if found == 0 {
        bail!(
            "no CUDA device visible: this benchmark needs an NVIDIA GPU and driver (see `nvidia-smi`)"
        );
    }
    let backend = CudaBackend::new(args.device).context("opening the GPU")?;
    let info = backend.info();
    println!(
        "device: {} — {} SMs, {:.1} GiB per shard slot, GEMM engine {}",
        info.name,
        info.compute_units,
        info.memory_bytes as f64 / (1u64 << 30) as f64,
        backend.gemm_engine()
    );
    if let Some(m) = backend.monitor() {
        let t = m.sample();
        println!(
            "nvml: gpu {} {} {} — {:?} °C, {:?} W, SM clock {:?} Hz",
            t.gpu, t.uuid, t.model_name, t.temperature_celsius, t.power_watts, t.sm_clock_hz
        );
    }
    println!("reference: H100 SXM dense INT8 peak {H100_SXM_INT8_PEAK_TOPS} TOPS\n");

    for &n in &args.sizes {
        let needed = gpu_shard_bytes(n, n);
        if needed > info.memory_bytes {
            println!(
                "n = {n}: skipped, needs {:.1} GiB, one slot has {:.1} GiB\n",
                needed as f64 / (1u64 << 30) as f64,
                info.memory_bytes as f64 / (1u64 << 30) as f64
            );
            continue;
        }
        let mut stats: Vec<ShardStats> = Vec::new();
        for rep in 0..=args.reps {
            let challenge = Challenge::new(format!("cuda-bench-{n}-{rep}"), n, 1)?;
            let shard = Shard::whole(challenge, 0)?;
            backend.run_shard(&shard, false).with_context(|| format!("shard n={n}"))?;
            let s = backend.last_stats().context("no stats recorded")?;
            if rep > 0 {
                stats.push(s); // rep 0 is the warm-up
            }
        }
        let ops = 2 * u64::from(n).pow(3);
        let pick = |f: fn(&ShardStats) -> f64| median(stats.iter().map(f).collect());
        let gemm_alone = backend.time_gemm(n, args.reps).context("timing the GEMM alone")?;
        println!("n = {n} ({} reps, medians; {} GEMM)", args.reps, stats[0].gemm_engine);
        row("generate A and B", pick(|s| s.generate_seconds), ops);
        row("GEMM (chunked, pipeline)", pick(|s| s.gemm_seconds), ops);
        row("hash tail (after GEMM)", pick(|s| s.hash_tail_seconds), ops);
        row("end to end (device)", pick(|s| s.device_seconds), ops);
        row("end to end (host wall)", pick(|s| s.wall_seconds), ops);
        row("GEMM alone (library)", gemm_alone, ops);
        let e2e = tops(ops, pick(|s| s.device_seconds));
        let gemm_ratio = gemm_alone / pick(|s| s.gemm_seconds).max(f64::MIN_POSITIVE);
        println!(
            "  end to end = {:.1} % of H100 SXM INT8 peak; pipeline GEMM at {:.1} % of the library alone",
            100.0 * e2e / H100_SXM_INT8_PEAK_TOPS,
            100.0 * gemm_ratio
        );
        if let Some(j) = pick_energy(&stats) {
            println!("  energy per task: {j:.2} J");
        }
        println!();
    }
    if let Ok(monitors) = GpuMonitor::all() {
        for m in monitors {
            let t = m.sample();
            println!(
                "after: gpu {} throttle {:?} xid {} pcie replays {:?}",
                t.gpu,
                t.throttle_reason_names(),
                t.xid_errors_total,
                t.pcie_replays_total
            );
        }
    }
    Ok(())
}

fn pick_energy(stats: &[ShardStats]) -> Option<f64> {
    let joules: Vec<f64> = stats.iter().filter_map(|s| s.energy_joules).collect();
    (!joules.is_empty()).then(|| median(joules))
}
