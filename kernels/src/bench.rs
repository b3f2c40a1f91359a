//! The measurements behind `cpc-coordinator bench`: time and tera-ops per second of one whole synthetic-v1
//! product (`n × n × n`) on one device, per phase where the device reports phases and end to end.
//!
//! It lives here rather than in the CLI so that the numbers an operator reads are computed by library code
//! that tests drive, and so that it needs the concrete [`CudaBackend`] (for [`CudaBackend::time_gemm`], the
//! GEMM alone) without the caller writing `#[cfg(feature = "cuda")]`: [`BenchDevice`] holds either backend.
//!
//! Per size n, [`BenchDevice::measure`] runs one warm-up and then `reps` whole-matrix shards, each with a
//! fresh seed ([`rep_seed`]) so that B is generated every time (the CUDA backend caches B between shards of
//! the same challenge). It keeps each repetition's result hash (the Merkle root of its row leaves, which for
//! one iteration is the challenge's `result_hash`), so a run proves it computed what the chain would accept.
//! The CUDA backend reports per-phase device times ([`ShardStats`]); the CPU backend does not, so its only
//! phase is host wall-clock end to end. Medians are taken per phase. A size whose shard does not fit in the
//! device's memory is [`SizeReport::Skipped`], not an error.

use crate::{
    Backend, BackendError, BackendKind, CpuBackend, CudaBackend, DeviceInfo, Shard,
    cpu::Kernel,
    gpu::{GemmEngine, ShardStats, gpu_shard_bytes, tops},
    shard_memory_bytes,
};
use cpc_common::{hashing::Digest32, merkle::merkle_root, synthetic::Challenge};
use std::{fmt, time::Instant};

/// NVIDIA H100 SXM dense (no sparsity) INT8 tensor-core peak, tera-ops per second.
pub const H100_SXM_INT8_PEAK_TOPS: f64 = 1979.0;

/// Prefix of every benchmark seed (see [`rep_seed`]).
pub const SEED_PREFIX: &str = "cpc-bench";

/// The seed of repetition `rep` at size `n`: `cpc-bench-{n}-{rep}`. Repetition 0 is the warm-up, the
/// measured ones are `1..=reps`, so anyone can recompute a reported result hash from `n` and `rep`.
pub fn rep_seed(n: u32, rep: u32) -> String {
    format!("{SEED_PREFIX}-{n}-{rep}")
}

/// Integer operations of one `n × n × n` product: `2 · n³` (a multiply and an add per term).
pub fn product_ops(n: u32) -> u64 {
    2 * u64::from(n).pow(3)
}

/// The median of `xs` (the mean of the two middle values for an even count), `None` when empty. NaNs sort
/// last ([`f64::total_cmp`]).
pub fn median(xs: &[f64]) -> Option<f64> {
    let mut sorted = xs.to_vec();
    sorted.sort_by(f64::total_cmp);
    let mid = sorted.len() / 2;
    match sorted.len() {
        0 => None,
        len if len % 2 == 1 => Some(sorted[mid]),
        _ => Some((sorted[mid - 1] + sorted[mid]) / 2.0),
    }
}

/// One line of the benchmark table.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Phase {
    /// Device time generating A's rows and B ([`ShardStats::generate_seconds`]).
    Generate,
    /// Device time of the pipeline's chunked GEMM stream ([`ShardStats::gemm_seconds`]).
    Gemm,
    /// Device time of hashing left after the last GEMM chunk ([`ShardStats::hash_tail_seconds`]).
    HashTail,
    /// Device time end to end ([`ShardStats::device_seconds`]).
    DeviceEndToEnd,
    /// Host wall-clock time of the whole `run_shard` call.
    HostWall,
    /// The device's GEMM library by itself on the same size ([`CudaBackend::time_gemm`]).
    GemmAlone,
}

impl Phase {
    /// Every phase, in table order.
    pub const ALL: [Self; 6] = [
        Self::Generate,
        Self::Gemm,
        Self::HashTail,
        Self::DeviceEndToEnd,
        Self::HostWall,
        Self::GemmAlone,
    ];

    /// A stable snake-case key (for JSON).
    pub fn key(self) -> &'static str {
        match self {
            Self::Generate => "generate",
            Self::Gemm => "gemm",
            Self::HashTail => "hash_tail",
            Self::DeviceEndToEnd => "end_to_end_device",
            Self::HostWall => "end_to_end_wall",
            Self::GemmAlone => "gemm_alone",
        }
    }

    /// The label in the human table.
    pub fn label(self) -> &'static str {
        match self {
            Self::Generate => "generate A and B",
            Self::Gemm => "GEMM (chunked, pipeline)",
            Self::HashTail => "hash tail (after GEMM)",
            Self::DeviceEndToEnd => "end to end (device)",
            Self::HostWall => "end to end (host wall)",
            Self::GemmAlone => "GEMM alone (library)",
        }
    }
}

impl fmt::Display for Phase {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.label())
    }
}

/// The median time of one phase over the measured repetitions.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PhaseTime {
    /// Which phase.
    pub phase: Phase,
    /// Median seconds ([`Phase::GemmAlone`]: the mean [`CudaBackend::time_gemm`] reports).
    pub seconds: f64,
}

/// One measured repetition.
#[derive(Debug, Clone, PartialEq)]
pub struct Rep {
    /// Its challenge's seed ([`rep_seed`]; one iteration at the size measured).
    pub seed: String,
    /// The Merkle root of its row leaves: the challenge's `result_hash`.
    pub result_hash: Digest32,
    /// Host wall-clock seconds of the `run_shard` call.
    pub wall_seconds: f64,
    /// What the backend measured, for backends that do (CUDA).
    pub stats: Option<ShardStats>,
}

/// Every number of one size that ran.
#[derive(Debug, Clone, PartialEq)]
pub struct Measurement {
    /// Matrix size n.
    pub n: u32,
    /// Operations of one product ([`product_ops`]).
    pub ops: u64,
    /// The measured repetitions (the warm-up is not among them).
    pub reps: Vec<Rep>,
    /// Median time per phase, in [`Phase::ALL`] order, for the phases this device reports.
    pub phases: Vec<PhaseTime>,
    /// Median joules per product, when the device measures energy.
    pub energy_joules: Option<f64>,
    /// The GEMM the CUDA backend ran (`None` on the CPU).
    pub gemm_engine: Option<GemmEngine>,
}

impl Measurement {
    /// Median seconds of `phase`, when measured.
    pub fn seconds(&self, phase: Phase) -> Option<f64> {
        self.phases.iter().find(|p| p.phase == phase).map(|p| p.seconds)
    }

    /// Tera-ops per second of `phase` (the product's ops over its time), when measured.
    pub fn tops(&self, phase: Phase) -> Option<f64> {
        self.seconds(phase).map(|s| tops(self.ops, s))
    }

    /// The end-to-end phase: device time where the device reports it, host wall-clock otherwise.
    pub fn end_to_end_phase(&self) -> Phase {
        if self.seconds(Phase::DeviceEndToEnd).is_some() {
            Phase::DeviceEndToEnd
        } else {
            Phase::HostWall
        }
    }

    /// Median seconds end to end (see [`Measurement::end_to_end_phase`]).
    pub fn end_to_end_seconds(&self) -> f64 {
        self.seconds(self.end_to_end_phase()).unwrap_or(0.0)
    }

    /// Tera-ops per second end to end.
    pub fn end_to_end_tops(&self) -> f64 {
        tops(self.ops, self.end_to_end_seconds())
    }

    /// End-to-end tera-ops per second as a fraction (0–1) of `peak_tops`.
    pub fn fraction_of_peak(&self, peak_tops: f64) -> f64 {
        if peak_tops > 0.0 { self.end_to_end_tops() / peak_tops } else { 0.0 }
    }

    /// The pipeline's GEMM phase speed as a fraction of the library alone (`gemm alone seconds / pipeline
    /// GEMM seconds`: 1 means as fast), when both were measured.
    pub fn pipeline_gemm_ratio(&self) -> Option<f64> {
        let alone = self.seconds(Phase::GemmAlone)?;
        let pipeline = self.seconds(Phase::Gemm)?;
        (pipeline > 0.0).then(|| alone / pipeline)
    }
}

/// A size that did not fit in the device's memory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Skipped {
    /// Matrix size n.
    pub n: u32,
    /// Bytes a whole-matrix shard needs.
    pub needed_bytes: u64,
    /// Bytes the device has for one shard.
    pub available_bytes: u64,
}

impl fmt::Display for Skipped {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let gib = |b: u64| b as f64 / (1u64 << 30) as f64;
        write!(
            f,
            "a whole n = {} shard needs {:.1} GiB, the device has {:.1} GiB per shard",
            self.n,
            gib(self.needed_bytes),
            gib(self.available_bytes)
        )
    }
}

/// What happened at one size.
#[derive(Debug, Clone, PartialEq)]
pub enum SizeReport {
    /// It ran.
    Measured(Measurement),
    /// It did not fit.
    Skipped(Skipped),
}

impl SizeReport {
    /// Matrix size n.
    pub fn n(&self) -> u32 {
        match self {
            Self::Measured(m) => m.n,
            Self::Skipped(s) => s.n,
        }
    }
}

/// The device a benchmark drives: the backend itself (not `dyn Backend`) so that CUDA's extras, the GEMM
/// alone and the engine name, are at hand. Builds without the `cuda` feature hold the stand-in
/// [`CudaBackend`], which cannot be constructed, so [`BenchDevice::open`] answers its error instead.
#[derive(Debug)]
pub enum BenchDevice {
    /// The host CPU.
    Cpu(CpuBackend),
    /// One GPU (boxed: the real backend is much larger than the CPU's).
    Cuda(Box<CudaBackend>),
}

impl BenchDevice {
    /// Opens device `device` of kind `kind` (like [`crate::open`]).
    pub fn open(kind: BackendKind, device: usize) -> Result<Self, BackendError> {
        Self::open_with_kernel(kind, device, None)
    }

    /// Opens device `device` of kind `kind` with the CPU's GEMM kernel forced when given (like
    /// [`crate::open_with_kernel`]), so that `bench --kernel` compares kernels on one host.
    pub fn open_with_kernel(
        kind: BackendKind,
        device: usize,
        cpu_kernel: Option<Kernel>,
    ) -> Result<Self, BackendError> {
        match (kind, cpu_kernel) {
            (BackendKind::Cpu, kernel) => Ok(Self::Cpu(crate::open_cpu_with(device, kernel)?)),
            (BackendKind::Cuda, None) => Ok(Self::Cuda(Box::new(CudaBackend::new(device)?))),
            (BackendKind::Cuda, Some(kernel)) => Err(BackendError::KernelForCuda(kernel.as_str())),
        }
    }

    /// The CPU backend's GEMM kernel (`None` on a GPU).
    pub fn cpu_kernel(&self) -> Option<Kernel> {
        match self {
            Self::Cpu(cpu) => Some(cpu.kernel()),
            Self::Cuda(_) => None,
        }
    }

    /// The backend, as every other caller sees it.
    pub fn backend(&self) -> &dyn Backend {
        match self {
            Self::Cpu(cpu) => cpu,
            Self::Cuda(cuda) => cuda.as_ref(),
        }
    }

    /// What the device is.
    pub fn info(&self) -> DeviceInfo {
        self.backend().info()
    }

    /// Which GEMM the CUDA backend runs, and why when it is the fallback (`None` on the CPU).
    pub fn gemm_engine(&self) -> Option<&str> {
        match self {
            Self::Cpu(_) => None,
            Self::Cuda(cuda) => Some(cuda.gemm_engine()),
        }
    }

    /// Bytes one whole-matrix shard at size `n` needs on this device.
    pub fn shard_bytes(&self, n: u32) -> u64 {
        match self {
            Self::Cpu(_) => shard_memory_bytes(n, n),
            Self::Cuda(_) => gpu_shard_bytes(n, n),
        }
    }

    /// Measures size `n`: one warm-up, then `reps` (at least 1) whole-matrix shards with fresh seeds, then on
    /// CUDA the GEMM alone. Skips the size when its shard does not fit in the device's memory.
    pub fn measure(&self, n: u32, reps: u32) -> Result<SizeReport, BackendError> {
        let reps = reps.max(1);
        let needed_bytes = self.shard_bytes(n);
        let available_bytes = self.info().memory_bytes;
        if needed_bytes > available_bytes {
            return Ok(SizeReport::Skipped(Skipped { n, needed_bytes, available_bytes }));
        }
        self.run_rep(n, 0)?; // warm-up: kernels compiled, buffers allocated, caches and clocks warm
        let runs = (1..=reps).map(|rep| self.run_rep(n, rep)).collect::<Result<Vec<_>, _>>()?;
        let gemm_alone = match self {
            Self::Cpu(_) => None,
            Self::Cuda(cuda) => Some(cuda.time_gemm(n, reps)?),
        };
        Ok(SizeReport::Measured(summarise(n, runs, gemm_alone)))
    }

    fn run_rep(&self, n: u32, rep: u32) -> Result<Rep, BackendError> {
        let seed = rep_seed(n, rep);
        let challenge = Challenge::new(seed.clone(), n, 1)
            .map_err(|e| BackendError::InvalidShard(e.to_string()))?;
        let shard = Shard::whole(challenge, 0)?;
        let backend = self.backend();
        let started = Instant::now();
        let output = backend.run_shard(&shard, false)?;
        let wall_seconds = started.elapsed().as_secs_f64();
        Ok(Rep {
            seed,
            result_hash: merkle_root(&output.leaves),
            wall_seconds,
            stats: backend.last_stats(),
        })
    }
}

/// What the coordinator's spot check of one shard costs on this host's CPU: for each of `rows` rows, the
/// SHA-256 of the fetched row (n values) and `elements_per_row` elements of C recomputed with
/// [`crate::cpu::c_elements`], on the calling thread as the coordinator runs it. Median seconds over
/// `reps` (at least 1) challenges at size `n` with fresh seeds, after one warm-up; rows and columns are
/// spread over the matrix deterministically.
pub fn spot_check_seconds(n: u32, rows: u32, elements_per_row: u32, reps: u32) -> f64 {
    let mut times = Vec::with_capacity(reps.max(1) as usize);
    let fake_row: Vec<i32> = (0..n as i32).collect();
    for rep in 0..=reps.max(1) {
        let Ok(challenge) = Challenge::new(rep_seed(n, rep), n, 1) else { return 0.0 };
        let started = Instant::now();
        for r in 0..rows {
            let row = (r.wrapping_mul(2_654_435_761) ^ rep) % n;
            std::hint::black_box(crate::cpu::hash_row(&fake_row));
            let cols: Vec<u32> = (0..elements_per_row.min(n))
                .map(|c| (c.wrapping_mul(40_503).wrapping_add(r) ^ rep) % n)
                .collect();
            std::hint::black_box(crate::cpu::c_elements(&challenge, 0, row, &cols));
        }
        if rep > 0 {
            times.push(started.elapsed().as_secs_f64());
        }
    }
    median(&times).unwrap_or(0.0)
}

/// Medians of the repetitions. Device phases only when every repetition has stats.
fn summarise(n: u32, reps: Vec<Rep>, gemm_alone_seconds: Option<f64>) -> Measurement {
    let stats: Option<Vec<&ShardStats>> = reps.iter().map(|r| r.stats.as_ref()).collect();
    let stats = stats.filter(|s| !s.is_empty());
    let of_stats = |f: fn(&ShardStats) -> f64| {
        stats.as_ref().and_then(|s| median(&s.iter().map(|x| f(x)).collect::<Vec<_>>()))
    };
    let mut phases = Vec::with_capacity(Phase::ALL.len());
    for phase in Phase::ALL {
        let seconds = match phase {
            Phase::Generate => of_stats(|s| s.generate_seconds),
            Phase::Gemm => of_stats(|s| s.gemm_seconds),
            Phase::HashTail => of_stats(|s| s.hash_tail_seconds),
            Phase::DeviceEndToEnd => of_stats(|s| s.device_seconds),
            Phase::HostWall => median(&reps.iter().map(|r| r.wall_seconds).collect::<Vec<_>>()),
            Phase::GemmAlone => gemm_alone_seconds,
        };
        if let Some(seconds) = seconds {
            phases.push(PhaseTime { phase, seconds });
        }
    }
    let energy_joules = stats.as_ref().and_then(|s| {
        let joules: Vec<f64> = s.iter().filter_map(|x| x.energy_joules).collect();
        median(&joules)
    });
    let gemm_engine = stats.as_ref().and_then(|s| s.first().map(|x| x.gemm_engine));
    Measurement { n, ops: product_ops(n), reps, phases, energy_joules, gemm_engine }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn medians() {
        assert_eq!(median(&[]), None);
        assert_eq!(median(&[3.0]), Some(3.0));
        assert_eq!(median(&[5.0, 1.0, 3.0]), Some(3.0));
        assert_eq!(median(&[4.0, 1.0, 3.0, 2.0]), Some(2.5));
        assert_eq!(median(&[1.0, f64::NAN, 2.0]), Some(2.0));
    }

    #[test]
    fn seeds_are_fresh_per_rep_and_size() {
        assert_eq!(rep_seed(4096, 3), "cpc-bench-4096-3");
        assert_ne!(rep_seed(64, 1), rep_seed(64, 2));
        assert_ne!(rep_seed(64, 1), rep_seed(640, 1));
        assert_eq!(product_ops(1024), 2 << 30);
    }

    fn stats(device_seconds: f64, energy: Option<f64>) -> ShardStats {
        ShardStats {
            n: 8,
            rows: 8,
            ops: product_ops(8),
            generate_seconds: 0.1,
            gemm_seconds: 0.5,
            hash_tail_seconds: 0.05,
            device_seconds,
            wall_seconds: device_seconds + 0.01,
            energy_joules: energy,
            gemm_engine: GemmEngine::CublasLt,
            b_cached: false,
        }
    }

    fn rep(wall: f64, stats: Option<ShardStats>) -> Rep {
        Rep { seed: String::new(), result_hash: [0; 32], wall_seconds: wall, stats }
    }

    #[test]
    fn device_phases_when_every_rep_has_stats() {
        let reps = vec![
            rep(1.0, Some(stats(0.8, Some(2.0)))),
            rep(3.0, Some(stats(0.6, None))),
            rep(2.0, Some(stats(0.7, Some(4.0)))),
        ];
        let m = summarise(8, reps, Some(0.4));
        let keys: Vec<_> = m.phases.iter().map(|p| p.phase).collect();
        assert_eq!(keys, Phase::ALL);
        assert_eq!(m.end_to_end_phase(), Phase::DeviceEndToEnd);
        assert_eq!(m.end_to_end_seconds(), 0.7);
        assert_eq!(m.seconds(Phase::HostWall), Some(2.0));
        assert_eq!(m.energy_joules, Some(3.0));
        assert_eq!(m.gemm_engine, Some(GemmEngine::CublasLt));
        assert_eq!(m.pipeline_gemm_ratio(), Some(0.4 / 0.5));

        let partial = summarise(8, vec![rep(1.0, Some(stats(0.8, None))), rep(2.0, None)], None);
        assert_eq!(partial.phases.len(), 1);
        assert_eq!(partial.end_to_end_phase(), Phase::HostWall);
        assert_eq!(partial.pipeline_gemm_ratio(), None);
    }

    #[test]
    fn cpu_reps_hash_their_challenge() {
        let device = BenchDevice::open(BackendKind::Cpu, 0).expect("cpu");
        assert_eq!(device.gemm_engine(), None);
        let SizeReport::Measured(m) = device.measure(33, 2).expect("measure") else {
            panic!("n = 33 fits in memory")
        };
        assert_eq!(m.reps.len(), 2);
        assert_eq!(m.phases.iter().map(|p| p.phase).collect::<Vec<_>>(), [Phase::HostWall]);
        assert!(m.end_to_end_tops() > 0.0);
        for (i, r) in m.reps.iter().enumerate() {
            let rep = u32::try_from(i + 1).expect("small");
            assert_eq!(r.seed, rep_seed(33, rep));
            let challenge = Challenge::new(r.seed.clone(), 33, 1).expect("challenge");
            let expected = crate::result_hash(device.backend(), &challenge).expect("hash");
            assert_eq!(r.result_hash, expected, "rep {rep}");
        }
        assert_ne!(m.reps[0].result_hash, m.reps[1].result_hash);
    }

    #[test]
    fn spot_check_cost_is_measured() {
        assert!(spot_check_seconds(64, 2, 8, 2) > 0.0);
    }

    #[test]
    fn sizes_that_do_not_fit_are_skipped() {
        let device = BenchDevice::Cpu(
            CpuBackend::new(1).expect("cpu").with_memory_limit(shard_memory_bytes(64, 64) - 1),
        );
        let report = device.measure(64, 1).expect("measure");
        let SizeReport::Skipped(skipped) = &report else { panic!("{report:?}") };
        assert_eq!(skipped.needed_bytes, shard_memory_bytes(64, 64));
        assert!(skipped.to_string().contains("n = 64"), "{skipped}");
        assert!(matches!(device.measure(32, 1), Ok(SizeReport::Measured(_))));
    }

    #[test]
    fn cuda_opens_only_with_a_gpu() {
        if CudaBackend::device_count() == 0 {
            assert!(BenchDevice::open(BackendKind::Cuda, 0).is_err());
        }
        assert!(matches!(
            BenchDevice::open(BackendKind::Cpu, 1),
            Err(BackendError::NoDevice { index: 1, .. })
        ));
    }
}
