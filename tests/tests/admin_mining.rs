//! The admin API of a mining node against the devnet: `cpc-coordinator run --compute farm --admin`, two real
//! `cpc-agent` processes, and the `farm` commands. A device drained while the farm mines finishes what it
//! holds and gets no block task while blocks go by; resumed, it gets them again. Nothing asserts on timing.

mod support;

use std::{
    path::Path,
    time::{Duration, Instant},
};
use support::{Farm, KillOnDrop, free_port};

/// `cpc-coordinator farm ARGS` ([`cpc_tests::harness::farm_admin_command`]); answers the parsed JSON, or
/// the stderr.
fn farm_cli(home: &Path, args: &[&str]) -> Result<serde_json::Value, String> {
    let out =
        cpc_tests::harness::farm_admin_command(home, args).output().map_err(|e| e.to_string())?;
    if !out.status.success() {
        return Err(String::from_utf8_lossy(&out.stderr).into_owned());
    }
    serde_json::from_slice(&out.stdout).map_err(|e| e.to_string())
}

/// Shards an agent ran (its `cpcfarm_agent_shards_total`, every outcome).
fn shards_run(metrics_port: u16) -> u64 {
    let text = reqwest::blocking::get(format!("http://127.0.0.1:{metrics_port}/metrics"))
        .and_then(|r| r.text())
        .unwrap_or_default();
    text.lines()
        .filter(|l| l.starts_with("cpcfarm_agent_shards_total"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum::<f64>() as u64
}

/// Polls `check` every 100 ms until it answers something (a bound on a hang, not a measurement).
fn wait_for<T>(what: &str, timeout: Duration, mut check: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = check() {
            return v;
        }
        assert!(Instant::now() < deadline, "{what}: not within {timeout:?}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn a_device_drained_while_mining_gets_no_block_task_until_resumed() {
    let farm = Farm::new(400, false, &["w1", "w2"]);
    let endpoint = farm.farm_endpoint();
    let admin = format!("127.0.0.1:{}", free_port());
    let url = format!("http://{admin}");
    let _miner = KillOnDrop(farm.farm_coordinator(&endpoint, 2, &["--admin", &admin], "run.log"));
    let metrics = [free_port(), free_port()];
    let _agents: Vec<KillOnDrop> = metrics
        .iter()
        .enumerate()
        .map(|(i, port)| farm.agent(&endpoint, i, &["--metrics", &format!("127.0.0.1:{port}")]))
        .collect();
    let home = farm.dir.path().join("home");
    std::fs::create_dir_all(&home).expect("home");
    let token_file = farm.data_dir().join(cpc_coordinator::admin::ADMIN_TOKEN_FILE);
    let token = token_file.to_str().expect("utf-8 path").to_owned();

    let device = wait_for("both agents listed by `farm status`", Duration::from_secs(60), || {
        let status = farm_cli(&home, &["status", "--admin", &url]).ok()?;
        let devices = status["devices"].as_array()?;
        (devices.len() == 2).then_some(())?;
        devices.iter().find(|d| d["agent"] == "agent-0")?["device"].as_str().map(str::to_owned)
    });
    // Mining on both devices first.
    wait_for("agent-0 ran a block task", Duration::from_secs(60), || {
        (shards_run(metrics[0]) > 0).then_some(())
    });

    let drained = farm_cli(&home, &["drain", &device, "--admin", &url, "--token-file", &token])
        .expect("drain");
    assert_eq!(drained["devices"][0], device.as_str(), "{drained}");
    // It finishes what it holds.
    wait_for("the drained device's shards finished", Duration::from_secs(60), || {
        let status = farm_cli(&home, &["status", "--admin", &url]).ok()?;
        let d = status["devices"].as_array()?.iter().find(|d| d["device"] == device.as_str())?;
        (d["drained"] == true && d["shards_in_flight"] == 0).then_some(())
    });
    let (held, other) = (shards_run(metrics[0]), shards_run(metrics[1]));
    let head = farm.head();
    farm.wait_for_height(head + 4, Duration::from_secs(60));
    // The other agent mined on; the drained one got nothing new.
    wait_for("agent-1 ran block tasks while agent-0 was drained", Duration::from_secs(60), || {
        (shards_run(metrics[1]) > other).then_some(())
    });
    assert_eq!(shards_run(metrics[0]), held, "a drained device got a block task");

    farm_cli(&home, &["resume", &device, "--admin", &url, "--token-file", &token]).expect("resume");
    wait_for("agent-0 runs block tasks again after resume", Duration::from_secs(60), || {
        (shards_run(metrics[0]) > held).then_some(())
    });
}
