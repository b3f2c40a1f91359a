//! Fuzzing the L1 client's answer decoding ([`super::client::decode_answer`], the `cpc_common::rpc` shapes and
//! `Block`) with proptest: a node, or anything squatting on its port, can answer any status and body, so
//! malformed `/status`, `/block`, `/balance`, `/nonce`, receipt and send answers must give a `NodeError`,
//! never a panic, and what the coordinator then does with a decoded block (hashes, `compute_root`, the
//! `SUBMIT_RESULT` payloads) must not panic either.
//!
//! Two targets: arbitrary bytes under any status, and valid answers mutated at the JSON level (a field
//! removed, replaced by any value, an unknown one added) or at the byte level (cut, overwritten, spliced).
//! Case counts come from [`cpc_common::fuzzing::cases`] (`CPC_FUZZ_CASES` for a long run).

use super::{NodeError, client::decode_answer};
use cpc_common::{
    Block, BlockHeader, ComputeResult, Transaction, TxType, compute_root, fuzzing,
    rpc::{
        BalanceResponse, NonceResponse, ReceiptResponse, ReceiptStatus, SendStatus, SendTxResponse,
        StatusResponse,
    },
};
use proptest::{collection::vec, prelude::*};
use reqwest::StatusCode;
use serde::{Serialize, de::DeserializeOwned};
use serde_json::{Number, Value, json};

const URL: &str = "http://node.invalid/status";

/// The answers the client decodes.
#[derive(Debug, Clone, Copy)]
enum Endpoint {
    Status,
    Block,
    Balance,
    Nonce,
    Receipt,
    Send,
}

fn any_endpoint() -> impl Strategy<Value = Endpoint> {
    prop_oneof![
        Just(Endpoint::Status),
        Just(Endpoint::Block),
        Just(Endpoint::Balance),
        Just(Endpoint::Nonce),
        Just(Endpoint::Receipt),
        Just(Endpoint::Send),
    ]
}

fn any_status() -> impl Strategy<Value = StatusCode> {
    prop_oneof![
        4 => Just(StatusCode::OK),
        1 => Just(StatusCode::NOT_FOUND),
        1 => (100u16..1000).prop_map(|code| StatusCode::from_u16(code).unwrap_or(StatusCode::IM_A_TEAPOT)),
    ]
}

/// Decodes `body` as `endpoint`'s answer and checks the error classes: 404 is `NotFound`, another non-2xx
/// status is `Status` with at most 500 characters of body, a 2xx body is the answer or `Decode`. What the
/// coordinator does with a decoded answer runs too.
fn check(endpoint: Endpoint, status: StatusCode, body: &[u8]) -> Result<bool, TestCaseError> {
    let decoded = match endpoint {
        Endpoint::Status => decode::<StatusResponse>(status, body).map(|_| ()),
        Endpoint::Block => decode::<Block>(status, body).map(|b| use_block(&b)),
        Endpoint::Balance => decode::<BalanceResponse>(status, body).map(|b| {
            let _balance: Option<u128> = b.balance_u128();
        }),
        Endpoint::Nonce => decode::<NonceResponse>(status, body).map(|_| ()),
        Endpoint::Receipt => decode::<ReceiptResponse>(status, body).map(|_| ()),
        Endpoint::Send => decode::<SendTxResponse>(status, body).map(|_| ()),
    };
    let message = decoded.as_ref().err().map(ToString::to_string);
    match (&decoded, status) {
        (Err(NodeError::NotFound { .. }), StatusCode::NOT_FOUND) => {}
        (Err(NodeError::Status { status: code, body: shown, .. }), s) if !s.is_success() => {
            prop_assert_eq!(*code, s.as_u16());
            prop_assert!(shown.chars().count() <= 500);
        }
        (Err(NodeError::Decode { reason, .. }), s) if s.is_success() => {
            prop_assert!(!reason.is_empty());
        }
        (Ok(()), s) if s.is_success() => {}
        (other, s) => prop_assert!(false, "HTTP {} answered {:?} ({:?})", s, other, message),
    }
    Ok(decoded.is_ok())
}

fn decode<T: DeserializeOwned>(status: StatusCode, body: &[u8]) -> Result<T, NodeError> {
    decode_answer(URL.to_owned(), status, body)
}

/// What the watcher, the submitter and `verify` do with a block from the node.
fn use_block(block: &Block) {
    let _ = block.header.hash();
    for tx in &block.txs {
        let _ = tx.hash_hex();
        let _ = tx.check_stateless();
        if tx.tx_type == TxType::SubmitResult {
            let _ = ComputeResult::from_payload(&tx.payload).map(|r| r.leaf());
        }
    }
    let _ = compute_root(&block.txs);
}

/// Any JSON value, a few levels deep, with keys of the node's answers half of the time.
fn any_json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        any::<f64>().prop_map(|f| Number::from_f64(f).map_or(Value::Null, Value::Number)),
        "-?[0-9]{1,45}".prop_map(|digits| serde_json::from_str(&digits).unwrap_or(Value::Null)),
        any::<String>().prop_map(Value::String),
    ];
    leaf.prop_recursive(4, 48, 6, |inner| {
        prop_oneof![
            vec(inner.clone(), 0..6).prop_map(Value::Array),
            vec((key(), inner), 0..6)
                .prop_map(|entries| Value::Object(entries.into_iter().collect())),
        ]
    })
}

fn key() -> impl Strategy<Value = String> {
    prop_oneof![
        prop::sample::select(vec![
            "height",
            "last_hash",
            "header",
            "txs",
            "tx_type",
            "payload",
            "amount",
            "fee",
            "nonce",
            "balance",
            "address",
            "status",
            "tx_hash",
            "task_id",
            "result_hash",
            "signature",
        ])
        .prop_map(str::to_owned),
        any::<String>(),
    ]
}

fn transaction() -> impl Strategy<Value = Transaction> {
    let tx_type = prop_oneof![
        Just(TxType::Transfer),
        Just(TxType::SubmitResult),
        Just(TxType::Stake),
        any::<String>().prop_map(|s| s.parse().unwrap_or(TxType::Other(s))),
    ];
    let payload =
        prop_oneof![
        any_json(),
        (any::<String>(), any::<String>(), any::<i64>()).prop_map(|(task_id, result_hash, nonce)| {
            json!({"task_id": task_id, "worker_address": "cpc1x", "result_hash": result_hash,
                "proof": "", "nonce": nonce, "signature": ""})
        }),
    ];
    (
        (tx_type, any::<String>(), prop::option::of(any::<String>()), any::<u128>(), any::<u128>()),
        (any::<u64>(), any::<String>(), any::<String>(), payload, any::<u64>(), any::<u64>()),
    )
        .prop_map(
            |(
                (tx_type, from_address, to_address, amount, fee),
                (nonce, signature, pub_key, payload, gas_price, gas_limit),
            )| Transaction {
                tx_type,
                from_address,
                to_address,
                amount,
                fee,
                nonce,
                signature,
                pub_key,
                payload,
                gas_price,
                gas_limit,
            },
        )
}

fn block() -> impl Strategy<Value = Block> {
    (
        (any::<u64>(), any::<String>(), any::<i64>(), any::<String>(), any::<u64>()),
        (any::<u64>(), any::<u64>(), prop::option::of(any::<String>())),
        vec(transaction(), 0..4),
    )
        .prop_map(
            |((height, prev_hash, timestamp, chain_id, round), (gas_used, gas_limit, zk), txs)| {
                Block {
                    header: BlockHeader {
                        height,
                        prev_hash,
                        timestamp,
                        chain_id,
                        proposer_address: "cpcvalcons1x".into(),
                        round,
                        tx_root: "0".repeat(64),
                        state_root: "1".repeat(64),
                        compute_root: String::new(),
                        gas_used,
                        gas_limit,
                        zk_state_proof_hash: zk,
                        zk_compute_proof_hash: None,
                    },
                    txs,
                    pq_signature: None,
                    pq_sig_scheme_id: None,
                }
            },
        )
}

/// A valid answer of one endpoint, as the node would send it.
fn valid_answer() -> impl Strategy<Value = (Endpoint, Value)> {
    fn as_json<T: Serialize>(endpoint: Endpoint, answer: &T) -> (Endpoint, Value) {
        (endpoint, serde_json::to_value(answer).unwrap_or(Value::Null))
    }
    prop_oneof![
        (any::<u64>(), any::<String>(), any::<String>(), any::<u64>(), any::<u64>()).prop_map(
            |(height, last_hash, network, mempool_size, epoch)| as_json(
                Endpoint::Status,
                &StatusResponse { height, last_hash, network, mempool_size, epoch }
            )
        ),
        block().prop_map(|b| as_json(Endpoint::Block, &b)),
        (any::<String>(), any::<u128>(), any::<u64>()).prop_map(|(address, balance, nonce)| {
            as_json(
                Endpoint::Balance,
                &BalanceResponse { address, balance: balance.to_string(), nonce },
            )
        }),
        (any::<String>(), any::<u64>(), any::<bool>()).prop_map(|(address, nonce, pending)| {
            as_json(Endpoint::Nonce, &NonceResponse { address, nonce, pending })
        }),
        (any::<String>(), prop::option::of(any::<u64>())).prop_map(|(tx_hash, block_height)| {
            as_json(
                Endpoint::Receipt,
                &ReceiptResponse {
                    tx_hash,
                    status: ReceiptStatus::Confirmed,
                    block_height,
                    timestamp: None,
                    error: None,
                },
            )
        }),
        (any::<String>(), prop::option::of(any::<String>())).prop_map(|(tx_hash, error)| as_json(
            Endpoint::Send,
            &SendTxResponse { tx_hash, status: SendStatus::Rejected, error }
        )),
    ]
}

/// One edit of a valid answer: at the JSON level (a field anywhere in the tree), or of its bytes.
#[derive(Debug, Clone)]
enum Mutation {
    Remove { path: Vec<usize> },
    Replace { path: Vec<usize>, value: Value },
    AddUnknown { value: Value },
    Truncate { at: usize },
    Overwrite { at: usize, byte: u8 },
    Splice { at: usize, text: String },
}

fn mutation() -> impl Strategy<Value = Mutation> {
    let path = vec(any::<usize>(), 1..4);
    prop_oneof![
        path.clone().prop_map(|path| Mutation::Remove { path }),
        (path, any_json()).prop_map(|(path, value)| Mutation::Replace { path, value }),
        any_json().prop_map(|value| Mutation::AddUnknown { value }),
        any::<usize>().prop_map(|at| Mutation::Truncate { at }),
        (any::<usize>(), any::<u8>()).prop_map(|(at, byte)| Mutation::Overwrite { at, byte }),
        (
            any::<usize>(),
            prop::sample::select(vec![
                "1e999",
                "-1",
                "18446744073709551616",
                "340282366920938463463374607431768211456",
                "null",
                "\"\"",
                "[]",
                "{}",
                "\"\\ud800\"",
                ",",
                "}",
            ])
        )
            .prop_map(|(at, text)| Mutation::Splice { at, text: text.to_owned() }),
    ]
}

/// Removes (`new` is `None`) or replaces the value at `path` in `value`; each step picks a child modulo the
/// count, and the walk stops at a leaf.
fn edit_at(value: &mut Value, path: &[usize], new: Option<Value>) {
    let Some((&step, rest)) = path.split_first() else { return };
    match value {
        Value::Object(map) if !map.is_empty() => {
            let Some(key) = map.keys().nth(step % map.len()).cloned() else { return };
            let descend =
                !rest.is_empty() && map.get(&key).is_some_and(|v| v.is_object() || v.is_array());
            if descend {
                if let Some(child) = map.get_mut(&key) {
                    edit_at(child, rest, new);
                }
            } else {
                match new {
                    Some(v) => {
                        map.insert(key, v);
                    }
                    None => {
                        map.remove(&key);
                    }
                }
            }
        }
        Value::Array(items) if !items.is_empty() => {
            let i = step % items.len();
            let descend = !rest.is_empty() && (items[i].is_object() || items[i].is_array());
            if descend {
                edit_at(&mut items[i], rest, new);
            } else {
                match new {
                    Some(v) => items[i] = v,
                    None => {
                        items.remove(i);
                    }
                }
            }
        }
        _ => {}
    }
}

/// Applies a JSON-level edit to `value` (byte-level edits are applied by [`edit_bytes`]).
fn edit_json(value: &mut Value, m: &Mutation) {
    match m {
        Mutation::Remove { path } => edit_at(value, path, None),
        Mutation::Replace { path, value: new } => edit_at(value, path, Some(new.clone())),
        Mutation::AddUnknown { value: new } => {
            if let Value::Object(map) = value {
                map.insert("unknown_field_from_a_newer_node".into(), new.clone());
            }
        }
        Mutation::Truncate { .. } | Mutation::Overwrite { .. } | Mutation::Splice { .. } => {}
    }
}

/// Applies a byte-level edit to `bytes` (JSON-level edits are applied by [`edit_json`]).
fn edit_bytes(bytes: &mut Vec<u8>, m: &Mutation) {
    let at = |i: usize, len: usize| if len == 0 { 0 } else { i % len };
    match m {
        Mutation::Truncate { at: i } => bytes.truncate(at(*i, bytes.len())),
        Mutation::Overwrite { at: i, byte } => {
            if !bytes.is_empty() {
                let i = at(*i, bytes.len());
                bytes[i] = *byte;
            }
        }
        Mutation::Splice { at: i, text } => {
            let i = at(*i, bytes.len() + 1);
            bytes.splice(i..i, text.bytes());
        }
        Mutation::Remove { .. } | Mutation::Replace { .. } | Mutation::AddUnknown { .. } => {}
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(fuzzing::cases(1500)))]

    /// Any bytes under any status: an answer or the right class of `NodeError`, never a panic.
    #[test]
    fn arbitrary_answers_give_errors_not_panics(
        endpoint in any_endpoint(),
        status in any_status(),
        body in prop_oneof![
            vec(any::<u8>(), 0..400),
            any_json().prop_map(|v| serde_json::to_vec(&v).unwrap_or_default()),
        ],
    ) {
        check(endpoint, status, &body)?;
    }

    /// A valid answer decodes; edited, it decodes or is a `Decode` error, and a decoded block is safe to use.
    #[test]
    fn mutated_answers_give_errors_not_panics(
        (endpoint, answer) in valid_answer(),
        mutations in vec(mutation(), 1..4),
    ) {
        let body = serde_json::to_vec(&answer).unwrap_or_default();
        prop_assert!(check(endpoint, StatusCode::OK, &body)?, "a valid answer is refused: {}", answer);
        let mut edited = answer.clone();
        for m in &mutations {
            edit_json(&mut edited, m);
        }
        let mut bytes = serde_json::to_vec(&edited).unwrap_or_default();
        for m in &mutations {
            edit_bytes(&mut bytes, m);
        }
        // Decoded or refused: both are answers; `check` holds the assertions.
        let _decoded = check(endpoint, StatusCode::OK, &bytes)?;
    }
}

/// A node answering 200 with an HTML error page, or nothing, is a `Decode` error naming the URL.
#[test]
fn non_json_success_is_a_decode_error() {
    for body in [&b""[..], b"<html>502 Bad Gateway</html>", b"{\"height\": 1", b"\xff\xfe"] {
        let e = decode::<StatusResponse>(StatusCode::OK, body).expect_err("not JSON");
        assert!(matches!(e, NodeError::Decode { .. }), "{e:?}");
        assert!(e.to_string().contains(URL), "{e}");
    }
    let big = vec![b'x'; 100_000];
    let e = decode::<StatusResponse>(StatusCode::BAD_GATEWAY, &big).expect_err("502");
    assert!(
        matches!(e, NodeError::Status { status: 502, ref body, .. } if body.len() == 500),
        "{e:?}"
    );
}
