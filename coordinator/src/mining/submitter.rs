//! The submitter, one actor per worker identity: turns computed results into signed `SUBMIT_RESULT`
//! transactions, assigns nonces itself, sends them, and confirms inclusion by finding the tx hash in
//! later blocks (receipts can lie).
//!
//! Every round runs the same steps, so a restart is just another round over what the journal holds:
//! 1. scan the blocks since the last round for the hashes of open submissions → `included`;
//! 2. reconcile open submissions with the node's nonces: one the node still queues is waited for; one it
//!    lost (node restart, mempool flush) whose nonce is next is re-sent byte for byte (same hash, so it can
//!    never land twice); one whose nonce was consumed or left behind a gap is marked lost and its task
//!    goes back to `computed`;
//! 3. sign each computed task's result with the next nonce, journal it, then send it, after checking
//!    that the balance covers the fee.

use super::{
    Identity, SharedJournal,
    journal::{Journal, JournalError, SubmissionState, TaskState},
};
use crate::{
    l1::{NodeError, NodePool},
    submit::{self, Outgoing, SubmitError},
};
use actix::prelude::*;
use std::{
    collections::{BTreeMap, HashSet},
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
    journal: SharedJournal,
    gas_price: u64,
    /// Highest block already scanned for inclusions (0: scan from the open submissions' heights).
    scanned_to: u64,
    /// When each recent block was seen and computed, for latency metrics; shared with the actor so a
    /// round that picks a result up before its `TaskComputed` message is handled still finds it.
    seen: Arc<Mutex<BTreeMap<u64, Seen>>>,
}

impl Submitter {
    /// A submitter for `identity`.
    pub fn new(
        identity: Identity,
        nodes: NodePool,
        journal: SharedJournal,
        gas_price: u64,
    ) -> Self {
        Self {
            core: Core { identity, nodes, journal, gas_price, scanned_to: 0, seen: Arc::default() },
            busy: false,
            again: false,
        }
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
        call(&*self.journal.lock().map_err(journal_err)?).map_err(journal_err)
    }

    fn seen_at(&self, height: u64) -> Option<Seen> {
        self.seen.lock().ok().and_then(|s| s.get(&height).copied())
    }

    async fn round(&mut self) -> Result<(), SubmitError> {
        let head = self.nodes.status().await?.height;
        self.confirm_inclusions(head).await?;
        self.reconcile_open().await?;
        self.submit_computed().await
    }

    async fn confirm_inclusions(&mut self, head: u64) -> Result<(), SubmitError> {
        let open = self.journal(|j| j.open_submissions(self.name()))?;
        if open.is_empty() {
            self.scanned_to = self.scanned_to.max(head);
            return Ok(());
        }
        let mut wanted: HashSet<String> = open.iter().map(|o| o.tx_hash.clone()).collect();
        let oldest = open.iter().map(|o| o.height + 1).min().unwrap_or(head);
        // A transaction can only land in a block produced after it was sent, so blocks scanned in an
        // earlier round never need a second look; after a restart, scan from the oldest open task.
        let from = if self.scanned_to == 0 { oldest } else { self.scanned_to + 1 };
        let node = self.nodes.client().clone();
        for h in from..=head {
            let Some(block) = node.block(h).await? else { break };
            for tx in &block.txs {
                let hash = tx.hash_hex();
                if wanted.remove(&hash) {
                    self.journal(|j| j.mark_included(&hash, h))?;
                    metrics::counter!("cpcfarm_submissions_included_total", "identity" => self.name().to_owned())
                        .increment(1);
                    if let Some(seen) =
                        open.iter().find(|o| o.tx_hash == hash).and_then(|o| self.seen_at(o.height))
                    {
                        metrics::histogram!("cpcfarm_block_to_inclusion_seconds")
                            .record(seen.block.elapsed().as_secs_f64());
                    }
                    tracing::info!(identity = %self.name(), tx = %hash, block = h, "submission included");
                }
            }
            self.scanned_to = h;
        }
        Ok(())
    }

    /// The node's confirmed and pending nonces of this identity.
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
        if open.is_empty() {
            return Ok(());
        }
        let (confirmed, mut pending, _) = self.nonces().await?;
        let node = self.nodes.client().clone();
        for o in open {
            let lost = |reason: &str, state| -> Result<(), SubmitError> {
                metrics::counter!("cpcfarm_submissions_dropped_total", "identity" => self.name().to_owned()).increment(1);
                tracing::warn!(identity = %self.name(), tx = %o.tx_hash, nonce = o.nonce, reason, "submission lost; its result will be re-signed");
                self.journal(|j| j.mark_lost(&o.tx_hash, state, reason))
            };
            if o.nonce < confirmed {
                lost("its nonce was used by another transaction", SubmissionState::Dropped)?;
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

    async fn submit_computed(&mut self) -> Result<(), SubmitError> {
        let computed = self.journal(|j| j.tasks_in_state(self.name(), TaskState::Computed))?;
        if computed.is_empty() {
            return Ok(());
        }
        let (_, mut nonce, have) = self.nonces().await?;
        let open = self.journal(|j| j.open_submissions(self.name()))?;
        if let Some(highest) = open.iter().map(|o| o.nonce).max() {
            nonce = nonce.max(highest + 1);
        }
        let mut reserved: u128 = open.iter().map(|o| o.tx.fee).sum();
        let node = self.nodes.client().clone();
        for record in computed {
            let Some(result_hash) = record.result_hash.as_deref() else { continue };
            let task_id = record.task.task_id.to_string();
            let result = submit::block_task_result(&self.identity.key, &record.task, result_hash)?;
            let outgoing = Outgoing::submit_result(&result, self.gas_price);
            let tx = submit::sign_checked(&self.identity.key, &outgoing, nonce)?;
            let need = reserved.saturating_add(tx.fee);
            if have < need {
                metrics::counter!("cpcfarm_submissions_unfunded_total", "identity" => self.name().to_owned()).increment(1);
                metrics::gauge!("cpcfarm_identity_funded", "identity" => self.name().to_owned())
                    .set(0.0);
                let e = SubmitError::InsufficientBalance {
                    address: self.identity.address.to_string(),
                    have,
                    need,
                    fee: tx.fee,
                    amount: 0,
                };
                tracing::error!(identity = %self.name(), error = %e, "cannot submit: results stay journaled until funded");
                return Ok(());
            }
            metrics::gauge!("cpcfarm_identity_funded", "identity" => self.name().to_owned())
                .set(1.0);
            self.journal(|j| j.record_signed(self.name(), &task_id, record.task.height, &tx))?;
            match node.send_tx(&tx).await {
                Ok(_) => {
                    self.journal(|j| j.mark_sent(&tx.hash_hex()))?;
                    metrics::counter!("cpcfarm_submissions_sent_total", "identity" => self.name().to_owned()).increment(1);
                    if let Some(seen) = self.seen_at(record.task.height) {
                        metrics::histogram!("cpcfarm_block_to_submit_seconds")
                            .record(seen.block.elapsed().as_secs_f64());
                        metrics::histogram!("cpcfarm_result_to_submit_seconds")
                            .record(seen.computed.elapsed().as_secs_f64());
                    }
                    tracing::info!(identity = %self.name(), height = record.task.height, tx = %tx.hash_hex(), nonce, "submitted");
                    nonce += 1;
                    reserved = need;
                }
                Err(NodeError::Rejected { reason, .. }) => {
                    metrics::counter!("cpcfarm_submissions_rejected_total", "identity" => self.name().to_owned())
                        .increment(1);
                    self.journal(|j| {
                        j.mark_lost(&tx.hash_hex(), SubmissionState::Rejected, &reason)
                    })?;
                    if reason.to_ascii_lowercase().contains("nonce") {
                        // Someone else used the identity's nonces: the next round starts from the node's view.
                        tracing::warn!(identity = %self.name(), %reason, "nonce out of step with the node; resyncing");
                    } else {
                        self.journal(|j| j.fail_task(self.name(), &task_id, &reason))?;
                        tracing::error!(identity = %self.name(), %task_id, %reason, "the node rejected a submission");
                    }
                    return Ok(());
                }
                // Unreachable: the submission stays `signed` and goes out in a later round.
                Err(e) => return Err(e.into()),
            }
        }
        Ok(())
    }
}
