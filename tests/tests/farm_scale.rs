//! Farm v2 end to end: a real devnet, 200 funded identities, `cpc-coordinator run --compute farm` and real
//! `cpc-agent` processes (CPU backend, one thread each, so that two agents have twice the compute of one on
//! any machine with two cores). Every identity's task of a block runs at once on the farm's devices, so
//! every identity gets its SUBMIT_RESULT into every block of the window; with two agents a block's tasks
//! are ready sooner. The times are reported, not asserted (speed lives in benchmarks and closing notes).

mod support;

use cpc_coordinator::{farm::Identity, mining::journal::Journal};
use cpc_tests::harness::{coordinator_command, locate_workspace_binary};
use std::{
    process::{Command, Stdio},
    time::Duration,
};
use support::{KillOnDrop, free_port, load::Load};

/// `cpc-coordinator run --compute farm` for every identity of `load`, and `agents` one-thread CPU agents.
fn farm(
    load: &Load,
    agents: usize,
    n: u32,
    metrics: u16,
    tag: &str,
) -> (KillOnDrop, Vec<KillOnDrop>) {
    let data = load.dir.path().join(format!("data-{tag}"));
    std::fs::create_dir_all(&data).expect("data dir");
    drop(Journal::open(&data.join("journal.sqlite")).expect("journal"));
    let identity = Identity::load_or_create(&data).expect("coordinator identity");
    let quic = format!("127.0.0.1:{}", free_port());
    let log = std::fs::File::create(load.dir.path().join(format!("run-{tag}.log"))).expect("log");
    let miner = KillOnDrop(
        coordinator_command()
            .args(["--node", &load.devnet.url(), "--keystore"])
            .arg(load.dir.path().join("keys"))
            .args(["run", "--identity", &load.names.join(","), "--data-dir"])
            .arg(&data)
            .args(["--compute", "farm", "--listen", &quic, "--min-agents", &agents.to_string()])
            .args(["--matrix-size", &n.to_string(), "--poll-interval-ms", "100"])
            .args(["--metrics", &format!("127.0.0.1:{metrics}")])
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn miner"),
    );
    let agent_bin =
        locate_workspace_binary("cpc-agent", "CPC_AGENT_BIN").expect("cpc-agent binary");
    let agents = (0..agents)
        .map(|i| {
            let log = std::fs::File::create(load.dir.path().join(format!("agent-{tag}-{i}.log")))
                .expect("log");
            KillOnDrop(
                Command::new(&agent_bin)
                    .args(["--coordinator", &quic, "--token", &identity.token])
                    .args(["--coordinator-fingerprint", &identity.fingerprint()])
                    .args(["--backend", "cpu", "--name", &format!("agent-{i}")])
                    .env("RAYON_NUM_THREADS", "1")
                    .env("RUST_LOG", "warn")
                    .stdout(Stdio::null())
                    .stderr(log)
                    .spawn()
                    .expect("spawn agent"),
            )
        })
        .collect();
    (miner, agents)
}

/// `cpcfarm_task_compute_seconds`'s sum and count (block seen and planned → result ready, per task).
fn task_seconds(metrics: u16) -> (f64, f64) {
    let text = reqwest::blocking::get(format!("http://127.0.0.1:{metrics}/metrics"))
        .and_then(|r| r.text())
        .unwrap_or_default();
    let value = |name: &str| {
        text.lines().find_map(|l| l.strip_prefix(name)?.trim().parse::<f64>().ok()).unwrap_or(0.0)
    };
    (value("cpcfarm_task_compute_seconds_sum"), value("cpcfarm_task_compute_seconds_count"))
}

/// Mines `blocks` blocks after a warm-up with `agents` agents; answers the mean time from a block to each
/// task's result, and checks every identity's result for every block of the window landed once.
fn mine(load: &Load, agents: usize, n: u32, blocks: u64, tag: &str) -> f64 {
    let metrics = free_port();
    let (_miner, _agents) = farm(load, agents, n, metrics, tag);
    let start = load.height();
    load.wait_for_height(start + 3);
    let (h0, before) = (load.height(), task_seconds(metrics));
    load.wait_for_height(h0 + blocks);
    let (h1, after) = (load.height(), task_seconds(metrics));
    load.wait_for_height(h1 + 2);
    let results = load.results(h0, h1 + 2);
    let missing: Vec<(String, u64)> = load
        .addresses
        .iter()
        .flat_map(|a| (h0..h1).map(move |h| (a.clone(), h)))
        .filter(|key| !results.contains_key(key))
        .collect();
    let _ = std::fs::copy(
        load.dir.path().join(format!("run-{tag}.log")),
        std::env::temp_dir().join(format!("farm_scale-run-{tag}.log")),
    );
    let duplicates = results.values().filter(|n| **n > 1).count();
    assert_eq!(duplicates, 0, "duplicated results");
    assert!(
        missing.is_empty(),
        "{} of {} results missing with {agents} agent(s), e.g. {:?}\n{}",
        missing.len(),
        load.addresses.len() as u64 * (h1 - h0),
        &missing[..missing.len().min(5)],
        tail(
            &std::fs::read_to_string(load.dir.path().join(format!("run-{tag}.log")))
                .unwrap_or_default()
        )
    );
    let tasks = after.1 - before.1;
    let mean = (after.0 - before.0) / tasks.max(1.0);
    eprintln!(
        "{agents} agent(s): {} identities x {} blocks all included; {tasks} tasks, mean block-to-result {:.0} ms",
        load.addresses.len(),
        h1 - h0,
        mean * 1000.0
    );
    mean
}

/// The last lines of a log, each cut short (the start-up line names every identity).
fn tail(log: &str) -> String {
    let lines: Vec<&str> = log.lines().collect();
    let from = lines.len().saturating_sub(30);
    let panics = lines.iter().filter(|l| l.contains("panicked"));
    panics.chain(&lines[from..]).map(|l| &l[..l.len().min(300)]).collect::<Vec<_>>().join("\n")
}

/// CI's size: 60 identities at n=64 on two agents, every result of every block included.
#[test]
fn every_identity_gets_its_result_into_every_block() {
    mine(&Load::new(60, Duration::from_secs(3), None), 2, 64, 4, "ci");
}

/// The size: 200 identities at n=256 (a few milliseconds of one core per task), with one agent and
/// with two: every result of every block included both times, and the mean time from a block to each
/// result printed for both.
#[test]
#[ignore = "full-size run (about 2 minutes, wants a quiet machine): cargo test -p cpc-tests --test farm_scale -- --ignored --nocapture"]
fn two_hundred_identities_every_block_and_a_second_agent_shortens_each_block() {
    // A chain of its own for each run: the first run's transactions still in the mempool would move the
    // second run's nonces.
    let one = mine(&Load::new(200, Duration::from_secs(5), None), 1, 256, 4, "one");
    let two = mine(&Load::new(200, Duration::from_secs(5), None), 2, 256, 4, "two");
    eprintln!("mean block-to-result: 1 agent {:.0} ms, 2 agents {:.0} ms", one * 1e3, two * 1e3);
}
