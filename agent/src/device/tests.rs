//! The device actor end to end on its own actix system: watchdog and quarantine, Freivalds failures, backend
//! errors, rows recomputed on devices that keep none, overlapping shards, a device that hangs at start-up.

use super::*;
use cpc_common::{
    synthetic::Challenge,
    wire::{RowAnswer, RunShard, ShardAnswer},
};
use cpc_kernels::{Backend, BackendError, Shard, ShardOutput};
use std::{
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

/// How [`Faulty`] misbehaves on shards of its seed.
#[derive(Debug, Clone, Copy)]
enum Fault {
    /// Never returns (well, not for two minutes).
    Hang,
    /// A CUDA error that leaves the context unusable.
    Fatal,
    /// An error that is the shard's fault, not the device's.
    TooLarge,
    /// Out of device memory for now.
    OutOfMemory,
    /// A sticky CUDA error: the context is lost until the process restarts.
    Sticky,
}

/// A CPU backend that misbehaves on shards whose seed starts with `seed` (and on everything with `"")`.
#[derive(Debug)]
struct Faulty {
    inner: cpc_kernels::CpuBackend,
    seed: &'static str,
    fault: Fault,
}

impl Faulty {
    fn backend(seed: &'static str, fault: Fault) -> Arc<dyn Backend> {
        Arc::new(Self { inner: cpc_kernels::CpuBackend::new(1).expect("cpu"), seed, fault })
    }
}

impl Backend for Faulty {
    fn name(&self) -> &str {
        "faulty"
    }
    fn info(&self) -> cpc_kernels::DeviceInfo {
        self.inner.info()
    }
    fn run_shard(&self, shard: &Shard, keep_rows: bool) -> Result<ShardOutput, BackendError> {
        if !shard.challenge.seed().starts_with(self.seed) {
            return self.inner.run_shard(shard, keep_rows);
        }
        match self.fault {
            Fault::Hang => {
                std::thread::sleep(Duration::from_secs(120));
                Err(BackendError::InvalidShard("woke up".into()))
            }
            Fault::Fatal => Err(BackendError::Cuda {
                device: "cuda:9 test".into(),
                reason: "an illegal memory access was encountered".into(),
            }),
            Fault::OutOfMemory => Err(BackendError::OutOfMemory {
                device: "cuda:9 test".into(),
                reason: "allocating C: out of memory".into(),
            }),
            Fault::Sticky => Err(BackendError::ContextLost {
                device: "cuda:9 test".into(),
                reason: "an illegal memory access was encountered".into(),
            }),
            Fault::TooLarge => Err(BackendError::ShardTooLarge {
                n: shard.challenge.matrix_size(),
                rows: shard.row_count(),
                needed: 2,
                available: 1,
                device: "test".into(),
            }),
        }
    }
}

fn run_shard(shard_id: u64, seed: &str, device: u32) -> Compute {
    Compute {
        session: 0,
        request: RunShard {
            shard_id,
            challenge: Challenge::new(seed, 32, 1).expect("challenge"),
            iteration: 0,
            rows: (0, 16),
            device,
            check_seed: shard_id.wrapping_mul(0x9E37_79B9_7F4A_7C15),
        },
        answer: AnswerWith::Leaves,
        cancel: ShardCancel::default(),
    }
}

fn options(watchdog: Duration) -> DeviceOptions {
    DeviceOptions { measure_n: 0, watchdog, max_restarts: 0 }
}

fn reference_leaves(seed: &str) -> Vec<[u8; 32]> {
    let challenge = Challenge::new(seed, 32, 1).expect("challenge");
    let shard = Shard::new(challenge, 0, 0..16).expect("shard");
    cpc_kernels::CpuBackend::new(1).expect("cpu").run_shard(&shard, false).expect("run").leaves
}

fn cache() -> Arc<Mutex<RowCache>> {
    Arc::new(Mutex::new(RowCache::new(1 << 20)))
}

/// A shard answered by its root: the root is that of the leaves the same shard answers, and the tree kept
/// for spot checks gives every row a path to it; a shard answered by its leaves keeps no tree.
#[test]
fn a_root_answer_is_its_leaves_root_and_its_tree_shows_every_row() {
    use cpc_common::merkle::{merkle_root, root_from_path};
    actix_rt::System::new().block_on(async {
        let rows = cache();
        let opts = options(Duration::from_secs(60));
        let device = start(
            12,
            Faulty::backend("never", Fault::Hang),
            rows.clone(),
            Health::default(),
            &opts,
        )
        .await
        .expect("start");
        let whole = |shard_id, answer| {
            let mut compute = run_shard(shard_id, "root", 12);
            compute.request.rows = (0, 32);
            compute.answer = answer;
            compute
        };
        let ShardAnswer::Done { leaves, .. } =
            device.addr.send(whole(1, AnswerWith::Leaves)).await.expect("answer")
        else {
            panic!("expected the leaves")
        };
        assert_eq!(leaves.len(), 32);
        let answer = device.addr.send(whole(2, AnswerWith::Root)).await.expect("answer");
        let ShardAnswer::Root { shard_id: 2, root, check } = answer else {
            panic!("expected the root, got {answer:?}")
        };
        assert_eq!(root, merkle_root(&leaves));
        assert!(check.is_some(), "the Freivalds check ran");
        let rows = rows.lock().expect("cache");
        for (row, leaf) in leaves.iter().enumerate() {
            let path = rows.path(ShardKey { session: 0, shard_id: 2 }, row as u32).expect("path");
            assert_eq!(root_from_path(leaf, row, 32, &path), Some(root), "row {row}");
        }
        assert_eq!(rows.path(ShardKey { session: 0, shard_id: 1 }, 0), None);
    });
}

#[test]
fn a_hung_call_quarantines_its_device_and_not_the_other() {
    let handle = crate::metrics::install_recorder();
    actix_rt::System::new().block_on(async {
        let health = Health::default();
        let opts = options(Duration::from_millis(200));
        let hung = start(10, Faulty::backend("hang", Fault::Hang), cache(), health.clone(), &opts)
            .await
            .expect("start");
        let good = start(11, Faulty::backend("hang", Fault::Hang), cache(), health.clone(), &opts)
            .await
            .expect("start");
        assert!(hung.quarantined.is_none() && good.quarantined.is_none());

        let t = Instant::now();
        let answer = hung.addr.send(run_shard(1, "hang-1", 10)).await.expect("answer");
        let ShardAnswer::Failed { shard_id: 1, reason } = answer else {
            panic!("expected ShardFailed, got {answer:?}")
        };
        assert!(reason.contains("did not finish") && reason.contains("watchdog"), "{reason}");
        assert!(t.elapsed() < Duration::from_secs(10), "the watchdog fired late");
        assert_eq!(health.reason(10).as_deref(), Some(reason.as_str()));

        // Refused at once from now on, even for work it could do.
        let answer = hung.addr.send(run_shard(2, "fine", 10)).await.expect("answer");
        assert!(
            matches!(&answer, ShardAnswer::Failed { reason, .. } if reason.contains("quarantined")),
            "{answer:?}"
        );
        // The other device (same faulty kind, its own thread) keeps serving.
        let answer = good.addr.send(run_shard(3, "fine", 11)).await.expect("answer");
        let ShardAnswer::Done { shard_id: 3, leaves, check } = answer else {
            panic!("expected ShardDone, got {answer:?}")
        };
        assert_eq!(leaves, reference_leaves("fine"));
        assert!(check.is_some_and(|c| c.check_micros <= c.shard_micros), "{check:?}");
        assert_eq!(health.quarantined().keys().copied().collect::<Vec<_>>(), [10]);
    });
    let text = handle.render();
    // A device without an NVML monitor is labelled by kind and index and host, never `gpu`.
    let host = cpc_kernels::gpu::hostname();
    let labels = |index: u32| format!("{{device=\"cpu{index}\",Hostname=\"{host}\"}}");
    assert!(text.contains(&format!("cpcfarm_agent_device_healthy{} 0", labels(10))), "{text}");
    assert!(text.contains(&format!("cpcfarm_agent_device_healthy{} 1", labels(11))), "{text}");
    assert!(
        text.contains(&format!("cpcfarm_device_achieved_ops_per_second{}", labels(11))),
        "{text}"
    );
}

#[test]
fn a_watchdog_firing_restarts_the_worker_until_the_cap_then_gives_the_device_up() {
    let _handle = crate::metrics::install_recorder();
    actix_rt::System::new().block_on(async {
        let health = Health::default();
        let opts = DeviceOptions { max_restarts: 1, ..options(Duration::from_millis(200)) };
        let device =
            start(12, Faulty::backend("hang", Fault::Hang), cache(), health.clone(), &opts)
                .await
                .expect("start");
        assert_eq!(
            health.reports().get(&12).map(|r| (r.restarts, r.watchdog_firings)),
            Some((0, 0))
        );

        let answer = device.addr.send(run_shard(1, "hang-1", 12)).await.expect("answer");
        let ShardAnswer::Failed { reason, .. } = answer else { panic!("{answer:?}") };
        assert!(reason.contains("restarted") && reason.contains("restart 1 of 1"), "{reason}");
        assert!(health.reason(12).is_none(), "not given up after one firing");
        // The restarted worker serves.
        let answer = device.addr.send(run_shard(2, "fine", 12)).await.expect("answer");
        let ShardAnswer::Done { leaves, .. } = answer else { panic!("{answer:?}") };
        assert_eq!(leaves, reference_leaves("fine"));

        // The cap is reached: the next firing gives the device up.
        let answer = device.addr.send(run_shard(3, "hang-2", 12)).await.expect("answer");
        let ShardAnswer::Failed { reason, .. } = answer else { panic!("{answer:?}") };
        assert!(reason.contains("given up after 1 worker restarts"), "{reason}");
        assert_eq!(health.reason(12).as_deref(), Some(reason.as_str()));
        let report = health.reports().get(&12).cloned().expect("report");
        assert_eq!((report.restarts, report.watchdog_firings, report.xid_errors), (1, 2, 0));
    });
}

#[test]
fn a_failed_check_answers_check_failed_and_quarantines_the_device() {
    actix_rt::System::new().block_on(async {
        let health = Health::default();
        let flip = cpc_kernels::cpu::BitFlip { shard: 0, row: 5, col: 7, bit: 13 };
        let backend = Arc::new(cpc_kernels::CpuBackend::new(1).expect("cpu").with_bit_flip(flip));
        let opts = options(Duration::from_secs(60));
        let device = start(50, backend, cache(), health.clone(), &opts).await.expect("start");
        let answer = device.addr.send(run_shard(1, "flip", 50)).await.expect("answer");
        let ShardAnswer::CheckFailed { shard_id: 1, reason } = answer else {
            panic!("expected CheckFailed, got {answer:?}")
        };
        assert!(reason.contains("Freivalds") && reason.contains("[5]"), "{reason}");
        assert_eq!(health.reason(50).as_deref(), Some(reason.as_str()));
        let answer = device.addr.send(run_shard(2, "flip", 50)).await.expect("answer");
        assert!(
            matches!(&answer, ShardAnswer::Failed { reason, .. } if reason.contains("quarantined")),
            "{answer:?}"
        );
    });
}

#[test]
fn a_fatal_error_quarantines_and_a_shard_error_does_not() {
    actix_rt::System::new().block_on(async {
        let health = Health::default();
        let opts = options(Duration::from_secs(60));
        let fatal = start(20, Faulty::backend("bad", Fault::Fatal), cache(), health.clone(), &opts)
            .await
            .expect("start");
        let large =
            start(21, Faulty::backend("big", Fault::TooLarge), cache(), health.clone(), &opts)
                .await
                .expect("start");

        let answer = large.addr.send(run_shard(1, "big", 21)).await.expect("answer");
        assert!(matches!(answer, ShardAnswer::Failed { .. }), "{answer:?}");
        assert_eq!(health.reason(21), None, "a shard too large is not the device's fault");
        let answer = large.addr.send(run_shard(2, "ok", 21)).await.expect("answer");
        assert!(matches!(answer, ShardAnswer::Done { .. }), "{answer:?}");

        let answer = fatal.addr.send(run_shard(3, "bad", 20)).await.expect("answer");
        let ShardAnswer::Failed { reason, .. } = answer else { panic!("{answer:?}") };
        assert!(reason.contains("illegal memory access"), "{reason}");
        assert!(health.reason(20).is_some_and(|r| r.contains("illegal memory access")));
        let answer = fatal.addr.send(run_shard(4, "ok", 20)).await.expect("answer");
        assert!(
            matches!(&answer, ShardAnswer::Failed { reason, .. } if reason.contains("quarantined")),
            "{answer:?}"
        );
    });
}

/// Out of memory fails the shard and nothing else; a sticky error quarantines the device, says it needs a
/// process restart and counts it.
#[test]
fn out_of_memory_keeps_the_device_and_a_lost_context_asks_for_a_restart() {
    let handle = crate::metrics::install_recorder();
    actix_rt::System::new().block_on(async {
        let health = Health::default();
        let opts = options(Duration::from_secs(60));
        let squeezed =
            start(30, Faulty::backend("oom", Fault::OutOfMemory), cache(), health.clone(), &opts)
                .await
                .expect("start");
        let lost = start(31, Faulty::backend("xid", Fault::Sticky), cache(), health.clone(), &opts)
            .await
            .expect("start");

        let answer = squeezed.addr.send(run_shard(1, "oom", 30)).await.expect("answer");
        let ShardAnswer::Failed { reason, .. } = answer else { panic!("{answer:?}") };
        assert!(
            reason.contains("out of memory") && reason.contains("stays in service"),
            "{reason}"
        );
        assert_eq!(health.reason(30), None, "out of memory must not quarantine");
        let answer = squeezed.addr.send(run_shard(2, "ok", 30)).await.expect("answer");
        assert!(matches!(answer, ShardAnswer::Done { .. }), "{answer:?}");

        let answer = lost.addr.send(run_shard(3, "xid", 31)).await.expect("answer");
        let ShardAnswer::Failed { reason, .. } = answer else { panic!("{answer:?}") };
        assert!(reason.contains("needs a process restart"), "{reason}");
        assert!(health.reason(31).is_some_and(|r| r.contains("needs a process restart")));
        let answer = lost.addr.send(run_shard(4, "ok", 31)).await.expect("answer");
        assert!(
            matches!(&answer, ShardAnswer::Failed { reason, .. } if reason.contains("quarantined")),
            "{answer:?}"
        );
    });
    let text = handle.render();
    assert!(
        text.contains("cpcfarm_agent_device_restarts_needed_total{device=\"cpu31\",")
            && text.lines().any(|l| l
                .starts_with("cpcfarm_agent_device_restarts_needed_total{device=\"cpu31\",")
                && l.ends_with(" 1")),
        "{text}"
    );
    assert!(
        !text.contains("cpcfarm_agent_device_restarts_needed_total{device=\"cpu30\","),
        "{text}"
    );
}

/// A GPU-like device: C is not in host memory, so rows are not kept (asserted) and a spot check's row is
/// recomputed on the device. `corrupt_row` makes the device get one row wrong on its first run only;
/// `at_once` makes it answer at once ([`Backend::answers_at_once`]).
#[derive(Debug)]
struct DeviceMemoryBackend {
    inner: cpc_kernels::CpuBackend,
    corrupt_row: Option<u32>,
    runs: Mutex<Vec<(std::ops::Range<u32>, bool)>>,
    at_once: Option<Duration>,
}

impl Backend for DeviceMemoryBackend {
    fn name(&self) -> &str {
        "device-memory"
    }
    fn info(&self) -> cpc_kernels::DeviceInfo {
        self.inner.info()
    }
    fn run_shard(&self, shard: &Shard, keep_rows: bool) -> Result<ShardOutput, BackendError> {
        if let Ok(mut runs) = self.runs.lock() {
            runs.push((shard.rows.clone(), keep_rows));
        }
        let mut out = self.inner.run_shard(shard, keep_rows)?;
        if let Some(r) =
            self.corrupt_row.filter(|r| shard.rows.contains(r) && shard.row_count() > 1)
        {
            // A flipped bit in one element, and the leaf hashed from the wrong row, as a GPU would.
            let mut rows = self.inner.run_shard(shard, true)?.rows.expect("rows");
            let n = shard.challenge.matrix_size() as usize;
            let i = (r - shard.rows.start) as usize;
            rows[i * n + 3] ^= 1 << 9;
            let bytes: Vec<u8> =
                rows[i * n..(i + 1) * n].iter().flat_map(|v| v.to_le_bytes()).collect();
            out.leaves[i] = cpc_common::hashing::sha256(&bytes);
        }
        Ok(out)
    }
    fn keeps_rows_cheaply(&self) -> bool {
        false
    }
    fn answers_at_once(&self, _: &Shard) -> Option<Duration> {
        self.at_once
    }
}

/// On the device's worker, and answered at once on the agent's thread alike.
#[test]
fn a_device_that_keeps_no_rows_recomputes_the_row_a_spot_check_asks_for() {
    for (index, at_once) in [(30, None), (31, Some(Duration::ZERO))] {
        recomputes_the_row_a_spot_check_asks_for(index, at_once);
    }
}

fn recomputes_the_row_a_spot_check_asks_for(index: u32, at_once: Option<Duration>) {
    actix_rt::System::new().block_on(async {
        let backend = Arc::new(DeviceMemoryBackend {
            inner: cpc_kernels::CpuBackend::new(1).expect("cpu"),
            corrupt_row: Some(9),
            runs: Mutex::new(Vec::new()),
            at_once,
        });
        let rows = cache();
        let opts = options(Duration::from_secs(60));
        let device = start(index, backend.clone(), rows.clone(), Health::default(), &opts)
            .await
            .expect("start");
        let answer = device.addr.send(run_shard(7, "gpu-like", index)).await.expect("answer");
        let ShardAnswer::Done { leaves, .. } = answer else { panic!("{answer:?}") };
        assert_eq!(
            backend.runs.lock().expect("runs").as_slice(),
            [(0..16, false)],
            "the shard ran without copying its rows back"
        );
        assert_eq!(rows.lock().expect("cache").used_bytes(), 0, "no rows held");

        let reference =
            Shard::new(Challenge::new("gpu-like", 32, 1).expect("c"), 0, 0..16).expect("shard");
        let want =
            cpc_kernels::CpuBackend::new(1).expect("cpu").run_shard(&reference, true).expect("run");
        let want_rows = want.rows.expect("rows");
        for row in [0u32, 5, 9, 15] {
            let source =
                rows.lock().expect("cache").source(ShardKey { session: 0, shard_id: 7 }, row);
            let RowSource::Recompute { device: on, shard } = source else {
                panic!("row {row}: {source:?}")
            };
            assert_eq!(on, index);
            assert_eq!(shard.rows, row..row + 1);
            let answer =
                device.addr.send(RecomputeRow { shard_id: 7, shard }).await.expect("answer");
            let RowAnswer::Row { values } = answer else { panic!("row {row}: {answer:?}") };
            let i = row as usize;
            assert_eq!(values, want_rows[i * 32..(i + 1) * 32], "row {row} is the true row");
            let bytes: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
            let leaf_matches = cpc_common::hashing::sha256(&bytes) == leaves[i];
            // The row the device got wrong the first time no longer matches the leaf it sent: the
            // coordinator's spot check fails the device.
            assert_eq!(leaf_matches, row != 9, "row {row}");
        }
        assert_eq!(
            rows.lock().expect("cache").source(ShardKey { session: 0, shard_id: 7 }, 16),
            RowSource::Unknown
        );
        assert_eq!(
            rows.lock().expect("cache").source(ShardKey { session: 0, shard_id: 8 }, 0),
            RowSource::Unknown
        );
    });
}

/// A device that overlaps two shards (as a GPU does): each call waits, up to 10 s, for a second call to be
/// inside `run_shard` at the same time, and records how many it saw.
#[derive(Debug)]
struct Overlapping {
    inner: cpc_kernels::CpuBackend,
    inside: std::sync::Mutex<(u32, u32)>,
    changed: std::sync::Condvar,
}

impl Backend for Overlapping {
    fn name(&self) -> &str {
        "overlapping"
    }
    fn info(&self) -> cpc_kernels::DeviceInfo {
        self.inner.info()
    }
    fn run_shard(&self, shard: &Shard, keep_rows: bool) -> Result<ShardOutput, BackendError> {
        let mut inside = self.inside.lock().expect("lock");
        inside.0 += 1;
        inside.1 = inside.1.max(inside.0);
        self.changed.notify_all();
        let (mut inside, _) = self
            .changed
            .wait_timeout_while(inside, Duration::from_secs(10), |(now, _)| *now < 2)
            .expect("wait");
        inside.1 = inside.1.max(inside.0);
        drop(inside);
        let out = self.inner.run_shard(shard, keep_rows);
        self.inside.lock().expect("lock").0 -= 1;
        out
    }
    fn concurrent_shards(&self) -> usize {
        2
    }
}

#[test]
fn a_device_that_overlaps_shards_gets_two_at_once() {
    actix_rt::System::new().block_on(async {
        let backend = Arc::new(Overlapping {
            inner: cpc_kernels::CpuBackend::new(1).expect("cpu"),
            inside: std::sync::Mutex::new((0, 0)),
            changed: std::sync::Condvar::new(),
        });
        let opts = options(Duration::from_secs(60));
        let device =
            start(40, backend.clone(), cache(), Health::default(), &opts).await.expect("start");
        let (a, b) = tokio::join!(
            device.addr.send(run_shard(1, "overlap-a", 40)),
            device.addr.send(run_shard(2, "overlap-b", 40)),
        );
        for answer in [a.expect("a"), b.expect("b")] {
            assert!(matches!(answer, ShardAnswer::Done { .. }), "{answer:?}");
        }
        assert_eq!(backend.inside.lock().expect("lock").1, 2, "both shards ran at once");
    });
}

#[test]
fn a_device_that_hangs_while_measured_starts_quarantined() {
    actix_rt::System::new().block_on(async {
        let health = Health::default();
        let opts =
            DeviceOptions { measure_n: 16, watchdog: Duration::from_millis(100), max_restarts: 0 };
        let started = start(30, Faulty::backend("", Fault::Hang), cache(), health.clone(), &opts)
            .await
            .expect("start");
        let reason = started.quarantined.expect("quarantined");
        assert!(reason.contains("start-up measurement"), "{reason}");
        assert_eq!(health.reason(30), Some(reason));
    });
}

/// A CPU backend that takes at least `hold` for every shard and counts its calls.
#[derive(Debug)]
struct Timed {
    inner: cpc_kernels::CpuBackend,
    hold: Duration,
    calls: std::sync::atomic::AtomicU32,
}

impl Backend for Timed {
    fn name(&self) -> &str {
        "timed"
    }
    fn info(&self) -> cpc_kernels::DeviceInfo {
        self.inner.info()
    }
    fn run_shard(&self, shard: &Shard, keep_rows: bool) -> Result<ShardOutput, BackendError> {
        self.calls.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        std::thread::sleep(self.hold);
        self.inner.run_shard(shard, keep_rows)
    }
}

/// The start-up measurement times a fast product many times (one run that shared its core with other work
/// does not set the device's share of every job) and a slow one only twice (the agent's start is not held
/// up), and answers the best run's throughput.
#[test]
fn the_measurement_times_a_fast_product_many_times_and_a_slow_one_twice() {
    let timed = |hold| Timed {
        inner: cpc_kernels::CpuBackend::new(1).expect("cpu"),
        hold,
        calls: 0.into(),
    };
    let fast = timed(Duration::ZERO);
    let ops = start::measure(&fast, 16).expect("measure");
    let calls = fast.calls.into_inner();
    assert!(calls > start::MEASURE_MIN_RUNS && calls <= start::MEASURE_MAX_RUNS, "{calls} runs");
    assert!(ops > 1.0, "{ops}");

    let slow = timed(start::MEASURE_BUDGET);
    let ops = start::measure(&slow, 16).expect("measure");
    assert_eq!(slow.calls.into_inner(), start::MEASURE_MIN_RUNS);
    // 2·16³ operations in no less than the hold.
    assert!(ops <= 2.0 * 16f64.powi(3) / start::MEASURE_BUDGET.as_secs_f64(), "{ops}");
}

/// A CPU backend that answers shards whose seed starts with `now` at once ([`Backend::answers_at_once`]),
/// leaving `hold` of device time to its caller, panics on those that end in `boom`, and notes the thread
/// every shard ran on.
#[derive(Debug)]
struct AtOnce {
    inner: cpc_kernels::CpuBackend,
    ran_on: Mutex<Vec<(String, Option<String>)>>,
    hold: Duration,
}

impl AtOnce {
    fn new(hold: Duration) -> Self {
        Self {
            inner: cpc_kernels::CpuBackend::new(1).expect("cpu"),
            ran_on: Mutex::default(),
            hold,
        }
    }
}

impl Backend for AtOnce {
    fn name(&self) -> &str {
        "at-once"
    }
    fn info(&self) -> cpc_kernels::DeviceInfo {
        self.inner.info()
    }
    fn answers_at_once(&self, shard: &Shard) -> Option<Duration> {
        shard.challenge.seed().starts_with("now").then_some(self.hold)
    }
    fn run_shard(&self, shard: &Shard, keep_rows: bool) -> Result<ShardOutput, BackendError> {
        let seed = shard.challenge.seed().to_owned();
        let thread = std::thread::current().name().map(str::to_owned);
        self.ran_on.lock().expect("lock").push((seed.clone(), thread));
        assert!(!seed.ends_with("boom"), "the backend blew up");
        self.inner.run_shard(shard, keep_rows)
    }
}

/// A shard the backend answers at once runs on the actor's own thread and answers as the worker would; a
/// panic in it fails that shard only; once the device is given up, nothing runs on it, at once or not.
#[test]
fn a_shard_the_backend_answers_at_once_runs_on_the_agents_thread() {
    let here = std::thread::current().name().map(str::to_owned);
    actix_rt::System::new().block_on(async {
        let health = Health::default();
        let backend = Arc::new(AtOnce::new(Duration::ZERO));
        let opts = options(Duration::from_secs(60));
        let device =
            start(60, backend.clone(), cache(), health.clone(), &opts).await.expect("start");
        for (shard_id, seed) in [(1, "now-a"), (2, "later-b")] {
            let answer = device.addr.send(run_shard(shard_id, seed, 60)).await.expect("answer");
            let ShardAnswer::Done { leaves, .. } = answer else { panic!("{answer:?}") };
            assert_eq!(leaves, reference_leaves(seed), "{seed}");
        }
        let answer = device.addr.send(run_shard(3, "now-boom", 60)).await.expect("answer");
        let ShardAnswer::Failed { shard_id: 3, reason } = answer else { panic!("{answer:?}") };
        assert!(reason.contains("panicked") && reason.contains("blew up"), "{reason}");
        assert_eq!(health.reason(60), None, "a panic fails the shard, not the device");
        let answer = device.addr.send(run_shard(4, "now-c", 60)).await.expect("answer");
        assert!(matches!(answer, ShardAnswer::Done { shard_id: 4, .. }), "{answer:?}");

        health.quarantine(60, "given up by the test");
        let answer = device.addr.send(run_shard(5, "now-d", 60)).await.expect("answer");
        assert!(
            matches!(&answer, ShardAnswer::Failed { reason, .. } if reason.contains("given up by the test")),
            "{answer:?}"
        );
        let ran_on = backend.ran_on.lock().expect("lock").clone();
        let worker = Some("cpc-device-60-0".to_owned());
        assert_eq!(
            ran_on,
            [
                ("now-a".to_owned(), here.clone()),
                ("later-b".to_owned(), worker),
                ("now-boom".to_owned(), here.clone()),
                ("now-c".to_owned(), here.clone()),
            ],
            "at once on the actor's thread, the rest on the device's worker; nothing once given up"
        );
    });
}

/// An at-once answer leaves no sooner than the device time its backend left to the caller, a hold of
/// microseconds (passed in yields) or of a timer's reach (slept), and the agent's other devices are served
/// meanwhile: four devices' holds overlap rather than follow one another. A shard cancelled while held is
/// answered cancelled without waiting out its hold.
#[test]
fn at_once_holds_overlap_across_devices_and_end_on_a_cancel() {
    actix_rt::System::new().block_on(async {
        for (hold, first) in [(Duration::from_micros(300), 70), (Duration::from_millis(100), 80)] {
            let mut devices = Vec::new();
            for index in first..first + 4 {
                let backend = Arc::new(AtOnce::new(hold));
                let opts = options(Duration::from_secs(60));
                let device = start(index, backend, cache(), Health::default(), &opts).await;
                devices.push(device.expect("start"));
            }
            let started = Instant::now();
            let running: Vec<_> = (first..)
                .zip(&devices)
                .map(|(index, device)| {
                    let sent = device.addr.send(run_shard(u64::from(index), "now-held", index));
                    actix_rt::spawn(async move { (sent.await.expect("answer"), started.elapsed()) })
                })
                .collect();
            let mut slowest = Duration::ZERO;
            for (index, answer) in (first..).zip(running) {
                let (answer, after) = answer.await.expect("task");
                assert!(matches!(answer, ShardAnswer::Done { .. }), "device {index}: {answer:?}");
                assert!(
                    after >= hold,
                    "device {index} answered after {after:?}, inside its {hold:?}"
                );
                slowest = slowest.max(after);
            }
            if hold >= Duration::from_millis(100) {
                assert!(
                    slowest < 3 * hold,
                    "four holds of {hold:?} took {slowest:?}: one after another"
                );
            }
        }

        let held = Arc::new(AtOnce::new(Duration::from_secs(3600)));
        let opts = options(Duration::from_secs(60));
        let device = start(74, held, cache(), Health::default(), &opts).await.expect("start");
        let compute = run_shard(9, "now-long", 74);
        let cancel = compute.cancel.clone();
        let sent = device.addr.send(compute);
        let answer = actix_rt::spawn(async move { sent.await.expect("answer") });
        tokio::time::sleep(Duration::from_millis(20)).await;
        cancel.cancel();
        let answer = tokio::time::timeout(Duration::from_secs(30), answer)
            .await
            .expect("a cancel ends the hold")
            .expect("task");
        assert!(
            matches!(&answer, ShardAnswer::Failed { reason, .. } if reason.contains("cancelled")),
            "{answer:?}"
        );
    });
}

/// A shard's cancellation wakes whoever waits for it, before or after the wait began, and the worker's
/// token sees it.
#[test]
fn a_cancel_wakes_its_waiters_whenever_it_comes() {
    actix_rt::System::new().block_on(async {
        let cancel = ShardCancel::default();
        let waiting = {
            let cancel = cancel.clone();
            actix_rt::spawn(async move { cancel.cancelled().await })
        };
        tokio::task::yield_now().await;
        assert!(!cancel.is_cancelled() && !waiting.is_finished());
        cancel.cancel();
        tokio::time::timeout(Duration::from_secs(10), waiting)
            .await
            .expect("woken by the cancel")
            .expect("waiter");
        assert!(cancel.is_cancelled());
        // Cancelled already: a new wait ends at once.
        tokio::time::timeout(Duration::from_secs(10), cancel.cancelled())
            .await
            .expect("ends at once");
    });
}
