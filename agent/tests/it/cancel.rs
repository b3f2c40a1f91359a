//! Cancelling shards over real loopback QUIC: a test coordinator (a quinn server speaking the farm protocol,
//! driven by hand so that it can cancel a chosen shard at a chosen moment) admits an in-process agent with one
//! simulated device that would hold each large shard for hours. A shard waiting for the device is dropped
//! without running when its stream is stopped; the running one stops sleeping when its request is reset and
//! is never answered (the agent resets its half with `SHARD_CANCELLED`); the device then serves the next
//! shard; the agent's metrics count both cancellations by stage.

use crate::harness::{
    STEP_LIMIT, ShardSeries, admit, exclusive_metrics, spawn_agent, test_coordinator, wait_for,
};
use cpc_common::{
    codec::FrameDecoder,
    quic::{read_frame, write_frame},
    synthetic::Challenge,
    wire::{Request, RunShard, SHARD_CANCELLED, ShardAnswer},
};
use metrics_exporter_prometheus::PrometheusHandle;

/// The simulated device's speed: 10⁶ ops/s, so a whole n = 4096 product takes about 38 hours and one row at
/// n = 16 half a millisecond.
const DEVICE_TOPS: f64 = 1e-6;

/// Sends a `RunShard` of rows `0..rows` at size `n` on a new stream, leaving the request half open when
/// `finish` is false (so that it can still be reset).
async fn send_shard(
    conn: &quinn::Connection,
    shard_id: u64,
    n: u32,
    rows: u32,
    finish: bool,
) -> (quinn::SendStream, quinn::RecvStream) {
    let (mut send, recv) = conn.open_bi().await.expect("open");
    let req = RunShard {
        shard_id,
        challenge: Challenge::new(format!("cancel-{shard_id}"), n, 1).expect("challenge"),
        iteration: 0,
        rows: (0, rows),
        device: 0,
        check_seed: shard_id,
    };
    write_frame(&mut send, &Request::RunShard(req)).await.expect("request");
    if finish {
        send.finish().expect("finish");
    }
    (send, recv)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancelled_shards_are_dropped_or_stopped_and_never_answered() {
    let (metrics, _exclusive) = exclusive_metrics().await;
    let (endpoint, fingerprint) = test_coordinator();
    let agent = spawn_agent(&endpoint, fingerprint, "cancel-test", DEVICE_TOPS, [0]);
    let (conn, hello) = tokio::time::timeout(STEP_LIMIT, admit(&endpoint)).await.expect("admitted");
    assert_eq!(hello.devices.len(), 1);
    assert_eq!(hello.devices[0].kind, "simulated");
    assert_eq!(hello.devices[0].measured_ops_per_sec, DEVICE_TOPS * 1e12, "declared, not measured");
    assert_eq!(hello.devices[0].concurrent_shards, 1);

    let series = ShardSeries::start(&metrics);
    let (running, in_hand) = (ShardSeries::running, ShardSeries::in_hand);
    let cancelled = |h: &PrometheusHandle, stage: &str| {
        Some(if stage == "queued" {
            series.cancelled_queued(h)
        } else {
            series.cancelled_running(h)
        })
    };

    // Shard 1 occupies the device's one slot for hours; its request half stays open.
    let (mut send_1, mut recv_1) = send_shard(&conn, 1, 4096, 4096, false).await;
    wait_for(&metrics, "shard 1 running", |h| running(h) == Some(1.0)).await;
    // Shard 2 waits for the slot. The coordinator stops its answer half: it is dropped, never run.
    let (_send_2, mut recv_2) = send_shard(&conn, 2, 4096, 4096, true).await;
    wait_for(&metrics, "shard 2 in hand", |h| in_hand(h) == Some(2.0)).await;
    recv_2.stop(quinn::VarInt::from_u32(SHARD_CANCELLED)).expect("stop shard 2");
    wait_for(&metrics, "shard 2 cancelled while queued", |h| {
        cancelled(h, "queued") == Some(1.0) && in_hand(h) == Some(1.0)
    })
    .await;
    assert_eq!(running(&metrics), Some(1.0), "shard 1 still runs: {}", metrics.render());

    // Shard 1: the coordinator resets its request. The device stops sleeping, and the answer half is reset
    // with SHARD_CANCELLED instead of answered.
    send_1.reset(quinn::VarInt::from_u32(SHARD_CANCELLED)).expect("reset shard 1");
    let mut dec = FrameDecoder::new();
    let answer = tokio::time::timeout(STEP_LIMIT, read_frame::<ShardAnswer>(&mut recv_1, &mut dec))
        .await
        .expect("shard 1's stream ends");
    match answer {
        Err(cpc_common::quic::FrameIoError::Read(quinn::ReadError::Reset(code))) => {
            assert_eq!(code, quinn::VarInt::from_u32(SHARD_CANCELLED));
        }
        other => panic!("shard 1 must be reset, not answered: {other:?}"),
    }
    wait_for(&metrics, "shard 1 cancelled while running", |h| {
        cancelled(h, "running") == Some(1.0) && running(h) == Some(0.0) && in_hand(h) == Some(0.0)
    })
    .await;

    // The device is free again: a small shard (half a millisecond at this speed) is answered.
    let (_send_3, mut recv_3) = send_shard(&conn, 3, 16, 1, true).await;
    let mut dec = FrameDecoder::new();
    let answer = tokio::time::timeout(STEP_LIMIT, read_frame::<ShardAnswer>(&mut recv_3, &mut dec))
        .await
        .expect("shard 3 answered")
        .expect("read")
        .expect("a frame");
    let ShardAnswer::Done { shard_id: 3, leaves, .. } = answer else {
        panic!("expected ShardDone for shard 3, got {answer:?}")
    };
    assert_eq!(leaves.len(), 1);
    assert_eq!(cancelled(&metrics, "queued"), Some(1.0));
    assert_eq!(cancelled(&metrics, "running"), Some(1.0));
    let ok = series.ok(&metrics);
    assert_eq!(ok, 1.0, "only shard 3 ran to its end: {}", metrics.render());

    conn.close(0u32.into(), b"test over");
    drop(agent);
}
