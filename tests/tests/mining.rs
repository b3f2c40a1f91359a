//! The miner end to end: `cpc-coordinator run` as a real process against a real `cpc-devnet`, with fast
//! blocks. Over many consecutive blocks each identity has exactly one SUBMIT_RESULT per block it
//! computed, each included, each result equal to the reference computation, each block's compute_root
//! verified; SIGKILL and restart lose and duplicate nothing; a node outage only delays; an unfunded
//! identity is reported and does not hold the other back.

mod support;

use serde_json::Value;
use std::time::{Duration, Instant};
use support::{Farm, check_chain, check_journal, finish, free_port, last_height};
use tokio_util::sync::CancellationToken;

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
        // The report lists every block of the window; blocks the miner never saw as the head are `missed`.
        let mine: Vec<&Value> =
            rows.iter().filter(|r| r["identity"] == name && r["state"] != "missed").collect();
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
    let computed = rows.iter().filter(|r| r["state"] != "missed").count();
    assert!(landed >= computed, "every reported task is on chain exactly once");
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
        if r["state"] == "missed" {
            assert!(r["reason"].is_string(), "a missed block says why: {r}");
        } else {
            assert_eq!(r["state"], "included", "{r}");
        }
    }
    let log = farm.log("run.log");
    assert!(log.contains("did not answer"), "the outage was noticed:\n{log}");
    check_chain(&farm);
    check_journal(&farm, last_height(&report));
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
    for r in rows.iter().filter(|r| r["state"] != "missed") {
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

/// The mining node as a library call, in this process: a bounded run answers its window, an unbounded
/// one stops on its shutdown signal, and each leaves the data dir free for the next.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_library_run_mines_a_bounded_window_and_stops_on_its_shutdown_signal() {
    use cpc_coordinator::{
        data_dir::DataDirLock,
        mining::{
            self, RunEvent, RunReport,
            settings::{Layer, Settings, Sources},
        },
    };
    let farm = tokio::task::block_in_place(|| Farm::new(300, false, &["w1", "w2"]));
    let flags = Layer {
        nodes: vec![farm.devnet.url()],
        identities: vec!["w1".into(), "w2".into()],
        keystore: Some(farm.keystore()),
        data_dir: Some(farm.data_dir()),
        compute: Some("local".into()),
        listen: Some("127.0.0.1:0".parse().expect("addr")),
        matrix_size: Some(support::MATRIX_SIZE),
        stop_after_blocks: Some(3),
        ..Layer::default()
    };
    let settings =
        Settings::resolve(&Sources { flags, ..Sources::default() }).expect("valid settings");

    let never = CancellationToken::new();
    let report = mining::run(settings.clone(), never, |_| {}).await.expect("run");
    let RunReport::Window(window) = report else { panic!("a bounded run reports its window") };
    assert_eq!(window.last - window.first, 2, "{window:?}");
    assert_eq!(window.rows.len(), 6, "two identities at three blocks: {window:?}");
    let planned: Vec<_> = window.rows.iter().filter(|r| r.state != "missed").collect();
    assert!(!planned.is_empty(), "{window:?}");
    for row in planned {
        assert_eq!(row.state, "included", "{row:?}");
    }
    tokio::task::block_in_place(|| {
        check_chain(&farm);
        check_journal(&farm, window.last);
    });

    // Unbounded: runs until the process's token is cancelled, which here happens once the node says it is
    // ready.
    let shutdown = CancellationToken::new();
    let unbounded = Settings { stop_after_blocks: 0, ..settings };
    let on_event = |event: RunEvent<'_>| {
        if matches!(event, RunEvent::Ready) {
            shutdown.cancel();
        }
    };
    let report = mining::run(unbounded, shutdown.clone(), on_event).await.expect("run");
    assert_eq!(report, RunReport::Stopped);
    drop(DataDirLock::acquire(&farm.data_dir()).expect("the run released the data dir"));
}
