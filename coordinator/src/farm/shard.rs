//! One shard's trip to its device on a stream of its own: the I/O driver the scheduler actor spawns for a
//! dispatch to an agent older than the shard pipe (`pipe.rs`, protocol 7), and what both paths share: the
//! request a dispatch becomes, and how an answer is judged.
//!
//! It opens a QUIC stream to the device's agent, sends the `RunShard` (with a fresh Freivalds check seed
//! from a CSPRNG, so the device cannot know the check vector while it computes), reads the answer, spot
//! checks it (`spot_check.rs`), and reports a [`ShardOutcome`] to the actor. Aborted by the actor (a
//! superseded or cancelled job, a twin that lost, a lost device), it tells the agent with
//! [`SHARD_CANCELLED`] so a shard still waiting there never runs.
//!
//! A shard that covers a whole iteration (every small job) goes to an agent that can as a `RunShardRoot`:
//! the agent answers the iteration's Merkle root, 32 bytes instead of 32 a row, and the spot checks fetch
//! rows with their paths. The coordinator then neither receives nor hashes the leaves of small jobs, which
//! were most of its CPU time per shard. Agents of protocol 7 get those on their shard pipe instead.

use super::{
    aggregator::ShardResult,
    registry::AgentLink,
    schedule::{Dispatch, ShardId, ShardOutcome},
    spot_check::{Committed, ShardUnderCheck, SpotCheckConfig, Verdict, check_shard},
};
use cpc_common::{
    quic::{FrameIoError, call},
    wire::{CheckTiming, RunShard, RunShardRoot, SHARD_CANCELLED, ShardAnswer},
};
use rand::RngCore as _;
use std::sync::Arc;
use tokio::sync::oneshot;

/// Where shard outcomes go (the scheduler actor): any number at once, so that a pipe frame of answers
/// is one message.
pub(crate) type OutcomeSink = Arc<dyn Fn(Vec<(ShardId, ShardOutcome)>) + Send + Sync>;

/// Why an answer is not a result.
pub(crate) enum ShardError {
    Transport(String),
    Device(String),
    CheckFailed(String),
    Wrong(String),
}

/// Runs `dispatch` on its device over `link` and hands the outcome to `sink`; when `cancel` fires first,
/// stops the request stream with [`SHARD_CANCELLED`] and reports nothing.
pub(crate) async fn run(
    link: AgentLink,
    dispatch: Dispatch,
    spot: SpotCheckConfig,
    cancel: oneshot::Receiver<()>,
    sink: OutcomeSink,
) {
    let req = request(&dispatch);
    let by_root = link.answers_roots() && covers_iteration(&dispatch);
    let conn = link.conn;
    let (mut send, mut recv) = match conn.open_bi().await {
        Ok(streams) => streams,
        Err(e) => {
            let outcome = ShardOutcome::Failed { reason: e.to_string(), transport: true };
            sink(vec![(dispatch.shard_id, outcome)]);
            return;
        }
    };
    let shard_id = req.shard_id;
    let answer = async {
        let answer = if by_root {
            call(&mut send, &mut recv, RunShardRoot(req)).await
        } else {
            call(&mut send, &mut recv, req).await
        };
        read_answer(answer, shard_id, by_root)
    };
    let answered = tokio::select! {
        answered = answer => answered,
        _ = cancel => {
            let _ = recv.stop(SHARD_CANCELLED.into());
            let _ = send.reset(SHARD_CANCELLED.into());
            return;
        }
    };
    let outcome = match accept(&dispatch, answered) {
        Ok((result, check)) => spot_check(&conn, &dispatch, result, check, &spot).await,
        Err(outcome) => outcome,
    };
    sink(vec![(dispatch.shard_id, outcome)]);
}

/// The request `dispatch` becomes, with a fresh check seed from the thread's CSPRNG (ChaCha, seeded and
/// reseeded from the OS): unpredictable to the device, without a system call per shard.
pub(crate) fn request(dispatch: &Dispatch) -> RunShard {
    RunShard {
        shard_id: dispatch.shard_id,
        challenge: dispatch.challenge.clone(),
        iteration: dispatch.iteration,
        rows: (dispatch.rows.start, dispatch.rows.end),
        device: dispatch.device.index,
        check_seed: rand::thread_rng().next_u64(),
    }
}

/// Whether `dispatch` covers a whole iteration (rows `0..n`): what an agent can answer by its root.
pub(crate) fn covers_iteration(dispatch: &Dispatch) -> bool {
    dispatch.rows == (0..dispatch.challenge.matrix_size())
}

/// What the agent's answer means for shard `shard_id` (asked for its root when `by_root`; its leaves are
/// a right answer to that too).
pub(crate) fn read_answer(
    answer: Result<Option<ShardAnswer>, FrameIoError>,
    shard_id: u64,
    by_root: bool,
) -> Result<(ShardResult, Option<CheckTiming>), ShardError> {
    match answer {
        Ok(Some(ShardAnswer::Done { shard_id: id, leaves, check })) if id == shard_id => {
            Ok((ShardResult::Leaves(leaves), check))
        }
        Ok(Some(ShardAnswer::Root { shard_id: id, root, check })) if id == shard_id => {
            if !by_root {
                return Err(ShardError::Wrong(
                    "answered a root where its leaves were asked".into(),
                ));
            }
            Ok((ShardResult::Root(root), check))
        }
        Ok(Some(ShardAnswer::CheckFailed { shard_id: id, reason })) if id == shard_id => {
            Err(ShardError::CheckFailed(reason))
        }
        Ok(Some(ShardAnswer::Failed { reason, .. } | ShardAnswer::Refused { reason })) => {
            Err(ShardError::Device(reason))
        }
        Ok(Some(
            ShardAnswer::Done { shard_id: id, .. }
            | ShardAnswer::Root { shard_id: id, .. }
            | ShardAnswer::CheckFailed { shard_id: id, .. },
        )) => Err(ShardError::Wrong(format!("answered for shard {id}, not its own {shard_id}"))),
        Ok(None) => Err(ShardError::Transport("stream closed without an answer".into())),
        Err(FrameIoError::Codec(e)) => Err(ShardError::Wrong(format!("undecodable answer: {e}"))),
        Err(e) => Err(ShardError::Transport(e.to_string())),
    }
}

/// An answer that still needs its spot check: the result, and what the device's own check cost.
pub(crate) type Accepted = (ShardResult, Option<CheckTiming>);

/// Judges what can be judged of an answer without the network: a failure or a malformed answer is the
/// outcome itself; a well-formed result is `Ok`, for [`spot_check`].
pub(crate) fn accept(
    dispatch: &Dispatch,
    answered: Result<Accepted, ShardError>,
) -> Result<Accepted, ShardOutcome> {
    let rows = dispatch.rows.len();
    match answered {
        Err(ShardError::Transport(reason)) => Err(ShardOutcome::Failed { reason, transport: true }),
        Err(ShardError::Device(reason)) => Err(ShardOutcome::Failed { reason, transport: false }),
        Err(ShardError::CheckFailed(reason)) => Err(ShardOutcome::CheckFailed { reason }),
        Err(ShardError::Wrong(reason)) => Err(ShardOutcome::Wrong { passed: 0, reason }),
        Ok((ShardResult::Leaves(leaves), _)) if leaves.len() != rows => Err(ShardOutcome::Wrong {
            passed: 0,
            reason: format!("{} leaves for {rows} rows", leaves.len()),
        }),
        Ok(accepted) => Ok(accepted),
    }
}

/// Spot checks an accepted result over `conn` (fetching `spot.rows_per_shard` rows; none when that is 0)
/// and gives the shard's outcome.
pub(crate) async fn spot_check(
    conn: &quinn::Connection,
    dispatch: &Dispatch,
    result: ShardResult,
    check: Option<CheckTiming>,
    spot: &SpotCheckConfig,
) -> ShardOutcome {
    let answer = match &result {
        ShardResult::Leaves(leaves) => Committed::Leaves(leaves),
        ShardResult::Root(root) => {
            Committed::Root { root: *root, rows: dispatch.rows.len() as u32 }
        }
    };
    let shard = ShardUnderCheck {
        shard_id: dispatch.shard_id,
        challenge: &dispatch.challenge,
        iteration: dispatch.iteration,
        first_row: dispatch.rows.start,
        answer,
    };
    match check_shard(conn, shard, spot).await {
        Verdict::Passed { rows } => ShardOutcome::Verified { result, checked: rows, check },
        Verdict::Failed { passed, reason } => ShardOutcome::Wrong { passed, reason },
        Verdict::Inconclusive(reason) => ShardOutcome::Failed { reason, transport: true },
    }
}
