//! The coordinator as an operator runs it, end to end against a real `cpc-devnet`: SIGTERM (what systemd
//! and Kubernetes send) gives the graceful stop and exit 0; a hung L1 node (accepts, never answers) is
//! failed over, the preferred node is failed back to once it answers, and `cpcfarm_l1_node_up` follows
//! both for every configured node; `https://` node URLs work through a TLS proxy with a test CA, and an
//! untrusted certificate is refused.

use cpc_tests::{
    devnet::chain::FAUCET_PRIVATE_KEY,
    harness::{DevnetOptions, DevnetProcess, coordinator_command, free_port},
    proxy::{Proxy, TestCa},
};
use std::{
    io::{Read as _, Write as _},
    net::{SocketAddr, TcpStream},
    path::PathBuf,
    process::{Child, Command, ExitStatus, Output, Stdio},
    time::{Duration, Instant},
};

/// A devnet and a keystore with the faucet and one funded worker.
struct Chain {
    devnet: DevnetProcess,
    dir: tempfile::TempDir,
}

impl Chain {
    fn new() -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let options = DevnetOptions::located()
            .expect("cpc-devnet binary")
            .block_time(Duration::from_millis(300));
        let chain = Self { devnet: DevnetProcess::start(options).expect("devnet starts"), dir };
        chain.cli(&["keys", "import", "faucet", FAUCET_PRIVATE_KEY]);
        chain.cli(&["keys", "add", "w1"]);
        chain.cli(&["tx", "send", "w1", "5", "--from", "faucet", "--wait", "30"]);
        chain
    }

    fn keystore(&self) -> PathBuf {
        self.dir.path().join("keys")
    }

    fn log_path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn log(&self, name: &str) -> String {
        std::fs::read_to_string(self.log_path(name)).unwrap_or_default()
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

    /// `cpc-coordinator run` for w1, computing locally, logging to `log`.
    fn miner(&self, extra: &[&str], log: &str) -> Child {
        let log = std::fs::File::create(self.log_path(log)).expect("log file");
        coordinator_command()
            .args(["--node", &self.devnet.url(), "--keystore"])
            .arg(self.keystore())
            .args(["run", "--identity", "w1", "--data-dir"])
            .arg(self.dir.path().join("data"))
            .args(["--compute", "local", "--listen", "127.0.0.1:0", "--matrix-size", "64"])
            .args(["--poll-interval-ms", "100"])
            .args(extra)
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn miner")
    }

    /// Waits (bounded, so a broken build fails instead of hanging) until `log` contains `needle`.
    fn wait_for_log(&self, log: &str, needle: &str) {
        wait_until(&format!("`{needle}` in {log}"), || {
            self.log(log).contains(needle).then_some(())
        });
    }
}

/// Polls `probe` every 50 ms until it answers, for at most two minutes (a liveness bound, not a
/// measurement: a test that needs it has failed).
fn wait_until<T>(what: &str, mut probe: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        if let Some(found) = probe() {
            return found;
        }
        assert!(Instant::now() < deadline, "gave up waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn sigterm(child: &Child) {
    let sent =
        Command::new("kill").arg("-TERM").arg(child.id().to_string()).status().expect("kill");
    assert!(sent.success());
}

fn wait_exit(child: &mut Child) -> ExitStatus {
    wait_until("the process to exit", || child.try_wait().expect("try_wait"))
}

/// The body of `GET /metrics` on `addr`, if it answers.
fn scrape(addr: SocketAddr) -> Option<String> {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(2)).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(stream, "GET /metrics HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").ok()?;
    let mut raw = String::new();
    stream.read_to_string(&mut raw).ok()?;
    raw.split_once("\r\n\r\n").map(|(_, body)| body.to_owned())
}

/// The value of the sample `series` (name and labels exactly as exported) in a scrape.
fn sample(scrape: &str, series: &str) -> Option<f64> {
    scrape.lines().find_map(|line| line.strip_prefix(series)?.trim().parse().ok())
}

fn node_up(url: &str) -> String {
    format!("cpcfarm_l1_node_up{{node=\"{url}\"}} ")
}

#[test]
fn sigterm_gives_the_graceful_stop_and_exit_0() {
    let chain = Chain::new();
    let mut miner = chain.miner(&[], "run.log");
    chain.wait_for_log("run.log", "mining for");
    sigterm(&miner);
    let status = wait_exit(&mut miner);
    let log = chain.log("run.log");
    assert_eq!(status.code(), Some(0), "exit status {status} after SIGTERM:\n{log}");
    assert!(log.contains("stopping: the journal keeps every result"), "graceful message:\n{log}");
}

#[test]
fn a_hung_node_is_failed_over_and_the_preferred_node_failed_back_to() {
    let chain = Chain::new();
    let preferred = Proxy::start(chain.devnet.addr()).expect("proxy");
    let backup = chain.devnet.url();
    let metrics: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().expect("address");
    let nodes = format!("{},{backup}", preferred.url());
    let mut miner =
        chain.miner(&["--nodes", &nodes, "--metrics", &metrics.to_string()], "failover.log");

    // Both nodes have a series from start-up and read up: the backup through the health probes.
    wait_until("both nodes up", || {
        let s = scrape(metrics)?;
        (sample(&s, &node_up(&preferred.url())) == Some(1.0)
            && sample(&s, &node_up(&backup)) == Some(1.0))
        .then_some(())
    });

    preferred.set_hung(true);
    let hung_at = Instant::now();
    wait_until("the hung node marked down", || {
        (sample(&scrape(metrics)?, &node_up(&preferred.url())) == Some(0.0)).then_some(())
    });
    let marked_down = hung_at.elapsed();
    chain.wait_for_log("failover.log", "L1 node failover");
    let failed_over = hung_at.elapsed();
    eprintln!("hung node marked down after {marked_down:?}, failed over after {failed_over:?}");
    // The chain keeps being followed through the backup.
    let height = |s: &str| sample(s, "cpcfarm_l1_head_height ");
    let before = wait_until("a head height", || height(&scrape(metrics)?));
    wait_until("the head to move on the backup", || {
        (height(&scrape(metrics)?)? > before).then_some(())
    });
    let s = scrape(metrics).expect("scrape");
    assert_eq!(sample(&s, &node_up(&backup)), Some(1.0), "the backup reads up:\n{s}");
    assert!(preferred.held_connections() > 0, "the coordinator did call the hung node");

    preferred.set_hung(false);
    chain.wait_for_log("failover.log", "fail-back to the preferred node");
    wait_until("the recovered node up", || {
        (sample(&scrape(metrics)?, &node_up(&preferred.url())) == Some(1.0)).then_some(())
    });
    let s = scrape(metrics).expect("scrape");
    let switches = sample(&s, "cpcfarm_l1_node_switches_total ").expect("switch counter");
    assert!(switches >= 2.0, "one failover and one fail-back, got {switches}:\n{s}");
    let log = chain.log("failover.log");
    let warnings = log.matches("L1 node did not answer").count();
    assert!(
        warnings <= 2,
        "an outage is logged once per change, not per poll ({warnings}):\n{log}"
    );

    sigterm(&miner);
    assert_eq!(wait_exit(&mut miner).code(), Some(0));
}

#[test]
fn https_nodes_work_through_a_tls_proxy_with_a_test_ca() {
    let devnet = DevnetProcess::start(DevnetOptions::located().expect("cpc-devnet binary"))
        .expect("devnet starts");
    let ca = TestCa::new().expect("test CA");
    let dir = tempfile::tempdir().expect("tempdir");
    let ca_file = dir.path().join("ca.pem");
    std::fs::write(&ca_file, &ca.ca_pem).expect("write CA");
    let proxy = Proxy::start_tls(devnet.addr(), &ca).expect("TLS proxy");
    assert!(proxy.url().starts_with("https://"));

    let trusted = coordinator_command()
        .env("SSL_CERT_FILE", &ca_file)
        .args(["--node", &proxy.url(), "--json", "status"])
        .output()
        .expect("spawn");
    assert!(trusted.status.success(), "{}", String::from_utf8_lossy(&trusted.stderr));
    let status: serde_json::Value = serde_json::from_slice(&trusted.stdout).expect("status JSON");
    assert!(status["height"].is_u64(), "{status}");

    // Without the test CA the same server is refused, and the message says why.
    let untrusted = coordinator_command()
        .env("SSL_CERT_FILE", dir.path().join("no-such-ca.pem"))
        .args(["--node", &proxy.url(), "status"])
        .output()
        .expect("spawn");
    let stderr = String::from_utf8_lossy(&untrusted.stderr);
    assert_eq!(untrusted.status.code(), Some(1), "{stderr}");
    assert!(stderr.to_lowercase().contains("certificate"), "{stderr}");
}
