//! Several L1 node URLs with health-probed failover and fail-back.
//!
//! Calls go to the current node. Every request has a short deadline ([`POOL_REQUEST_TIMEOUT`]), so a
//! node that accepts connections but never answers is marked down and the next node takes over within
//! about one poll. The deadline stretches (up to [`POOL_REQUEST_CEILING`]) for a node whose answers are
//! slow, or after a timeout, so a node slowed by load is waited for instead of abandoned by every caller
//! at once (see [`super::deadline`]). Health probes run in the background (at most one per node at a time, every
//! [`PROBE_INTERVAL`]) against every node that is not the current one: they keep each node's
//! `cpcfarm_l1_node_up` true from start-up, and when a node earlier in the list (more preferred) answers
//! again the pool fails back to it. Only changes of a node's state are logged, so an outage costs one
//! WARN line per node, not one per poll.

use super::{NodeClient, NodeError};
use crate::readiness::Readiness;
use cpc_common::rpc::StatusResponse;
use std::{
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicU8, AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

/// How long to wait for a node's TCP (and TLS) connection inside a pool.
pub const POOL_CONNECT_TIMEOUT: Duration = Duration::from_millis(1000);
/// Deadline of each request to a node inside a pool, while the node answers quickly: a hung node that
/// answered quickly before costs at most this much per poll.
pub const POOL_REQUEST_TIMEOUT: Duration = Duration::from_millis(1000);
/// Longest deadline of a request to a node inside a pool (a slow node, or one that timed out before).
pub const POOL_REQUEST_CEILING: Duration = Duration::from_secs(5);
/// How often the nodes other than the current one are probed.
pub const PROBE_INTERVAL: Duration = Duration::from_secs(1);

/// What the pool knows about one node.
const UNKNOWN: u8 = 0;
const UP: u8 = 1;
const DOWN: u8 = 2;

/// One node and its last known health.
#[derive(Debug)]
struct Node {
    client: NodeClient,
    state: AtomicU8,
    probing: AtomicBool,
}

impl Node {
    /// Records the outcome of a call and logs and exports a change of state (only a change).
    fn record(&self, result: Result<(), &NodeError>) {
        let url = self.client.url();
        let new = if result.is_ok() { UP } else { DOWN };
        metrics::gauge!("cpcfarm_l1_node_up", "node" => url.to_owned()).set(if new == UP {
            1.0
        } else {
            0.0
        });
        let old = self.state.swap(new, Ordering::Relaxed);
        if old == new {
            return;
        }
        match result {
            Ok(()) if old == DOWN => tracing::info!(node = url, "L1 node answers again"),
            Ok(()) => tracing::debug!(node = url, "L1 node is up"),
            Err(e) => tracing::warn!(node = url, error = %e, "L1 node did not answer /status"),
        }
    }
}

#[derive(Debug)]
struct Shared {
    nodes: Vec<Node>,
    current: AtomicUsize,
    last_probe: Mutex<Option<Instant>>,
    readiness: Option<Arc<Readiness>>,
}

impl Shared {
    fn set_reachable(&self, reachable: bool) {
        if let Some(r) = &self.readiness {
            r.set_l1_reachable(reachable);
        }
    }

    /// Makes `index` the current node if it is preferred over the current one (fail-back) or if
    /// `force` (failover after the current one failed).
    fn switch_to(&self, index: usize, force: bool) {
        let mut current = self.current.load(Ordering::Relaxed);
        loop {
            if current == index || (!force && current < index) {
                return;
            }
            match self.current.compare_exchange(
                current,
                index,
                Ordering::Relaxed,
                Ordering::Relaxed,
            ) {
                Ok(_) => break,
                Err(now) => current = now,
            }
        }
        let (from, to) = (self.nodes[current].client.url(), self.nodes[index].client.url());
        if index < current {
            tracing::info!(from, to, "L1 node fail-back to the preferred node");
        } else {
            tracing::warn!(from, to, "L1 node failover");
        }
        metrics::counter!("cpcfarm_l1_node_switches_total").increment(1);
    }
}

/// A shared, clonable set of nodes in order of preference.
#[derive(Debug, Clone)]
pub struct NodePool {
    shared: Arc<Shared>,
}

impl NodePool {
    /// A pool over `urls`, most preferred first. Every node's `cpcfarm_l1_node_up` exists (at 0) from
    /// here on, until a call or a probe finds it up.
    pub fn new(urls: &[String]) -> Self {
        Self::build(urls, None)
    }

    /// A pool over `urls` that reports to `readiness` whether some node answers (and hands it to the
    /// submitters, which report whether their identity is funded).
    pub fn with_readiness(urls: &[String], readiness: Arc<Readiness>) -> Self {
        Self::build(urls, Some(readiness))
    }

    fn build(urls: &[String], readiness: Option<Arc<Readiness>>) -> Self {
        let nodes = urls
            .iter()
            .map(|url| {
                let client = NodeClient::with_adaptive_deadline(
                    url,
                    POOL_CONNECT_TIMEOUT,
                    POOL_REQUEST_TIMEOUT,
                    POOL_REQUEST_CEILING,
                );
                metrics::gauge!("cpcfarm_l1_node_up", "node" => client.url().to_owned()).set(0.0);
                Node { client, state: AtomicU8::new(UNKNOWN), probing: AtomicBool::new(false) }
            })
            .collect();
        metrics::counter!("cpcfarm_l1_node_switches_total").increment(0);
        Self {
            shared: Arc::new(Shared {
                nodes,
                current: AtomicUsize::new(0),
                last_probe: Mutex::new(None),
                readiness,
            }),
        }
    }

    /// Where this pool (and its users) report readiness, if anywhere.
    pub fn readiness(&self) -> Option<&Readiness> {
        self.shared.readiness.as_deref()
    }

    /// The node calls go to now.
    pub fn client(&self) -> &NodeClient {
        let nodes = &self.shared.nodes;
        let i = self.shared.current.load(Ordering::Relaxed) % nodes.len().max(1);
        &nodes[i].client
    }

    /// The URLs of the pool's nodes, most preferred first.
    pub fn urls(&self) -> impl Iterator<Item = &str> {
        self.shared.nodes.iter().map(|n| n.client.url())
    }

    /// `/status` from the current node; when it fails, from the others in order of preference (the first
    /// that answers becomes current). Also starts the background health probes when they are due (needs
    /// a tokio runtime, as every call here does).
    pub async fn status(&self) -> Result<StatusResponse, NodeError> {
        let shared = &self.shared;
        let count = shared.nodes.len();
        if count == 0 {
            return Err(NodeError::Unreachable {
                url: String::new(),
                reason: "no L1 node configured".into(),
            });
        }
        self.probe_if_due();
        let current = shared.current.load(Ordering::Relaxed) % count;
        let order = std::iter::once(current).chain((0..count).filter(|&i| i != current));
        let mut last_err = None;
        for i in order {
            let node = &shared.nodes[i];
            match node.client.status().await {
                Ok(status) => {
                    node.record(Ok(()));
                    shared.switch_to(i, true);
                    shared.set_reachable(true);
                    return Ok(status);
                }
                Err(e) => {
                    node.record(Err(&e));
                    last_err = Some(e);
                }
            }
        }
        shared.set_reachable(false);
        Err(last_err.unwrap_or(NodeError::Unreachable {
            url: String::new(),
            reason: "no L1 node configured".into(),
        }))
    }

    /// Spawns one `/status` probe for each node other than the current one (unless one is still
    /// running), at most every [`PROBE_INTERVAL`]. A probe that finds a node preferred over the current
    /// one up makes it current again.
    fn probe_if_due(&self) {
        let now = Instant::now();
        {
            let Ok(mut last) = self.shared.last_probe.lock() else { return };
            if last.is_some_and(|at| now.duration_since(at) < PROBE_INTERVAL) {
                return;
            }
            *last = Some(now);
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else { return };
        let current = self.shared.current.load(Ordering::Relaxed);
        for index in (0..self.shared.nodes.len()).filter(|&i| i != current) {
            if self.shared.nodes[index].probing.swap(true, Ordering::Relaxed) {
                continue;
            }
            let shared = Arc::clone(&self.shared);
            runtime.spawn(async move {
                let node = &shared.nodes[index];
                let result = node.client.status().await;
                node.record(result.as_ref().map(|_| ()));
                if result.is_ok() {
                    shared.switch_to(index, false);
                    shared.set_reachable(true);
                }
                node.probing.store(false, Ordering::Relaxed);
            });
        }
    }
}
