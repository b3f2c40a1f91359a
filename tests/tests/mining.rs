//! The miner end to end: `cpc-coordinator run` as a real process against a real `cpc-devnet`, with fast
//! blocks. Over many consecutive blocks each identity has exactly one SUBMIT_RESULT per block it
//! computed, each included, each result equal to the reference computation, each block's compute_root
//! verified; SIGKILL and restart lose and duplicate nothing; a node outage only delays; an unfunded
//! identity is reported and does not hold the other back.

use cpc_common::{Block, ComputeResult, TxType, synthetic::BlockTask};
use cpc_coordinator::{farm::Identity, mining::journal::Journal};
use cpc_tests::{
    devnet::chain::FAUCET_PRIVATE_KEY,
    harness::{DevnetOptions, DevnetProcess, coordinator_command, locate_workspace_binary},
};
use serde_json::Value;
use std::{
    collections::{BTreeMap, HashMap},
    path::PathBuf,
    process::{Child, Command, Output, Stdio},
    time::{Duration, Instant},
};

const MATRIX_SIZE: u32 = 64;

/// A devnet, a keystore with the faucet and two workers, and a data dir.
struct Farm {
    devnet: DevnetProcess,
    dir: tempfile::TempDir,
    addresses: BTreeMap<String, String>,
}

impl Farm {
    fn new(block_time_ms: u64, persistent_chain: bool, funded: &[&str]) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut options = DevnetOptions::located()
            .expect("cpc-devnet binary")
            .block_time(Duration::from_millis(block_time_ms));
        if persistent_chain {
            options = options.data_dir(dir.path().join("chain"));
        }
        let devnet = DevnetProcess::start(options).expect("devnet starts");
        let mut farm = Self { devnet, dir, addresses: BTreeMap::new() };
        farm.cli(&["keys", "import", "faucet", FAUCET_PRIVATE_KEY]);
        for name in ["w1", "w2"] {
            let out = farm.cli(&["--json", "keys", "add", name]);
            let v: Value = serde_json::from_slice(&out.stdout).expect("json");
            farm.addresses
                .insert(name.to_owned(), v["address"].as_str().expect("address").to_owned());
        }
        for name in funded {
            farm.cli(&["tx", "send", name, "5", "--from", "faucet", "--wait", "30"]);
        }
        farm
    }

    fn keystore(&self) -> PathBuf {
        self.dir.path().join("keys")
    }

    fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    fn cli(&self, args: &[&str]) -> Output {
        let out = coordinator_command()
            .args(["--node", &self.devnet.url(), "--keystore"])
            .arg(self.keystore())
            .args(args)
            .output()
            .expect("spawn");
        assert!(out.status.success(), "{args:?}: {}", String::from_utf8_lossy(&out.stderr));
        out
    }

    /// `cpc-coordinator run` for both identities, computing locally, with extra arguments.
    fn miner(&self, extra: &[&str], log: &str) -> Child {
        self.miner_with(&["--compute", "local", "--listen", "127.0.0.1:0"], extra, log)
    }

    /// `cpc-coordinator run` computing on the farm, and `agents` real `cpc-agent` processes (CPU backend)
    /// joined with the coordinator's token and pinned certificate.
    fn farm_miner(&self, agents: usize, extra: &[&str], log: &str) -> (Child, Vec<KillOnDrop>) {
        // The coordinator makes its identity in the data dir on first start; making it first lets the agents
        // be given the token and fingerprint without parsing the coordinator's output.
        let identity = Identity::load_or_create(&self.data_dir()).expect("coordinator identity");
        let port = std::net::UdpSocket::bind("127.0.0.1:0")
            .and_then(|s| s.local_addr())
            .expect("udp port")
            .port();
        let quic = format!("127.0.0.1:{port}");
        let min_agents = agents.to_string();
        let miner = self.miner_with(
            &["--compute", "farm", "--listen", &quic, "--min-agents", &min_agents],
            extra,
            log,
        );
        let agent_bin = locate_workspace_binary("cpc-agent", "CPC_AGENT_BIN").expect(
            "cpc-agent binary not found: run `cargo build --workspace --bins` or set CPC_AGENT_BIN",
        );
        let agents = (0..agents)
            .map(|i| {
                let log = std::fs::File::create(self.dir.path().join(format!("agent-{i}.log")))
                    .expect("log");
                KillOnDrop(
                    Command::new(&agent_bin)
                        .args(["--coordinator", &quic, "--token", &identity.token])
                        .args([
                            "--coordinator-fingerprint",
                            &identity.fingerprint(),
                            "--backend",
                            "cpu",
                        ])
                        .stdout(Stdio::null())
                        .stderr(log)
                        .spawn()
                        .expect("spawn agent"),
                )
            })
            .collect();
        (miner, agents)
    }

    fn miner_with(&self, compute: &[&str], extra: &[&str], log: &str) -> Child {
        let log = std::fs::File::create(self.dir.path().join(log)).expect("log file");
        coordinator_command()
            .args(["--node", &self.devnet.url(), "--keystore"])
            .arg(self.keystore())
            .args(["run", "--identity", "w1,w2", "--data-dir"])
            .arg(self.data_dir())
            .args(compute)
            .args(["--matrix-size", &MATRIX_SIZE.to_string(), "--poll-interval-ms", "40"])
            .args(extra)
            .env("RUST_LOG", "info")
            .stdout(Stdio::piped())
            .stderr(log)
            .spawn()
            .expect("spawn miner")
    }

    fn log(&self, name: &str) -> String {
        std::fs::read_to_string(self.dir.path().join(name)).unwrap_or_default()
    }

    fn http(&self, path: &str) -> Option<Value> {
        let (code, body) = self.devnet.get(path).ok()?;
        (code == 200).then(|| serde_json::from_str(&body).ok()).flatten()
    }

    fn chain(&self) -> Vec<Block> {
        let head = self.http("/status").and_then(|s| s["height"].as_u64()).expect("status");
        (0..=head)
            .map(|h| {
                serde_json::from_value(self.http(&format!("/block/{h}")).expect("block"))
                    .expect("block json")
            })
            .collect()
    }

    /// Our SUBMIT_RESULTs on chain: (identity address, task height) → (block, result).
    fn submissions(&self) -> HashMap<(String, u64), Vec<(u64, ComputeResult)>> {
        let ours: Vec<&String> = self.addresses.values().collect();
        let mut out: HashMap<(String, u64), Vec<(u64, ComputeResult)>> = HashMap::new();
        for block in self.chain() {
            assert_eq!(
                cpc_common::compute_root(&block.txs).expect("valid payloads"),
                block.header.compute_root,
                "compute_root of block {}",
                block.header.height
            );
            for tx in block
                .txs
                .iter()
                .filter(|t| t.tx_type == TxType::SubmitResult && ours.contains(&&t.from_address))
            {
                let r = ComputeResult::from_payload(&tx.payload).expect("payload");
                let h = r.nonce.to_u64().expect("height nonce");
                out.entry((tx.from_address.clone(), h)).or_default().push((block.header.height, r));
            }
        }
        out
    }

    fn wait_for_submissions(&self, count: usize, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        while self.submissions().len() < count {
            assert!(
                Instant::now() < deadline,
                "fewer than {count} submissions landed in {timeout:?}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

/// A child process killed when the test ends, pass or fail.
struct KillOnDrop(Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn finish(child: Child) -> Value {
    let out = child.wait_with_output().expect("miner exits");
    assert!(out.status.success(), "miner failed: {}", out.status);
    serde_json::from_slice(&out.stdout).expect("report JSON")
}

/// Every submission is unique per (identity, block), and its result equals the reference computation.
fn check_chain(farm: &Farm) -> usize {
    let backend = cpc_kernels::open(cpc_kernels::BackendKind::Cpu, 0).expect("cpu");
    let blocks = farm.chain();
    let subs = farm.submissions();
    for ((address, height), landed) in &subs {
        assert_eq!(
            landed.len(),
            1,
            "{address} submitted {} times for block {height}",
            landed.len()
        );
        let (included, result) = &landed[0];
        assert!(included > height);
        let block_hash = blocks[*height as usize].header.hash();
        let task = BlockTask::derive(&block_hash, address, MATRIX_SIZE, *height).expect("task");
        let reference = hex::encode(
            cpc_kernels::result_hash(backend.as_ref(), &task.challenge).expect("compute"),
        );
        assert_eq!(result.result_hash, reference, "{address} at {height}");
        assert_eq!(result.task_id, task.task_id.to_string());
    }
    subs.len()
}

/// No result the journal holds is left behind: every task computed up to `settled_to` (the last block the
/// final run waited for) has an included submission; later ones, computed as the miner stopped, are still
/// journaled for the next start.
fn check_journal(farm: &Farm, settled_to: u64) {
    let journal = Journal::open(&farm.data_dir().join("journal.sqlite")).expect("journal");
    for row in journal.report(0).expect("report") {
        if row.result_hash.is_none() {
            continue;
        }
        if row.height <= settled_to {
            assert_eq!(row.state, "included", "{row:?}");
            assert!(row.included_in.is_some(), "{row:?}");
        } else {
            assert!(matches!(row.state.as_str(), "included" | "submitted" | "computed"), "{row:?}");
        }
    }
}

fn last_height(report: &Value) -> u64 {
    report
        .as_array()
        .expect("rows")
        .iter()
        .filter_map(|r| r["height"].as_u64())
        .max()
        .expect("some rows")
}

/// The whole product: the coordinator computes every block on two real agents over QUIC.
#[test]
fn twenty_consecutive_blocks_one_included_correct_submission_per_identity_and_block() {
    let farm = Farm::new(300, false, &["w1", "w2"]);
    let (miner, _agents) = farm.farm_miner(2, &["--stop-after-blocks", "20", "--json"], "run.log");
    let report = finish(miner);
    let log = farm.log("run.log");
    assert!(log.contains("with farm on"), "the blocks were computed by the farm's agents:\n{log}");
    let rows = report.as_array().expect("rows");
    for name in ["w1", "w2"] {
        let mine: Vec<&Value> = rows.iter().filter(|r| r["identity"] == name).collect();
        let heights: Vec<u64> =
            mine.iter().map(|r| r["height"].as_u64().expect("height")).collect();
        assert!(
            heights.len() >= 15,
            "{name} computed only {} of 20 blocks: {heights:?}",
            heights.len()
        );
        for r in mine {
            assert_eq!(r["state"], "included", "{r}");
        }
    }
    let landed = check_chain(&farm);
    assert!(landed >= rows.len(), "every reported task is on chain exactly once");
    check_journal(&farm, last_height(&report));
}

#[test]
fn sigkill_and_restart_lose_nothing_and_duplicate_nothing() {
    let farm = Farm::new(300, false, &["w1", "w2"]);
    let mut seen = 0;
    for round in 0..3u64 {
        let mut miner = farm.miner(&[], &format!("run-{round}.log"));
        seen += 3;
        farm.wait_for_submissions(seen, Duration::from_secs(60));
        // Kill at a different moment of the cycle each round.
        std::thread::sleep(Duration::from_millis(97 * round));
        miner.kill().expect("SIGKILL");
        miner.wait().expect("reaped");
        seen = farm.submissions().len();
    }
    let report = finish(farm.miner(&["--stop-after-blocks", "4", "--json"], "run-final.log"));
    check_chain(&farm);
    check_journal(&farm, last_height(&report));
}

#[test]
fn a_node_outage_delays_submissions_but_loses_none() {
    let mut farm = Farm::new(300, true, &["w1", "w2"]);
    let miner = farm.miner(&["--stop-after-blocks", "14", "--json"], "run.log");
    farm.wait_for_submissions(4, Duration::from_secs(60));
    farm.devnet.stop().expect("node stops");
    std::thread::sleep(Duration::from_secs(2));
    farm.devnet.restart().expect("node restarts with its chain");
    let report = finish(miner);
    for r in report.as_array().expect("rows") {
        assert_eq!(r["state"], "included", "{r}");
    }
    let log = farm.log("run.log");
    assert!(log.contains("did not answer"), "the outage was noticed:\n{log}");
    check_chain(&farm);
    check_journal(&farm, last_height(&report));
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("port")
}

#[test]
fn an_unfunded_identity_is_reported_and_does_not_hold_back_the_other() {
    let farm = Farm::new(300, false, &["w1"]);
    let metrics = format!("127.0.0.1:{}", free_port());
    let miner = farm.miner(
        &["--stop-after-blocks", "4", "--settle-timeout", "3", "--metrics", &metrics, "--json"],
        "run.log",
    );
    let deadline = Instant::now() + Duration::from_secs(60);
    let unfunded = loop {
        let text = reqwest::blocking::get(format!("http://{metrics}/metrics"))
            .and_then(|r| r.text())
            .unwrap_or_default();
        // The series exists at 0 from start-up (so alerts see the first event); wait for that event.
        if let Some(line) = text
            .lines()
            .find(|l| l.starts_with("cpcfarm_submissions_unfunded_total{identity=\"w2\"}"))
            .filter(|l| !l.ends_with(" 0"))
        {
            break line.to_owned();
        }
        assert!(Instant::now() < deadline, "no unfunded submission counted for w2");
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(!unfunded.ends_with(" 0"), "{unfunded}");
    let report = finish(miner);
    let rows = report.as_array().expect("rows");
    for r in rows {
        match r["identity"].as_str() {
            Some("w1") => assert_eq!(r["state"], "included", "{r}"),
            _ => {
                assert_eq!(r["state"], "computed", "w2's results stay journaled until funded: {r}");
                assert!(r["tx_hash"].is_null());
            }
        }
    }
    let log = farm.log("run.log");
    assert!(log.contains(&format!("insufficient balance for {}", farm.addresses["w2"])), "{log}");
    let landed = farm.submissions();
    assert!(landed.keys().all(|(address, _)| *address == farm.addresses["w1"]));
    assert!(!landed.is_empty());
}
