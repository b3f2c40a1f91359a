//! Control of a running farm (issue 15), end to end against a real `cpc-devnet`, with `cpc-coordinator run`
//! and `cpc-agent` as real processes:
//! - SIGHUP re-reads the config: an identity added to it mines from the next block, and the identity that
//!   was mining loses and duplicates nothing (judged by scanning the chain);
//! - an invalid config, a missing key and a setting that needs a restart are each refused with the
//!   reason, and mining goes on with the old config;
//! - `identities` reads the journal beside a running coordinator and gives each miss its reason:
//!   `underfunded` for an identity with no funds, `no_device` for blocks superseded while the farm had no
//!   agent, after which the agent's blocks are included;
//! - the admin API (`run --admin`) does the same: `farm reload` adds an identity, `farm identities` lists
//!   it, and a reload without the admin token, or with a wrong one, is refused and changes nothing;
//! - SIGTERM while a validator job computes on the farm leaves the job for the next start, which answers
//!   it.

mod support;

use serde_json::Value;
use std::{
    collections::BTreeSet,
    path::Path,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};
use support::{Farm, KillOnDrop, MATRIX_SIZE, check_chain, mined_heights};
use tokio_util::sync::CancellationToken;

/// Longest any wait may take before the test is declared hung (a liveness bound, not a measurement).
const HANG: Duration = Duration::from_secs(90);
/// How long the results of the judged blocks may take to land before they count as lost.
const SETTLE: Duration = Duration::from_secs(20);

/// `cpc-coordinator run --config CONFIG`, computing locally: the identities come from the file only, so a
/// reload can change them (a flag would keep winning over the file).
fn configured_miner(farm: &Farm, config: &Path, log: &str) -> KillOnDrop {
    configured_miner_with(farm, config, log, &[])
}

/// [`configured_miner`] with `extra` arguments for `run`.
fn configured_miner_with(farm: &Farm, config: &Path, log: &str, extra: &[&str]) -> KillOnDrop {
    let log = std::fs::File::create(farm.dir.path().join(log)).expect("log file");
    KillOnDrop(
        farm.run_base()
            .arg("--config")
            .arg(config)
            .args(["--compute", "local", "--listen", "127.0.0.1:0"])
            .args(extra)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn miner"),
    )
}

fn write_config(path: &Path, text: &str) {
    std::fs::write(path, text).expect("write config");
}

fn signal(child: &Child, name: &str) {
    let sent = Command::new("kill")
        .arg(format!("-{name}"))
        .arg(child.id().to_string())
        .status()
        .expect("kill");
    assert!(sent.success(), "kill -{name}");
}

/// Waits until `needle` occurs `count` times in log `name`.
fn wait_for_log(farm: &Farm, name: &str, needle: &str, count: usize) {
    assert!(
        support::wait_for_log(farm, name, needle, count, HANG).is_some(),
        "no {count}× `{needle}` in {name}:\n{}",
        farm.log(name)
    );
}

/// The heights the log says the miner saw as the head after the first line holding `after`, leaving out
/// the newest two (their results may still be on their way when the chain is judged).
fn heights_after(log: &str, after: &str) -> BTreeSet<u64> {
    let start = log.find(after).unwrap_or_else(|| panic!("`{after}` not in the log:\n{log}"));
    let mut heights = mined_heights(&log[start..], false);
    heights.truncate(heights.len().saturating_sub(2));
    heights.into_iter().collect()
}

/// Heights of `expected` for which `identity` has no included result, after waiting up to [`SETTLE`].
fn lost(farm: &Farm, identity: &str, expected: &BTreeSet<u64>) -> Vec<u64> {
    let address = &farm.addresses[identity];
    let deadline = Instant::now() + SETTLE;
    loop {
        let subs = farm.submissions();
        let lost: Vec<u64> = expected
            .iter()
            .copied()
            .filter(|h| !subs.contains_key(&(address.clone(), *h)))
            .collect();
        if lost.is_empty() || Instant::now() > deadline {
            return lost;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Stops the miner with SIGTERM and checks it exits 0.
fn stop(mut miner: KillOnDrop) {
    signal(&miner.0, "TERM");
    let deadline = Instant::now() + HANG;
    let status = loop {
        if let Some(status) = miner.0.try_wait().expect("try_wait") {
            break status;
        }
        assert!(Instant::now() < deadline, "the miner did not stop on SIGTERM");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(status.success(), "the miner exits 0 on SIGTERM: {status}");
}

#[test]
fn sighup_adds_an_identity_which_mines_from_the_next_block_and_nothing_is_lost_for_the_other() {
    let farm = Farm::new(300, false, &["w1", "w2"]);
    let config = farm.dir.path().join("farm.toml");
    write_config(&config, "identities = [\"w1\"]\n");
    let miner = configured_miner(&farm, &config, "run.log");
    wait_for_log(&farm, "run.log", "submission included", 3);

    write_config(&config, "identities = [\"w1\", \"w2\"]\n");
    signal(&miner.0, "HUP");
    wait_for_log(&farm, "run.log", "SIGHUP: config reloaded: added [w2]", 1);
    // Some blocks with both identities, then judge every block seen since each one began.
    let log = farm.log("run.log");
    let before = mined_heights(&log, false).len();
    wait_for_log(&farm, "run.log", "new block", before + 6);
    let log = farm.log("run.log");
    let w1_heights = heights_after(&log, "new block");
    let w2_heights = heights_after(&log, "SIGHUP: config reloaded");
    assert!(w2_heights.len() >= 3, "too few blocks after the reload: {w2_heights:?}");
    assert_eq!(lost(&farm, "w1", &w1_heights), Vec::<u64>::new(), "w1 lost blocks:\n{log}");
    assert_eq!(lost(&farm, "w2", &w2_heights), Vec::<u64>::new(), "w2 lost blocks:\n{log}");
    stop(miner);
    // No result twice, every result the reference computation.
    check_chain(&farm);
}

#[test]
fn an_invalid_reload_is_refused_with_its_reason_and_mining_goes_on() {
    let farm = Farm::new(300, false, &["w1", "w2"]);
    let config = farm.dir.path().join("farm.toml");
    write_config(&config, "identities = [\"w1\", \"w2\"]\n");
    let miner = configured_miner(&farm, &config, "run.log");
    wait_for_log(&farm, "run.log", "submission included", 2);

    let refusals = [
        ("identities = [\"w1\", \"w2\"]\ngas_price = 1\n", "invalid gas_price 1"),
        ("identities = [\"w1\", \"ghost\"]\n", "ghost"),
        (
            "identities = [\"w1\"]\nmetrics = \"127.0.0.1:1\"\n",
            "metrics cannot change without a restart",
        ),
        ("identities = [\"w1\"\n", "is invalid"),
    ];
    for (i, (text, reason)) in refusals.iter().enumerate() {
        write_config(&config, text);
        signal(&miner.0, "HUP");
        wait_for_log(&farm, "run.log", "SIGHUP: reload refused", i + 1);
        let log = farm.log("run.log");
        let refusal = log
            .lines()
            .filter(|l| l.contains("SIGHUP: reload refused"))
            .nth(i)
            .expect("refusal line");
        assert!(refusal.contains(reason), "refused without `{reason}`: {refusal}");
        assert!(refusal.contains("the running config stays"), "{refusal}");
    }
    assert!(!farm.log("run.log").contains("config reloaded"), "nothing was applied");
    // Mining goes on for both identities with the old config.
    let log = farm.log("run.log");
    let before = mined_heights(&log, false).len();
    wait_for_log(&farm, "run.log", "new block", before + 5);
    let log = farm.log("run.log");
    let after = heights_after(&log, "SIGHUP: reload refused");
    assert!(!after.is_empty());
    for identity in ["w1", "w2"] {
        assert_eq!(lost(&farm, identity, &after), Vec::<u64>::new(), "{identity}:\n{log}");
    }
    stop(miner);
    check_chain(&farm);
}

/// `cpc-coordinator identities --json` on the farm's data dir.
fn identities(farm: &Farm, extra: &[&str]) -> Value {
    let mut args = vec!["--json", "identities", "--data-dir"];
    let data_dir = farm.data_dir();
    let data_dir = data_dir.to_str().expect("utf-8 path");
    args.push(data_dir);
    args.extend_from_slice(extra);
    let out = farm.cli(&args);
    serde_json::from_slice(&out.stdout).expect("report JSON")
}

fn account<'a>(report: &'a Value, name: &str) -> &'a Value {
    report["identities"]
        .as_array()
        .expect("identities")
        .iter()
        .find(|a| a["name"] == name)
        .unwrap_or_else(|| panic!("{name} not in {report}"))
}

fn missed(account: &Value, reason: &str) -> u64 {
    account["missed_by_reason"][reason].as_u64().unwrap_or(0)
}

#[test]
fn identities_shows_underfunded_for_an_identity_without_funds_while_the_miner_runs() {
    let farm = Farm::new(300, false, &["w1"]);
    let miner = KillOnDrop(farm.miner(&[], "run.log"));
    wait_for_log(&farm, "run.log", "insufficient balance", 2);
    wait_for_log(&farm, "run.log", "submission included", 2);
    // Beside the running miner, which holds the data dir's lock.
    let report = identities(&farm, &[]);
    assert_eq!(report["head_from"], "node", "{report}");
    let w1 = account(&report, "w1");
    let w2 = account(&report, "w2");
    assert!(w1["included"].as_u64().expect("count") >= 2, "{w1}");
    assert_eq!(missed(w1, "underfunded"), 0, "{w1}");
    assert!(w1["last_included_block"].is_u64(), "{w1}");
    assert_ne!(w1["fees_spent"], "0", "{w1}");
    assert!(missed(w2, "underfunded") >= 1, "{w2}");
    assert_eq!(w2["included"], 0, "{w2}");
    assert_eq!(w2["balance"], "0", "{w2}");
    let miss = w2["misses"]
        .as_array()
        .expect("misses")
        .iter()
        .find(|m| m["reason"] == "underfunded")
        .expect("an underfunded miss");
    assert!(miss["detail"].as_str().is_some_and(|d| d.contains("needed")), "{miss}");
    stop(miner);

    // `--since` a height past every task: nothing in the window, the identities still listed.
    let head = (farm.head() + 1).to_string();
    let later = identities(&farm, &["--since", &head, "--offline"]);
    assert_eq!(later["head_from"], "journal", "{later}");
    assert_eq!(account(&later, "w1")["blocks_seen"], 0, "{later}");
    let recent = identities(&farm, &["--since", "1h", "--offline"]);
    assert_eq!(account(&recent, "w2")["blocks_seen"], account(&report, "w2")["blocks_seen"]);
}

#[test]
fn identities_shows_no_device_for_blocks_superseded_while_no_agent_was_connected() {
    let farm = Farm::new(300, false, &["w1", "w2"]);
    let endpoint = farm.farm_endpoint();
    let miner = KillOnDrop(farm.farm_coordinator(&endpoint, 0, &[], "run.log"));
    // Blocks come and go with no agent: each supersedes the one before.
    wait_for_log(&farm, "run.log", "new block", 4);
    let report = identities(&farm, &[]);
    for name in ["w1", "w2"] {
        let a = account(&report, name);
        assert!(missed(a, "no_device") >= 2, "{a}");
        assert_eq!(missed(a, "superseded"), 0, "every miss so far is for want of a device: {a}");
        assert_eq!(a["included"], 0, "{a}");
    }
    let _agent = farm.agent(&endpoint, 0, &[]);
    wait_for_log(&farm, "run.log", "submission included", 4);
    let report = identities(&farm, &[]);
    for name in ["w1", "w2"] {
        let a = account(&report, name);
        assert!(a["included"].as_u64().expect("count") >= 1, "{a}");
        assert!(missed(a, "no_device") >= 2, "{a}");
    }
    stop(miner);
}

/// The library surface the admin API mounts: [`MiningControl`] on a node run in this process answers the
/// `identities` report with its configured identities, applies a reload that adds one, refuses one that
/// needs a restart, naming the setting, and retires a removed identity whose results still settle.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_mining_control_handle_reports_identities_and_reloads_in_place() {
    use cpc_coordinator::mining::{
        self, ReloadError, RunEvent, RunReport,
        accounting::IdentitiesReport,
        control,
        settings::{Layer, Settings, Sources},
    };
    let farm = tokio::task::block_in_place(|| Farm::new(300, false, &["w1", "w2"]));
    let config = farm.dir.path().join("farm.toml");
    write_config(&config, "identities = [\"w1\"]\n");
    let flags = Layer {
        config: Some(config.clone()),
        nodes: vec![farm.devnet.url()],
        keystore: Some(farm.keystore()),
        data_dir: Some(farm.data_dir()),
        compute: Some("local".into()),
        listen: Some("127.0.0.1:0".parse().expect("addr")),
        matrix_size: Some(MATRIX_SIZE),
        poll_interval_ms: Some(40),
        ..Layer::default()
    };
    let sources = Sources::read(flags.clone(), Layer::default()).expect("config");
    let settings = Settings::resolve(&sources).expect("valid settings");
    let (control, inbox) = control::channel(Some((flags, Layer::default())));
    let stop = CancellationToken::new();
    let node = mining::run_controlled(settings, inbox, stop.clone(), |_: RunEvent<'_>| {});

    let drive = async {
        let included = |report: &IdentitiesReport, name: &str| {
            report.identities.iter().find(|a| a.name == name).map_or(0, |a| a.included)
        };
        let wait_for = |name: &'static str, count: u64| {
            let control = control.clone();
            async move {
                let deadline = Instant::now() + HANG;
                loop {
                    if let Ok(report) = control.identities(None, 10).await
                        && included(&report, name) >= count
                    {
                        return report;
                    }
                    assert!(Instant::now() < deadline, "{name} never had {count} included");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        };
        let report = wait_for("w1", 2).await;
        assert_eq!(report.head_from, "node");
        assert!(report.identities.iter().all(|a| a.name != "w2"), "w2 is not configured yet");

        write_config(&config, "identities = [\"w1\", \"w2\"]\n");
        let outcome = control.reload().await.expect("reload applies");
        assert_eq!((outcome.added.as_slice(), outcome.removed.len()), (&["w2".to_owned()][..], 0));
        wait_for("w2", 2).await;

        write_config(&config, "identities = [\"w1\", \"w2\"]\njournal_retention_days = 1\n");
        match control.reload().await {
            Err(ReloadError::NotInPlace(names)) => assert_eq!(names, ["journal_retention_days"]),
            other => panic!("a retention change must be refused: {other:?}"),
        }
        let w1 = included(&control.identities(None, 10).await.expect("report"), "w1");
        wait_for("w1", w1 + 2).await;

        // Removing w1: no new tasks for it, and what it has journaled still settles on chain.
        write_config(&config, "identities = [\"w2\"]\n");
        let outcome = control.reload().await.expect("reload applies");
        assert_eq!(outcome.removed, ["w1"]);
        let report = control.identities(None, 10).await.expect("report");
        let seen = |report: &IdentitiesReport, name: &str| {
            report.identities.iter().find(|a| a.name == name).map(|a| (a.blocks_seen, a.pending))
        };
        let (w1_seen, _) = seen(&report, "w1").expect("a removed identity stays listed");
        let w2 = included(&report, "w2");
        let report = wait_for("w2", w2 + 4).await;
        let (w1_seen_later, _) = seen(&report, "w1").expect("listed");
        // A block the planner was handed before the reload may still plan w1 once.
        assert!(w1_seen_later <= w1_seen + 1, "w1 got new tasks: {w1_seen} then {w1_seen_later}");
        let deadline = Instant::now() + SETTLE;
        while seen(&control.identities(None, 10).await.expect("report"), "w1")
            .is_some_and(|(_, pending)| pending > 0)
        {
            assert!(Instant::now() < deadline, "w1's journaled results did not settle");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        stop.cancel();
    };
    let (report, ()) = tokio::join!(node, drive);
    assert_eq!(report.expect("run"), RunReport::Stopped);
    tokio::task::block_in_place(|| check_chain(&farm));
}

/// `cpc-coordinator farm ARGS --admin URL` ([`cpc_tests::harness::farm_admin_command`], HOME the test's
/// folder).
fn farm_admin(farm: &Farm, url: &str, args: &[&str]) -> std::process::Output {
    cpc_tests::harness::farm_admin_command(farm.dir.path(), &[args, &["--admin", url]].concat())
        .output()
        .expect("spawn cpc-coordinator farm")
}

fn identity_names(report: &Value) -> Vec<String> {
    report["identities"]
        .as_array()
        .expect("identities array")
        .iter()
        .filter_map(|a| a["name"].as_str().map(str::to_owned))
        .collect()
}

#[test]
fn the_admin_api_reloads_and_lists_identities_and_a_reload_needs_the_token() {
    let farm = Farm::new(300, false, &["w1", "w2"]);
    let config = farm.dir.path().join("farm.toml");
    write_config(&config, "identities = [\"w1\"]\n");
    let admin = format!("127.0.0.1:{}", support::free_port());
    let url = format!("http://{admin}");
    let miner = configured_miner_with(&farm, &config, "run.log", &["--admin", &admin]);
    wait_for_log(&farm, "run.log", "submission included", 2);
    let token = farm.data_dir().join("admin-token");
    assert!(token.exists(), "run --admin made its token file");
    write_config(&config, "identities = [\"w1\", \"w2\"]\n");

    // Without the token, and with a wrong one: refused with 401, and nothing changed.
    let wrong = farm.dir.path().join("wrong-token");
    std::fs::write(&wrong, "0123456789abcdef0123456789abcdef0123456789abcdef")
        .expect("wrong token");
    std::fs::set_permissions(&wrong, std::os::unix::fs::PermissionsExt::from_mode(0o600))
        .expect("chmod");
    let wrong = wrong.to_string_lossy().into_owned();
    for extra in [vec![], vec!["--token-file", wrong.as_str()]] {
        let out = farm_admin(&farm, &url, &[&["reload"], extra.as_slice()].concat());
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "a reload without the right token was accepted: {stderr}");
        assert!(stderr.contains("401"), "refused as unauthorised: {stderr}");
    }
    let out = farm_admin(&farm, &url, &["identities"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let report: Value = serde_json::from_slice(&out.stdout).expect("identities JSON");
    assert_eq!(identity_names(&report), ["w1"], "no reload happened: {report}");

    // With the token: w2 is added, mines, and is listed.
    let token = token.to_string_lossy().into_owned();
    let out = farm_admin(&farm, &url, &["reload", "--token-file", &token]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let outcome: Value = serde_json::from_slice(&out.stdout).expect("reload JSON");
    assert_eq!(outcome["added"], serde_json::json!(["w2"]), "{outcome}");
    wait_for_log(&farm, "run.log", "submission included identity=w2", 1);
    let out = farm_admin(&farm, &url, &["identities", "--since", "1h"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let report: Value = serde_json::from_slice(&out.stdout).expect("identities JSON");
    assert_eq!(identity_names(&report), ["w1", "w2"], "{report}");
    let w2 = &report["identities"][1];
    assert!(w2["included"].as_u64().is_some_and(|n| n >= 1), "w2 included a result: {w2}");
    stop(miner);
}

/// A validator job still computing on the farm when the coordinator gets SIGTERM is not journaled as failed
/// (the stopping farm answers it `Shutdown`, which is no failure of the job): it stays `received`, and the
/// restarted coordinator computes it and answers the validator with the right result.
#[test]
fn a_validator_job_computing_at_sigterm_is_answered_after_the_restart() {
    use cpc_common::keystore::Keystore;
    use cpc_coordinator::mining::journal::{Journal, ValidatorJobState};
    use cpc_tests::validator::{TestJob, TestValidator};

    let farm = Farm::new(300, false, &["w1", "w2"]);
    let validator = TestValidator::start().expect("validator");
    let to_validator = format!("{}=w1", validator.url());
    let extra = ["--validator", &to_validator, "--max-validator-matrix-size", "2048"];
    let endpoint = farm.farm_endpoint();
    let miner = KillOnDrop(farm.farm_coordinator(&endpoint, 1, &extra, "run-1.log"));
    let _agent = farm.agent(&endpoint, 0, &[]);
    validator.wait_for_connection(1, HANG).expect("the coordinator connects to the validator");

    // Heavy for one CPU agent (two n = 2048 products), so that SIGTERM lands while it computes.
    let job = TestJob::new("at-sigterm", "computing when SIGTERM comes", 2048, 2);
    validator.send_job(&job);
    let journal_path = farm.data_dir().join("journal.sqlite");
    let journaled = |journal: &Journal| {
        journal
            .validator_jobs()
            .expect("validator jobs")
            .into_iter()
            .find(|j| j.job_id == "at-sigterm")
            .map(|j| j.state)
    };
    let deadline = Instant::now() + HANG;
    loop {
        let journal = Journal::open(&journal_path).expect("journal");
        if journaled(&journal).is_some() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the job was never journaled:\n{}",
            farm.log("run-1.log")
        );
        std::thread::sleep(Duration::from_millis(2));
    }
    stop(miner);
    let state = journaled(&Journal::open(&journal_path).expect("journal"));
    eprintln!("job state after SIGTERM: {state:?}");
    assert_ne!(state, Some(ValidatorJobState::Failed), "{}", farm.log("run-1.log"));
    assert_ne!(state, Some(ValidatorJobState::Answered), "stopped too late to test the restart");

    let _miner = KillOnDrop(farm.farm_coordinator(&endpoint, 1, &extra, "run-2.log"));
    let answer = validator.wait_for_answer("at-sigterm", HANG).expect("answered after the restart");
    assert_eq!(answer.connection, 2, "answered by the restarted coordinator");
    let worker = Keystore::new(farm.keystore()).load("w1").expect("w1").secret.public_key();
    job.check(&answer.value, &worker).expect("the right result, signed by w1");
}
