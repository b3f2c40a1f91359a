//! `bench`: how fast this host computes synthetic-v1, as an operator sizes a farm or checks a new GPU. Per
//! matrix size, per phase and end to end: median milliseconds and tera-ops per second, the share of a peak,
//! the pipeline's GEMM against the GEMM library alone (CUDA) and the energy per task where NVML has it. On
//! the CPU it names the GEMM kernel that ran, and `--kernel` forces one so kernels compare on one host. Per
//! size it also times the farm's default spot check of one shard on this CPU, against the product. The
//! measuring is `cpc_kernels::bench`; this module picks the sizes and prints.
//!
//! On CUDA every measured size is also checked: a sample of rows of the GPU's whole product (the first, both
//! sides of each of the first chunk boundaries, the middle, the last) must hash as the CPU's
//! ([`check_rows`]); a mismatch fails the command, so a fast wrong GPU never passes for a fast one.

use super::{GlobalArgs, compute::BackendArgs, output::print_json};
use anyhow::Context as _;
use clap::Args;
use cpc_common::synthetic::{Challenge, MAX_MATRIX_SIZE};
use cpc_coordinator::farm::SpotCheckConfig;
use cpc_kernels::{
    Backend, BackendKind, CpuBackend, CudaBackend, DeviceInfo, Shard,
    bench::{
        BenchDevice, H100_SXM_INT8_PEAK_TOPS, Measurement, SizeReport, rep_seed, spot_check_seconds,
    },
    gpu::{CHUNK_ROWS, GpuTelemetry},
};
use serde_json::{Value, json};
use std::{ops::Range, process::ExitCode};

/// Sizes measured on the CPU when `--matrix-size` is not given.
pub(crate) const DEFAULT_CPU_SIZES: [u32; 3] = [512, 1024, 2048];
/// Sizes measured on a GPU when `--matrix-size` is not given (32768 only where memory allows).
pub(crate) const DEFAULT_CUDA_SIZES: [u32; 4] = [4096, 8192, 16384, 32768];
/// Measured repetitions per size (after one warm-up).
pub(crate) const DEFAULT_REPS: u32 = 5;
/// Most repetitions per size.
const MAX_REPS: i64 = 1000;

/// `bench`: this host's device (`bench --backend cpu ...`), or `bench farm ...`.
#[derive(Debug, Args)]
#[command(args_conflicts_with_subcommands = true)]
pub(crate) struct BenchCommand {
    /// `farm`, or none for this host's device.
    #[command(subcommand)]
    pub(crate) farm: Option<BenchFarm>,
    #[command(flatten)]
    pub(crate) device: BenchArgs,
}

/// What `bench` measures besides this host's device.
#[derive(Debug, clap::Subcommand)]
pub(crate) enum BenchFarm {
    /// The coordinator on a farm of simulated devices on this host (never talks to a chain).
    ///
    /// Agents run as real processes over loopback QUIC; per made-up block, one task per made-up identity,
    /// all submitted at once. Per block: the time until every result is ready against the ideal, shards/s,
    /// shard round trips, this process's CPU time and memory.
    Farm(super::bench_farm::FarmBenchArgs),
}

#[derive(Debug, Args)]
pub(crate) struct BenchArgs {
    #[command(flatten)]
    backend: BackendArgs,
    /// Matrix sizes n to measure: a comma-separated list, or the flag repeated [default: 512,1024,2048 for
    /// cpu; 4096,8192,16384,32768 for cuda].
    #[arg(
        long = "matrix-size",
        value_name = "N[,N...]",
        value_delimiter = ',',
        value_parser = clap::value_parser!(u32).range(1..=i64::from(MAX_MATRIX_SIZE)),
        help_heading = "Bench"
    )]
    matrix_sizes: Vec<u32>,
    /// Measured repetitions per size, each with a fresh seed, after one warm-up; the table shows medians.
    #[arg(
        long,
        default_value_t = DEFAULT_REPS,
        value_parser = clap::value_parser!(u32).range(1..=MAX_REPS),
        help_heading = "Bench"
    )]
    reps: u32,
    /// Peak tera-ops per second to report end to end against [default: 1979, the H100 SXM dense INT8
    /// peak, for cuda; none for cpu].
    #[arg(long, value_name = "TOPS", value_parser = parse_peak, help_heading = "Bench")]
    peak_tops: Option<f64>,
}

impl BenchArgs {
    /// The sizes asked for, or the backend's defaults; duplicates dropped, order kept.
    fn sizes(&self) -> Vec<u32> {
        let asked = if self.matrix_sizes.is_empty() {
            match self.backend.backend {
                BackendKind::Cpu => DEFAULT_CPU_SIZES.to_vec(),
                BackendKind::Cuda => DEFAULT_CUDA_SIZES.to_vec(),
            }
        } else {
            self.matrix_sizes.clone()
        };
        let mut sizes = Vec::with_capacity(asked.len());
        for n in asked {
            if !sizes.contains(&n) {
                sizes.push(n);
            }
        }
        sizes
    }

    /// The peak given, or the H100's for cuda.
    fn peak_tops(&self) -> Option<f64> {
        self.peak_tops.or(match self.backend.backend {
            BackendKind::Cpu => None,
            BackendKind::Cuda => Some(H100_SXM_INT8_PEAK_TOPS),
        })
    }
}

fn parse_peak(text: &str) -> Result<f64, String> {
    match text.trim().parse::<f64>() {
        Ok(x) if x.is_finite() && x > 0.0 => Ok(x),
        _ => Err(format!("`{text}` is not a positive number of tera-ops per second (e.g. 1979)")),
    }
}

/// Runs the benchmark (blocking: call it off the async runtime) and prints as it goes, or one JSON document
/// at the end with `--json`.
pub(crate) fn run(g: &GlobalArgs, args: &BenchArgs) -> anyhow::Result<ExitCode> {
    let (kind, index) = (args.backend.backend, args.backend.device);
    let opened = BenchDevice::open_with_kernel(kind, index, args.backend.kernel);
    let device = opened.map_err(|e| match kind {
        BackendKind::Cuda if CudaBackend::device_count() == 0 => {
            let why = e.to_string();
            let hint = if why.contains("--backend cpu") {
                ""
            } else {
                ". Use --backend cpu to benchmark the CPU instead"
            };
            anyhow::anyhow!("--backend cuda cannot run on this host: {why}{hint}")
        }
        _ => anyhow::Error::new(e).context(format!("opening {kind} device {index}")),
    })?;
    let info = device.info();
    let sizes = args.sizes();
    let peak = args.peak_tops();
    let monitor = device.backend().monitor();
    let before = monitor.map(|m| m.sample());
    if !g.json {
        print_header(&device, &info, before.as_ref(), peak);
    }
    let mut reports = Vec::with_capacity(sizes.len());
    let mut row_checks = Vec::new();
    for n in sizes {
        let report =
            device.measure(n, args.reps).with_context(|| format!("benchmark at n = {n}"))?;
        let spot = SpotCost::measure(n, args.reps);
        if !g.json {
            print_size(&report, args.reps, peak, &spot);
        }
        if kind == BackendKind::Cuda && matches!(report, SizeReport::Measured(_)) {
            let checked = check_rows(device.backend(), n)?;
            if !g.json {
                println!(
                    "  row check at n = {n}: rows {} hash as on the CPU\n",
                    show_rows(&checked)
                );
            }
            row_checks.push(json!({"n": n, "rows": checked.iter().map(|r| [r.start, r.end]).collect::<Vec<_>>()}));
        }
        reports.push((report, spot));
    }
    let after = monitor.map(|m| m.sample());
    if g.json {
        print_json(&json!({
            "backend": kind.as_str(),
            "device": {
                "backend_name": device.backend().name(),
                "name": info.name,
                "index": index,
                "compute_units": info.compute_units,
                "memory_bytes": known_bytes(info.memory_bytes),
                "gemm_engine": device.gemm_engine(),
                "cpu_kernel": device.cpu_kernel().map(|k| k.as_str()),
            },
            "nvml_before": before.as_ref().map(telemetry_json),
            "nvml_after": after.as_ref().map(telemetry_json),
            "reps": args.reps,
            "peak_tops": peak,
            "sizes": reports.iter().map(|(r, spot)| {
                let mut size = size_json(r, peak);
                if let Some(obj) = size.as_object_mut() {
                    obj.insert("spot_check".into(), spot.json(r));
                }
                size
            }).collect::<Vec<_>>(),
            "row_checks": row_checks,
        }))?;
    } else if let Some(t) = after {
        println!(
            "after: gpu {} throttle {:?}, xid errors {}, pcie replays {}",
            t.gpu,
            t.throttle_reason_names(),
            t.xid_errors_total,
            t.pcie_replays_total.map_or_else(|| "unknown".into(), |r| r.to_string())
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// Rows of an `n × n` product checked against the CPU: the first two, both sides of the first two GEMM chunk
/// boundaries (the chunked path: offset pointers, the next chunk's plan, hashing from `c0 > 0`), the middle
/// and the last; sorted, merged, within `0..n`.
fn sample_rows(n: u32) -> Vec<Range<u32>> {
    let mut wanted = vec![0..2, n / 2..n / 2 + 1, n.saturating_sub(1)..n];
    for boundary in [CHUNK_ROWS, 2 * CHUNK_ROWS] {
        wanted.push(boundary - 1..boundary + 1);
    }
    let mut rows: Vec<Range<u32>> = wanted
        .into_iter()
        .map(|r| r.start.min(n)..r.end.min(n))
        .filter(|r| !r.is_empty())
        .collect();
    rows.sort_by_key(|r| r.start);
    let mut merged: Vec<Range<u32>> = Vec::with_capacity(rows.len());
    for r in rows {
        match merged.last_mut() {
            Some(last) if r.start <= last.end => last.end = last.end.max(r.end),
            _ => merged.push(r),
        }
    }
    merged
}

/// Runs the bench's first challenge at size `n` whole on `gpu` and checks the leaves of [`sample_rows`]
/// against the CPU backend (one-row shards cost it one row of the product each); answers the rows checked.
fn check_rows(gpu: &dyn Backend, n: u32) -> anyhow::Result<Vec<Range<u32>>> {
    let challenge = Challenge::new(rep_seed(n, 1), n, 1)?;
    let got = gpu.run_shard(&Shard::whole(challenge.clone(), 0)?, false)?;
    let cpu = CpuBackend::new(0)?;
    let rows = sample_rows(n);
    for range in &rows {
        let want = cpu.run_shard(&Shard::new(challenge.clone(), 0, range.clone())?, false)?;
        let gpu_leaves = got.leaves.get(range.start as usize..range.end as usize);
        if gpu_leaves != Some(want.leaves.as_slice()) {
            anyhow::bail!(
                "the GPU's leaves of rows {range:?} at n = {n} differ from the CPU's (seed {}): the CUDA \
                 backend computes wrong results on this host; do not mine with it",
                challenge.seed()
            );
        }
    }
    Ok(rows)
}

/// `0-1, 4095-4096, 8192, 16383`.
fn show_rows(rows: &[Range<u32>]) -> String {
    let show = |r: &Range<u32>| {
        if r.end - r.start == 1 {
            r.start.to_string()
        } else {
            format!("{}-{}", r.start, r.end - 1)
        }
    };
    rows.iter().map(show).collect::<Vec<_>>().join(", ")
}

/// What the farm's default spot check of one shard at size n costs the coordinator's CPU
/// ([`SpotCheckConfig::default`]), beside the job it checks.
struct SpotCost {
    config: SpotCheckConfig,
    seconds: f64,
}

impl SpotCost {
    fn measure(n: u32, reps: u32) -> Self {
        let config = SpotCheckConfig::default();
        let seconds = spot_check_seconds(n, config.rows_per_shard, config.elements_per_row, reps);
        Self { config, seconds }
    }

    /// The spot check's time over the whole product's end-to-end time (a job in one shard: the most a
    /// check can cost relative to the job, since every shard is checked the same).
    fn fraction(&self, report: &SizeReport) -> Option<f64> {
        match report {
            SizeReport::Measured(m) if m.end_to_end_seconds() > 0.0 => {
                Some(self.seconds / m.end_to_end_seconds())
            }
            _ => None,
        }
    }

    fn print(&self, report: &SizeReport) {
        let share = self
            .fraction(report)
            .map(|f| format!(" = {:.2} % of the product end to end", 100.0 * f))
            .unwrap_or_default();
        println!(
            "  spot check of one shard ({} rows × {} elements, the farm's default) on this CPU: {:.3} ms{share}",
            self.config.rows_per_shard,
            self.config.elements_per_row,
            self.seconds * 1e3
        );
    }

    fn json(&self, report: &SizeReport) -> Value {
        json!({
            "rows_per_shard": self.config.rows_per_shard,
            "elements_per_row": self.config.elements_per_row,
            "seconds": self.seconds,
            "fraction_of_end_to_end": self.fraction(report),
        })
    }
}

/// `u64::MAX` means "the device cannot tell".
fn known_bytes(bytes: u64) -> Option<u64> {
    (bytes != u64::MAX).then_some(bytes)
}

fn gib(bytes: u64) -> String {
    match known_bytes(bytes) {
        Some(b) => format!("{:.1} GiB", b as f64 / (1u64 << 30) as f64),
        None => "unknown memory".into(),
    }
}

fn print_header(
    device: &BenchDevice,
    info: &DeviceInfo,
    nvml: Option<&GpuTelemetry>,
    peak: Option<f64>,
) {
    let units = match info.kind {
        BackendKind::Cpu => "threads",
        BackendKind::Cuda => "SMs",
    };
    let engine = match (device.gemm_engine(), device.cpu_kernel()) {
        (Some(e), _) => format!(", GEMM engine {e}"),
        (None, Some(k)) => format!(", GEMM kernel {k}"),
        (None, None) => String::new(),
    };
    println!(
        "device: {} ({}), {} {units}, {} per shard{engine}",
        device.backend().name(),
        info.name,
        info.compute_units,
        gib(info.memory_bytes)
    );
    if let Some(t) = nvml {
        let show = |x: Option<f64>| x.map_or_else(|| "?".into(), |v| format!("{v:.0}"));
        println!(
            "nvml: gpu {} {} {}, {} °C, {} W (limit {} W), SM clock {} MHz",
            t.gpu,
            t.uuid,
            t.model_name,
            show(t.temperature_celsius),
            show(t.power_watts),
            show(t.power_limit_watts),
            t.sm_clock_hz.map_or_else(|| "?".into(), |hz| (hz / 1_000_000).to_string())
        );
    }
    if let Some(peak) = peak {
        println!("reference peak: {peak} TOPS");
    }
    println!();
}

fn print_size(report: &SizeReport, reps: u32, peak: Option<f64>, spot: &SpotCost) {
    let m = match report {
        SizeReport::Skipped(s) => {
            println!("n = {}: skipped, {s}\n", s.n);
            return;
        }
        SizeReport::Measured(m) => m,
    };
    let engine = m.gemm_engine.map(|e| format!("; {e} GEMM")).unwrap_or_default();
    println!("n = {} ({reps} reps after a warm-up, medians{engine})", m.n);
    println!("  {:<26} {:>12} {:>12}", "phase", "ms", "TOPS");
    for p in &m.phases {
        println!(
            "  {:<26} {:>12.3} {:>12.4}",
            p.phase.label(),
            p.seconds * 1e3,
            m.tops(p.phase).unwrap_or(0.0)
        );
    }
    let mut summary = format!("  end to end: {:.4} TOPS", m.end_to_end_tops());
    if let Some(peak) = peak {
        summary += &format!(" = {:.2} % of {peak} TOPS peak", 100.0 * m.fraction_of_peak(peak));
    }
    if let Some(ratio) = m.pipeline_gemm_ratio() {
        summary += &format!("; pipeline GEMM at {:.1} % of the library alone", 100.0 * ratio);
    }
    println!("{summary}");
    if let Some(j) = m.energy_joules {
        println!("  energy per task: {j:.2} J");
    }
    if let (Some(first), Some(last)) = (m.reps.first(), m.reps.last()) {
        println!(
            "  result hashes: {} ({}) .. {} ({})",
            short_hex(&first.result_hash),
            first.seed,
            short_hex(&last.result_hash),
            last.seed
        );
    }
    spot.print(report);
    println!();
}

fn short_hex(digest: &[u8; 32]) -> String {
    hex::encode(&digest[..8])
}

fn size_json(report: &SizeReport, peak: Option<f64>) -> Value {
    match report {
        SizeReport::Skipped(s) => json!({
            "n": s.n,
            "skipped": s.to_string(),
            "needed_bytes": s.needed_bytes,
            "available_bytes": s.available_bytes,
        }),
        SizeReport::Measured(m) => measurement_json(m, peak),
    }
}

fn measurement_json(m: &Measurement, peak: Option<f64>) -> Value {
    let phases: serde_json::Map<String, Value> = m
        .phases
        .iter()
        .map(|p| {
            let tops = m.tops(p.phase).unwrap_or(0.0);
            (p.phase.key().to_owned(), json!({"seconds": p.seconds, "tops": tops}))
        })
        .collect();
    let reps: Vec<Value> = m
        .reps
        .iter()
        .map(|r| {
            let mut rep = json!({
                "seed": r.seed,
                "result_hash": hex::encode(r.result_hash),
                "wall_seconds": r.wall_seconds,
            });
            if let (Some(s), Some(obj)) = (&r.stats, rep.as_object_mut()) {
                obj.insert("device_seconds".into(), json!(s.device_seconds));
                obj.insert("generate_seconds".into(), json!(s.generate_seconds));
                obj.insert("gemm_seconds".into(), json!(s.gemm_seconds));
                obj.insert("hash_tail_seconds".into(), json!(s.hash_tail_seconds));
                obj.insert("energy_joules".into(), json!(s.energy_joules));
                obj.insert("b_cached".into(), json!(s.b_cached));
            }
            rep
        })
        .collect();
    json!({
        "n": m.n,
        "ops": m.ops,
        "skipped": null,
        "gemm_engine": m.gemm_engine.map(|e| e.as_str()),
        "phases": phases,
        "end_to_end": {
            "phase": m.end_to_end_phase().key(),
            "seconds": m.end_to_end_seconds(),
            "tops": m.end_to_end_tops(),
            "fraction_of_peak": peak.map(|p| m.fraction_of_peak(p)),
        },
        "pipeline_gemm_ratio_to_alone": m.pipeline_gemm_ratio(),
        "energy_joules_per_task": m.energy_joules,
        "reps": reps,
    })
}

fn telemetry_json(t: &GpuTelemetry) -> Value {
    json!({
        "gpu": t.gpu,
        "uuid": t.uuid,
        "model_name": t.model_name,
        "temperature_celsius": t.temperature_celsius,
        "power_watts": t.power_watts,
        "power_limit_watts": t.power_limit_watts,
        "sm_clock_hz": t.sm_clock_hz,
        "energy_joules_total": t.energy_joules_total,
        "throttle_reasons": t.throttle_reason_names(),
        "xid_errors_total": t.xid_errors_total,
        "pcie_replays_total": t.pcie_replays_total,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::{Cli, Command};
    use clap::Parser as _;

    fn parse(args: &[&str]) -> Result<BenchArgs, clap::Error> {
        let cli = Cli::try_parse_from(["cpc-coordinator", "bench"].iter().chain(args))?;
        match cli.command {
            Command::Bench(BenchCommand { farm: None, device }) => Ok(device),
            other => panic!("parsed as {other:?}"),
        }
    }

    /// `bench farm` is a subcommand beside the device bench's own flags, which keep working without one.
    #[test]
    fn bench_farm_is_a_subcommand_and_the_device_bench_is_unchanged() {
        let cli = Cli::try_parse_from(["cpc-coordinator", "bench", "farm", "--agents", "2"])
            .expect("bench farm parses");
        assert!(
            matches!(
                cli.command,
                Command::Bench(BenchCommand { farm: Some(BenchFarm::Farm(_)), .. })
            ),
            "{:?}",
            cli.command
        );
        assert!(parse(&["--backend", "cpu", "--reps", "1"]).is_ok());
        let mixed = Cli::try_parse_from(["cpc-coordinator", "bench", "--reps", "1", "farm"]);
        assert!(mixed.is_err(), "device flags and `farm` do not mix");
        let bad = Cli::try_parse_from(["cpc-coordinator", "bench", "farm", "--device-tops", "-1"]);
        assert!(bad.is_err(), "a speed must be positive");
    }

    #[test]
    fn sizes_default_per_backend_and_accept_lists() {
        let cpu = parse(&[]).expect("parses");
        assert_eq!(cpu.sizes(), DEFAULT_CPU_SIZES);
        assert_eq!(cpu.reps, DEFAULT_REPS);
        assert_eq!(cpu.peak_tops(), None);
        let cuda = parse(&["--backend", "cuda", "--device", "1"]).expect("parses");
        assert_eq!(cuda.sizes(), DEFAULT_CUDA_SIZES);
        assert_eq!(cuda.backend.device, 1);
        assert_eq!(cuda.peak_tops(), Some(H100_SXM_INT8_PEAK_TOPS));
        let listed =
            parse(&["--matrix-size", "64,130", "--matrix-size", "7", "--matrix-size", "64"])
                .expect("parses");
        assert_eq!(listed.sizes(), [64, 130, 7]);
        let peak = parse(&["--peak-tops", "989.5"]).expect("parses");
        assert_eq!(peak.peak_tops(), Some(989.5));
        assert_eq!(cpu.backend.kernel, None);
        for kernel in cpc_kernels::cpu::Kernel::ALL {
            let forced = parse(&["--kernel", kernel.as_str()]).expect("parses");
            assert_eq!(forced.backend.kernel, Some(kernel));
        }
    }

    #[test]
    fn row_samples_straddle_the_chunk_boundaries() {
        assert_eq!(sample_rows(16384), [0..2, 4095..4097, 8191..8193, 16383..16384]);
        assert_eq!(show_rows(&sample_rows(16384)), "0-1, 4095-4096, 8191-8192, 16383");
        assert_eq!(sample_rows(4160), [0..2, 2080..2081, 4095..4097, 4159..4160]);
        assert_eq!(sample_rows(3), vec![Range { start: 0, end: 3 }]);
        assert_eq!(sample_rows(1), vec![Range { start: 0, end: 1 }]);
    }

    /// A backend that gets one row wrong: the CPU's leaves, row `bad` flipped.
    #[derive(Debug)]
    struct OneRowWrong {
        cpu: CpuBackend,
        bad: u32,
    }

    impl Backend for OneRowWrong {
        fn name(&self) -> &str {
            "one-row-wrong"
        }
        fn info(&self) -> DeviceInfo {
            self.cpu.info()
        }
        fn run_shard(
            &self,
            shard: &Shard,
            keep_rows: bool,
        ) -> Result<cpc_kernels::ShardOutput, cpc_kernels::BackendError> {
            let mut out = self.cpu.run_shard(shard, keep_rows)?;
            if shard.rows.contains(&self.bad) {
                out.leaves[(self.bad - shard.rows.start) as usize][0] ^= 1;
            }
            Ok(out)
        }
    }

    /// The check passes on the CPU's own leaves and fails on a backend with one sampled row wrong.
    #[test]
    fn row_check_catches_a_wrong_row() {
        let cpu = CpuBackend::new(1).expect("cpu");
        assert_eq!(check_rows(&cpu, 70).expect("same leaves"), [0..2, 35..36, 69..70]);
        let wrong = OneRowWrong { cpu: CpuBackend::new(1).expect("cpu"), bad: 35 };
        let err = check_rows(&wrong, 70).expect_err("row 35 differs");
        assert!(err.to_string().contains("rows 35..36"), "{err}");
    }

    #[test]
    fn bad_arguments_are_refused() {
        for bad in [
            &["--matrix-size", "0"][..],
            &["--matrix-size", "70000"],
            &["--matrix-size", "64,x"],
            &["--reps", "0"],
            &["--peak-tops", "-1"],
            &["--peak-tops", "nan"],
            &["--backend", "tpu"],
            &["--kernel", "avx9"],
        ] {
            assert!(parse(bad).is_err(), "{bad:?}");
        }
    }
}
