//! The farm's scheduling decisions alone, with no network and no actor: the pure [`Schedule`] at the size
//! issue 12 asks of one coordinator (100 agents × 100 devices of an RTX 4090's 660 dense INT8 TOPS,
//! 500 identities' block tasks at n = 1024), so that the scheduler's own cost per shard is known apart
//! from QUIC and the agents.
//!
//! One iteration is one block: its 500 tasks are submitted (each runs whole on one device: 3.3 µs of
//! work), and every dispatched shard is answered with a verified root (what an agent of protocol version
//! 6 answers for a whole iteration), which finishes its job. The throughput is shards decided per second
//! (a dispatch and its answer); the target for the whole farm is ≥ 50,000 shards/s dispatched.
//!
//! `cargo bench -p cpc-coordinator --bench schedule`

use cpc_common::{
    synthetic::Challenge,
    wire::{DeviceAdvert, RowCapacity, advertised_sizes},
};
use cpc_coordinator::farm::{
    DeviceId, SplitPolicy, StragglerPolicy,
    aggregator::ShardResult,
    metrics::FarmMetrics,
    schedule::{
        Action, DeviceEntry, JobSpec, Schedule, SchedulePolicy, SchedulingPolicy, ShardOutcome,
    },
};
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use std::time::{Duration, Instant};

/// The binary's allocator (`cpc-coordinator` uses mimalloc), so that the numbers are its.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

const AGENTS: u64 = 100;
const DEVICES_PER_AGENT: u32 = 100;
const IDENTITIES: usize = 500;
const MATRIX_SIZE: u32 = 1024;
/// An RTX 4090's dense INT8 rate, in integer operations per second.
const DEVICE_OPS_PER_SEC: f64 = 660e12;

fn device(agent: u64, index: u32) -> DeviceEntry {
    DeviceEntry {
        id: DeviceId { agent, index },
        agent_name: format!("sim{agent}"),
        advert: DeviceAdvert {
            index,
            name: "simulated RTX 4090".into(),
            kind: "sim".into(),
            memory_bytes: 24 << 30,
            measured_ops_per_sec: DEVICE_OPS_PER_SEC,
            concurrent_shards: 2,
            row_capacity: advertised_sizes()
                .map(|matrix_size| RowCapacity { matrix_size, max_rows: matrix_size })
                .collect(),
        },
    }
}

fn farm_schedule() -> Schedule {
    let policy = SchedulePolicy {
        split: SplitPolicy::default(),
        straggler: StragglerPolicy::default(),
        shard_timeout: Duration::from_secs(600),
        no_device_wait: Duration::from_secs(60),
        ordering: SchedulingPolicy::BlockFirst,
    };
    let mut schedule = Schedule::new(policy, FarmMetrics::default(), 1);
    let now = Instant::now();
    for agent in 1..=AGENTS {
        for index in 0..DEVICES_PER_AGENT {
            let _ = schedule.add_device(now, device(agent, index));
        }
    }
    schedule
}

fn bench(c: &mut Criterion) {
    let identities: Vec<String> = (0..IDENTITIES).map(|i| format!("identity{i}")).collect();
    let mut schedule = farm_schedule();
    let mut next_job = 1u64;
    let mut group = c.benchmark_group("schedule");
    group.throughput(Throughput::Elements(IDENTITIES as u64));
    group.sample_size(20);
    group.bench_function("block_10000_devices_500_identities_n1024", |b| {
        b.iter_custom(|iters| {
            let mut spent = Duration::ZERO;
            for block in 0..iters {
                let specs: Vec<JobSpec> = identities
                    .iter()
                    .map(|owner| {
                        let seed = format!("{owner}/{block}/{next_job}");
                        let challenge = Challenge::new(seed, MATRIX_SIZE, 1).expect("valid");
                        JobSpec { owner: owner.clone(), ..JobSpec::new(challenge) }
                    })
                    .collect();
                let started = Instant::now();
                let mut dispatched = Vec::with_capacity(IDENTITIES);
                for spec in specs {
                    let actions = schedule.submit(started, next_job, spec);
                    next_job += 1;
                    dispatched.extend(dispatch_ids(actions));
                }
                let mut finished = 0;
                while let Some(shard) = dispatched.pop() {
                    // Every job runs whole, so an agent answers its root.
                    let outcome = ShardOutcome::Verified {
                        result: ShardResult::Root([7u8; 32]),
                        checked: 0,
                        check: None,
                    };
                    let actions = schedule.answer(started, shard, outcome);
                    for action in actions {
                        match action {
                            Action::Dispatch(d) => dispatched.push(d.shard_id),
                            Action::Finished { result, .. } => {
                                assert!(result.is_ok(), "a job failed: {result:?}");
                                finished += 1;
                            }
                            Action::Abort(_) | Action::Quarantine { .. } => {}
                        }
                    }
                }
                spent += started.elapsed();
                assert_eq!(finished, IDENTITIES, "every task of the block finished");
                assert_eq!(schedule.in_flight(), 0);
            }
            spent
        });
    });
    group.finish();
}

fn dispatch_ids(actions: Vec<Action>) -> impl Iterator<Item = u64> {
    actions.into_iter().filter_map(|a| match a {
        Action::Dispatch(d) => Some(d.shard_id),
        _ => None,
    })
}

criterion_group!(benches, bench);
criterion_main!(benches);
