//! Fuzzing the devnet's `POST /tx/send` bodies ([`super::wire::parse_transaction`]) and the admission behind
//! them with proptest: no body may panic the devnet, every refusal has the node's shape (400 for non-JSON,
//! 422 with pydantic entries), and whatever the devnet admits to its mempool, `cpc_common`'s stateless checks
//! (the farm's pre-flight before it spends a fee) admit too, so the two never disagree about a transaction.
//!
//! Two targets: arbitrary bodies (bytes, JSON, token soup), and valid signed transactions mutated field by
//! field (lax integer forms, wrong types, removals, unknown keys), then sent as they are or signed again.
//! Case counts come from [`cpc_common::fuzzing::cases`] (`CPC_FUZZ_CASES` for a long run).

use super::{
    chain::{Chain, ChainConfig, faucet_key},
    wire::{BodyError, parse_transaction},
};
use crate::fixtures::{submit_result, transfer};
use cpc_common::{SecretKey, Transaction, fuzzing};
use proptest::{collection::vec, prelude::*};
use serde_json::{Map, Number, Value, json};

/// The fields of the node's `Transaction` model.
const FIELDS: [&str; 11] = [
    "tx_type",
    "from_address",
    "to_address",
    "amount",
    "fee",
    "nonce",
    "signature",
    "pub_key",
    "payload",
    "gas_price",
    "gas_limit",
];

/// Parses `body` as the devnet does, checks the refusal shapes, and sends what parses to a fresh chain
/// (with the faucet funded) and into a block. Returns whether the devnet admitted it.
fn send(body: &[u8]) -> Result<bool, TestCaseError> {
    let is_json = serde_json::from_slice::<Value>(body).is_ok();
    let blank = body.iter().all(u8::is_ascii_whitespace);
    let tx = match parse_transaction(body) {
        Err(BodyError::Unparseable) => {
            prop_assert!(!is_json && !blank, "JSON or a blank body answered 400");
            return Ok(false);
        }
        Err(BodyError::Invalid(errors)) => {
            prop_assert!(is_json || blank, "a non-JSON body answered 422");
            prop_assert!(!errors.is_empty(), "a 422 with no error entries");
            for e in &errors {
                prop_assert!(e["type"].is_string() && e["msg"].is_string(), "{}", e);
                prop_assert_eq!(&e["loc"][0], "body");
            }
            return Ok(false);
        }
        Ok(tx) => tx,
    };
    prop_assert!(is_json, "a non-JSON body parsed");
    // The transaction as the devnet hands it on serialises and parses back to itself (same hash).
    let again = parse_transaction(&serde_json::to_vec(&tx).unwrap_or_default());
    prop_assert_eq!(again.as_ref().map(Transaction::hash_hex), Ok(tx.hash_hex()));

    let (mut chain, _genesis) = Chain::genesis(ChainConfig::default(), 1_000);
    let admitted = chain.submit(tx.clone(), 1_000).is_ok();
    if admitted {
        prop_assert_eq!(
            tx.check_stateless(),
            Ok(()),
            "the devnet admitted a transaction cpc-common refuses: {:?}",
            tx
        );
    }
    let block = chain.produce_block(1_001);
    let _ = cpc_common::compute_root(&block.block.txs);
    Ok(admitted)
}

/// Any JSON value, a few levels deep, with the model's keys half of the time.
fn any_json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        any::<f64>().prop_map(|f| Number::from_f64(f).map_or(Value::Null, Value::Number)),
        any::<String>().prop_map(Value::String),
        lax_integer(),
    ];
    leaf.prop_recursive(3, 32, 5, |inner| {
        prop_oneof![
            vec(inner.clone(), 0..5).prop_map(Value::Array),
            vec((key(), inner), 0..5)
                .prop_map(|entries| Value::Object(entries.into_iter().collect())),
        ]
    })
}

fn key() -> impl Strategy<Value = String> {
    prop_oneof![prop::sample::select(FIELDS.to_vec()).prop_map(str::to_owned), any::<String>()]
}

/// Integers in the forms pydantic's lax mode takes, and near misses: decimal strings (with spaces and
/// signs), integral floats, bools, and numbers past u64 and u128.
fn lax_integer() -> impl Strategy<Value = Value> {
    prop_oneof![
        any::<u64>().prop_map(|n| json!(n.to_string())),
        any::<u64>().prop_map(|n| json!(format!(" +{n} "))),
        (0u32..1_000_000).prop_map(|n| json!(f64::from(n))),
        Just(json!(1.5)),
        Just(json!(-0.0)),
        Just(json!("-0")),
        Just(json!("1e3")),
        Just(json!("")),
        prop::sample::select(vec![
            "18446744073709551615",
            "18446744073709551616",
            "340282366920938463463374607431768211455",
            "340282366920938463463374607431768211456",
            "-1",
            "1e400",
        ])
        .prop_map(|text| serde_json::from_str(text).unwrap_or(Value::Null)),
    ]
}

/// A valid signed transaction from the faucet, as a JSON object.
fn valid_tx() -> impl Strategy<Value = Value> {
    let payload =
        (any::<String>(), any::<String>(), any::<i64>()).prop_map(|(task, hash, nonce)| {
            json!({"task_id": task, "worker_address": faucet_key().address().to_string(),
            "result_hash": hash, "proof": "", "nonce": nonce, "signature": ""})
        });
    prop_oneof![
        (1u128..1_000_000_000).prop_map(|amount| {
            let to = SecretKey::from_hex(&"11".repeat(32)).map(|k| k.address().to_string());
            transfer(&faucet_key(), &to.unwrap_or_default(), amount, 0)
        }),
        payload.prop_map(|payload| submit_result(&faucet_key(), 0, payload)),
    ]
    .prop_map(|tx| serde_json::to_value(tx).unwrap_or(Value::Null))
}

/// One edit of a transaction object.
#[derive(Debug, Clone)]
enum Edit {
    Remove(usize),
    Set(usize, Value),
    Unknown(String, Value),
}

fn edit() -> impl Strategy<Value = Edit> {
    prop_oneof![
        (0..FIELDS.len()).prop_map(Edit::Remove),
        (0..FIELDS.len(), prop_oneof![lax_integer(), any_json()])
            .prop_map(|(f, v)| Edit::Set(f, v)),
        (any::<String>(), any_json()).prop_map(|(k, v)| Edit::Unknown(k, v)),
    ]
}

fn apply(tx: &mut Map<String, Value>, edit: &Edit) {
    match edit {
        Edit::Remove(f) => {
            tx.remove(FIELDS[*f]);
        }
        Edit::Set(f, v) => {
            tx.insert(FIELDS[*f].to_owned(), v.clone());
        }
        Edit::Unknown(k, v) => {
            if !FIELDS.contains(&k.as_str()) {
                tx.insert(k.clone(), v.clone());
            }
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(fuzzing::cases(800)))]

    /// Any body: a transaction or the node's refusal, never a panic.
    #[test]
    fn arbitrary_bodies_never_panic(
        body in prop_oneof![
            vec(any::<u8>(), 0..300),
            any_json().prop_map(|v| serde_json::to_vec(&v).unwrap_or_default()),
            vec(
                prop::sample::select(vec![
                    "{", "}", "[", "]", ":", ",", "\"tx_type\"", "\"TRANSFER\"", "\"amount\"", "\"nonce\"",
                    "\"from_address\"", "\"payload\"", "1", "-1", "1.0", "1e999", "true", "null", " ", "\"",
                ]),
                0..40,
            )
            .prop_map(|tokens| tokens.concat().into_bytes()),
        ],
    ) {
        let _admitted = send(&body)?;
    }

    /// A valid transaction is admitted; edited field by field (then signed again, or not), it is admitted
    /// only where cpc-common's stateless checks pass too.
    #[test]
    fn what_the_devnet_admits_cpc_common_admits(
        tx in valid_tx(),
        edits in vec(edit(), 1..4),
        sign_again in any::<bool>(),
    ) {
        prop_assert!(send(&serde_json::to_vec(&tx).unwrap_or_default())?, "a valid transaction is refused");
        let Value::Object(mut obj) = tx else { return Err(TestCaseError::fail("not an object")) };
        for e in &edits {
            apply(&mut obj, e);
        }
        let mut body = serde_json::to_vec(&Value::Object(obj)).unwrap_or_default();
        if sign_again && let Ok(mut parsed) = parse_transaction(&body) {
            parsed.sign(&faucet_key()).map_err(|e| TestCaseError::fail(e.to_string()))?;
            body = serde_json::to_vec(&parsed).unwrap_or_default();
        }
        let _admitted = send(&body)?;
    }
}
