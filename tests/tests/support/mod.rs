//! The multi-process fixture shared by the end-to-end tests (`mining.rs`, `faults.rs`): a devnet with a
//! keystore, `cpc-coordinator run` and `cpc-agent` as real processes, and the checks that scan the chain
//! (never the journal) for lost, duplicated and wrong results.
//!
//! Each test binary uses a part of it, hence the `dead_code` allowance.
#![allow(dead_code)]

pub(crate) mod load;

/// Every test binary finds a free port the same way (re-exported so `support::free_port` keeps working).
#[allow(unused_imports)]
pub(crate) use cpc_tests::harness::free_port;

use cpc_common::{Block, ComputeResult, TxType, synthetic::BlockTask};
use cpc_coordinator::{farm::Identity, mining::journal::Journal};
use cpc_tests::{
    devnet::chain::FAUCET_PRIVATE_KEY,
    harness::{DevnetOptions, DevnetProcess, coordinator_command, locate_workspace_binary},
};
use serde_json::Value;
use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    path::PathBuf,
    process::{Child, Command, Output, Stdio},
    time::{Duration, Instant},
};

/// Matrix size of block tasks in the end-to-end tests: small, so a CPU computes a block in milliseconds.
pub(crate) const MATRIX_SIZE: u32 = 64;

/// A devnet, a keystore with the faucet and two workers, and a data dir.
pub(crate) struct Farm {
    pub(crate) devnet: DevnetProcess,
    pub(crate) dir: tempfile::TempDir,
    pub(crate) addresses: BTreeMap<String, String>,
}

/// Where the farm's agents dial, and what they are told to trust.
#[derive(Debug, Clone)]
pub(crate) struct FarmEndpoint {
    /// The coordinator's QUIC address (`127.0.0.1:PORT`).
    pub(crate) quic: String,
    /// The join token.
    pub(crate) token: String,
    /// The coordinator certificate's fingerprint.
    pub(crate) fingerprint: String,
}

impl Farm {
    pub(crate) fn new(block_time_ms: u64, persistent_chain: bool, funded: &[&str]) -> Self {
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

    pub(crate) fn keystore(&self) -> PathBuf {
        self.dir.path().join("keys")
    }

    pub(crate) fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    pub(crate) fn cli(&self, args: &[&str]) -> Output {
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
    pub(crate) fn miner(&self, extra: &[&str], log: &str) -> Child {
        self.miner_with(&["--compute", "local", "--listen", "127.0.0.1:0"], extra, log)
    }

    /// The coordinator's identity (made in the data dir now if it is not there yet), and a free port for it:
    /// agents can then be given the token and fingerprint without parsing the coordinator's output.
    ///
    /// The journal is made first, as a coordinator's first start does: a data dir holding an identity but no
    /// journal is a lost journal to `run`, which then refuses to start without `--new-journal`.
    pub(crate) fn farm_endpoint(&self) -> FarmEndpoint {
        std::fs::create_dir_all(self.data_dir()).expect("data dir");
        drop(Journal::open(&self.data_dir().join("journal.sqlite")).expect("journal"));
        let identity = Identity::load_or_create(&self.data_dir()).expect("coordinator identity");
        let port = std::net::UdpSocket::bind("127.0.0.1:0")
            .and_then(|s| s.local_addr())
            .expect("udp port")
            .port();
        FarmEndpoint {
            quic: format!("127.0.0.1:{port}"),
            token: identity.token.clone(),
            fingerprint: identity.fingerprint(),
        }
    }

    /// `cpc-coordinator run` computing on the farm at `endpoint`, waiting for `min_agents`.
    pub(crate) fn farm_coordinator(
        &self,
        endpoint: &FarmEndpoint,
        min_agents: usize,
        extra: &[&str],
        log: &str,
    ) -> Child {
        let min_agents = min_agents.to_string();
        self.miner_with(
            &["--compute", "farm", "--listen", &endpoint.quic, "--min-agents", &min_agents],
            extra,
            log,
        )
    }

    /// A real `cpc-agent` (CPU backend) joined to `endpoint`, logging to `agent-{index}.log`.
    pub(crate) fn agent(
        &self,
        endpoint: &FarmEndpoint,
        index: usize,
        extra: &[&str],
    ) -> KillOnDrop {
        let agent_bin = locate_workspace_binary("cpc-agent", "CPC_AGENT_BIN").expect(
            "cpc-agent binary not found: run `cargo build --workspace --bins` or set CPC_AGENT_BIN",
        );
        let log =
            std::fs::File::create(self.dir.path().join(format!("agent-{index}.log"))).expect("log");
        KillOnDrop(
            Command::new(&agent_bin)
                .args(["--coordinator", &endpoint.quic, "--token", &endpoint.token])
                .args(["--coordinator-fingerprint", &endpoint.fingerprint, "--backend", "cpu"])
                .args(["--name", &format!("agent-{index}")])
                .args(extra)
                .env("RUST_LOG", "info")
                .env("NO_COLOR", "1")
                .stdout(Stdio::null())
                .stderr(log)
                .spawn()
                .expect("spawn agent"),
        )
    }

    /// `cpc-coordinator run` computing on the farm, and `agents` real `cpc-agent` processes (CPU backend)
    /// joined with the coordinator's token and pinned certificate.
    pub(crate) fn farm_miner(
        &self,
        agents: usize,
        extra: &[&str],
        log: &str,
    ) -> (Child, Vec<KillOnDrop>) {
        let endpoint = self.farm_endpoint();
        let miner = self.farm_coordinator(&endpoint, agents, extra, log);
        let agents = (0..agents).map(|i| self.agent(&endpoint, i, &[])).collect();
        (miner, agents)
    }

    /// `cpc-coordinator run --identity {identities}` against this farm's node, keystore and data dir (with
    /// the test's block task settings); the caller adds the rest.
    pub(crate) fn run_command(&self, identities: &str) -> Command {
        let mut cmd = self.run_base();
        cmd.args(["--identity", identities]);
        cmd
    }

    /// `cpc-coordinator run` against this farm's node, keystore and data dir with the test's block task
    /// settings, and no identity: the caller names them (`--identity`, or a `--config` that lists them).
    pub(crate) fn run_base(&self) -> Command {
        let mut cmd = coordinator_command();
        cmd.args(["--node", &self.devnet.url(), "--keystore"])
            .arg(self.keystore())
            .args(["run", "--data-dir"])
            .arg(self.data_dir())
            .args(["--matrix-size", &MATRIX_SIZE.to_string(), "--poll-interval-ms", "40"])
            .env("RUST_LOG", "info")
            .env("NO_COLOR", "1");
        cmd
    }

    pub(crate) fn miner_with(&self, compute: &[&str], extra: &[&str], log: &str) -> Child {
        let log = std::fs::File::create(self.dir.path().join(log)).expect("log file");
        self.run_command("w1,w2")
            .args(compute)
            .args(extra)
            .stdout(Stdio::piped())
            .stderr(log)
            .spawn()
            .expect("spawn miner")
    }

    pub(crate) fn log(&self, name: &str) -> String {
        strip_ansi(&std::fs::read_to_string(self.dir.path().join(name)).unwrap_or_default())
    }

    pub(crate) fn http(&self, path: &str) -> Option<Value> {
        let (code, body) = self.devnet.get(path).ok()?;
        (code == 200).then(|| serde_json::from_str(&body).ok()).flatten()
    }

    /// The chain's head height.
    pub(crate) fn head(&self) -> u64 {
        self.http("/status").and_then(|s| s["height"].as_u64()).expect("status")
    }

    pub(crate) fn chain(&self) -> Vec<Block> {
        let head = self.head();
        (0..=head)
            .map(|h| {
                serde_json::from_value(self.http(&format!("/block/{h}")).expect("block"))
                    .expect("block json")
            })
            .collect()
    }

    /// Our SUBMIT_RESULTs on chain: (identity address, task height) → (block, result).
    pub(crate) fn submissions(&self) -> HashMap<(String, u64), Vec<(u64, ComputeResult)>> {
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

    pub(crate) fn wait_for_submissions(&self, count: usize, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        while self.submissions().len() < count {
            assert!(
                Instant::now() < deadline,
                "fewer than {count} submissions landed in {timeout:?}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Waits until the chain reaches `height`.
    pub(crate) fn wait_for_height(&self, height: u64, timeout: Duration) {
        self.devnet.wait_for_height(height, timeout).expect("the chain advances");
    }

    /// Lost and duplicated results, by scanning the chain. `expected` are the heights every identity must
    /// have exactly one included result for (the blocks produced while a coordinator was up; see
    /// [`mined_heights`]). Waits up to `settle` for the last of them to land before counting them lost.
    pub(crate) fn count_on_chain(&self, expected: &BTreeSet<u64>, settle: Duration) -> ChainCount {
        let deadline = Instant::now() + settle;
        loop {
            let subs = self.submissions();
            let mut lost = Vec::new();
            for (name, address) in &self.addresses {
                for h in expected {
                    if !subs.contains_key(&(address.clone(), *h)) {
                        lost.push((name.clone(), *h));
                    }
                }
            }
            let duplicated: usize = subs.values().map(|v| v.len().saturating_sub(1)).sum();
            if lost.is_empty() || Instant::now() > deadline {
                return ChainCount { expected: expected.len(), lost, duplicated };
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

/// What a scan of the chain found.
#[derive(Debug)]
pub(crate) struct ChainCount {
    /// Heights every identity should have a result for.
    pub(crate) expected: usize,
    /// (identity, height) without an included result.
    pub(crate) lost: Vec<(String, u64)>,
    /// SUBMIT_RESULTs beyond the first of an identity for one height.
    pub(crate) duplicated: usize,
}

/// The heights a coordinator's log says it saw as the head ("new block"), in order. With `killed`, the last
/// one is left out: the block that was the head when the coordinator died counts as produced while it was
/// down (it may have died before journaling the task).
pub(crate) fn mined_heights(log: &str, killed: bool) -> Vec<u64> {
    let mut heights: Vec<u64> = log
        .lines()
        .filter(|l| l.contains("new block"))
        .filter_map(|l| field(l, "height").and_then(|v| v.parse().ok()))
        .collect();
    if killed {
        heights.pop();
    }
    heights
}

/// The value of `name=value` in a tracing line.
pub(crate) fn field<'a>(line: &'a str, name: &str) -> Option<&'a str> {
    let start = line.find(&format!(" {name}="))? + name.len() + 2;
    line[start..].split_whitespace().next()
}

/// The text without ANSI colour sequences (tracing colours its fields when it thinks it may).
pub(crate) fn strip_ansi(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// A child process killed when the test ends, pass or fail.
pub(crate) struct KillOnDrop(pub(crate) Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

pub(crate) fn finish(child: Child) -> Value {
    let out = child.wait_with_output().expect("miner exits");
    assert!(out.status.success(), "miner failed: {}", out.status);
    serde_json::from_slice(&out.stdout).expect("report JSON")
}

/// Every submission is unique per (identity, block), and its result equals the reference computation.
pub(crate) fn check_chain(farm: &Farm) -> usize {
    let backend = cpc_kernels::open(cpc_kernels::BackendKind::Cpu, 0).expect("cpu");
    // Submissions first: the chain may grow meanwhile, and every task height must be in `blocks`.
    let subs = farm.submissions();
    let blocks = farm.chain();
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

/// Our results on chain that are not the reference computation of their block task: (address, height).
pub(crate) fn wrong_results(farm: &Farm) -> Vec<(String, u64)> {
    let backend = cpc_kernels::open(cpc_kernels::BackendKind::Cpu, 0).expect("cpu");
    let subs = farm.submissions();
    let blocks = farm.chain();
    let mut wrong = Vec::new();
    for ((address, height), landed) in subs {
        let block_hash = blocks[height as usize].header.hash();
        let task = BlockTask::derive(&block_hash, &address, MATRIX_SIZE, height).expect("task");
        let reference = hex::encode(
            cpc_kernels::result_hash(backend.as_ref(), &task.challenge).expect("compute"),
        );
        if landed.iter().any(|(_, r)| r.result_hash != reference) {
            wrong.push((address, height));
        }
    }
    wrong.sort();
    wrong
}

/// No result the journal holds is left behind: every task computed up to `settled_to` (the last block the
/// final run waited for) has an included submission; later ones, computed as the miner stopped, are still
/// journaled for the next start.
pub(crate) fn check_journal(farm: &Farm, settled_to: u64) {
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

pub(crate) fn last_height(report: &Value) -> u64 {
    report
        .as_array()
        .expect("rows")
        .iter()
        .filter_map(|r| r["height"].as_u64())
        .max()
        .expect("some rows")
}

/// Resident memory of a process in KiB (`VmRSS` in /proc/PID/status), where the system has /proc.
pub(crate) fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// Waits until `needle` occurs at least `count` times in log `name`; answers how long that took.
pub(crate) fn wait_for_log(
    farm: &Farm,
    name: &str,
    needle: &str,
    count: usize,
    timeout: Duration,
) -> Option<Duration> {
    let start = Instant::now();
    loop {
        if farm.log(name).matches(needle).count() >= count {
            return Some(start.elapsed());
        }
        if start.elapsed() > timeout {
            return None;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}
