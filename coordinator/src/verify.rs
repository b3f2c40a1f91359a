//! Checking what is on chain: a block's SUBMIT_RESULT transactions and `compute_root`, and a worker's
//! result for a block task recomputed from scratch. This is the tool a pool or a validator uses to check a
//! miner, and the one our own tests use to check the farm.

use crate::l1::{NodeClient, NodeError};
use cpc_common::{
    Block, ComputeResult, PublicKey, TxType,
    synthetic::{BlockTask, SyntheticError},
};
use cpc_kernels::{Backend, BackendError};
use serde::Serialize;

/// Errors while verifying (as opposed to a verification that found a mismatch).
#[derive(Debug, thiserror::Error)]
pub enum VerifyError {
    /// Talking to the node failed.
    #[error(transparent)]
    Node(#[from] NodeError),
    /// The block asked for does not exist (yet).
    #[error("block {0} does not exist on the node yet")]
    NoBlock(u64),
    /// No SUBMIT_RESULT of that worker for that task was found.
    #[error("no SUBMIT_RESULT from {worker} with nonce {height} in blocks {from}..={to}")]
    NoSubmission {
        /// The worker.
        worker: String,
        /// The task's block height.
        height: u64,
        /// First block searched.
        from: u64,
        /// Last block searched.
        to: u64,
    },
    /// The task could not be derived.
    #[error(transparent)]
    Task(#[from] SyntheticError),
    /// Recomputing failed.
    #[error(transparent)]
    Backend(#[from] BackendError),
    /// The compute thread died (a bug, reported rather than hidden).
    #[error("the compute thread failed: {0}")]
    ComputeThread(String),
}

/// The check of one transaction in a block.
#[derive(Debug, Clone, Serialize)]
pub struct TxCheck {
    /// Its hash.
    pub tx_hash: String,
    /// Its type.
    pub tx_type: String,
    /// Sender.
    pub from_address: String,
    /// Whether the ECDSA signature verifies under `pub_key` and `pub_key` derives `from_address`.
    pub signature_valid: bool,
    /// For SUBMIT_RESULT: the validated payload, or why it is invalid.
    pub compute_result: Option<Result<ComputeResult, String>>,
    /// For SUBMIT_RESULT with a non-empty payload signature: whether it verifies under the sender's key.
    pub payload_signature_valid: Option<bool>,
}

/// The check of a whole block.
#[derive(Debug, Clone, Serialize)]
pub struct BlockCheck {
    /// Height.
    pub height: u64,
    /// The header hash, computed.
    pub hash: String,
    /// `compute_root` in the header.
    pub header_compute_root: String,
    /// `compute_root` recomputed from the transactions (`None` if a payload is invalid).
    pub recomputed_compute_root: Option<String>,
    /// Every transaction.
    pub txs: Vec<TxCheck>,
}

impl BlockCheck {
    /// Whether every signature verifies and the recomputed `compute_root` equals the header's.
    pub fn is_valid(&self) -> bool {
        self.recomputed_compute_root.as_deref() == Some(self.header_compute_root.as_str())
            && self.txs.iter().all(|t| {
                t.signature_valid
                    && t.compute_result.as_ref().is_none_or(Result::is_ok)
                    && t.payload_signature_valid != Some(false)
            })
    }

    /// The SUBMIT_RESULT transactions only.
    pub fn submissions(&self) -> impl Iterator<Item = &TxCheck> {
        self.txs.iter().filter(|t| t.compute_result.is_some())
    }
}

/// Checks every transaction's signature and recomputes `compute_root`.
pub fn check_block(block: &Block) -> BlockCheck {
    let txs = block
        .txs
        .iter()
        .map(|tx| {
            let key = PublicKey::from_hex(&tx.pub_key).ok();
            let signature_valid = tx.verify_signature()
                && key.is_some_and(|k| k.address().as_str() == tx.from_address);
            let compute_result = (tx.tx_type == TxType::SubmitResult)
                .then(|| ComputeResult::from_payload(&tx.payload).map_err(|e| e.to_string()));
            let payload_signature_valid = match (&compute_result, key) {
                (Some(Ok(r)), Some(k)) if !r.signature.is_empty() => Some(r.verify_signature(&k)),
                _ => None,
            };
            TxCheck {
                tx_hash: tx.hash_hex(),
                tx_type: tx.tx_type.to_string(),
                from_address: tx.from_address.clone(),
                signature_valid,
                compute_result,
                payload_signature_valid,
            }
        })
        .collect();
    BlockCheck {
        height: block.header.height,
        hash: block.header.hash(),
        header_compute_root: block.header.compute_root.clone(),
        recomputed_compute_root: cpc_common::compute_root(&block.txs).ok(),
        txs,
    }
}

/// The verdict on one worker's result for the task of block `height`.
#[derive(Debug, Clone, Serialize)]
pub struct WorkerVerdict {
    /// The task re-derived from the block.
    pub task: BlockTask,
    /// The block that includes the submission.
    pub included_in: u64,
    /// The submission's transaction hash.
    pub tx_hash: String,
    /// The result as submitted.
    pub submitted: ComputeResult,
    /// The result hash recomputed here.
    pub expected_result_hash: String,
    /// Submitted task id equals the derived one.
    pub task_id_matches: bool,
    /// Submitted result hash equals the recomputed one.
    pub result_hash_matches: bool,
    /// The including block's signatures and `compute_root` check out.
    pub block_valid: bool,
    /// The payload signature, where present, verifies.
    pub payload_signature_valid: Option<bool>,
    /// Seconds spent recomputing.
    pub compute_seconds: f64,
}

impl WorkerVerdict {
    /// Whether everything matches.
    pub fn is_valid(&self) -> bool {
        self.task_id_matches
            && self.result_hash_matches
            && self.block_valid
            && self.payload_signature_valid != Some(false)
    }
}

/// Finds `worker`'s SUBMIT_RESULT for the task of block `height` (payload nonce = `height`) in the
/// `search` blocks after it, and recomputes the task with `backend`.
pub async fn verify_worker(
    node: &NodeClient,
    height: u64,
    worker: &str,
    matrix_size: u32,
    search: u64,
    backend: std::sync::Arc<dyn Backend>,
) -> Result<WorkerVerdict, VerifyError> {
    let seed_block = node.block(height).await?.ok_or(VerifyError::NoBlock(height))?;
    let task = BlockTask::derive(&seed_block.header.hash(), worker, matrix_size, height)?;
    let head = node.status().await?.height;
    let last = head.min(height.saturating_add(search));
    let mut found = None;
    'blocks: for h in height + 1..=last {
        let Some(block) = node.block(h).await? else { break };
        for tx in &block.txs {
            if tx.tx_type != TxType::SubmitResult || tx.from_address != worker {
                continue;
            }
            if let Ok(r) = ComputeResult::from_payload(&tx.payload)
                && r.nonce.to_u64() == Some(height)
            {
                found = Some((h, tx.hash_hex(), r, check_block(&block)));
                break 'blocks;
            }
        }
    }
    let Some((included_in, tx_hash, submitted, block_check)) = found else {
        return Err(VerifyError::NoSubmission {
            worker: worker.to_owned(),
            height,
            from: height + 1,
            to: last,
        });
    };
    let payload_signature_valid = block_check
        .txs
        .iter()
        .find(|t| t.tx_hash == tx_hash)
        .and_then(|t| t.payload_signature_valid);
    let challenge = task.challenge.clone();
    let started = std::time::Instant::now();
    let root =
        tokio::task::spawn_blocking(move || cpc_kernels::result_hash(backend.as_ref(), &challenge))
            .await
            .map_err(|e| VerifyError::ComputeThread(e.to_string()))??;
    let expected_result_hash = hex::encode(root);
    Ok(WorkerVerdict {
        task_id_matches: submitted.task_id == task.task_id.to_string(),
        result_hash_matches: submitted.result_hash == expected_result_hash,
        block_valid: block_check.is_valid(),
        payload_signature_valid,
        compute_seconds: started.elapsed().as_secs_f64(),
        task,
        included_in,
        tx_hash,
        submitted,
        expected_result_hash,
    })
}
