//! The farm's scheduling state: every job waiting or running, every device and what it is doing, as a pure
//! state machine with no I/O, so that queueing, placement, reassignment, stragglers and check verdicts are
//! tested here without a network.
//!
//! The scheduler actor (`scheduler.rs`) owns one [`Schedule`] and feeds it events as they happen: a job
//! submitted or cancelled, a device arrived, left, drained or quarantined, a shard answered, a timer due.
//! Each event answers the [`Action`]s the actor carries out: send a shard, abort one, quarantine a device,
//! hand a finished job its leaves. Time is an argument (`now`), never read here; the actor sleeps until
//! [`Schedule::next_wake`], so no fixed tick sits on the hot path.
//!
//! The rules:
//! - **Many jobs at once.** Every usable device slot (`DeviceAdvert::concurrent_shards` of them per device)
//!   takes work as soon as it is free. A small job (the fastest device would finish it within
//!   [`SplitPolicy::small_job`]) runs whole on one device, side by side with other small jobs on other
//!   devices; a large one is split over the devices by throughput and advertised capacity
//!   ([`split_rows`]), and any free device takes a unit whose planned device is busy.
//! - **One queue.** Block tasks go before validator jobs ([`SchedulingPolicy::BlockFirst`], or arrival
//!   order with [`SchedulingPolicy::Fifo`]); then the earliest deadline; then, among equals, the owner
//!   (identity) served least recently, so no identity is always last; then arrival order.
//! - **Deadlines and cancellation.** A job past its deadline fails with [`JobError::DeadlineExceeded`] and a
//!   cancelled one simply goes; either way its shards in flight are aborted.
//! - **Trouble.** The rows of a lost, failed or timed-out shard go back in the queue for any device. A
//!   device whose product fails its Freivalds check is quarantined and the shard recomputed elsewhere. A
//!   device caught by a spot check is quarantined and everything it produced for unfinished jobs is
//!   recomputed elsewhere (a lie about leaves is covered by no check on the device). A device that leaves
//!   has its shards in flight handed out again at once. Once a job has nothing left to hand out, a shard
//!   running far past its expected time is re-issued to a free device, and the first verified answer wins.

use super::{
    DeviceId, DeviceReport, JobError, JobReport,
    aggregator::{JobLeaves, ShardResult},
    metrics::FarmMetrics,
    plan::{DeviceCapacity, SplitPolicy, StragglerPolicy, shard_ops, split_rows},
};
use cpc_common::{
    synthetic::Challenge,
    wire::{CheckTiming, DeviceAdvert},
};
use rustc_hash::{FxHashMap, FxHashSet};
use std::{
    borrow::Cow,
    cmp::Ordering,
    collections::{BTreeMap, BTreeSet, VecDeque},
    fmt,
    ops::Range,
    str::FromStr,
    sync::Arc,
    time::{Duration, Instant},
};

/// The farm's id of a job.
pub type JobId = u64;
/// The farm's id of one dispatch of a shard (unique per coordinator run).
pub type ShardId = u64;

/// Device errors (not transport) after which a device gets nothing more of one job.
const MAX_DEVICE_ERRORS: u32 = 3;

/// Which class a job belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Priority {
    /// The per-block tasks of the worker identities.
    #[default]
    Block,
    /// Jobs pushed by PoC validators.
    Validator,
}

/// How the next job is picked among those waiting.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum SchedulingPolicy {
    /// Block tasks before validator jobs.
    #[default]
    BlockFirst,
    /// Arrival order, whatever the class (deadlines and fairness still apply).
    Fifo,
}

impl FromStr for SchedulingPolicy {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "block_first" => Ok(Self::BlockFirst),
            "fifo" => Ok(Self::Fifo),
            other => Err(format!("invalid scheduling `{other}`: expected `block_first` or `fifo`")),
        }
    }
}

impl fmt::Display for SchedulingPolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::BlockFirst => "block_first",
            Self::Fifo => "fifo",
        })
    }
}

/// A job to run: the challenge and how it queues.
#[derive(Debug, Clone)]
pub struct JobSpec {
    /// What to compute.
    pub challenge: Challenge,
    /// Its class.
    pub priority: Priority,
    /// When its result is of no more use (it fails with [`JobError::DeadlineExceeded`] then, running or
    /// not). Block tasks have none: the planner cancels them when a newer block supersedes them.
    pub deadline: Option<Instant>,
    /// Whose job it is (an identity, a validator): among equals, owners take turns.
    pub owner: String,
}

impl JobSpec {
    /// A block-class job with no deadline and no owner.
    pub fn new(challenge: Challenge) -> Self {
        Self { challenge, priority: Priority::Block, deadline: None, owner: String::new() }
    }
}

/// How the schedule decides.
#[derive(Debug, Clone)]
pub struct SchedulePolicy {
    /// How jobs are split.
    pub split: SplitPolicy,
    /// When slow shards are re-issued.
    pub straggler: StragglerPolicy,
    /// Time one shard may take before its rows go elsewhere.
    pub shard_timeout: Duration,
    /// Time a job waits while no device can take it before it fails.
    pub no_device_wait: Duration,
    /// Which job goes first.
    pub ordering: SchedulingPolicy,
}

/// A device as the schedule knows it.
#[derive(Debug, Clone)]
pub struct DeviceEntry {
    /// Its id.
    pub id: DeviceId,
    /// Its agent's name.
    pub agent_name: String,
    /// What its agent announced.
    pub advert: DeviceAdvert,
}

/// Why a device stops taking shards.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Removal {
    /// Its agent left (or stopped sending heartbeats): shards in flight on it are handed out again.
    Gone,
    /// Quarantined (by its agent, or by a check here): it gets nothing more, its shards in flight are
    /// answered but no leaves of it are accepted.
    Quarantined,
    /// Its agent is draining: it gets no new shard, and those it holds are still answered.
    Draining,
}

/// How one dispatched shard ended, as its I/O task saw it.
#[derive(Debug)]
pub enum ShardOutcome {
    /// Answered, and its spot check passed.
    Verified {
        /// Its leaves in row order, or the root of the whole iteration it covered.
        result: ShardResult,
        /// Rows spot-checked.
        checked: u32,
        /// The Freivalds check's cost, when the device ran one.
        check: Option<CheckTiming>,
    },
    /// Answered wrong: a spot check failed, or the answer was malformed.
    Wrong {
        /// Rows checked and found right first.
        passed: u32,
        /// What was wrong.
        reason: String,
    },
    /// The device's Freivalds check of its own product failed.
    CheckFailed {
        /// Which rows, on which device.
        reason: String,
    },
    /// No answer: transport trouble, a device error, a timeout.
    Failed {
        /// Why.
        reason: String,
        /// The connection failed (not held against the device).
        transport: bool,
    },
}

/// A shard to send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Dispatch {
    /// This dispatch's id.
    pub shard_id: ShardId,
    /// The job it belongs to.
    pub job: JobId,
    /// Where it goes.
    pub device: DeviceId,
    /// The job's challenge.
    pub challenge: Challenge,
    /// Which product.
    pub iteration: u32,
    /// Which rows.
    pub rows: Range<u32>,
}

/// A job that has all its leaves.
#[derive(Debug)]
pub struct FinishedJob {
    /// Its leaves (the actor builds the root off its thread).
    pub leaves: JobLeaves,
    /// Its report, with a zero `result_hash` until the root is built.
    pub report: JobReport,
}

/// What the actor must do.
#[derive(Debug)]
pub enum Action {
    /// Send this shard.
    Dispatch(Dispatch),
    /// Stop waiting for this shard (the device may be told, the answer is ignored).
    Abort(ShardId),
    /// Tell the registry this device is quarantined.
    Quarantine {
        /// The device.
        device: DeviceId,
        /// Why.
        reason: String,
    },
    /// A job ended.
    Finished {
        /// Which.
        job: JobId,
        /// Its leaves and report, or why it failed.
        result: Result<Box<FinishedJob>, JobError>,
    },
}

#[derive(Debug, Clone, Copy, PartialEq)]
struct Speed(f64);

impl Eq for Speed {}

impl Ord for Speed {
    /// Fastest first.
    fn cmp(&self, other: &Self) -> Ordering {
        other.0.total_cmp(&self.0)
    }
}

impl PartialOrd for Speed {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

/// Orders devices fastest first, ties by id.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
struct DeviceKey {
    speed: Speed,
    id: DeviceId,
}

#[derive(Debug)]
struct Device {
    entry: DeviceEntry,
    /// How job reports name it, made once: every job it serves shares them.
    names: Arc<DeviceNames>,
    key: DeviceKey,
    usable: bool,
    busy: u32,
    /// Since when the device owes an answer: the start of its oldest shard that ended without one (aborted
    /// or timed out); cleared by any answer. A silently dead agent is noticed by its heartbeats only after
    /// 1.5 s, and a block task sent to it is lost each block until then: placement passes over a device
    /// silent for longer than the straggler grace while another is free, and what it does get is copied to
    /// the next device to free up.
    silent_since: Option<Instant>,
    /// Quarantined: nothing it answers from now on is accepted.
    quarantined: bool,
}

/// A device's names in job reports.
#[derive(Debug)]
struct DeviceNames {
    /// `agentN/gpuI`.
    device: String,
    agent: String,
    name: String,
}

impl DeviceNames {
    fn of(entry: &DeviceEntry) -> Arc<Self> {
        Arc::new(Self {
            device: entry.id.to_string(),
            agent: entry.agent_name.clone(),
            name: entry.advert.name.clone(),
        })
    }
}

impl Device {
    fn has_free_slot(&self) -> bool {
        self.usable && self.busy < self.entry.advert.slots()
    }

    /// Owes an answer for longer than `grace`.
    fn is_silent(&self, now: Instant, grace: Duration) -> bool {
        self.silent_since.is_some_and(|t| now.saturating_duration_since(t) > grace)
    }

    fn ops_per_sec(&self) -> f64 {
        let ops = self.entry.advert.measured_ops_per_sec;
        if ops.is_finite() && ops > 0.0 { ops } else { 1.0 }
    }
}

/// Orders waiting jobs: class, deadline (none last), owner's last service, arrival.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
struct JobKey {
    class: u8,
    no_deadline: bool,
    deadline: Option<Instant>,
    last_served: u64,
    seq: u64,
    job: JobId,
}

#[derive(Debug)]
struct Unit {
    iteration: u32,
    rows: Range<u32>,
    preferred: Option<DeviceId>,
    done: bool,
    accepted_from: Option<DeviceId>,
    in_flight: u32,
}

#[derive(Debug)]
struct Flight {
    job: JobId,
    unit: usize,
    device: DeviceId,
    started: Instant,
    /// When it times out (none past `Instant`'s range).
    timeout_at: Option<Instant>,
    /// Its one timer in [`Schedule::timers`]: its straggler time until that passes, then its timeout.
    /// Removed when it ends: a farm dispatching tens of thousands of shards a second must not keep a timer
    /// per shard for the whole shard timeout, and one timer a flight is half the work of two.
    armed: Option<(Instant, Timer)>,
}

#[derive(Debug, Default)]
struct DevStat {
    names: Option<Arc<DeviceNames>>,
    rows: u64,
    shards: u64,
    busy: Duration,
}

#[derive(Debug, Default)]
struct Tally {
    dispatched: u64,
    reassigned: u64,
    failed: u64,
    spot_passed: u64,
    spot_failed: u64,
    checks_passed: u64,
    checks_failed: u64,
    unchecked: u64,
    check_micros: u64,
    shard_micros: u64,
    quarantined: Vec<DeviceId>,
    round_trips: Vec<Duration>,
    devices: BTreeMap<DeviceId, DevStat>,
}

#[derive(Debug)]
struct Job {
    spec: JobSpec,
    key: JobKey,
    submitted: Instant,
    planned: bool,
    served: bool,
    units: Vec<Unit>,
    pending: VecDeque<usize>,
    done: usize,
    leaves: JobLeaves,
    flights: BTreeSet<ShardId>,
    excluded: FxHashSet<DeviceId>,
    device_errors: FxHashMap<DeviceId, u32>,
    starved_since: Option<Instant>,
    tally: Tally,
}

impl Job {
    fn n(&self) -> u32 {
        self.spec.challenge.matrix_size()
    }

    fn can_use(&self, d: &Device) -> bool {
        d.usable && !self.excluded.contains(&d.entry.id) && d.entry.advert.max_rows_at(self.n()) > 0
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Timer {
    ShardTimeout(ShardId),
    Straggler(ShardId),
    Deadline(JobId),
    Starved(JobId),
}

/// The scheduling state of one farm.
#[derive(Debug)]
pub struct Schedule {
    policy: SchedulePolicy,
    metrics: FarmMetrics,
    devices: FxHashMap<DeviceId, Device>,
    /// Usable devices, fastest first.
    usable: BTreeSet<DeviceKey>,
    /// Usable devices with a free slot, fastest first.
    idle: BTreeSet<DeviceKey>,
    jobs: FxHashMap<JobId, Job>,
    /// Jobs with units waiting for a device, first served first.
    ready: BTreeSet<JobKey>,
    flights: FxHashMap<ShardId, Flight>,
    /// Shards past their straggler time whose job has nothing else to hand out.
    late: BTreeSet<ShardId>,
    timers: BTreeSet<(Instant, Timer)>,
    last_served: FxHashMap<String, u64>,
    service_seq: u64,
    submit_seq: u64,
    next_shard: ShardId,
}

impl Schedule {
    /// An empty schedule; shard ids start at `first_shard_id`.
    pub fn new(policy: SchedulePolicy, metrics: FarmMetrics, first_shard_id: ShardId) -> Self {
        Self {
            policy,
            metrics,
            devices: FxHashMap::default(),
            usable: BTreeSet::new(),
            idle: BTreeSet::new(),
            jobs: FxHashMap::default(),
            ready: BTreeSet::new(),
            flights: FxHashMap::default(),
            late: BTreeSet::new(),
            timers: BTreeSet::new(),
            last_served: FxHashMap::default(),
            service_seq: 0,
            submit_seq: 0,
            next_shard: first_shard_id,
        }
    }

    /// When [`Schedule::wake`] has something to do (a shard timeout, a straggler, a deadline, a job
    /// starved of devices); none while nothing is pending.
    pub fn next_wake(&self) -> Option<Instant> {
        self.timers.first().map(|&(at, _)| at)
    }

    /// Jobs waiting or running.
    pub fn jobs(&self) -> usize {
        self.jobs.len()
    }

    /// Shards in flight.
    pub fn in_flight(&self) -> usize {
        self.flights.len()
    }

    /// Shards in flight per device (devices holding none are left out).
    pub fn in_flight_by_device(&self) -> BTreeMap<DeviceId, u32> {
        let mut out = BTreeMap::new();
        for f in self.flights.values() {
            *out.entry(f.device).or_insert(0) += 1;
        }
        out
    }

    /// Whether `id` is known and takes new shards (neither drained, quarantined nor gone).
    pub fn is_usable(&self, id: DeviceId) -> bool {
        self.devices.get(&id).is_some_and(|d| d.usable)
    }

    /// An operator drains a device: it gets no new shard, and the shards it holds are answered and their
    /// leaves accepted as usual ([`Removal::Draining`]). Undone by [`Schedule::add_device`].
    pub fn drain_device(&mut self, now: Instant, id: DeviceId) -> Vec<Action> {
        self.remove_device(now, id, Removal::Draining)
    }

    /// An operator lifted a device's quarantine after its self-test passed: its answers are accepted again
    /// and it takes shards, as a device that just joined.
    pub fn readmit_device(&mut self, now: Instant, entry: DeviceEntry) -> Vec<Action> {
        if let Some(d) = self.devices.get_mut(&entry.id) {
            d.quarantined = false;
        }
        self.add_device(now, entry)
    }

    /// A job to run.
    pub fn submit(&mut self, now: Instant, job: JobId, spec: JobSpec) -> Vec<Action> {
        let mut out = Vec::new();
        self.submit_seq += 1;
        let key = JobKey {
            class: match (self.policy.ordering, spec.priority) {
                (SchedulingPolicy::BlockFirst, Priority::Validator) => 1,
                _ => 0,
            },
            no_deadline: spec.deadline.is_none(),
            deadline: spec.deadline,
            last_served: self.last_served.get(&spec.owner).copied().unwrap_or(0),
            seq: self.submit_seq,
            job,
        };
        if let Some(deadline) = spec.deadline {
            self.timers.insert((deadline, Timer::Deadline(job)));
        }
        let leaves = JobLeaves::new(&spec.challenge);
        self.jobs.insert(
            job,
            Job {
                spec,
                key,
                submitted: now,
                planned: false,
                served: false,
                units: Vec::new(),
                pending: VecDeque::new(),
                done: 0,
                leaves,
                flights: BTreeSet::new(),
                excluded: FxHashSet::default(),
                device_errors: FxHashMap::default(),
                starved_since: None,
                tally: Tally::default(),
            },
        );
        self.ready.insert(key);
        self.check_starved(now, job);
        self.fill(now, &mut out);
        out
    }

    /// Forgets a job whose caller went away; aborts its shards in flight.
    pub fn cancel(&mut self, now: Instant, job: JobId) -> Vec<Action> {
        let mut out = Vec::new();
        if let Some(j) = self.remove_job(job, &mut out) {
            tracing::debug!(job, shards_in_flight = j.flights.len(), "job cancelled");
        }
        self.fill(now, &mut out);
        out
    }

    /// A device joined (or stopped draining).
    pub fn add_device(&mut self, now: Instant, entry: DeviceEntry) -> Vec<Action> {
        let mut out = Vec::new();
        let id = entry.id;
        let key = DeviceKey {
            speed: Speed(if entry.advert.measured_ops_per_sec.is_finite() {
                entry.advert.measured_ops_per_sec
            } else {
                0.0
            }),
            id,
        };
        // A device added again keeps its shards in flight, its silence and its quarantine.
        let (busy, silent_since, quarantined) = match self.devices.remove(&id) {
            Some(old) => {
                self.usable.remove(&old.key);
                self.idle.remove(&old.key);
                (old.busy, old.silent_since, old.quarantined)
            }
            None => (0, None, false),
        };
        self.devices.insert(
            id,
            Device {
                names: DeviceNames::of(&entry),
                entry,
                key,
                usable: true,
                busy,
                silent_since,
                quarantined,
            },
        );
        self.usable.insert(key);
        self.refresh_idle(id);
        // Jobs that waited for a device this one can serve stop counting towards their failure.
        let Some(device) = self.devices.get(&id) else { return out };
        for job in self.jobs.values_mut() {
            if job.starved_since.is_some() && job.can_use(device) {
                job.starved_since = None;
            }
        }
        self.fill(now, &mut out);
        out
    }

    /// A device stops taking shards.
    pub fn remove_device(&mut self, now: Instant, id: DeviceId, why: Removal) -> Vec<Action> {
        let mut out = Vec::new();
        self.take_out(now, id, why, &mut out);
        self.fill(now, &mut out);
        out
    }

    /// [`Schedule::remove_device`] without handing out the work it frees.
    fn take_out(&mut self, now: Instant, id: DeviceId, why: Removal, out: &mut Vec<Action>) {
        let Some(device) = self.devices.get_mut(&id) else { return };
        device.usable = false;
        device.quarantined |= why == Removal::Quarantined;
        let key = device.key;
        self.usable.remove(&key);
        self.idle.remove(&key);
        // A quarantined device's shards in flight still get their answers (a failed Freivalds check is
        // reported on the shard's own stream, often just after the agent's quarantine notice), but none of
        // its leaves is accepted any more; a departed device's shards are handed out again at once.
        if why == Removal::Gone {
            self.devices.remove(&id);
            let lost: Vec<ShardId> =
                self.flights.iter().filter(|(_, f)| f.device == id).map(|(&s, _)| s).collect();
            for shard in lost {
                out.push(Action::Abort(shard));
                if let Some(f) = self.end_flight(shard, false) {
                    self.requeue(f.job, f.unit);
                }
            }
        }
        let waiting: Vec<JobId> = self.jobs.keys().copied().collect();
        for job in waiting {
            self.check_starved(now, job);
        }
    }

    /// A shard's I/O task finished.
    pub fn answer(&mut self, now: Instant, shard: ShardId, outcome: ShardOutcome) -> Vec<Action> {
        let mut out = Vec::new();
        let answered = !matches!(outcome, ShardOutcome::Failed { transport: true, .. });
        self.on_answer(now, shard, outcome, answered, &mut out);
        self.fill(now, &mut out);
        out
    }

    /// Timers that are due: shard timeouts, stragglers, deadlines, starved jobs.
    pub fn wake(&mut self, now: Instant) -> Vec<Action> {
        let mut out = Vec::new();
        while let Some(&(at, timer)) = self.timers.first() {
            if at > now {
                break;
            }
            self.timers.pop_first();
            match timer {
                Timer::ShardTimeout(shard) => {
                    if self.flights.contains_key(&shard) {
                        out.push(Action::Abort(shard));
                        let reason = format!("no answer within {:?}", self.policy.shard_timeout);
                        self.on_answer(
                            now,
                            shard,
                            ShardOutcome::Failed { reason, transport: false },
                            false,
                            &mut out,
                        );
                    }
                }
                Timer::Straggler(shard) => {
                    if let Some(f) = self.flights.get_mut(&shard) {
                        self.late.insert(shard);
                        // Its timeout next (handled in this loop already if it is due too).
                        f.armed = f.timeout_at.map(|at| (at, Timer::ShardTimeout(shard)));
                        if let Some(timer) = f.armed {
                            self.timers.insert(timer);
                        }
                    }
                }
                Timer::Deadline(job) => {
                    if self.jobs.contains_key(&job) {
                        tracing::warn!(job, "job deadline passed: its shards are aborted");
                        self.fail_job(now, job, JobError::DeadlineExceeded, &mut out);
                    }
                }
                Timer::Starved(job) => {
                    let wait = self.policy.no_device_wait;
                    let starved = self.jobs.get(&job).is_some_and(|j| {
                        j.flights.is_empty() && j.starved_since.is_some_and(|t| now >= t + wait)
                    });
                    if starved && !self.any_device_for(job) {
                        self.fail_job(now, job, JobError::NoDevices(wait), &mut out);
                    }
                }
            }
        }
        self.fill(now, &mut out);
        out
    }

    fn refresh_idle(&mut self, id: DeviceId) {
        if let Some(d) = self.devices.get(&id) {
            if d.has_free_slot() {
                self.idle.insert(d.key);
            } else {
                self.idle.remove(&d.key);
            }
        }
    }

    fn any_device_for(&self, job: JobId) -> bool {
        let Some(j) = self.jobs.get(&job) else { return false };
        self.usable.iter().any(|k| self.devices.get(&k.id).is_some_and(|d| j.can_use(d)))
    }

    /// Starts a job's no-device clock when nothing in the farm can take it.
    fn check_starved(&mut self, now: Instant, job: JobId) {
        let starved = self.jobs.get(&job).is_some_and(|j| {
            j.starved_since.is_none() && j.flights.is_empty() && j.done < j.units.len().max(1)
        }) && !self.any_device_for(job);
        if starved && let Some(j) = self.jobs.get_mut(&job) {
            j.starved_since = Some(now);
            self.timers.insert((now + self.policy.no_device_wait, Timer::Starved(job)));
        }
    }

    /// Hands work to every free device slot: jobs in queue order, then stragglers.
    fn fill(&mut self, now: Instant, out: &mut Vec<Action>) {
        let mut blocked: FxHashSet<JobId> = FxHashSet::default();
        while !self.idle.is_empty() {
            let Some(key) = self.ready.iter().find(|k| !blocked.contains(&k.job)).copied() else {
                break;
            };
            let job = key.job;
            if !self.plan(job) {
                blocked.insert(job);
                continue;
            }
            match self.pick(now, job) {
                Some((pos, device)) => self.dispatch_pending(now, job, pos, device, out),
                None => {
                    blocked.insert(job);
                }
            }
        }
        if !self.idle.is_empty() && !self.late.is_empty() {
            self.reissue_stragglers(now, out);
        }
    }

    /// Cuts a job into units the first time a device could take it; false when none can.
    fn plan(&mut self, job: JobId) -> bool {
        let Some(j) = self.jobs.get(&job) else { return false };
        if j.planned {
            return true;
        }
        let n = j.n();
        let caps = |d: &Device| DeviceCapacity {
            id: d.entry.id,
            ops_per_sec: d.ops_per_sec(),
            max_rows: d.entry.advert.max_rows_at(n),
        };
        let Some(fastest) = self
            .usable
            .iter()
            .filter_map(|k| self.devices.get(&k.id))
            .find(|d| j.can_use(d))
            .map(caps)
        else {
            return false;
        };
        // A small job runs whole (cut only by memory) on whichever device is free: planning it against the
        // whole pool would cost more than running it.
        let whole = shard_ops(n, n) / fastest.ops_per_sec;
        let mut units = Vec::new();
        if whole <= self.policy.split.small_job.as_secs_f64() {
            for iteration in 0..j.spec.challenge.iterations() {
                let mut r0 = 0;
                while r0 < n {
                    let r1 = r0.saturating_add(fastest.max_rows.max(1)).min(n);
                    units.push(Unit::new(iteration, r0..r1, None));
                    r0 = r1;
                }
            }
        } else {
            let all: Vec<DeviceCapacity> = self
                .usable
                .iter()
                .filter_map(|k| self.devices.get(&k.id))
                .filter(|d| j.can_use(d))
                .map(caps)
                .collect();
            for iteration in 0..j.spec.challenge.iterations() {
                let Ok(plan) = split_rows(n, &all, &self.policy.split) else { return false };
                units
                    .extend(plan.into_iter().map(|a| Unit::new(iteration, a.rows, Some(a.device))));
            }
        }
        let Some(j) = self.jobs.get_mut(&job) else { return false };
        j.pending = (0..units.len()).collect();
        tracing::debug!(job, n, units = units.len(), "job planned");
        j.units = units;
        j.planned = true;
        true
    }

    /// The next unit of `job` and the device for it: a unit planned for a device that is free, else the
    /// first waiting unit on the fastest free device the job can use.
    fn pick(&self, now: Instant, job: JobId) -> Option<(usize, DeviceId)> {
        let j = self.jobs.get(&job)?;
        let grace = self.policy.straggler.grace;
        let silent = |d: &Device| d.is_silent(now, grace);
        for (pos, &u) in j.pending.iter().enumerate() {
            if let Some(p) = j.units[u].preferred
                && let Some(d) = self.devices.get(&p)
                && d.has_free_slot()
                && j.can_use(d)
                && !silent(d)
            {
                return Some((pos, p));
            }
        }
        if j.pending.is_empty() {
            return None;
        }
        // The fastest free device, passing over one that owes answers while another can take the work.
        let mut free =
            self.idle.iter().filter_map(|k| self.devices.get(&k.id)).filter(|d| j.can_use(d));
        let first = free.next()?;
        let device = if silent(first) { free.find(|d| !silent(d)).unwrap_or(first) } else { first };
        Some((0, device.entry.id))
    }

    fn dispatch_pending(
        &mut self,
        now: Instant,
        job: JobId,
        pos: usize,
        device: DeviceId,
        out: &mut Vec<Action>,
    ) {
        let max_rows = self
            .devices
            .get(&device)
            .map_or(0, |d| d.entry.advert.max_rows_at(self.jobs.get(&job).map_or(0, Job::n)));
        let Some(j) = self.jobs.get_mut(&job) else { return };
        let Some(u) = j.pending.remove(pos) else { return };
        if j.units[u].rows.len() as u64 > u64::from(max_rows) {
            // More than this device holds: it takes what fits, the rest waits for another shard.
            let unit = &mut j.units[u];
            let split = unit.rows.start + max_rows;
            let rest = Unit::new(unit.iteration, split..unit.rows.end, None);
            unit.rows.end = split;
            j.units.push(rest);
            j.pending.push_front(j.units.len() - 1);
        }
        if j.pending.is_empty() {
            self.ready.remove(&j.key);
        }
        if !j.served {
            j.served = true;
            self.service_seq += 1;
            // The owner's name is cloned only the first time it is served.
            match self.last_served.get_mut(&j.spec.owner) {
                Some(seq) => *seq = self.service_seq,
                None => {
                    self.last_served.insert(j.spec.owner.clone(), self.service_seq);
                }
            }
        }
        self.dispatch(now, job, u, device, out);
    }

    fn dispatch(
        &mut self,
        now: Instant,
        job: JobId,
        u: usize,
        device: DeviceId,
        out: &mut Vec<Action>,
    ) {
        let Some(d) = self.devices.get_mut(&device) else { return };
        let Some(j) = self.jobs.get_mut(&job) else { return };
        let shard_id = self.next_shard;
        self.next_shard += 1;
        d.busy += 1;
        let ops = d.ops_per_sec();
        let grace = self.policy.straggler.grace;
        let silent = d.is_silent(now, grace);
        let n = j.n();
        let unit = &mut j.units[u];
        unit.in_flight += 1;
        let rows = unit.rows.clone();
        let expected = Duration::try_from_secs_f64(shard_ops(n, rows.len() as u32) / ops)
            .unwrap_or(Duration::MAX / 4);
        j.flights.insert(shard_id);
        j.starved_since = None;
        j.tally.dispatched += 1;
        let stat = j.tally.devices.entry(device).or_default();
        if stat.names.is_none() {
            stat.names = Some(d.names.clone());
        }
        let timeout_at = now.checked_add(self.policy.shard_timeout);
        let straggler = &self.policy.straggler;
        let late_at = Duration::try_from_secs_f64(expected.as_secs_f64() * straggler.factor)
            .ok()
            .and_then(|late| now.checked_add(late)?.checked_add(straggler.grace));
        // The straggler timer first, when it comes before the timeout; the timeout is armed when it fires.
        let armed = match (late_at, timeout_at) {
            (Some(late), Some(timeout)) if late < timeout => {
                Some((late, Timer::Straggler(shard_id)))
            }
            (Some(late), None) => Some((late, Timer::Straggler(shard_id))),
            (_, timeout) => timeout.map(|at| (at, Timer::ShardTimeout(shard_id))),
        };
        if let Some(timer) = armed {
            self.timers.insert(timer);
        }
        self.flights
            .insert(shard_id, Flight { job, unit: u, device, started: now, timeout_at, armed });
        if silent {
            // Hedged: the first other device to free up takes a copy (the straggler path), so a silently
            // dead agent costs no block task once it owes answers.
            self.late.insert(shard_id);
        }
        self.metrics.dispatched();
        out.push(Action::Dispatch(Dispatch {
            shard_id,
            job,
            device,
            challenge: j.spec.challenge.clone(),
            iteration: unit.iteration,
            rows,
        }));
        self.refresh_idle(device);
    }

    /// Re-issues late shards of jobs with nothing else to hand out to free devices other than their own.
    fn reissue_stragglers(&mut self, now: Instant, out: &mut Vec<Action>) {
        let late: Vec<ShardId> = self.late.iter().copied().collect();
        for shard in late {
            if self.idle.is_empty() {
                break;
            }
            let Some(f) = self.flights.get(&shard) else {
                self.late.remove(&shard);
                continue;
            };
            let Some(j) = self.jobs.get(&f.job) else { continue };
            let unit = &j.units[f.unit];
            if !j.pending.is_empty() || unit.done || unit.in_flight > 1 {
                continue;
            }
            let rows = unit.rows.len() as u64;
            let n = j.n();
            let target = self
                .idle
                .iter()
                .filter_map(|k| self.devices.get(&k.id))
                .find(|d| {
                    d.entry.id != f.device
                        && j.can_use(d)
                        && u64::from(d.entry.advert.max_rows_at(n)) >= rows
                })
                .map(|d| d.entry.id);
            let Some(target) = target else { continue };
            let (job, u, slow) = (f.job, f.unit, f.device);
            self.late.remove(&shard);
            tracing::info!(job, %slow, to = %target, "re-issuing a straggling shard");
            if let Some(j) = self.jobs.get_mut(&job) {
                j.tally.reassigned += 1;
            }
            self.metrics.reassigned();
            self.dispatch(now, job, u, target, out);
        }
    }

    /// Ends a flight: frees its device slot. Answers it, or none when it had ended already.
    /// `answered`: the device answered it (or the transport failed); otherwise it was aborted or timed out
    /// and the device now owes an answer.
    fn end_flight(&mut self, shard: ShardId, answered: bool) -> Option<Flight> {
        let f = self.flights.remove(&shard)?;
        if let Some(d) = self.devices.get_mut(&f.device) {
            if answered {
                d.silent_since = None;
            } else if d.silent_since.is_none() {
                d.silent_since = Some(f.started);
            }
        }
        self.late.remove(&shard);
        if let Some(timer) = f.armed {
            self.timers.remove(&timer);
        }
        if let Some(d) = self.devices.get_mut(&f.device) {
            d.busy = d.busy.saturating_sub(1);
        }
        self.refresh_idle(f.device);
        if let Some(j) = self.jobs.get_mut(&f.job) {
            j.flights.remove(&shard);
            if let Some(unit) = j.units.get_mut(f.unit) {
                unit.in_flight = unit.in_flight.saturating_sub(1);
            }
        }
        Some(f)
    }

    /// Puts a unit back in its job's queue, for any device, unless it is done or still running elsewhere.
    fn requeue(&mut self, job: JobId, u: usize) {
        let Some(j) = self.jobs.get_mut(&job) else { return };
        let Some(unit) = j.units.get_mut(u) else { return };
        if unit.done || unit.in_flight > 0 || j.pending.contains(&u) {
            return;
        }
        unit.preferred = None;
        j.pending.push_front(u);
        j.tally.reassigned += 1;
        self.ready.insert(j.key);
        self.metrics.reassigned();
    }

    /// `answered`: the device sent something (not a timeout, not a broken connection).
    fn on_answer(
        &mut self,
        now: Instant,
        shard: ShardId,
        outcome: ShardOutcome,
        answered: bool,
        out: &mut Vec<Action>,
    ) {
        let Some(f) = self.end_flight(shard, answered) else { return };
        let round_trip = now.saturating_duration_since(f.started);
        let (job, device) = (f.job, f.device);
        match outcome {
            ShardOutcome::Verified { .. }
                if self.devices.get(&device).is_none_or(|d| d.quarantined) =>
            {
                tracing::warn!(job, %device, "an answer of a quarantined device is not accepted: its rows go back in the queue");
                self.requeue(job, f.unit);
            }
            ShardOutcome::Verified { result, checked, check } => {
                self.metrics.spot_checks(checked, false);
                self.metrics.freivalds_check(check.as_ref(), true);
                let Some(j) = self.jobs.get_mut(&job) else { return };
                j.tally.spot_passed += u64::from(checked);
                match check {
                    Some(t) => {
                        j.tally.checks_passed += 1;
                        j.tally.check_micros += t.check_micros;
                        j.tally.shard_micros += t.shard_micros;
                    }
                    None => j.tally.unchecked += 1,
                }
                let unit = &j.units[f.unit];
                if unit.done {
                    return;
                }
                let (iteration, first, rows) =
                    (unit.iteration, unit.rows.start, unit.rows.len() as u64);
                if let Err(e) = j.leaves.place(iteration, first, result) {
                    self.fail_job(now, job, JobError::Internal(e.to_string()), out);
                    return;
                }
                let unit = &mut j.units[f.unit];
                unit.done = true;
                unit.accepted_from = Some(device);
                j.done += 1;
                let stat = j.tally.devices.entry(device).or_default();
                stat.rows += rows;
                stat.shards += 1;
                stat.busy += round_trip;
                j.tally.round_trips.push(round_trip);
                self.metrics.completed(round_trip);
                // Twins of this unit (a straggler's re-issue) are no longer needed.
                let twins: Vec<ShardId> = j
                    .flights
                    .iter()
                    .copied()
                    .filter(|s| self.flights.get(s).is_some_and(|g| g.unit == f.unit))
                    .collect();
                for twin in twins {
                    out.push(Action::Abort(twin));
                    self.end_flight(twin, false);
                }
                if self.jobs.get(&job).is_some_and(|j| j.done == j.units.len()) {
                    self.finish(now, job, out);
                }
            }
            ShardOutcome::Wrong { passed, reason } => {
                self.metrics.spot_checks(passed, true);
                if let Some(j) = self.jobs.get_mut(&job) {
                    j.tally.spot_passed += u64::from(passed);
                    j.tally.spot_failed += 1;
                }
                tracing::error!(job, %device, %reason, "spot check failed: the device is quarantined and its work recomputed");
                self.quarantine(now, device, reason, Some(job), out);
                self.requeue(job, f.unit);
                // A lie about leaves is covered by no check on the device: everything it gave any
                // unfinished job is recomputed.
                let jobs: Vec<JobId> = self.jobs.keys().copied().collect();
                for id in jobs {
                    let Some(j) = self.jobs.get_mut(&id) else { continue };
                    let tainted: Vec<usize> = (0..j.units.len())
                        .filter(|&u| j.units[u].accepted_from == Some(device))
                        .collect();
                    for &u in &tainted {
                        j.units[u].done = false;
                        j.units[u].accepted_from = None;
                        j.done -= 1;
                    }
                    if let Some(stat) = j.tally.devices.get_mut(&device) {
                        stat.rows = 0;
                        stat.shards = 0;
                    }
                    for u in tainted {
                        self.requeue(id, u);
                    }
                }
            }
            ShardOutcome::CheckFailed { reason } => {
                self.metrics.failed();
                self.metrics.freivalds_check(None, false);
                if let Some(j) = self.jobs.get_mut(&job) {
                    j.tally.failed += 1;
                    j.tally.checks_failed += 1;
                }
                tracing::error!(job, %device, %reason, "Freivalds check failed: device quarantined, shard recomputed elsewhere");
                self.quarantine(now, device, reason, Some(job), out);
                self.requeue(job, f.unit);
            }
            ShardOutcome::Failed { reason, transport } => {
                self.metrics.failed();
                tracing::warn!(job, %device, %reason, "shard failed: its rows go back in the queue");
                if let Some(j) = self.jobs.get_mut(&job) {
                    j.tally.failed += 1;
                    if !transport {
                        let errors = j.device_errors.entry(device).or_default();
                        *errors += 1;
                        if *errors >= MAX_DEVICE_ERRORS {
                            j.excluded.insert(device);
                        }
                    }
                }
                self.requeue(job, f.unit);
                self.check_starved(now, job);
            }
        }
    }

    /// Takes a device out of service after a failed check, and tells the registry.
    fn quarantine(
        &mut self,
        now: Instant,
        device: DeviceId,
        reason: String,
        job: Option<JobId>,
        out: &mut Vec<Action>,
    ) {
        if let Some(j) = job.and_then(|id| self.jobs.get_mut(&id)) {
            j.excluded.insert(device);
            j.tally.quarantined.push(device);
        }
        out.push(Action::Quarantine { device, reason });
        self.take_out(now, device, Removal::Quarantined, out);
    }

    fn remove_job(&mut self, job: JobId, out: &mut Vec<Action>) -> Option<Job> {
        let shards: Vec<ShardId> = self.jobs.get(&job)?.flights.iter().copied().collect();
        for shard in shards {
            out.push(Action::Abort(shard));
            self.end_flight(shard, false);
        }
        let j = self.jobs.remove(&job)?;
        self.ready.remove(&j.key);
        if let Some(deadline) = j.spec.deadline {
            self.timers.remove(&(deadline, Timer::Deadline(job)));
        }
        Some(j)
    }

    fn fail_job(&mut self, now: Instant, job: JobId, error: JobError, out: &mut Vec<Action>) {
        if let Some(j) = self.remove_job(job, out) {
            self.metrics.job_done(now.saturating_duration_since(j.submitted), false);
            out.push(Action::Finished { job, result: Err(error) });
        }
    }

    fn finish(&mut self, now: Instant, job: JobId, out: &mut Vec<Action>) {
        let Some(mut j) = self.remove_job(job, out) else { return };
        let makespan = now.saturating_duration_since(j.submitted);
        self.metrics.job_done(makespan, true);
        let report = report(job, &mut j, makespan);
        out.push(Action::Finished {
            job,
            result: Ok(Box::new(FinishedJob { leaves: j.leaves, report })),
        });
    }
}

impl Unit {
    fn new(iteration: u32, rows: Range<u32>, preferred: Option<DeviceId>) -> Self {
        Self { iteration, rows, preferred, done: false, accepted_from: None, in_flight: 0 }
    }
}

/// A finished job's report, its `result_hash` still zero; takes the job's round trips.
fn report(job_id: JobId, j: &mut Job, makespan: Duration) -> JobReport {
    let n = j.n();
    let round_trips = std::mem::take(&mut j.tally.round_trips);
    let t = &j.tally;
    // A job run whole has one round trip: no copy to sort.
    let sorted = if round_trips.len() > 1 {
        let mut sorted = round_trips.clone();
        sorted.sort();
        Cow::Owned(sorted)
    } else {
        Cow::Borrowed(&round_trips)
    };
    let pct = |p: usize| -> f64 {
        if sorted.is_empty() {
            return 0.0;
        }
        let rank = (sorted.len() * p).div_ceil(100).clamp(1, sorted.len());
        sorted[rank - 1].as_secs_f64()
    };
    let (p50, p99) = (pct(50), pct(99));
    let devices = t
        .devices
        .iter()
        .map(|(id, s)| {
            let busy = s.busy.as_secs_f64();
            let ops = shard_ops(n, 1) * s.rows as f64;
            let names = s.names.as_deref();
            DeviceReport {
                device: names.map_or_else(|| id.to_string(), |d| d.device.clone()),
                agent: names.map(|d| d.agent.clone()).unwrap_or_default(),
                name: names.map(|d| d.name.clone()).unwrap_or_default(),
                rows: s.rows,
                shards: s.shards,
                busy_seconds: busy,
                achieved_ops_per_sec: if busy > 0.0 { ops / busy } else { 0.0 },
            }
        })
        .collect();
    JobReport {
        job_id,
        seed: j.spec.challenge.seed().to_owned(),
        matrix_size: n,
        iterations: j.spec.challenge.iterations(),
        result_hash: [0; 32],
        makespan_seconds: makespan.as_secs_f64(),
        achieved_ops_per_sec: if makespan.is_zero() {
            0.0
        } else {
            shard_ops(n, n) * f64::from(j.spec.challenge.iterations()) / makespan.as_secs_f64()
        },
        shards_dispatched: t.dispatched,
        shards_reassigned: t.reassigned,
        shards_failed: t.failed,
        spot_checks_passed: t.spot_passed,
        spot_checks_failed: t.spot_failed,
        freivalds_checks_passed: t.checks_passed,
        freivalds_checks_failed: t.checks_failed,
        shards_unchecked: t.unchecked,
        freivalds_check_share: if t.shard_micros == 0 {
            0.0
        } else {
            t.check_micros as f64 / t.shard_micros as f64
        },
        quarantined: t.quarantined.iter().map(ToString::to_string).collect(),
        shard_round_trip_p50_seconds: p50,
        shard_round_trip_p99_seconds: p99,
        devices,
        shard_round_trips: round_trips,
    }
}

#[cfg(test)]
mod tests;
