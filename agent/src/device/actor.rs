//! The device actor: runs shards on its device's worker under the watchdog ([`Compute`]), recomputes rows for
//! spot checks ([`RecomputeRow`]), quarantines the device on a fatal error, and drops or stops shards the
//! coordinator cancels ([`ShardCancel`]).

use super::{
    health::Health,
    row_cache::{RowCache, ShardKey},
    worker::{CallError, Worker, watchdog_deadline},
};
use crate::metrics as m;
use actix::{Actor, Context, Handler, Message, Response, ResponseFuture};
use cpc_common::merkle::MerkleTree;
use cpc_common::wire::{CheckTiming, RowAnswer, RunShard, ShardAnswer};
use cpc_kernels::{
    Backend, BackendError, CancelToken, CheckCost, CheckSeed, Shard, ShardOutput,
    gpu::{GpuStatus, ShardStats},
};
use std::{
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};
use tokio::sync::{Notify, Semaphore};

/// What the actors of one device share with their futures.
#[derive(Debug)]
pub(super) struct DeviceState {
    pub(super) index: u32,
    pub(super) name: String,
    pub(super) worker: Worker,
    pub(super) health: Health,
    pub(super) watchdog: Duration,
    /// Restarts of the worker after a watchdog firing before the device is given up (quarantined).
    pub(super) max_restarts: u32,
    /// The device's series: its labels, and the series every shard updates.
    pub(super) meters: m::ShardMeters,
    pub(super) cache: Arc<Mutex<RowCache>>,
    /// Calls running on the device at once ([`Backend::concurrent_shards`]); shared, so that a shard
    /// held after an at-once call keeps its slot in a future of its own.
    pub(super) in_flight: Arc<Semaphore>,
    /// [`Backend::keeps_rows_cheaply`]: keep each shard's rows, or recompute the rows asked for.
    pub(super) keeps_rows: bool,
}

impl DeviceState {
    /// Reacts to a backend error: quarantines the device when the error leaves it unusable, and says and
    /// counts it when only a process restart brings it back.
    pub(super) fn backend_failed(&self, error: &BackendError, reason: &str) {
        if error.needs_restart() {
            m::device_restart_needed(self.meters.labels());
            tracing::error!(
                device = self.index,
                name = %self.name,
                %reason,
                "the device's CUDA context is lost: it needs a process restart; its worker stops and the \
                 agent keeps serving with its other devices until its supervisor restarts it"
            );
        }
        if error.quarantines_device() {
            self.quarantine(reason);
        }
    }

    /// Quarantines the device: recorded in [`Health`], worker given up on, metrics and log.
    pub(super) fn quarantine(&self, reason: &str) {
        self.worker.abandon();
        m::device_healthy(self.meters.labels(), false);
        if self.health.quarantine(self.index, reason) {
            tracing::error!(
                device = self.index,
                name = %self.name,
                %reason,
                "device quarantined: it takes no more shards; the agent keeps serving with its other devices"
            );
        }
    }

    /// Runs a call under the watchdog. When the watchdog fires, the device's worker is restarted (new
    /// threads, the stuck one abandoned) up to `max_restarts` times; past that, or on a lost worker, the
    /// device is given up: quarantined until the agent restarts. `what` names the call in messages; it is
    /// formatted only when one is needed.
    pub(super) async fn call<T: Send + 'static>(
        &self,
        what: impl Fn() -> String,
        f: impl FnOnce(&dyn Backend) -> T + Send + 'static,
    ) -> Result<T, String> {
        match self.worker.call(watchdog_deadline(self.watchdog), f).await {
            Ok(v) => Ok(v),
            Err(error) => Err(self.call_failed(&what(), error)),
        }
    }

    /// Runs a call the backend answers at once ([`Backend::answers_at_once`]) on this thread: a hand-off to
    /// the worker would cost more than the call, and nothing in it can hang for a watchdog to catch.
    pub(super) fn call_here<T>(
        &self,
        what: impl Fn() -> String,
        f: impl FnOnce(&dyn Backend) -> T,
    ) -> Result<T, String> {
        self.worker.run_here(f).map_err(|error| self.call_failed(&what(), error))
    }

    /// The reason a call on the device failed, and what the failure does to the device: a watchdog firing
    /// restarts its worker or quarantines it, and a lost worker quarantines it.
    fn call_failed(&self, what: &str, error: CallError) -> String {
        match error {
            CallError::Panicked(why) => format!("{what} panicked on the device: {why}"),
            CallError::Timeout(waited) => {
                self.health.watchdog_fired(self.index);
                m::watchdog_fired(self.meters.labels());
                if let Some(reason) = self.restart_after_watchdog(what, waited) {
                    return reason;
                }
                let reason = format!(
                    "{}: {what} did not finish within {:.1} s (watchdog --watchdog-secs {:.1} plus grace): \
                     the device is quarantined and its worker thread abandoned; check the device (for a GPU, \
                     `nvidia-smi` and the kernel log for Xid errors) and restart the agent{}",
                    self.name,
                    waited.as_secs_f64(),
                    self.watchdog.as_secs_f64(),
                    if self.max_restarts > 0 {
                        format!(
                            " (given up after {} worker restarts, --max-device-restarts)",
                            self.max_restarts
                        )
                    } else {
                        String::new()
                    }
                );
                self.quarantine(&reason);
                reason
            }
            CallError::Gone => {
                let reason = self.health.reason(self.index).unwrap_or_else(|| {
                    format!("{}: the device's worker thread is gone", self.name)
                });
                self.quarantine(&reason);
                reason
            }
        }
    }
}

impl DeviceState {
    /// After a watchdog firing: restarts the worker while restarts are left, answering the shard's failure
    /// reason (the device keeps serving); none when the device is to be given up.
    fn restart_after_watchdog(&self, what: &str, waited: Duration) -> Option<String> {
        if self.health.restarts(self.index) >= u64::from(self.max_restarts) {
            return None;
        }
        if let Err(e) = self.worker.restart() {
            tracing::error!(device = self.index, name = %self.name, "cannot restart the device's worker: {e}");
            return None;
        }
        let restarts = self.health.restarted(self.index);
        m::device_restarted(self.meters.labels());
        let reason = format!(
            "{}: {what} did not finish within {:.1} s (watchdog): the device's worker was restarted \
             (restart {restarts} of {}, --max-device-restarts); the device keeps serving",
            self.name,
            waited.as_secs_f64(),
            self.max_restarts
        );
        tracing::warn!(device = self.index, name = %self.name, restarts, "{reason}");
        Some(reason)
    }
}

/// The actor driving one device.
#[derive(Debug)]
pub struct DeviceActor {
    pub(super) state: Arc<DeviceState>,
}

impl Actor for DeviceActor {
    type Context = Context<Self>;
}

/// Runs a shard that came on connection `session` and answers [`ShardAnswer::Done`] (or
/// [`ShardAnswer::Root`], as `answer` asks), [`ShardAnswer::Failed`] or [`ShardAnswer::CheckFailed`]
/// (`Failed` too once `cancel` is set: an answer nobody sends).
#[derive(Debug, Message)]
#[rtype(result = "ShardAnswer")]
pub struct Compute {
    /// The connection the request came on ([`ShardKey::session`]).
    pub session: u64,
    /// The request.
    pub request: RunShard,
    /// What the answer carries.
    pub answer: AnswerWith,
    /// Set when the coordinator no longer wants the shard.
    pub cancel: ShardCancel,
}

/// What a shard's answer carries: what the coordinator asked for (`RunShard` or `RunShardRoot`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AnswerWith {
    /// Every leaf ([`ShardAnswer::Done`]).
    Leaves,
    /// The Merkle root of the leaves ([`ShardAnswer::Root`]), built on the device's worker thread; the tree
    /// is kept for the spot checks' row proofs.
    Root,
}

/// A shard's cancellation, shared by the session that watches the shard's request stream and the device
/// that runs it. Once set, a shard still waiting for its device is dropped without running, a device that
/// can stop early stops ([`Backend::run_shard_cancellable`]), and a product that finishes anyway is neither
/// kept for spot checks nor answered. Clones share it.
#[derive(Debug, Clone, Default)]
pub struct ShardCancel {
    /// What the device's worker thread checks, and the flag itself.
    token: CancelToken,
    /// What the actor's futures wait on (one small allocation per shard: a shard pipe makes thousands a
    /// second).
    woken: Arc<Notify>,
}

impl ShardCancel {
    /// Cancels the shard.
    pub fn cancel(&self) {
        self.token.cancel();
        self.woken.notify_waiters();
    }

    /// Whether the shard was cancelled.
    pub fn is_cancelled(&self) -> bool {
        self.token.is_cancelled()
    }

    /// Completes once the shard is cancelled.
    pub async fn cancelled(&self) {
        let woken = self.woken.notified();
        tokio::pin!(woken);
        // Registered before the flag is read, so a cancel in between still wakes it.
        woken.as_mut().enable();
        if !self.is_cancelled() {
            woken.await;
        }
    }
}

/// Where a cancelled shard was when its cancellation came.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CancelledAt {
    /// Waiting for a slot on its device: it never ran.
    Queued,
    /// Running on its device (a simulated device stopped; a product finished and was dropped).
    Running,
}

impl CancelledAt {
    /// The label value of `cpcfarm_agent_shards_cancelled_total`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Queued => "queued",
            Self::Running => "running",
        }
    }
}

impl Handler<Compute> for DeviceActor {
    type Result = Response<ShardAnswer>;

    fn handle(&mut self, msg: Compute, _: &mut Self::Context) -> Self::Result {
        let state = &self.state;
        let run = match ShardRun::new(state, msg) {
            Ok(run) => run,
            Err(answer) => return Response::reply(answer),
        };
        // A shard its device answers at once (`Backend::answers_at_once`), with a slot free, runs here and,
        // once its hold is over, is answered without a task of its own: a stand-in device answers thousands
        // of shards a second, and a task and a boxed future each cost about as much as the call itself.
        let at_once = state.worker.answers_at_once(&run.shard);
        if let Some(hold) = at_once
            && !run.cancel.is_cancelled()
            && let Ok(slot) = Arc::clone(&state.in_flight).try_acquire_owned()
        {
            let (out, ran) = match run.call_here(state) {
                Ok(called) => called,
                Err(answer) => return Response::reply(answer),
            };
            if ran.started.elapsed() >= hold {
                return Response::reply(ran.conclude(state, out));
            }
            let state = state.clone();
            return Response::fut(async move {
                hold_for(ran.started, hold, &ran.cancel).await;
                let answer = ran.conclude(&state, out);
                drop(slot);
                answer
            });
        }
        Response::fut(run.run(state.clone(), at_once))
    }
}

/// What a device call of a shard gives back, or why the call failed (the watchdog fired, it panicked, the
/// worker is gone).
type CallOutcome = Result<CallOutput, String>;

/// What a device call of a shard returns: the output (with the tree of an answer by root), the backend's
/// stats and GPU status.
type CallOutput = (
    Result<(ShardOutput, Option<MerkleTree>), BackendError>,
    Option<ShardStats>,
    Option<GpuStatus>,
);

/// A [`Compute`] on its way to its device, its shard checked.
struct ShardRun {
    key: ShardKey,
    shard: Shard,
    answer_with: AnswerWith,
    cancel: ShardCancel,
}

/// A shard that ran (or whose call failed): what its answer is made of.
struct Ran {
    key: ShardKey,
    answer_with: AnswerWith,
    cancel: ShardCancel,
    started: Instant,
    /// Counted in `cpcfarm_agent_shards_running` until the answer is made.
    running: m::RunningShard,
    rows: u32,
    n: u32,
    first: u32,
    /// The shard, kept for recomputing its rows when the device does not keep them.
    recomputable: Option<Shard>,
}

impl ShardRun {
    /// Checks the shard a [`Compute`] asks for; answers `Failed` for one that is not a valid shard.
    fn new(state: &DeviceState, msg: Compute) -> Result<Self, ShardAnswer> {
        let Compute { session, request: req, answer: answer_with, cancel } = msg;
        let shard_id = req.shard_id;
        let shard = Shard::new(req.challenge, req.iteration, req.rows.0..req.rows.1)
            .map(|s| s.with_check(CheckSeed(req.check_seed)))
            .map_err(|e| failed(state, shard_id, e.to_string()))?;
        Ok(Self { key: ShardKey { session, shard_id }, shard, answer_with, cancel })
    }

    /// Waits for a slot on the device (a shard cancelled meanwhile is dropped unrun), runs the shard and
    /// answers it; `at_once` is what the backend's [`Backend::answers_at_once`] said of it.
    async fn run(self, state: Arc<DeviceState>, at_once: Option<Duration>) -> ShardAnswer {
        let permit = tokio::select! {
            biased;
            () = self.cancel.cancelled() => {
                return cancelled(&state, self.key.shard_id, CancelledAt::Queued);
            }
            permit = state.in_flight.acquire() => permit,
        };
        let Ok(_slot) = permit else {
            return failed(&state, self.key.shard_id, "device is shutting down".into());
        };
        match at_once {
            Some(hold) => {
                let (out, ran) = match self.call_here(&state) {
                    Ok(called) => called,
                    Err(answer) => return answer,
                };
                hold_for(ran.started, hold, &ran.cancel).await;
                ran.conclude(&state, out)
            }
            None => {
                let (ran, shard) = match self.begin(&state, !state.keeps_rows) {
                    Ok(begun) => begun,
                    Err(answer) => return answer,
                };
                let what = ran.what();
                let (answer_with, keep_rows, token) =
                    (ran.answer_with, state.keeps_rows, ran.cancel.token.clone());
                let out = state
                    .call(what, move |backend| {
                        call(backend, &shard, answer_with, keep_rows, &token)
                    })
                    .await;
                ran.conclude(&state, out)
            }
        }
    }

    /// Runs the shard on this thread ([`Backend::answers_at_once`]); its slot is taken.
    fn call_here(self, state: &DeviceState) -> Result<(CallOutcome, Ran), ShardAnswer> {
        let (mut ran, shard) = self.begin(state, false)?;
        let what = ran.what();
        let token = &ran.cancel.token;
        let out = state.call_here(what, |backend| {
            call(backend, &shard, ran.answer_with, state.keeps_rows, token)
        });
        if !state.keeps_rows {
            // Kept as it is rather than cloned: the call borrowed it.
            ran.recomputable = Some(shard);
        }
        Ok((out, ran))
    }

    /// Starts the shard on the device, whose slot it holds: refused (`Failed`) on a quarantined device.
    /// Answers the shard to run; `copy_for_recompute` keeps a copy of it for recomputing rows (for a call
    /// that must own the shard, on the device's worker thread).
    fn begin(
        self,
        state: &DeviceState,
        copy_for_recompute: bool,
    ) -> Result<(Ran, Shard), ShardAnswer> {
        let Self { key, shard, answer_with, cancel } = self;
        if let Some(reason) = state.health.reason(state.index) {
            return Err(failed(
                state,
                key.shard_id,
                format!(
                    "device {} is quarantined ({reason}): the agent's other devices keep serving",
                    state.index
                ),
            ));
        }
        let ran = Ran {
            key,
            answer_with,
            cancel,
            started: Instant::now(),
            running: m::RunningShard::start(),
            rows: shard.row_count(),
            n: shard.challenge.matrix_size(),
            first: shard.rows.start,
            recomputable: copy_for_recompute.then(|| shard.clone()),
        };
        Ok((ran, shard))
    }
}

/// The device call of a shard: an answer by root builds its tree here, one SHA-256 per leaf, on the
/// device's thread and not the agent's I/O thread (a backend that answers at once knows its tree without
/// hashing).
fn call(
    backend: &dyn Backend,
    shard: &Shard,
    answer_with: AnswerWith,
    keep_rows: bool,
    token: &CancelToken,
) -> CallOutput {
    let out = match answer_with {
        AnswerWith::Root => backend
            .run_shard_for_root(shard, keep_rows, token)
            .map(|(output, tree)| (output, Some(tree))),
        AnswerWith::Leaves => {
            backend.run_shard_cancellable(shard, keep_rows, token).map(|output| (output, None))
        }
    };
    let stats = if out.is_ok() { backend.last_stats() } else { None };
    (out, stats, backend.gpu_status())
}

impl Ran {
    /// How a failed call names the shard (the watchdog's and the worker's messages).
    fn what(&self) -> impl Fn() -> String + Send + 'static {
        let (shard_id, rows, n) = (self.key.shard_id, self.rows, self.n);
        move || format!("shard {shard_id} ({rows} rows at n={n})")
    }

    /// The shard's answer from what its call gave: the output kept for spot checks and answered, or the
    /// failure dealt with (a device that failed is quarantined or restarted). A shard cancelled while it
    /// ran is not answered, and what came out of it not kept.
    fn conclude(self, state: &DeviceState, out: CallOutcome) -> ShardAnswer {
        let Self { key, answer_with: _, cancel, started, running, rows, n, first, recomputable } =
            self;
        let shard_id = key.shard_id;
        drop(running);
        let secs = started.elapsed().as_secs_f64();
        if let Ok((_, _, Some(status))) = &out {
            m::gpu_status(state.meters.labels(), status);
        }
        // Cancelled while it ran: whatever came out (a product that finished anyway, or the device's
        // `Cancelled`) is dropped. A device that failed meanwhile is still dealt with below.
        let device_failed = match &out {
            Err(_) => true, // the watchdog fired, the call panicked or the worker is gone
            Ok((Err(e), _, _)) => !matches!(e, BackendError::Cancelled),
            Ok((Ok(_), _, _)) => false,
        };
        if cancel.is_cancelled() && !device_failed {
            return cancelled(state, shard_id, CancelledAt::Running);
        }
        match out {
            Err(reason) => failed(state, shard_id, reason),
            Ok((Err(e), _, _)) => {
                let reason = format!("{}: {e}", state.name);
                state.backend_failed(&e, &reason);
                if e.is_failed_check() {
                    m::freivalds_check(state.meters.labels(), false, None);
                    state.meters.done(false, None);
                    tracing::error!(device = state.index, %reason, "Freivalds check failed");
                    return ShardAnswer::CheckFailed { shard_id, reason };
                }
                failed(state, shard_id, reason)
            }
            Ok((Ok((output, tree)), stats, _)) => {
                let ops = 2.0 * f64::from(rows) * f64::from(n) * f64::from(n);
                state.meters.done(true, Some((secs, ops)));
                record_work(&state.meters, ops, secs, stats.as_ref());
                let ShardOutput { leaves, rows: values, check } = output;
                if let Some(cost) = check {
                    let (c, s) = (cost.check.as_secs_f64(), cost.shard.as_secs_f64());
                    m::freivalds_check(state.meters.labels(), true, Some((c, s)));
                }
                let check = check.map(check_timing);
                // Plain data: a panic elsewhere while it was held leaves nothing half-done in it.
                let mut c = state.cache.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
                match (values, recomputable) {
                    (Some(values), _) => c.insert(key, first, n, values),
                    (None, Some(shard)) => c.insert_recomputable(key, state.index, shard),
                    (None, None) => {}
                }
                match tree {
                    Some(tree) => {
                        let root = tree.root();
                        c.insert_tree(key, first, tree);
                        ShardAnswer::Root { shard_id, root, check }
                    }
                    None => ShardAnswer::Done { shard_id, leaves, check },
                }
            }
        }
    }
}

/// A shard that failed: counted, and answered `Failed`.
fn failed(state: &DeviceState, shard_id: u64, reason: String) -> ShardAnswer {
    state.meters.done(false, None);
    ShardAnswer::Failed { shard_id, reason }
}

/// A shard cancelled by the coordinator: counted and logged; its `Failed` answer is never sent.
fn cancelled(state: &DeviceState, shard_id: u64, at: CancelledAt) -> ShardAnswer {
    m::shard_cancelled(at);
    tracing::debug!(device = state.index, shard_id, at = at.as_str(), "shard cancelled");
    ShardAnswer::Failed { shard_id, reason: "cancelled by the coordinator".into() }
}

/// Lets an at-once answer's device time, `hold` from `started`, pass before it leaves, serving the agent's
/// other tasks, the host's other devices among them, meanwhile; stops early once the shard is cancelled.
/// The device's slot stays taken until then. Such holds are microseconds ([`Backend::answers_at_once`]),
/// far below a timer's resolution: the actor yields until the hold is over. A longer one sleeps.
async fn hold_for(started: Instant, hold: Duration, cancel: &ShardCancel) {
    loop {
        let left = hold.saturating_sub(started.elapsed());
        if left.is_zero() || cancel.is_cancelled() {
            return;
        }
        if left < YIELD_BELOW {
            tokio::task::yield_now().await;
        } else {
            tokio::select! {
                () = tokio::time::sleep(left) => {}
                () = cancel.cancelled() => return,
            }
        }
    }
}

/// Holds shorter than this (what is left of them) pass in yields rather than a timer's sleep.
const YIELD_BELOW: Duration = Duration::from_millis(1);

/// A check's cost as the wire carries it.
fn check_timing(cost: CheckCost) -> CheckTiming {
    let micros = |d: Duration| u64::try_from(d.as_micros()).unwrap_or(u64::MAX);
    CheckTiming { check_micros: micros(cost.check), shard_micros: micros(cost.shard) }
}

/// Achieved ops per second and joules of one shard: the backend's own stats (device time, NVML energy) where
/// it has them, the wall time of the call otherwise.
fn record_work(meters: &m::ShardMeters, ops: f64, wall_secs: f64, stats: Option<&ShardStats>) {
    let wall = if wall_secs > 0.0 { ops / wall_secs } else { 0.0 };
    let (ops_per_second, joules) = match stats {
        Some(s) if s.device_seconds > 0.0 => (s.tera_ops_per_second() * 1e12, s.energy_joules),
        Some(s) => (wall, s.energy_joules),
        None => (wall, None),
    };
    meters.work(ops_per_second, joules);
}

/// Recomputes one row of a shard this device ran without keeping its rows, for a spot check; answers
/// [`RowAnswer::Row`] or [`RowAnswer::Unavailable`]. Runs between shards, under the same watchdog.
#[derive(Debug, Message)]
#[rtype(result = "RowAnswer")]
pub struct RecomputeRow {
    /// The coordinator's id of the shard the row belongs to (for messages).
    pub shard_id: u64,
    /// The row, as a one-row shard ([`RowSource::Recompute`](super::RowSource::Recompute)).
    pub shard: Shard,
}

impl Handler<RecomputeRow> for DeviceActor {
    type Result = ResponseFuture<RowAnswer>;

    fn handle(&mut self, msg: RecomputeRow, _: &mut Self::Context) -> Self::Result {
        let state = self.state.clone();
        Box::pin(async move {
            let RecomputeRow { shard_id, shard } = msg;
            let (row, n) = (shard.rows.start, shard.challenge.matrix_size() as usize);
            let unavailable = |reason: String| RowAnswer::Unavailable { reason };
            let Ok(_permit) = state.in_flight.acquire().await else {
                return unavailable("device is shutting down".into());
            };
            if let Some(reason) = state.health.reason(state.index) {
                return unavailable(format!("device {} is quarantined ({reason})", state.index));
            }
            let what = format!("recomputing row {row} of shard {shard_id}");
            match state.call(|| what.clone(), move |backend| backend.run_shard(&shard, true)).await
            {
                Err(reason) => unavailable(reason),
                Ok(Err(e)) => {
                    let reason = format!("{}: {what}: {e}", state.name);
                    state.backend_failed(&e, &reason);
                    unavailable(reason)
                }
                Ok(Ok(ShardOutput { rows: Some(values), .. })) if values.len() == n => {
                    RowAnswer::Row { values }
                }
                Ok(Ok(_)) => {
                    unavailable(format!("{}: {what}: the backend kept no row", state.name))
                }
            }
        })
    }
}
