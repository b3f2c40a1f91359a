//! Turning a result (or a transfer) into a signed transaction the node will accept, and sending it.
//!
//! The node drops, without a trace, a transaction that fails when the block producer re-applies it, and
//! charges nothing for a rejected one; either way the work is lost. So everything the node would check is
//! checked here first: the ComputeResult as pydantic validates it, the stateless admission rules, the
//! sender's balance against fee + amount, and the pending nonce.

use crate::l1::{NodeClient, NodeError};
use cpc_common::{
    ComputeResult, ComputeResultError, SecretKey, Transaction, TxError, TxType,
    synthetic::BlockTask, tx::MIN_GAS_PRICE,
};
use serde_json::{Map, Value};

/// Errors building or sending a transaction.
#[derive(Debug, thiserror::Error)]
pub enum SubmitError {
    /// The node could not be asked or refused the transaction.
    #[error(transparent)]
    Node(#[from] NodeError),
    /// The sender cannot pay.
    #[error(
        "insufficient balance for {address}: have {have}, need {need} (fee {fee} + amount {amount}); \
         fund it first, e.g. `cpc-coordinator tx send {address} <AMOUNT> --from faucet`"
    )]
    InsufficientBalance {
        /// The sender.
        address: String,
        /// Its confirmed balance.
        have: u128,
        /// Fee plus amount.
        need: u128,
        /// The fee.
        fee: u128,
        /// The amount.
        amount: u128,
    },
    /// The transaction would fail the node's admission rules.
    #[error("transaction would be rejected by the node: {0}")]
    Tx(#[from] TxError),
    /// The payload is not a ComputeResult the node would include.
    #[error("{0}")]
    Result(#[from] ComputeResultError),
    /// A field has the wrong format.
    #[error("invalid {field}: {reason}")]
    Malformed {
        /// The field.
        field: &'static str,
        /// What is wrong.
        reason: String,
    },
    /// Signing failed.
    #[error(transparent)]
    Crypto(#[from] cpc_common::CryptoError),
}

/// What the sender wants to send, before nonce and signature.
#[derive(Debug, Clone)]
pub struct Outgoing {
    /// Transaction type.
    pub tx_type: TxType,
    /// Recipient, for transfers.
    pub to_address: Option<String>,
    /// Amount in 10^-18 CPC.
    pub amount: u128,
    /// Payload object.
    pub payload: Value,
    /// Gas price (≥ the node's minimum).
    pub gas_price: u64,
}

impl Outgoing {
    /// A transfer of `amount` to `to`.
    pub fn transfer(to: String, amount: u128, gas_price: u64) -> Self {
        Self {
            tx_type: TxType::Transfer,
            to_address: Some(to),
            amount,
            payload: Value::Object(Map::new()),
            gas_price,
        }
    }

    /// A `SUBMIT_RESULT` carrying `result`.
    pub fn submit_result(result: &ComputeResult, gas_price: u64) -> Self {
        Self {
            tx_type: TxType::SubmitResult,
            to_address: None,
            amount: 0,
            payload: result.to_payload(),
            gas_price,
        }
    }
}

/// Checks the fields a `submit-result` operator types, as cpc-cli takes them.
pub fn validate_result_fields(task_id: &str, result_hash: &str) -> Result<(), SubmitError> {
    uuid::Uuid::parse_str(task_id).map_err(|e| SubmitError::Malformed {
        field: "task_id",
        reason: format!("`{task_id}` is not a UUID ({e})"),
    })?;
    if result_hash.len() != 64 || !result_hash.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(SubmitError::Malformed {
            field: "result_hash",
            reason: format!("`{result_hash}` is not 64 hex characters"),
        });
    }
    Ok(())
}

/// Builds the worker-signed ComputeResult of `key` for a task.
pub fn signed_result(
    key: &SecretKey,
    task_id: &str,
    result_hash: &str,
    proof: &str,
    nonce: cpc_common::PyInt,
) -> Result<ComputeResult, SubmitError> {
    validate_result_fields(task_id, result_hash)?;
    let mut result = ComputeResult {
        task_id: task_id.to_owned(),
        worker_address: key.address().to_string(),
        result_hash: result_hash.to_owned(),
        proof: proof.to_owned(),
        nonce,
        signature: String::new(),
    };
    result.sign(key)?;
    Ok(result)
}

/// The ComputeResult of a computed block task.
pub fn block_task_result(
    key: &SecretKey,
    task: &BlockTask,
    result_hash: &str,
) -> Result<ComputeResult, SubmitError> {
    signed_result(key, &task.task_id.to_string(), result_hash, "", task.height.into())
}

/// Signs `outgoing` with `key` at `nonce` and checks it as the node would, without any network.
pub fn sign_checked(
    key: &SecretKey,
    outgoing: &Outgoing,
    nonce: u64,
) -> Result<Transaction, SubmitError> {
    if outgoing.gas_price < MIN_GAS_PRICE {
        return Err(TxError::GasPriceTooLow { got: outgoing.gas_price, min: MIN_GAS_PRICE }.into());
    }
    if outgoing.tx_type == TxType::SubmitResult {
        let result = ComputeResult::from_payload(&outgoing.payload)?;
        if result.worker_address != key.address().as_str() {
            return Err(SubmitError::Malformed {
                field: "worker_address",
                reason: format!("{} is not the sender {}", result.worker_address, key.address()),
            });
        }
    }
    let tx = Transaction::new_signed(
        outgoing.tx_type.clone(),
        key,
        outgoing.to_address.clone(),
        outgoing.amount,
        nonce,
        outgoing.gas_price,
        outgoing.payload.clone(),
    )?;
    tx.check_stateless()?;
    Ok(tx)
}

/// Checks the balance, takes the pending nonce, signs and sends. Returns the sent transaction.
pub async fn send(
    node: &NodeClient,
    key: &SecretKey,
    outgoing: &Outgoing,
) -> Result<Transaction, SubmitError> {
    let address = key.address().to_string();
    let fee = outgoing
        .tx_type
        .base_gas()
        .map(|g| u128::from(g) * u128::from(outgoing.gas_price))
        .ok_or_else(|| TxError::UnsupportedType(outgoing.tx_type.to_string()))?;
    let need = fee.saturating_add(outgoing.amount);
    let balance = node.balance(&address).await?;
    let have = balance.balance_u128().ok_or_else(|| NodeError::Decode {
        url: format!("{}/balance/{address}", node.url()),
        reason: format!("balance `{}` is not an integer", balance.balance),
    })?;
    if have < need {
        return Err(SubmitError::InsufficientBalance {
            address,
            have,
            need,
            fee,
            amount: outgoing.amount,
        });
    }
    let nonce = node.pending_nonce(&address).await?;
    let tx = sign_checked(key, outgoing, nonce)?;
    node.send_tx(&tx).await?;
    Ok(tx)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn malformed_fields_are_refused_before_signing() {
        let key = SecretKey::generate();
        assert!(matches!(
            signed_result(&key, "not-a-uuid", &"ab".repeat(32), "", 1u64.into()),
            Err(SubmitError::Malformed { field: "task_id", .. })
        ));
        assert!(matches!(
            signed_result(&key, "d953ea66-be46-8835-a022-1469f385c596", "xyz", "", 1u64.into()),
            Err(SubmitError::Malformed { field: "result_hash", .. })
        ));
    }

    #[test]
    fn a_result_for_another_worker_is_refused() {
        let (me, other) = (SecretKey::generate(), SecretKey::generate());
        let result = signed_result(
            &other,
            "d953ea66-be46-8835-a022-1469f385c596",
            &"ab".repeat(32),
            "",
            1u64.into(),
        )
        .expect("result");
        let out = Outgoing::submit_result(&result, MIN_GAS_PRICE);
        assert!(matches!(
            sign_checked(&me, &out, 0),
            Err(SubmitError::Malformed { field: "worker_address", .. })
        ));
        let tx = sign_checked(&other, &out, 0).expect("own result signs");
        assert_eq!(tx.fee, 80_000_000);
        assert!(tx.verify_signature());
    }
}
