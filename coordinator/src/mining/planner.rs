//! The planner: for every new block, derives the synthetic-v1 task of each worker identity, journals them
//! in one transaction, and hands them all to the compute service at once (the farm runs them side by side
//! on its devices). A task still computing when a newer block comes is superseded: journaled so, and its
//! computation cancelled, shards in flight included. The newest block wins and nothing queues without
//! bound.
//!
//! Blocks the follower did not see as heads (it was behind: a hung node failed over, a slow poll) get
//! their tasks too, handed over after the head's so the farm starts the head's first. They have the same
//! time as the head's tasks: until the next block supersedes them. So a block produced while the node
//! could not be reached is not lost when the farm has room to catch up.

use super::{
    Identity,
    compute::{ComputeError, ComputeFuture, ComputeService},
    journal::{Journal, MissCause, TaskState},
    submitter::{Submitter, TaskComputed},
    watcher::{BlockRef, NewBlock},
};
use crate::{
    farm::{JobSpec, Priority},
    readiness::Readiness,
};
use actix::prelude::*;
use cpc_common::synthetic::BlockTask;
use std::{
    collections::{HashMap, HashSet},
    sync::Arc,
    time::Instant,
};
use tokio::sync::watch;

/// Derives and schedules tasks.
#[derive(Debug)]
pub struct Planner {
    identities: Vec<Identity>,
    journal: Journal,
    compute: Arc<dyn ComputeService>,
    matrix_size: u32,
    submitters: Vec<Addr<Submitter>>,
    /// Per identity (index), its tasks still computing (the head's, and those of blocks skipped before it).
    running: HashMap<usize, Vec<Running>>,
    /// Results computed since the last journal write: written together, one sync for a burst (a block's
    /// tasks for hundreds of identities finish within milliseconds of each other on a farm).
    computed: Vec<Computed>,
    /// The highest block whose tasks are journaled, for whoever must know that a block task id is known.
    planned_height: watch::Sender<u64>,
    /// Whether a device is usable (farm mode): a task superseded or failed while none is was missed for
    /// want of a device, and the journal says so.
    readiness: Option<Arc<Readiness>>,
    /// Identities (indices) removed by a reload: no new tasks; their running ones finish and are submitted.
    retired: HashSet<usize>,
}

#[derive(Debug)]
struct Computed {
    identity: usize,
    task: BlockTask,
    result_hash: String,
    seen_at: Instant,
}

#[derive(Debug)]
struct Running {
    task_id: String,
    handle: SpawnHandle,
}

impl Planner {
    /// A planner for `identities`; `submitters[i]` submits for `identities[i]`.
    pub fn new(
        identities: Vec<Identity>,
        journal: Journal,
        compute: Arc<dyn ComputeService>,
        matrix_size: u32,
        submitters: Vec<Addr<Submitter>>,
        planned_height: watch::Sender<u64>,
    ) -> Self {
        Self {
            identities,
            journal,
            compute,
            matrix_size,
            submitters,
            running: HashMap::new(),
            computed: Vec::new(),
            planned_height,
            readiness: None,
            retired: HashSet::new(),
        }
    }

    /// Reads whether a device is usable from `readiness`, to tell a task missed for want of a device.
    pub fn with_readiness(mut self, readiness: Arc<Readiness>) -> Self {
        self.readiness = Some(readiness);
        self
    }

    /// Why a task that is superseded or failed now missed its block.
    fn miss_cause(&self, otherwise: MissCause) -> MissCause {
        if self.readiness.as_ref().is_some_and(|r| r.lacks_device()) {
            MissCause::NoDevice
        } else {
            otherwise
        }
    }

    /// Journals every result computed since the last call in one transaction, then hands each to its
    /// identity's submitter.
    fn journal_results(&mut self) {
        let computed = std::mem::take(&mut self.computed);
        if computed.is_empty() {
            return;
        }
        let stored = self.journal.batch(|j| {
            for c in &computed {
                let name = &self.identities[c.identity].name;
                j.record_result(name, &c.task.task_id.to_string(), &c.result_hash)?;
            }
            Ok(())
        });
        for c in computed {
            let identity = &self.identities[c.identity];
            let task_id = c.task.task_id.to_string();
            match &stored {
                Ok(()) => {
                    tracing::info!(identity = %identity.name, height = c.task.height, %task_id, result_hash = %c.result_hash, "task computed");
                    self.submitters[c.identity].do_send(TaskComputed {
                        height: c.task.height,
                        seen_at: c.seen_at,
                        computed_at: Instant::now(),
                    });
                }
                Err(e) => {
                    tracing::error!(identity = %identity.name, %task_id, error = %e, "could not journal a result")
                }
            }
        }
    }

    /// Starts computing every `(identity, task)` of `planned` (seen at `seen_at`), handed to the compute
    /// service together.
    fn start_all(
        &mut self,
        planned: Vec<(usize, BlockTask)>,
        seen_at: Instant,
        ctx: &mut Context<Self>,
    ) {
        let specs = planned
            .iter()
            .map(|(i, task)| JobSpec {
                challenge: task.challenge.clone(),
                priority: Priority::Block,
                deadline: None,
                owner: self.identities[*i].name.clone(),
            })
            .collect();
        let runs = self.compute.run_all(specs);
        for ((i, task), run) in planned.into_iter().zip(runs) {
            self.track(i, task, seen_at, run, ctx);
        }
    }

    /// Follows identity `i`'s `task` (seen at `seen_at`) while `run` computes it.
    fn track(
        &mut self,
        i: usize,
        task: BlockTask,
        seen_at: Instant,
        run: ComputeFuture,
        ctx: &mut Context<Self>,
    ) {
        let task_id = task.task_id.to_string();
        let started = Instant::now();
        let computing = run.into_actor(self).map(move |res, act, ctx| {
            let task_id = task.task_id.to_string();
            if let Some(running) = act.running.get_mut(&i) {
                running.retain(|r| r.task_id != task_id);
            }
            let identity = &act.identities[i];
            match res {
                Ok(root) => {
                    metrics::histogram!("cpcfarm_task_compute_seconds").record(started.elapsed().as_secs_f64());
                    if act.computed.is_empty() {
                        ctx.run_later(std::time::Duration::ZERO, |act, _| act.journal_results());
                    }
                    act.computed.push(Computed { identity: i, task, result_hash: hex::encode(root), seen_at });
                }
                // The process is stopping (the farm saw the shutdown token before this loop did): the task
                // stays planned, neither a result nor a miss.
                Err(ComputeError::Stopped) => {
                    tracing::debug!(identity = %identity.name, %task_id, "task not computed: shutting down");
                }
                Err(e) => {
                    metrics::counter!("cpcfarm_tasks_failed_total").increment(1);
                    tracing::error!(identity = %identity.name, %task_id, error = %e, "task computation failed");
                    let cause = act.miss_cause(MissCause::ComputeFailed);
                    let detail = e.to_string();
                    if let Err(e) = act.journal.note_miss(&act.identities[i].name, &task_id, cause, Some(&detail)) {
                        tracing::error!(error = %e, "journal");
                    }
                }
            }
        });
        let handle = ctx.spawn(computing);
        self.running.entry(i).or_default().push(Running { task_id, handle });
    }
}

impl Actor for Planner {
    type Context = Context<Self>;
}

impl Handler<NewBlock> for Planner {
    type Result = ();

    fn handle(&mut self, block: NewBlock, ctx: &mut Self::Context) {
        // The head first, then the blocks skipped before it, newest first: the order the farm starts them.
        let head = BlockRef { height: block.height, hash: block.hash.clone() };
        let blocks: Vec<&BlockRef> =
            std::iter::once(&head).chain(block.skipped.iter().rev()).collect();
        let mut superseded = Vec::new();
        let supersede_cause = self.miss_cause(MissCause::Superseded);
        // One journal transaction for the whole block: every identity's tasks are written with one sync.
        let planned = self.journal.batch(|journal| {
            let mut planned = Vec::new();
            for (i, identity) in self.identities.iter().enumerate() {
                if self.retired.contains(&i) {
                    continue;
                }
                let mut tasks = Vec::with_capacity(blocks.len());
                for (order, b) in blocks.iter().enumerate() {
                    match BlockTask::derive(
                        &b.hash,
                        identity.address.as_str(),
                        self.matrix_size,
                        b.height,
                    ) {
                        Ok(t) => tasks.push((order, t)),
                        Err(e) => tracing::error!(height = b.height, error = %e, "cannot derive task"),
                    }
                }
                let running = self.running.get(&i).map(Vec::as_slice).unwrap_or_default();
                let is_new = |task_id: &str| !running.iter().any(|r| r.task_id == task_id);
                // Still computing for an older block: superseded.
                for r in running {
                    if tasks.iter().all(|(_, t)| t.task_id.to_string() != r.task_id) {
                        if let Err(e) = journal.supersede(&identity.name, &r.task_id).and_then(|()| {
                            journal.note_miss(&identity.name, &r.task_id, supersede_cause, None)
                        }) {
                            tracing::error!(error = %e, "journal");
                        }
                        superseded.push((i, r.task_id.clone()));
                    }
                }
                for (order, task) in tasks {
                    let task_id = task.task_id.to_string();
                    if !is_new(&task_id) {
                        continue; // the same block again: its task is already computing
                    }
                    let state = journal.record_task(&identity.name, &task).and_then(|_| {
                        journal.task(&identity.name, &task_id).map(|t| t.map(|t| t.state))
                    });
                    match state {
                        Ok(Some(TaskState::Planned | TaskState::Superseded)) => {
                            metrics::counter!("cpcfarm_tasks_derived_total").increment(1);
                            planned.push((order, i, task));
                        }
                        Ok(_) => {
                            tracing::debug!(identity = %identity.name, height = task.height, "task already computed")
                        }
                        Err(e) => {
                            tracing::error!(identity = %identity.name, error = %e, "cannot journal task")
                        }
                    }
                }
            }
            Ok(planned)
        });
        match planned {
            Ok(mut planned) => {
                for (i, task_id) in superseded {
                    let Some(running) = self.running.get_mut(&i) else { continue };
                    if let Some(at) = running.iter().position(|r| r.task_id == task_id) {
                        ctx.cancel_future(running.swap_remove(at).handle);
                        metrics::counter!("cpcfarm_tasks_superseded_total").increment(1);
                    }
                }
                if !block.skipped.is_empty() {
                    metrics::counter!("cpcfarm_blocks_caught_up_total")
                        .increment(block.skipped.len() as u64);
                }
                self.planned_height.send_if_modified(|h| {
                    let higher = block.height > *h;
                    *h = (*h).max(block.height);
                    higher
                });
                // Every identity's head task before any skipped block's (a stable sort keeps identities in order).
                planned.sort_by_key(|(order, _, _)| *order);
                let planned = planned.into_iter().map(|(_, i, task)| (i, task)).collect();
                self.start_all(planned, block.seen_at, ctx);
            }
            Err(e) => tracing::error!(error = %e, "cannot journal this block's tasks"),
        }
    }
}

/// A reload's identities, in the configured order, each with its submitter (an existing identity keeps
/// its own), and the matrix size of the tasks planned from the next block on.
#[derive(Debug, Message)]
#[rtype(result = "()")]
pub struct SetIdentities {
    /// The identities now configured.
    pub identities: Vec<(Identity, Addr<Submitter>)>,
    /// Matrix size of block tasks.
    pub matrix_size: u32,
}

impl Handler<SetIdentities> for Planner {
    type Result = ();

    /// A new identity is planned from the next block; one no longer listed is retired: it gets no new
    /// task, and a task of it still computing finishes and goes to its submitter (which keeps running, so
    /// its journaled results are still sent and confirmed). Indices never move, so `running` stays right.
    fn handle(&mut self, msg: SetIdentities, _: &mut Self::Context) {
        self.matrix_size = msg.matrix_size;
        let wanted: HashSet<&str> = msg.identities.iter().map(|(id, _)| id.name.as_str()).collect();
        for (i, identity) in self.identities.iter().enumerate() {
            if !wanted.contains(identity.name.as_str()) {
                self.retired.insert(i);
            }
        }
        for (identity, submitter) in msg.identities {
            match self.identities.iter().position(|known| known.name == identity.name) {
                Some(i) => {
                    self.retired.remove(&i);
                }
                None => {
                    self.identities.push(identity);
                    self.submitters.push(submitter);
                }
            }
        }
    }
}
