//! Jobs from PoC validators over WebSocket, served by the farm next to the per-block tasks.
//!
//! The worker guide's next stage after block mining: a PoC validator pushes jobs to the workers it knows
//! and collects signed results. This module keeps one connection per configured (validator URL, worker
//! identity), runs each job on the same [`ComputeService`](crate::mining::compute::ComputeService) as the
//! block tasks, as validator-class jobs (block tasks first by default, so a slow or busy validator never
//! delays a `SUBMIT_RESULT`), and answers each job with the identity's signature.
//!
//! - [`protocol`]: the three messages, their parse errors and the signature's nonce rule;
//! - [`client`]: the actor of one connection: connect (`ws://`, or `wss://` over rustls with the webpki
//!   roots), ping/pong keepalive, reconnect with exponential backoff and jitter, a bounded number of jobs
//!   in flight, recovery of unanswered jobs from the journal.
//!
//! Every job goes through the journal (`validator_jobs`, see [`crate::mining::journal`]): it is written on
//! receipt before any work, its result before the answer is sent, and it is marked answered only after the
//! frame was written. A job accepted before a crash or a dropped connection is answered on the next
//! connection to its validator (computed again if it had not been), never silently forgotten.
//!
//! A validator can derive this identity's block task ids from public data, and may send one before this
//! coordinator has seen its block. A job is refused when its task id is a journaled block task, and the
//! check is repeated before its result is signed; in between, a computed job whose nonce is a height the
//! planner has not reached yet waits (at most [`ChainView::hold`]) until the planner has journaled that
//! block's tasks, so the second check knows them.
//!
//! A dead validator costs a task that sleeps between connection attempts; block mining never waits on it.

pub mod client;
#[cfg(test)]
mod fuzz;
pub mod protocol;

use crate::mining::{Identity, compute::ComputeService, journal::Journal};
use std::{sync::Arc, time::Duration};
use tokio::{sync::watch, task::JoinHandle};
use tokio_util::sync::CancellationToken;

/// How far the mining loop has planned, as the validator clients need it.
#[derive(Debug, Clone)]
pub struct ChainView {
    /// The highest block whose tasks the planner has journaled.
    pub planned_height: watch::Receiver<u64>,
    /// Longest wait for the planner to reach a job's nonce (a few head polls: the follower sees a block
    /// within one poll of the node having it, so a nonce still ahead after that names no block yet).
    pub hold: Duration,
}

/// Default interval between keepalive pings.
pub const DEFAULT_PING_INTERVAL: Duration = Duration::from_secs(15);
/// Default time a ping may go unanswered before the connection is dropped.
pub const DEFAULT_PONG_TIMEOUT: Duration = Duration::from_secs(10);
/// Default time a connection attempt (TCP, TLS, WebSocket handshake) may take.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// First reconnection delay.
pub const DEFAULT_BACKOFF_MIN: Duration = Duration::from_millis(500);
/// Longest reconnection delay.
pub const DEFAULT_BACKOFF_MAX: Duration = Duration::from_secs(30);
/// Jobs of one connection received and not answered yet; more get a `job_error` "busy".
pub const DEFAULT_MAX_PENDING_JOBS: usize = 64;
/// Largest WebSocket message accepted from a validator.
pub const MAX_MESSAGE_BYTES: usize = 1 << 20;

/// A validator URL that cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ValidatorError {
    /// Not a `ws://` or `wss://` URL with a host.
    #[error(
        "invalid validator URL `{url}`: {reason} (expected ws://HOST[:PORT]/PATH or wss://...)"
    )]
    BadUrl {
        /// The URL.
        url: String,
        /// What is wrong.
        reason: &'static str,
    },
}

/// Checks a validator URL and answers its metrics label, `host:port` (no path or credentials, so the
/// label's cardinality is that of the configuration).
pub fn url_label(url: &str) -> Result<String, ValidatorError> {
    let bad = |reason| ValidatorError::BadUrl { url: url.to_owned(), reason };
    let lower = url.to_ascii_lowercase();
    let (rest, default_port) = if lower.starts_with("wss://") {
        (&url[6..], 443)
    } else if lower.starts_with("ws://") {
        (&url[5..], 80)
    } else {
        return Err(bad("the scheme is not ws:// or wss://"));
    };
    let authority = rest.split(['/', '?', '#']).next().unwrap_or_default();
    let host_port = authority.rsplit('@').next().unwrap_or_default();
    if host_port.is_empty() {
        return Err(bad("no host"));
    }
    let has_port = match host_port.rfind(']') {
        Some(end) => host_port[end..].contains(':'),
        None => host_port.contains(':'),
    };
    if host_port.starts_with(':') {
        return Err(bad("no host"));
    }
    Ok(if has_port { host_port.to_owned() } else { format!("{host_port}:{default_port}") })
}

/// One validator connection's settings.
#[derive(Debug, Clone)]
pub struct ValidatorSettings {
    /// `ws://` or `wss://` URL.
    pub url: String,
    /// The identity whose key signs the results.
    pub identity: Identity,
    /// Also write each result as a computed task of the identity, so its submitter sends a SUBMIT_RESULT
    /// (the job's `task_id` must be a UUID and its nonce a non-negative integer; others are skipped).
    pub submit_to_l1: bool,
    /// Largest `matrix_size` accepted.
    pub max_matrix_size: u32,
    /// Interval between keepalive pings.
    pub ping_interval: Duration,
    /// Time a ping may go unanswered.
    pub pong_timeout: Duration,
    /// Time a connection attempt may take.
    pub connect_timeout: Duration,
    /// First reconnection delay.
    pub backoff_min: Duration,
    /// Longest reconnection delay.
    pub backoff_max: Duration,
    /// Jobs received and not answered yet, at most.
    pub max_pending_jobs: usize,
}

impl ValidatorSettings {
    /// Defaults for `url`, working for `identity`.
    pub fn new(url: impl Into<String>, identity: Identity) -> Self {
        Self {
            url: url.into(),
            identity,
            submit_to_l1: false,
            max_matrix_size: protocol::DEFAULT_MAX_MATRIX_SIZE,
            ping_interval: DEFAULT_PING_INTERVAL,
            pong_timeout: DEFAULT_PONG_TIMEOUT,
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
            backoff_min: DEFAULT_BACKOFF_MIN,
            backoff_max: DEFAULT_BACKOFF_MAX,
            max_pending_jobs: DEFAULT_MAX_PENDING_JOBS,
        }
    }
}

/// The running validator connections.
#[derive(Debug)]
pub struct ValidatorClients {
    /// A child of the token `start` was given, which [`ValidatorClients::stop`] alone cancels.
    shutdown: CancellationToken,
    tasks: Vec<JoinHandle<()>>,
}

/// Starts one client per entry of `validators` on the current tokio runtime; they stop when `shutdown` is
/// cancelled (the node passes the process's one shutdown token) or [`ValidatorClients::stop`] is called.
pub fn start(
    validators: Vec<ValidatorSettings>,
    journal: Journal,
    compute: Arc<dyn ComputeService>,
    chain: ChainView,
    shutdown: &CancellationToken,
) -> Result<ValidatorClients, ValidatorError> {
    describe_metrics();
    let shutdown = shutdown.child_token();
    let mut clients = Vec::with_capacity(validators.len());
    for settings in validators {
        clients.push(client::Client::new(
            settings,
            journal.clone(),
            Arc::clone(&compute),
            chain.clone(),
        )?);
    }
    let tasks = clients.into_iter().map(|c| tokio::spawn(c.run(shutdown.clone()))).collect();
    Ok(ValidatorClients { shutdown, tasks })
}

impl ValidatorClients {
    /// Closes every connection (a close frame where one is up) and waits for the clients to end. Jobs
    /// still computing stay `received` in the journal and are computed again on the next start.
    pub async fn stop(self) {
        self.shutdown.cancel();
        for t in self.tasks {
            let _ = tokio::time::timeout(Duration::from_secs(5), t).await;
        }
    }
}

fn describe_metrics() {
    use metrics::{Unit, describe_counter, describe_gauge, describe_histogram};
    describe_gauge!(
        "cpcfarm_validator_connections_up",
        "Open connections to a PoC validator (label validator = host:port)."
    );
    describe_counter!("cpcfarm_validator_jobs_received_total", "Jobs received from validators.");
    describe_counter!(
        "cpcfarm_validator_jobs_completed_total",
        "Validator jobs answered with a signed job_result."
    );
    describe_counter!(
        "cpcfarm_validator_jobs_failed_total",
        "Validator frames answered with a job_error (malformed, oversize, deadline, compute failure)."
    );
    describe_histogram!(
        "cpcfarm_validator_job_duration_seconds",
        Unit::Seconds,
        "Validator job latency, from receipt to the answer written to the socket."
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_are_host_and_port_only() {
        assert_eq!(url_label("ws://127.0.0.1:9000/jobs?x=1").as_deref(), Ok("127.0.0.1:9000"));
        assert_eq!(url_label("wss://user:pw@v.example.org/ws").as_deref(), Ok("v.example.org:443"));
        assert_eq!(url_label("WS://[::1]/").as_deref(), Ok("[::1]:80"));
        assert_eq!(url_label("ws://[::1]:81").as_deref(), Ok("[::1]:81"));
        assert!(url_label("http://v.example.org").is_err());
        assert!(url_label("ws:///path").is_err());
        assert!(url_label("ws://:80").is_err());
    }
}
