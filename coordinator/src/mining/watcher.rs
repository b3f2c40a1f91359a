//! The chain watcher: follows the L1 head by polling `/status` and turns each change of head into one
//! [`NewBlock`] event. A new height, or the same height with another hash (a reorg, or a failover to a
//! node on another fork), is a new block. When several blocks arrive between two polls only the newest
//! is announced: the farm always works on the newest block.

use crate::l1::NodePool;
use actix::prelude::*;
use std::time::{Duration, Instant};

/// While no node answers, how often the watcher says so again (each node's own change of state is
/// logged once by the pool).
const OUTAGE_LOG_INTERVAL: Duration = Duration::from_secs(60);

/// A new head block.
#[derive(Debug, Clone, Message)]
#[rtype(result = "()")]
pub struct NewBlock {
    /// Its height.
    pub height: u64,
    /// Its hash (`last_hash`).
    pub hash: String,
    /// When the watcher saw it (block-to-submit latency starts here).
    pub seen_at: Instant,
}

/// Polls the head and notifies subscribers.
#[derive(Debug)]
pub struct ChainWatcher {
    nodes: NodePool,
    interval: Duration,
    subscribers: Vec<Recipient<NewBlock>>,
    head: Option<(u64, String)>,
    polling: bool,
    /// When the watcher last logged that no node answers (`None` while one does).
    outage_logged_at: Option<Instant>,
}

impl ChainWatcher {
    /// A watcher polling `nodes` every `interval`, notifying `subscribers`.
    pub fn new(nodes: NodePool, interval: Duration, subscribers: Vec<Recipient<NewBlock>>) -> Self {
        Self { nodes, interval, subscribers, head: None, polling: false, outage_logged_at: None }
    }

    fn poll(&mut self, ctx: &mut Context<Self>) {
        if self.polling {
            return;
        }
        self.polling = true;
        let nodes = self.nodes.clone();
        ctx.spawn(async move { nodes.status().await }.into_actor(self).map(|res, act, _| {
            act.polling = false;
            let status = match res {
                Ok(s) => {
                    if act.outage_logged_at.take().is_some() {
                        tracing::info!("an L1 node answers again; mining resumes");
                    }
                    s
                }
                Err(e) => {
                    let due = act.outage_logged_at.is_none_or(|at| at.elapsed() >= OUTAGE_LOG_INTERVAL);
                    if due {
                        tracing::warn!(error = %e, "no L1 node answered; mining waits for the chain");
                        act.outage_logged_at = Some(Instant::now());
                    }
                    return;
                }
            };
            metrics::gauge!("cpcfarm_l1_head_height").set(status.height as f64);
            let is_new = match &act.head {
                None => true,
                Some((h, hash)) => status.height > *h || (status.height == *h && status.last_hash != *hash),
            };
            if !is_new {
                return;
            }
            if let Some((h, hash)) = &act.head {
                if status.height == *h {
                    tracing::warn!(height = h, old = %hash, new = %status.last_hash, "head changed at the same height");
                    metrics::counter!("cpcfarm_l1_reorgs_total").increment(1);
                }
                metrics::counter!("cpcfarm_blocks_seen_total").increment(status.height.saturating_sub(*h).max(1));
            } else {
                metrics::counter!("cpcfarm_blocks_seen_total").increment(1);
            }
            act.head = Some((status.height, status.last_hash.clone()));
            let event = NewBlock { height: status.height, hash: status.last_hash, seen_at: Instant::now() };
            tracing::info!(height = event.height, hash = %event.hash, "new block");
            for s in &act.subscribers {
                s.do_send(event.clone());
            }
        }));
    }
}

impl Actor for ChainWatcher {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        self.poll(ctx);
        ctx.run_interval(self.interval, Self::poll);
    }
}
