//! One connection to the coordinator, from dial to goodbye: the pinned TLS handshake, `Hello` with the token
//! and device adverts, then heartbeats on the control stream and one task per request stream (run a shard on a
//! device actor, or show a cached row). Devices the agent quarantined (see [`crate::device`]) are announced in
//! `Hello` like the others and reported right after `Welcome`, and any quarantined later as it happens, with
//! `DeviceQuarantined` on the control stream. A shard whose request stream the coordinator stops or resets
//! (it cancels it, [`SHARD_CANCELLED`]), or whose connection is lost, is cancelled on its device
//! ([`ShardCancel`]) and its answer is never sent: the agent resets its half of the stream instead. On
//! shutdown it drains: `Draining` to the coordinator, new shards answered `ShardFailed`, shards in hand
//! finished, spot checks answered for a grace period, then close.
//!
//! A request stream whose first frame is `OpenShardPipe` (protocol version 7) is the connection's shard
//! pipe instead: many shards and their answers to a frame, cancelled by an order rather
//! than by stopping a stream (the `pipe` module). Each shard, on its own stream or on the pipe, runs the
//! same way (`ConnState::run_on_device`).

use crate::{
    AgentConfig, AgentError,
    device::{
        AnswerWith, Compute, DeviceActor, Health, RecomputeRow, RowCache, RowSource, ShardCancel,
        ShardKey,
    },
    metrics as m,
};
use actix::Addr;
use cpc_common::{
    codec::{CodecError, FrameDecoder, LENGTH_PREFIX_BYTES, decode_payload},
    quic::{FrameIoError, read_frame, write_frame},
    wire::{
        AgentControl, DeviceAdvert, FetchRow, FetchRowProof, Hello, HelloReply, OpenShardPipe,
        Request, Response, RowAnswer, RunShard, RunShardRoot, SHARD_CANCELLED, ShardAnswer,
    },
};
use std::{
    collections::BTreeMap,
    net::SocketAddr,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};
use tokio::sync::{mpsc, watch};

/// Server name sent in TLS (the certificate is pinned, so it is informative only).
const SERVER_NAME: &str = "cpc-coordinator";
/// Largest request frame the coordinator may send.
const MAX_REQUEST_BYTES: usize = 64 * 1024;
/// Largest `HelloReply`.
const MAX_REPLY_BYTES: usize = 64 * 1024;

/// The agent's device actors, by index, with their adverts.
#[derive(Debug, Default, Clone)]
pub struct Devices(BTreeMap<u32, (DeviceAdvert, Addr<DeviceActor>)>);

impl Devices {
    /// Adds a device.
    pub fn insert(&mut self, advert: DeviceAdvert, addr: Addr<DeviceActor>) {
        self.0.insert(advert.index, (advert, addr));
    }

    /// Number of devices.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether there is none.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    fn adverts(&self) -> Vec<DeviceAdvert> {
        self.0.values().map(|(a, _)| a.clone()).collect()
    }
}

/// What every session of an agent shares.
#[derive(Debug)]
pub struct SessionCtx {
    pub(crate) config: AgentConfig,
    pub(crate) pinned: [u8; 32],
    /// Shared by every request task (one per shard: a clone of the map itself was most of an agent's time
    /// per shard with a hundred devices).
    pub(crate) devices: Arc<Devices>,
    pub(crate) cache: Arc<Mutex<RowCache>>,
    pub(crate) ready: Arc<AtomicBool>,
    pub(crate) health: Health,
    /// Numbers the sessions of this process ([`ShardKey::session`]).
    pub(crate) sessions: AtomicU64,
}

/// How a session ended without a fatal error.
#[derive(Debug)]
pub enum End {
    /// Drained on request: the agent is done.
    Drained,
    /// The connection was lost: reconnect.
    Lost(String),
}

/// Shards being computed, and when the last request arrived.
#[derive(Debug, Default)]
pub(crate) struct Activity {
    in_hand: AtomicUsize,
    last_request: Mutex<Option<Instant>>,
}

impl Activity {
    pub(crate) fn touch(&self) {
        if let Ok(mut t) = self.last_request.lock() {
            *t = Some(Instant::now());
        }
    }

    fn quiet_for(&self) -> Duration {
        self.last_request.lock().ok().and_then(|t| *t).map_or(Duration::MAX, |t| t.elapsed())
    }
}

/// What every request stream of one connection shares (one `Arc` of it a stream or a pipe's shard).
#[derive(Debug)]
pub(crate) struct ConnState {
    /// The connection's number ([`ShardKey::session`]).
    pub(crate) session: u64,
    pub(crate) devices: Arc<Devices>,
    pub(crate) cache: Arc<Mutex<RowCache>>,
    /// Set once the agent drains: new shards are answered `Failed`.
    pub(crate) draining: Arc<AtomicBool>,
    pub(crate) activity: Arc<Activity>,
}

impl ConnState {
    /// Runs a shard as the coordinator asked (`answer_with`): answered `Failed` at once while the agent
    /// drains or when the device is not this agent's, otherwise computed by its device actor, counted in
    /// hand meanwhile. `abandoned` completes if the coordinator gives up on the shard in a way the device
    /// does not see by itself (its request stream stopped or reset): the shard is then cancelled, and still
    /// awaited, so that it stays in hand (a drain waits for it) until its device lets it go. `None`: the
    /// shard was cancelled (by `abandoned`, or through a clone of `cancel`), and nothing is to be sent.
    pub(crate) async fn run_on_device(
        &self,
        req: RunShard,
        answer_with: AnswerWith,
        cancel: ShardCancel,
        abandoned: impl Future<Output = ()>,
    ) -> Option<ShardAnswer> {
        let shard_id = req.shard_id;
        if self.draining.load(Ordering::Relaxed) {
            return Some(ShardAnswer::Failed { shard_id, reason: "the agent is draining".into() });
        }
        let Some((_, addr)) = self.devices.0.get(&req.device) else {
            let reason = format!("no device {} on this agent", req.device);
            return Some(ShardAnswer::Failed { shard_id, reason });
        };
        let activity = &self.activity;
        m::shards_in_hand(activity.in_hand.fetch_add(1, Ordering::Relaxed) + 1);
        let compute = addr.send(Compute {
            session: self.session,
            request: req,
            answer: answer_with,
            cancel: cancel.clone(),
        });
        tokio::pin!(compute);
        let answer = tokio::select! {
            biased;
            r = &mut compute => r,
            () = abandoned => {
                // The device drops or stops the shard; waiting for it keeps it in hand (a drain
                // waits for it) until the device is free again.
                cancel.cancel();
                (&mut compute).await
            }
        };
        m::shards_in_hand(activity.in_hand.fetch_sub(1, Ordering::Relaxed).saturating_sub(1));
        activity.touch();
        if cancel.is_cancelled() {
            return None;
        }
        Some(answer.unwrap_or_else(|_| ShardAnswer::Failed {
            shard_id,
            reason: "device actor stopped".into(),
        }))
    }
}

async fn resolve(target: &str) -> Result<SocketAddr, AgentError> {
    let mut addrs = tokio::net::lookup_host(target)
        .await
        .map_err(|e| AgentError::Setup(format!("cannot resolve --coordinator {target}: {e}")))?;
    addrs
        .next()
        .ok_or_else(|| AgentError::Setup(format!("--coordinator {target} resolves to no address")))
}

fn transport(idle: Duration) -> quinn::TransportConfig {
    let mut t = quinn::TransportConfig::default();
    t.max_idle_timeout(quinn::IdleTimeout::try_from(idle).ok());
    t.keep_alive_interval(Some(idle / 3));
    t.max_concurrent_bidi_streams(quinn::VarInt::from_u32(1024));
    t.max_concurrent_uni_streams(quinn::VarInt::from_u32(0));
    t
}

/// Runs one session. `welcomed` turns true once the coordinator admitted the agent.
pub async fn run(
    ctx: &SessionCtx,
    shutdown: &mut watch::Receiver<bool>,
    welcomed: &mut bool,
) -> Result<End, AgentError> {
    let cfg = &ctx.config;
    let addr = resolve(&cfg.coordinator).await?;
    let bind: SocketAddr = if addr.is_ipv6() { "[::]:0" } else { "0.0.0.0:0" }
        .parse()
        .map_err(|e| AgentError::Setup(format!("{e}")))?;
    let (client, verifier) = crate::tls::client_config(ctx.pinned, transport(cfg.idle_timeout))
        .map_err(AgentError::Setup)?;
    let socket = cpc_common::quic::FarmSocket::bind(bind)
        .map_err(|e| AgentError::Setup(format!("cannot open a UDP socket: {e}")))?;
    if let Some(warning) = socket.small_buffers() {
        tracing::warn!("{warning}");
    }
    let runtime = std::sync::Arc::new(quinn::TokioRuntime);
    let endpoint =
        quinn::Endpoint::new(quinn::EndpointConfig::default(), None, socket.socket, runtime)
            .map_err(|e| AgentError::Setup(format!("cannot open a UDP socket: {e}")))?;
    let result = session(ctx, &endpoint, client, &verifier, addr, shutdown, welcomed).await;
    ctx.ready.store(false, Ordering::Relaxed);
    m::connected(false);
    endpoint.close(0u32.into(), b"agent leaving");
    let _ = tokio::time::timeout(Duration::from_secs(1), endpoint.wait_idle()).await;
    result
}

async fn session(
    ctx: &SessionCtx,
    endpoint: &quinn::Endpoint,
    client: quinn::ClientConfig,
    verifier: &crate::tls::PinnedVerifier,
    addr: SocketAddr,
    shutdown: &mut watch::Receiver<bool>,
    welcomed: &mut bool,
) -> Result<End, AgentError> {
    let cfg = &ctx.config;
    let connecting = endpoint
        .connect_with(client, addr, SERVER_NAME)
        .map_err(|e| AgentError::Setup(format!("cannot dial {addr}: {e}")))?;
    // A drain signal while still dialling ends at once: there is nothing in hand to finish.
    let connected = tokio::select! {
        r = connecting => r,
        _ = shutdown.changed() => return Ok(End::Drained),
    };
    let conn = match connected {
        Ok(c) => c,
        Err(e) => {
            if let Some(presented) = verifier.last_mismatch() {
                return Err(AgentError::FingerprintMismatch {
                    presented,
                    pinned: hex::encode(ctx.pinned),
                });
            }
            return Err(AgentError::Setup(format!("cannot connect to {addr}: {e}")));
        }
    };
    let (mut ctl_send, mut ctl_recv) = conn
        .open_bi()
        .await
        .map_err(|e| AgentError::Setup(format!("cannot open the control stream: {e}")))?;
    let hello = Hello {
        protocol_version: cfg.protocol_version,
        token: cfg.token.clone(),
        agent_name: cfg.name.clone(),
        devices: ctx.devices.adverts(),
    };
    write_frame(&mut ctl_send, &hello)
        .await
        .map_err(|e| AgentError::Setup(format!("sending Hello: {e}")))?;
    let mut dec = FrameDecoder::with_limit(MAX_REPLY_BYTES);
    let reply = tokio::time::timeout(
        cfg.handshake_timeout,
        read_frame::<HelloReply>(&mut ctl_recv, &mut dec),
    )
    .await;
    let (agent_id, interval_ms) = match reply {
        Err(_) => {
            return Err(AgentError::Setup("the coordinator did not answer Hello in time".into()));
        }
        Ok(Ok(Some(HelloReply::Welcome { agent_id, heartbeat_interval_ms }))) => {
            (agent_id, heartbeat_interval_ms)
        }
        Ok(Ok(Some(HelloReply::Refused { reason }))) => return Err(AgentError::Refused(reason)),
        Ok(Ok(None)) => {
            return Err(AgentError::Setup("the coordinator closed the control stream".into()));
        }
        Ok(Err(FrameIoError::Codec(e))) => {
            return Err(AgentError::Refused(format!(
                "undecodable answer to Hello (wrong protocol?): {e}"
            )));
        }
        Ok(Err(e)) => return Err(AgentError::Setup(format!("waiting for Welcome: {e}"))),
    };
    *welcomed = true;
    // Rows cached for an earlier connection are never served on this one: shard ids are the coordinator's,
    // and a restarted coordinator numbers its shards from 1 again.
    let session = ctx.sessions.fetch_add(1, Ordering::Relaxed) + 1;
    if let Ok(mut cache) = ctx.cache.lock() {
        cache.begin_session(session);
    }
    ctx.ready.store(true, Ordering::Relaxed);
    m::connected(true);
    tracing::info!(agent_id, %addr, devices = ctx.devices.len(), "admitted by the coordinator");

    // Control writer: heartbeats, quarantined devices (each once per connection), device reports (the first
    // with the first heartbeat, then each one that changed, at most once per heartbeat), and `Draining` when
    // asked.
    let (ctl_tx, mut ctl_rx) = mpsc::unbounded_channel::<AgentControl>();
    let interval = Duration::from_millis(u64::from(interval_ms.max(10)));
    let reports = ctx.health.clone();
    let mut health = ctx.health.subscribe();
    let heartbeat = actix_rt::spawn(async move {
        let mut seq = 0u64;
        let mut tick = tokio::time::interval(interval);
        let mut told = std::collections::BTreeSet::new();
        let mut reported = std::collections::BTreeMap::new();
        let mut health_open = true;
        loop {
            let msgs = tokio::select! {
                _ = tick.tick() => {
                    seq += 1;
                    let mut msgs = vec![AgentControl::Heartbeat { seq }];
                    for (device, report) in reports.reports() {
                        if reported.get(&device) != Some(&report) {
                            reported.insert(device, report.clone());
                            msgs.push(AgentControl::DeviceReport(report));
                        }
                    }
                    msgs
                }
                m = ctl_rx.recv() => match m { Some(m) => vec![m], None => break },
                changed = health.changed(), if health_open => {
                    health_open = changed.is_ok();
                    health
                        .borrow_and_update()
                        .iter()
                        .filter(|(device, _)| told.insert(**device))
                        .map(|(&device, reason)| AgentControl::DeviceQuarantined { device, reason: reason.clone() })
                        .collect()
                }
            };
            for msg in &msgs {
                if write_frame(&mut ctl_send, msg).await.is_err() {
                    return;
                }
            }
        }
    });

    let activity = Arc::new(Activity::default());
    let draining = Arc::new(AtomicBool::new(false));
    let state = Arc::new(ConnState {
        session,
        devices: ctx.devices.clone(),
        cache: ctx.cache.clone(),
        draining: draining.clone(),
        activity: activity.clone(),
    });
    let mut drain_started: Option<Instant> = None;
    let mut check = tokio::time::interval(Duration::from_millis(50));
    let end = loop {
        tokio::select! {
            stream = conn.accept_bi() => match stream {
                Ok((send, recv)) => {
                    activity.touch();
                    actix_rt::spawn(serve_request(send, recv, state.clone()));
                }
                Err(e) => break End::Lost(e.to_string()),
            },
            changed = shutdown.changed(), if drain_started.is_none() => {
                if changed.is_err() || *shutdown.borrow() {
                    tracing::info!("draining: finishing the shards in hand, taking no new one");
                    draining.store(true, Ordering::Relaxed);
                    let _ = ctl_tx.send(AgentControl::Draining);
                    drain_started = Some(Instant::now());
                }
            },
            _ = check.tick(), if drain_started.is_some() => {
                let idle = activity.in_hand.load(Ordering::Relaxed) == 0 && activity.quiet_for() >= ctx.config.drain_grace;
                if idle || drain_started.is_some_and(|t| t.elapsed() >= ctx.config.drain_timeout) {
                    conn.close(0u32.into(), b"drained");
                    break End::Drained;
                }
            },
        }
    };
    heartbeat.abort();
    Ok(end)
}

/// A row for a spot check: from the cache, or recomputed by the device that ran its shard.
async fn fetch_row(
    devices: &Devices,
    cache: &Mutex<RowCache>,
    key: ShardKey,
    row: u32,
) -> RowAnswer {
    let shard_id = key.shard_id;
    let source = cache.lock().map_or(RowSource::Unknown, |c| c.source(key, row));
    match source {
        RowSource::Held(values) => RowAnswer::Row { values },
        RowSource::Recompute { device, shard } => match devices.0.get(&device) {
            Some((_, addr)) => {
                addr.send(RecomputeRow { shard_id, shard }).await.unwrap_or_else(|_| {
                    RowAnswer::Unavailable { reason: format!("device {device}'s actor stopped") }
                })
            }
            None => RowAnswer::Unavailable { reason: format!("no device {device} on this agent") },
        },
        RowSource::Unknown => RowAnswer::Unavailable {
            reason: format!(
                "row {row} of shard {shard_id} is not held (evicted: raise --row-cache-mib)"
            ),
        },
    }
}

/// A row with its Merkle path, for a spot check of a shard answered by its root: the row as [`fetch_row`]
/// finds it, the path from the shard's tree.
async fn fetch_row_proof(
    devices: &Devices,
    cache: &Mutex<RowCache>,
    key: ShardKey,
    row: u32,
) -> RowAnswer {
    let path = cache.lock().ok().and_then(|c| c.path(key, row));
    let Some(path) = path else {
        return RowAnswer::Unavailable {
            reason: format!(
                "no Merkle path of row {row} of shard {} is held (not answered by its root here, or \
                 evicted)",
                key.shard_id
            ),
        };
    };
    match fetch_row(devices, cache, key, row).await {
        RowAnswer::Row { values } => RowAnswer::Proof { values, path },
        other => other,
    }
}

/// Completes when the coordinator gives up on a request: it stopped the answer half of the stream
/// ([`SHARD_CANCELLED`], or any code: a dropped stream stops with 0) or reset the request half, or the
/// connection is gone. Either way nobody will read the answer.
async fn abandoned(send: &quinn::SendStream, recv: &mut quinn::RecvStream) {
    let stopped = send.stopped();
    let reset = async {
        loop {
            match recv.read_chunk(MAX_REQUEST_BYTES, true).await {
                // Bytes after the request (there should be none) change nothing.
                Ok(Some(_)) => {}
                // The request half ended cleanly: only a stop can come now.
                Ok(None) => std::future::pending::<()>().await,
                Err(_) => return,
            }
        }
    };
    tokio::select! {
        _ = stopped => {}
        () = reset => {}
    }
}

/// Reads a request stream's first frame, and not a byte more: after an `OpenShardPipe` come the pipe's
/// orders, read by the pipe with its own (larger) frame cap. `Ok(None)` when the stream ends before any
/// byte.
async fn read_request(recv: &mut quinn::RecvStream) -> Result<Option<Request>, FrameIoError> {
    let mut prefix = [0u8; LENGTH_PREFIX_BYTES];
    match recv.read_exact(&mut prefix).await {
        Ok(()) => {}
        Err(quinn::ReadExactError::FinishedEarly(0)) => return Ok(None),
        Err(quinn::ReadExactError::FinishedEarly(n)) => return Err(CodecError::Truncated(n).into()),
        Err(quinn::ReadExactError::ReadError(e)) => return Err(e.into()),
    }
    let len = u32::from_be_bytes(prefix) as usize;
    if len > MAX_REQUEST_BYTES {
        return Err(CodecError::FrameTooLarge { len, max: MAX_REQUEST_BYTES }.into());
    }
    let mut payload = vec![0u8; len];
    match recv.read_exact(&mut payload).await {
        Ok(()) => Ok(Some(decode_payload::<Request>(&payload)?)),
        Err(quinn::ReadExactError::FinishedEarly(n)) => {
            Err(CodecError::Truncated(LENGTH_PREFIX_BYTES + n).into())
        }
        Err(quinn::ReadExactError::ReadError(e)) => Err(e.into()),
    }
}

async fn serve_request(
    mut send: quinn::SendStream,
    mut recv: quinn::RecvStream,
    state: Arc<ConnState>,
) {
    let request = match read_request(&mut recv).await {
        Ok(Some(r)) => r,
        Ok(None) => return,
        Err(FrameIoError::Codec(e)) => {
            answer(&mut send, &Response::Error { reason: e.to_string() }).await;
            return;
        }
        Err(_) => return,
    };
    let session = state.session;
    let (req, answer_with) = match request {
        Request::FetchRow(FetchRow { shard_id, row }) => {
            let key = ShardKey { session, shard_id };
            let row = fetch_row(&state.devices, &state.cache, key, row).await;
            answer(&mut send, &row).await;
            return;
        }
        Request::FetchRowProof(FetchRowProof(FetchRow { shard_id, row })) => {
            let key = ShardKey { session, shard_id };
            let proof = fetch_row_proof(&state.devices, &state.cache, key, row).await;
            answer(&mut send, &proof).await;
            return;
        }
        Request::OpenShardPipe(OpenShardPipe) => {
            crate::pipe::serve(send, recv, state).await;
            return;
        }
        Request::RunShard(req) => (req, AnswerWith::Leaves),
        Request::RunShardRoot(RunShardRoot(req)) => (req, AnswerWith::Root),
    };
    let cancel = ShardCancel::default();
    let shard = state.run_on_device(req, answer_with, cancel, abandoned(&send, &mut recv)).await;
    match shard {
        Some(shard) => answer(&mut send, &shard).await,
        None => {
            let _ = send.reset(quinn::VarInt::from_u32(SHARD_CANCELLED));
        }
    }
}

/// Writes a request's one answer and finishes the stream (a coordinator that has gone away reads nothing).
async fn answer<T: serde::Serialize>(send: &mut quinn::SendStream, answer: &T) {
    if write_frame(send, answer).await.is_ok() {
        let _ = send.finish();
    }
}
