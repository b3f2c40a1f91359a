//! The job driver: runs one challenge over the farm's devices until every row of every iteration has a
//! verified leaf. It plans shards with `scheduler::split_rows`, dispatches each on its own QUIC stream with a
//! fresh Freivalds check seed (the device checks its product before hashing), spot checks every answer, and
//! keeps going through trouble: the rows of a lost, failed or timed-out shard go back in the queue for any
//! device, a device whose product fails its Freivalds check is quarantined and that shard recomputed
//! elsewhere, a device caught by a spot check is quarantined and everything it produced in this job is
//! recomputed elsewhere, and once nothing is left to hand out, slow shards are re-issued to idle devices and
//! the first verified answer wins.
//!
//! A failed Freivalds check taints only its own shard: every other shard the device answered passed its own
//! check (with probability ≥ 1 − 2⁻³² each against any wrong product, see `docs/VERIFICATION.md`). A failed
//! spot check is a lie about leaves, which no check on the device covers, so it taints everything.

use super::{
    DeviceId, DeviceReport, FarmConfig, JobError, JobReport,
    aggregator::{Aggregator, CloseJob, OpenJob, PlaceLeaves},
    metrics::FarmMetrics,
    registry::{DeviceView, Quarantine, Registry, Snapshot},
    scheduler::{DeviceCapacity, shard_ops, split_rows},
    spot_check::{ShardUnderCheck, SpotCheckConfig, Verdict, check_shard},
};
use actix::Addr;
use cpc_common::{
    codec::FrameDecoder,
    hashing::Digest32,
    quic::{FrameIoError, read_frame, write_frame},
    synthetic::Challenge,
    wire::{CheckTiming, Request, Response, RunShard},
};
use rand::RngCore as _;
use std::{
    collections::{BTreeMap, HashMap, HashSet, VecDeque},
    fmt,
    ops::Range,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};
use tokio::sync::mpsc;

/// How often the driver looks at the registry when nothing happens.
const TICK: Duration = Duration::from_millis(20);
/// Device errors (not transport) after which a device gets nothing more in this job.
const MAX_DEVICE_ERRORS: u32 = 3;

/// What every job needs (clones share).
#[derive(Clone)]
pub(crate) struct JobCtx {
    pub(crate) config: Arc<FarmConfig>,
    pub(crate) registry: Addr<Registry>,
    pub(crate) aggregator: Addr<Aggregator>,
    pub(crate) metrics: FarmMetrics,
    pub(crate) next_shard: Arc<AtomicU64>,
}

impl fmt::Debug for JobCtx {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("JobCtx").field("next_shard", &self.next_shard).finish_non_exhaustive()
    }
}

#[derive(Debug)]
struct Unit {
    iteration: u32,
    rows: Range<u32>,
    preferred: Option<DeviceId>,
    done: bool,
    accepted_from: Option<DeviceId>,
}

#[derive(Debug)]
struct Flight {
    unit: usize,
    device: DeviceId,
    started: Instant,
    expected: Duration,
    task: tokio::task::JoinHandle<()>,
}

#[derive(Debug)]
enum Outcome {
    Verified { leaves: Vec<Digest32>, checked: u32, check: Option<CheckTiming> },
    Wrong { passed: u32, reason: String },
    CheckFailed { reason: String },
    Failed { reason: String, transport: bool },
}

#[derive(Debug)]
struct Event {
    shard_id: u64,
    outcome: Outcome,
}

#[derive(Debug, Default)]
struct DevStat {
    agent: String,
    name: String,
    rows: u64,
    shards: u64,
    busy: Duration,
}

/// Runs one job to its result.
pub(crate) async fn drive(
    ctx: JobCtx,
    job_id: u64,
    challenge: Challenge,
) -> Result<JobReport, JobError> {
    let started = Instant::now();
    let result = Job::new(ctx.clone(), job_id, challenge).run().await;
    if result.is_err() {
        let _ = ctx.aggregator.send(CloseJob { job: job_id }).await;
    }
    ctx.metrics.job_done(started.elapsed(), result.is_ok());
    result
}

/// The Freivalds checks of one job's answered shards.
#[derive(Debug, Default)]
struct CheckTally {
    passed: u64,
    failed: u64,
    unchecked: u64,
    check_micros: u64,
    shard_micros: u64,
}

impl CheckTally {
    fn share(&self) -> f64 {
        if self.shard_micros == 0 {
            return 0.0;
        }
        self.check_micros as f64 / self.shard_micros as f64
    }
}

struct Job {
    ctx: JobCtx,
    job_id: u64,
    challenge: Challenge,
    units: Vec<Unit>,
    pending: VecDeque<usize>,
    flights: HashMap<u64, Flight>,
    busy: HashSet<DeviceId>,
    excluded: HashSet<DeviceId>,
    device_errors: HashMap<DeviceId, u32>,
    stats: BTreeMap<DeviceId, DevStat>,
    round_trips: Vec<Duration>,
    done: usize,
    dispatched: u64,
    reassigned: u64,
    failed: u64,
    spot_passed: u64,
    spot_failed: u64,
    checks: CheckTally,
    quarantined: Vec<DeviceId>,
    tx: mpsc::UnboundedSender<Event>,
    rx: mpsc::UnboundedReceiver<Event>,
}

impl Job {
    fn new(ctx: JobCtx, job_id: u64, challenge: Challenge) -> Self {
        let (tx, rx) = mpsc::unbounded_channel();
        Self {
            ctx,
            job_id,
            challenge,
            units: Vec::new(),
            pending: VecDeque::new(),
            flights: HashMap::new(),
            busy: HashSet::new(),
            excluded: HashSet::new(),
            device_errors: HashMap::new(),
            stats: BTreeMap::new(),
            round_trips: Vec::new(),
            done: 0,
            dispatched: 0,
            reassigned: 0,
            failed: 0,
            spot_passed: 0,
            spot_failed: 0,
            checks: CheckTally::default(),
            quarantined: Vec::new(),
            tx,
            rx,
        }
    }

    fn n(&self) -> u32 {
        self.challenge.matrix_size
    }

    async fn snapshot(&self) -> Result<Vec<DeviceView>, JobError> {
        let all = self.ctx.registry.send(Snapshot).await.map_err(|_| JobError::Shutdown)?;
        Ok(all.into_iter().filter(|d| !self.excluded.contains(&d.id)).collect())
    }

    async fn run(mut self) -> Result<JobReport, JobError> {
        let started = Instant::now();
        let c = &self.challenge;
        Challenge::new(c.seed.clone(), c.matrix_size, c.iterations)
            .map_err(|e| JobError::InvalidChallenge(e.to_string()))?;
        self.ctx
            .aggregator
            .send(OpenJob { job: self.job_id, challenge: self.challenge.clone() })
            .await
            .map_err(|_| JobError::Shutdown)?;
        let wait = self.ctx.config.no_device_wait;
        let deadline = Instant::now() + wait;
        let devices = loop {
            let devices = self.snapshot().await?;
            if !devices.is_empty() {
                break devices;
            }
            if Instant::now() >= deadline {
                return Err(JobError::NoDevices(wait));
            }
            tokio::time::sleep(TICK).await;
        };
        self.plan(&devices)?;
        tracing::info!(
            job = self.job_id,
            n = self.n(),
            shards = self.units.len(),
            devices = devices.len(),
            "job planned"
        );

        let mut stalled_since: Option<Instant> = None;
        let mut tick = tokio::time::interval(TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        while self.done < self.units.len() {
            let devices = self.snapshot().await?;
            self.dispatch_pending(&devices);
            if self.pending.is_empty() {
                self.reissue_stragglers(&devices);
            }
            if self.flights.is_empty() && !self.pending.is_empty() {
                let since = *stalled_since.get_or_insert_with(Instant::now);
                if since.elapsed() >= wait {
                    self.abort_all();
                    return Err(JobError::NoDevices(wait));
                }
            } else {
                stalled_since = None;
            }
            tokio::select! {
                ev = self.rx.recv() => {
                    if let Some(ev) = ev {
                        self.handle(ev).await?;
                    }
                    while let Ok(ev) = self.rx.try_recv() {
                        self.handle(ev).await?;
                    }
                }
                _ = tick.tick() => {}
            }
        }
        self.abort_all();
        let root = self
            .ctx
            .aggregator
            .send(CloseJob { job: self.job_id })
            .await
            .map_err(|_| JobError::Shutdown)?
            .map_err(|e| JobError::Internal(e.to_string()))?;
        Ok(self.report(hex::encode(root), started.elapsed()))
    }

    fn plan(&mut self, devices: &[DeviceView]) -> Result<(), JobError> {
        let n = self.n();
        let caps: Vec<DeviceCapacity> = devices
            .iter()
            .map(|d| DeviceCapacity {
                id: d.id,
                ops_per_sec: d.advert.measured_ops_per_sec,
                max_rows: d.advert.max_rows_at(n),
            })
            .collect();
        for iteration in 0..self.challenge.iterations {
            let plan = split_rows(n, &caps, &self.ctx.config.split).map_err(|e| {
                JobError::InvalidChallenge(format!("{e}: no connected device has the memory"))
            })?;
            for a in plan {
                self.units.push(Unit {
                    iteration,
                    rows: a.rows,
                    preferred: Some(a.device),
                    done: false,
                    accepted_from: None,
                });
            }
        }
        self.pending = (0..self.units.len()).collect();
        Ok(())
    }

    fn dispatch_pending(&mut self, devices: &[DeviceView]) {
        if self.pending.is_empty() {
            return;
        }
        let present: HashSet<DeviceId> = devices.iter().map(|d| d.id).collect();
        for d in devices {
            if self.pending.is_empty() {
                break;
            }
            if self.busy.contains(&d.id) {
                continue;
            }
            let max_rows = d.advert.max_rows_at(self.n());
            if max_rows == 0 {
                continue;
            }
            let own = self.pending.iter().position(|&u| self.units[u].preferred == Some(d.id));
            let orphan = || {
                self.pending.iter().position(|&u| match self.units[u].preferred {
                    None => true,
                    Some(p) => !present.contains(&p),
                })
            };
            let Some(pos) = own.or_else(orphan) else { continue };
            let Some(u) = self.pending.remove(pos) else { continue };
            if self.units[u].rows.len() as u64 > u64::from(max_rows) {
                // Too big for this device's memory: keep the rest for another shard.
                let split = self.units[u].rows.start + max_rows;
                let rest = Unit {
                    iteration: self.units[u].iteration,
                    rows: split..self.units[u].rows.end,
                    preferred: None,
                    done: false,
                    accepted_from: None,
                };
                self.units[u].rows.end = split;
                self.units.push(rest);
                self.pending.push_front(self.units.len() - 1);
            }
            self.dispatch(u, d);
        }
    }

    fn reissue_stragglers(&mut self, devices: &[DeviceView]) {
        let now = Instant::now();
        let policy = self.ctx.config.straggler.clone();
        for d in devices {
            if self.busy.contains(&d.id) {
                continue;
            }
            let max_rows = u64::from(d.advert.max_rows_at(self.n()));
            let mut per_unit: HashMap<usize, usize> = HashMap::new();
            for f in self.flights.values() {
                *per_unit.entry(f.unit).or_default() += 1;
            }
            let candidate = self
                .flights
                .values()
                .filter(|f| {
                    let late = f.expected.mul_f64(policy.factor) + policy.grace;
                    per_unit.get(&f.unit) == Some(&1)
                        && !self.units[f.unit].done
                        && f.device != d.id
                        && now.duration_since(f.started) > late
                        && self.units[f.unit].rows.len() as u64 <= max_rows
                })
                .max_by_key(|f| now.duration_since(f.started))
                .map(|f| (f.unit, f.device));
            if let Some((unit, slow)) = candidate {
                tracing::info!(job = self.job_id, %slow, to = %d.id, "re-issuing a straggling shard");
                self.reassigned += 1;
                self.ctx.metrics.reassigned();
                self.dispatch(unit, d);
            }
        }
    }

    fn dispatch(&mut self, u: usize, d: &DeviceView) {
        let shard_id = self.ctx.next_shard.fetch_add(1, Ordering::Relaxed);
        let unit = &self.units[u];
        let req = RunShard {
            shard_id,
            seed: self.challenge.seed.clone(),
            matrix_size: self.challenge.matrix_size,
            iterations: self.challenge.iterations,
            iteration: unit.iteration,
            rows: (unit.rows.start, unit.rows.end),
            device: d.id.index,
            check_seed: rand::rngs::OsRng.next_u64(),
        };
        let ops = d.advert.measured_ops_per_sec;
        let expected = if ops.is_finite() && ops > 0.0 {
            Duration::try_from_secs_f64(shard_ops(self.n(), unit.rows.len() as u32) / ops)
                .unwrap_or(Duration::MAX / 4)
        } else {
            Duration::ZERO
        };
        let cfg = &self.ctx.config;
        let task = actix_rt::spawn(shard_task(
            d.conn.clone(),
            req,
            self.challenge.clone(),
            cfg.shard_timeout,
            cfg.spot_check.clone(),
            self.tx.clone(),
        ));
        self.flights.insert(
            shard_id,
            Flight { unit: u, device: d.id, started: Instant::now(), expected, task },
        );
        self.busy.insert(d.id);
        let stat = self.stats.entry(d.id).or_default();
        if stat.name.is_empty() {
            stat.agent.clone_from(&d.agent_name);
            stat.name.clone_from(&d.advert.name);
        }
        self.dispatched += 1;
        self.ctx.metrics.dispatched();
    }

    fn requeue(&mut self, u: usize) {
        if !self.units[u].done && !self.flights.values().any(|f| f.unit == u) {
            self.units[u].preferred = None;
            self.pending.push_front(u);
            self.reassigned += 1;
            self.ctx.metrics.reassigned();
        }
    }

    async fn handle(&mut self, ev: Event) -> Result<(), JobError> {
        let Some(f) = self.flights.remove(&ev.shard_id) else { return Ok(()) };
        self.busy.remove(&f.device);
        let round_trip = f.started.elapsed();
        match ev.outcome {
            Outcome::Verified { leaves, checked, check } => {
                self.spot_passed += u64::from(checked);
                self.ctx.metrics.spot_checks(checked, false);
                match check {
                    Some(t) => {
                        self.checks.passed += 1;
                        self.checks.check_micros += t.check_micros;
                        self.checks.shard_micros += t.shard_micros;
                    }
                    None => self.checks.unchecked += 1,
                }
                self.ctx.metrics.freivalds_check(check.as_ref(), true);
                if self.units[f.unit].done {
                    return Ok(());
                }
                let unit = &self.units[f.unit];
                let place = PlaceLeaves {
                    job: self.job_id,
                    iteration: unit.iteration,
                    first: unit.rows.start,
                    leaves,
                };
                self.ctx
                    .aggregator
                    .send(place)
                    .await
                    .map_err(|_| JobError::Shutdown)?
                    .map_err(|e| JobError::Internal(e.to_string()))?;
                let rows = unit.rows.len() as u32;
                let unit = &mut self.units[f.unit];
                unit.done = true;
                unit.accepted_from = Some(f.device);
                self.done += 1;
                let stat = self.stats.entry(f.device).or_default();
                stat.rows += u64::from(rows);
                stat.shards += 1;
                stat.busy += round_trip;
                self.round_trips.push(round_trip);
                self.ctx.metrics.completed(round_trip);
                let twins: Vec<u64> = self
                    .flights
                    .iter()
                    .filter(|(_, g)| g.unit == f.unit)
                    .map(|(&id, _)| id)
                    .collect();
                for id in twins {
                    if let Some(g) = self.flights.remove(&id) {
                        g.task.abort();
                        self.busy.remove(&g.device);
                    }
                }
            }
            Outcome::Wrong { passed, reason } => {
                self.spot_passed += u64::from(passed);
                self.spot_failed += 1;
                self.ctx.metrics.spot_checks(passed, true);
                tracing::error!(job = self.job_id, device = %f.device, %reason, "spot check failed");
                self.ctx.registry.do_send(Quarantine { device: f.device, reason });
                self.excluded.insert(f.device);
                self.quarantined.push(f.device);
                self.requeue(f.unit);
                let tainted: Vec<usize> = (0..self.units.len())
                    .filter(|&u| self.units[u].accepted_from == Some(f.device))
                    .collect();
                for u in tainted {
                    let unit = &mut self.units[u];
                    unit.done = false;
                    unit.accepted_from = None;
                    self.done -= 1;
                    self.requeue(u);
                }
                if let Some(stat) = self.stats.get_mut(&f.device) {
                    stat.rows = 0;
                    stat.shards = 0;
                }
            }
            Outcome::CheckFailed { reason } => {
                self.failed += 1;
                self.checks.failed += 1;
                self.ctx.metrics.failed();
                self.ctx.metrics.freivalds_check(None, false);
                tracing::error!(job = self.job_id, device = %f.device, %reason, "Freivalds check failed: device quarantined, shard recomputed elsewhere");
                self.ctx.registry.do_send(Quarantine { device: f.device, reason });
                self.excluded.insert(f.device);
                self.quarantined.push(f.device);
                self.requeue(f.unit);
            }
            Outcome::Failed { reason, transport } => {
                self.failed += 1;
                self.ctx.metrics.failed();
                tracing::warn!(job = self.job_id, device = %f.device, %reason, "shard failed: its rows go back in the queue");
                if !transport {
                    let errors = self.device_errors.entry(f.device).or_default();
                    *errors += 1;
                    if *errors >= MAX_DEVICE_ERRORS {
                        self.excluded.insert(f.device);
                    }
                }
                self.requeue(f.unit);
            }
        }
        Ok(())
    }

    fn abort_all(&mut self) {
        for (_, f) in self.flights.drain() {
            f.task.abort();
        }
        self.busy.clear();
    }

    fn report(&self, result_hash: String, makespan: Duration) -> JobReport {
        let n = self.challenge.matrix_size;
        let mut sorted = self.round_trips.clone();
        sorted.sort();
        let pct = |p: usize| -> f64 {
            if sorted.is_empty() {
                return 0.0;
            }
            let rank = (sorted.len() * p).div_ceil(100).clamp(1, sorted.len());
            sorted[rank - 1].as_secs_f64()
        };
        let devices = self
            .stats
            .iter()
            .map(|(id, s)| {
                let busy = s.busy.as_secs_f64();
                let ops = 2.0 * s.rows as f64 * f64::from(n) * f64::from(n);
                DeviceReport {
                    device: id.to_string(),
                    agent: s.agent.clone(),
                    name: s.name.clone(),
                    rows: s.rows,
                    shards: s.shards,
                    busy_seconds: busy,
                    achieved_ops_per_sec: if busy > 0.0 { ops / busy } else { 0.0 },
                }
            })
            .collect();
        let secs = makespan.as_secs_f64();
        let total_ops = shard_ops(n, n) * f64::from(self.challenge.iterations);
        JobReport {
            job_id: self.job_id,
            seed: self.challenge.seed.clone(),
            matrix_size: n,
            iterations: self.challenge.iterations,
            result_hash,
            makespan_seconds: secs,
            achieved_ops_per_sec: if secs > 0.0 { total_ops / secs } else { 0.0 },
            shards_dispatched: self.dispatched,
            shards_reassigned: self.reassigned,
            shards_failed: self.failed,
            spot_checks_passed: self.spot_passed,
            spot_checks_failed: self.spot_failed,
            freivalds_checks_passed: self.checks.passed,
            freivalds_checks_failed: self.checks.failed,
            shards_unchecked: self.checks.unchecked,
            freivalds_check_share: self.checks.share(),
            quarantined: self.quarantined.iter().map(ToString::to_string).collect(),
            shard_round_trip_p50_seconds: pct(50),
            shard_round_trip_p99_seconds: pct(99),
            devices,
            shard_round_trips: self.round_trips.clone(),
        }
    }
}

enum ShardError {
    Transport(String),
    Device(String),
    CheckFailed(String),
    Wrong(String),
}

async fn request_shard(
    conn: &quinn::Connection,
    req: &RunShard,
) -> Result<(Vec<Digest32>, Option<CheckTiming>), ShardError> {
    let t = |e: &dyn fmt::Display| ShardError::Transport(e.to_string());
    let (mut send, mut recv) = conn.open_bi().await.map_err(|e| t(&e))?;
    write_frame(&mut send, &Request::RunShard(req.clone())).await.map_err(|e| t(&e))?;
    send.finish().map_err(|e| t(&e))?;
    let mut dec = FrameDecoder::new();
    match read_frame::<Response>(&mut recv, &mut dec).await {
        Ok(Some(Response::ShardDone { shard_id, leaves, check })) if shard_id == req.shard_id => {
            Ok((leaves, check))
        }
        Ok(Some(Response::CheckFailed { shard_id, reason })) if shard_id == req.shard_id => {
            Err(ShardError::CheckFailed(reason))
        }
        Ok(Some(Response::ShardFailed { reason, .. } | Response::Error { reason })) => {
            Err(ShardError::Device(reason))
        }
        Ok(Some(_)) => {
            Err(ShardError::Wrong("answered something other than its shard's leaves".into()))
        }
        Ok(None) => Err(ShardError::Transport("stream closed without an answer".into())),
        Err(FrameIoError::Codec(e)) => Err(ShardError::Wrong(format!("undecodable answer: {e}"))),
        Err(e) => Err(t(&e)),
    }
}

async fn shard_task(
    conn: quinn::Connection,
    req: RunShard,
    challenge: Challenge,
    timeout: Duration,
    spot: SpotCheckConfig,
    tx: mpsc::UnboundedSender<Event>,
) {
    let rows = (req.rows.1 - req.rows.0) as usize;
    let outcome = match tokio::time::timeout(timeout, request_shard(&conn, &req)).await {
        Err(_) => {
            Outcome::Failed { reason: format!("no answer within {timeout:?}"), transport: false }
        }
        Ok(Err(ShardError::Transport(reason))) => Outcome::Failed { reason, transport: true },
        Ok(Err(ShardError::Device(reason))) => Outcome::Failed { reason, transport: false },
        Ok(Err(ShardError::CheckFailed(reason))) => Outcome::CheckFailed { reason },
        Ok(Err(ShardError::Wrong(reason))) => Outcome::Wrong { passed: 0, reason },
        Ok(Ok((leaves, _))) if leaves.len() != rows => {
            Outcome::Wrong { passed: 0, reason: format!("{} leaves for {rows} rows", leaves.len()) }
        }
        Ok(Ok((leaves, check))) => {
            let shard = ShardUnderCheck {
                shard_id: req.shard_id,
                challenge: &challenge,
                iteration: req.iteration,
                first_row: req.rows.0,
                leaves: &leaves,
            };
            match check_shard(&conn, shard, &spot).await {
                Verdict::Passed { rows } => Outcome::Verified { leaves, checked: rows, check },
                Verdict::Failed { passed, reason } => Outcome::Wrong { passed, reason },
                Verdict::Inconclusive(reason) => Outcome::Failed { reason, transport: true },
            }
        }
    };
    let _ = tx.send(Event { shard_id: req.shard_id, outcome });
}
