//! The coordinator's QUIC endpoint: TLS with the coordinator's own certificate, the admission handshake
//! (protocol version, constant-time join-token check), and one task per admitted agent that reads its control
//! stream (heartbeats, draining, devices the agent quarantined) and tells the registry when the agent goes away.
//!
//! Unauthenticated peers get a bounded budget: a cap on concurrent handshakes, a deadline, and a small frame
//! limit for `Hello`. Anything that does not decode is answered with `Refused { reason }` and closed.

use super::{
    DeviceId, FarmConfig, FarmError,
    identity::token_matches,
    registry::{AgentGone, AgentState, DeviceReported, Heartbeat, Quarantine, Register, Registry},
};
use actix::Addr;
use cpc_common::{
    codec::FrameDecoder,
    quic::{FrameIoError, read_frame, write_frame},
    wire::{ALPN, AgentControl, Hello, HelloReply, MIN_PROTOCOL_VERSION, PROTOCOL_VERSION},
};
use std::{
    sync::Arc,
    time::{Duration, Instant},
};
use tokio::sync::Semaphore;

/// Largest `Hello` an unauthenticated peer may send.
pub const MAX_HELLO_BYTES: usize = 64 * 1024;
/// Largest control frame an agent may send.
const MAX_CONTROL_BYTES: usize = 4 * 1024;
/// Most devices one agent may announce.
pub const MAX_DEVICES_PER_AGENT: usize = 1024;
/// Application close code for a refused agent.
const CLOSE_REFUSED: u32 = 1;
/// Application close code for a protocol violation.
const CLOSE_PROTOCOL: u32 = 2;
/// How long a refused peer is given to read its `Refused` before the connection closes.
const REFUSED_LINGER: Duration = Duration::from_millis(500);

/// At most one log line per [`LogLimiter::EVERY`] for an event a peer can cause at will (refused
/// handshakes, a full handshake queue), with the number of lines held back: a flood must not flood the logs.
#[derive(Debug)]
struct LogLimiter {
    state: std::sync::Mutex<(Option<Instant>, u64)>,
}

impl LogLimiter {
    const EVERY: Duration = Duration::from_secs(10);

    const fn new() -> Self {
        Self { state: std::sync::Mutex::new((None, 0)) }
    }

    /// `Some(held_back)` when a line may be written now.
    fn admit(&self) -> Option<u64> {
        let mut state = self.state.lock().ok()?;
        let now = Instant::now();
        match state.0 {
            Some(last) if now.duration_since(last) < Self::EVERY => {
                state.1 += 1;
                None
            }
            _ => {
                let held_back = std::mem::take(&mut state.1);
                state.0 = Some(now);
                Some(held_back)
            }
        }
    }
}

static REFUSAL_LOG: LogLimiter = LogLimiter::new();
static QUEUE_FULL_LOG: LogLimiter = LogLimiter::new();

/// Binds the QUIC endpoint with the coordinator's certificate.
pub(crate) fn bind(config: &FarmConfig) -> Result<quinn::Endpoint, FarmError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut tls = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| FarmError::Tls(e.to_string()))?
        .with_no_client_auth()
        .with_single_cert(vec![config.identity.cert.clone()], config.identity.key.clone_key())
        .map_err(|e| FarmError::Tls(e.to_string()))?;
    tls.alpn_protocols = vec![ALPN.to_vec()];
    let crypto = quinn::crypto::rustls::QuicServerConfig::try_from(tls)
        .map_err(|e| FarmError::Tls(e.to_string()))?;
    let mut server = quinn::ServerConfig::with_crypto(Arc::new(crypto));
    server.transport_config(Arc::new(transport(config.idle_timeout, config.heartbeat_interval)));
    let reset_key =
        ring::hmac::Key::new(ring::hmac::HMAC_SHA256, &config.identity.stateless_reset_secret());
    let mut endpoint_config = quinn::EndpointConfig::new(Arc::new(reset_key));
    // Connection ids carry a keyed hash that the endpoint checks before it answers a packet of an unknown
    // connection; a restarted coordinator must recognise its predecessor's ids, or it drops the agents'
    // packets silently instead of resetting them. The key comes from the same secret as the reset key.
    let secret = config.identity.stateless_reset_secret();
    let mut cid_key = [0u8; 8];
    cid_key.copy_from_slice(&cpc_common::sha256([&secret[..], b"connection ids"].concat())[..8]);
    let cid_key = u64::from_le_bytes(cid_key);
    endpoint_config.cid_generator(move || {
        Box::new(quinn_proto::HashedConnectionIdGenerator::from_key(cid_key))
    });
    let bind_err = |source| FarmError::Bind { addr: config.listen, source };
    let socket = cpc_common::quic::FarmSocket::bind(config.listen).map_err(bind_err)?;
    if let Some(warning) = socket.small_buffers() {
        tracing::warn!(listen = %config.listen, "{warning}");
    }
    let runtime = Arc::new(quinn::TokioRuntime);
    quinn::Endpoint::new(endpoint_config, Some(server), socket.socket, runtime).map_err(bind_err)
}

/// Transport parameters shared by both ends.
fn transport(idle: Duration, keep_alive: Duration) -> quinn::TransportConfig {
    let mut t = quinn::TransportConfig::default();
    t.max_idle_timeout(quinn::IdleTimeout::try_from(idle).ok());
    t.keep_alive_interval(Some(keep_alive.min(idle / 2)));
    t.max_concurrent_bidi_streams(quinn::VarInt::from_u32(4096));
    t.max_concurrent_uni_streams(quinn::VarInt::from_u32(0));
    t
}

/// Accepts connections until the endpoint closes.
pub(crate) async fn accept_loop(
    endpoint: quinn::Endpoint,
    config: Arc<FarmConfig>,
    registry: Addr<Registry>,
) {
    let pending = Arc::new(Semaphore::new(config.max_pending_handshakes.max(1)));
    while let Some(incoming) = endpoint.accept().await {
        // Past half the handshake budget, a peer must first prove its address (a stateless Retry: no
        // state is kept for it), so spoofed floods cost nothing and real agents only one round trip.
        if pending.available_permits() < config.max_pending_handshakes.max(1) / 2
            && !incoming.remote_address_validated()
            && incoming.may_retry()
        {
            let _ = incoming.retry();
            continue;
        }
        let Ok(permit) = pending.clone().try_acquire_owned() else {
            crate::farm::metrics::FarmMetrics::handshake_refused();
            if let Some(held_back) = QUEUE_FULL_LOG.admit() {
                tracing::warn!(remote = %incoming.remote_address(), held_back,
                    "too many handshakes in progress: refusing (one line per 10 s)");
            }
            incoming.refuse();
            continue;
        };
        let (config, registry) = (config.clone(), registry.clone());
        actix_rt::spawn(async move {
            let remote = incoming.remote_address();
            if let Err(e) = serve_connection(incoming, config, registry, permit).await {
                tracing::info!(%remote, "agent connection ended: {e}");
            }
        });
    }
}

async fn serve_connection(
    incoming: quinn::Incoming,
    config: Arc<FarmConfig>,
    registry: Addr<Registry>,
    permit: tokio::sync::OwnedSemaphorePermit,
) -> Result<(), String> {
    let deadline = config.handshake_timeout;
    let conn = tokio::time::timeout(deadline, incoming)
        .await
        .map_err(|_| "TLS handshake timed out".to_owned())?
        .map_err(|e| format!("TLS handshake failed: {e}"))?;
    let (mut send, mut recv) = tokio::time::timeout(deadline, conn.accept_bi())
        .await
        .map_err(|_| "no control stream before the handshake deadline".to_owned())?
        .map_err(|e| format!("no control stream: {e}"))?;
    let mut dec = FrameDecoder::with_limit(MAX_HELLO_BYTES);
    let hello = match tokio::time::timeout(deadline, read_frame::<Hello>(&mut recv, &mut dec)).await
    {
        Err(_) => {
            return Err(
                refuse(&conn, &mut send, "no Hello before the handshake deadline".into()).await
            );
        }
        Ok(Ok(Some(hello))) => hello,
        Ok(Ok(None)) => {
            return Err(refuse(&conn, &mut send, "control stream closed before Hello".into()).await);
        }
        Ok(Err(FrameIoError::Codec(e))) => {
            crate::farm::metrics::FarmMetrics::handshake_refused();
            return Err(refuse(&conn, &mut send, format!("could not read Hello: {e}")).await);
        }
        Ok(Err(e)) => return Err(format!("reading Hello: {e}")),
    };
    if let Err(reason) = admit(&hello, &config.identity.token) {
        crate::farm::metrics::FarmMetrics::handshake_refused();
        return Err(refuse(&conn, &mut send, reason).await);
    }
    let agent_name = hello.agent_name.clone();
    let agent_id = registry
        .send(Register {
            name: hello.agent_name,
            devices: hello.devices,
            conn: conn.clone(),
            protocol_version: hello.protocol_version,
        })
        .await
        .map_err(|_| "registry stopped".to_owned())?;
    let interval_ms = u32::try_from(config.heartbeat_interval.as_millis()).unwrap_or(u32::MAX);
    write_frame(&mut send, &HelloReply::Welcome { agent_id, heartbeat_interval_ms: interval_ms })
        .await
        .map_err(|e| format!("writing Welcome: {e}"))?;
    drop(permit);
    tracing::info!(agent_id, %agent_name, remote = %conn.remote_address(), "agent admitted");

    let mut dec = FrameDecoder::with_limit(MAX_CONTROL_BYTES);
    let reason = loop {
        match read_frame::<AgentControl>(&mut recv, &mut dec).await {
            Ok(Some(AgentControl::Heartbeat { .. })) => {
                registry.do_send(Heartbeat { agent: agent_id })
            }
            Ok(Some(AgentControl::Draining)) => {
                registry.do_send(AgentState { agent: agent_id, draining: true });
            }
            Ok(Some(AgentControl::DeviceQuarantined { device, reason })) => {
                let device = DeviceId { agent: agent_id, index: device };
                registry.do_send(Quarantine { device, reason: format!("agent: {reason}") });
            }
            Ok(Some(AgentControl::DeviceReport(report))) => {
                registry.do_send(DeviceReported { agent: agent_id, report });
            }
            Ok(None) => break "control stream closed".to_owned(),
            Err(FrameIoError::Codec(e)) => {
                let reason = format!("bad control frame: {e}");
                conn.close(CLOSE_PROTOCOL.into(), reason.as_bytes());
                break reason;
            }
            Err(e) => break e.to_string(),
        }
    };
    registry.do_send(AgentGone { agent: agent_id, reason: reason.clone() });
    Err(reason)
}

/// Checks a `Hello`; the error is the reason sent back to the agent.
fn admit(hello: &Hello, token: &str) -> Result<(), String> {
    if !(MIN_PROTOCOL_VERSION..=PROTOCOL_VERSION).contains(&hello.protocol_version) {
        return Err(format!(
            "protocol version {} is not supported: this coordinator speaks versions {MIN_PROTOCOL_VERSION} to {PROTOCOL_VERSION}; run the \
             cpc-agent release that matches the coordinator",
            hello.protocol_version
        ));
    }
    if !token_matches(&hello.token, token) {
        return Err("invalid join token: use the --token printed by `cpc-coordinator serve` (the `join-token` file in \
                    its --data-dir)"
            .into());
    }
    if hello.devices.is_empty() {
        return Err("the agent announced no device: check --devices and --backend".into());
    }
    if hello.devices.len() > MAX_DEVICES_PER_AGENT {
        return Err(format!(
            "{} devices is more than the {MAX_DEVICES_PER_AGENT} one agent may run",
            hello.devices.len()
        ));
    }
    let mut seen = std::collections::HashSet::new();
    for d in &hello.devices {
        if !seen.insert(d.index) {
            return Err(format!("device index {} is announced twice", d.index));
        }
    }
    Ok(())
}

/// Sends `Refused { reason }`, gives the peer a moment to read it, closes; answers the reason.
async fn refuse(conn: &quinn::Connection, send: &mut quinn::SendStream, reason: String) -> String {
    if let Some(held_back) = REFUSAL_LOG.admit() {
        tracing::warn!(remote = %conn.remote_address(), held_back,
            "refusing agent: {reason} (one line per 10 s; cpcfarm_handshakes_refused_total counts all)");
    }
    if write_frame(send, &HelloReply::Refused { reason: reason.clone() }).await.is_ok()
        && send.finish().is_ok()
    {
        let _ = tokio::time::timeout(REFUSED_LINGER, send.stopped()).await;
    }
    conn.close(CLOSE_REFUSED.into(), reason.as_bytes());
    reason
}

#[cfg(test)]
mod tests {
    use super::*;
    use cpc_common::wire::DeviceAdvert;

    /// A version-4 coordinator admits version-3 agents (they send no device reports) and its own version,
    /// and refuses versions it does not know.
    #[test]
    fn agents_of_every_supported_protocol_version_are_admitted() {
        let token = "0123456789abcdef0123456789abcdef";
        let hello = |protocol_version| Hello {
            protocol_version,
            token: token.into(),
            agent_name: "a".into(),
            devices: vec![DeviceAdvert {
                index: 0,
                name: "d".into(),
                kind: "cpu".into(),
                memory_bytes: 0,
                measured_ops_per_sec: 1.0,
                concurrent_shards: 1,
                row_capacity: Vec::new(),
            }],
        };
        assert_eq!(MIN_PROTOCOL_VERSION, 3);
        for version in MIN_PROTOCOL_VERSION..=PROTOCOL_VERSION {
            assert_eq!(admit(&hello(version), token), Ok(()), "version {version}");
        }
        for version in [MIN_PROTOCOL_VERSION - 1, PROTOCOL_VERSION + 1] {
            let e = admit(&hello(version), token).expect_err("refused");
            assert!(e.contains("not supported"), "{e}");
        }
    }
}
