//! Many funded identities on a real `cpc-devnet` (shared by `l1_load.rs` and `farm_scale.rs`): funding
//! straight from the faucet within the node's rate limit, the chain's SUBMIT_RESULTs by (identity, height),
//! and the devnet's per-route request counters.

use super::KillOnDrop;
use cpc_common::{SecretKey, TxType, keystore::Keystore};
use cpc_tests::{
    devnet::chain::FAUCET_PRIVATE_KEY,
    fixtures,
    harness::{DevnetOptions, DevnetProcess, coordinator_command},
};
use serde_json::Value;
use std::{
    collections::{BTreeMap, HashMap},
    process::Stdio,
    time::{Duration, Instant},
};

/// A devnet, a keystore of funded identities `w0..wN`, and a data dir.
pub(crate) struct Load {
    pub(crate) devnet: DevnetProcess,
    pub(crate) dir: tempfile::TempDir,
    pub(crate) names: Vec<String>,
    pub(crate) addresses: Vec<String>,
}

impl Load {
    pub(crate) fn new(
        identities: usize,
        block_time: Duration,
        max_requests_per_sec: Option<u32>,
    ) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut options =
            DevnetOptions::located().expect("cpc-devnet binary").block_time(block_time);
        if let Some(r) = max_requests_per_sec {
            options.extra_args = vec!["--max-requests-per-sec".into(), r.to_string()];
        }
        let devnet = DevnetProcess::start(options).expect("devnet starts");
        let keystore = Keystore::new(dir.path().join("keys"));
        let (names, addresses): (Vec<String>, Vec<String>) = (0..identities)
            .map(|i| {
                let name = format!("w{i}");
                let key = keystore.add(&name).expect("key");
                (name, key.address.to_string())
            })
            .unzip();
        let load = Self { devnet, dir, names, addresses };
        load.fund();
        load
    }

    /// One transfer to each identity from the faucet, straight to the node (respecting its rate limit).
    pub(crate) fn fund(&self) {
        let faucet = SecretKey::from_hex(FAUCET_PRIVATE_KEY).expect("faucet key");
        let faucet_address = faucet.address().to_string();
        let nonce =
            self.json(&format!("/nonce/{faucet_address}"))["nonce"].as_u64().expect("nonce");
        let http = reqwest::blocking::Client::new();
        for (i, to) in self.addresses.iter().enumerate() {
            let tx = fixtures::transfer(&faucet, to, 5 * 10u128.pow(18), nonce + i as u64);
            loop {
                let resp = http
                    .post(format!("{}/tx/send", self.devnet.url()))
                    .json(&tx)
                    .send()
                    .expect("send");
                if resp.status() == 429 {
                    std::thread::sleep(Duration::from_millis(50));
                    continue;
                }
                let body: Value = resp.json().expect("json");
                assert_eq!(body["status"], "received", "{body}");
                break;
            }
        }
        let last = self.addresses.last().expect("an identity");
        let deadline = Instant::now() + Duration::from_secs(120);
        while self.json(&format!("/balance/{last}"))["balance"].as_str().unwrap_or("0") == "0" {
            assert!(Instant::now() < deadline, "funding did not land");
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// A GET that waits out 429s.
    pub(crate) fn json(&self, path: &str) -> Value {
        loop {
            match self.devnet.get(path).expect("devnet answers") {
                (200, body) => return serde_json::from_str(&body).expect("json"),
                (429, _) => std::thread::sleep(Duration::from_millis(50)),
                (code, body) => panic!("{path}: HTTP {code}: {body}"),
            }
        }
    }

    pub(crate) fn height(&self) -> u64 {
        self.json("/status")["height"].as_u64().expect("height")
    }

    /// Waits for `height`, polling gently (the test's own requests count against a rate-limited node).
    pub(crate) fn wait_for_height(&self, height: u64) {
        let deadline = Instant::now() + Duration::from_secs(300);
        while self.height() < height {
            assert!(Instant::now() < deadline, "height {height} not reached");
            std::thread::sleep(Duration::from_millis(250));
        }
    }

    /// The devnet's per-route request counters.
    pub(crate) fn route_counts(&self) -> HashMap<String, u64> {
        let text = loop {
            match self.devnet.get("/metrics").expect("metrics") {
                (200, body) => break body,
                _ => std::thread::sleep(Duration::from_millis(50)),
            }
        };
        text.lines()
            .filter_map(|l| l.strip_prefix("cpcfarm_devnet_http_route_requests_total{route=\""))
            .filter_map(|l| {
                let (route, rest) = l.split_once("\"} ")?;
                Some((route.to_owned(), rest.trim().parse().ok()?))
            })
            .collect()
    }

    pub(crate) fn miner(&self) -> KillOnDrop {
        let log = std::fs::File::create(self.dir.path().join("run.log")).expect("log");
        KillOnDrop(
            coordinator_command()
                .args(["--node", &self.devnet.url(), "--keystore"])
                .arg(self.dir.path().join("keys"))
                .args(["run", "--identity", &self.names.join(","), "--data-dir"])
                .arg(self.dir.path().join("data"))
                .args(["--compute", "local", "--listen", "127.0.0.1:0"])
                .args(["--matrix-size", "64", "--poll-interval-ms", "100"])
                .env("RUST_LOG", "warn")
                .stdout(Stdio::null())
                .stderr(log)
                .spawn()
                .expect("spawn miner"),
        )
    }

    /// Our SUBMIT_RESULTs in blocks `from..=to`: (address, task height) → how many.
    pub(crate) fn results(&self, from: u64, to: u64) -> BTreeMap<(String, u64), usize> {
        let mut out = BTreeMap::new();
        for h in from..=to {
            let block = self.json(&format!("/block/{h}"));
            for tx in block["txs"].as_array().expect("txs") {
                let tx: cpc_common::Transaction =
                    serde_json::from_value(tx.clone()).expect("tx json");
                if tx.tx_type == TxType::SubmitResult && self.addresses.contains(&tx.from_address) {
                    let nonce = tx.payload["nonce"].as_u64().expect("height nonce");
                    *out.entry((tx.from_address.clone(), nonce)).or_insert(0) += 1;
                }
            }
        }
        out
    }

    pub(crate) fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("run.log")).unwrap_or_default()
    }
}
