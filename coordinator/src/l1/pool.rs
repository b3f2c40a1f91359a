//! Several L1 node URLs with failover: calls go to the current node; when it is unreachable, the next
//! one in the list takes over, and every node's up/down state is exported as a metric.

use super::{NodeClient, NodeError};
use cpc_common::rpc::StatusResponse;
use std::sync::{
    Arc,
    atomic::{AtomicUsize, Ordering},
};

/// A shared, clonable set of nodes.
#[derive(Debug, Clone)]
pub struct NodePool {
    nodes: Arc<[NodeClient]>,
    current: Arc<AtomicUsize>,
}

impl NodePool {
    /// A pool over `urls` (at least one).
    pub fn new(urls: &[String]) -> Self {
        let nodes: Vec<NodeClient> = urls.iter().map(|u| NodeClient::new(u)).collect();
        Self { nodes: nodes.into(), current: Arc::new(AtomicUsize::new(0)) }
    }

    /// The node calls go to now.
    pub fn client(&self) -> &NodeClient {
        let i = self.current.load(Ordering::Relaxed) % self.nodes.len().max(1);
        &self.nodes[i]
    }

    /// `/status` from the current node, failing over to the others in order. Returns the first answer.
    pub async fn status(&self) -> Result<StatusResponse, NodeError> {
        let start = self.current.load(Ordering::Relaxed);
        let mut last_err = None;
        for step in 0..self.nodes.len() {
            let i = (start + step) % self.nodes.len();
            let node = &self.nodes[i];
            match node.status().await {
                Ok(s) => {
                    metrics::gauge!("cpcfarm_l1_node_up", "node" => node.url().to_owned()).set(1.0);
                    if i != start {
                        tracing::warn!(
                            from = self.nodes[start % self.nodes.len()].url(),
                            to = node.url(),
                            "L1 node failover"
                        );
                        self.current.store(i, Ordering::Relaxed);
                    }
                    return Ok(s);
                }
                Err(e) => {
                    metrics::gauge!("cpcfarm_l1_node_up", "node" => node.url().to_owned()).set(0.0);
                    tracing::warn!(node = node.url(), error = %e, "L1 node did not answer /status");
                    last_err = Some(e);
                }
            }
        }
        Err(last_err.unwrap_or(NodeError::Unreachable {
            url: String::new(),
            reason: "no node configured".into(),
        }))
    }
}
