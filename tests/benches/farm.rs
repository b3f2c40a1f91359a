//! Farm transport and scheduling benchmark: 200 simulated devices (10 agents × 20 no-op devices) on loopback
//! QUIC, spot checks off, so the numbers measure the coordinator, QUIC and the agents rather than maths.
//! Reports shards dispatched per second and the p50/p99 shard round trip.
//!
//! `cargo bench -p cpc-tests --bench farm` (in `cpc-tests`, not the coordinator crate: it starts agents, and
//! the coordinator never depends on the agent). `cpc-coordinator bench farm` measures the same with agent
//! processes and concurrent identities.

use cpc_agent::{AgentConfig, AgentThread, DeviceSpec, noop::NoopBackend};
use cpc_common::synthetic::Challenge;
use cpc_coordinator::farm::{self, FarmConfig, Identity, JobReport, SplitPolicy, SpotCheckConfig};
use criterion::{Criterion, criterion_group, criterion_main};
use std::{
    sync::{Arc, Mutex},
    time::Duration,
};

/// The binaries' allocator (`cpc-coordinator` and `cpc-agent` use mimalloc), so that the numbers are theirs.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

const AGENTS: u32 = 10;
const DEVICES_PER_AGENT: u32 = 20;
/// n: 200 devices × 20 rows.
const MATRIX_SIZE: u32 = 4000;
/// Iterations per job: 10 × 200 = 2000 shards.
const ITERATIONS: u32 = 10;

fn bench(c: &mut Criterion) {
    let mut config = FarmConfig::new(
        "127.0.0.1:0".parse().expect("addr"),
        Identity::generate().expect("identity"),
    );
    config.split = SplitPolicy { small_job: Duration::ZERO, min_shard_rows: 1 };
    config.spot_check = SpotCheckConfig { rows_per_shard: 0, ..Default::default() };
    config.heartbeat_interval = Duration::from_millis(500);
    let farm = farm::start(config).expect("farm");
    let agents: Vec<AgentThread> = (0..AGENTS)
        .map(|a| {
            let mut cfg =
                AgentConfig::new(farm.local_addr().to_string(), farm.token(), farm.fingerprint());
            cfg.name = format!("sim{a}");
            cfg.measure_matrix_size = 16;
            cfg.row_cache_bytes = 64 << 20;
            let devices = (0..DEVICES_PER_AGENT)
                .map(|index| DeviceSpec {
                    index,
                    backend: Arc::new(NoopBackend) as Arc<dyn cpc_kernels::Backend>,
                })
                .collect();
            AgentThread::spawn(cfg, devices)
        })
        .collect();
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let devices = rt
        .block_on(
            farm.wait_for_devices((AGENTS * DEVICES_PER_AGENT) as usize, Duration::from_secs(120)),
        )
        .expect("devices");
    eprintln!("{devices} simulated devices connected");
    let challenge = Challenge::new("bench-noop", MATRIX_SIZE, ITERATIONS).expect("challenge");
    let reports: Arc<Mutex<Vec<JobReport>>> = Arc::default();
    let mut group = c.benchmark_group("farm");
    group.sample_size(10);
    group.measurement_time(Duration::from_secs(20));
    group.bench_function("job_2000_shards_200_noop_devices", |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                let report = rt.block_on(farm.run_job(challenge.clone())).expect("job");
                total += Duration::from_secs_f64(report.makespan_seconds);
                if let Ok(mut r) = reports.lock() {
                    r.push(report);
                }
            }
            total
        });
    });
    group.finish();
    let reports = reports.lock().map(|r| r.clone()).unwrap_or_default();
    let mut trips: Vec<Duration> =
        reports.iter().flat_map(|r| r.shard_round_trips.iter().copied()).collect();
    trips.sort();
    let shards: u64 = reports.iter().map(|r| r.shards_dispatched).sum();
    let secs: f64 = reports.iter().map(|r| r.makespan_seconds).sum();
    let pct = |p: usize| {
        trips.get((trips.len() * p).div_ceil(100).saturating_sub(1)).copied().unwrap_or_default()
    };
    println!(
        "farm noop: {} jobs, {shards} shards over {devices} devices in {secs:.2} s: {:.0} shards/s dispatched; \
         round trip p50 {:?}, p99 {:?}",
        reports.len(),
        shards as f64 / secs.max(1e-9),
        pct(50),
        pct(99)
    );
    drop(agents);
    farm.shutdown();
}

criterion_group!(benches, bench);
criterion_main!(benches);
