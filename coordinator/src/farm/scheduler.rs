//! The scheduler actor: owns the farm's [`Schedule`] (every job and every device) and carries out what it
//! decides.
//!
//! Everything reaches it as a typed message the moment it happens: jobs submitted and cancelled through
//! the [`FarmHandle`](super::FarmHandle), device arrivals, departures, drains and quarantines from the
//! registry, shard outcomes from the I/O tasks it spawned: a shard pipe per agent connection of protocol
//! 7 (`pipe.rs`), a task per shard for older agents (`shard.rs`). It sleeps
//! until the schedule's next timer instead of polling. The only work it does besides bookkeeping is
//! handing shards to I/O tasks; a finished job's Merkle root is built off its thread.

use super::{
    DeviceId, FarmConfig, JobError, JobReport,
    metrics::FarmMetrics,
    pipe::ShardPipe,
    registry::{AgentLink, Quarantine, Registry},
    schedule::{
        Action, DeviceEntry, Dispatch, FinishedJob, JobId, JobSpec, Removal, Schedule,
        SchedulePolicy, ShardId, ShardOutcome,
    },
    shard,
};
use actix::{Actor, ActorContext as _, Addr, AsyncContext, Context, Handler, Message, SpawnHandle};
use rustc_hash::FxHashMap;
use std::{sync::Arc, time::Instant};
use tokio::sync::oneshot;

/// Most leaves of a job whose Merkle root is built on the farm's I/O workers rather than a blocking
/// thread (4096 leaves: about 0.45 ms of hashing).
const INLINE_ROOT_ROWS: u64 = 4096;

/// The same where the I/O runs on the scheduler's own thread (`FarmConfig::io_threads` 0), which the
/// hashing would hold up: 256 leaves, about 30 µs, roughly what handing it to a blocking thread costs.
const INLINE_ROOT_ROWS_ON_SCHEDULER: u64 = 256;

/// What a job's caller is answered.
pub type JobResult = Result<JobReport, JobError>;

/// Runs jobs handed over together (one, or a block's tasks): all are queued and placed before any shard
/// goes out, so each agent gets its share of them in one pipe frame.
#[derive(Debug, Message)]
#[rtype(result = "()")]
pub struct Submit {
    /// The jobs.
    pub jobs: Vec<NewJob>,
}

/// One job of a [`Submit`].
#[derive(Debug)]
pub struct NewJob {
    /// The farm's id of the job (from [`FarmHandle`](super::FarmHandle)).
    pub job: JobId,
    /// The job.
    pub spec: JobSpec,
    /// Where its result goes.
    pub reply: oneshot::Sender<JobResult>,
}

/// The caller of a job went away: it is dropped and its shards aborted.
#[derive(Debug, Message)]
#[rtype(result = "()")]
pub struct Cancel {
    /// The job.
    pub job: JobId,
}

/// A device can take shards (joined, or stopped draining).
#[derive(Debug, Message)]
#[rtype(result = "()")]
pub struct DeviceUp {
    /// The device.
    pub entry: DeviceEntry,
    /// Its agent's connection and protocol version.
    pub link: AgentLink,
}

/// A device stops taking shards.
#[derive(Debug, Message)]
#[rtype(result = "()")]
pub struct DeviceDown {
    /// The device.
    pub device: DeviceId,
    /// Why.
    pub why: Removal,
}

/// An operator lifted a device's quarantine (its self-test passed): its answers count again and it takes
/// shards.
#[derive(Debug, Message)]
#[rtype(result = "()")]
pub struct DeviceReadmitted {
    /// The device.
    pub entry: DeviceEntry,
    /// Its agent's connection and protocol version.
    pub link: AgentLink,
}

/// Shards in flight per device, for `farm status`.
#[derive(Debug, Message)]
#[rtype(result = "std::collections::BTreeMap<DeviceId, u32>")]
pub struct InFlightByDevice;

/// Shards' I/O finished: one shard's task, or a frame of answers on a shard pipe.
#[derive(Debug, Message)]
#[rtype(result = "()")]
pub(crate) struct ShardsAnswered {
    outcomes: Vec<(ShardId, ShardOutcome)>,
}

/// How the scheduler stops a shard in flight.
#[derive(Debug)]
enum Abort {
    /// The shard's own stream task: fire this.
    Stream(oneshot::Sender<()>),
    /// On the shard pipe of this agent connection ([`DeviceId::agent`]).
    Pipe(u64),
}

/// Stops the actor (the farm is shutting down): every waiting job is answered [`JobError::Shutdown`].
#[derive(Debug, Message)]
#[rtype(result = "()")]
pub struct Stop;

/// The scheduler actor.
pub struct Scheduler {
    schedule: Schedule,
    config: Arc<FarmConfig>,
    registry: Addr<Registry>,
    links: FxHashMap<DeviceId, AgentLink>,
    /// The shard pipe of each agent connection that has one, by [`DeviceId::agent`].
    pipes: FxHashMap<u64, ShardPipe>,
    /// Per shard in flight: how to stop it.
    aborts: FxHashMap<ShardId, Abort>,
    waiters: FxHashMap<JobId, oneshot::Sender<JobResult>>,
    wake: Option<(Instant, SpawnHandle)>,
}

impl std::fmt::Debug for Scheduler {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Scheduler")
            .field("jobs", &self.schedule.jobs())
            .field("in_flight", &self.schedule.in_flight())
            .field("devices", &self.links.len())
            .finish_non_exhaustive()
    }
}

impl Scheduler {
    /// A scheduler for `config`'s farm, quarantining through `registry`.
    pub fn new(config: Arc<FarmConfig>, registry: Addr<Registry>, metrics: FarmMetrics) -> Self {
        let policy = SchedulePolicy {
            split: config.split.clone(),
            straggler: config.straggler.clone(),
            shard_timeout: config.shard_timeout,
            no_device_wait: config.no_device_wait,
            ordering: config.scheduling,
        };
        Self {
            schedule: Schedule::new(policy, metrics, first_shard_id()),
            config,
            registry,
            links: FxHashMap::default(),
            pipes: FxHashMap::default(),
            aborts: FxHashMap::default(),
            waiters: FxHashMap::default(),
            wake: None,
        }
    }

    /// Carries out the schedule's decisions, then sleeps until its next timer.
    fn apply(&mut self, actions: Vec<Action>, ctx: &mut Context<Self>) {
        for action in actions {
            match action {
                Action::Dispatch(dispatch) => self.send_shard(dispatch, ctx),
                Action::Abort(shard) => self.abort(shard),
                Action::Quarantine { device, reason } => {
                    self.registry.do_send(Quarantine { device, reason });
                }
                Action::Finished { job, result } => self.finished(job, result),
            }
        }
        self.rearm(ctx);
    }

    fn send_shard(&mut self, dispatch: Dispatch, ctx: &mut Context<Self>) {
        let shard = dispatch.shard_id;
        let Some(link) = self.links.get(&dispatch.device).cloned() else {
            // The device left between the decision and now: the answer is a lost shard.
            lost(shard, "the device's agent is gone", ctx);
            return;
        };
        if link.uses_shard_pipe() {
            self.send_on_pipe(link, dispatch, ctx);
            return;
        }
        let (abort, cancel) = oneshot::channel();
        self.aborts.insert(shard, Abort::Stream(abort));
        let sink = outcome_sink(ctx);
        tokio::spawn(shard::run(link, dispatch, self.config.spot_check.clone(), cancel, sink));
    }

    /// Sends a shard on its agent's shard pipe, opening one where there is none or the one there has
    /// failed.
    fn send_on_pipe(&mut self, link: AgentLink, dispatch: Dispatch, ctx: &mut Context<Self>) {
        let (shard, agent) = (dispatch.shard_id, dispatch.device.agent);
        if self.pipe(agent, &link, ctx).run(dispatch) {
            self.aborts.insert(shard, Abort::Pipe(agent));
        } else {
            // It failed just now: the shard never left.
            lost(shard, "the shard pipe to the device's agent failed", ctx);
        }
    }

    /// The shard pipe to `agent`'s connection, opened where there is none or the one there has failed since
    /// its last shard (a fresh one takes the next).
    fn pipe(&mut self, agent: u64, link: &AgentLink, ctx: &mut Context<Self>) -> &ShardPipe {
        if self.pipes.get(&agent).is_some_and(ShardPipe::has_ended) {
            self.pipes.remove(&agent);
        }
        self.pipes.entry(agent).or_insert_with(|| {
            ShardPipe::open(link.conn.clone(), self.config.spot_check.clone(), outcome_sink(ctx))
        })
    }

    /// Stops a shard in flight (its answer, should one come, is not reported).
    fn abort(&mut self, shard: ShardId) {
        match self.aborts.remove(&shard) {
            Some(Abort::Stream(abort)) => {
                let _ = abort.send(());
            }
            Some(Abort::Pipe(agent)) => {
                if let Some(pipe) = self.pipes.get(&agent) {
                    pipe.cancel(shard);
                }
            }
            None => {}
        }
    }

    fn finished(&mut self, job: JobId, result: Result<Box<FinishedJob>, JobError>) {
        let Some(reply) = self.waiters.remove(&job) else { return };
        match result {
            Err(e) => {
                let _ = reply.send(Err(e));
            }
            Ok(done) => {
                // About one SHA-256 per leaf, off the actor's handler: a small job's root on the farm's
                // I/O runtime, where a blocking thread's hand-off would cost about as much as the hashing
                // (at most INLINE_ROOT_ROWS leaves, under half a millisecond, on I/O workers; fewer on
                // the scheduler's own thread); a larger one on a blocking thread, so that it holds up no
                // QUIC stream. A job whose every iteration came as a root (every small job on a current
                // agent) has no leaf to hash: its result is ready here.
                let to_hash = done.leaves.leaves_to_hash();
                let inline_limit = if self.config.io_threads == 0 {
                    INLINE_ROOT_ROWS_ON_SCHEDULER
                } else {
                    INLINE_ROOT_ROWS
                };
                let small = to_hash <= inline_limit;
                let build = move || {
                    let FinishedJob { leaves, mut report } = *done;
                    let answer = match leaves.root() {
                        Ok(root) => {
                            report.result_hash = root;
                            Ok(report)
                        }
                        Err(e) => Err(JobError::Internal(e.to_string())),
                    };
                    let _ = reply.send(answer);
                };
                if to_hash == 0 {
                    build();
                } else if small {
                    tokio::spawn(async move { build() });
                } else {
                    tokio::task::spawn_blocking(build);
                }
            }
        }
    }

    /// Sleeps until the schedule's next timer (only when it changed).
    fn rearm(&mut self, ctx: &mut Context<Self>) {
        let next = self.schedule.next_wake();
        if self.wake.as_ref().map(|(at, _)| *at) == next {
            return;
        }
        if let Some((_, handle)) = self.wake.take() {
            ctx.cancel_future(handle);
        }
        if let Some(at) = next {
            let delay = at.saturating_duration_since(Instant::now());
            let handle = ctx.run_later(delay, move |this, ctx| {
                this.wake = None;
                let actions = this.schedule.wake(Instant::now());
                this.apply(actions, ctx);
            });
            self.wake = Some((at, handle));
        }
    }
}

/// Where the I/O tasks report shard outcomes: this actor.
fn outcome_sink(ctx: &Context<Scheduler>) -> shard::OutcomeSink {
    let addr = ctx.address();
    Arc::new(move |outcomes| addr.do_send(ShardsAnswered { outcomes }))
}

/// Reports `shard` lost in transport (it never reached its device).
fn lost(shard: ShardId, why: &str, ctx: &mut Context<Scheduler>) {
    let outcome = ShardOutcome::Failed { reason: why.to_owned(), transport: true };
    ctx.notify(ShardsAnswered { outcomes: vec![(shard, outcome)] });
}

/// The first shard id of this run: random in the upper half of `u64`'s low 63 bits, so that shard ids of
/// two coordinator runs do not meet (an agent keys its cached rows by connection as well; this is the
/// second fence, and it makes ids in logs of different runs tell apart).
fn first_shard_id() -> u64 {
    use rand::Rng as _;
    rand::thread_rng().gen_range(1u64 << 40..1u64 << 62)
}

impl Actor for Scheduler {
    type Context = Context<Self>;

    fn stopped(&mut self, _: &mut Self::Context) {
        for (_, reply) in self.waiters.drain() {
            let _ = reply.send(Err(JobError::Shutdown));
        }
        let shards: Vec<ShardId> = self.aborts.keys().copied().collect();
        for shard in shards {
            self.abort(shard);
        }
        self.pipes.clear();
    }
}

impl Handler<Submit> for Scheduler {
    type Result = ();

    fn handle(&mut self, msg: Submit, ctx: &mut Self::Context) {
        for NewJob { job, spec, reply } in msg.jobs {
            self.waiters.insert(job, reply);
            // Each job's shards go out as it is placed: agents start on the first while the rest are.
            // Its own clock reading: a shard's round trip starts when it goes out, not when the batch
            // it came in began (the last of a block's 500 jobs goes out a fraction of a millisecond later).
            let actions = self.schedule.submit(Instant::now(), job, spec);
            self.apply(actions, ctx);
        }
    }
}

impl Handler<Cancel> for Scheduler {
    type Result = ();

    fn handle(&mut self, msg: Cancel, ctx: &mut Self::Context) {
        if self.waiters.remove(&msg.job).is_some() {
            let actions = self.schedule.cancel(Instant::now(), msg.job);
            self.apply(actions, ctx);
        }
    }
}

impl Handler<DeviceUp> for Scheduler {
    type Result = ();

    fn handle(&mut self, msg: DeviceUp, ctx: &mut Self::Context) {
        if msg.link.uses_shard_pipe() {
            // Opened as the agent joins, not with its first shard: that shard (a block's, whose deadline
            // is the next block) does not wait for the stream to open on both ends.
            self.pipe(msg.entry.id.agent, &msg.link, ctx);
        }
        self.links.insert(msg.entry.id, msg.link);
        let actions = self.schedule.add_device(Instant::now(), msg.entry);
        self.apply(actions, ctx);
    }
}

impl Handler<DeviceDown> for Scheduler {
    type Result = ();

    fn handle(&mut self, msg: DeviceDown, ctx: &mut Self::Context) {
        if msg.why != Removal::Draining
            && self.links.remove(&msg.device).is_some()
            && !self.links.keys().any(|d| d.agent == msg.device.agent)
        {
            // The agent's last device is gone: so is its pipe (shards on it are answered or lost).
            self.pipes.remove(&msg.device.agent);
        }
        let actions = self.schedule.remove_device(Instant::now(), msg.device, msg.why);
        self.apply(actions, ctx);
    }
}

impl Handler<DeviceReadmitted> for Scheduler {
    type Result = ();

    fn handle(&mut self, msg: DeviceReadmitted, ctx: &mut Self::Context) {
        self.links.insert(msg.entry.id, msg.link);
        let actions = self.schedule.readmit_device(Instant::now(), msg.entry);
        self.apply(actions, ctx);
    }
}

impl Handler<InFlightByDevice> for Scheduler {
    type Result = actix::MessageResult<InFlightByDevice>;

    fn handle(&mut self, _: InFlightByDevice, _: &mut Self::Context) -> Self::Result {
        actix::MessageResult(self.schedule.in_flight_by_device())
    }
}

impl Handler<ShardsAnswered> for Scheduler {
    type Result = ();

    fn handle(&mut self, msg: ShardsAnswered, ctx: &mut Self::Context) {
        let mut actions = Vec::new();
        for (shard, outcome) in msg.outcomes {
            self.aborts.remove(&shard);
            // Read for each answer: a shard is verified when its turn in the frame comes.
            actions.extend(self.schedule.answer(Instant::now(), shard, outcome));
        }
        self.apply(actions, ctx);
    }
}

impl Handler<Stop> for Scheduler {
    type Result = ();

    fn handle(&mut self, _: Stop, ctx: &mut Self::Context) {
        ctx.stop();
    }
}
