//! The `cpc-coordinator` binary as an operator runs it: keys, local tasks cross-checked against the
//! reference script, the local benchmark, and the errors an operator sees for bad input or a dead node.
//! Commands that need a live L1 are tested against the real devnet in the top-level `tests` crate.

mod bench;

use serde_json::Value;
use std::process::{Command, Output};

fn bin() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_cpc-coordinator"));
    cmd.env_remove("CPC_NODE").env_remove("CPC_KEYSTORE");
    cmd
}

fn run(args: &[&str]) -> Output {
    bin().args(args).output().expect("spawn cpc-coordinator")
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn json(o: &Output) -> Value {
    assert!(o.status.success(), "command failed: {}\n{}", stderr(o), stdout(o));
    serde_json::from_slice(&o.stdout).unwrap_or_else(|e| panic!("not JSON ({e}): {}", stdout(o)))
}

/// The reference script's answer, or `None` (loudly) where python3 with numpy is unavailable outside CI.
fn python_reference(block_hash: &str, worker: &str, n: u32) -> Option<Value> {
    let script = cpc_common::test_vectors::dir()?.join("../spec/synthetic_ref.py");
    let out =
        Command::new("python3").arg(&script).args([block_hash, worker, &n.to_string()]).output();
    match out {
        Ok(o) if o.status.success() => {
            Some(serde_json::from_slice(&o.stdout).expect("reference prints JSON"))
        }
        other => {
            let why = match other {
                Ok(o) => stderr(&o),
                Err(e) => e.to_string(),
            };
            assert!(
                std::env::var("CI").as_deref() != Ok("true"),
                "reference script failed under CI: {why}"
            );
            eprintln!(
                "\n!!! SKIPPING reference cross-check: python3 {} failed: {why} !!!\n",
                script.display()
            );
            None
        }
    }
}

#[test]
fn task_at_1024_matches_the_reference_script() {
    let block_hash = "021908af7753e4f24fed208eaebe64eef3000a5c1b077100efbe7ef2f88ec433";
    let worker = "cpc1vrmhrv849atm3v87dqgckjp70eeku6fzz3uk08";
    let ours = json(&run(&[
        "task",
        "--block-hash",
        block_hash,
        "--worker",
        worker,
        "--matrix-size",
        "1024",
        "--json",
    ]));
    let Some(reference) = python_reference(block_hash, worker, 1024) else { return };
    for field in ["task_id", "seed", "result_hash"] {
        assert_eq!(ours[field], reference[field], "{field}");
    }
    assert_eq!(ours["compute_result"]["result_hash"], reference["result_hash"]);
    assert_eq!(ours["compute_result"]["task_id"], reference["task_id"]);
}

#[test]
fn task_matches_the_reference_script_at_odd_sizes() {
    // A fresh block hash (not from the vectors) and sizes that are not multiples of 16 or 32.
    let block_hash = cpc_common::sha256_hex("cpc-farm odd sizes");
    let worker = "cpc1lk90qae9xvphmt4u09vtdxp5sk2xwm3d899chr";
    for n in [1u32, 7, 33, 130] {
        let ours = json(&run(&[
            "task",
            "--block-hash",
            &block_hash,
            "--worker",
            worker,
            "--matrix-size",
            &n.to_string(),
            "--json",
        ]));
        let Some(reference) = python_reference(&block_hash, worker, n) else { return };
        assert_eq!(ours["result_hash"], reference["result_hash"], "n = {n}");
        assert_eq!(ours["task_id"], reference["task_id"], "n = {n}");
    }
}

#[test]
fn task_reproduces_every_block_task_vector() {
    let Some(Value::Array(vectors)) = cpc_common::test_vectors::load("synthetic_v1.json") else {
        return;
    };
    for v in vectors.iter().filter(|v| v["block_hash"].is_string()) {
        let n = v["matrix_size"].to_string();
        let out = json(&run(&[
            "task",
            "--block-hash",
            v["block_hash"].as_str().expect("hash"),
            "--worker",
            v["worker_address"].as_str().expect("worker"),
            "--matrix-size",
            &n,
            "--height",
            "42",
            "--json",
        ]));
        assert_eq!(out["task_id"], v["task_id"], "n = {n}");
        assert_eq!(out["result_hash"], v["result_hash"], "n = {n}");
        assert_eq!(out["compute_result"]["nonce"], 42);
    }
}

#[test]
fn keys_add_import_list_show_in_a_private_keystore() {
    let dir = tempfile::tempdir().expect("tempdir");
    let ks = dir.path().join("keys");
    let ks = ks.to_str().expect("utf8 path");
    let faucet = "4f3edf982522b4e51b7e8b5f2f9c4d1d7a9e5f8c2b6d4e1a3c5b7d9e0f1a2b3c";
    let imported = json(&run(&["--keystore", ks, "--json", "keys", "import", "faucet", faucet]));
    let expected = cpc_common::SecretKey::from_hex(faucet).expect("key").address().to_string();
    assert_eq!(imported["address"], expected.as_str());
    let added = json(&run(&["--keystore", ks, "--json", "keys", "add", "worker-1"]));
    let list = json(&run(&["--keystore", ks, "--json", "keys", "list"]));
    assert_eq!(list.as_array().map(Vec::len), Some(2));
    assert_eq!(list[1]["address"], added["address"]);
    let shown =
        json(&run(&["--keystore", ks, "--json", "keys", "show", "faucet", "--show-private"]));
    assert_eq!(shown["private_key"], faucet);

    // The file is cpc-cli's format: name, address, public_key, private_key, created_at.
    let file: Value = serde_json::from_str(
        &std::fs::read_to_string(dir.path().join("keys/faucet.json")).expect("file"),
    )
    .expect("json");
    for field in ["name", "address", "public_key", "private_key", "created_at"] {
        assert!(file.get(field).is_some(), "{field} in key file");
    }

    let again = run(&["--keystore", ks, "keys", "add", "worker-1"]);
    assert!(!again.status.success());
    assert!(stderr(&again).contains("already exists"), "{}", stderr(&again));
    let unknown = run(&["--keystore", ks, "keys", "show", "nobody"]);
    assert!(!unknown.status.success());
    assert!(stderr(&unknown).contains("no key named `nobody`"), "{}", stderr(&unknown));
    let bad = run(&["--keystore", ks, "keys", "import", "bad", "xyz"]);
    assert!(!bad.status.success());
    assert!(stderr(&bad).contains("invalid private key"), "{}", stderr(&bad));
}

#[test]
fn a_dead_node_is_named_in_the_error() {
    // Port 9 on loopback: nothing listens there in a test sandbox.
    let out = run(&["--node", "http://127.0.0.1:9", "status"]);
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(err.contains("http://127.0.0.1:9/status") && err.contains("unreachable"), "{err}");
}

#[test]
fn submit_result_validates_locally_before_touching_the_node() {
    let dir = tempfile::tempdir().expect("tempdir");
    let ks = dir.path().to_str().expect("utf8 path");
    json(&run(&["--keystore", ks, "--json", "keys", "add", "w"]));
    let base = ["--keystore", ks, "--node", "http://127.0.0.1:9", "submit-result"];
    let cases: [(&[&str], &str); 4] = [
        (&["--from", "w", "--task-id", "nope", "--result-hash", &"ab".repeat(32)], "task_id"),
        (
            &[
                "--from",
                "w",
                "--task-id",
                "d953ea66-be46-8835-a022-1469f385c596",
                "--result-hash",
                "xyz",
            ],
            "result_hash",
        ),
        (
            &[
                "--from",
                "w",
                "--task-id",
                "d953ea66-be46-8835-a022-1469f385c596",
                "--result-hash",
                &"ab".repeat(32),
                "--nonce",
                "1.5",
            ],
            "--nonce",
        ),
        (
            &[
                "--task-id",
                "d953ea66-be46-8835-a022-1469f385c596",
                "--result-hash",
                &"ab".repeat(32),
                "--from",
                "ghost",
            ],
            "no key named",
        ),
    ];
    for (extra, expect) in cases {
        let out = bin().args(base).args(extra).output().expect("spawn");
        assert!(!out.status.success(), "{extra:?} should fail");
        let err = stderr(&out);
        assert!(err.contains(expect) && !err.contains("unreachable"), "{extra:?}: {err}");
    }
}

#[test]
fn task_rejects_bad_sizes_with_a_clear_message() {
    let block_hash = "021908af7753e4f24fed208eaebe64eef3000a5c1b077100efbe7ef2f88ec433";
    let worker = "cpc1vrmhrv849atm3v87dqgckjp70eeku6fzz3uk08";
    let out =
        run(&["task", "--block-hash", block_hash, "--worker", worker, "--matrix-size", "70000"]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("out of range"), "{}", stderr(&out));
}

#[test]
fn task_rejects_a_bad_block_hash_or_worker_as_a_usage_error() {
    let block_hash = "021908af7753e4f24fed208eaebe64eef3000a5c1b077100efbe7ef2f88ec433";
    let worker = "cpc1vrmhrv849atm3v87dqgckjp70eeku6fzz3uk08";
    let keystore = tempfile::tempdir().expect("tempdir");
    let keystore = keystore.path().to_str().expect("utf-8 path");
    let upper = block_hash.to_uppercase();
    for (hash, who, expect) in [
        ("zz", worker, "invalid --block-hash"),
        (upper.as_str(), worker, "invalid --block-hash"),
        (block_hash, "cpc1notanaddress", "invalid address"),
        (block_hash, "no-such-key", "neither a cpc1... address nor a usable key name"),
    ] {
        let out = run(&["--keystore", keystore, "task", "--block-hash", hash, "--worker", who]);
        assert_eq!(out.status.code(), Some(2), "{hash} {who}: {}", stderr(&out));
        let err = stderr(&out);
        assert!(err.contains(expect), "{hash} {who}: {err}");
    }
}

/// `run` takes each setting from the flags, else the `CPC_*` environment, else `--config`: a bad node URL
/// from each source in turn shows which one won (and invalid settings exit 2, an unreadable file 1).
#[test]
fn run_layers_flags_over_the_environment_over_the_config_file() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = dir.path().join("farm.toml");
    std::fs::write(&config, "nodes = [\"ftp://file:1\"]\nidentities = [\"w1\"]\n").expect("config");
    let config = config.to_str().expect("utf-8 path");
    let run_with = |env: &[(&str, &str)], args: &[&str]| {
        let mut cmd = bin();
        cmd.env_remove("CPC_NODES").env_remove("CPC_CONFIG").envs(env.iter().copied());
        cmd.args(args).output().expect("spawn cpc-coordinator")
    };
    for (env, args, winner) in [
        (&[][..], &["run", "--config", config][..], "ftp://file:1"),
        (&[("CPC_NODES", "ftp://env:1")][..], &["run", "--config", config][..], "ftp://env:1"),
        (&[("CPC_CONFIG", config), ("CPC_NODES", "ftp://env:1")][..], &["run"][..], "ftp://env:1"),
        // The flag `--node` beats the variable `CPC_NODES`, though `nodes` beats `node` within one source.
        (
            &[("CPC_NODES", "ftp://env:1")][..],
            &["--node", "ftp://flag:1", "run", "--config", config][..],
            "ftp://flag:1",
        ),
    ] {
        let out = run_with(env, args);
        let err = stderr(&out);
        assert_eq!(out.status.code(), Some(2), "{env:?} {args:?}: {err}");
        assert!(err.contains(&format!("invalid node URL `{winner}`")), "{env:?} {args:?}: {err}");
    }
    let missing = dir.path().join("missing.toml");
    let out = run_with(&[("CPC_CONFIG", missing.to_str().expect("utf-8 path"))], &["run"]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(stderr(&out).contains("cannot read config file"), "{}", stderr(&out));
}
