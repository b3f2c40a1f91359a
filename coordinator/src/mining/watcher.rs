//! The chain follower: the one reader of the L1 for the whole mining loop, however many identities it
//! serves. It polls `/status`, fetches each new block once, and turns what it saw into two events:
//! [`NewBlock`] for the planner (the newest head, a new height or the same height with another hash after a
//! reorg or a failover, with the blocks this run's follower did not see as heads because it was behind: a
//! hung node, a slow poll; the planner gives those a chance too), and
//! [`BlocksSeen`] for the submitters: the hashes of every transaction of every new block, hashed once here,
//! so each identity's submitter finds its inclusions without asking the node anything.
//!
//! The node is a shared, slow resource: requests per block are one `/status` per poll and one `/block` per
//! new block, independent of the number of identities. When the node answers 429 (or not at all) the
//! follower backs off, doubling the pause between polls up to [`MAX_BACKOFF`].

use crate::l1::{NodeError, NodePool};
use actix::prelude::*;
use cpc_common::Block;
use std::{
    collections::HashSet,
    sync::Arc,
    time::{Duration, Instant},
};

/// Longest pause between polls while the node is overloaded or down.
pub const MAX_BACKOFF: Duration = Duration::from_secs(5);
/// Most blocks fetched in one catch-up (a coordinator far behind starts from the newest ones; submitters
/// look further back themselves for their open submissions).
pub const MAX_CATCH_UP_BLOCKS: u64 = 64;

/// Most blocks between two heads the planner is told about (the newest of them): a follower that fell
/// further behind mines only the newest of what it missed.
pub const MAX_SKIPPED_BLOCKS: usize = 8;

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
    /// When the follower saw it (block-to-submit latency starts here).
    pub seen_at: Instant,
    /// Blocks after the previous head and before this one, oldest first (at most [`MAX_SKIPPED_BLOCKS`],
    /// the newest): produced while the follower could not see them. Empty for the first head of a run.
    pub skipped: Vec<BlockRef>,
}

/// A block by height and hash: what a block task is derived from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlockRef {
    /// Its height.
    pub height: u64,
    /// Its hash.
    pub hash: String,
}

/// One block as the submitters need it.
#[derive(Debug)]
pub struct SeenBlock {
    /// Its height.
    pub height: u64,
    /// Its hash (what block tasks are derived from).
    pub hash: String,
    /// The hashes of its transactions.
    pub tx_hashes: HashSet<String>,
}

impl SeenBlock {
    /// Hashes `block`'s transactions once.
    pub fn of(block: &Block) -> Self {
        Self {
            height: block.header.height,
            hash: block.header.hash(),
            tx_hashes: block.txs.iter().map(cpc_common::Transaction::hash_hex).collect(),
        }
    }
}

/// New blocks, oldest first, each fetched once for every submitter.
#[derive(Debug, Clone, Message)]
#[rtype(result = "()")]
pub struct BlocksSeen {
    /// The blocks fetched since the last event, in height order.
    pub blocks: Arc<[SeenBlock]>,
    /// The head when they were fetched.
    pub head: u64,
}

/// Follows the chain and notifies subscribers.
#[derive(Debug)]
pub struct ChainWatcher {
    nodes: NodePool,
    interval: Duration,
    heads: Vec<Recipient<NewBlock>>,
    blocks: Vec<Recipient<BlocksSeen>>,
    head: Option<(u64, String)>,
    /// Highest block fetched and announced.
    fetched_to: Option<u64>,
    polling: bool,
    backoff: Duration,
    quiet_until: Option<Instant>,
    /// When the follower last logged that no node answers (`None` while one does).
    outage_logged_at: Option<Instant>,
}

impl ChainWatcher {
    /// A follower polling `nodes` every `interval`, announcing heads to `heads` and blocks to `blocks`.
    pub fn new(
        nodes: NodePool,
        interval: Duration,
        heads: Vec<Recipient<NewBlock>>,
        blocks: Vec<Recipient<BlocksSeen>>,
    ) -> Self {
        Self {
            nodes,
            interval,
            heads,
            blocks,
            head: None,
            fetched_to: None,
            polling: false,
            backoff: Duration::ZERO,
            quiet_until: None,
            outage_logged_at: None,
        }
    }

    fn poll(&mut self, ctx: &mut Context<Self>) {
        if self.polling || self.quiet_until.is_some_and(|t| Instant::now() < t) {
            return;
        }
        self.polling = true;
        let nodes = self.nodes.clone();
        let fetched_to = self.fetched_to;
        let known_head = self.head.clone();
        ctx.spawn(
            async move { follow(&nodes, known_head, fetched_to).await }.into_actor(self).map(
                |res, act, _| {
                    act.polling = false;
                    match res {
                        Ok(step) => {
                            act.backoff = Duration::ZERO;
                            act.quiet_until = None;
                            if act.outage_logged_at.take().is_some() {
                                tracing::info!("an L1 node answers again; mining resumes");
                            }
                            act.apply(step);
                        }
                        Err(e) => act.back_off(&e),
                    }
                },
            ),
        );
    }

    fn back_off(&mut self, e: &NodeError) {
        self.backoff =
            (self.backoff * 2).clamp(self.interval.max(Duration::from_millis(250)), MAX_BACKOFF);
        self.quiet_until = Some(Instant::now() + self.backoff);
        let overloaded = matches!(e, NodeError::Status { status: 429, .. });
        metrics::counter!("cpcfarm_l1_backoffs_total", "reason" => if overloaded { "overloaded" } else { "unreachable" })
            .increment(1);
        let due = self.outage_logged_at.is_none_or(|at| at.elapsed() >= OUTAGE_LOG_INTERVAL);
        if due {
            tracing::warn!(error = %e, pause = ?self.backoff, "no L1 node answered; mining waits for the chain");
            self.outage_logged_at = Some(Instant::now());
        }
    }

    fn apply(&mut self, step: Step) {
        let Step { status_height, status_hash, blocks } = step;
        metrics::gauge!("cpcfarm_l1_head_height").set(status_height as f64);
        if let Some(last) = blocks.last() {
            self.fetched_to = Some(last.height);
        }
        let skipped = skipped_between(self.head.as_ref().map(|(h, _)| *h), status_height, &blocks);
        if !blocks.is_empty() {
            let event = BlocksSeen { blocks: blocks.into(), head: status_height };
            for s in &self.blocks {
                s.do_send(event.clone());
            }
        }
        let is_new = match &self.head {
            None => true,
            Some((h, hash)) => status_height > *h || (status_height == *h && status_hash != *hash),
        };
        if !is_new {
            return;
        }
        if let Some((h, hash)) = &self.head {
            if status_height == *h {
                tracing::warn!(height = h, old = %hash, new = %status_hash, "head changed at the same height");
                metrics::counter!("cpcfarm_l1_reorgs_total").increment(1);
            }
            metrics::counter!("cpcfarm_blocks_seen_total")
                .increment(status_height.saturating_sub(*h).max(1));
        } else {
            metrics::counter!("cpcfarm_blocks_seen_total").increment(1);
        }
        self.head = Some((status_height, status_hash.clone()));
        let event =
            NewBlock { height: status_height, hash: status_hash, seen_at: Instant::now(), skipped };
        if event.skipped.is_empty() {
            tracing::info!(height = event.height, hash = %event.hash, "new block");
        } else {
            let heights: Vec<u64> = event.skipped.iter().map(|b| b.height).collect();
            tracing::info!(height = event.height, hash = %event.hash, skipped = ?heights, "new block, after blocks not seen as heads");
        }
        for s in &self.heads {
            s.do_send(event.clone());
        }
    }
}

/// The blocks of `fetched` strictly between the previous head (`None`: none yet) and `head`, oldest first,
/// the newest [`MAX_SKIPPED_BLOCKS`] of them.
fn skipped_between(previous: Option<u64>, head: u64, fetched: &[SeenBlock]) -> Vec<BlockRef> {
    let Some(previous) = previous else { return Vec::new() };
    let between: Vec<BlockRef> = fetched
        .iter()
        .filter(|b| b.height > previous && b.height < head)
        .map(|b| BlockRef { height: b.height, hash: b.hash.clone() })
        .collect();
    let extra = between.len().saturating_sub(MAX_SKIPPED_BLOCKS);
    between.into_iter().skip(extra).collect()
}

/// What one poll found.
#[derive(Debug)]
struct Step {
    status_height: u64,
    status_hash: String,
    blocks: Vec<SeenBlock>,
}

/// One poll: the head, then every block after `fetched_to` up to it (at most [`MAX_CATCH_UP_BLOCKS`]).
/// Blocks fetched before an error are kept; the rest come with the next poll.
async fn follow(
    nodes: &NodePool,
    known_head: Option<(u64, String)>,
    fetched_to: Option<u64>,
) -> Result<Step, NodeError> {
    let status = nodes.status().await?;
    let mut step =
        Step { status_height: status.height, status_hash: status.last_hash, blocks: Vec::new() };
    let unchanged = known_head
        .as_ref()
        .is_some_and(|(h, hash)| *h == step.status_height && *hash == step.status_hash);
    if unchanged && fetched_to.is_some_and(|f| f >= step.status_height) {
        return Ok(step);
    }
    let first = match fetched_to {
        // A reorg at or below what was fetched: fetch from the new head's height again.
        Some(f) if f >= step.status_height => step.status_height,
        Some(f) => (f + 1).max(step.status_height.saturating_sub(MAX_CATCH_UP_BLOCKS - 1)),
        None => step.status_height,
    };
    let node = nodes.client().clone();
    for h in first..=step.status_height {
        match node.block(h).await {
            Ok(Some(block)) => step.blocks.push(SeenBlock::of(&block)),
            Ok(None) => break,
            // The head is still announced; the blocks not fetched come with the next poll.
            Err(e) => {
                tracing::debug!(height = h, error = %e, "block fetch failed; retrying next poll");
                break;
            }
        }
    }
    Ok(step)
}

impl Actor for ChainWatcher {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        self.poll(ctx);
        ctx.run_interval(self.interval, Self::poll);
    }
}

/// A reload: poll these nodes from the next poll on (one in flight finishes on the old ones).
#[derive(Debug, Clone, Message)]
#[rtype(result = "()")]
pub struct UseNodes(pub NodePool);

impl Handler<UseNodes> for ChainWatcher {
    type Result = ();
    fn handle(&mut self, msg: UseNodes, _: &mut Self::Context) {
        self.nodes = msg.0;
    }
}

/// A reload added identities: their submitters hear of new blocks from now on.
#[derive(Debug, Clone, Message)]
#[rtype(result = "()")]
pub struct AddBlockRecipients(pub Vec<Recipient<BlocksSeen>>);

impl Handler<AddBlockRecipients> for ChainWatcher {
    type Result = ();
    fn handle(&mut self, msg: AddBlockRecipients, _: &mut Self::Context) {
        self.blocks.extend(msg.0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seen(heights: std::ops::RangeInclusive<u64>) -> Vec<SeenBlock> {
        heights
            .map(|height| SeenBlock {
                height,
                hash: format!("h{height}"),
                tx_hashes: HashSet::new(),
            })
            .collect()
    }

    #[test]
    fn the_blocks_between_two_heads_are_skipped_ones_and_the_first_head_skips_none() {
        let heights = |v: Vec<BlockRef>| v.into_iter().map(|b| b.height).collect::<Vec<_>>();
        assert_eq!(heights(skipped_between(None, 7, &seen(5..=7))), Vec::<u64>::new());
        assert_eq!(heights(skipped_between(Some(4), 7, &seen(5..=7))), vec![5, 6]);
        assert_eq!(heights(skipped_between(Some(6), 7, &seen(7..=7))), Vec::<u64>::new());
        // A reorg or a failover to a node behind: nothing between.
        assert_eq!(heights(skipped_between(Some(9), 7, &seen(7..=7))), Vec::<u64>::new());
        // Far behind: only the newest few.
        let far = skipped_between(Some(1), 40, &seen(2..=40));
        assert_eq!(far.len(), MAX_SKIPPED_BLOCKS);
        assert_eq!(far.last().map(|b| (b.height, b.hash.as_str())), Some((39, "h39")));
    }
}
