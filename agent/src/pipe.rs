//! The shard pipe (protocol version 7): one long-lived request stream per connection that carries
//! shards and their answers many to a frame, where a request stream of its own would cost
//! each shard a stream, a task, a round of flow-control frames and a few packets. It exists because a busy
//! farm runs small jobs by the thousand each second, each one shard answered by its Merkle root, and a
//! large job's shards go out to a host's devices in one burst.
//!
//! The coordinator opens it with `OpenShardPipe` as a request stream's first frame, then writes
//! [`ShardPipeOrders`] frames. Each `Run` or `RunRoot` runs in a task of its own exactly as a `RunShard` or
//! `RunShardRoot` on its own stream does ([`ConnState::run_on_device`]); a `Cancel` cancels the shard if it is still in hand, and a
//! cancelled shard is never answered. One writer task sends the answers as [`ShardPipeAnswers`] frames, each
//! with every answer that is ready when it writes (up to [`MAX_PIPE_BATCH`]).
//!
//! How a pipe ends:
//! - the coordinator finishes its half: the shards in hand are still run and answered, then the agent
//!   finishes its own half;
//! - the stream is reset or stopped, or the connection lost: the shards in hand are cancelled (nobody would
//!   read their answers);
//! - an orders frame that does not decode: the agent answers `Refused` with the reason, cancels the shards
//!   in hand and finishes its half.

use crate::{
    device::{AnswerWith, ShardCancel},
    session::ConnState,
};
use cpc_common::{
    codec::FrameDecoder,
    quic::{FrameIoError, read_frame, write_frame},
    wire::{
        MAX_PIPE_ANSWER_LEAF_BYTES, MAX_PIPE_BATCH, MAX_PIPE_ORDERS_BYTES, RunShard, ShardAnswer,
        ShardPipeAnswers, ShardPipeOrder, ShardPipeOrders,
    },
};
use rustc_hash::FxHashMap;
use std::{cell::RefCell, rc::Rc, sync::Arc};
use tokio::sync::mpsc;

/// Serves a shard pipe whose `OpenShardPipe` has been read from `recv`, until it ends (see the module doc).
/// Returns when the coordinator's half ends; the shards in hand and the writer finish on their own.
pub(crate) async fn serve(
    send: quinn::SendStream,
    mut recv: quinn::RecvStream,
    state: Arc<ConnState>,
) {
    let (answers, ready) = mpsc::unbounded_channel();
    actix_rt::spawn(write_answers(send, ready));
    // The pipe's tasks all run on this arbiter's thread: the map is never shared across threads.
    let in_hand = Rc::new(RefCell::new(InHand::default()));
    let mut dec = FrameDecoder::with_limit(MAX_PIPE_ORDERS_BYTES);
    loop {
        let orders = match read_frame::<ShardPipeOrders>(&mut recv, &mut dec).await {
            Ok(Some(ShardPipeOrders(orders))) => orders,
            // The coordinator finished its half: each shard in hand holds a sender, so the writer answers
            // them all before it finishes.
            Ok(None) => return,
            Err(FrameIoError::Codec(e)) => {
                tracing::warn!(session = state.session, "undecodable shard pipe orders: {e}");
                let _ = answers.send(ShardAnswer::Refused {
                    reason: format!("undecodable shard pipe orders: {e}"),
                });
                in_hand.borrow_mut().cancel_all();
                return;
            }
            Err(e) => {
                tracing::debug!(session = state.session, "shard pipe closed: {e}");
                in_hand.borrow_mut().cancel_all();
                return;
            }
        };
        state.activity.touch();
        for order in orders {
            match order {
                ShardPipeOrder::Run(req) => {
                    start(&state, &in_hand, &answers, req, AnswerWith::Leaves);
                }
                ShardPipeOrder::RunRoot(req) => {
                    start(&state, &in_hand, &answers, req, AnswerWith::Root);
                }
                ShardPipeOrder::Cancel { shard_id } => in_hand.borrow_mut().cancel(shard_id),
            }
        }
    }
}

/// Runs `req` in a task of its own, in hand until it is answered or cancelled.
fn start(
    state: &Arc<ConnState>,
    in_hand: &Rc<RefCell<InHand>>,
    answers: &mpsc::UnboundedSender<ShardAnswer>,
    req: RunShard,
    answer_with: AnswerWith,
) {
    let shard_id = req.shard_id;
    let Some((ticket, cancel)) = in_hand.borrow_mut().insert(shard_id) else {
        // Shard ids are unique per coordinator: one answer per id keeps the coordinator's books straight.
        tracing::warn!(
            session = state.session,
            shard_id,
            "shard ordered again while in hand on the pipe: the first one answers"
        );
        return;
    };
    let (state, in_hand, answers) = (state.clone(), in_hand.clone(), answers.clone());
    actix_rt::spawn(async move {
        // Cancelled only by an order (or the pipe's end), which the device sees through `cancel` itself.
        let abandoned = std::future::pending();
        let answer = state.run_on_device(req, answer_with, cancel, abandoned).await;
        in_hand.borrow_mut().remove(shard_id, ticket);
        if let Some(answer) = answer {
            // The writer is gone only once a write failed: nobody reads the answer then.
            let _ = answers.send(answer);
        }
    });
}

/// Writes answers as they become ready, all those ready at once (up to [`MAX_PIPE_BATCH`], and a new frame
/// past [`MAX_PIPE_ANSWER_LEAF_BYTES`] of leaves) in one frame; finishes the stream once no shard can
/// answer any more. A failed write (the coordinator stopped reading, the connection is gone) ends it: the
/// answers left are dropped.
async fn write_answers(
    mut send: quinn::SendStream,
    mut ready: mpsc::UnboundedReceiver<ShardAnswer>,
) {
    let mut batch = Vec::with_capacity(MAX_PIPE_BATCH);
    while ready.recv_many(&mut batch, MAX_PIPE_BATCH).await > 0 {
        for frame in frames(&mut batch) {
            if let Err(e) = write_frame(&mut send, &frame).await {
                tracing::debug!("shard pipe answers not sent: {e}");
                return;
            }
        }
    }
    let _ = send.finish();
}

/// Splits `batch` (emptied) into frames of at most [`MAX_PIPE_ANSWER_LEAF_BYTES`] of leaves each, or one
/// answer where one alone carries more.
fn frames(batch: &mut Vec<ShardAnswer>) -> Vec<ShardPipeAnswers> {
    let mut frames = vec![ShardPipeAnswers(Vec::with_capacity(batch.len()))];
    let mut bytes = 0;
    for answer in batch.drain(..) {
        let size = answer.leaf_bytes();
        let current = frames.last().map_or(0, |f| f.0.len());
        if current > 0 && bytes + size > MAX_PIPE_ANSWER_LEAF_BYTES {
            frames.push(ShardPipeAnswers(Vec::new()));
            bytes = 0;
        }
        bytes += size;
        if let Some(frame) = frames.last_mut() {
            frame.0.push(answer);
        }
    }
    frames
}

/// The pipe's shards in hand, by shard id, with what cancels each (ids are the pinned coordinator's own).
#[derive(Debug, Default)]
struct InHand {
    shards: FxHashMap<u64, (u64, ShardCancel)>,
    /// Numbers the shards, so that a shard ends only its own entry: a cancelled shard still winding down
    /// must not remove a later shard of the same id.
    tickets: u64,
}

impl InHand {
    /// Takes `shard_id` in hand: its ticket and cancel, or `None` if a shard of that id is in hand already.
    fn insert(&mut self, shard_id: u64) -> Option<(u64, ShardCancel)> {
        if self.shards.contains_key(&shard_id) {
            return None;
        }
        self.tickets += 1;
        let cancel = ShardCancel::default();
        self.shards.insert(shard_id, (self.tickets, cancel.clone()));
        Some((self.tickets, cancel))
    }

    /// The shard is done (answered or cancelled).
    fn remove(&mut self, shard_id: u64, ticket: u64) {
        if self.shards.get(&shard_id).is_some_and(|(t, _)| *t == ticket) {
            self.shards.remove(&shard_id);
        }
    }

    /// Cancels the shard, if it is in hand.
    fn cancel(&mut self, shard_id: u64) {
        if let Some((_, cancel)) = self.shards.remove(&shard_id) {
            cancel.cancel();
        }
    }

    /// Cancels every shard in hand.
    fn cancel_all(&mut self) {
        for (_, (_, cancel)) in self.shards.drain() {
            cancel.cancel();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_are_framed_by_count_and_by_leaf_bytes() {
        let done = |shard_id, rows: usize| ShardAnswer::Done {
            shard_id,
            leaves: vec![[0; 32]; rows],
            check: None,
        };
        let failed = |shard_id| ShardAnswer::Failed { shard_id, reason: "r".into() };
        let big = MAX_PIPE_ANSWER_LEAF_BYTES / 32;
        let mut batch = vec![failed(1), done(2, 10), failed(3)];
        let framed = frames(&mut batch);
        assert!(batch.is_empty());
        assert_eq!(framed.len(), 1, "small answers share a frame");
        assert_eq!(framed[0].0.len(), 3);
        let mut batch =
            vec![done(1, big / 2), done(2, big / 2), done(3, 1), done(4, 2 * big), failed(5)];
        let ids: Vec<Vec<u64>> = frames(&mut batch)
            .iter()
            .map(|f| f.0.iter().filter_map(ShardAnswer::shard_id).collect())
            .collect();
        assert_eq!(ids, vec![vec![1, 2], vec![3], vec![4], vec![5]]);
    }

    #[test]
    fn a_shard_ends_only_its_own_entry() {
        let mut in_hand = InHand::default();
        let (first, cancel_first) = in_hand.insert(7).expect("taken");
        assert!(in_hand.insert(7).is_none(), "one shard of an id in hand at a time");
        in_hand.cancel(7);
        assert!(cancel_first.is_cancelled());
        let (second, cancel_second) = in_hand.insert(7).expect("taken again once cancelled");
        in_hand.remove(7, first);
        assert!(in_hand.shards.contains_key(&7), "the cancelled first shard left the second alone");
        in_hand.cancel(8);
        in_hand.cancel_all();
        assert!(cancel_second.is_cancelled());
        assert!(in_hand.shards.is_empty());
        in_hand.remove(7, second);
    }
}
