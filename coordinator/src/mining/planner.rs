//! The planner: for every new block, derives the synthetic-v1 task of each worker identity, journals them
//! in one transaction, and hands them all to the compute service at once (the farm runs them side by side
//! on its devices). A task still computing when a newer block comes is superseded: journaled so, and its
//! computation cancelled, shards in flight included. The newest block wins and nothing queues without
//! bound (at most one task per identity is running).

use super::{
    Identity,
    compute::ComputeService,
    journal::{Journal, MissCause, TaskState},
    submitter::{Submitter, TaskComputed},
    watcher::NewBlock,
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

/// Derives and schedules tasks.
#[derive(Debug)]
pub struct Planner {
    identities: Vec<Identity>,
    journal: Journal,
    compute: Arc<dyn ComputeService>,
    matrix_size: u32,
    submitters: Vec<Addr<Submitter>>,
    /// Per identity (index), its task still computing.
    running: HashMap<usize, Running>,
    /// Results computed since the last journal write: written together, one sync for a burst (a block's
    /// tasks for hundreds of identities finish within milliseconds of each other on a farm).
    computed: Vec<Computed>,
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
    ) -> Self {
        Self {
            identities,
            journal,
            compute,
            matrix_size,
            submitters,
            running: HashMap::new(),
            computed: Vec::new(),
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

    /// Starts computing identity `i`'s `task` (seen at `seen_at`).
    fn start(&mut self, i: usize, task: BlockTask, seen_at: Instant, ctx: &mut Context<Self>) {
        let spec = JobSpec {
            challenge: task.challenge.clone(),
            priority: Priority::Block,
            deadline: None,
            owner: self.identities[i].name.clone(),
        };
        let task_id = task.task_id.to_string();
        let started = Instant::now();
        let computing = self.compute.run(spec).into_actor(self).map(move |res, act, ctx| {
            act.running.remove(&i);
            let identity = &act.identities[i];
            let task_id = task.task_id.to_string();
            match res {
                Ok(root) => {
                    metrics::histogram!("cpcfarm_task_compute_seconds").record(started.elapsed().as_secs_f64());
                    if act.computed.is_empty() {
                        ctx.run_later(std::time::Duration::ZERO, |act, _| act.journal_results());
                    }
                    act.computed.push(Computed { identity: i, task, result_hash: hex::encode(root), seen_at });
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
        self.running.insert(i, Running { task_id, handle });
    }
}

impl Actor for Planner {
    type Context = Context<Self>;
}

impl Handler<NewBlock> for Planner {
    type Result = ();

    fn handle(&mut self, block: NewBlock, ctx: &mut Self::Context) {
        let mut superseded = Vec::new();
        let supersede_cause = self.miss_cause(MissCause::Superseded);
        // One journal transaction for the whole block: every identity's task is written with one sync.
        let planned = self.journal.batch(|journal| {
            let mut planned = Vec::new();
            for (i, identity) in self.identities.iter().enumerate() {
                if self.retired.contains(&i) {
                    continue;
                }
                let task = match BlockTask::derive(
                    &block.hash,
                    identity.address.as_str(),
                    self.matrix_size,
                    block.height,
                ) {
                    Ok(t) => t,
                    Err(e) => {
                        tracing::error!(error = %e, "cannot derive task");
                        continue;
                    }
                };
                let task_id = task.task_id.to_string();
                if let Some(running) = self.running.get(&i) {
                    if running.task_id == task_id {
                        continue; // the same block again: its task is already computing
                    }
                    // Still computing for an older block: superseded.
                    if let Err(e) = journal.supersede(&identity.name, &running.task_id).and_then(|()| {
                        journal.note_miss(&identity.name, &running.task_id, supersede_cause, None)
                    }) {
                        tracing::error!(error = %e, "journal");
                    }
                    superseded.push(i);
                }
                let state = journal.record_task(&identity.name, &task).and_then(|_| {
                    journal.task(&identity.name, &task_id).map(|t| t.map(|t| t.state))
                });
                match state {
                    Ok(Some(TaskState::Planned | TaskState::Superseded)) => {
                        metrics::counter!("cpcfarm_tasks_derived_total").increment(1);
                        planned.push((i, task));
                    }
                    Ok(_) => {
                        tracing::debug!(identity = %identity.name, height = block.height, "task already computed")
                    }
                    Err(e) => {
                        tracing::error!(identity = %identity.name, error = %e, "cannot journal task")
                    }
                }
            }
            Ok(planned)
        });
        match planned {
            Ok(planned) => {
                for i in superseded {
                    if let Some(running) = self.running.remove(&i) {
                        ctx.cancel_future(running.handle);
                        metrics::counter!("cpcfarm_tasks_superseded_total").increment(1);
                    }
                }
                for (i, task) in planned {
                    self.start(i, task, block.seen_at, ctx);
                }
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
