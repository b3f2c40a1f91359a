//! Cancelling shards over real loopback QUIC: a test coordinator (a quinn server speaking the farm protocol,
//! driven by hand so that it can cancel a chosen shard at a chosen moment) admits an in-process agent with one
//! simulated device that would hold each large shard for hours. A shard waiting for the device is dropped
//! without running when its stream is stopped; the running one stops sleeping when its request is reset and
//! is never answered (the agent resets its half with `SHARD_CANCELLED`); the device then serves the next
//! shard; the agent's metrics count both cancellations by stage.

use cpc_agent::{AgentConfig, AgentThread, DeviceSpec, simulated::SimulatedBackend};
use cpc_common::{
    codec::FrameDecoder,
    quic::{read_frame, write_frame},
    synthetic::Challenge,
    wire::{ALPN, Hello, HelloReply, Request, RunShard, SHARD_CANCELLED, ShardAnswer},
};
use metrics_exporter_prometheus::PrometheusHandle;
use std::{
    sync::Arc,
    time::{Duration, Instant},
};

/// Longest any step may take before the test fails instead of hanging (a liveness bound, not a timing).
const STEP_LIMIT: Duration = Duration::from_secs(60);
/// The simulated device's speed: 10⁶ ops/s, so a whole n = 4096 product takes about 38 hours and one row at
/// n = 16 half a millisecond.
const DEVICE_TOPS: f64 = 1e-6;

/// A quinn server with a fresh self-signed certificate and the farm's ALPN.
fn test_coordinator() -> (quinn::Endpoint, String) {
    let ck = rcgen::generate_simple_self_signed(vec!["cpc-coordinator".to_owned()]).expect("cert");
    let cert = ck.cert.der().clone();
    let fingerprint = hex::encode(cpc_common::sha256(&cert));
    let key = rustls::pki_types::PrivateKeyDer::try_from(ck.key_pair.serialize_der()).expect("key");
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut tls = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .expect("tls 1.3")
        .with_no_client_auth()
        .with_single_cert(vec![cert], key)
        .expect("server cert");
    tls.alpn_protocols = vec![ALPN.to_vec()];
    let crypto = quinn::crypto::rustls::QuicServerConfig::try_from(tls).expect("quic tls");
    let server = quinn::ServerConfig::with_crypto(Arc::new(crypto));
    let endpoint =
        quinn::Endpoint::server(server, "127.0.0.1:0".parse().expect("addr")).expect("bind");
    (endpoint, fingerprint)
}

/// Accepts the agent's connection, reads its `Hello` and welcomes it; heartbeats are read and dropped.
async fn admit(endpoint: &quinn::Endpoint) -> (quinn::Connection, Hello) {
    let conn = endpoint.accept().await.expect("incoming").await.expect("connection");
    let (mut send, mut recv) = conn.accept_bi().await.expect("control stream");
    let mut dec = FrameDecoder::new();
    let hello: Hello = read_frame(&mut recv, &mut dec).await.expect("read").expect("hello");
    let welcome = HelloReply::Welcome { agent_id: 1, heartbeat_interval_ms: 250 };
    write_frame(&mut send, &welcome).await.expect("welcome");
    tokio::spawn(async move {
        let _keep_open = send;
        while let Ok(Some(_)) =
            read_frame::<cpc_common::wire::AgentControl>(&mut recv, &mut dec).await
        {}
    });
    (conn, hello)
}

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

/// The value of one unlabelled series, or of the series with `label` (`name{label} value`).
fn metric(handle: &PrometheusHandle, name: &str, label: &str) -> Option<f64> {
    let prefix = if label.is_empty() { format!("{name} ") } else { format!("{name}{{{label}}} ") };
    handle
        .render()
        .lines()
        .find_map(|l| l.strip_prefix(&prefix))
        .and_then(|v| v.trim().parse().ok())
}

/// Polls the agent's metrics until `want` holds; fails after [`STEP_LIMIT`].
async fn wait_for(handle: &PrometheusHandle, what: &str, want: impl Fn(&PrometheusHandle) -> bool) {
    let deadline = Instant::now() + STEP_LIMIT;
    while !want(handle) {
        assert!(Instant::now() < deadline, "never saw {what}:\n{}", handle.render());
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancelled_shards_are_dropped_or_stopped_and_never_answered() {
    let metrics = cpc_agent::metrics::install_recorder();
    let (endpoint, fingerprint) = test_coordinator();
    let addr = endpoint.local_addr().expect("addr");
    let mut config = AgentConfig::new(addr.to_string(), "token", fingerprint);
    config.name = "cancel-test".into();
    let device = SimulatedBackend::new(DEVICE_TOPS).expect("simulated device");
    let agent =
        AgentThread::spawn(config, vec![DeviceSpec { index: 0, backend: Arc::new(device) }]);
    let (conn, hello) = tokio::time::timeout(STEP_LIMIT, admit(&endpoint)).await.expect("admitted");
    assert_eq!(hello.devices.len(), 1);
    assert_eq!(hello.devices[0].kind, "simulated");
    assert_eq!(hello.devices[0].measured_ops_per_sec, DEVICE_TOPS * 1e12, "declared, not measured");
    assert_eq!(hello.devices[0].concurrent_shards, 1);

    let running = |h: &PrometheusHandle| metric(h, "cpcfarm_agent_shards_running", "");
    let in_hand = |h: &PrometheusHandle| metric(h, "cpcfarm_agent_shards_in_hand", "");
    let cancelled = |h: &PrometheusHandle, stage: &str| {
        metric(h, "cpcfarm_agent_shards_cancelled_total", &format!("stage=\"{stage}\""))
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
    let ok = metric(&metrics, "cpcfarm_agent_shards_total", "outcome=\"ok\"");
    assert_eq!(ok, Some(1.0), "only shard 3 ran to its end: {}", metrics.render());

    conn.close(0u32.into(), b"test over");
    drop(agent);
}
