//! One connection to a PoC validator, for one worker identity: a tokio task that connects, answers jobs,
//! keeps the connection alive with pings, and reconnects with exponential backoff and jitter.
//!
//! Each job is journaled `received` before any work, computed as a validator-class job with the
//! validator's deadline on the shared [`ComputeService`] in a task of its own (the connection keeps reading meanwhile), journaled
//! `computed` (or `failed`), and answered on whatever connection is up when it finishes; it is marked
//! `answered` once the frame was written. On every (re)connection the client first answers what the
//! journal holds unanswered for this validator and identity: computed and failed jobs from the journal,
//! jobs that were only received (the process died while computing them) by computing them again. A
//! validator re-sending a job id it sent before gets the same answer again (signatures are deterministic,
//! RFC 6979), never a second computation.
//!
//! At most `max_pending_jobs` jobs are in flight; more get a `job_error` "busy" at once, so a validator
//! cannot queue unbounded work.

use super::{
    ChainView, MAX_MESSAGE_BYTES, ValidatorError, ValidatorSettings,
    protocol::{self, Answer, Job},
};
use crate::{
    farm::{JobSpec, Priority},
    mining::{
        compute::{ComputeError, ComputeService},
        journal::{self, Journal, ValidatorJobRecord, ValidatorJobState, ValidatorTaskOutcome},
    },
};
use cpc_common::{ComputeResult, PyInt, synthetic::BlockTask};
use futures_util::{SinkExt as _, StreamExt as _};
use rand::Rng as _;
use std::{
    collections::HashSet,
    sync::Arc,
    time::{Duration, Instant},
};
use tokio::{net::TcpStream, sync::mpsc};
use tokio_tungstenite::{
    MaybeTlsStream, WebSocketStream,
    tungstenite::{Message, protocol::WebSocketConfig},
};
use tokio_util::sync::CancellationToken;

type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// Largest message the WebSocket layer reads: beyond [`MAX_MESSAGE_BYTES`] a message still gets a
/// `job_error`; beyond this one it cannot be skipped, and the connection is dropped after a `job_error`.
const TRANSPORT_LIMIT_BYTES: usize = 16 * MAX_MESSAGE_BYTES;

/// How long a connection must have lasted for the backoff to start again from its minimum.
const STABLE_CONNECTION: Duration = Duration::from_secs(5);

/// Exponential backoff with equal jitter: each delay is drawn from `[d/2, d]`, `d` doubling from `min` to
/// `max`.
#[derive(Debug, Clone)]
pub struct Backoff {
    min: Duration,
    max: Duration,
    next: Duration,
}

impl Backoff {
    /// Starts at `min`, grows to `max`.
    pub fn new(min: Duration, max: Duration) -> Self {
        Self { min, max: max.max(min), next: min }
    }

    /// The next delay.
    pub fn next_delay(&mut self) -> Duration {
        let d = self.next;
        self.next = (d * 2).min(self.max);
        let half = d / 2;
        half + half.mul_f64(rand::thread_rng().r#gen::<f64>())
    }

    /// Back to the minimum (after a connection that held).
    pub fn reset(&mut self) {
        self.next = self.min;
    }
}

/// The client of one (validator, identity).
#[derive(Debug)]
pub struct Client {
    settings: ValidatorSettings,
    label: String,
    journal: Journal,
    compute: Arc<dyn ComputeService>,
    chain: ChainView,
    /// Jobs being computed by this process.
    in_flight: HashSet<String>,
    /// Job ids whose computation ended (result or error journaled).
    done_tx: mpsc::UnboundedSender<String>,
    done_rx: mpsc::UnboundedReceiver<String>,
}

/// Why a connection ended.
#[derive(Debug)]
enum End {
    /// The process is stopping.
    Shutdown,
    /// The connection failed or was closed; reconnect.
    Lost(String),
}

impl Client {
    /// A client for `settings`.
    pub fn new(
        settings: ValidatorSettings,
        journal: Journal,
        compute: Arc<dyn ComputeService>,
        chain: ChainView,
    ) -> Result<Self, ValidatorError> {
        let label = super::url_label(&settings.url)?;
        let (done_tx, done_rx) = mpsc::unbounded_channel();
        Ok(Self {
            settings,
            label,
            journal,
            compute,
            chain,
            in_flight: HashSet::new(),
            done_tx,
            done_rx,
        })
    }

    fn identity(&self) -> &str {
        &self.settings.identity.name
    }

    /// Connects, serves, reconnects, until `shutdown` is cancelled.
    pub async fn run(mut self, shutdown: CancellationToken) {
        let mut backoff = Backoff::new(self.settings.backoff_min, self.settings.backoff_max);
        // The transport reads up to TRANSPORT_LIMIT_BYTES so that a message over the protocol's own limit
        // can still be answered with a `job_error` and the connection kept.
        let config = WebSocketConfig::default()
            .max_message_size(Some(TRANSPORT_LIMIT_BYTES))
            .max_frame_size(Some(TRANSPORT_LIMIT_BYTES));
        loop {
            if shutdown.is_cancelled() {
                return;
            }
            let attempt = tokio::time::timeout(
                self.settings.connect_timeout,
                tokio_tungstenite::connect_async_with_config(
                    self.settings.url.as_str(),
                    Some(config),
                    false,
                ),
            );
            let attempt = tokio::select! {
                r = attempt => r,
                () = shutdown.cancelled() => return,
            };
            match attempt {
                Ok(Ok((ws, _))) => {
                    tracing::info!(validator = %self.settings.url, identity = %self.identity(), "connected to validator");
                    let gauge = metrics::gauge!("cpcfarm_validator_connections_up", "validator" => self.label.clone());
                    gauge.increment(1.0);
                    let since = Instant::now();
                    let end = self.serve(ws, &shutdown).await;
                    gauge.decrement(1.0);
                    match end {
                        End::Shutdown => return,
                        End::Lost(reason) => {
                            tracing::warn!(validator = %self.settings.url, identity = %self.identity(), %reason, "validator connection lost; reconnecting")
                        }
                    }
                    if since.elapsed() >= STABLE_CONNECTION {
                        backoff.reset();
                    }
                }
                Ok(Err(e)) => {
                    tracing::warn!(validator = %self.settings.url, error = %e, "cannot connect to validator")
                }
                Err(_) => {
                    tracing::warn!(validator = %self.settings.url, timeout = ?self.settings.connect_timeout, "validator connection attempt timed out")
                }
            }
            let delay = backoff.next_delay();
            tracing::debug!(validator = %self.settings.url, ?delay, "reconnecting after a delay");
            tokio::select! {
                () = tokio::time::sleep(delay) => {}
                () = shutdown.cancelled() => return,
            }
        }
    }

    async fn serve(&mut self, mut ws: Ws, shutdown: &CancellationToken) -> End {
        if let Err(e) = self.recover(&mut ws).await {
            return End::Lost(e);
        }
        let mut ping = tokio::time::interval(self.settings.ping_interval);
        ping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        ping.tick().await;
        let mut pong_deadline: Option<tokio::time::Instant> = None;
        loop {
            let pong_wait = async {
                match pong_deadline {
                    Some(d) => tokio::time::sleep_until(d).await,
                    None => std::future::pending().await,
                }
            };
            let step: Result<(), String> = tokio::select! {
                msg = ws.next() => match msg {
                    None => Err("the validator closed the connection".into()),
                    Some(Err(tokio_tungstenite::tungstenite::Error::Capacity(e))) => {
                        let error = format!("message too large ({e}); the limit is {MAX_MESSAGE_BYTES} bytes");
                        let answer = Answer::JobError { job_id: None, error: error.clone() };
                        metrics::counter!("cpcfarm_validator_jobs_failed_total", "validator" => self.label.clone()).increment(1);
                        let _ = send(&mut ws, &answer).await;
                        Err(error)
                    }
                    Some(Err(e)) => Err(format!("read failed: {e}")),
                    Some(Ok(Message::Text(text))) if text.len() > MAX_MESSAGE_BYTES => {
                        self.too_large(text.len(), &mut ws).await
                    }
                    Some(Ok(Message::Binary(bytes))) if bytes.len() > MAX_MESSAGE_BYTES => {
                        self.too_large(bytes.len(), &mut ws).await
                    }
                    Some(Ok(Message::Text(text))) => self.on_frame(text.as_str(), &mut ws).await,
                    Some(Ok(Message::Binary(bytes))) => match std::str::from_utf8(&bytes) {
                        Ok(text) => self.on_frame(text, &mut ws).await,
                        Err(_) => {
                            let answer = Answer::JobError { job_id: None, error: "malformed JSON: a binary frame that is not UTF-8".into() };
                            metrics::counter!("cpcfarm_validator_jobs_failed_total", "validator" => self.label.clone()).increment(1);
                            send(&mut ws, &answer).await
                        }
                    },
                    Some(Ok(Message::Pong(_))) => {
                        pong_deadline = None;
                        Ok(())
                    }
                    // tungstenite queues the pong itself; flush it out.
                    Some(Ok(Message::Ping(_))) => ws.flush().await.map_err(|e| format!("write failed: {e}")),
                    Some(Ok(Message::Close(frame))) => Err(format!("the validator closed the connection ({frame:?})")),
                    Some(Ok(Message::Frame(_))) => Ok(()),
                },
                Some(job_id) = self.done_rx.recv() => {
                    self.in_flight.remove(&job_id);
                    self.answer(&job_id, &mut ws, false).await
                }
                _ = ping.tick() => {
                    if pong_deadline.is_none() {
                        pong_deadline = Some(tokio::time::Instant::now() + self.settings.pong_timeout);
                    }
                    ws.send(Message::Ping(Default::default())).await.map_err(|e| format!("ping failed: {e}"))
                }
                () = pong_wait => Err(format!("no pong within {:?}", self.settings.pong_timeout)),
                () = shutdown.cancelled() => {
                    let _ = tokio::time::timeout(Duration::from_secs(2), ws.close(None)).await;
                    return End::Shutdown;
                }
            };
            if let Err(reason) = step {
                return End::Lost(reason);
            }
        }
    }

    /// Answers what the journal holds unanswered for this validator and identity; recomputes jobs that
    /// were only received.
    async fn recover(&mut self, ws: &mut Ws) -> Result<(), String> {
        let pending = match self
            .journal
            .unanswered_validator_jobs(&self.settings.url, self.identity())
        {
            Ok(p) => p,
            Err(e) => {
                tracing::error!(validator = %self.settings.url, error = %e, "cannot read the journal's unanswered jobs");
                return Ok(());
            }
        };
        if !pending.is_empty() {
            tracing::info!(validator = %self.settings.url, identity = %self.identity(), jobs = pending.len(), "answering jobs left from an earlier connection");
        }
        for rec in pending {
            match rec.state {
                ValidatorJobState::Computed | ValidatorJobState::Failed => {
                    self.answer(&rec.job_id, ws, false).await?;
                }
                ValidatorJobState::Received if !self.in_flight.contains(&rec.job_id) => {
                    self.start_job(rec);
                }
                _ => {}
            }
        }
        Ok(())
    }

    /// A message over [`MAX_MESSAGE_BYTES`]: a `job_error` (its job id is not read), and the connection stays.
    async fn too_large(&mut self, len: usize, ws: &mut Ws) -> Result<(), String> {
        tracing::warn!(validator = %self.settings.url, bytes = len, "refused an oversized validator message");
        metrics::counter!("cpcfarm_validator_jobs_failed_total", "validator" => self.label.clone())
            .increment(1);
        let error = format!("message too large: {len} bytes; the limit is {MAX_MESSAGE_BYTES}");
        send(ws, &Answer::JobError { job_id: None, error }).await
    }

    async fn on_frame(&mut self, text: &str, ws: &mut Ws) -> Result<(), String> {
        let job = match protocol::parse_job(text, self.settings.max_matrix_size) {
            Ok(job) => job,
            Err(e) => {
                tracing::warn!(validator = %self.settings.url, error = %e, "refused a validator frame");
                metrics::counter!("cpcfarm_validator_jobs_failed_total", "validator" => self.label.clone()).increment(1);
                return send(ws, &Answer::parse_error(&e)).await;
            }
        };
        metrics::counter!("cpcfarm_validator_jobs_received_total", "validator" => self.label.clone())
            .increment(1);
        // A block task's id is public (derivable from the block hash and the address): a validator could
        // otherwise have this identity sign (and, with `submit_to_l1`, submit) its own result under the
        // block's task.
        if self.is_block_task(&job.task_id) {
            tracing::warn!(validator = %self.settings.url, job_id = %job.job_id, task_id = %job.task_id,
                "refused a validator job whose task_id is one of this identity's block tasks");
            metrics::counter!("cpcfarm_validator_jobs_failed_total", "validator" => self.label.clone()).increment(1);
            let error = self.block_task_refusal(&job.task_id);
            return send(ws, &Answer::JobError { job_id: Some(job.job_id), error }).await;
        }
        let record = self.record(&job);
        let known = self.journal.record_validator_job(&record).and_then(|new| {
            if new {
                Ok(None)
            } else {
                self.journal.validator_job(&self.settings.url, self.identity(), &job.job_id)
            }
        });
        match known {
            Err(e) => {
                tracing::error!(validator = %self.settings.url, error = %e, "cannot journal a validator job");
                metrics::counter!("cpcfarm_validator_jobs_failed_total", "validator" => self.label.clone()).increment(1);
                send(
                    ws,
                    &Answer::JobError {
                        job_id: Some(job.job_id),
                        error: "worker journal unavailable; retry later".into(),
                    },
                )
                .await
            }
            Ok(None) => {
                if self.in_flight.len() >= self.settings.max_pending_jobs {
                    let error = format!(
                        "busy: {} jobs already queued for this connection; retry later",
                        self.in_flight.len()
                    );
                    self.fail(&job.job_id, &error);
                    return self.answer(&job.job_id, ws, false).await;
                }
                tracing::info!(validator = %self.settings.url, job_id = %job.job_id, n = job.challenge.matrix_size(), iterations = job.challenge.iterations(), "validator job received");
                self.start_job(record);
                Ok(())
            }
            // The validator sent this job id before (a reconnect, or a restart on either side).
            Ok(Some(prior)) => match prior.state {
                ValidatorJobState::Received if self.in_flight.contains(&prior.job_id) => Ok(()),
                ValidatorJobState::Received => {
                    self.start_job(prior);
                    Ok(())
                }
                _ => self.answer(&prior.job_id, ws, true).await,
            },
        }
    }

    fn record(&self, job: &Job) -> ValidatorJobRecord {
        ValidatorJobRecord {
            validator: self.settings.url.clone(),
            identity: self.identity().to_owned(),
            job_id: job.job_id.clone(),
            task_id: job.task_id.clone(),
            challenge: job.challenge.clone(),
            nonce: job.nonce.to_string(),
            deadline_ms: job.deadline.map(|d| {
                d.duration_since(std::time::SystemTime::UNIX_EPOCH)
                    .map(|d| d.as_millis() as i64)
                    .unwrap_or(0)
            }),
            state: ValidatorJobState::Received,
            result_hash: None,
            error: None,
            received_ms: journal::now_ms(),
        }
    }

    fn fail(&self, job_id: &str, reason: &str) {
        if let Err(e) =
            self.journal.fail_validator_job(&self.settings.url, self.identity(), job_id, reason)
        {
            tracing::error!(validator = %self.settings.url, %job_id, error = %e, "cannot journal a failed job");
        }
    }

    /// Computes a received job in a task of its own; its end is reported on `done_rx`.
    fn start_job(&mut self, rec: ValidatorJobRecord) {
        let deadline = rec.deadline_ms.map(|ms| {
            let left = ms.saturating_sub(journal::now_ms()).max(0) as u64;
            Instant::now() + Duration::from_millis(left)
        });
        self.in_flight.insert(rec.job_id.clone());
        let compute = Arc::clone(&self.compute);
        let journal = self.journal.clone();
        let done = self.done_tx.clone();
        let settings = self.settings.clone();
        let label = self.label.clone();
        let mut chain = self.chain.clone();
        tokio::spawn(async move {
            let spec = JobSpec {
                challenge: rec.challenge.clone(),
                priority: Priority::Validator,
                deadline,
                owner: format!("validator {label} for {}", rec.identity),
            };
            let outcome = compute.run(spec).await;
            if outcome.is_ok() {
                wait_for_planner(&mut chain, &rec).await;
            }
            let stored = match &outcome {
                Ok(root) => {
                    let result_hash = hex::encode(root);
                    journal
                        .record_validator_result(
                            &rec.validator,
                            &rec.identity,
                            &rec.job_id,
                            &result_hash,
                        )
                        .map(|()| {
                            if settings.submit_to_l1 {
                                submit_to_l1(&journal, &settings, &label, &rec, &result_hash);
                            }
                        })
                }
                // The process is stopping: the job stays `received`, to be computed on the next start.
                Err(ComputeError::Stopped) => Ok(()),
                Err(e) => journal.fail_validator_job(
                    &rec.validator,
                    &rec.identity,
                    &rec.job_id,
                    &e.to_string(),
                ),
            };
            match (&outcome, stored) {
                (_, Err(e)) => {
                    tracing::error!(validator = %rec.validator, job_id = %rec.job_id, error = %e, "cannot journal a validator job's outcome")
                }
                (Ok(root), Ok(())) => {
                    tracing::info!(validator = %rec.validator, job_id = %rec.job_id, result_hash = %hex::encode(root), "validator job computed")
                }
                (Err(ComputeError::Stopped), Ok(())) => {
                    tracing::info!(validator = %rec.validator, job_id = %rec.job_id, "validator job left for the next start: shutting down")
                }
                (Err(e), Ok(())) => {
                    tracing::warn!(validator = %rec.validator, job_id = %rec.job_id, error = %e, "validator job failed")
                }
            }
            let _ = done.send(rec.job_id);
        });
    }

    /// Sends the journaled answer of `job_id` (a computed or failed job; with `again`, an answered one
    /// too) and marks it answered.
    async fn answer(&mut self, job_id: &str, ws: &mut Ws, again: bool) -> Result<(), String> {
        let rec = match self.journal.validator_job(&self.settings.url, self.identity(), job_id) {
            Ok(Some(rec)) => rec,
            Ok(None) => return Ok(()),
            Err(e) => {
                tracing::error!(validator = %self.settings.url, %job_id, error = %e, "cannot read a job from the journal");
                return Ok(());
            }
        };
        let sendable = match rec.state {
            ValidatorJobState::Computed | ValidatorJobState::Failed => true,
            ValidatorJobState::Answered => again,
            ValidatorJobState::Received => false,
        };
        if !sendable {
            return Ok(());
        }
        let answer = match (&rec.error, &rec.result_hash) {
            (Some(error), _) => {
                Answer::JobError { job_id: Some(rec.job_id.clone()), error: error.clone() }
            }
            // Checked again now: the block may have become known while the job computed (the validator can
            // send a block task's id before this coordinator has seen the block).
            (None, Some(_)) if self.is_block_task(&rec.task_id) => {
                tracing::warn!(validator = %self.settings.url, %job_id, task_id = %rec.task_id,
                    "not signing a validator job whose task_id turned out to be one of this identity's block tasks");
                Answer::JobError {
                    job_id: Some(rec.job_id.clone()),
                    error: self.block_task_refusal(&rec.task_id),
                }
            }
            (None, Some(result_hash)) => match self.sign(&rec, result_hash) {
                Ok(a) => a,
                Err(e) => Answer::JobError { job_id: Some(rec.job_id.clone()), error: e },
            },
            (None, None) => Answer::JobError {
                job_id: Some(rec.job_id.clone()),
                error: "the worker lost this job's result".into(),
            },
        };
        send(ws, &answer).await?;
        if rec.state != ValidatorJobState::Answered {
            if let Err(e) =
                self.journal.mark_validator_answered(&self.settings.url, self.identity(), job_id)
            {
                tracing::error!(validator = %self.settings.url, %job_id, error = %e, "cannot journal an answer");
            }
            let ok = matches!(answer, Answer::JobResult { .. });
            let name = if ok {
                "cpcfarm_validator_jobs_completed_total"
            } else {
                "cpcfarm_validator_jobs_failed_total"
            };
            metrics::counter!(name, "validator" => self.label.clone()).increment(1);
            let secs = (journal::now_ms() - rec.received_ms).max(0) as f64 / 1000.0;
            metrics::histogram!("cpcfarm_validator_job_duration_seconds").record(secs);
            tracing::info!(validator = %self.settings.url, %job_id, ok, latency_s = secs, "validator job answered");
        }
        Ok(())
    }

    /// Whether `task_id` is one of this identity's block tasks (a journal error counts as no: the
    /// submitter's own collision check still stands between such a result and the L1).
    fn is_block_task(&self, task_id: &str) -> bool {
        matches!(self.journal.is_block_task(self.identity(), task_id), Ok(true))
    }

    fn block_task_refusal(&self, task_id: &str) -> String {
        format!(
            "task_id {task_id} is a block task of worker {}: refused",
            self.settings.identity.address
        )
    }

    /// The `job_result` of a computed job, signed as the L1 payload is (see [`protocol`]).
    fn sign(&self, rec: &ValidatorJobRecord, result_hash: &str) -> Result<Answer, String> {
        let identity = &self.settings.identity;
        let nonce: PyInt = rec
            .nonce
            .parse()
            .map_err(|_| format!("journaled nonce `{}` is not an integer", rec.nonce))?;
        let mut result = ComputeResult {
            task_id: rec.task_id.clone(),
            worker_address: identity.address.to_string(),
            result_hash: result_hash.to_owned(),
            proof: String::new(),
            nonce,
            signature: String::new(),
        };
        result.sign(&identity.key).map_err(|e| format!("cannot sign the result: {e}"))?;
        Ok(Answer::JobResult {
            job_id: rec.job_id.clone(),
            worker_address: result.worker_address,
            result_hash: result.result_hash,
            proof: result.proof,
            signature: result.signature,
        })
    }
}

/// Waits (at most `chain.hold`) until the planner has journaled the block tasks of the height `rec`'s nonce
/// names, so the block-task check before signing sees them; a nonce that is no height returns at once.
async fn wait_for_planner(chain: &mut ChainView, rec: &ValidatorJobRecord) {
    let Ok(height) = rec.nonce.parse::<u64>() else { return };
    if *chain.planned_height.borrow() >= height {
        return;
    }
    let reached = tokio::time::timeout(chain.hold, chain.planned_height.wait_for(|h| *h >= height))
        .await
        .is_ok_and(|r| r.is_ok());
    if !reached {
        tracing::debug!(validator = %rec.validator, job_id = %rec.job_id, nonce = height,
            planned = *chain.planned_height.borrow(), "the planner has not reached this job's nonce; answering anyway");
    }
}

async fn send(ws: &mut Ws, answer: &Answer) -> Result<(), String> {
    ws.send(Message::text(answer.to_text())).await.map_err(|e| format!("write failed: {e}"))
}

/// `submit_to_l1`: writes the job's result as a computed task of the identity; its submitter signs and
/// sends the SUBMIT_RESULT in its next round (every new block), with the job's `task_id` and `nonce`.
fn submit_to_l1(
    journal: &Journal,
    settings: &ValidatorSettings,
    label: &str,
    rec: &ValidatorJobRecord,
    result_hash: &str,
) {
    let (Ok(task_id), Ok(height)) = (rec.task_id.parse::<uuid::Uuid>(), rec.nonce.parse::<u64>())
    else {
        tracing::warn!(validator = %rec.validator, job_id = %rec.job_id, task_id = %rec.task_id, nonce = %rec.nonce,
            "submit_to_l1 needs a UUID task_id and a non-negative integer nonce; not submitting this job");
        return;
    };
    let Ok(challenge) = cpc_common::synthetic::Challenge::new(
        rec.challenge.seed().to_owned(),
        rec.challenge.matrix_size(),
        1,
    ) else {
        return;
    };
    let task = BlockTask {
        task_id,
        challenge,
        block_hash: format!("validator:{label}"),
        worker_address: settings.identity.address.to_string(),
        height,
    };
    let name = &settings.identity.name;
    let id = task_id.to_string();
    match journal.record_validator_task(name, &task, result_hash) {
        Ok(ValidatorTaskOutcome::Queued | ValidatorTaskOutcome::AlreadyQueued) => {
            tracing::info!(validator = %rec.validator, job_id = %rec.job_id, task_id = %id, "validator job queued for the L1")
        }
        Ok(ValidatorTaskOutcome::CollidesWithBlockTask) => {
            tracing::warn!(validator = %rec.validator, job_id = %rec.job_id, task_id = %id,
                "not queued for the L1: the task_id is one of this identity's block tasks")
        }
        Err(e) => {
            tracing::error!(validator = %rec.validator, job_id = %rec.job_id, error = %e, "cannot queue a validator job for the L1")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_with_jitter_up_to_the_cap_and_resets() {
        let mut b = Backoff::new(Duration::from_millis(500), Duration::from_secs(30));
        let delays: Vec<Duration> = (0..10).map(|_| b.next_delay()).collect();
        let mut cap = Duration::from_millis(500);
        for d in &delays {
            assert!(*d >= cap / 2 && *d <= cap, "{d:?} outside [{:?}, {cap:?}]", cap / 2);
            cap = (cap * 2).min(Duration::from_secs(30));
        }
        assert!(delays[9] >= Duration::from_secs(15));
        b.reset();
        assert!(b.next_delay() <= Duration::from_millis(500));
    }
}
