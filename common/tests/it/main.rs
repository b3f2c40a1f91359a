//! Conformance of cpc-common with every vector in `../shared/vectors` produced by the reference node code
//! and by `synthetic_ref.py`. The synthetic-v1 products (leaves and result hashes) are checked in
//! `cpc-kernels`, which owns the compute; everything else is checked here. `fuzz_codec` fuzzes the farm's
//! frame codec and wire messages.

mod fuzz_codec;

use cpc_common::{
    Address, Block, BlockHeader, ComputeResult, PublicKey, SecretKey, Transaction,
    crypto::verify_hex,
    hashing::digest_from_hex,
    merkle_root,
    synthetic::{KeyMaterial, philox4x32_10, task_id, task_seed},
    test_vectors,
};
use serde_json::Value;

fn vectors(name: &str) -> Vec<Value> {
    match test_vectors::load(name) {
        Some(Value::Array(items)) => {
            assert!(!items.is_empty(), "{name} is empty");
            items
        }
        Some(other) => panic!("{name}: expected an array, got {other}"),
        None => Vec::new(),
    }
}

fn s<'a>(v: &'a Value, key: &str) -> &'a str {
    v[key].as_str().unwrap_or_else(|| panic!("{key} missing in {v}"))
}

/// Every file in the folder is covered by a test below: a new vector file must get a test.
#[test]
fn every_vector_file_is_covered() {
    let covered = [
        "block_headers.json",
        "compute_results.json",
        "compute_roots.json",
        "keys.json",
        "merkle.json",
        "philox4x32_10.json",
        "synthetic_v1.json",
        "transactions.json",
    ];
    for name in test_vectors::all_files() {
        assert!(covered.contains(&name.as_str()), "vector file {name} has no conformance test");
    }
}

#[test]
fn keys_derive_public_key_account_and_validator_addresses() {
    for v in vectors("keys.json") {
        let key = SecretKey::from_hex(s(&v, "private_key")).expect("key");
        assert_eq!(key.to_hex(), s(&v, "private_key"));
        assert_eq!(key.public_key().to_hex(), s(&v, "public_key"));
        assert_eq!(key.address().as_str(), s(&v, "address"));
        assert_eq!(
            Address::valcons_from_public_key(&key.public_key().to_compressed()),
            s(&v, "validator_address")
        );
        assert_eq!(s(&v, "address").parse::<Address>().expect("parse"), key.address());
    }
}

#[test]
fn transactions_hash_sign_and_verify_like_the_node() {
    let keys = vectors("keys.json");
    for v in vectors("transactions.json") {
        let name = s(&v, "name");
        let tx: Transaction = serde_json::from_value(v["tx"].clone()).expect("tx parses");
        assert_eq!(tx.hash_hex(), s(&v, "hash"), "{name}: hash");
        assert!(tx.verify_signature(), "{name}: signature verifies");
        tx.check_stateless().unwrap_or_else(|e| panic!("{name}: admitted statelessly: {e}"));

        let mut tampered = tx.clone();
        tampered.signature = s(&v, "tampered_signature").to_owned();
        assert_eq!(
            tampered.verify_signature(),
            v["tampered_verifies"].as_bool().expect("bool"),
            "{name}: tampered"
        );
        assert!(tampered.check_stateless().is_err(), "{name}: tampered tx is refused");

        // Re-serialising the parsed tx and parsing again keeps the hash (u128 amounts, big payload ints).
        let round: Transaction =
            serde_json::from_str(&serde_json::to_string(&tx).expect("ser")).expect("de");
        assert_eq!(round.hash_hex(), s(&v, "hash"), "{name}: round trip");

        // Our signer produces a signature the node accepts: re-sign with the vector key.
        if let Some(k) = keys.iter().find(|k| k["public_key"] == v["tx"]["pub_key"]) {
            let key = SecretKey::from_hex(s(k, "private_key")).expect("key");
            let mut ours = tx.clone();
            ours.sign(&key).expect("sign");
            assert!(
                verify_hex(&ours.pub_key, &ours.hash(), &ours.signature),
                "{name}: our signature"
            );
        }
    }
}

#[test]
fn compute_results_validate_and_canonicalise_like_pydantic() {
    for v in vectors("compute_results.json") {
        let name = s(&v, "name");
        let parsed = ComputeResult::from_payload(&v["payload"]);
        if v["valid"].as_bool().expect("valid flag") {
            let r = parsed.unwrap_or_else(|e| panic!("{name}: should be valid: {e}"));
            assert_eq!(r.canonical_json(), s(&v, "canonical_json"), "{name}: canonical json");
            assert_eq!(hex::encode(r.leaf()), s(&v, "leaf"), "{name}: leaf");
            assert_eq!(r.signable(), s(&v, "signable"), "{name}: signable");
        } else {
            let e = parsed.expect_err(name);
            assert!(e.to_string().starts_with(s(&v, "error")), "{name}: error `{e}`");
        }
    }
}

#[test]
fn compute_roots_match_the_node() {
    for (i, v) in vectors("compute_roots.json").iter().enumerate() {
        let txs: Vec<Transaction> = serde_json::from_value(v["txs"].clone()).expect("txs");
        for tx in &txs {
            assert!(tx.verify_signature(), "case {i}: tx {} signature", tx.hash_hex());
        }
        assert_eq!(cpc_common::compute_root(&txs).expect("root"), s(v, "compute_root"), "case {i}");
    }
}

#[test]
fn block_header_hashes_match_the_node() {
    for v in vectors("block_headers.json") {
        let header: BlockHeader = serde_json::from_value(v["header"].clone()).expect("header");
        assert_eq!(header.hash(), s(&v, "hash"));
        // A block as /block/{h} returns it parses too, and serialises back to the same header.
        let block: Block =
            serde_json::from_value(serde_json::json!({"header": v["header"], "txs": []}))
                .expect("block");
        assert_eq!(serde_json::to_value(&block.header).expect("ser"), v["header"]);
    }
}

#[test]
fn merkle_roots_match_the_node() {
    for v in vectors("merkle.json") {
        let leaves: Vec<[u8; 32]> = v["leaves"]
            .as_array()
            .expect("leaves")
            .iter()
            .map(|l| digest_from_hex(l.as_str().expect("hex")).expect("32 bytes"))
            .collect();
        assert_eq!(hex::encode(merkle_root(&leaves)), s(&v, "root"), "{} leaves", leaves.len());
    }
}

#[test]
fn philox_matches_random123_known_answers() {
    let words = |v: &Value| -> Vec<u32> {
        v.as_array()
            .expect("array")
            .iter()
            .map(|x| u32::try_from(x.as_u64().expect("u32")).expect("u32"))
            .collect()
    };
    for v in vectors("philox4x32_10.json") {
        let (c, k, o) = (words(&v["counter"]), words(&v["key"]), words(&v["output"]));
        assert_eq!(philox4x32_10([c[0], c[1], c[2], c[3]], [k[0], k[1]]).to_vec(), o);
    }
}

#[test]
fn synthetic_tasks_derive_seed_id_and_matrix_elements() {
    for v in vectors("synthetic_v1.json") {
        let seed = s(&v, "seed");
        let Some(block_hash) = v["block_hash"].as_str() else { continue };
        let worker = s(&v, "worker_address");
        assert_eq!(task_seed(block_hash, worker), seed);
        assert_eq!(task_id(seed).expect("id").to_string(), s(&v, "task_id"));
        let km = KeyMaterial::from_seed(seed);
        let n = u32::try_from(v["matrix_size"].as_u64().expect("n")).expect("n");
        let challenge = cpc_common::synthetic::Challenge::new(seed, n, 1).expect("challenge");
        for sample in v["samples"].as_array().expect("samples") {
            let at = |k: &str| u32::try_from(sample[k].as_u64().expect(k)).expect(k);
            let (row, col) = (at("row"), at("col"));
            assert_eq!(
                i64::from(km.element(0, row, col)),
                sample["a"].as_i64().expect("a"),
                "A[{row}][{col}]"
            );
            assert_eq!(
                i64::from(km.element(1, row, col)),
                sample["b"].as_i64().expect("b"),
                "B[{row}][{col}]"
            );
            assert_eq!(
                i64::from(challenge.c_element(0, row, col)),
                sample["c"].as_i64().expect("c"),
                "C[{row}][{col}]"
            );
        }
    }
}

#[test]
fn a_signed_submit_result_is_admitted_statelessly() {
    let key =
        SecretKey::from_hex("4f3edf982522b4e51b7e8b5f2f9c4d1d7a9e5f8c2b6d4e1a3c5b7d9e0f1a2b3c")
            .expect("faucet");
    let mut result = ComputeResult {
        task_id: "d953ea66-be46-8835-a022-1469f385c596".into(),
        worker_address: key.address().to_string(),
        result_hash: "96edc64584cfd9e472f4df8add9b2a8415b030df930dfa2f9b4c4597affe8301".into(),
        proof: String::new(),
        nonce: 7u64.into(),
        signature: String::new(),
    };
    result.sign(&key).expect("payload signature");
    let tx = Transaction::new_signed(
        cpc_common::TxType::SubmitResult,
        &key,
        None,
        0,
        0,
        cpc_common::tx::MIN_GAS_PRICE,
        result.to_payload(),
    )
    .expect("tx");
    tx.check_stateless().expect("admitted");
    let back = ComputeResult::from_payload(&tx.payload).expect("payload");
    assert!(back.verify_signature(&PublicKey::from_hex(&tx.pub_key).expect("pk")));
    assert_eq!(tx.fee, 80_000_000);
}
