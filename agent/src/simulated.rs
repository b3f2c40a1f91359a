//! Simulated devices, for measuring a farm at a scale nobody has the GPUs for (`cpc-agent --backend
//! simulated`, what `cpc-coordinator bench farm` starts): each holds a shard for exactly the time a device
//! of the configured speed would take, `2·rows·n² / (T·10¹²)` seconds, and then answers the right number of
//! leaves, each the hash of an all-zero row (hashed once per n), or for an answer by root the tree of those
//! leaves without making them (`uniform_tree`). A hold of [`SPIN_BELOW`] or more sleeps, so
//! that hundreds of devices fit on a few cores; a shorter one (a whole n = 1024 product at 660 TOPS is
//! 3.25 µs) spins on the clock, because a timed sleep would overshoot it many times over and cost two
//! context switches. One under [`AT_ONCE_BELOW`] is answered on the agent's own thread, sparing it the
//! hand-off to the device's, and held there by the device actor, which serves the host's other devices
//! meanwhile ([`Backend::answers_at_once`]): the agent's devices hold side by side, as real ones compute.
//! Its results are **wrong by design**: run it only against a coordinator with spot checks off (any spot
//! check fails it), never one that submits to a chain; the agent refuses to start one without
//! `--allow-wrong-results`.
//!
//! It advertises its configured speed without measuring ([`Backend::declared_ops_per_sec`]), a memory that
//! holds every row at every size, and one shard at a time; a shard the coordinator cancels stops sleeping
//! at once ([`Backend::run_shard_cancellable`]), and a spinning one at its next look at the clock.

use cpc_common::{
    hashing::{Digest32, sha256},
    merkle::MerkleTree,
};
use cpc_kernels::{
    Backend, BackendError, BackendKind, CancelToken, DeviceInfo, Shard, ShardOutput,
};
use rustc_hash::FxHashMap;
use std::{
    sync::{Arc, Mutex, OnceLock, PoisonError},
    time::{Duration, Instant},
};

/// Memory a simulated device claims: 1 TiB, enough for a whole product at the spec's largest n.
pub const SIMULATED_MEMORY_BYTES: u64 = 1 << 40;
/// The kind a simulated device advertises (and labels its metrics with).
pub const SIMULATED_KIND: &str = "simulated";
/// Holds shorter than this spin instead of sleeping. A timed sleep wakes up to the kernel's timer slack
/// (50 µs by default on Linux) late and costs two context switches: a device that should hold a shard for
/// a few microseconds would hold it many times longer, and cost its host more CPU than spinning does. At
/// 100 µs the overshoot is at most about half the hold, and a device holds at most ten thousand such
/// shards a second, so their context switches cost little.
pub const SPIN_BELOW: Duration = Duration::from_micros(100);

/// Holds shorter than this run on the agent's own thread ([`Backend::answers_at_once`]) rather than the
/// device's: handing a shard to another thread and its answer back costs two thread wake-ups, some
/// microseconds each (tens in a VM), more than the hold itself. The call does not hold the shard: the
/// device actor lets its answer go no sooner than the hold after the call began, serving the agent's other
/// devices meanwhile. (Spun in the call, a hundred devices' holds at n = 1024 and 660 TOPS would run one
/// after another, a third of a millisecond for a burst, and take that CPU from the coordinator measured.)
pub const AT_ONCE_BELOW: Duration = Duration::from_micros(10);

/// Why a simulated device could not be made.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum SimulatedError {
    /// The speed is not a positive, finite number of tera-ops per second.
    #[error("--device-tops {0} is not a positive number of tera-ops per second (e.g. 660)")]
    BadSpeed(f64),
}

/// A device that sleeps for the time a device of its speed would compute, and answers wrong leaves.
#[derive(Debug, Clone)]
pub struct SimulatedBackend {
    tera_ops_per_sec: f64,
    name: String,
    /// The leaf of an all-zero row, by n (hashed once: 4·n bytes a shard otherwise).
    zero_leaves: Arc<Mutex<FxHashMap<u32, Digest32>>>,
}

impl SimulatedBackend {
    /// A device of `tera_ops_per_sec` tera-ops per second (`2·rows·n²` operations per shard).
    pub fn new(tera_ops_per_sec: f64) -> Result<Self, SimulatedError> {
        if !(tera_ops_per_sec.is_finite() && tera_ops_per_sec > 0.0) {
            return Err(SimulatedError::BadSpeed(tera_ops_per_sec));
        }
        Ok(Self {
            tera_ops_per_sec,
            name: format!("simulated {tera_ops_per_sec} TOPS (WRONG RESULTS)"),
            zero_leaves: Arc::default(),
        })
    }

    /// How long the device holds `shard`: `2·rows·n² / (T·10¹²)`.
    pub fn shard_time(&self, shard: &Shard) -> Duration {
        let n = f64::from(shard.challenge.matrix_size());
        let ops = 2.0 * f64::from(shard.row_count()) * n * n;
        Duration::try_from_secs_f64(ops / (self.tera_ops_per_sec * 1e12)).unwrap_or(Duration::MAX)
    }

    /// Holds the device until `duration` after `started`: not at all below [`AT_ONCE_BELOW`] (the caller
    /// holds such an answer, see [`Backend::answers_at_once`]), spins below [`SPIN_BELOW`], sleeps
    /// otherwise. Answers whether `cancel` ended it early (or was set already).
    fn hold(started: Instant, duration: Duration, cancel: &CancelToken) -> bool {
        if duration < AT_ONCE_BELOW {
            return cancel.is_cancelled();
        }
        if duration >= SPIN_BELOW {
            return cancel.sleep(duration.saturating_sub(started.elapsed()));
        }
        loop {
            if cancel.is_cancelled() {
                return true;
            }
            if started.elapsed() >= duration {
                return false;
            }
            std::hint::spin_loop();
        }
    }

    /// `sha256` of an all-zero row at size `n`.
    fn zero_leaf(&self, n: u32) -> Digest32 {
        // A plain map: a panic elsewhere while it was held leaves nothing half-done in it.
        let mut leaves = self.zero_leaves.lock().unwrap_or_else(PoisonError::into_inner);
        *leaves.entry(n).or_insert_with(|| sha256(vec![0u8; 4 * n as usize]))
    }

    /// Makes `shard`'s answer with `make` while the device "computes", then holds the device until its
    /// time is up: the answer leaves no sooner than the device would have finished, and the host spends no
    /// more than its real agent would.
    fn held<T>(
        &self,
        shard: &Shard,
        cancel: &CancelToken,
        make: impl FnOnce() -> T,
    ) -> Result<T, BackendError> {
        let started = Instant::now();
        shard.validate()?;
        let answer = make();
        if Self::hold(started, self.shard_time(shard), cancel) {
            return Err(BackendError::Cancelled);
        }
        Ok(answer)
    }
}

impl Backend for SimulatedBackend {
    fn name(&self) -> &str {
        SIMULATED_KIND
    }

    fn info(&self) -> DeviceInfo {
        DeviceInfo {
            name: self.name.clone(),
            // The nearest real kind; what is advertised and labelled is `kind_name`.
            kind: BackendKind::Cpu,
            memory_bytes: SIMULATED_MEMORY_BYTES,
            compute_units: 1,
        }
    }

    fn run_shard(&self, shard: &Shard, keep_rows: bool) -> Result<ShardOutput, BackendError> {
        self.run_shard_cancellable(shard, keep_rows, &CancelToken::new())
    }

    fn run_shard_cancellable(
        &self,
        shard: &Shard,
        keep_rows: bool,
        cancel: &CancelToken,
    ) -> Result<ShardOutput, BackendError> {
        self.held(shard, cancel, || {
            made_up_leaves(shard, self.zero_leaf(shard.challenge.matrix_size()), keep_rows)
        })
    }

    /// No leaves at all: the tree of equal leaves, from the cache (`uniform_tree`).
    fn run_shard_for_root(
        &self,
        shard: &Shard,
        keep_rows: bool,
        cancel: &CancelToken,
    ) -> Result<(ShardOutput, MerkleTree), BackendError> {
        self.held(shard, cancel, || {
            made_up_tree(shard, self.zero_leaf(shard.challenge.matrix_size()), keep_rows)
        })
    }

    /// No: rows are never kept (a spot check's row is "recomputed" as zeros, and fails, as it should).
    fn keeps_rows_cheaply(&self) -> bool {
        false
    }

    fn kind_name(&self) -> &'static str {
        SIMULATED_KIND
    }

    fn declared_ops_per_sec(&self) -> Option<f64> {
        Some(self.tera_ops_per_sec * 1e12)
    }

    /// Holds under [`AT_ONCE_BELOW`], which the call leaves to its caller.
    fn answers_at_once(&self, shard: &Shard) -> Option<Duration> {
        Some(self.shard_time(shard)).filter(|&hold| hold < AT_ONCE_BELOW)
    }
}

/// A stand-in device's answer to `shard` (simulated and no-op devices): every row's leaf `leaf` (the hash of
/// an all-zero row), and all-zero rows when kept.
pub(crate) fn made_up_leaves(shard: &Shard, leaf: Digest32, keep_rows: bool) -> ShardOutput {
    ShardOutput {
        leaves: vec![leaf; shard.row_count() as usize],
        rows: zero_rows(shard, keep_rows),
        check: None,
    }
}

/// [`made_up_leaves`] for an answer by root: no leaf, and the tree of the equal leaves from the cache
/// ([`uniform_tree`]).
pub(crate) fn made_up_tree(
    shard: &Shard,
    leaf: Digest32,
    keep_rows: bool,
) -> (ShardOutput, MerkleTree) {
    let tree = uniform_tree(leaf, shard.row_count() as usize);
    (ShardOutput { leaves: Vec::new(), rows: zero_rows(shard, keep_rows), check: None }, tree)
}

/// The rows of C a stand-in device keeps when asked to: all zeros.
fn zero_rows(shard: &Shard, keep_rows: bool) -> Option<Vec<i32>> {
    let n = shard.challenge.matrix_size() as usize;
    keep_rows.then(|| vec![0; shard.row_count() as usize * n])
}

/// Most trees of equal leaves [`uniform_tree`] keeps (one per size of shard and n seen; about 600 bytes
/// each at n = 65,536). Past it the cache starts over.
const MAX_UNIFORM_TREES: usize = 1024;

/// The tree of a stand-in device's `count` equal leaves, `MerkleTree::uniform(leaf, count)`, built once
/// per process: no leaf is made and no node hashed for an answer by root. A real agent hashes its leaves on
/// a host of its own; a hundred stand-in agents on one benchmark host would otherwise take that CPU from the
/// coordinator they measure (at n = 1024, 1,023 hashes a shard, or 10 for `MerkleTree::uniform`, against
/// a 3.25 µs hold at 660 TOPS).
fn uniform_tree(leaf: Digest32, count: usize) -> MerkleTree {
    static TREES: OnceLock<Mutex<FxHashMap<(Digest32, usize), MerkleTree>>> = OnceLock::new();
    // A plain map: a panic elsewhere while it was held leaves nothing half-done in it.
    let mut trees =
        TREES.get_or_init(Mutex::default).lock().unwrap_or_else(PoisonError::into_inner);
    if trees.len() >= MAX_UNIFORM_TREES && !trees.contains_key(&(leaf, count)) {
        trees.clear();
    }
    trees.entry((leaf, count)).or_insert_with(|| MerkleTree::uniform(leaf, count)).clone()
}

#[cfg(test)]
mod tests {
    use super::*;
    use cpc_common::synthetic::Challenge;

    fn shard(n: u32, rows: std::ops::Range<u32>) -> Shard {
        Shard::new(Challenge::new("sim", n, 1).expect("challenge"), 0, rows).expect("shard")
    }

    #[test]
    fn holds_a_shard_for_its_device_time_and_answers_every_row() {
        let sim = SimulatedBackend::new(1.0).expect("sim");
        // 2 · 500 · 1000² = 10⁹ ops at 10¹² ops/s: 1 ms.
        assert_eq!(sim.shard_time(&shard(1000, 0..500)), Duration::from_millis(1));
        let out = sim.run_shard(&shard(64, 3..10), false).expect("run");
        assert_eq!(out.leaves.len(), 7);
        assert_eq!(out.rows, None);
        assert_eq!(sim.run_shard(&shard(64, 0..2), true).expect("run").rows, Some(vec![0; 128]));
        assert_eq!(sim.declared_ops_per_sec(), Some(1e12));
        assert_eq!(sim.concurrent_shards(), 1);
        assert_eq!(sim.max_rows(65_536), 65_536, "holds a whole product at the largest n");
        assert_eq!(sim.kind_name(), "simulated");
        assert!(sim.info().name.contains("WRONG"), "{}", sim.info().name);
    }

    /// An answer by root has no leaves, and the tree of the leaves the device answers otherwise (the same
    /// root and paths, one node a level), at any size, a single row and an odd count included, the second
    /// time from the cache; a cancelled one is cancelled.
    #[test]
    fn an_answer_by_root_is_the_tree_of_its_leaves_without_them() {
        let sim = SimulatedBackend::new(1e3).expect("sim");
        for (n, rows) in
            [(64, 0..64), (64, 3..10), (64, 5..6), (1024, 0..1024), (1024, 0..1024), (33, 0..33)]
        {
            let shard = shard(n, rows.clone());
            let (output, tree) =
                sim.run_shard_for_root(&shard, true, &CancelToken::new()).expect("run");
            assert!(output.leaves.is_empty(), "n={n} rows={rows:?}");
            assert_eq!(output.rows, Some(vec![0; rows.len() * n as usize]));
            let built = MerkleTree::new(sim.run_shard(&shard, false).expect("run").leaves);
            assert_eq!(tree.root(), built.root(), "n={n} rows={rows:?}");
            assert!((0..rows.len()).all(|i| tree.path(i) == built.path(i)), "n={n} rows={rows:?}");
            let levels = (rows.len() as f64).log2().ceil() as u64 + 1;
            assert_eq!(tree.bytes(), 32 * levels, "one node a level: n={n} rows={rows:?}");
        }
        let cancel = CancelToken::new();
        cancel.cancel();
        let cancelled = sim.run_shard_for_root(&shard(64, 0..64), false, &cancel);
        assert!(matches!(cancelled, Err(BackendError::Cancelled)));
    }

    #[test]
    fn a_cancelled_shard_stops_sleeping() {
        // 2 · 4096³ ops at 10⁻⁶ TOPS: about 4 years.
        let sim = SimulatedBackend::new(1e-6).expect("sim");
        let cancel = CancelToken::new();
        let running = {
            let (sim, cancel) = (sim.clone(), cancel.clone());
            std::thread::spawn(move || {
                sim.run_shard_cancellable(&shard(4096, 0..4096), false, &cancel)
            })
        };
        cancel.cancel();
        assert!(matches!(running.join().expect("thread"), Err(BackendError::Cancelled)));
    }

    #[test]
    fn a_short_shard_is_held_at_least_its_time_and_answered() {
        // 2 · 64 · 64² ≈ 5.2·10⁵ ops at 10¹⁰ ops/s: 52 µs, a hold that spins.
        let sim = SimulatedBackend::new(0.01).expect("sim");
        let short = shard(64, 0..64);
        let time = sim.shard_time(&short);
        assert!(!time.is_zero() && time < SPIN_BELOW, "{time:?}");
        let zero_leaf = sha256(vec![0u8; 4 * 64]);
        for _ in 0..3 {
            let started = Instant::now();
            let out =
                sim.run_shard_cancellable(&short, false, &CancelToken::new()).expect("answered");
            assert!(started.elapsed() >= time, "held {:?}, not {time:?}", started.elapsed());
            assert_eq!(out.leaves, vec![zero_leaf; 64], "the leaf of an all-zero row, every time");
        }
        // Another size hashes its own zero row.
        let leaves = sim.run_shard(&shard(16, 0..2), false).expect("run").leaves;
        assert_eq!(leaves, vec![sha256(vec![0u8; 4 * 16]); 2]);
    }

    #[test]
    fn a_cancelled_short_shard_answers_cancelled() {
        let sim = SimulatedBackend::new(0.01).expect("sim");
        let cancel = CancelToken::new();
        cancel.cancel();
        for short in [shard(64, 0..64), shard(16, 0..1)] {
            assert!(sim.shard_time(&short) < SPIN_BELOW);
            let out = sim.run_shard_cancellable(&short, false, &cancel);
            assert!(matches!(out, Err(BackendError::Cancelled)), "{out:?}");
        }
        assert!(
            SimulatedBackend::hold(Instant::now(), Duration::from_micros(99), &cancel),
            "spins: cancelled at once"
        );
        assert!(
            SimulatedBackend::hold(Instant::now(), Duration::from_secs(1), &cancel),
            "sleeps: cancelled at once"
        );
        assert!(
            !SimulatedBackend::hold(Instant::now(), Duration::from_micros(20), &CancelToken::new()),
            "held to its end"
        );
        // Under AT_ONCE_BELOW the caller holds: the call only looks at the token.
        assert!(SimulatedBackend::hold(Instant::now(), Duration::from_micros(5), &cancel));
        let now = Instant::now();
        let far = now.checked_add(Duration::from_secs(1)).expect("later");
        assert!(!SimulatedBackend::hold(far, Duration::from_micros(5), &CancelToken::new()));
        // A hold counts from when the shard started (its answer was made meanwhile), not from now.
        let started = Instant::now().checked_sub(Duration::from_secs(30)).expect("30 s ago");
        let now = Instant::now();
        assert!(!SimulatedBackend::hold(started, Duration::from_secs(20), &CancelToken::new()));
        assert!(now.elapsed() < Duration::from_secs(10), "held {:?} more", now.elapsed());
    }

    #[test]
    fn only_a_hold_shorter_than_a_hand_off_is_answered_at_once() {
        let sim = SimulatedBackend::new(660.0).expect("sim");
        // A whole n = 1024 product at 660 TOPS: 3.25 µs.
        let whole = shard(1024, 0..1024);
        assert!(sim.shard_time(&whole) < AT_ONCE_BELOW);
        assert_eq!(sim.answers_at_once(&whole), Some(sim.shard_time(&whole)));
        // The call itself does not hold it: its caller does.
        let (output, _) = sim.run_shard_for_root(&whole, false, &CancelToken::new()).expect("run");
        assert!(output.leaves.is_empty());
        // At n = 4096, 208 µs: the device's own thread holds it.
        let large = shard(4096, 0..4096);
        assert!(sim.shard_time(&large) >= AT_ONCE_BELOW);
        assert_eq!(sim.answers_at_once(&large), None);
    }

    #[test]
    fn a_speed_must_be_positive() {
        for bad in [0.0, -1.0, f64::NAN, f64::INFINITY] {
            assert!(SimulatedBackend::new(bad).is_err(), "{bad}");
        }
    }
}
