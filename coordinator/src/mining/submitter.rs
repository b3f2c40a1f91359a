//! The submitter, one actor per worker identity: turns computed results into signed `SUBMIT_RESULT`
//! transactions, assigns nonces itself, sends them, and confirms inclusion by finding the tx hash in
//! later blocks (receipts can lie).
//!
//! Every round runs the same steps, so a restart is just another round over what the journal holds:
//! 1. scan the blocks since the last round for the hashes of open submissions → `included`;
//! 2. reconcile open submissions with the node's nonces: one the node still queues is waited for; one it
//!    lost (node restart, mempool flush) whose nonce is next is re-sent byte for byte (same hash, so it can
//!    never land twice); one whose nonce was consumed is looked for once more in the blocks up to the
//!    head as of now (it may have landed after step 1) and, only when it is in none, marked lost with its
//!    task back to `computed`, as is one left behind a gap;
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
                    let task_height = open.iter().find(|o| o.tx_hash == hash).map(|o| o.height);
                    self.record_inclusion(&hash, task_height, h)?;
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
        metrics::counter!("cpcfarm_submissions_included_total", "identity" => self.name().to_owned())
            .increment(1);
        if let Some(seen) = task_height.and_then(|h| self.seen_at(h)) {
            metrics::histogram!("cpcfarm_block_to_inclusion_seconds")
                .record(seen.block.elapsed().as_secs_f64());
        }
        tracing::info!(identity = %self.name(), tx = %tx_hash, block, "submission included");
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
                // Usually ours, landed in a block after this round's scan: the nonces were read after the
                // scan. Only a search up to a head read after the nonces can tell it from a replacement
                // (re-signing an included result would put it on chain twice). Blocks up to `scanned_to`
                // were searched for every open submission already.
                let from = (self.scanned_to + 1).max(o.height + 1);
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
            journal: Arc::new(Mutex::new(journal)),
            gas_price: MIN_GAS_PRICE,
            scanned_to: 0,
            seen: Arc::default(),
        };
        core.confirm_inclusions(2).await.expect("scan up to block 2, as the round's head said");
        assert_eq!(core.scanned_to, 2);
        assert_eq!(core.journal(|j| j.open_submissions("w")).expect("open").len(), 1);
        core.reconcile_open().await.expect("reconcile");

        let journal = core.journal.lock().expect("journal");
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
