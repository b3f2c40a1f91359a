//! A test PoC validator: a small WebSocket server on a free loopback port that sends jobs (or any frame)
//! to the worker connected to it, records every answer with the connection it came on, checks results
//! against the reference computation and the worker's signature, and can drop the connection on purpose.
//!
//! It serves one connection at a time (a worker holds one per validator and identity); a reconnecting
//! worker is accepted again, and frames queued while no worker is connected go to the next connection.
//! Blocking API on a runtime of its own, like [`crate::harness`], so plain `#[test]`s can drive it.
//!
//! ```no_run
//! use cpc_tests::validator::{TestJob, TestValidator};
//! let v = TestValidator::start()?;
//! // cpc-coordinator run --validator {v.url()}=w1 ...
//! let job = TestJob::new("j1", "any seed", 64, 2);
//! v.send_job(&job);
//! let answer = v.wait_for_answer("j1", std::time::Duration::from_secs(30))?;
//! # Ok::<(), anyhow::Error>(())
//! ```

use anyhow::{Context as _, bail};
use cpc_common::{ComputeResult, PublicKey, synthetic::Challenge};
use futures_util::{SinkExt as _, StreamExt as _};
use serde_json::{Value, json};
use std::{
    collections::VecDeque,
    net::SocketAddr,
    sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError},
    time::{Duration, Instant},
};
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::Message;

/// A job to send.
#[derive(Debug, Clone)]
pub struct TestJob {
    /// The job id.
    pub job_id: String,
    /// The task id.
    pub task_id: String,
    /// The challenge.
    pub challenge: Challenge,
    /// The payload's `nonce`, if any.
    pub nonce: Option<u64>,
    /// The payload's `deadline` (Unix seconds), if any.
    pub deadline: Option<f64>,
}

impl TestJob {
    /// A job with task id `task-<job_id>`, no nonce and no deadline.
    ///
    /// # Panics
    /// On a challenge synthetic-v1 refuses (`n` or `iterations` of 0).
    pub fn new(job_id: &str, seed: &str, n: u32, iterations: u32) -> Self {
        #[allow(clippy::expect_used)]
        let challenge = Challenge::new(seed, n, iterations).expect("a valid test challenge");
        Self {
            job_id: job_id.to_owned(),
            task_id: format!("task-{job_id}"),
            challenge,
            nonce: None,
            deadline: None,
        }
    }

    /// The job frame.
    pub fn frame(&self) -> String {
        let mut payload = json!({
            "seed": self.challenge.seed(),
            "matrix_size": self.challenge.matrix_size(),
            "iterations": self.challenge.iterations(),
        });
        if let Some(n) = self.nonce {
            payload["nonce"] = json!(n);
        }
        if let Some(d) = self.deadline {
            payload["deadline"] = json!(d);
        }
        json!({"type": "job", "job_id": self.job_id, "task_id": self.task_id, "payload": payload})
            .to_string()
    }

    /// Checks a `job_result` against the reference computation (CPU backend) and `worker`'s signature
    /// (nonce rule: the payload's nonce, else 0).
    pub fn check(&self, answer: &Value, worker: &PublicKey) -> anyhow::Result<()> {
        if answer["type"] != "job_result" {
            bail!("job {} answered {answer}", self.job_id);
        }
        let backend = cpc_kernels::open(cpc_kernels::BackendKind::Cpu, 0)?;
        let reference = hex::encode(cpc_kernels::result_hash(backend.as_ref(), &self.challenge)?);
        let field = |name: &str| -> anyhow::Result<String> {
            answer[name]
                .as_str()
                .map(str::to_owned)
                .with_context(|| format!("no {name} in {answer}"))
        };
        if field("result_hash")? != reference {
            bail!(
                "job {}: result_hash {} is not the reference {reference}",
                self.job_id,
                answer["result_hash"]
            );
        }
        let result = ComputeResult {
            task_id: self.task_id.clone(),
            worker_address: field("worker_address")?,
            result_hash: field("result_hash")?,
            proof: field("proof")?,
            nonce: self.nonce.unwrap_or(0).into(),
            signature: field("signature")?,
        };
        if result.worker_address != worker.address().as_str() {
            bail!(
                "job {}: worker_address {} is not {}",
                self.job_id,
                result.worker_address,
                worker.address()
            );
        }
        if !result.verify_signature(worker) {
            bail!("job {}: the signature does not verify", self.job_id);
        }
        Ok(())
    }
}

/// A frame received from the worker.
#[derive(Debug, Clone)]
pub struct Received {
    /// Which connection it came on (1 for the first).
    pub connection: usize,
    /// When it arrived.
    pub at: Instant,
    /// The frame, parsed.
    pub value: Value,
}

#[derive(Debug, Default)]
struct State {
    /// Connections accepted so far.
    connections: usize,
    /// Whether a worker is connected now.
    connected: bool,
    /// Every frame received, in order.
    received: Vec<Received>,
    /// When each job frame was sent (job id → time).
    sent: Vec<(String, Instant)>,
}

#[derive(Debug)]
enum Command {
    Send(String),
    Drop,
}

#[derive(Debug, Default)]
struct Shared {
    state: Mutex<State>,
    changed: Condvar,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn update(&self, f: impl FnOnce(&mut State)) {
        f(&mut self.lock());
        self.changed.notify_all();
    }
}

/// The running test validator; stops when dropped.
#[derive(Debug)]
pub struct TestValidator {
    addr: SocketAddr,
    shared: Arc<Shared>,
    commands: mpsc::UnboundedSender<Command>,
    _runtime: tokio::runtime::Runtime,
}

impl TestValidator {
    /// Listens on a free loopback port.
    pub fn start() -> anyhow::Result<Self> {
        let runtime =
            tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build()?;
        let listener = runtime.block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))?;
        let addr = listener.local_addr()?;
        let shared = Arc::new(Shared::default());
        let (tx, rx) = mpsc::unbounded_channel();
        runtime.spawn(serve(listener, Arc::clone(&shared), rx));
        Ok(Self { addr, shared, commands: tx, _runtime: runtime })
    }

    /// `ws://127.0.0.1:PORT/jobs`.
    pub fn url(&self) -> String {
        format!("ws://{}/jobs", self.addr)
    }

    /// Sends a job (now, or to the next connection).
    pub fn send_job(&self, job: &TestJob) {
        self.shared.update(|s| s.sent.push((job.job_id.clone(), Instant::now())));
        let _ = self.commands.send(Command::Send(job.frame()));
    }

    /// Sends any text frame.
    pub fn send_raw(&self, text: &str) {
        let _ = self.commands.send(Command::Send(text.to_owned()));
    }

    /// Closes the current connection abruptly (after the frames queued before this call).
    pub fn drop_connection(&self) {
        let _ = self.commands.send(Command::Drop);
    }

    /// Connections accepted so far.
    pub fn connections(&self) -> usize {
        self.shared.lock().connections
    }

    /// Waits until `n` connections were accepted and one is up.
    pub fn wait_for_connection(&self, n: usize, timeout: Duration) -> anyhow::Result<()> {
        self.wait(timeout, |s| (s.connections >= n && s.connected).then_some(()))
            .with_context(|| format!("no connection #{n} within {timeout:?}"))
    }

    /// Waits for the first frame about `job_id`.
    pub fn wait_for_answer(&self, job_id: &str, timeout: Duration) -> anyhow::Result<Received> {
        self.wait(timeout, |s| s.received.iter().find(|r| r.value["job_id"] == job_id).cloned())
            .with_context(|| format!("no answer to job {job_id} within {timeout:?}"))
    }

    /// Waits for the `k`-th (0-based) frame with a `null` job id.
    pub fn wait_for_anonymous(&self, k: usize, timeout: Duration) -> anyhow::Result<Received> {
        self.wait(timeout, |s| {
            s.received.iter().filter(|r| r.value["job_id"].is_null()).nth(k).cloned()
        })
        .with_context(|| format!("no anonymous answer #{k} within {timeout:?}"))
    }

    /// Every frame received so far.
    pub fn received(&self) -> Vec<Received> {
        self.shared.lock().received.clone()
    }

    /// Time from sending `job_id` to its first answer.
    pub fn latency(&self, job_id: &str) -> Option<Duration> {
        let s = self.shared.lock();
        let sent = s.sent.iter().find(|(j, _)| j == job_id)?.1;
        let got = s.received.iter().find(|r| r.value["job_id"] == job_id)?.at;
        Some(got.saturating_duration_since(sent))
    }

    fn wait<T>(&self, timeout: Duration, mut f: impl FnMut(&State) -> Option<T>) -> Option<T> {
        let deadline = Instant::now() + timeout;
        let mut s = self.shared.lock();
        loop {
            if let Some(t) = f(&s) {
                return Some(t);
            }
            let left = deadline.checked_duration_since(Instant::now())?;
            s = self
                .shared
                .changed
                .wait_timeout(s, left.min(Duration::from_millis(100)))
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        }
    }
}

async fn serve(
    listener: tokio::net::TcpListener,
    shared: Arc<Shared>,
    mut commands: mpsc::UnboundedReceiver<Command>,
) {
    // Frames for the next connection.
    let mut queued: VecDeque<Command> = VecDeque::new();
    loop {
        let Ok((tcp, _)) = listener.accept().await else { return };
        let Ok(mut ws) = tokio_tungstenite::accept_async(tcp).await else { continue };
        let connection = {
            let mut s = shared.lock();
            s.connections += 1;
            s.connected = true;
            s.connections
        };
        shared.changed.notify_all();
        let mut dropped = false;
        while let Some(cmd) = queued.pop_front() {
            match cmd {
                Command::Send(text) => {
                    if ws.send(Message::text(text)).await.is_err() {
                        break;
                    }
                }
                Command::Drop => {
                    dropped = true;
                    break;
                }
            }
        }
        while !dropped {
            tokio::select! {
                msg = ws.next() => match msg {
                    Some(Ok(Message::Text(text))) => {
                        let value = serde_json::from_str(text.as_str()).unwrap_or(Value::String(text.to_string()));
                        shared.update(|s| s.received.push(Received { connection, at: Instant::now(), value }));
                    }
                    Some(Ok(_)) => {}
                    None | Some(Err(_)) => break,
                },
                cmd = commands.recv() => match cmd {
                    None => return,
                    Some(Command::Send(text)) => {
                        if ws.send(Message::text(text.clone())).await.is_err() {
                            queued.push_back(Command::Send(text));
                            break;
                        }
                    }
                    Some(Command::Drop) => dropped = true,
                },
            }
        }
        // Abrupt: no close handshake, the TCP connection just goes.
        drop(ws);
        shared.update(|s| s.connected = false);
    }
}

/// The `p`-quantile (0–1) of `samples` (nearest rank).
pub fn quantile(samples: &[Duration], p: f64) -> Option<Duration> {
    let mut v = samples.to_vec();
    v.sort();
    let i = ((v.len() as f64 * p).ceil() as usize).clamp(1, v.len().max(1)) - 1;
    v.get(i).copied()
}
