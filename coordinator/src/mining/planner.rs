//! The planner: for every new block, derives the synthetic-v1 task of each worker identity, journals it,
//! and feeds the compute service one task at a time. If the farm is still busy when a newer block comes,
//! the tasks still waiting for the older block are superseded: the newest block wins and nothing queues
//! without bound (at most one task per identity waits).

use super::{
    Identity,
    compute::ComputeService,
    journal::{Journal, TaskState},
    submitter::{Submitter, TaskComputed},
    watcher::NewBlock,
};
use actix::prelude::*;
use cpc_common::synthetic::BlockTask;
use std::{collections::VecDeque, sync::Arc, time::Instant};

/// Derives and schedules tasks.
#[derive(Debug)]
pub struct Planner {
    identities: Vec<Identity>,
    journal: Journal,
    compute: Arc<dyn ComputeService>,
    matrix_size: u32,
    submitters: Vec<Addr<Submitter>>,
    queue: VecDeque<Queued>,
    busy: bool,
}

#[derive(Debug)]
struct Queued {
    identity: usize,
    task: BlockTask,
    seen_at: Instant,
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
            queue: VecDeque::new(),
            busy: false,
        }
    }

    fn start_next(&mut self, ctx: &mut Context<Self>) {
        if self.busy {
            return;
        }
        let Some(job) = self.queue.pop_front() else { return };
        self.busy = true;
        let compute = Arc::clone(&self.compute);
        let challenge = job.task.challenge.clone();
        let started = Instant::now();
        ctx.spawn(compute.compute(challenge).into_actor(self).map(move |res, act, ctx| {
            act.busy = false;
            let identity = &act.identities[job.identity];
            let task_id = job.task.task_id.to_string();
            match res {
                Ok(root) => {
                    metrics::histogram!("cpcfarm_task_compute_seconds").record(started.elapsed().as_secs_f64());
                    let result_hash = hex::encode(root);
                    let stored = act.journal.record_result(&identity.name, &task_id, &result_hash);
                    match stored {
                        Ok(()) => {
                            tracing::info!(identity = %identity.name, height = job.task.height, %task_id, %result_hash, "task computed");
                            act.submitters[job.identity].do_send(TaskComputed {
                                height: job.task.height,
                                seen_at: job.seen_at,
                                computed_at: Instant::now(),
                            });
                        }
                        Err(e) => tracing::error!(identity = %identity.name, %task_id, error = %e, "could not journal a result"),
                    }
                }
                Err(e) => {
                    metrics::counter!("cpcfarm_tasks_failed_total").increment(1);
                    tracing::error!(identity = %identity.name, %task_id, error = %e, "task computation failed");
                }
            }
            act.start_next(ctx);
        }));
    }
}

impl Actor for Planner {
    type Context = Context<Self>;
}

impl Handler<NewBlock> for Planner {
    type Result = ();

    fn handle(&mut self, block: NewBlock, ctx: &mut Self::Context) {
        // One journal transaction for the whole block: every identity's task is written with one sync.
        let planned = self.journal.batch(|journal| {
            let mut planned = Vec::new();
            // Tasks still waiting for an older block are superseded.
            for old in self.queue.drain(..) {
                let name = &self.identities[old.identity].name;
                if let Err(e) = journal.supersede(name, &old.task.task_id.to_string()) {
                    tracing::error!(error = %e, "journal");
                }
                metrics::counter!("cpcfarm_tasks_superseded_total").increment(1);
            }
            for (i, identity) in self.identities.iter().enumerate() {
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
                let state = journal.record_task(&identity.name, &task).and_then(|_| {
                    journal.task(&identity.name, &task.task_id.to_string()).map(|t| t.map(|t| t.state))
                });
                match state {
                    Ok(Some(TaskState::Planned | TaskState::Superseded)) => {
                        metrics::counter!("cpcfarm_tasks_derived_total").increment(1);
                        planned.push(Queued { identity: i, task, seen_at: block.seen_at });
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
            Ok(planned) => self.queue.extend(planned),
            Err(e) => tracing::error!(error = %e, "cannot journal this block's tasks"),
        }
        self.start_next(ctx);
    }
}
