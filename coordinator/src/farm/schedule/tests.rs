//! The schedule's rules, driven by hand: no network, no clock (time is an argument).

use super::*;
use cpc_common::{
    hashing::{Digest32, sha256},
    merkle::merkle_root,
    wire::RowCapacity,
};

const SEC: Duration = Duration::from_secs(1);

fn policy(ordering: SchedulingPolicy) -> SchedulePolicy {
    SchedulePolicy {
        split: SplitPolicy { small_job: Duration::from_millis(100), min_shard_rows: 16 },
        straggler: StragglerPolicy { factor: 2.0, grace: SEC },
        shard_timeout: 60 * SEC,
        no_device_wait: 10 * SEC,
        ordering,
    }
}

fn dev(agent: u64, ops: f64, slots: u32, max_rows: u32) -> DeviceEntry {
    DeviceEntry {
        id: DeviceId { agent, index: 0 },
        agent_name: format!("agent{agent}"),
        advert: DeviceAdvert {
            index: 0,
            name: "sim".into(),
            kind: "cpu".into(),
            memory_bytes: 0,
            measured_ops_per_sec: ops,
            concurrent_shards: slots,
            row_capacity: cpc_common::wire::advertised_sizes()
                .map(|matrix_size| RowCapacity { matrix_size, max_rows })
                .collect(),
        },
    }
}

fn id(agent: u64) -> DeviceId {
    DeviceId { agent, index: 0 }
}

/// A challenge a 1e9 ops/s device finishes within the small-job limit (n=64: 0.5 ms).
fn small(seed: &str) -> JobSpec {
    JobSpec::new(Challenge::new(seed, 64, 1).expect("challenge"))
}

/// A challenge too large to run whole on a 1e9 ops/s device (n=1024: 2.1 s).
fn large(seed: &str) -> JobSpec {
    JobSpec::new(Challenge::new(seed, 1024, 1).expect("challenge"))
}

fn leaf(seed: &str, iteration: u32, row: u32) -> Digest32 {
    sha256(format!("{seed}/{iteration}/{row}"))
}

/// The right answer, as an agent of today gives it: a whole iteration's root, or the leaves of part of one.
fn honest(d: &Dispatch) -> ShardOutcome {
    let leaves: Vec<Digest32> =
        d.rows.clone().map(|r| leaf(d.challenge.seed(), d.iteration, r)).collect();
    let whole = d.rows == (0..d.challenge.matrix_size());
    let result =
        if whole { ShardResult::Root(merkle_root(&leaves)) } else { ShardResult::Leaves(leaves) };
    ShardOutcome::Verified { result, checked: 1, check: None }
}

fn expected_root(c: &Challenge) -> Digest32 {
    let roots: Vec<Digest32> = (0..c.iterations())
        .map(|i| {
            let leaves: Vec<Digest32> =
                (0..c.matrix_size()).map(|r| leaf(c.seed(), i, r)).collect();
            merkle_root(&leaves)
        })
        .collect();
    Challenge::combine_iterations(&roots)
}

fn dispatches(actions: &[Action]) -> Vec<Dispatch> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::Dispatch(d) => Some(d.clone()),
            _ => None,
        })
        .collect()
}

fn aborts(actions: &[Action]) -> Vec<ShardId> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::Abort(s) => Some(*s),
            _ => None,
        })
        .collect()
}

/// Jobs that finished, with their root (built here, as the actor does) or error.
fn finished(actions: Vec<Action>) -> Vec<(JobId, Result<Digest32, JobError>)> {
    actions
        .into_iter()
        .filter_map(|a| match a {
            Action::Finished { job, result } => Some((
                job,
                result.and_then(|f| f.leaves.root().map_err(|e| JobError::Internal(e.to_string()))),
            )),
            _ => None,
        })
        .collect()
}

fn schedule(ordering: SchedulingPolicy) -> Schedule {
    Schedule::new(policy(ordering), FarmMetrics::default(), 1)
}

#[test]
fn small_jobs_run_whole_side_by_side_and_slots_are_respected() {
    let t0 = Instant::now();
    let mut s = schedule(SchedulingPolicy::BlockFirst);
    for agent in 1..=3 {
        assert!(s.add_device(t0, dev(agent, 1e9, 1, 1 << 20)).is_empty());
    }
    // Device 4 runs two shards at once.
    s.add_device(t0, dev(4, 1e9, 2, 1 << 20));
    let mut sent = Vec::new();
    for job in 1..=6 {
        sent.extend(dispatches(&s.submit(t0, job, small(&format!("s{job}")))));
    }
    // Five slots: five jobs start at once, each whole, on five slots; the sixth waits.
    assert_eq!(sent.len(), 5, "{sent:?}");
    assert!(sent.iter().all(|d| d.rows == (0..64)));
    let on_4 = sent.iter().filter(|d| d.device == id(4)).count();
    assert_eq!(on_4, 2);
    // A free slot takes the waiting job at once; every job gets its root.
    let first = sent[0].clone();
    let actions = s.answer(t0 + SEC, first.shard_id, honest(&first));
    let next = dispatches(&actions);
    assert_eq!(next.len(), 1);
    assert_eq!(next[0].job, 6);
    assert_eq!(next[0].device, first.device);
    let done = finished(actions);
    assert_eq!(done, vec![(first.job, Ok(expected_root(&first.challenge)))]);
    for d in sent.iter().skip(1).chain(&next) {
        let done = finished(s.answer(t0 + SEC, d.shard_id, honest(d)));
        assert_eq!(done, vec![(d.job, Ok(expected_root(&d.challenge)))]);
    }
    assert_eq!((s.jobs(), s.in_flight()), (0, 0));
    assert_eq!(s.next_wake(), None, "no timer outlives its shard");
}

#[test]
fn a_large_job_is_split_by_throughput_and_capacity() {
    let t0 = Instant::now();
    let mut s = schedule(SchedulingPolicy::BlockFirst);
    s.add_device(t0, dev(1, 1e9, 1, 1 << 20));
    s.add_device(t0, dev(2, 3e9, 1, 1 << 20));
    s.add_device(t0, dev(3, 1e9, 1, 100));
    let sent = dispatches(&s.submit(t0, 1, large("big")));
    let rows = |a| sent.iter().filter(|d| d.device == id(a)).map(|d| d.rows.len()).sum::<usize>();
    assert_eq!(sent.len(), 3, "{sent:?}");
    assert_eq!(rows(3), 100, "capped at what the device holds");
    assert!(rows(2) > 2 * rows(1), "{sent:?}");
    let mut done = Vec::new();
    let mut queue = sent;
    while let Some(d) = queue.pop() {
        let actions = s.answer(t0 + SEC, d.shard_id, honest(&d));
        queue.extend(dispatches(&actions));
        done.extend(finished(actions));
    }
    assert_eq!(done, vec![(1, Ok(expected_root(&large("big").challenge)))]);
}

#[test]
fn block_tasks_go_first_unless_fifo() {
    for (ordering, first) in [(SchedulingPolicy::BlockFirst, 3), (SchedulingPolicy::Fifo, 2)] {
        let t0 = Instant::now();
        let mut s = schedule(ordering);
        s.add_device(t0, dev(1, 1e9, 1, 1 << 20));
        let running = dispatches(&s.submit(t0, 1, small("b0")));
        let mut validator = small("v");
        validator.priority = Priority::Validator;
        assert!(s.submit(t0, 2, validator).is_empty());
        assert!(s.submit(t0, 3, small("b1")).is_empty());
        let next = dispatches(&s.answer(t0, running[0].shard_id, honest(&running[0])));
        assert_eq!(next[0].job, first, "{ordering}");
    }
}

#[test]
fn identities_take_turns_among_equals() {
    let t0 = Instant::now();
    let mut s = schedule(SchedulingPolicy::BlockFirst);
    s.add_device(t0, dev(1, 1e9, 1, 1 << 20));
    let spec = |owner: &str, seed: &str| JobSpec { owner: owner.into(), ..small(seed) };
    // Block 1: a's task is served, b's is superseded (cancelled) before a device frees.
    let first = dispatches(&s.submit(t0, 1, spec("a", "a1")));
    s.submit(t0, 2, spec("b", "b1"));
    s.cancel(t0, 2);
    s.answer(t0, first[0].shard_id, honest(&first[0]));
    // Block 2: both arrive together, a first in submission order; b, never served, goes first.
    let blocker = dispatches(&s.submit(t0, 3, spec("x", "x")));
    s.submit(t0, 4, spec("a", "a2"));
    s.submit(t0, 5, spec("b", "b2"));
    let next = dispatches(&s.answer(t0, blocker[0].shard_id, honest(&blocker[0])));
    assert_eq!(next[0].job, 5);
}

#[test]
fn deadlines_fail_waiting_and_running_jobs_and_abort_their_shards() {
    let t0 = Instant::now();
    let mut s = schedule(SchedulingPolicy::Fifo);
    s.add_device(t0, dev(1, 1e9, 1, 1 << 20));
    let mut running = small("r");
    running.deadline = Some(t0 + 2 * SEC);
    let sent = dispatches(&s.submit(t0, 1, running));
    let mut waiting = small("w");
    waiting.deadline = Some(t0 + SEC);
    s.submit(t0, 2, waiting);
    assert_eq!(s.next_wake(), Some(t0 + SEC));
    assert_eq!(finished(s.wake(t0 + SEC)), vec![(2, Err(JobError::DeadlineExceeded))]);
    let actions = s.wake(t0 + 2 * SEC);
    assert_eq!(aborts(&actions), vec![sent[0].shard_id]);
    assert_eq!(finished(actions), vec![(1, Err(JobError::DeadlineExceeded))]);
    // A late answer of the aborted shard is ignored.
    assert!(s.answer(t0 + 3 * SEC, sent[0].shard_id, honest(&sent[0])).is_empty());
    assert_eq!(s.jobs(), 0);
}

#[test]
fn a_cancelled_job_frees_its_device_for_the_next() {
    let t0 = Instant::now();
    let mut s = schedule(SchedulingPolicy::BlockFirst);
    s.add_device(t0, dev(1, 1e9, 1, 1 << 20));
    let sent = dispatches(&s.submit(t0, 1, small("old")));
    s.submit(t0, 2, small("new"));
    let actions = s.cancel(t0, 1);
    assert_eq!(aborts(&actions), vec![sent[0].shard_id]);
    assert_eq!(dispatches(&actions)[0].job, 2);
}

#[test]
fn a_lost_device_hands_its_shards_out_at_once() {
    let t0 = Instant::now();
    let mut s = schedule(SchedulingPolicy::BlockFirst);
    s.add_device(t0, dev(1, 2e9, 1, 1 << 20));
    let sent = dispatches(&s.submit(t0, 1, small("j")));
    assert_eq!(sent[0].device, id(1));
    assert!(s.add_device(t0, dev(2, 1e9, 1, 1 << 20)).is_empty());
    let actions = s.remove_device(t0, id(1), Removal::Gone);
    assert_eq!(aborts(&actions), vec![sent[0].shard_id]);
    let again = dispatches(&actions);
    assert_eq!((again[0].device, again[0].rows.clone()), (id(2), 0..64));
    let done = finished(s.answer(t0, again[0].shard_id, honest(&again[0])));
    assert_eq!(done, vec![(1, Ok(expected_root(&sent[0].challenge)))]);
}

#[test]
fn a_device_that_owes_answers_is_passed_over_while_another_is_free() {
    let t0 = Instant::now();
    let mut s = schedule(SchedulingPolicy::BlockFirst);
    s.add_device(t0, dev(1, 2e9, 1, 1 << 20));
    s.add_device(t0, dev(2, 1e9, 1, 1 << 20));
    // Block 1's task goes to the fastest device, which never answers (its agent died silently); the next
    // block, after the straggler grace (1 s here), supersedes the task.
    let sent = dispatches(&s.submit(t0, 1, small("b1")));
    assert_eq!(sent[0].device, id(1));
    s.cancel(t0 + 2 * SEC, 1);
    // Block 2's task goes to the slower device, which answers; the silent one is used again only when
    // nothing else is free.
    let next = dispatches(&s.submit(t0 + 2 * SEC, 2, small("b2")));
    assert_eq!(next[0].device, id(2));
    let busy = dispatches(&s.submit(t0 + 2 * SEC, 3, small("b3")));
    assert_eq!(busy[0].device, id(1), "no other device free");
    // What it does get is copied to the next device to free up.
    let copy = dispatches(&s.answer(t0 + 2 * SEC, next[0].shard_id, honest(&next[0])));
    assert_eq!((copy[0].job, copy[0].device), (3, id(2)));
    let actions = s.answer(t0 + 2 * SEC, copy[0].shard_id, honest(&copy[0]));
    assert_eq!(aborts(&actions), vec![busy[0].shard_id]);
    assert_eq!(finished(actions).len(), 1);
    // An answer (to a shard still wanted) clears it.
    let again = dispatches(&s.submit(t0 + 2 * SEC, 5, small("b5")));
    assert_eq!(again[0].device, id(2), "the fastest free device is still silent");
    let probe = dispatches(&s.submit(t0 + 2 * SEC, 6, small("b6")));
    assert_eq!(probe[0].device, id(1));
    s.answer(t0 + 3 * SEC, probe[0].shard_id, honest(&probe[0]));
    s.answer(t0 + 3 * SEC, again[0].shard_id, honest(&again[0]));
    assert_eq!(dispatches(&s.submit(t0 + 3 * SEC, 7, small("b7")))[0].device, id(1));
}

#[test]
fn a_device_its_agent_quarantined_is_answered_but_never_believed() {
    let t0 = Instant::now();
    let mut s = schedule(SchedulingPolicy::BlockFirst);
    s.add_device(t0, dev(1, 2e9, 1, 1 << 20));
    s.add_device(t0, dev(2, 1e9, 1, 1 << 20));
    let a = dispatches(&s.submit(t0, 1, small("a")));
    let b = dispatches(&s.submit(t0, 2, small("b")));
    assert_eq!((a[0].device, b[0].device), (id(1), id(2)));
    // The agent's quarantine notice comes before the shard's own answer: nothing is aborted.
    assert!(aborts(&s.remove_device(t0, id(1), Removal::Quarantined)).is_empty());
    // Its answer is heard, but its leaves are not taken: the rows go to device 2 once it is free.
    assert!(dispatches(&s.answer(t0, a[0].shard_id, honest(&a[0]))).is_empty());
    let done = s.answer(t0, b[0].shard_id, honest(&b[0]));
    let again = dispatches(&done);
    assert_eq!((again[0].job, again[0].device), (1, id(2)));
    assert_eq!(finished(s.answer(t0, again[0].shard_id, honest(&again[0]))).len(), 1);
    assert_eq!(s.jobs(), 0);
}

#[test]
fn a_draining_device_finishes_what_it_holds_and_takes_nothing_new() {
    let t0 = Instant::now();
    let mut s = schedule(SchedulingPolicy::BlockFirst);
    s.add_device(t0, dev(1, 1e9, 1, 1 << 20));
    let sent = dispatches(&s.submit(t0, 1, small("a")));
    assert!(s.remove_device(t0, id(1), Removal::Draining).is_empty());
    s.submit(t0, 2, small("b"));
    let actions = s.answer(t0, sent[0].shard_id, honest(&sent[0]));
    assert!(dispatches(&actions).is_empty());
    assert_eq!(finished(actions).len(), 1);
    // Back from draining: it takes the waiting job.
    assert_eq!(dispatches(&s.add_device(t0, dev(1, 1e9, 1, 1 << 20)))[0].job, 2);
}

#[test]
fn an_operator_drained_device_mid_job_finishes_its_shard_and_counts_and_gets_nothing_new() {
    let t0 = Instant::now();
    let mut s = schedule(SchedulingPolicy::BlockFirst);
    s.add_device(t0, dev(1, 1e9, 1, 1 << 20));
    s.add_device(t0, dev(2, 1e9, 1, 1 << 20));
    let job = large("split");
    let challenge = job.challenge.clone();
    let sent = dispatches(&s.submit(t0, 1, job));
    let on_1: Vec<&Dispatch> = sent.iter().filter(|d| d.device == id(1)).collect();
    assert_eq!(on_1.len(), 1, "{sent:?}");
    assert_eq!(s.in_flight_by_device().get(&id(1)), Some(&1));
    // Drained mid-job: nothing is aborted, nothing new is sent to it, it is no longer usable.
    let drained = s.drain_device(t0, id(1));
    assert!(aborts(&drained).is_empty() && dispatches(&drained).is_empty(), "{drained:?}");
    assert!(!s.is_usable(id(1)));
    // Its shard's answer is accepted; device 2 does everything else, and the root is right.
    let mut pending: Vec<Dispatch> = sent.iter().filter(|d| d.device == id(2)).cloned().collect();
    let mut roots = finished(s.answer(t0, on_1[0].shard_id, honest(on_1[0])));
    while let Some(d) = pending.pop() {
        assert_eq!(d.device, id(2), "nothing new for the drained device");
        let actions = s.answer(t0, d.shard_id, honest(&d));
        pending.extend(dispatches(&actions));
        roots.extend(finished(actions));
    }
    assert_eq!(roots.len(), 1);
    assert_eq!(roots[0].1.as_ref().ok(), Some(&expected_root(&challenge)));
    assert_eq!(s.in_flight(), 0);
    assert!(s.in_flight_by_device().is_empty());
    // A job submitted while drained goes to device 2 only; resumed, device 1 takes work again.
    let sent = dispatches(&s.submit(t0, 2, small("while-drained")));
    assert!(sent.iter().all(|d| d.device == id(2)), "{sent:?}");
    s.submit(t0, 3, small("after-resume"));
    let resumed = dispatches(&s.add_device(t0, dev(1, 1e9, 1, 1 << 20)));
    assert_eq!((resumed[0].job, resumed[0].device), (3, id(1)));
    assert!(s.is_usable(id(1)));
}

#[test]
fn a_readmitted_device_is_believed_again_but_a_quarantined_one_back_from_draining_is_not() {
    let t0 = Instant::now();
    let mut s = schedule(SchedulingPolicy::BlockFirst);
    s.add_device(t0, dev(1, 1e9, 1, 1 << 20));
    s.remove_device(t0, id(1), Removal::Quarantined);
    assert!(!s.is_usable(id(1)));
    // Announced again without a readmission (its agent stopped draining): it gets work, but its answers are
    // still not believed: the rows go back in the queue, to it again.
    assert!(s.add_device(t0, dev(1, 1e9, 1, 1 << 20)).is_empty());
    let sent = dispatches(&s.submit(t0, 1, small("a")));
    assert_eq!(sent[0].device, id(1));
    let actions = s.answer(t0, sent[0].shard_id, honest(&sent[0]));
    let retry = dispatches(&actions);
    assert!(finished(actions).is_empty(), "not believed");
    assert_eq!(retry[0].device, id(1));
    s.remove_device(t0, id(1), Removal::Quarantined);
    let actions = s.answer(t0, retry[0].shard_id, honest(&retry[0]));
    assert!(dispatches(&actions).is_empty() && finished(actions).is_empty());
    // Readmitted after its self-test: it takes the job again and its answer completes it.
    let again = dispatches(&s.readmit_device(t0, dev(1, 1e9, 1, 1 << 20)));
    assert_eq!((again[0].job, again[0].device), (1, id(1)));
    let done = finished(s.answer(t0, again[0].shard_id, honest(&again[0])));
    assert_eq!(done.len(), 1);
    assert_eq!(done[0].1.as_ref().ok(), Some(&expected_root(&small("a").challenge)));
}

#[test]
fn timeouts_retry_elsewhere_and_a_failing_device_is_dropped_from_the_job() {
    let t0 = Instant::now();
    let mut s = schedule(SchedulingPolicy::BlockFirst);
    s.add_device(t0, dev(1, 2e9, 1, 1 << 20));
    let sent = dispatches(&s.submit(t0, 1, small("t")));
    let straggler = s.next_wake().expect("a timer");
    assert!(straggler > t0 + SEC && straggler < t0 + 2 * SEC, "the straggler time comes first");
    assert!(dispatches(&s.wake(straggler)).is_empty(), "no other device to re-issue to");
    let timeout = t0 + 60 * SEC;
    assert_eq!(
        s.next_wake(),
        Some(timeout),
        "past its straggler time, the shard's timeout is armed"
    );
    let actions = s.wake(timeout);
    assert_eq!(aborts(&actions), vec![sent[0].shard_id]);
    let mut retry = dispatches(&actions);
    for _ in 0..2 {
        let d = retry.pop().expect("retried on the only device");
        let failed = ShardOutcome::Failed { reason: "device error".into(), transport: false };
        retry = dispatches(&s.answer(timeout, d.shard_id, failed));
    }
    assert!(retry.is_empty(), "three device errors: the device gets nothing more of this job");
    // No other device: the job waits, then fails for want of one.
    let wait_until = s.next_wake().expect("the no-device clock");
    assert_eq!(finished(s.wake(wait_until)), vec![(1, Err(JobError::NoDevices(10 * SEC)))]);
}

#[test]
fn a_straggler_is_re_issued_and_the_first_answer_wins() {
    let t0 = Instant::now();
    let mut s = schedule(SchedulingPolicy::BlockFirst);
    s.add_device(t0, dev(1, 1e9, 1, 1 << 20));
    s.add_device(t0, dev(2, 1e9, 1, 1 << 20));
    let sent = dispatches(&s.submit(t0, 1, large("l")));
    assert_eq!(sent.len(), 2);
    s.answer(t0 + SEC, sent[0].shard_id, honest(&sent[0]));
    // The other shard runs past twice its expected time plus the grace: device 1, free, takes a copy.
    let late = t0 + 10 * SEC;
    let copy = dispatches(&s.wake(late));
    assert_eq!(copy.len(), 1);
    assert_eq!((copy[0].device, copy[0].rows.clone()), (sent[0].device, sent[1].rows.clone()));
    let actions = s.answer(late + SEC, copy[0].shard_id, honest(&copy[0]));
    assert_eq!(aborts(&actions), vec![sent[1].shard_id], "the slow twin is aborted");
    assert_eq!(finished(actions), vec![(1, Ok(expected_root(&large("l").challenge)))]);
}

#[test]
fn a_device_caught_lying_is_quarantined_and_its_work_recomputed_in_every_job() {
    let t0 = Instant::now();
    let mut s = schedule(SchedulingPolicy::BlockFirst);
    s.add_device(t0, dev(1, 2e9, 1, 1 << 20));
    s.add_device(t0, dev(2, 1e9, 1, 1 << 20));
    // Job 1 is split over both devices; device 1 answers its part first (accepted).
    let sent = dispatches(&s.submit(t0, 1, large("x")));
    let on_1 = sent.iter().find(|d| d.device == id(1)).expect("on 1").clone();
    let on_2 = sent.iter().find(|d| d.device == id(2)).expect("on 2").clone();
    let next = dispatches(&s.answer(t0, on_1.shard_id, honest(&on_1)));
    assert!(next.is_empty());
    // Job 2 runs on device 1, whose spot check then fails.
    let j2 = dispatches(&s.submit(t0, 2, small("y")));
    assert_eq!(j2[0].device, id(1));
    let wrong = ShardOutcome::Wrong { passed: 0, reason: "row 3 does not hash to its leaf".into() };
    let actions = s.answer(t0, j2[0].shard_id, wrong);
    assert!(
        actions.iter().any(|a| matches!(a, Action::Quarantine { device, .. } if *device == id(1)))
    );
    // Device 2 finishes job 1's other part, then recomputes what device 1 gave job 1, and job 2.
    assert!(dispatches(&actions).is_empty(), "device 2 is still busy");
    let actions = s.answer(t0, on_2.shard_id, honest(&on_2));
    let mut queue = dispatches(&actions);
    let mut done = finished(actions);
    let mut seen = 0;
    while let Some(d) = queue.pop() {
        seen += 1;
        assert_eq!(d.device, id(2), "nothing more for the quarantined device");
        let actions = s.answer(t0, d.shard_id, honest(&d));
        queue.extend(dispatches(&actions));
        done.extend(finished(actions));
    }
    assert!(seen >= 2, "job 1's accepted part and job 2 were recomputed");
    done.sort_by_key(|(job, _)| *job);
    assert_eq!(
        done,
        vec![
            (1, Ok(expected_root(&large("x").challenge))),
            (2, Ok(expected_root(&small("y").challenge)))
        ]
    );
}

#[test]
fn a_failed_freivalds_check_quarantines_and_recomputes_only_that_shard() {
    let t0 = Instant::now();
    let mut s = schedule(SchedulingPolicy::BlockFirst);
    s.add_device(t0, dev(1, 2e9, 1, 1 << 20));
    s.add_device(t0, dev(2, 1e9, 1, 1 << 20));
    let sent = dispatches(&s.submit(t0, 1, small("f")));
    assert_eq!(sent[0].device, id(1), "the fastest free device");
    let failed = ShardOutcome::CheckFailed { reason: "rows 0..64 on device 0".into() };
    let actions = s.answer(t0, sent[0].shard_id, failed);
    assert!(actions.iter().any(|a| matches!(a, Action::Quarantine { .. })));
    let again = dispatches(&actions);
    assert_eq!(again[0].device, id(2));
    assert_eq!(finished(s.answer(t0, again[0].shard_id, honest(&again[0]))).len(), 1);
}

#[test]
fn a_job_waits_for_a_device_then_runs_or_fails() {
    let t0 = Instant::now();
    let mut s = schedule(SchedulingPolicy::BlockFirst);
    assert!(s.submit(t0, 1, small("a")).is_empty());
    assert_eq!(s.next_wake(), Some(t0 + 10 * SEC));
    // A device in time: the job runs, and the no-device clock does nothing.
    let sent = dispatches(&s.add_device(t0 + SEC, dev(1, 1e9, 1, 1 << 20)));
    assert_eq!(sent.len(), 1);
    assert!(finished(s.wake(t0 + 10 * SEC)).is_empty());
    // A device too small for n=64 (it holds no row) does not count as a device.
    let mut t = schedule(SchedulingPolicy::BlockFirst);
    t.add_device(t0, dev(1, 1e9, 1, 0));
    assert!(t.submit(t0, 1, small("b")).is_empty());
    assert_eq!(finished(t.wake(t0 + 10 * SEC)), vec![(1, Err(JobError::NoDevices(10 * SEC)))]);
}

#[test]
fn a_unit_larger_than_a_device_holds_is_cut_to_fit() {
    let t0 = Instant::now();
    let mut s = schedule(SchedulingPolicy::BlockFirst);
    s.add_device(t0, dev(1, 1e12, 1, 1 << 20));
    let sent = dispatches(&s.submit(t0, 1, small("m")));
    assert_eq!(sent[0].rows, 0..64);
    s.answer(t0, sent[0].shard_id, honest(&sent[0]));
    // A device holding 20 rows at n=64 gets the job in pieces of 20.
    let mut t = schedule(SchedulingPolicy::BlockFirst);
    t.add_device(t0, dev(1, 1e12, 1, 20));
    let mut queue = dispatches(&t.submit(t0, 1, small("m")));
    let mut pieces = Vec::new();
    let mut done = Vec::new();
    while let Some(d) = queue.pop() {
        pieces.push(d.rows.clone());
        let actions = t.answer(t0, d.shard_id, honest(&d));
        queue.extend(dispatches(&actions));
        done.extend(finished(actions));
    }
    assert!(pieces.iter().all(|r| r.len() <= 20), "{pieces:?}");
    assert_eq!(done, vec![(1, Ok(expected_root(&small("m").challenge)))]);
}

/// Many jobs, devices that come and go, answers in any order, some lost: every job still ends with the
/// root of its leaves, and nothing is left behind.
#[test]
fn any_interleaving_ends_every_job_with_its_root() {
    let mut rng = 0x9e37_79b9_7f4a_7c15u64;
    let mut next = move |m: u64| {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng % m
    };
    for round in 0..40 {
        let t0 = Instant::now();
        let mut s = schedule(SchedulingPolicy::BlockFirst);
        let mut now = t0;
        let mut in_flight: Vec<Dispatch> = Vec::new();
        let mut results: std::collections::HashMap<JobId, Result<Digest32, JobError>> =
            std::collections::HashMap::new();
        let mut specs = std::collections::HashMap::new();
        let mut agents = 0;
        let mut live: Vec<u64> = Vec::new();
        let take = |actions: Vec<Action>, in_flight: &mut Vec<Dispatch>| {
            let aborted = aborts(&actions);
            in_flight.retain(|d| !aborted.contains(&d.shard_id));
            in_flight.extend(dispatches(&actions));
            finished(actions)
        };
        for _ in 0..(2 + next(4)) {
            agents += 1;
            live.push(agents);
            let d = dev(agents, 1e9 * (1 + next(3)) as f64, 1 + next(2) as u32, 1 << 20);
            for (job, r) in take(s.add_device(now, d), &mut in_flight) {
                results.insert(job, r);
            }
        }
        let jobs = 3 + next(8);
        for job in 1..=jobs {
            let n = [16, 64, 200, 1024][next(4) as usize];
            let spec = JobSpec::new(
                Challenge::new(format!("r{round}j{job}"), n, 1 + next(2) as u32).expect("c"),
            );
            specs.insert(job, spec.challenge.clone());
            for (job, r) in take(s.submit(now, job, spec), &mut in_flight) {
                results.insert(job, r);
            }
        }
        let mut steps = 0;
        while results.len() < jobs as usize {
            steps += 1;
            assert!(steps < 10_000, "round {round}: no progress");
            now += Duration::from_millis(100);
            let event = next(10);
            let actions = if event == 0 && live.len() > 1 {
                let gone = live.remove(next(live.len() as u64) as usize);
                s.remove_device(now, id(gone), Removal::Gone)
            } else if event == 1 {
                agents += 1;
                live.push(agents);
                s.add_device(now, dev(agents, 1e9, 1, 1 << 20))
            } else if !in_flight.is_empty() {
                let d = in_flight.swap_remove(next(in_flight.len() as u64) as usize);
                let outcome = if next(8) == 0 {
                    ShardOutcome::Failed { reason: "lost".into(), transport: true }
                } else {
                    honest(&d)
                };
                s.answer(now, d.shard_id, outcome)
            } else {
                s.wake(now + 3600 * SEC)
            };
            for (job, r) in take(actions, &mut in_flight) {
                assert!(results.insert(job, r).is_none(), "job {job} finished twice");
            }
        }
        for (job, r) in &results {
            assert_eq!(r, &Ok(expected_root(&specs[job])), "round {round} job {job}");
        }
        assert_eq!((s.jobs(), s.in_flight()), (0, 0), "round {round}");
    }
}
