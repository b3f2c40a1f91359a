//! A priority layer in front of a [`ComputeService`] that runs one challenge at a time: a backend in this
//! process (`run --compute local`), shared by block tasks and PoC validator jobs. (The farm has its own
//! queue with the same rules, `farm::schedule`, and runs many jobs at once: it is used without this layer.)
//!
//! The layer hands the underlying service one challenge at a time and, when it frees, picks the next
//! waiting one by the [`SchedulingPolicy`]: by default block tasks first (a block task waits at most for
//! the one validator job already running), validator jobs fill the rest. A waiting job with a deadline that
//! passes before its turn fails with [`ComputeError::DeadlineExceeded`] without running.
//!
//! Cancellation-safe: a caller that drops its future while waiting leaves the queue, and one that drops
//! it while running frees the slot.

use super::compute::{ComputeError, ComputeFuture, ComputeService};
use crate::farm::JobSpec;
pub use crate::farm::{Priority, SchedulingPolicy};
use cpc_common::synthetic::Challenge;
use std::{
    collections::VecDeque,
    sync::{Arc, Mutex, PoisonError},
    time::Instant,
};
use tokio::sync::oneshot;

/// What a waiter is told when its turn comes.
#[derive(Debug)]
enum Turn {
    /// Run now; the slot is yours.
    Go,
    /// Your deadline passed while you waited.
    Expired,
}

#[derive(Debug)]
struct Waiter {
    seq: u64,
    deadline: Option<Instant>,
    tx: oneshot::Sender<Turn>,
}

#[derive(Debug, Default)]
struct Queues {
    block: VecDeque<Waiter>,
    validator: VecDeque<Waiter>,
    running: bool,
    seq: u64,
}

/// The shared scheduler. Cheap to clone views of with [`PrioritizedCompute::class`].
#[derive(Debug)]
pub struct PrioritizedCompute {
    inner: Arc<dyn ComputeService>,
    policy: SchedulingPolicy,
    queues: Mutex<Queues>,
}

impl PrioritizedCompute {
    /// Puts `inner` behind the priority layer.
    pub fn new(inner: Arc<dyn ComputeService>, policy: SchedulingPolicy) -> Arc<Self> {
        Arc::new(Self { inner, policy, queues: Mutex::new(Queues::default()) })
    }

    /// The policy in force.
    pub fn policy(&self) -> SchedulingPolicy {
        self.policy
    }

    /// Computes `challenge` in `priority`'s class; fails with [`ComputeError::DeadlineExceeded`] if
    /// `deadline` passes before its turn.
    pub fn compute_with(
        self: &Arc<Self>,
        challenge: Challenge,
        priority: Priority,
        deadline: Option<Instant>,
    ) -> ComputeFuture {
        let this = Arc::clone(self);
        Box::pin(async move {
            let rx = this.enqueue(priority, deadline);
            let mut wait = WaitGuard { shared: Arc::clone(&this), rx: Some(rx) };
            let turn = match wait.rx.as_mut() {
                Some(rx) => rx.await,
                None => return Err(ComputeError::Thread("scheduler state lost".into())),
            };
            wait.rx = None;
            match turn {
                Ok(Turn::Go) => {
                    let _slot = Slot { shared: Arc::clone(&this) };
                    this.inner.compute(challenge).await
                }
                Ok(Turn::Expired) => Err(ComputeError::DeadlineExceeded),
                Err(_) => Err(ComputeError::Thread("scheduler dropped a waiting job".into())),
            }
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Queues> {
        self.queues.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn enqueue(&self, priority: Priority, deadline: Option<Instant>) -> oneshot::Receiver<Turn> {
        let (tx, rx) = oneshot::channel();
        let mut q = self.lock();
        q.seq += 1;
        let waiter = Waiter { seq: q.seq, deadline, tx };
        match priority {
            Priority::Block => q.block.push_back(waiter),
            Priority::Validator => q.validator.push_back(waiter),
        }
        if !q.running {
            self.dispatch(&mut q);
        }
        rx
    }

    /// Frees the slot and hands it to the next waiter.
    fn release(&self) {
        let mut q = self.lock();
        q.running = false;
        self.dispatch(&mut q);
    }

    /// Gives the free slot to the next live waiter; expired ones are told so on the way.
    fn dispatch(&self, q: &mut Queues) {
        while !q.running {
            let from_block = match (q.block.front(), q.validator.front()) {
                (None, None) => return,
                (Some(_), None) => true,
                (None, Some(_)) => false,
                (Some(b), Some(v)) => match self.policy {
                    SchedulingPolicy::BlockFirst => true,
                    SchedulingPolicy::Fifo => b.seq < v.seq,
                },
            };
            let next = if from_block { q.block.pop_front() } else { q.validator.pop_front() };
            let Some(w) = next else { return };
            if w.deadline.is_some_and(|d| Instant::now() >= d) {
                let _ = w.tx.send(Turn::Expired);
                continue;
            }
            // A waiter that went away leaves the slot to the next one.
            q.running = w.tx.send(Turn::Go).is_ok();
        }
    }
}

/// Held while a challenge runs; frees the slot however the future ends.
struct Slot {
    shared: Arc<PrioritizedCompute>,
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.shared.release();
    }
}

/// Held while waiting; if the future is dropped after the slot was granted but before it was seen, the
/// slot is freed.
struct WaitGuard {
    shared: Arc<PrioritizedCompute>,
    rx: Option<oneshot::Receiver<Turn>>,
}

impl Drop for WaitGuard {
    fn drop(&mut self) {
        if let Some(mut rx) = self.rx.take() {
            rx.close();
            if let Ok(Turn::Go) = rx.try_recv() {
                self.shared.release();
            }
        }
    }
}

/// The layer as a [`ComputeService`]: each job queues in its own class, by its own deadline.
impl ComputeService for Arc<PrioritizedCompute> {
    fn describe(&self) -> String {
        format!("{} ({} scheduling)", self.inner.describe(), self.policy)
    }

    fn run(&self, spec: JobSpec) -> ComputeFuture {
        self.compute_with(spec.challenge, spec.priority, spec.deadline)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::{sync::atomic::AtomicUsize, time::Duration};

    /// Records the order of the seeds it computes; each takes a few milliseconds and checks that it runs
    /// alone.
    #[derive(Debug, Default)]
    struct Recorder {
        order: Mutex<Vec<String>>,
        running: AtomicUsize,
    }

    impl ComputeService for Arc<Recorder> {
        fn describe(&self) -> String {
            "recorder".into()
        }
        fn run(&self, spec: JobSpec) -> ComputeFuture {
            let me = Self::clone(self);
            let challenge = spec.challenge;
            Box::pin(async move {
                use std::sync::atomic::Ordering::SeqCst;
                assert_eq!(me.running.fetch_add(1, SeqCst), 0, "one challenge at a time");
                tokio::time::sleep(Duration::from_millis(20)).await;
                me.order.lock().expect("lock").push(challenge.seed().to_owned());
                me.running.fetch_sub(1, SeqCst);
                Ok([0u8; 32])
            })
        }
    }

    fn ch(seed: &str) -> Challenge {
        Challenge::new(seed, 4, 1).expect("challenge")
    }

    async fn run(policy: SchedulingPolicy) -> Vec<String> {
        let rec = Arc::new(Recorder::default());
        let p = PrioritizedCompute::new(Arc::new(Arc::clone(&rec)), policy);
        let mut handles = Vec::new();
        // v1 starts at once; then v2, b1, v3, b2 queue behind it.
        for (seed, prio) in [
            ("v1", Priority::Validator),
            ("v2", Priority::Validator),
            ("b1", Priority::Block),
            ("v3", Priority::Validator),
            ("b2", Priority::Block),
        ] {
            handles.push(tokio::spawn(p.compute_with(ch(seed), prio, None)));
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        for h in handles {
            h.await.expect("join").expect("computed");
        }
        rec.order.lock().expect("lock").clone()
    }

    #[tokio::test]
    async fn block_tasks_go_first_by_default_and_fifo_keeps_arrival_order() {
        assert_eq!(run(SchedulingPolicy::BlockFirst).await, ["v1", "b1", "b2", "v2", "v3"]);
        assert_eq!(run(SchedulingPolicy::Fifo).await, ["v1", "v2", "b1", "v3", "b2"]);
    }

    #[tokio::test]
    async fn an_expired_job_fails_without_running_and_a_dropped_waiter_frees_its_place() {
        let rec = Arc::new(Recorder::default());
        let p = PrioritizedCompute::new(Arc::new(Arc::clone(&rec)), SchedulingPolicy::BlockFirst);
        let first = tokio::spawn(p.compute_with(ch("b1"), Priority::Block, None));
        tokio::time::sleep(Duration::from_millis(2)).await;
        let late = tokio::spawn(p.compute_with(
            ch("late"),
            Priority::Validator,
            Some(Instant::now() + Duration::from_millis(5)),
        ));
        let dropped = tokio::spawn(p.compute_with(ch("dropped"), Priority::Validator, None));
        let after = tokio::spawn(p.compute_with(ch("after"), Priority::Validator, None));
        tokio::time::sleep(Duration::from_millis(2)).await;
        dropped.abort();
        assert!(matches!(late.await.expect("join"), Err(ComputeError::DeadlineExceeded)));
        first.await.expect("join").expect("b1");
        after.await.expect("join").expect("after");
        assert_eq!(*rec.order.lock().expect("lock"), ["b1", "after"]);
    }
}
