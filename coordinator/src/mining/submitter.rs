//! The submitter, one actor per worker identity: turns computed results into signed `SUBMIT_RESULT`
//! transactions, assigns nonces itself, sends them, and confirms inclusion by finding the tx hash in
//! later blocks (receipts can lie).
//!
//! It asks the node little: blocks come from the chain follower ([`super::watcher::BlocksSeen`], each block
//! fetched and hashed once for all identities), the next nonce and the balance are tracked locally after
//! the first read, and the node's nonces are read again only when the journal cannot account for a
//! submission (one not included [`STALE_AFTER_BLOCKS`] blocks after it was sent, one left `signed` by a
//! crash, a rejection, an unreachable node). In steady state that is one `POST /tx/send` per result.
//!
//! Every round runs the same steps, so a restart is just another round over what the journal holds:
//! 1. look for the hashes of open submissions in the blocks since the last round → `included`;
//! 2. reconcile stale open submissions with the node's nonces: one the node still queues is waited for; one it
//!    lost (node restart, mempool flush) whose nonce is next is re-sent byte for byte (same hash, so it can
//!    never land twice); one whose nonce was consumed is looked for once more in the blocks up to the
//!    head as of now (it may have landed after step 1) and, only when it is in none, marked lost with its
//!    task back to `computed`, as is one left behind a gap;
//! 3. sign each computed task's result with the next nonce, journal it, then send it, after checking
//!    that the balance covers the fee.
//!
//! Two guards come before step 3. On a journal made in this run (a first start, or `--new-journal` after
//! a lost one) the submitter first recovers from the chain: it waits until the node queues no transaction
//! of the identity that the journal does not know, then journals as included every SUBMIT_RESULT of the
//! identity it finds in the blocks since its oldest computed task, so nothing an earlier run sent is sent
//! again. And a validator's result (`submit_to_l1`) is never signed under the task id of one of the
//! identity's block tasks (a validator can derive those from public data): neither the block at its nonce
//! nor any recent block the follower delivered may have that task id.

use super::{
    Identity,
    journal::{
        Journal, JournalError, MissCause, SubmissionState, TaskOrigin, TaskRecord, TaskState,
    },
    watcher::{BlocksSeen, SeenBlock},
};
use crate::{
    l1::{NodeError, NodePool},
    submit::{self, Outgoing, SubmitError},
};
use actix::prelude::*;
use cpc_common::{synthetic, tx::TxType};
use std::{
    collections::{BTreeMap, HashMap, HashSet},
    sync::{Arc, Mutex},
    time::Instant,
};

/// A task of this identity was computed (its result is in the journal).
#[derive(Debug, Clone, Message)]
#[rtype(result = "()")]
pub struct TaskComputed {
    /// Height of the seeding block.
    pub height: u64,
    /// When the block was seen.
    pub seen_at: Instant,
    /// When its result was journaled (submission overhead is measured from here, excluding compute).
    pub computed_at: Instant,
}

/// A new block exists: look for open submissions in it.
#[derive(Debug, Clone, Copy, Message)]
#[rtype(result = "()")]
pub struct CheckInclusion;

/// How many block-seen times to remember for latency metrics.
const SEEN_HISTORY: usize = 256;
/// Blocks the follower delivered that a submitter keeps for its inclusion scan.
const BLOCK_HISTORY: usize = 256;
/// A submission not included this many blocks after it was sent is reconciled with the node's nonces.
pub const STALE_AFTER_BLOCKS: u64 = 3;

/// Submits for one identity.
#[derive(Debug)]
pub struct Submitter {
    core: Core,
    busy: bool,
    again: bool,
}

/// When a block was seen and its task computed, for latency metrics.
#[derive(Debug, Clone, Copy)]
struct Seen {
    block: Instant,
    computed: Instant,
}

#[derive(Debug, Clone)]
struct Core {
    identity: Identity,
    nodes: NodePool,
    journal: Journal,
    gas_price: u64,
    /// Highest block already scanned for inclusions (0: scan from the open submissions' heights).
    scanned_to: u64,
    /// The journal was made in this run: recover from the chain before signing anything.
    recovering: bool,
    /// When each recent block was seen and computed, for latency metrics; shared with the actor so a
    /// round that picks a result up before its `TaskComputed` message is handled still finds it.
    seen: Arc<Mutex<BTreeMap<u64, Seen>>>,
    /// Blocks the follower delivered (by height), shared with the actor.
    blocks: Arc<Mutex<BTreeMap<u64, Arc<[SeenBlock]>>>>,
    /// The head as the follower last reported it (0: unknown yet, ask the node).
    head: u64,
    /// The nonce the next submission takes, while the journal accounts for every earlier one.
    next_nonce: Option<u64>,
    /// The balance left after the fees of what was sent since it was read.
    balance: Option<u128>,
    /// The head when each open submission was sent in this run (others are reconciled at once).
    sent_at_head: Arc<Mutex<HashMap<String, u64>>>,
}

impl Submitter {
    /// A submitter for `identity`.
    pub fn new(identity: Identity, nodes: NodePool, journal: Journal, gas_price: u64) -> Self {
        Self {
            core: Core {
                identity,
                nodes,
                journal,
                gas_price,
                scanned_to: 0,
                recovering: false,
                seen: Arc::default(),
                blocks: Arc::default(),
                head: 0,
                next_nonce: None,
                balance: None,
                sent_at_head: Arc::default(),
            },
            busy: false,
            again: false,
        }
    }

    /// On a journal made in this run: look for this identity's results on chain before signing any.
    pub fn recovering_from_chain(mut self, recovering: bool) -> Self {
        self.core.recovering = recovering;
        self
    }

    fn kick(&mut self, ctx: &mut Context<Self>) {
        if self.busy {
            self.again = true;
            return;
        }
        self.busy = true;
        let mut core = self.core.clone();
        ctx.spawn(
            async move {
                let res = core.round().await;
                (core, res)
            }
            .into_actor(self)
            .map(|(core, res), act, ctx| {
                act.core.scanned_to = core.scanned_to;
                act.core.recovering = core.recovering;
                act.core.next_nonce = core.next_nonce;
                act.core.balance = core.balance;
                act.core.head = act.core.head.max(core.head);
                act.busy = false;
                if let Err(e) = res {
                    tracing::warn!(identity = %act.core.identity.name, error = %e, "submission round incomplete; retrying next block");
                }
                if std::mem::take(&mut act.again) {
                    act.kick(ctx);
                }
            }),
        );
    }
}

impl Actor for Submitter {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        // Whatever the journal holds from before a restart goes out now.
        self.kick(ctx);
    }
}

impl Handler<TaskComputed> for Submitter {
    type Result = ();
    fn handle(&mut self, msg: TaskComputed, ctx: &mut Self::Context) {
        if let Ok(mut seen) = self.core.seen.lock() {
            seen.insert(msg.height, Seen { block: msg.seen_at, computed: msg.computed_at });
            while seen.len() > SEEN_HISTORY {
                seen.pop_first();
            }
        }
        self.kick(ctx);
    }
}

impl Handler<BlocksSeen> for Submitter {
    type Result = ();
    fn handle(&mut self, msg: BlocksSeen, ctx: &mut Self::Context) {
        if let Ok(mut blocks) = self.core.blocks.lock() {
            if let Some(last) = msg.blocks.last() {
                blocks.insert(last.height, Arc::clone(&msg.blocks));
            }
            while blocks.values().map(|b| b.len()).sum::<usize>() > BLOCK_HISTORY {
                blocks.pop_first();
            }
        }
        self.core.head = self.core.head.max(msg.head);
        self.kick(ctx);
    }
}

/// A reload: the nodes and the gas price of the submissions signed from the next round on.
#[derive(Debug, Clone, Message)]
#[rtype(result = "()")]
pub struct UseSettings {
    /// The L1 nodes.
    pub nodes: NodePool,
    /// The gas price.
    pub gas_price: u64,
}

impl Handler<UseSettings> for Submitter {
    type Result = ();
    fn handle(&mut self, msg: UseSettings, _: &mut Self::Context) {
        // A round in flight finishes with its own copy; the next one starts from these.
        self.core.nodes = msg.nodes;
        self.core.gas_price = msg.gas_price;
    }
}

impl Handler<CheckInclusion> for Submitter {
    type Result = ();
    fn handle(&mut self, _: CheckInclusion, ctx: &mut Self::Context) {
        self.kick(ctx);
    }
}

fn journal_err(e: impl std::fmt::Display) -> SubmitError {
    SubmitError::Malformed { field: "journal", reason: e.to_string() }
}

impl Core {
    fn name(&self) -> &str {
        &self.identity.name
    }

    /// Runs one short journal call.
    fn journal<T>(
        &self,
        call: impl FnOnce(&Journal) -> Result<T, JournalError>,
    ) -> Result<T, SubmitError> {
        call(&self.journal).map_err(journal_err)
    }

    fn seen_at(&self, height: u64) -> Option<Seen> {
        self.seen.lock().ok().and_then(|s| s.get(&height).copied())
    }

    async fn round(&mut self) -> Result<(), SubmitError> {
        // The chain follower's first blocks start the work (it kicks every submitter).
        if self.head == 0 {
            return Ok(());
        }
        let head = self.head;
        self.confirm_inclusions(head).await?;
        self.reconcile_open().await?;
        self.submit_computed().await
    }

    /// The transaction hashes of block `h`, from the follower's blocks, else from the node (a catch-up
    /// after a restart); `None` when the block does not exist yet.
    async fn block_tx_hashes(&self, h: u64) -> Result<Option<HashSet<String>>, SubmitError> {
        let delivered = self.blocks.lock().ok().and_then(|blocks| {
            blocks.range(h..).next().and_then(|(_, batch)| {
                batch.iter().find(|b| b.height == h).map(|b| b.tx_hashes.clone())
            })
        });
        if let Some(hashes) = delivered {
            return Ok(Some(hashes));
        }
        let block = self.nodes.client().block(h).await?;
        Ok(block.map(|b| SeenBlock::of(&b).tx_hashes))
    }

    async fn confirm_inclusions(&mut self, head: u64) -> Result<(), SubmitError> {
        let open = self.journal(|j| j.open_submissions(self.name()))?;
        if open.is_empty() {
            self.scanned_to = self.scanned_to.max(head);
            return Ok(());
        }
        let mut wanted: HashSet<String> = open.iter().map(|o| o.tx_hash.clone()).collect();
        let oldest = open.iter().map(|o| o.height.saturating_add(1)).min().unwrap_or(head);
        // A transaction can only land in a block produced after it was sent, so blocks scanned in an
        // earlier round never need a second look; after a restart, scan from the oldest open task.
        let from = if self.scanned_to == 0 { oldest } else { self.scanned_to.saturating_add(1) };
        for h in from..=head {
            let Some(hashes) = self.block_tx_hashes(h).await? else { break };
            for o in &open {
                if hashes.contains(&o.tx_hash) && wanted.remove(&o.tx_hash) {
                    self.record_inclusion(&o.tx_hash, Some(o.height), h)?;
                }
            }
            self.scanned_to = h;
        }
        Ok(())
    }

    /// Journals that `tx_hash` (the submission for the task of `task_height`) is in block `block`.
    fn record_inclusion(
        &self,
        tx_hash: &str,
        task_height: Option<u64>,
        block: u64,
    ) -> Result<(), SubmitError> {
        self.journal(|j| j.mark_included(tx_hash, block))?;
        if let Ok(mut sent) = self.sent_at_head.lock() {
            sent.remove(tx_hash);
        }
        metrics::counter!("cpcfarm_submissions_included_total", "identity" => self.name().to_owned())
            .increment(1);
        if let Some(seen) = task_height.and_then(|h| self.seen_at(h)) {
            metrics::histogram!("cpcfarm_block_to_inclusion_seconds")
                .record(seen.block.elapsed().as_secs_f64());
        }
        tracing::info!(identity = %self.name(), tx = %tx_hash, block, "submission included");
        Ok(())
    }

    /// The node's confirmed and pending nonces of this identity, and its balance.
    async fn nonces(&self) -> Result<(u64, u64, u128), SubmitError> {
        let node = self.nodes.client();
        let address = self.identity.address.to_string();
        let balance = node.balance(&address).await?;
        let pending = node.pending_nonce(&address).await?;
        let have = balance.balance_u128().ok_or_else(|| NodeError::Decode {
            url: format!("{}/balance/{address}", node.url()),
            reason: format!("balance `{}` is not an integer", balance.balance),
        })?;
        metrics::gauge!("cpcfarm_identity_balance_cpc", "identity" => self.name().to_owned())
            .set(have as f64 / 1e18);
        Ok((balance.nonce, pending, have))
    }

    async fn reconcile_open(&mut self) -> Result<(), SubmitError> {
        let open = self.journal(|j| j.open_submissions(self.name()))?;
        let head = self.head;
        let stale = |o: &super::journal::SubmissionRecord| {
            o.state == SubmissionState::Signed
                || self.sent_at_head.lock().map_or(true, |sent| {
                    sent.get(&o.tx_hash)
                        .is_none_or(|at| at.saturating_add(STALE_AFTER_BLOCKS) <= head)
                })
        };
        if !open.iter().any(stale) {
            return Ok(());
        }
        // The journal cannot account for a submission: the node's view decides, and the next nonce and
        // the balance are read again afterwards.
        self.next_nonce = None;
        self.balance = None;
        let (confirmed, mut pending, _) = self.nonces().await?;
        let node = self.nodes.client().clone();
        for o in open {
            let lost = |reason: &str, state| -> Result<(), SubmitError> {
                metrics::counter!("cpcfarm_submissions_dropped_total", "identity" => self.name().to_owned()).increment(1);
                tracing::warn!(identity = %self.name(), tx = %o.tx_hash, nonce = o.nonce, reason, "submission lost; its result will be re-signed");
                self.journal(|j| j.mark_lost(&o.tx_hash, state, reason))
            };
            if o.nonce < confirmed {
                // Usually ours, landed in a block after this round's scan: the nonces were read after the
                // scan. Only a search up to a head read after the nonces can tell it from a replacement
                // (re-signing an included result would put it on chain twice). Blocks up to `scanned_to`
                // were searched for every open submission already.
                let from = self.scanned_to.saturating_add(1).max(o.height.saturating_add(1));
                match node.find_tx(&o.tx_hash, from).await? {
                    (Some(block), _) => self.record_inclusion(&o.tx_hash, Some(o.height), block)?,
                    (None, _) => {
                        lost("its nonce was used by another transaction", SubmissionState::Dropped)?
                    }
                }
            } else if o.nonce < pending {
                // Queued at the node.
                if o.state == SubmissionState::Signed {
                    self.journal(|j| j.mark_sent(&o.tx_hash))?;
                }
            } else if o.nonce == pending {
                // The node does not hold it (restart, flush, or we crashed before sending): same bytes again.
                match node.send_tx(&o.tx).await {
                    Ok(_) => {
                        self.journal(|j| j.mark_sent(&o.tx_hash))?;
                        self.note_sent(&o.tx_hash);
                        pending += 1;
                        tracing::info!(identity = %self.name(), tx = %o.tx_hash, nonce = o.nonce, "re-sent a submission the node had lost");
                    }
                    Err(NodeError::Rejected { reason, .. }) => {
                        lost(&reason, SubmissionState::Rejected)?
                    }
                    Err(e) => return Err(e.into()),
                }
            } else {
                lost("a lower nonce was lost, leaving a gap", SubmissionState::Dropped)?;
            }
        }
        Ok(())
    }

    fn note_sent(&self, tx_hash: &str) {
        if let Ok(mut sent) = self.sent_at_head.lock() {
            sent.insert(tx_hash.to_owned(), self.head);
        }
    }

    /// This identity's block task id for the block of hash `block_hash`.
    fn block_task_id(&self, block_hash: &str) -> Result<String, SubmitError> {
        let seed = synthetic::task_seed(block_hash, self.identity.address.as_str());
        synthetic::task_id(&seed)
            .map(|id| id.to_string())
            .map_err(|e| SubmitError::Malformed { field: "block task id", reason: e.to_string() })
    }

    /// The height of a block whose task for this identity has `record`'s id, among the block at its nonce
    /// (when it exists: a validator can derive a block task's id only once the block is out, so a nonce
    /// ahead of the chain names no block task yet) and the recent blocks the follower delivered.
    async fn block_task_collision(&self, record: &TaskRecord) -> Result<Option<u64>, SubmitError> {
        let task_id = record.task.task_id.to_string();
        let recent: Vec<(u64, String)> = self
            .blocks
            .lock()
            .map(|b| {
                b.values()
                    .flat_map(|batch| batch.iter().map(|s| (s.height, s.hash.clone())))
                    .collect()
            })
            .unwrap_or_default();
        for (height, hash) in recent {
            if self.block_task_id(&hash)? == task_id {
                return Ok(Some(height));
            }
        }
        if let Some(block) = self.nodes.client().block(record.task.height).await?
            && self.block_task_id(&block.header.hash())? == task_id
        {
            return Ok(Some(record.task.height));
        }
        Ok(None)
    }

    /// Recovery on a journal made in this run (see the module docs). Returns `false` while the node still
    /// queues transactions of this identity that the journal does not know (an earlier run's): signing now
    /// could put a second result for one task on chain.
    async fn recover_from_chain(&mut self, computed: &[TaskRecord]) -> Result<bool, SubmitError> {
        let (confirmed, pending, have) = self.nonces().await?;
        let open = self.journal(|j| j.open_submissions(self.name()))?;
        let known_until = open.iter().map(|o| o.nonce.saturating_add(1)).max().unwrap_or(0);
        if pending > confirmed.max(known_until) {
            tracing::warn!(identity = %self.name(), confirmed, pending,
                "the node queues transactions of this identity that the journal does not know (an earlier run's); \
                 waiting for them to land before signing anything");
            return Ok(false);
        }
        let head = self.head;
        let from = computed.iter().map(|t| t.task.height).min().unwrap_or(head);
        let mut wanted: HashMap<String, u64> =
            computed.iter().map(|t| (t.task.task_id.to_string(), t.task.height)).collect();
        let me = self.identity.address.to_string();
        let node = self.nodes.client().clone();
        // Up to the node's own head, not the follower's: the confirmed nonce read above may already count
        // an earlier run's transaction in a block the follower has not delivered yet.
        for h in from.. {
            if wanted.is_empty() {
                break;
            }
            let Some(block) = node.block(h).await? else { break };
            for tx in &block.txs {
                if tx.tx_type != TxType::SubmitResult || tx.from_address != me {
                    continue;
                }
                let Some(task_id) = tx.payload.get("task_id").and_then(|v| v.as_str()) else {
                    continue;
                };
                if let Some(task_height) = wanted.remove(task_id) {
                    self.journal(|j| {
                        j.record_signed(self.name(), task_id, task_height, tx)?;
                        j.mark_included(&tx.hash_hex(), h)
                    })?;
                    tracing::warn!(identity = %self.name(), %task_id, block = h, tx = %tx.hash_hex(),
                        "found this task's result already on chain (sent by an earlier run): not sending it again");
                }
            }
        }
        if open.is_empty() {
            // What the node said is what the next submission starts from.
            self.next_nonce = Some(pending);
            self.balance = Some(have);
        }
        Ok(true)
    }

    async fn submit_computed(&mut self) -> Result<(), SubmitError> {
        let computed = self.journal(|j| j.tasks_in_state(self.name(), TaskState::Computed))?;
        if computed.is_empty() {
            return Ok(());
        }
        if self.recovering {
            if !self.recover_from_chain(&computed).await? {
                return Ok(());
            }
            self.recovering = false;
            return Box::pin(self.submit_computed()).await;
        }
        let (mut nonce, mut have) = match (self.next_nonce, self.balance) {
            (Some(n), Some(b)) => (n, b),
            _ => {
                let (_, pending, have) = self.nonces().await?;
                (pending, have)
            }
        };
        let open = self.journal(|j| j.open_submissions(self.name()))?;
        if let Some(highest) = open.iter().map(|o| o.nonce).max() {
            nonce = nonce.max(highest.saturating_add(1));
        }
        // A fresh balance covers the open submissions' fees still to be charged; the local estimate has
        // them taken off already.
        let fresh = self.balance.is_none();
        let mut reserved: u128 = if fresh { open.iter().map(|o| o.tx.fee).sum() } else { 0 };
        let node = self.nodes.client().clone();
        for record in computed {
            let Some(result_hash) = record.result_hash.as_deref() else { continue };
            let task_id = record.task.task_id.to_string();
            if record.origin == TaskOrigin::Validator
                && let Some(height) = self.block_task_collision(&record).await?
            {
                let reason = format!(
                    "a validator's result with the task_id of this identity's block task at height {height}: never submitted"
                );
                tracing::warn!(identity = %self.name(), %task_id, "{reason}");
                self.journal(|j| j.fail_validator_task(self.name(), &task_id, &reason))?;
                continue;
            }
            let result = submit::block_task_result(&self.identity.key, &record.task, result_hash)?;
            let outgoing = Outgoing::submit_result(&result, self.gas_price);
            let tx = submit::sign_checked(&self.identity.key, &outgoing, nonce)?;
            let need = reserved.saturating_add(tx.fee);
            if have < need && !fresh {
                // The estimate may be stale (a transfer came in): the next round reads the node's balance.
                self.balance = None;
                return Ok(());
            }
            if have < need {
                metrics::counter!("cpcfarm_submissions_unfunded_total", "identity" => self.name().to_owned()).increment(1);
                metrics::gauge!("cpcfarm_identity_funded", "identity" => self.name().to_owned())
                    .set(0.0);
                if let Some(r) = self.nodes.readiness() {
                    r.set_funded(self.name(), false)
                }
                let e = SubmitError::InsufficientBalance {
                    address: self.identity.address.to_string(),
                    have,
                    need,
                    fee: tx.fee,
                    amount: 0,
                };
                tracing::error!(identity = %self.name(), error = %e, "cannot submit: results stay journaled until funded");
                let detail =
                    format!("balance {have} < {need} needed (fee {} per submission)", tx.fee);
                self.journal(|j| {
                    j.note_miss_computed(self.name(), MissCause::Underfunded, &detail)
                })?;
                return Ok(());
            }
            metrics::gauge!("cpcfarm_identity_funded", "identity" => self.name().to_owned())
                .set(1.0);
            if let Some(r) = self.nodes.readiness() {
                r.set_funded(self.name(), true)
            }
            self.journal(|j| j.record_signed(self.name(), &task_id, record.task.height, &tx))?;
            match node.send_tx(&tx).await {
                Ok(_) => {
                    self.journal(|j| j.mark_sent(&tx.hash_hex()))?;
                    self.note_sent(&tx.hash_hex());
                    metrics::counter!("cpcfarm_submissions_sent_total", "identity" => self.name().to_owned()).increment(1);
                    if let Some(seen) = self.seen_at(record.task.height) {
                        metrics::histogram!("cpcfarm_block_to_submit_seconds")
                            .record(seen.block.elapsed().as_secs_f64());
                        metrics::histogram!("cpcfarm_result_to_submit_seconds")
                            .record(seen.computed.elapsed().as_secs_f64());
                    }
                    tracing::info!(identity = %self.name(), height = record.task.height, tx = %tx.hash_hex(), nonce, "submitted");
                    nonce += 1;
                    self.next_nonce = Some(nonce);
                    self.balance = Some(have.saturating_sub(need));
                    have = have.saturating_sub(need);
                    reserved = 0;
                }
                Err(NodeError::Rejected { reason, .. }) => {
                    self.next_nonce = None;
                    self.balance = None;
                    metrics::counter!("cpcfarm_submissions_rejected_total", "identity" => self.name().to_owned())
                        .increment(1);
                    self.journal(|j| {
                        j.mark_lost(&tx.hash_hex(), SubmissionState::Rejected, &reason)
                    })?;
                    if reason.to_ascii_lowercase().contains("nonce") {
                        // Someone else used the identity's nonces: the next round starts from the node's view.
                        tracing::warn!(identity = %self.name(), %reason, "nonce out of step with the node; resyncing");
                    } else {
                        self.journal(|j| {
                            j.fail_task(self.name(), &task_id, &reason)?;
                            j.note_miss(self.name(), &task_id, MissCause::Rejected, None)
                        })?;
                        tracing::error!(identity = %self.name(), %task_id, %reason, "the node rejected a submission");
                    }
                    return Ok(());
                }
                // Unreachable: the submission stays `signed` and goes out in a later round; whether it
                // reached the node is unknown, so the node's nonces decide then.
                Err(e) => {
                    self.next_nonce = None;
                    self.balance = None;
                    return Err(e.into());
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::{Json, Router, extract::Path, routing::get};
    use cpc_common::{
        BlockHeader, SecretKey, Transaction, block::Block, synthetic::BlockTask, tx::MIN_GAS_PRICE,
    };
    use serde_json::{Value, json};

    fn block(height: u64, txs: Vec<Transaction>) -> Block {
        Block {
            header: BlockHeader {
                height,
                prev_hash: "00".repeat(32),
                timestamp: 1_700_000_000 + height as i64,
                chain_id: "cpc-devnet-1".into(),
                proposer_address: String::new(),
                round: 0,
                tx_root: String::new(),
                state_root: String::new(),
                compute_root: String::new(),
                gas_used: 0,
                gas_limit: 10_000_000,
                zk_state_proof_hash: None,
                zk_compute_proof_hash: None,
            },
            txs,
            pq_signature: None,
            pq_sig_scheme_id: None,
        }
    }

    /// A node frozen just after our submission (nonce 0, for the task of block 1) landed in block 3, while
    /// the round's scan had only reached block 2: the confirmed nonce (1) is already past ours.
    async fn node_where_ours_landed_after_the_scan(address: String, tx: Transaction) -> String {
        let blocks = Arc::new(vec![
            block(0, vec![]),
            block(1, vec![]),
            block(2, vec![]),
            block(3, vec![tx]),
        ]);
        let (a, b) = (address.clone(), address);
        let app = Router::new()
            .route(
                "/status",
                get(|| async {
                    Json(json!({"height": 3, "last_hash": "00", "network": "cpc-devnet-1", "mempool_size": 0}))
                }),
            )
            .route(
                "/block/{h}",
                get(move |Path(h): Path<usize>| {
                    let blocks = blocks.clone();
                    async move {
                        blocks.get(h).map(|b| Json(serde_json::to_value(b).unwrap_or(Value::Null))).ok_or(
                            axum::http::StatusCode::NOT_FOUND,
                        )
                    }
                }),
            )
            .route(
                "/balance/{a}",
                get(move || async move {
                    Json(json!({"address": a, "balance": "1000000000000000000000", "nonce": 1}))
                }),
            )
            .route(
                "/nonce/{a}",
                get(move || async move { Json(json!({"address": b, "nonce": 1, "pending": true})) }),
            );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let url = format!("http://{}", listener.local_addr().expect("addr"));
        tokio::spawn(async move { axum::serve(listener, app).await });
        url
    }

    /// The race behind a double submission: our transaction lands between the inclusion scan and the nonce
    /// read. The confirmed nonce is then past ours, yet the result must be recorded as included, not
    /// dropped and re-signed (which would put a second SUBMIT_RESULT for the block on chain).
    #[tokio::test]
    async fn a_submission_included_after_the_scan_is_not_mistaken_for_a_replaced_one() {
        let key = SecretKey::generate();
        let address = key.address();
        let task = BlockTask::derive(&"11".repeat(32), &address.to_string(), 8, 1).expect("task");
        let task_id = task.task_id.to_string();
        let result = submit::block_task_result(&key, &task, &"ab".repeat(32)).expect("result");
        let tx = submit::sign_checked(&key, &Outgoing::submit_result(&result, MIN_GAS_PRICE), 0)
            .expect("tx");
        let journal = Journal::in_memory().expect("journal");
        journal.record_task("w", &task).expect("task");
        journal.record_result("w", &task_id, &"ab".repeat(32)).expect("computed");
        journal.record_signed("w", &task_id, 1, &tx).expect("signed");
        journal.mark_sent(&tx.hash_hex()).expect("sent");

        let url = node_where_ours_landed_after_the_scan(address.to_string(), tx.clone()).await;
        let mut core = Core {
            identity: Identity { name: "w".into(), key, address },
            nodes: NodePool::new(&[url]),
            journal,
            gas_price: MIN_GAS_PRICE,
            scanned_to: 0,
            recovering: false,
            seen: Arc::default(),
            blocks: Arc::default(),
            head: 2,
            next_nonce: None,
            balance: None,
            sent_at_head: Arc::default(),
        };
        core.confirm_inclusions(2).await.expect("scan up to block 2, as the round's head said");
        assert_eq!(core.scanned_to, 2);
        assert_eq!(core.journal(|j| j.open_submissions("w")).expect("open").len(), 1);
        core.reconcile_open().await.expect("reconcile");

        let journal = &core.journal;
        let subs = journal.submissions("w").expect("submissions");
        assert_eq!(subs.len(), 1);
        assert_eq!(subs[0].state, SubmissionState::Included, "{:?}", subs[0]);
        assert!(journal.open_submissions("w").expect("open").is_empty());
        assert!(
            journal.tasks_in_state("w", TaskState::Computed).expect("computed").is_empty(),
            "the result must not go back to be signed again"
        );
    }
}
