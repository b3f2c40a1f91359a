//! `cpc-coordinator bench farm` as an operator runs it: real `cpc-agent --backend simulated` processes over
//! loopback QUIC. Checks the report's structure and counts (never its timings), and that no agent outlives
//! the command, whether it ends or is interrupted.

use cpc_tests::harness::{coordinator_command, locate_workspace_binary};
use serde_json::Value;
use std::{
    io::{BufRead as _, BufReader},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

/// Longest the interrupted bench may take to exit before the test fails instead of hanging.
const EXIT_LIMIT: Duration = Duration::from_secs(60);

/// `cpc-coordinator bench farm ARGS`, with `--agent-bin` where `CPC_AGENT_BIN` names one (else the command
/// finds `cpc-agent` next to itself, as an operator's install has it).
fn bench_farm(args: &[&str]) -> Command {
    let mut cmd = coordinator_command();
    cmd.args(["bench", "farm"]).args(args);
    if std::env::var_os("CPC_AGENT_BIN").is_some() {
        let agent = locate_workspace_binary("cpc-agent", "CPC_AGENT_BIN").expect("CPC_AGENT_BIN");
        cmd.arg("--agent-bin").arg(agent);
    }
    cmd
}

/// Processes whose command line holds the agent names a bench with process id `pid` gives its agents.
fn agents_of(pid: u32) -> Vec<u32> {
    let marker = format!("bench-farm-{pid}-");
    let Ok(entries) = std::fs::read_dir("/proc") else { return Vec::new() };
    entries
        .filter_map(Result::ok)
        .filter_map(|e| e.file_name().to_str().and_then(|name| name.parse::<u32>().ok()))
        .filter(|p| {
            std::fs::read(format!("/proc/{p}/cmdline"))
                .is_ok_and(|cmdline| String::from_utf8_lossy(&cmdline).contains(&marker))
        })
        .collect()
}

#[test]
fn a_small_farm_reports_every_block_and_result() {
    let out = bench_farm(&[
        "--agents",
        "2",
        "--devices-per-agent",
        "2",
        "--identities",
        "8",
        "--matrix-size",
        "64",
        "--blocks",
        "3",
        "--json",
    ])
    .output()
    .expect("spawn cpc-coordinator");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "bench farm failed ({}):\n{stderr}", out.status);
    assert!(
        stderr.contains("SIMULATED DEVICES"),
        "the agents say their results are wrong:\n{stderr}"
    );
    let report: Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&out.stdout)));
    for (field, want) in [
        ("agents", 2),
        ("devices_per_agent", 2),
        ("devices", 4),
        ("identities", 8),
        ("matrix_size", 64),
        ("blocks", 3),
    ] {
        assert_eq!(report[field].as_u64(), Some(want), "{field}: {report}");
    }
    assert_eq!(report["device_tops"].as_f64(), Some(660.0));
    let task = 2.0 * 64f64.powi(3) / 660e12;
    assert!(report["task_seconds"].as_f64().is_some_and(|t| (t - task).abs() < 1e-15), "{report}");
    let Some(blocks) = report["per_block"].as_array() else { panic!("no per_block: {report}") };
    assert_eq!(blocks.len(), 3);
    let mut hashes = std::collections::BTreeSet::new();
    for (i, block) in blocks.iter().enumerate() {
        assert_eq!(block["block"].as_u64(), Some(i as u64 + 1), "{block}");
        hashes.insert(block["block_hash"].as_str().expect("block hash").to_owned());
        assert_eq!(block["results"].as_u64(), Some(8), "{block}");
        let ready = block["ready_seconds"].as_array().expect("ready_seconds");
        assert_eq!(ready.len(), 8, "one ready time per identity: {block}");
        let all_ready = block["all_ready_seconds"].as_f64().expect("all_ready_seconds");
        assert!(ready.iter().all(|r| r.as_f64().is_some_and(|r| r <= all_ready)), "{block}");
        // One shard per task at least (n = 64 runs whole on one device; a retry would add more).
        assert!(block["shards_dispatched"].as_u64().is_some_and(|s| s >= 8), "{block}");
        let mode = block["ideal_mode"].as_str().expect("ideal_mode");
        assert!(mode == "whole" || mode == "sharded", "{block}");
        for field in [
            "ideal_seconds",
            "shards_per_second",
            "round_trip_p50_seconds",
            "round_trip_p99_seconds",
        ] {
            assert!(block[field].as_f64().is_some(), "{field}: {block}");
        }
        if cfg!(target_os = "linux") {
            assert!(block["coordinator_cpu_seconds"].as_f64().is_some(), "{block}");
            assert!(block["coordinator_rss_bytes"].as_u64().is_some_and(|b| b > 0), "{block}");
        }
    }
    assert_eq!(hashes.len(), 3, "a made-up hash per block");
    for field in ["all_ready_p50_seconds", "all_ready_p99_seconds"] {
        assert!(report[field].as_f64().is_some(), "{field}: {report}");
    }
}

#[test]
fn an_interrupted_bench_stops_its_agents() {
    if !cfg!(target_os = "linux") {
        return; // the agents are found through /proc
    }
    let mut bench = bench_farm(&[
        "--agents",
        "2",
        "--devices-per-agent",
        "1",
        "--identities",
        "2",
        "--matrix-size",
        "16",
        "--blocks",
        "100000",
    ])
    .stdout(Stdio::piped())
    .stderr(Stdio::piped())
    .spawn()
    .expect("spawn cpc-coordinator");
    let pid = bench.id();
    // Both pipes are drained to their end (a full pipe would block the bench); the first block's line says
    // that the agents are up and jobs run.
    let (first_block, seen) = std::sync::mpsc::channel();
    let stdout = BufReader::new(bench.stdout.take().expect("stdout"));
    let stdout = std::thread::spawn(move || {
        for line in stdout.lines().map_while(Result::ok) {
            if line.starts_with("block 1/") {
                let _ = first_block.send(());
            }
        }
    });
    let mut stderr = bench.stderr.take().expect("stderr");
    let stderr = std::thread::spawn(move || {
        let mut text = String::new();
        let _ = std::io::Read::read_to_string(&mut stderr, &mut text);
        text
    });
    assert!(seen.recv_timeout(EXIT_LIMIT).is_ok(), "no block ran");
    assert_eq!(agents_of(pid).len(), 2, "two agent processes run");

    let signal = Command::new("kill").args(["-INT", &pid.to_string()]).status().expect("kill");
    assert!(signal.success());
    let deadline = Instant::now() + EXIT_LIMIT;
    let status = loop {
        if let Some(status) = bench.try_wait().expect("wait") {
            break status;
        }
        assert!(Instant::now() < deadline, "bench farm did not exit on SIGINT");
        std::thread::sleep(Duration::from_millis(20));
    };
    stdout.join().expect("stdout reader");
    let stderr = stderr.join().expect("stderr reader");
    assert!(!status.success(), "an interrupted bench fails");
    assert!(stderr.contains("interrupted"), "{stderr}");
    assert_eq!(agents_of(pid), Vec::<u32>::new(), "no agent outlives the bench");
}
