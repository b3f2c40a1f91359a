//! The shard pipe over real loopback QUIC (protocol version 7): a test coordinator opens a pipe to an
//! in-process agent of simulated devices and writes orders frames by hand. Shards ordered together on fast
//! devices all come back by their roots, several to a frame; a shard for a device the agent does not have
//! fails; a cancelled shard, waiting or running, is never answered and is counted; the device then serves
//! the next shard; a coordinator that finishes its half gets the shards in hand answered and then the end of
//! the agent's half; garbage on the pipe is refused and a reset pipe drops its shards.

use crate::harness::{
    STEP_LIMIT, ShardSeries, admit, exclusive_metrics, spawn_agent, test_coordinator, wait_for,
};
use cpc_common::{
    codec::{self, FrameDecoder},
    hashing::sha256,
    merkle::merkle_root,
    quic::{read_frame, write_frame},
    synthetic::Challenge,
    wire::{
        OpenShardPipe, Request, RunShard, ShardAnswer, ShardPipeAnswers, ShardPipeOrder,
        ShardPipeOrders,
    },
};
use metrics_exporter_prometheus::PrometheusHandle;
use std::collections::BTreeMap;

/// A fast device: a whole n = 64 product is a nanosecond.
const FAST_TOPS: f64 = 660.0;
/// A slow device: 10⁶ ops/s, so a whole n = 4096 product takes about 38 hours and a whole n = 16 one 8 ms.
const SLOW_TOPS: f64 = 1e-6;

/// Run shard `shard_id`, a whole iteration at size `n`, on `device`, answered by its root.
fn run_root(shard_id: u64, n: u32, device: u32) -> ShardPipeOrder {
    ShardPipeOrder::RunRoot(RunShard {
        shard_id,
        challenge: Challenge::new(format!("pipe-{shard_id}"), n, 1).expect("challenge"),
        iteration: 0,
        rows: (0, n),
        device,
        check_seed: shard_id,
    })
}

/// The root a simulated device answers at size `n`: that of n leaves, each `sha256` of an all-zero row.
fn simulated_root(n: u32) -> [u8; 32] {
    merkle_root(&vec![sha256(vec![0u8; 4 * n as usize]); n as usize])
}

/// Opens a pipe: a new stream whose first frame is `OpenShardPipe`.
async fn open_pipe(conn: &quinn::Connection) -> (quinn::SendStream, quinn::RecvStream) {
    let (mut send, recv) = conn.open_bi().await.expect("open");
    write_frame(&mut send, &Request::OpenShardPipe(OpenShardPipe)).await.expect("open the pipe");
    (send, recv)
}

/// Writes one orders frame.
async fn order(send: &mut quinn::SendStream, orders: Vec<ShardPipeOrder>) {
    write_frame(send, &ShardPipeOrders(orders)).await.expect("orders");
}

/// The agent's next answers frame; `None` once it finished its half.
async fn next_answers(
    recv: &mut quinn::RecvStream,
    dec: &mut FrameDecoder,
) -> Option<Vec<ShardAnswer>> {
    let frame = tokio::time::timeout(STEP_LIMIT, read_frame::<ShardPipeAnswers>(recv, dec))
        .await
        .expect("the agent answers or finishes in time")
        .expect("a readable answers frame");
    frame.map(|ShardPipeAnswers(answers)| answers)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shards_ordered_together_come_back_together_by_their_roots() {
    let (metrics, _exclusive) = exclusive_metrics().await;
    let (endpoint, fingerprint) = test_coordinator();
    let agent = spawn_agent(&endpoint, fingerprint, "pipe-fast", FAST_TOPS, 0..3);
    let (conn, hello) = tokio::time::timeout(STEP_LIMIT, admit(&endpoint)).await.expect("admitted");
    assert_eq!(hello.protocol_version, cpc_common::wire::PROTOCOL_VERSION);
    assert_eq!(hello.devices.len(), 3);

    // `OpenShardPipe` and the first orders in one write, as a coordinator's first burst arrives: the agent
    // must not lose the orders that came with the frame that opened the pipe. Twelve shards on three
    // devices, and three for a device the agent does not have.
    let (mut send, mut recv) = conn.open_bi().await.expect("open");
    let mut orders: Vec<_> = (1..=12).map(|id| run_root(id, 64, (id % 3) as u32)).collect();
    orders.extend((101..=103).map(|id| run_root(id, 64, 9)));
    let mut burst = codec::encode(&Request::OpenShardPipe(OpenShardPipe)).expect("encode");
    burst.extend(codec::encode(&ShardPipeOrders(orders)).expect("encode"));
    send.write_all(&burst).await.expect("burst");

    let mut dec = FrameDecoder::new();
    let mut answers = BTreeMap::new();
    let mut frames = Vec::new();
    while answers.len() < 15 {
        let frame = next_answers(&mut recv, &mut dec).await.expect("more answers");
        assert!(!frame.is_empty(), "no empty frame");
        for answer in &frame {
            let id = answer.shard_id().expect("every answer names its shard");
            assert!(answers.insert(id, answer.clone()).is_none(), "shard {id} answered twice");
        }
        frames.push(frame);
    }
    let root = simulated_root(64);
    for id in 1..=12 {
        assert_eq!(answers[&id], ShardAnswer::Root { shard_id: id, root, check: None });
    }
    for id in 101..=103 {
        let ShardAnswer::Failed { reason, .. } = &answers[&id] else {
            panic!("shard {id} on no device must fail: {:?}", answers[&id])
        };
        assert!(reason.contains("no device 9"), "{reason}");
    }
    // The three failures are ready the moment their tasks first run, all before the writer runs again (the
    // agent's tasks share one thread): one frame carries them.
    let failed_together = frames
        .iter()
        .any(|frame| (101..=103).all(|id| frame.iter().any(|a| a.shard_id() == Some(id))));
    assert!(failed_together, "answers ready together go out together: {frames:?}");

    // The coordinator finishes its half; with nothing in hand the agent finishes its own.
    send.finish().expect("finish");
    assert_eq!(next_answers(&mut recv, &mut dec).await, None, "the pipe ends with no more answers");
    wait_for(&metrics, "nothing in hand", |h| ShardSeries::in_hand(h) == Some(0.0)).await;

    conn.close(0u32.into(), b"test over");
    drop(agent);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipe_shards_cancel_finish_and_refuse_garbage() {
    let (metrics, _exclusive) = exclusive_metrics().await;
    let (endpoint, fingerprint) = test_coordinator();
    let agent = spawn_agent(&endpoint, fingerprint, "pipe-slow", SLOW_TOPS, [0]);
    let (conn, _) = tokio::time::timeout(STEP_LIMIT, admit(&endpoint)).await.expect("admitted");

    let series = ShardSeries::start(&metrics);
    let (running, in_hand) = (ShardSeries::running, ShardSeries::in_hand);
    let cancelled_queued = |h: &PrometheusHandle| series.cancelled_queued(h);
    let cancelled_running = |h: &PrometheusHandle| series.cancelled_running(h);

    let (mut send, mut recv) = open_pipe(&conn).await;
    let mut dec = FrameDecoder::new();
    // Shard 1 holds the device's one slot for hours; shard 2 waits for it.
    order(&mut send, vec![run_root(1, 4096, 0), run_root(2, 4096, 0)]).await;
    wait_for(&metrics, "shard 1 running, shard 2 waiting", |h| {
        running(h) == Some(1.0) && in_hand(h) == Some(2.0)
    })
    .await;
    // Cancelled while waiting: dropped, never run.
    order(&mut send, vec![ShardPipeOrder::Cancel { shard_id: 2 }]).await;
    wait_for(&metrics, "shard 2 cancelled while queued", |h| {
        cancelled_queued(h) == 1.0 && in_hand(h) == Some(1.0)
    })
    .await;
    assert_eq!(running(&metrics), Some(1.0), "shard 1 still runs: {}", metrics.render());
    // Cancelled while running: the device stops. A cancel for a shard not in hand changes nothing.
    order(
        &mut send,
        vec![ShardPipeOrder::Cancel { shard_id: 1 }, ShardPipeOrder::Cancel { shard_id: 77 }],
    )
    .await;
    wait_for(&metrics, "shard 1 cancelled while running", |h| {
        cancelled_running(h) == 1.0 && running(h) == Some(0.0) && in_hand(h) == Some(0.0)
    })
    .await;

    // The device is free again. Shard 3's answer is the pipe's first: 1 and 2 were never answered.
    order(&mut send, vec![run_root(3, 16, 0)]).await;
    let answers = next_answers(&mut recv, &mut dec).await.expect("shard 3 answered");
    let root = simulated_root(16);
    assert_eq!(answers, vec![ShardAnswer::Root { shard_id: 3, root, check: None }]);

    // Two more shards, and the coordinator finishes its half at once: both are still answered, then the
    // agent finishes its half.
    order(&mut send, vec![run_root(4, 16, 0), run_root(5, 16, 0)]).await;
    send.finish().expect("finish");
    let mut answered = Vec::new();
    while let Some(answers) = next_answers(&mut recv, &mut dec).await {
        answered.extend(answers);
    }
    answered.sort_by_key(ShardAnswer::shard_id);
    assert_eq!(
        answered,
        vec![
            ShardAnswer::Root { shard_id: 4, root, check: None },
            ShardAnswer::Root { shard_id: 5, root, check: None },
        ]
    );
    assert_eq!(series.ok(&metrics), 3.0, "shards 3 to 5 ran to their end: {}", metrics.render());

    // A second pipe: garbage (a frame whose one order is a variant that does not exist) is refused, the
    // shard in hand cancelled, and the agent finishes its half.
    let (mut send, mut recv) = open_pipe(&conn).await;
    let mut dec = FrameDecoder::new();
    order(&mut send, vec![run_root(6, 4096, 0)]).await;
    wait_for(&metrics, "shard 6 running", |h| running(h) == Some(1.0)).await;
    send.write_all(&[0, 0, 0, 2, 1, 9]).await.expect("garbage");
    let answers = next_answers(&mut recv, &mut dec).await.expect("an answer to the garbage");
    let [ShardAnswer::Refused { reason }] = answers.as_slice() else {
        panic!("garbage must be refused, and shard 6 never answered: {answers:?}")
    };
    assert!(reason.contains("malformed"), "{reason}");
    assert_eq!(next_answers(&mut recv, &mut dec).await, None, "the agent ends the pipe");
    wait_for(&metrics, "shard 6 cancelled", |h| {
        cancelled_running(h) == 2.0 && running(h) == Some(0.0) && in_hand(h) == Some(0.0)
    })
    .await;

    // A third pipe, reset by the coordinator with a shard in hand: the shard is cancelled, never answered.
    let (mut send, mut recv) = open_pipe(&conn).await;
    let mut dec = FrameDecoder::new();
    order(&mut send, vec![run_root(7, 4096, 0)]).await;
    wait_for(&metrics, "shard 7 running", |h| running(h) == Some(1.0)).await;
    send.reset(0u32.into()).expect("reset");
    wait_for(&metrics, "shard 7 cancelled", |h| {
        cancelled_running(h) == 3.0 && running(h) == Some(0.0) && in_hand(h) == Some(0.0)
    })
    .await;
    assert_eq!(next_answers(&mut recv, &mut dec).await, None, "shard 7 is never answered");
    assert_eq!(cancelled_queued(&metrics), 1.0);

    conn.close(0u32.into(), b"test over");
    drop(agent);
}
