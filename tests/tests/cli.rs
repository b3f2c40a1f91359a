//! The operator's commands against a real devnet process: funding from the faucet, `task`,
//! `submit-result`, `query block` and `verify`, and the errors an operator must get (insufficient
//! balance before sending, the node's own rejection reason). Everything on loopback, real signatures.

use cpc_common::SecretKey;
use cpc_tests::{
    devnet::chain::FAUCET_PRIVATE_KEY,
    harness::{DevnetOptions, DevnetProcess, coordinator_command},
};
use serde_json::Value;
use std::{path::Path, process::Output, time::Duration};

struct Operator<'a> {
    node: String,
    keystore: &'a Path,
}

impl Operator<'_> {
    fn run(&self, args: &[&str]) -> Output {
        coordinator_command()
            .args(["--node", &self.node, "--keystore"])
            .arg(self.keystore)
            .args(args)
            .output()
            .expect("spawn cpc-coordinator")
    }

    fn json(&self, args: &[&str]) -> Value {
        let mut all = vec!["--json"];
        all.extend_from_slice(args);
        let out = self.run(&all);
        assert!(
            out.status.success(),
            "{args:?} failed ({}):\n{}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr),
            String::from_utf8_lossy(&out.stdout)
        );
        serde_json::from_slice(&out.stdout).expect("JSON output")
    }

    fn fails(&self, args: &[&str]) -> (i32, String) {
        let out = self.run(args);
        assert!(
            !out.status.success(),
            "{args:?} should fail: {}",
            String::from_utf8_lossy(&out.stdout)
        );
        (out.status.code().unwrap_or(-1), String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

fn start_devnet() -> DevnetProcess {
    let options =
        DevnetOptions::located().expect("cpc-devnet binary").block_time(Duration::from_millis(200));
    DevnetProcess::start(options).expect("devnet starts")
}

#[test]
fn a_funded_worker_submits_a_result_that_lands_and_verifies() {
    let devnet = start_devnet();
    let keys = tempfile::tempdir().expect("tempdir");
    let op = Operator { node: devnet.url(), keystore: keys.path() };

    op.json(&["keys", "import", "faucet", FAUCET_PRIVATE_KEY]);
    let worker =
        op.json(&["keys", "add", "worker"])["address"].as_str().expect("address").to_owned();
    let funded = op.json(&["tx", "send", "worker", "10", "--from", "faucet", "--wait", "20"]);
    assert!(funded["included_in"].is_u64(), "{funded}");
    let balance = op.json(&["balance", "worker"]);
    assert_eq!(balance["balance"], "10000000000000000000");

    // The task of the current head, computed locally and signed by the worker.
    let status = op.json(&["status"]);
    let (height, hash) =
        (status["height"].as_u64().expect("height"), status["last_hash"].as_str().expect("hash"));
    let task = op.json(&[
        "task",
        "--block-hash",
        hash,
        "--worker",
        &worker,
        "--matrix-size",
        "64",
        "--height",
        &height.to_string(),
        "--from",
        "worker",
    ]);
    let result = &task["compute_result"];
    assert_ne!(result["signature"], "", "payload signature filled");

    let sent = op.json(&[
        "submit-result",
        "--task-id",
        result["task_id"].as_str().expect("id"),
        "--result-hash",
        result["result_hash"].as_str().expect("hash"),
        "--nonce",
        &height.to_string(),
        "--from",
        "worker",
        "--wait",
        "20",
    ]);
    assert_eq!(sent["nonce"], 0, "the worker's first transaction");
    let included = sent["included_in"].as_u64().expect("included");

    let block = op.json(&["query", "block", &included.to_string()]);
    assert_eq!(block["valid"], true, "{block}");
    let root = block["block"]["header"]["compute_root"].as_str().expect("root");
    assert_eq!(root.len(), 64, "a block with a SUBMIT_RESULT has a compute_root");
    assert_eq!(block["check"]["recomputed_compute_root"], root);
    let submissions: Vec<&Value> = block["check"]["txs"]
        .as_array()
        .expect("txs")
        .iter()
        .filter(|t| t["tx_type"] == "SUBMIT_RESULT")
        .collect();
    assert_eq!(submissions.len(), 1);
    assert_eq!(submissions[0]["payload_signature_valid"], true);

    let verdict = op.json(&[
        "verify",
        "--height",
        &height.to_string(),
        "--worker",
        &worker,
        "--matrix-size",
        "64",
    ]);
    assert_eq!(verdict["valid"], true, "{verdict}");
    assert_eq!(verdict["verdict"]["included_in"], included);

    // The human form says so too.
    let text = op.run(&["query", "block", &included.to_string()]);
    assert!(text.status.success());
    assert!(String::from_utf8_lossy(&text.stdout).contains("verified"));

    // A second submission takes the next nonce; a wrong result lands (the L1 does not recompute) but
    // `verify` catches it with exit code 3.
    let status = op.json(&["status"]);
    let (h2, hash2) =
        (status["height"].as_u64().expect("height"), status["last_hash"].as_str().expect("hash"));
    let task2 = op.json(&[
        "task",
        "--block-hash",
        hash2,
        "--worker",
        &worker,
        "--matrix-size",
        "64",
        "--height",
        &h2.to_string(),
    ]);
    let wrong = op.json(&[
        "submit-result",
        "--task-id",
        task2["task_id"].as_str().expect("id"),
        "--result-hash",
        &"ee".repeat(32),
        "--nonce",
        &h2.to_string(),
        "--from",
        "worker",
        "--wait",
        "20",
    ]);
    assert_eq!(wrong["nonce"], 1);
    let (code, _) = op.fails(&[
        "verify",
        "--height",
        &h2.to_string(),
        "--worker",
        &worker,
        "--matrix-size",
        "64",
    ]);
    assert_eq!(code, 3, "a wrong result is a mismatch, not an error");
}

#[test]
fn operator_errors_are_actionable_and_nothing_bad_is_sent() {
    let devnet = start_devnet();
    let keys = tempfile::tempdir().expect("tempdir");
    let op = Operator { node: devnet.url(), keystore: keys.path() };
    op.json(&["keys", "import", "faucet", FAUCET_PRIVATE_KEY]);
    let poor = op.json(&["keys", "add", "poor"])["address"].as_str().expect("address").to_owned();

    // Insufficient balance is caught before sending, with have/need.
    let (_, err) = op.fails(&[
        "submit-result",
        "--task-id",
        "d953ea66-be46-8835-a022-1469f385c596",
        "--result-hash",
        &"ab".repeat(32),
        "--from",
        "poor",
    ]);
    assert!(err.contains("insufficient balance") && err.contains("have 0, need 80000000"), "{err}");
    assert!(err.contains(&poor), "{err}");

    // A transfer of 0 passes our checks but the node refuses it: its reason reaches the operator.
    let (_, err) = op.fails(&["tx", "send", "poor", "0", "--from", "faucet"]);
    assert!(err.contains("rejected") && err.contains("transfer_amount_zero"), "{err}");

    // Unknown names and malformed addresses.
    let (_, err) = op.fails(&["balance", "nobody"]);
    assert!(err.contains("no key named `nobody`"), "{err}");
    let (_, err) = op.fails(&["balance", "cpc1notanaddress"]);
    assert!(err.contains("not a valid bech32 address"), "{err}");
    let (_, err) = op.fails(&["query", "block", "999999"]);
    assert!(err.contains("does not exist"), "{err}");

    // Nothing reached the mempool, and the faucet's nonce did not move.
    let status = op.json(&["status"]);
    assert_eq!(status["mempool_size"], 0);
    let faucet = SecretKey::from_hex(FAUCET_PRIVATE_KEY).expect("faucet").address().to_string();
    assert_eq!(op.json(&["balance", &faucet])["nonce"], 0);
}
