//! The shard pipe (farm protocol 7): one long-lived QUIC stream per agent connection that carries every
//! shard the scheduler sends that agent, and their answers. The scheduler opens it as the agent's devices
//! join, so that no shard waits for it.
//!
//! Small jobs run whole, one shard each, and a busy farm runs thousands a second; a large job's shards go
//! out to all devices at once. On a stream each, every
//! shard cost both ends a stream set-up and teardown, a task, flow-control frames and a wake-up per
//! packet. On the pipe, whatever the scheduler dispatched to an agent while the pipe's writer was busy goes
//! out as one [`ShardPipeOrders`] frame, and the agent answers the same way ([`ShardPipeAnswers`]): a
//! burst of shards costs a few packets, and one message to the scheduler actor per frame of answers.
//!
//! Cancelling a shard is an order on the pipe. The pipe keeps the shards it sent until they are answered
//! or cancelled. When the stream or the connection fails, each of them, and each shard sent to the pipe
//! after, is a transport failure (the scheduler then opens a new pipe for the next shard); when the agent
//! writes answers that do not decode, each shard it held is answered wrong, as an undecodable answer on a
//! shard's own stream is, so that its devices are quarantined and the shards recomputed elsewhere. Spot
//! checks of piped shards fetch their rows on streams of their own, as before.

use super::{
    schedule::{Dispatch, ShardId, ShardOutcome},
    shard::{self, OutcomeSink},
    spot_check::SpotCheckConfig,
};
use cpc_common::{
    codec::FrameDecoder,
    quic::{FrameIoError, read_frame, write_frame},
    wire::{
        MAX_PIPE_BATCH, OpenShardPipe, Request, ShardPipeAnswers, ShardPipeOrder, ShardPipeOrders,
    },
};
use rustc_hash::FxHashMap;
use std::sync::{Arc, Mutex, PoisonError};
use tokio::sync::mpsc;

/// What the scheduler asks of a pipe.
enum Command {
    /// Send this shard.
    Run(Dispatch),
    /// The shard is no longer wanted.
    Cancel(ShardId),
}

/// Shards sent on a pipe and not yet answered or cancelled, with whether each was asked for its root (keyed
/// by the ids this coordinator hands out: FxHash).
type InFlight = Arc<Mutex<FxHashMap<ShardId, (Dispatch, bool)>>>;

/// Why a pipe ended.
#[derive(Debug)]
enum PipeEnd {
    /// The stream or the connection failed, or the agent ended or refused the pipe: nobody's fault that
    /// shows in a result.
    Lost(String),
    /// The agent wrote answers that do not decode.
    Garbled(String),
}

/// The scheduler's end of one agent connection's shard pipe. Dropping it finishes the pipe: shards
/// already sent are still answered (and reported), none can be sent.
#[derive(Debug)]
pub(crate) struct ShardPipe {
    commands: mpsc::UnboundedSender<Command>,
}

impl ShardPipe {
    /// Opens a pipe on `conn`; outcomes go to `sink`. Must be called within the farm's tokio runtime.
    pub(crate) fn open(conn: quinn::Connection, spot: SpotCheckConfig, sink: OutcomeSink) -> Self {
        let (commands, rx) = mpsc::unbounded_channel();
        tokio::spawn(drive(conn, rx, spot, sink));
        Self { commands }
    }

    /// Sends `dispatch` on the pipe; false when the pipe has ended (its stream failed) and the shard
    /// did not go.
    #[must_use]
    pub(crate) fn run(&self, dispatch: Dispatch) -> bool {
        self.commands.send(Command::Run(dispatch)).is_ok()
    }

    /// Whether the pipe has ended (its stream failed): it takes no more shards.
    pub(crate) fn has_ended(&self) -> bool {
        self.commands.is_closed()
    }

    /// Cancels `shard`: the agent drops or stops it, and its answer, should one cross the order, is not
    /// reported.
    pub(crate) fn cancel(&self, shard: ShardId) {
        let _ = self.commands.send(Command::Cancel(shard));
    }
}

/// The pipe's writer: opens the stream, starts the reader, and writes what the scheduler sends, as many
/// orders to a frame as are waiting. Ends when the scheduler drops its end (finishing the stream) or the
/// pipe fails (failing every shard in flight and every one still coming).
async fn drive(
    conn: quinn::Connection,
    mut commands: mpsc::UnboundedReceiver<Command>,
    spot: SpotCheckConfig,
    sink: OutcomeSink,
) {
    let in_flight = InFlight::default();
    let opened = async {
        let (mut send, recv) = conn.open_bi().await.map_err(|e| e.to_string())?;
        write_frame(&mut send, &Request::OpenShardPipe(OpenShardPipe))
            .await
            .map_err(|e| e.to_string())?;
        Ok::<_, String>((send, recv))
    };
    let (mut send, recv) = match opened.await {
        Ok(streams) => streams,
        Err(e) => {
            let end = PipeEnd::Lost(format!("cannot open the shard pipe: {e}"));
            fail_all(&mut commands, &in_flight, &end, &sink);
            return;
        }
    };
    let mut reader = tokio::spawn(read_answers(conn, recv, in_flight.clone(), spot, sink.clone()));
    let mut batch = Vec::with_capacity(MAX_PIPE_BATCH);
    let end = loop {
        tokio::select! {
            biased;
            ended = &mut reader => {
                break ended.unwrap_or_else(|e| {
                    PipeEnd::Lost(format!("the shard pipe's reader stopped: {e}"))
                });
            }
            received = commands.recv_many(&mut batch, MAX_PIPE_BATCH) => {
                if received == 0 {
                    // The scheduler is done with this agent: no more orders. Answers of shards still out
                    // are read (and reported) until the agent finishes its half.
                    let _ = send.finish();
                    let _ = reader.await;
                    return;
                }
                let orders = orders(&mut batch, &in_flight);
                if orders.is_empty() {
                    continue;
                }
                if let Err(e) = write_frame(&mut send, &ShardPipeOrders(orders)).await {
                    reader.abort();
                    break PipeEnd::Lost(format!("writing to the shard pipe failed: {e}"));
                }
            }
        }
    };
    let _ = send.reset(0u32.into());
    fail_all(&mut commands, &in_flight, &end, &sink);
}

/// Turns waiting commands into orders, noting each shard sent as in flight; a cancellation goes out only
/// for a shard still in flight (one answered meanwhile needs none).
fn orders(batch: &mut Vec<Command>, in_flight: &InFlight) -> Vec<ShardPipeOrder> {
    let mut in_flight = in_flight.lock().unwrap_or_else(PoisonError::into_inner);
    let mut orders = Vec::with_capacity(batch.len());
    for command in batch.drain(..) {
        match command {
            Command::Run(dispatch) => {
                let request = shard::request(&dispatch);
                let by_root = shard::covers_iteration(&dispatch);
                orders.push(if by_root {
                    ShardPipeOrder::RunRoot(request)
                } else {
                    ShardPipeOrder::Run(request)
                });
                in_flight.insert(dispatch.shard_id, (dispatch, by_root));
            }
            Command::Cancel(shard_id) => {
                if in_flight.remove(&shard_id).is_some() {
                    orders.push(ShardPipeOrder::Cancel { shard_id });
                }
            }
        }
    }
    orders
}

/// The pipe has ended: closes it to new shards and reports every shard in flight as `end` makes it (a
/// transport failure, or a wrong answer when the agent garbled the pipe), and every one still waiting to
/// be written, which never reached the agent, as a transport failure.
fn fail_all(
    commands: &mut mpsc::UnboundedReceiver<Command>,
    in_flight: &InFlight,
    end: &PipeEnd,
    sink: &OutcomeSink,
) {
    commands.close();
    let (PipeEnd::Lost(reason) | PipeEnd::Garbled(reason)) = end;
    let lost = || ShardOutcome::Failed {
        reason: format!("the shard pipe to the agent failed: {reason}"),
        transport: true,
    };
    let held = || match end {
        PipeEnd::Lost(_) => lost(),
        PipeEnd::Garbled(_) => ShardOutcome::Wrong { passed: 0, reason: reason.clone() },
    };
    let mut ended: Vec<(ShardId, ShardOutcome)> = in_flight
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .drain()
        .map(|(shard, _)| (shard, held()))
        .collect();
    while let Ok(command) = commands.try_recv() {
        if let Command::Run(dispatch) = command {
            ended.push((dispatch.shard_id, lost()));
        }
    }
    if ended.is_empty() {
        return;
    }
    tracing::warn!(shards = ended.len(), ?end, "shard pipe ended with shards in flight");
    sink(ended);
}

/// The pipe's reader: judges each frame of answers and reports them to the scheduler in one message
/// (a result to spot check is checked on a task of its own and reported when done). Answers why the
/// pipe ended.
async fn read_answers(
    conn: quinn::Connection,
    mut recv: quinn::RecvStream,
    in_flight: InFlight,
    spot: SpotCheckConfig,
    sink: OutcomeSink,
) -> PipeEnd {
    let mut dec = FrameDecoder::new();
    loop {
        let answers = match read_frame::<ShardPipeAnswers>(&mut recv, &mut dec).await {
            Ok(Some(ShardPipeAnswers(answers))) => answers,
            Ok(None) => return PipeEnd::Lost("the agent ended the shard pipe".into()),
            Err(FrameIoError::Codec(e)) => {
                return PipeEnd::Garbled(format!("undecodable answer on the shard pipe: {e}"));
            }
            Err(e) => return PipeEnd::Lost(e.to_string()),
        };
        let mut judged = Vec::with_capacity(answers.len());
        for answer in answers {
            let Some(shard_id) = answer.shard_id() else {
                return PipeEnd::Lost(format!("the agent refused the pipe's orders: {answer:?}"));
            };
            // Not in flight: cancelled (the answer crossed the order) or never sent here; either way
            // nobody waits for it.
            let dispatch =
                in_flight.lock().unwrap_or_else(PoisonError::into_inner).remove(&shard_id);
            let Some((dispatch, by_root)) = dispatch else { continue };
            let answered = shard::read_answer(Ok(Some(answer)), shard_id, by_root);
            match shard::accept(&dispatch, answered) {
                Err(outcome) => judged.push((shard_id, outcome)),
                Ok((result, check)) if spot.rows_per_shard == 0 => {
                    judged.push((shard_id, ShardOutcome::Verified { result, checked: 0, check }));
                }
                Ok((result, check)) => {
                    let (conn, spot, sink) = (conn.clone(), spot.clone(), sink.clone());
                    tokio::spawn(async move {
                        let outcome =
                            shard::spot_check(&conn, &dispatch, result, check, &spot).await;
                        sink(vec![(shard_id, outcome)]);
                    });
                }
            }
        }
        if !judged.is_empty() {
            sink(judged);
        }
    }
}
