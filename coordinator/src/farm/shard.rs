//! One shard's trip to its device: the I/O driver the scheduler actor spawns for every dispatch.
//!
//! It opens a QUIC stream to the device's agent, sends the `RunShard` (with a fresh Freivalds check seed
//! from the OS, so the device cannot know the check vector while it computes), reads the answer, spot
//! checks it (`spot_check.rs`), and reports a [`ShardOutcome`] to the actor. Aborted by the actor (a
//! superseded or cancelled job, a twin that lost, a lost device), it tells the agent with
//! [`SHARD_CANCELLED`] so a shard still waiting there never runs.
//!
//! A shard that covers a whole iteration (every small job) goes to an agent that can as a `RunShardRoot`:
//! the agent answers the iteration's Merkle root, 32 bytes instead of 32 a row, and the spot checks fetch
//! rows with their paths. The coordinator then neither receives nor hashes the leaves of small jobs, which
//! were most of its CPU time per shard.

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
use tokio::sync::oneshot;

/// Where a shard's outcome goes (the scheduler actor).
pub(crate) type OutcomeSink = Box<dyn FnOnce(ShardId, ShardOutcome) + Send>;

enum ShardError {
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
    let req = RunShard {
        shard_id: dispatch.shard_id,
        challenge: dispatch.challenge.clone(),
        iteration: dispatch.iteration,
        rows: (dispatch.rows.start, dispatch.rows.end),
        device: dispatch.device.index,
        check_seed: rand::rngs::OsRng.next_u64(),
    };
    let by_root = link.answers_roots() && dispatch.rows == (0..dispatch.challenge.matrix_size());
    let conn = link.conn;
    let (mut send, mut recv) = match conn.open_bi().await {
        Ok(streams) => streams,
        Err(e) => {
            let outcome = ShardOutcome::Failed { reason: e.to_string(), transport: true };
            sink(dispatch.shard_id, outcome);
            return;
        }
    };
    let answer = async {
        let answer = if by_root {
            call(&mut send, &mut recv, RunShardRoot(req.clone())).await
        } else {
            call(&mut send, &mut recv, req.clone()).await
        };
        read_answer(answer, req.shard_id, by_root)
    };
    let answered = tokio::select! {
        answered = answer => answered,
        _ = cancel => {
            let _ = recv.stop(SHARD_CANCELLED.into());
            let _ = send.reset(SHARD_CANCELLED.into());
            return;
        }
    };
    let outcome = judge(&conn, &req, &dispatch, answered, &spot).await;
    sink(dispatch.shard_id, outcome);
}

/// What the agent's answer means for shard `shard_id` (asked for its root when `by_root`; its leaves are
/// a right answer to that too).
fn read_answer(
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

async fn judge(
    conn: &quinn::Connection,
    req: &RunShard,
    dispatch: &Dispatch,
    answered: Result<(ShardResult, Option<CheckTiming>), ShardError>,
    spot: &SpotCheckConfig,
) -> ShardOutcome {
    let rows = dispatch.rows.len();
    match answered {
        Err(ShardError::Transport(reason)) => ShardOutcome::Failed { reason, transport: true },
        Err(ShardError::Device(reason)) => ShardOutcome::Failed { reason, transport: false },
        Err(ShardError::CheckFailed(reason)) => ShardOutcome::CheckFailed { reason },
        Err(ShardError::Wrong(reason)) => ShardOutcome::Wrong { passed: 0, reason },
        Ok((ShardResult::Leaves(leaves), _)) if leaves.len() != rows => ShardOutcome::Wrong {
            passed: 0,
            reason: format!("{} leaves for {rows} rows", leaves.len()),
        },
        Ok((result, check)) => {
            let answer = match &result {
                ShardResult::Leaves(leaves) => Committed::Leaves(leaves),
                ShardResult::Root(root) => Committed::Root { root: *root, rows: rows as u32 },
            };
            let shard = ShardUnderCheck {
                shard_id: req.shard_id,
                challenge: &dispatch.challenge,
                iteration: req.iteration,
                first_row: req.rows.0,
                answer,
            };
            match check_shard(conn, shard, spot).await {
                Verdict::Passed { rows } => ShardOutcome::Verified { result, checked: rows, check },
                Verdict::Failed { passed, reason } => ShardOutcome::Wrong { passed, reason },
                Verdict::Inconclusive(reason) => ShardOutcome::Failed { reason, transport: true },
            }
        }
    }
}
