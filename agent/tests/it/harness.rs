//! What the loopback tests share: a test coordinator (a quinn server speaking the farm protocol, driven by
//! hand), an in-process agent of simulated devices dialling it, and the agent's metrics.
//!
//! The metrics recorder is the process's: every agent of this test binary counts into the same series, and
//! sets the same gauges. So every test that starts an agent holds [`exclusive_metrics`] for its whole run
//! (two agents at once would mix their gauges), reads counters as deltas from where it started
//! ([`counter`]), and leaves no shard in hand when it ends, so that the gauges read 0 for the next one.

use cpc_agent::{AgentConfig, AgentThread, DeviceSpec, simulated::SimulatedBackend};
use cpc_common::{
    codec::FrameDecoder,
    quic::{read_frame, write_frame},
    wire::{ALPN, Hello, HelloReply},
};
use metrics_exporter_prometheus::PrometheusHandle;
use std::{
    sync::Arc,
    time::{Duration, Instant},
};
use tokio::sync::{Mutex, MutexGuard};

/// Longest any step may take before the test fails instead of hanging (a liveness bound, not a timing).
pub(crate) const STEP_LIMIT: Duration = Duration::from_secs(60);

/// Held by each test that reads the agent's metrics (a tokio mutex: a failed test does not poison it).
static METRICS: Mutex<()> = Mutex::const_new(());

/// The process's metrics, for this test alone until the guard drops.
pub(crate) async fn exclusive_metrics() -> (PrometheusHandle, MutexGuard<'static, ()>) {
    let guard = METRICS.lock().await;
    (cpc_agent::metrics::install_recorder(), guard)
}

/// A quinn server with a fresh self-signed certificate and the farm's ALPN.
pub(crate) fn test_coordinator() -> (quinn::Endpoint, String) {
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

/// Starts an agent named `name` with one simulated device of `tops` tera-ops per second at each of
/// `indices`, dialling `endpoint`.
pub(crate) fn spawn_agent(
    endpoint: &quinn::Endpoint,
    fingerprint: String,
    name: &str,
    tops: f64,
    indices: impl IntoIterator<Item = u32>,
) -> AgentThread {
    let addr = endpoint.local_addr().expect("addr");
    let mut config = AgentConfig::new(addr.to_string(), "token", fingerprint);
    config.name = name.into();
    let devices = indices
        .into_iter()
        .map(|index| {
            let backend = SimulatedBackend::new(tops).expect("simulated device");
            DeviceSpec { index, backend: Arc::new(backend) }
        })
        .collect();
    AgentThread::spawn(config, devices)
}

/// Accepts the agent's connection, reads its `Hello` and welcomes it; heartbeats are read and dropped.
pub(crate) async fn admit(endpoint: &quinn::Endpoint) -> (quinn::Connection, Hello) {
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

/// The value of one unlabelled series, or of the series with `label` (`name{label} value`).
pub(crate) fn metric(handle: &PrometheusHandle, name: &str, label: &str) -> Option<f64> {
    let prefix = if label.is_empty() { format!("{name} ") } else { format!("{name}{{{label}}} ") };
    handle
        .render()
        .lines()
        .find_map(|l| l.strip_prefix(&prefix))
        .and_then(|v| v.trim().parse().ok())
}

/// A counter's value, 0 before its first increment.
pub(crate) fn counter(handle: &PrometheusHandle, name: &str, label: &str) -> f64 {
    metric(handle, name, label).unwrap_or(0.0)
}

/// Polls the agent's metrics until `want` holds; fails after [`STEP_LIMIT`].
pub(crate) async fn wait_for(
    handle: &PrometheusHandle,
    what: &str,
    want: impl Fn(&PrometheusHandle) -> bool,
) {
    let deadline = Instant::now() + STEP_LIMIT;
    while !want(handle) {
        assert!(Instant::now() < deadline, "never saw {what}:\n{}", handle.render());
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// The agent's shard series as these tests read them: gauges as they stand, counters as changes since
/// [`ShardSeries::start`] (other tests of this binary count into the same series).
pub(crate) struct ShardSeries {
    queued_0: f64,
    running_0: f64,
    ok_0: f64,
}

impl ShardSeries {
    /// Notes the counters now.
    pub(crate) fn start(h: &PrometheusHandle) -> Self {
        Self {
            queued_0: Self::cancelled_total(h, "queued"),
            running_0: Self::cancelled_total(h, "running"),
            ok_0: Self::ok_total(h),
        }
    }

    fn cancelled_total(h: &PrometheusHandle, stage: &str) -> f64 {
        counter(h, "cpcfarm_agent_shards_cancelled_total", &format!("stage=\"{stage}\""))
    }

    fn ok_total(h: &PrometheusHandle) -> f64 {
        counter(h, "cpcfarm_agent_shards_total", "outcome=\"ok\"")
    }

    /// Shards running on a device now.
    pub(crate) fn running(h: &PrometheusHandle) -> Option<f64> {
        metric(h, "cpcfarm_agent_shards_running", "")
    }

    /// Shards the agent holds now (waiting for their device or running).
    pub(crate) fn in_hand(h: &PrometheusHandle) -> Option<f64> {
        metric(h, "cpcfarm_agent_shards_in_hand", "")
    }

    /// Shards cancelled while waiting for their device, since the start.
    pub(crate) fn cancelled_queued(&self, h: &PrometheusHandle) -> f64 {
        Self::cancelled_total(h, "queued") - self.queued_0
    }

    /// Shards cancelled while running, since the start.
    pub(crate) fn cancelled_running(&self, h: &PrometheusHandle) -> f64 {
        Self::cancelled_total(h, "running") - self.running_0
    }

    /// Shards answered, since the start.
    pub(crate) fn ok(&self, h: &PrometheusHandle) -> f64 {
        Self::ok_total(h) - self.ok_0
    }
}
