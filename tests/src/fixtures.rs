//! Signed transactions for tests, at the node's minimum gas price: one definition for the devnet's unit
//! tests and the end-to-end tests.

use cpc_common::{SecretKey, Transaction, TxType, tx::MIN_GAS_PRICE};
use serde_json::{Value, json};

/// A signed TRANSFER of `amount` base units from `from` to `to`.
///
/// # Panics
/// Never for these two supported types; a test fixture, so a signing failure would panic.
pub fn transfer(from: &SecretKey, to: &str, amount: u128, nonce: u64) -> Transaction {
    Transaction::new_signed(
        TxType::Transfer,
        from,
        Some(to.to_owned()),
        amount,
        nonce,
        MIN_GAS_PRICE,
        json!({}),
    )
    .expect("a TRANSFER signs")
}

/// A signed SUBMIT_RESULT from `worker` carrying `payload` (a ComputeResult, or anything to test refusals).
///
/// # Panics
/// As [`transfer`].
pub fn submit_result(worker: &SecretKey, nonce: u64, payload: Value) -> Transaction {
    Transaction::new_signed(TxType::SubmitResult, worker, None, 0, nonce, MIN_GAS_PRICE, payload)
        .expect("a SUBMIT_RESULT signs")
}
