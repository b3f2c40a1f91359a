//! The fault matrix of issue 11, as a suite: real `cpc-devnet`, `cpc-coordinator run` and `cpc-agent`
//! processes on loopback, one fault per case, and every case judged by scanning the chain.
//!
//! # How a case is counted
//! - **duplicated**: SUBMIT_RESULTs of one identity for one task height beyond the first;
//! - **lost**: a height in the window of a coordinator run (from the first to the last block its log
//!   reports as "new block") for which an identity has no included result. The block that was the head
//!   when a coordinator was killed or interrupted counts as produced while it was down, as do the blocks
//!   between two runs: those may be lost, by design, and are not counted;
//! - every result on chain equals the reference computation ([`support::check_chain`]);
//! - a deleted journal takes the results it held but had not sent yet with it: only the run on the new
//!   journal is judged for losses (duplicates are always counted over the whole chain).
//!
//! Three faults lose blocks the farm cannot hide on this code base: a SIGKILLed agent (a job waits on it
//! until it is dropped, and the planner then plans only the newest head), a coordinator restart (blocks
//! before the agents are back), a handshake flood (the farm slows down) and, at its first block, a hostile
//! validator (its job races the block task). Those cases assert no loss from a "steady" height on (after the
//! fault was handled) and print the earlier losses as `lost_before_steady`.
//!
//! Correctness (lost = duplicated = 0, exit codes, valid results) is asserted; timings and memory are
//! printed (`FAULTS <case>: ...` lines on stderr, `cargo test -- --nocapture` shows them), never asserted,
//! except generous bounds that catch a hang.
//!
//! The quick version runs in `cargo test` (300 ms blocks, n = 64, a few blocks per case). With
//! `CPC_FAULTS_LONG=1` the cases run longer (more blocks, more kills, bigger floods) and a 240-block soak
//! runs as well; see README.md ("Fault matrix").

mod support;

use cpc_common::{
    Block,
    synthetic::BlockTask,
    wire::{DeviceAdvert, Hello, PROTOCOL_VERSION},
};
use cpc_tests::validator::{TestJob, TestValidator};
use std::{
    collections::BTreeSet,
    io::Write as _,
    net::{SocketAddr, TcpListener, TcpStream},
    path::PathBuf,
    process::{Child, Command, ExitStatus, Stdio},
    sync::{
        Arc, Mutex, PoisonError,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};
use support::{
    ChainCount, Farm, FarmEndpoint, KillOnDrop, MATRIX_SIZE, check_chain, free_port, mined_heights,
    rss_kib, wait_for_log, wrong_results,
};

/// Block interval of every case.
const BLOCK_MS: u64 = 300;
/// Longest any single wait may take before the case is declared hung.
const HANG: Duration = Duration::from_secs(90);
/// How long the last results of a window may take to land before they count as lost.
const SETTLE: Duration = Duration::from_secs(20);

/// Whether the long version runs (`CPC_FAULTS_LONG=1`).
fn long() -> bool {
    std::env::var("CPC_FAULTS_LONG").is_ok_and(|v| !v.is_empty() && v != "0")
}

/// `quick` in the default run, `long` with `CPC_FAULTS_LONG=1`.
fn scaled(quick: u64, long_value: u64) -> u64 {
    if long() { long_value } else { quick }
}

/// Prints a case's figures on one line.
fn report(case: &str, figures: &[(&str, String)]) {
    let text: Vec<String> = figures.iter().map(|(k, v)| format!("{k}={v}")).collect();
    eprintln!("FAULTS {case}: {}", text.join(" "));
}

/// One coordinator run of a case: its log, and whether it was stopped under it (killed or interrupted).
struct Run {
    log: String,
    stopped: bool,
    /// Heights below this are not judged (blocks before the fault's set-up was complete).
    from: u64,
}

impl Run {
    /// A run that is still mining when it is judged.
    fn running(log: &str) -> Self {
        Self { log: log.to_owned(), stopped: false, from: 0 }
    }

    /// A run that was killed or interrupted.
    fn stopped(log: String) -> Self {
        Self { log, stopped: true, from: 0 }
    }
}

/// The heights every identity must have a result for: each run's window (see the module docs).
fn expected_heights(farm: &Farm, runs: &[Run]) -> BTreeSet<u64> {
    let mut expected = BTreeSet::new();
    for run in runs {
        let heights = mined_heights(&farm.log(&run.log), run.stopped);
        if let (Some(first), Some(last)) = (heights.iter().min(), heights.iter().max()) {
            expected.extend((*first).max(run.from)..=*last);
        }
    }
    expected
}

/// Counts on chain, prints, and asserts no duplicate, no loss and only valid results.
fn judge(case: &str, farm: &Farm, runs: &[Run], figures: &[(&str, String)]) -> ChainCount {
    judge_steady(case, farm, runs, figures, 0, true)
}

/// As [`judge`], but losses are asserted only from height `steady_from` on (the blocks after a fault that the
/// farm cannot hide, such as a dead agent before it is dropped, are counted and printed as
/// `lost_before_steady`), and results are checked against the reference only with `verify`.
fn judge_steady(
    case: &str,
    farm: &Farm,
    runs: &[Run],
    figures: &[(&str, String)],
    steady_from: u64,
    verify: bool,
) -> ChainCount {
    let expected = expected_heights(farm, runs);
    assert!(!expected.is_empty(), "{case}: no coordinator run mined a block");
    let count = farm.count_on_chain(&expected, SETTLE);
    let (steady_lost, early_lost): (Vec<_>, Vec<_>) =
        count.lost.iter().cloned().partition(|(_, h)| *h >= steady_from);
    let mut all = vec![
        ("window_blocks", count.expected.to_string()),
        ("lost", count.lost.len().to_string()),
        ("duplicated", count.duplicated.to_string()),
    ];
    if steady_from > 0 {
        all.push(("steady_from_height", steady_from.to_string()));
        all.push(("lost_before_steady", format!("{early_lost:?}")));
    }
    all.extend(figures.iter().cloned());
    report(case, &all);
    if count.duplicated > 0 || !count.lost.is_empty() {
        keep_logs(case, farm);
    }
    assert_eq!(count.duplicated, 0, "{case}: duplicated results on chain");
    assert!(steady_lost.is_empty(), "{case}: lost (identity, height): {steady_lost:?}");
    if verify {
        check_chain(farm);
    }
    count
}

/// Copies a failed case's logs to `$TMPDIR/cpc-faults-<case>/` (the farm's own folder goes with it).
fn keep_logs(case: &str, farm: &Farm) {
    let to = std::env::temp_dir().join(format!("cpc-faults-{case}"));
    let _ = std::fs::create_dir_all(&to);
    if let Ok(entries) = std::fs::read_dir(farm.dir.path()) {
        for entry in entries.flatten() {
            let path = entry.path();
            if path.extension().is_some_and(|e| e == "log") {
                let _ = std::fs::copy(&path, to.join(entry.file_name()));
            }
        }
    }
    eprintln!("FAULTS {case}: logs kept in {}", to.display());
}

/// Waits until the coordinator's log `log` reports `blocks` more new blocks than it had.
fn wait_blocks(farm: &Farm, log: &str, blocks: usize) {
    let have = mined_heights(&farm.log(log), false).len();
    wait_for_log(farm, log, "new block", have + blocks, HANG)
        .unwrap_or_else(|| panic!("{log}: no {blocks} new blocks in {HANG:?}:\n{}", farm.log(log)));
}

/// Sends `signal` (`-KILL`, `-INT`, `-STOP`, `-CONT`) to `pid`.
fn signal(pid: u32, signal: &str) {
    let ok = Command::new("kill").args([signal, &pid.to_string()]).status().expect("kill");
    assert!(ok.success(), "kill {signal} {pid}");
}

/// Waits for a child to exit, killing it after `timeout`.
fn exit_within(child: &mut Child, timeout: Duration) -> Option<ExitStatus> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(status) = child.try_wait().expect("wait") {
            return Some(status);
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            return None;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Runs a `cpc-coordinator run` that is expected to refuse to start; answers its exit code and stderr.
fn refused(mut cmd: Command) -> (Option<i32>, String) {
    let out = cmd.stdout(Stdio::null()).stderr(Stdio::piped()).spawn().expect("spawn");
    let mut child = out;
    let status = exit_within(&mut child, Duration::from_secs(30));
    let mut stderr = String::new();
    if let Some(mut e) = child.stderr.take() {
        let _ = std::io::Read::read_to_string(&mut e, &mut stderr);
    }
    (status.and_then(|s| s.code()), stderr)
}

fn ms(d: Option<Duration>) -> String {
    d.map_or_else(|| "none".to_owned(), |d| format!("{}ms", d.as_millis()))
}

/// Watches log files for a line, and records when each occurrence was first seen (10 ms resolution).
struct LogWatch {
    seen: Arc<Mutex<Vec<Instant>>>,
    stop: Arc<AtomicBool>,
}

impl LogWatch {
    fn start(paths: Vec<PathBuf>, needle: &'static str) -> Self {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let (events, flag) = (Arc::clone(&seen), Arc::clone(&stop));
        std::thread::spawn(move || {
            let mut counted = 0;
            while !flag.load(Ordering::Relaxed) {
                let now: usize = paths
                    .iter()
                    .map(|p| std::fs::read_to_string(p).unwrap_or_default().matches(needle).count())
                    .sum();
                if now > counted {
                    let at = Instant::now();
                    events
                        .lock()
                        .unwrap_or_else(PoisonError::into_inner)
                        .extend((counted..now).map(|_| at));
                    counted = now;
                }
                std::thread::sleep(Duration::from_millis(10));
            }
        });
        Self { seen, stop }
    }

    /// How long after `since` the `n`-th occurrence was seen.
    fn nth_after(&self, since: Instant, n: usize) -> Option<Duration> {
        let seen = self.seen.lock().unwrap_or_else(PoisonError::into_inner);
        seen.iter().filter(|t| **t >= since).nth(n.checked_sub(1)?).map(|t| *t - since)
    }
}

impl Drop for LogWatch {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// The registry's quarantine lines (`device quarantined device=…`); other lines that mention a quarantine
/// (the job's Freivalds line, for one) are not counted.
fn quarantines(farm: &Farm, logs: &[String]) -> usize {
    logs.iter().map(|l| farm.log(l).matches("device quarantined device=").count()).sum()
}

#[test]
fn agent_sigkill_is_dropped_and_mining_continues() {
    let farm = Farm::new(BLOCK_MS, false, &["w1", "w2"]);
    let endpoint = farm.farm_endpoint();
    let mut coordinator = KillOnDrop(farm.farm_coordinator(&endpoint, 2, &[], "run.log"));
    let mut agents: Vec<KillOnDrop> = (0..2).map(|i| farm.agent(&endpoint, i, &[])).collect();
    wait_blocks(&farm, "run.log", 3);
    let dropped = ["no heartbeat: dropping the agent", "agent left", "agent connection ended"];
    let before: usize = dropped.iter().map(|d| farm.log("run.log").matches(d).count()).sum();
    let killed_height = farm.head();
    let killed_at = Instant::now();
    agents[1].0.kill().expect("SIGKILL the agent");
    let _ = agents[1].0.wait();
    let detected = loop {
        let now: usize = dropped.iter().map(|d| farm.log("run.log").matches(d).count()).sum();
        if now > before {
            break Some(killed_at.elapsed());
        }
        if killed_at.elapsed() > Duration::from_secs(30) {
            break None;
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    // Until its heartbeats are missed (1.5 s), the dead agent owes answers: the schedule passes over it and
    // copies what it still gets to the live agent. The blocks until the drop (and the one after it) are
    // counted and printed (0-1 lost here, the block it died in), and mining must go on after.
    let steady_from = farm.head() + 2;
    wait_blocks(&farm, "run.log", scaled(6, 30) as usize);
    judge_steady(
        "agent_sigkill",
        &farm,
        &[Run::running("run.log")],
        &[
            ("killed_at_height", killed_height.to_string()),
            ("dead_agent_dropped_after", ms(detected)),
        ],
        steady_from,
        true,
    );
    assert!(detected.is_some(), "the coordinator never dropped the killed agent");
    let _ = coordinator.0.kill();
}

#[test]
fn coordinator_sigkill_and_sigint_restarts_keep_agents_mining() {
    let farm = Farm::new(BLOCK_MS, false, &["w1", "w2"]);
    let endpoint = farm.farm_endpoint();
    let agents_n = 2;
    let kills = scaled(5, 20);
    let mut runs = Vec::new();
    let mut readmissions = Vec::new();
    let mut agents: Vec<KillOnDrop> = Vec::new();
    let agent_logs =
        (0..agents_n).map(|i| farm.dir.path().join(format!("agent-{i}.log"))).collect();
    let lost_watch = LogWatch::start(agent_logs, "connection to the coordinator lost");
    let mut stops = Vec::new();
    for round in 0..=kills {
        let log = format!("run-{round}.log");
        let started = Instant::now();
        let mut coordinator = KillOnDrop(farm.farm_coordinator(&endpoint, agents_n, &[], &log));
        if agents.is_empty() {
            agents = (0..agents_n).map(|i| farm.agent(&endpoint, i, &[])).collect();
        }
        let admitted = wait_for_log(&farm, &log, "agent admitted", agents_n, HANG);
        assert!(admitted.is_some(), "{log}: the agents were not re-admitted:\n{}", farm.log(&log));
        let admitted = started.elapsed();
        if round > 0 {
            readmissions.push(admitted);
        }
        wait_blocks(&farm, &log, 2 + (round as usize % 3));
        // Stop at a different moment of the block cycle each round; the last stop is a SIGINT.
        std::thread::sleep(Duration::from_millis(61 * round));
        stops.push(Instant::now());
        if round < kills {
            coordinator.0.kill().expect("SIGKILL");
            let _ = coordinator.0.wait();
        } else {
            signal(coordinator.0.id(), "-INT");
            assert!(
                exit_within(&mut coordinator.0, Duration::from_secs(60)).is_some(),
                "SIGINT did not stop the coordinator"
            );
        }
        runs.push(Run::stopped(log));
    }
    // The last run goes on after the SIGINT restart, and is judged while it mines.
    let log = "run-final.log".to_owned();
    let started = Instant::now();
    let _coordinator = KillOnDrop(farm.farm_coordinator(&endpoint, agents_n, &[], &log));
    assert!(wait_for_log(&farm, &log, "agent admitted", agents_n, HANG).is_some());
    readmissions.push(started.elapsed());
    wait_blocks(&farm, &log, 1);
    let steady_from = mined_heights(&farm.log(&log), false).first().copied().unwrap_or(0) + 2;
    wait_blocks(&farm, &log, scaled(5, 30) as usize);
    runs.push(Run::running(&log));
    let logs: Vec<String> = runs.iter().map(|r| r.log.clone()).collect();
    let quarantined = quarantines(&farm, &logs);
    let agent_quarantines: usize = (0..agents_n)
        .map(|i| farm.log(&format!("agent-{i}.log")).matches("quarantin").count())
        .sum();
    // When every agent logged that it lost the coordinator, after each stop (the restarted coordinator's
    // stateless reset, or the QUIC idle timeout).
    let noticed: Vec<String> =
        stops.iter().map(|s| ms(lost_watch.nth_after(*s, agents_n))).collect();
    let worst = readmissions.iter().max().copied();
    let ms_list: Vec<String> = readmissions.iter().map(|d| d.as_millis().to_string()).collect();
    judge_steady(
        "coordinator_restarts",
        &farm,
        &runs,
        &[
            ("sigkills", kills.to_string()),
            ("sigints", "1".into()),
            ("agents_noticed_stop_after", format!("[{}]", noticed.join(","))),
            ("readmitted_after_start_ms", format!("[{}]", ms_list.join(","))),
            ("worst_readmission", ms(worst)),
            ("devices_quarantined", (quarantined + agent_quarantines).to_string()),
        ],
        steady_from,
        true,
    );
    assert_eq!(quarantined + agent_quarantines, 0, "an honest device was quarantined");
}

#[test]
fn a_paused_node_only_delays() {
    let farm = Farm::new(BLOCK_MS, false, &["w1", "w2"]);
    let _miner = KillOnDrop(farm.miner(&[], "run.log"));
    wait_blocks(&farm, "run.log", 3);
    let pid = farm.devnet.pid().expect("devnet pid");
    let pause = Duration::from_millis(scaled(2_000, 10_000));
    signal(pid, "-STOP");
    std::thread::sleep(pause);
    signal(pid, "-CONT");
    let resumed = Instant::now();
    wait_blocks(&farm, "run.log", scaled(5, 20) as usize);
    judge(
        "node_paused",
        &farm,
        &[Run::running("run.log")],
        &[
            ("paused", format!("{}ms", pause.as_millis())),
            ("mining_again_after", ms(Some(resumed.elapsed()))),
        ],
    );
}

/// A node that hangs on demand: a TCP proxy to the devnet until [`HangingNode::hang`], then a listener
/// that accepts every connection and never answers (connections already open stop forwarding too).
struct HangingNode {
    addr: SocketAddr,
    hung: Arc<AtomicBool>,
    stop: Arc<AtomicBool>,
}

impl HangingNode {
    fn start(upstream: SocketAddr) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = listener.local_addr().expect("addr");
        listener.set_nonblocking(true).expect("nonblocking");
        let hung = Arc::new(AtomicBool::new(false));
        let stop = Arc::new(AtomicBool::new(false));
        let (hung_flag, stop_flag) = (Arc::clone(&hung), Arc::clone(&stop));
        std::thread::spawn(move || {
            let mut held = Vec::new();
            while !stop_flag.load(Ordering::Relaxed) {
                let Ok((client, _)) = listener.accept() else {
                    std::thread::sleep(Duration::from_millis(5));
                    continue;
                };
                let _ = client.set_nonblocking(false);
                if hung_flag.load(Ordering::Relaxed) {
                    held.push(client);
                    continue;
                }
                let Ok(server) = TcpStream::connect(upstream) else { continue };
                for (from, to) in [
                    (client.try_clone(), server.try_clone()),
                    (server.try_clone(), client.try_clone()),
                ] {
                    let (Ok(from), Ok(to)) = (from, to) else { continue };
                    let (hung, stop) = (Arc::clone(&hung_flag), Arc::clone(&stop_flag));
                    std::thread::spawn(move || forward(from, to, &hung, &stop));
                }
            }
        });
        Self { addr, hung, stop }
    }

    fn hang(&self) {
        self.hung.store(true, Ordering::Relaxed);
    }
}

/// Copies `from` to `to` until either closes; once `hung` is set, holds both open and forwards nothing.
fn forward(mut from: TcpStream, mut to: TcpStream, hung: &AtomicBool, stop: &AtomicBool) {
    let mut buf = [0u8; 16 * 1024];
    loop {
        let n = match std::io::Read::read(&mut from, &mut buf) {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        while hung.load(Ordering::Relaxed) && !stop.load(Ordering::Relaxed) {
            std::thread::sleep(Duration::from_millis(50));
        }
        if stop.load(Ordering::Relaxed) || to.write_all(&buf[..n]).is_err() {
            return;
        }
    }
}

impl Drop for HangingNode {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// Mines with `first` listed before the devnet in `--nodes`, and judges the window.
fn mine_behind(case: &str, farm: &Farm, first: &str) {
    let nodes = format!("{first},{}", farm.devnet.url());
    let started = Instant::now();
    let _miner = KillOnDrop(farm.miner(&["--nodes", &nodes], "run.log"));
    let first_block = wait_for_log(farm, "run.log", "new block", 1, HANG);
    wait_blocks(farm, "run.log", scaled(8, 40) as usize);
    let first_block = first_block.map(|_| started.elapsed());
    judge(case, farm, &[Run::running("run.log")], &[("first_block_after_start", ms(first_block))]);
}

#[test]
fn a_hung_node_is_failed_over() {
    let farm = Farm::new(BLOCK_MS, false, &["w1", "w2"]);
    let node = HangingNode::start(farm.devnet.addr());
    let nodes = format!("http://{},{}", node.addr, farm.devnet.url());
    let _miner = KillOnDrop(farm.miner(&["--nodes", &nodes], "run.log"));
    wait_blocks(&farm, "run.log", 3);
    // The first node stops answering mid-run, with connections open: mining must go on through the second.
    let hung_height = farm.head();
    let seen = mined_heights(&farm.log("run.log"), false).len();
    node.hang();
    let hung_at = Instant::now();
    let next_block =
        wait_for_log(&farm, "run.log", "new block", seen + 1, HANG).map(|_| hung_at.elapsed());
    wait_blocks(&farm, "run.log", scaled(8, 40) as usize);
    judge(
        "node_hung",
        &farm,
        &[Run::running("run.log")],
        &[
            ("hung_at_height", hung_height.to_string()),
            ("next_block_seen_after_hang", ms(next_block)),
        ],
    );
}

/// Block interval of the slow-node case: long enough for a poll (two requests) and a send through it.
const SLOW_NODE_BLOCK_MS: u64 = 4000;
/// How long the slow node holds every request: longer than the pool's 1 s deadline for a quick node.
const SLOW_NODE_DELAY: Duration = Duration::from_millis(1200);

#[test]
fn a_slow_node_is_waited_for_not_abandoned() {
    let farm = Farm::new(SLOW_NODE_BLOCK_MS, false, &["w1", "w2"]);
    let slow = cpc_tests::proxy::Proxy::start(farm.devnet.addr()).expect("proxy");
    slow.set_delay(SLOW_NODE_DELAY);
    // The only node: a client that gives up on it after a fixed 1 s never mines at all.
    let _miner = KillOnDrop(farm.miner(&["--nodes", &slow.url()], "run.log"));
    let started = Instant::now();
    let first_block =
        wait_for_log(&farm, "run.log", "new block", 1, HANG).map(|_| started.elapsed());
    wait_blocks(&farm, "run.log", scaled(3, 12) as usize);
    let timeouts = farm.log("run.log").matches("operation timed out").count();
    judge(
        "node_slow",
        &farm,
        &[Run::running("run.log")],
        &[
            ("request_delay", format!("{}ms", SLOW_NODE_DELAY.as_millis())),
            ("first_block_after_start", ms(first_block)),
            ("timeouts_logged", timeouts.to_string()),
        ],
    );
}

#[test]
fn a_dead_first_node_is_failed_over() {
    let farm = Farm::new(BLOCK_MS, false, &["w1", "w2"]);
    mine_behind("failover", &farm, &format!("http://127.0.0.1:{}", free_port()));
}

#[test]
fn duplicate_identities_are_refused_at_start() {
    let farm = Farm::new(BLOCK_MS, false, &[]);
    let mut by_name = farm.run_command("w1,w1");
    by_name.args(["--compute", "local", "--listen", "127.0.0.1:0"]);
    let (code_by_name, err_by_name) = refused(by_name);
    // A second key file holding w1's key: the same address under another name.
    std::fs::copy(farm.keystore().join("w1.json"), farm.keystore().join("w1copy.json"))
        .expect("copy w1's key file");
    let mut by_key = farm.run_command("w1,w1copy");
    by_key.args(["--compute", "local", "--listen", "127.0.0.1:0"]);
    let (code_by_key, err_by_key) = refused(by_key);
    report(
        "duplicate_identity",
        &[
            ("exit_same_name", format!("{code_by_name:?}")),
            ("exit_same_key", format!("{code_by_key:?}")),
        ],
    );
    assert_eq!(code_by_name, Some(2), "--identity w1,w1: {err_by_name}");
    assert_eq!(code_by_key, Some(2), "w1 and a copy of its key: {err_by_key}");
    assert!(farm.submissions().is_empty(), "nothing was submitted");
}

#[test]
fn a_second_coordinator_on_the_same_data_dir_is_refused() {
    let farm = Farm::new(BLOCK_MS, false, &["w1", "w2"]);
    let _first = KillOnDrop(farm.miner(&[], "run.log"));
    wait_blocks(&farm, "run.log", 2);
    let mut second = farm.run_command("w1,w2");
    second.args(["--compute", "local", "--listen", "127.0.0.1:0"]);
    let (code, stderr) = refused(second);
    wait_blocks(&farm, "run.log", scaled(5, 30) as usize);
    judge(
        "second_coordinator",
        &farm,
        &[Run::running("run.log")],
        &[("second_exit", format!("{code:?}"))],
    );
    assert_eq!(code, Some(1), "{stderr}");
    assert!(stderr.contains("in use by another coordinator"), "{stderr}");
}

#[test]
fn a_deleted_journal_is_refused_and_a_new_one_duplicates_nothing() {
    let farm = Farm::new(BLOCK_MS, false, &["w1", "w2"]);
    let rounds = scaled(2, 5);
    let mut runs = Vec::new();
    let mut refusals = Vec::new();
    let mut extra: &[&str] = &[];
    for round in 0..rounds {
        let log = format!("run-{round}.log");
        let mut miner = KillOnDrop(farm.miner(extra, &log));
        // Kill just after a submission went out.
        let submitted = wait_for_log(&farm, &log, "submitted identity=", 1, HANG);
        assert!(submitted.is_some(), "{log}: nothing submitted:\n{}", farm.log(&log));
        miner.0.kill().expect("SIGKILL");
        let _ = miner.0.wait();
        // Not judged for losses: results journaled but not yet sent go with the deleted journal.
        runs.push(Run::stopped(log));
        for name in ["journal.sqlite", "journal.sqlite-wal", "journal.sqlite-shm"] {
            let _ = std::fs::remove_file(farm.data_dir().join(name));
        }
        let mut again = farm.run_command("w1,w2");
        again.args(["--compute", "local", "--listen", "127.0.0.1:0"]);
        let (code, stderr) = refused(again);
        assert_eq!(code, Some(1), "a restart without --new-journal must refuse: {stderr}");
        refusals.push(code);
        extra = &["--new-journal"];
    }
    let log = "run-final.log".to_owned();
    let _miner = KillOnDrop(farm.miner(extra, &log));
    wait_blocks(&farm, &log, scaled(5, 20) as usize);
    let killed_runs = runs.len();
    runs.push(Run::running(&log));
    judge(
        "journal_deleted",
        &farm,
        &runs[killed_runs..],
        &[("deletions", rounds.to_string()), ("exit_without_new_journal", format!("{refusals:?}"))],
    );
}

#[test]
fn a_hostile_validator_cannot_take_a_block_task() {
    let farm = Farm::new(BLOCK_MS, false, &["w1", "w2"]);
    let validator = TestValidator::start().expect("validator");
    let config = farm.dir.path().join("farm.toml");
    std::fs::write(
        &config,
        format!(
            "[[validators]]\nurl = \"{}\"\nidentity = \"w2\"\nsubmit_to_l1 = true\n",
            validator.url()
        ),
    )
    .expect("config");
    let config = config.to_string_lossy().into_owned();
    let _miner = KillOnDrop(farm.miner(&["--config", &config], "run.log"));
    validator.wait_for_connection(1, HANG).expect("the coordinator connects to the validator");
    let w2 = farm.addresses["w2"].clone();
    let blocks = scaled(8, 40);
    let mut sent = 0;
    let mut height = farm.head();
    let end = height + blocks;
    while height < end {
        let head = farm.head();
        while height < head {
            height += 1;
            let block: Block =
                serde_json::from_value(farm.http(&format!("/block/{height}")).expect("block"))
                    .expect("block json");
            let task = BlockTask::derive(&block.header.hash(), &w2, MATRIX_SIZE, height)
                .expect("w2's block task");
            let mut job = TestJob::new(&format!("evil-{height}"), "evil", 1, 1);
            job.task_id = task.task_id.to_string();
            job.nonce = Some(height);
            validator.send_job(&job);
            sent += 1;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    wait_blocks(&farm, "run.log", 3);
    let answers = validator.received();
    let refused = answers
        .iter()
        .filter(|a| {
            a.value["type"] == "job_error"
                && a.value["error"].as_str().is_some_and(|e| e.contains("is a block task"))
        })
        .count();
    let results = answers.iter().filter(|a| a.value["type"] == "job_result").count();
    // The first block races the first hostile job for the compute service, and the planner then plans only
    // the newest head: a loss there is counted and printed, from the next block on none is allowed.
    let first_mined = mined_heights(&farm.log("run.log"), false).first().copied().unwrap_or(0);
    let steady_from = first_mined + 1;
    // A signed result under a block task id of a block the coordinator planned: none, even for a job sent
    // before the coordinator saw its block (the answer waits for the planner to reach the job's nonce).
    let signed_block_tasks: Vec<&str> = answers
        .iter()
        .filter(|a| a.value["type"] == "job_result")
        .filter_map(|a| a.value["job_id"].as_str())
        .filter(|id| {
            id.strip_prefix("evil-")
                .and_then(|h| h.parse::<u64>().ok())
                .is_some_and(|h| h >= first_mined)
        })
        .collect();
    judge_steady(
        "hostile_validator",
        &farm,
        &[Run::running("run.log")],
        &[
            ("jobs_sent", sent.to_string()),
            ("job_errors_block_task", refused.to_string()),
            ("job_results", results.to_string()),
        ],
        steady_from,
        true,
    );
    assert!(refused > 0, "no job_error for a block task id: {answers:?}");
    assert!(
        signed_block_tasks.is_empty(),
        "signed job_results under block task ids of planned blocks: {signed_block_tasks:?}"
    );
}

#[test]
fn a_metrics_slowloris_does_not_stop_mining() {
    let farm = Farm::new(BLOCK_MS, false, &["w1", "w2"]);
    let metrics = format!("127.0.0.1:{}", free_port());
    let miner = KillOnDrop(farm.miner(&["--metrics", &metrics], "run.log"));
    wait_blocks(&farm, "run.log", 2);
    let pid = miner.0.id();
    let rss_before = rss_kib(pid);
    let addr: SocketAddr = metrics.parse().expect("metrics address");
    let wanted = scaled(300, 3000) as usize;
    let mut held: Vec<TcpStream> = Vec::new();
    for _ in 0..wanted {
        match TcpStream::connect_timeout(&addr, Duration::from_secs(2)) {
            Ok(mut s) => {
                // Half a request, never finished.
                let _ = s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n");
                held.push(s);
            }
            Err(_) => break,
        }
    }
    let opened = held.len();
    wait_blocks(&farm, "run.log", scaled(5, 40) as usize);
    let rss_held = rss_kib(pid);
    // Whether a real scrape still gets through while the slow connections are held.
    let scrape = reqwest::blocking::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()
        .and_then(|c| c.get(format!("http://{metrics}/metrics")).send())
        .map_or_else(|e| format!("failed({e})"), |r| r.status().as_u16().to_string());
    drop(held);
    wait_blocks(&farm, "run.log", 3);
    let rss_after = rss_kib(pid);
    judge(
        "metrics_slowloris",
        &farm,
        &[Run::running("run.log")],
        &[
            ("connections_held", opened.to_string()),
            ("scrape_while_held", scrape),
            ("rss_kib_before", format!("{rss_before:?}")),
            ("rss_kib_held", format!("{rss_held:?}")),
            ("rss_kib_after", format!("{rss_after:?}")),
        ],
    );
}

/// Opens `count` QUIC connections to the coordinator that pin its certificate but never join: half send
/// nothing, half a Hello with a wrong token. They are held until `stop` is set.
fn handshake_flood(endpoint: &FarmEndpoint, count: usize, stop: Arc<AtomicBool>) -> usize {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("runtime");
    let pinned = cpc_agent::tls::parse_fingerprint(&endpoint.fingerprint).expect("fingerprint");
    let addr: SocketAddr = endpoint.quic.parse().expect("address");
    runtime.block_on(async move {
        let (client, _) = cpc_agent::tls::client_config(pinned, quinn::TransportConfig::default())
            .expect("client config");
        let quic = quinn::Endpoint::client("127.0.0.1:0".parse().expect("bind")).expect("endpoint");
        let mut attempts = Vec::new();
        for i in 0..count {
            let (quic, client) = (quic.clone(), client.clone());
            attempts.push(tokio::spawn(async move {
                let conn = quic.connect_with(client, addr, "cpc-coordinator").ok()?.await.ok()?;
                if i % 2 == 0 {
                    let (mut send, _recv) = conn.open_bi().await.ok()?;
                    let hello = Hello {
                        protocol_version: PROTOCOL_VERSION,
                        token: "not-the-token".into(),
                        agent_name: format!("flood-{i}"),
                        devices: Vec::<DeviceAdvert>::new(),
                    };
                    cpc_common::quic::write_frame(&mut send, &hello).await.ok()?;
                }
                Some(conn)
            }));
        }
        let mut connected = Vec::new();
        for a in attempts {
            if let Ok(Some(conn)) = a.await {
                connected.push(conn);
            }
        }
        let n = connected.len();
        while !stop.load(Ordering::Relaxed) {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        drop(connected);
        quic.close(0u32.into(), b"flood over");
        n
    })
}

#[test]
fn a_handshake_flood_keeps_an_honest_agent_out_only_briefly() {
    let farm = Farm::new(BLOCK_MS, false, &["w1", "w2"]);
    let endpoint = farm.farm_endpoint();
    let coordinator = KillOnDrop(farm.farm_coordinator(&endpoint, 1, &[], "run.log"));
    // Flood once it listens.
    assert!(wait_for_log(&farm, "run.log", "farm listening on", 1, HANG).is_some());
    let pid = coordinator.0.id();
    let rss_before = rss_kib(pid);
    let count = scaled(200, 500) as usize;
    let stop = Arc::new(AtomicBool::new(false));
    let flood = {
        let (endpoint, stop) = (endpoint.clone(), Arc::clone(&stop));
        std::thread::spawn(move || handshake_flood(&endpoint, count, stop))
    };
    std::thread::sleep(Duration::from_millis(500));
    let joined = Instant::now();
    let _agent = farm.agent(&endpoint, 0, &[]);
    let admitted =
        wait_for_log(&farm, "run.log", "agent admitted", 1, HANG).map(|_| joined.elapsed());
    assert!(admitted.is_some(), "the honest agent never got in:\n{}", farm.log("run.log"));
    wait_blocks(&farm, "run.log", scaled(5, 20) as usize);
    let rss_flooded = rss_kib(pid);
    stop.store(true, Ordering::Relaxed);
    let connected = flood.join().expect("flood thread");
    // An agent dropped during the flood (its heartbeats starved) must get back in once the flood is over.
    let drops = farm.log("run.log").matches("no heartbeat: dropping the agent").count();
    let back = wait_for_log(&farm, "run.log", "agent admitted", drops + 1, HANG);
    assert!(back.is_some(), "the honest agent did not get back in:\n{}", farm.log("run.log"));
    let steady_from = farm.head() + 2;
    wait_blocks(&farm, "run.log", scaled(5, 20) as usize);
    let rss_after = rss_kib(pid);
    let warns = farm.log("run.log").lines().filter(|l| l.contains(" WARN ")).count();
    judge_steady(
        "handshake_flood",
        &farm,
        &[Run::running("run.log")],
        &[
            ("connections", format!("{connected}/{count}")),
            ("honest_agent_dropped_during_flood", drops.to_string()),
            ("honest_agent_admitted_after", ms(admitted)),
            ("rss_kib_before", format!("{rss_before:?}")),
            ("rss_kib_flooded", format!("{rss_flooded:?}")),
            ("rss_kib_after", format!("{rss_after:?}")),
            ("warn_lines", warns.to_string()),
        ],
        steady_from,
        true,
    );
}

#[test]
fn a_corrupting_device_is_quarantined_and_the_chain_stays_right() {
    let farm = Farm::new(BLOCK_MS, false, &["w1", "w2"]);
    let endpoint = farm.farm_endpoint();
    let _coordinator = KillOnDrop(farm.farm_coordinator(&endpoint, 1, &[], "run.log"));
    // The corrupting device alone first: a block task of n = 64 runs whole on the fastest device, so with an
    // honest one beside it the corrupting one might never be given a shard.
    let _corrupt = farm.agent(&endpoint, 1, &["--fault-injection", "1"]);
    let admitted = wait_for_log(&farm, "run.log", "agent admitted", 1, HANG);
    assert!(admitted.is_some(), "the agent never got in:\n{}", farm.log("run.log"));
    let working = Instant::now();
    let caught =
        wait_for_log(&farm, "run.log", "device quarantined", 1, HANG).map(|_| working.elapsed());
    assert!(
        caught.is_some(),
        "the corrupting device was never quarantined:\n{}",
        farm.log("run.log")
    );
    let _honest = farm.agent(&endpoint, 0, &[]);
    assert!(wait_for_log(&farm, "run.log", "agent admitted", 2, HANG).is_some());
    // Judged from the first block after the honest device joined: before, the farm had no usable device.
    let honest_from = farm.head() + 1;
    wait_blocks(&farm, "run.log", scaled(6, 30) as usize);
    let quarantined = quarantines(&farm, &["run.log".to_owned()]);
    let mut run = Run::running("run.log");
    run.from = honest_from;
    // Spot checks sample rows and elements: results the corrupting device made before it was caught may be
    // on chain (counted and printed); none from the honest device's blocks may be wrong.
    let wrong = wrong_results(&farm);
    let (wrong_after, wrong_before): (Vec<_>, Vec<_>) =
        wrong.iter().cloned().partition(|(_, h)| *h >= honest_from);
    let landed_before = farm.submissions().keys().filter(|(_, h)| *h < honest_from).count();
    judge_steady(
        "corrupting_device",
        &farm,
        &[run],
        &[
            ("quarantined_after_admission", ms(caught)),
            ("devices_quarantined", quarantined.to_string()),
            ("wrong_on_chain_before_quarantine", format!("{}/{landed_before}", wrong_before.len())),
        ],
        honest_from,
        false,
    );
    assert!(wrong_after.is_empty(), "wrong results after the quarantine: {wrong_after:?}");
    assert_eq!(
        quarantined,
        1,
        "only the corrupting device is quarantined:\n{}",
        farm.log("run.log")
    );
}

/// The 240-block soak: two agents, no fault, every block counted (long version only).
#[test]
fn soak_240_blocks() {
    if !long() {
        eprintln!("FAULTS soak: skipped (set CPC_FAULTS_LONG=1)");
        return;
    }
    let farm = Farm::new(BLOCK_MS, false, &["w1", "w2"]);
    let endpoint = farm.farm_endpoint();
    let coordinator = KillOnDrop(farm.farm_coordinator(&endpoint, 2, &[], "run.log"));
    let _agents: Vec<KillOnDrop> = (0..2).map(|i| farm.agent(&endpoint, i, &[])).collect();
    let rss_start = {
        wait_blocks(&farm, "run.log", 2);
        rss_kib(coordinator.0.id())
    };
    wait_blocks(&farm, "run.log", 240);
    let rss_end = rss_kib(coordinator.0.id());
    judge(
        "soak",
        &farm,
        &[Run::running("run.log")],
        &[("rss_kib_start", format!("{rss_start:?}")), ("rss_kib_end", format!("{rss_end:?}"))],
    );
}
