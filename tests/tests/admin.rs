//! The admin API end to end on loopback: a real farm (QUIC, certificate, registry, scheduler), real agents on
//! their own threads (CPU backend), the admin API's real HTTP server and its client. An operator drains a
//! device mid-job, quarantines and readmits one, is refused a readmission when the self-test fails, and is
//! refused every change without the right token. Nothing asserts on timing.

use cpc_agent::{AgentConfig, AgentThread, DeviceSpec};
use cpc_common::synthetic::Challenge;
use cpc_coordinator::{
    admin::{self, AdminClient, AdminToken, RunningServer},
    farm::{self, DeviceStatus, FarmConfig, FarmHandle, Identity, SplitPolicy, StragglerPolicy},
};
use cpc_kernels::{Backend, BackendError, CpuBackend, DeviceInfo, Shard, ShardOutput};
use std::{
    sync::{Arc, Mutex, mpsc},
    time::Duration,
};

const TOKEN: &str = "0123456789abcdef0123456789abcdef0123456789abcdef";

fn farm_config() -> FarmConfig {
    let mut c = FarmConfig::new(
        "127.0.0.1:0".parse().expect("addr"),
        Identity::generate().expect("identity"),
    );
    c.heartbeat_interval = Duration::from_millis(100);
    c.heartbeat_timeout = Duration::from_millis(1500);
    c.idle_timeout = Duration::from_secs(3);
    c.no_device_wait = Duration::from_secs(30);
    c.split = SplitPolicy { small_job: Duration::ZERO, min_shard_rows: 8 };
    // A held shard must finish on its own device, not be copied to an idle one.
    c.straggler = StragglerPolicy { factor: 1e6, grace: Duration::from_secs(600) };
    c
}

fn agent_config(farm: &FarmHandle, name: &str) -> AgentConfig {
    let mut c = AgentConfig::new(farm.local_addr().to_string(), farm.token(), farm.fingerprint());
    c.name = name.to_owned();
    c.idle_timeout = Duration::from_secs(3);
    c.backoff_initial = Duration::from_millis(50);
    c.backoff_max = Duration::from_millis(500);
    // Every device announces 1 op/s: an even split, whatever else the test host runs while devices start (a
    // device measured far slower than the others would get no share, and these tests need each one's).
    c.measure_matrix_size = 0;
    c.drain_grace = Duration::from_millis(100);
    c
}

fn one_device(backend: Arc<dyn Backend>) -> Vec<DeviceSpec> {
    vec![DeviceSpec { index: 0, backend }]
}

fn cpu() -> Arc<dyn Backend> {
    Arc::new(CpuBackend::new(1).expect("cpu backend"))
}

fn expected(challenge: &Challenge) -> cpc_common::hashing::Digest32 {
    cpc_kernels::result_hash(&CpuBackend::new(0).expect("cpu"), challenge).expect("reference")
}

async fn admin_api(farm: &FarmHandle) -> (RunningServer, AdminClient) {
    let server = admin::serve(
        "127.0.0.1:0".parse().expect("addr"),
        AdminToken::new(TOKEN),
        admin::farm_routes(farm.clone()),
    )
    .await
    .expect("admin API");
    let client =
        AdminClient::new(&format!("http://{}", server.local_addr()), Some(AdminToken::new(TOKEN)));
    (server, client)
}

async fn device_of(client: &AdminClient, agent: &str) -> DeviceStatus {
    let status = client.status().await.expect("status");
    status.devices.into_iter().find(|d| d.agent == agent).expect("the agent's device is listed")
}

async fn shutdown(farm: FarmHandle) {
    tokio::task::spawn_blocking(move || farm.shutdown()).await.expect("shutdown");
}

/// A CPU backend that holds shards of one seed until released, then computes them right: a test knows the
/// device is mid-shard.
#[derive(Debug)]
struct HeldBackend {
    inner: CpuBackend,
    seed: String,
    started: Mutex<Option<mpsc::Sender<()>>>,
    release: Mutex<mpsc::Receiver<()>>,
}

impl Backend for HeldBackend {
    fn name(&self) -> &str {
        "held"
    }
    fn info(&self) -> DeviceInfo {
        self.inner.info()
    }
    fn run_shard(&self, shard: &Shard, keep_rows: bool) -> Result<ShardOutput, BackendError> {
        if shard.challenge.seed() == self.seed {
            if let Some(tx) = self.started.lock().expect("lock").take() {
                let _ = tx.send(());
            }
            let _ = self.release.lock().expect("lock").recv_timeout(Duration::from_secs(120));
        }
        self.inner.run_shard(shard, keep_rows)
    }
}

/// Drained mid-job, a device finishes the shard it holds (its rows count in the result) and gets nothing
/// new; resumed, it gets work again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_device_drained_mid_job_finishes_its_shard_and_gets_nothing_new() {
    let farm = farm::start(farm_config()).expect("farm");
    let (api, client) = admin_api(&farm).await;
    let seed = "admin-it-drain";
    let (started_tx, started_rx) = mpsc::channel();
    let (release_tx, release_rx) = mpsc::channel();
    let held = Arc::new(HeldBackend {
        inner: CpuBackend::new(1).expect("cpu"),
        seed: seed.into(),
        started: Mutex::new(Some(started_tx)),
        release: Mutex::new(release_rx),
    });
    let agents = [
        AgentThread::spawn(agent_config(&farm, "held"), one_device(held)),
        AgentThread::spawn(agent_config(&farm, "steady"), one_device(cpu())),
    ];
    farm.wait_for_agents(2, Duration::from_secs(60)).await.expect("2 agents");

    let challenge = Challenge::new(seed, 256, 1).expect("challenge");
    let job = tokio::spawn({
        let (farm, challenge) = (farm.clone(), challenge.clone());
        async move { farm.run_job(challenge).await }
    });
    tokio::task::spawn_blocking(move || started_rx.recv_timeout(Duration::from_secs(60)))
        .await
        .expect("join")
        .expect("the held device got a shard");
    let target = device_of(&client, "held").await.device;
    let drained = client.drain(&target).await.expect("drain");
    assert_eq!(drained.devices, vec![target.clone()]);
    let during = device_of(&client, "held").await;
    assert!(during.drained && !during.quarantined, "{during:?}");
    assert_eq!(during.protocol_version, cpc_common::wire::PROTOCOL_VERSION, "{during:?}");
    assert!(during.shards_in_flight >= 1, "its shard is still in flight: {during:?}");

    release_tx.send(()).expect("release");
    let report = job.await.expect("join").expect("job");
    assert_eq!(report.result_hash, expected(&challenge));
    let held_rows: u64 = report.devices.iter().filter(|d| d.agent == "held").map(|d| d.rows).sum();
    assert!(held_rows > 0, "the drained device's shard finished and counted: {report:#?}");

    let next = Challenge::new("admin-it-after-drain", 256, 1).expect("challenge");
    let report = farm.run_job(next.clone()).await.expect("job");
    assert_eq!(report.result_hash, expected(&next));
    assert!(report.devices.iter().all(|d| d.agent != "held"), "drained: nothing new {report:#?}");
    assert_eq!(device_of(&client, "held").await.shards_in_flight, 0);

    client.resume(&target).await.expect("resume");
    assert!(!device_of(&client, "held").await.drained);
    let again = Challenge::new("admin-it-resumed", 256, 1).expect("challenge");
    let report = farm.run_job(again.clone()).await.expect("job");
    assert_eq!(report.result_hash, expected(&again));
    assert!(report.devices.iter().any(|d| d.agent == "held" && d.rows > 0), "{report:#?}");
    drop((agents, api));
    shutdown(farm).await;
}

/// A device the operator quarantined takes no work; readmitted after its self-test passes, it computes
/// again and its rows count.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_quarantined_device_is_readmitted_after_its_self_test_passes() {
    let farm = farm::start(farm_config()).expect("farm");
    let (api, client) = admin_api(&farm).await;
    let agents = [
        AgentThread::spawn(agent_config(&farm, "suspect"), one_device(cpu())),
        AgentThread::spawn(agent_config(&farm, "steady"), one_device(cpu())),
    ];
    farm.wait_for_agents(2, Duration::from_secs(60)).await.expect("2 agents");
    let target = device_of(&client, "suspect").await.device;

    client.quarantine(&target, Some("fan replaced")).await.expect("quarantine");
    let quarantined = device_of(&client, "suspect").await;
    assert!(quarantined.quarantined, "{quarantined:?}");
    assert!(quarantined.quarantine_reason.as_deref().is_some_and(|r| r.contains("fan replaced")));
    assert!(quarantined.quarantined_at_unix_ms.is_some());
    let e = client.quarantine(&target, None).await.expect_err("already quarantined");
    assert_eq!(e.status(), Some(409), "{e}");
    let challenge = Challenge::new("admin-it-quarantined", 256, 1).expect("challenge");
    let report = farm.run_job(challenge.clone()).await.expect("job");
    assert_eq!(report.result_hash, expected(&challenge));
    assert!(report.devices.iter().all(|d| d.agent != "suspect"), "{report:#?}");

    let readmitted = client.readmit(&target).await.expect("readmit");
    assert_eq!(readmitted.device, target);
    assert!(readmitted.self_test.rows > 0, "{readmitted:?}");
    let back = device_of(&client, "suspect").await;
    assert!(!back.quarantined && back.quarantine_reason.is_none(), "{back:?}");
    let e = client.readmit(&target).await.expect_err("not quarantined any more");
    assert_eq!(e.status(), Some(409), "{e}");

    let challenge = Challenge::new("admin-it-readmitted", 256, 1).expect("challenge");
    let report = farm.run_job(challenge.clone()).await.expect("job");
    assert_eq!(report.result_hash, expected(&challenge));
    assert!(report.devices.iter().any(|d| d.agent == "suspect" && d.rows > 0), "{report:#?}");
    drop((agents, api));
    shutdown(farm).await;
}

/// A device that still computes wrong results (the CPU backend's fault injection) fails its self-test:
/// the readmission is refused with the reason and the device stays quarantined.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readmission_is_refused_when_the_self_test_fails() {
    let farm = farm::start(farm_config()).expect("farm");
    let (api, client) = admin_api(&farm).await;
    let faulty: Arc<dyn Backend> =
        Arc::new(CpuBackend::new(1).expect("cpu").with_fault_injection(7));
    let agent = AgentThread::spawn(agent_config(&farm, "faulty"), one_device(faulty));
    farm.wait_for_agents(1, Duration::from_secs(60)).await.expect("agent");
    let target = device_of(&client, "faulty").await.device;
    client.quarantine(&target, Some("wrong rows reported")).await.expect("quarantine");

    let e = client.readmit(&target).await.expect_err("self-test fails");
    assert_eq!(e.status(), Some(409), "{e}");
    assert!(e.to_string().contains("self-test"), "the reason is given: {e}");
    let still = device_of(&client, "faulty").await;
    assert!(still.quarantined, "{still:?}");
    assert!(
        still.quarantine_reason.as_deref().is_some_and(|r| r.contains("wrong rows")),
        "{still:?}"
    );
    drop((agent, api));
    shutdown(farm).await;
}

/// A backend whose leaves are wrong although its product passes its Freivalds check (a fault after the
/// check: in the hashing, or in memory on the way out).
#[derive(Debug)]
struct WrongLeavesBackend(CpuBackend);

impl Backend for WrongLeavesBackend {
    fn name(&self) -> &str {
        "wrong-leaves"
    }
    fn info(&self) -> DeviceInfo {
        self.0.info()
    }
    fn run_shard(&self, shard: &Shard, keep_rows: bool) -> Result<ShardOutput, BackendError> {
        let mut out = self.0.run_shard(shard, keep_rows)?;
        if let Some(leaf) = out.leaves.last_mut() {
            leaf[0] ^= 1;
        }
        Ok(out)
    }
}

/// Leaves that differ from the CPU's are caught by the self-test's own comparison.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readmission_is_refused_when_the_leaves_differ_from_the_cpu() {
    let farm = farm::start(farm_config()).expect("farm");
    let (api, client) = admin_api(&farm).await;
    let wrong: Arc<dyn Backend> = Arc::new(WrongLeavesBackend(CpuBackend::new(1).expect("cpu")));
    let agent = AgentThread::spawn(agent_config(&farm, "wrong"), one_device(wrong));
    farm.wait_for_agents(1, Duration::from_secs(60)).await.expect("agent");
    let target = device_of(&client, "wrong").await.device;
    client.quarantine(&target, None).await.expect("quarantine");
    let e = client.readmit(&target).await.expect_err("self-test fails");
    assert_eq!(e.status(), Some(409), "{e}");
    assert!(e.to_string().contains("differs from the CPU"), "{e}");
    assert!(device_of(&client, "wrong").await.quarantined);
    drop((agent, api));
    shutdown(farm).await;
}

/// A CPU backend whose first shard of one seed hangs (a wedged driver, once).
#[derive(Debug)]
struct HangsOnce {
    inner: CpuBackend,
    seed: String,
    hung: std::sync::atomic::AtomicBool,
}

impl Backend for HangsOnce {
    fn name(&self) -> &str {
        "hangs-once"
    }
    fn info(&self) -> DeviceInfo {
        self.inner.info()
    }
    fn run_shard(&self, shard: &Shard, keep_rows: bool) -> Result<ShardOutput, BackendError> {
        if shard.challenge.seed() == self.seed
            && !self.hung.swap(true, std::sync::atomic::Ordering::SeqCst)
        {
            std::thread::sleep(Duration::from_secs(30));
        }
        self.inner.run_shard(shard, keep_rows)
    }
}

/// The agent's counters reach `farm status`: a CPU device reports zeros and no NVML readings; a device
/// whose watchdog fired once reports the firing and the worker restart, and keeps serving.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watchdog_firings_and_restarts_show_in_status() {
    let farm = farm::start(farm_config()).expect("farm");
    let (api, client) = admin_api(&farm).await;
    let seed = "admin-it-hang";
    let hangs: Arc<dyn Backend> = Arc::new(HangsOnce {
        inner: CpuBackend::new(1).expect("cpu"),
        seed: seed.into(),
        hung: false.into(),
    });
    let mut wedged = agent_config(&farm, "wedged");
    wedged.watchdog = Duration::from_millis(300);
    wedged.max_device_restarts = 1;
    let agents = [
        AgentThread::spawn(wedged, one_device(hangs)),
        AgentThread::spawn(agent_config(&farm, "steady"), one_device(cpu())),
    ];
    farm.wait_for_agents(2, Duration::from_secs(60)).await.expect("2 agents");
    let steady = wait_for_report(&client, "steady", |_| true).await;
    let r = steady.report.expect("report");
    assert_eq!((r.restarts, r.watchdog_firings, r.xid_errors), (0, 0, 0), "{r:?}");
    assert!(r.uuid.is_none() && r.temperature_celsius.is_none(), "no NVML on a CPU: {r:?}");

    let challenge = Challenge::new(seed, 256, 1).expect("challenge");
    let report = farm.run_job(challenge.clone()).await.expect("job");
    assert_eq!(report.result_hash, expected(&challenge));
    let wedged = wait_for_report(&client, "wedged", |r| r.watchdog_firings >= 1).await;
    let r = wedged.report.clone().expect("report");
    assert_eq!((r.restarts, r.watchdog_firings), (1, 1), "{r:?}");
    assert!(!wedged.quarantined, "restarted, not given up: {wedged:?}");
    drop((agents, api));
    shutdown(farm).await;
}

/// Polls `farm status` until `agent`'s device has a report that `done` accepts (a bound on a hang, not a
/// measurement).
async fn wait_for_report(
    client: &AdminClient,
    agent: &str,
    done: impl Fn(&cpc_common::wire::DeviceReport) -> bool,
) -> DeviceStatus {
    for _ in 0..600 {
        let d = device_of(client, agent).await;
        if d.report.as_ref().is_some_and(&done) {
            return d;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("no such report of {agent}'s device within 30 s");
}

/// A backend whose leaves are all wrong for seeds with one prefix, right otherwise (a fault that the
/// self-test's fresh challenge does not meet).
#[derive(Debug)]
struct LiesOnSeed {
    inner: CpuBackend,
    prefix: &'static str,
}

impl Backend for LiesOnSeed {
    fn name(&self) -> &str {
        "lies-on-seed"
    }
    fn info(&self) -> DeviceInfo {
        self.inner.info()
    }
    fn run_shard(&self, shard: &Shard, keep_rows: bool) -> Result<ShardOutput, BackendError> {
        let mut out = self.inner.run_shard(shard, keep_rows)?;
        if shard.challenge.seed().starts_with(self.prefix) {
            for leaf in &mut out.leaves {
                leaf[0] ^= 1;
            }
        }
        Ok(out)
    }
}

/// With probation on, a device the farm quarantined (a failed spot check) is readmitted by itself once
/// the cool-down passed and its self-test passes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn probation_readmits_a_device_the_farm_quarantined_after_the_cool_down() {
    let farm = farm::start(farm_config()).expect("farm");
    let (api, client) = admin_api(&farm).await;
    let _probation = farm.start_probation(farm::ProbationPolicy {
        cool_down: Duration::from_millis(200),
        max_per_day: 1,
    });
    let liar: Arc<dyn Backend> =
        Arc::new(LiesOnSeed { inner: CpuBackend::new(1).expect("cpu"), prefix: "admin-it-liar" });
    // The liar alone first, so that it computes the job (a small job runs whole on one device), and the
    // steady device only once the liar was caught, to recompute what it gave.
    let liar_agent = AgentThread::spawn(agent_config(&farm, "liar"), one_device(liar));
    farm.wait_for_agents(1, Duration::from_secs(60)).await.expect("the liar's agent");
    let challenge = Challenge::new("admin-it-liar", 256, 1).expect("challenge");
    let job = tokio::spawn({
        let (farm, challenge) = (farm.clone(), challenge.clone());
        async move { farm.run_job(challenge).await }
    });
    let mut caught = false;
    for _ in 0..600 {
        if device_of(&client, "liar").await.quarantined {
            caught = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(caught, "the liar was quarantined within 30 s");
    let agents = [liar_agent, AgentThread::spawn(agent_config(&farm, "steady"), one_device(cpu()))];
    let report = job.await.expect("job task").expect("job");
    assert_eq!(report.result_hash, expected(&challenge));
    assert_eq!(report.quarantined.len(), 1, "the liar was caught: {report:#?}");
    // Readmitted by probation (polled; a bound on a hang, not a measurement).
    let mut readmitted = false;
    for _ in 0..600 {
        let d = device_of(&client, "liar").await;
        if !d.quarantined {
            readmitted = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(readmitted, "probation readmitted the liar within 30 s");
    let challenge = Challenge::new("admin-it-honest", 256, 1).expect("challenge");
    let report = farm.run_job(challenge.clone()).await.expect("job");
    assert_eq!(report.result_hash, expected(&challenge));
    assert!(report.devices.iter().any(|d| d.agent == "liar" && d.rows > 0), "{report:#?}");
    drop((agents, api));
    shutdown(farm).await;
}

/// Every state-changing call without the token, or with a wrong one, is refused with 401 and changes
/// nothing; reads on loopback need no token.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_change_needs_the_token_and_nothing_changes_without_it() {
    let farm = farm::start(farm_config()).expect("farm");
    let (api, client) = admin_api(&farm).await;
    let agent = AgentThread::spawn(agent_config(&farm, "a"), one_device(cpu()));
    farm.wait_for_agents(1, Duration::from_secs(60)).await.expect("agent");
    let url = format!("http://{}", api.local_addr());
    let anonymous = AdminClient::new(&url, None);
    let wrong = AdminClient::new(&url, Some(AdminToken::new(&TOKEN.replace('0', "1"))));
    let target =
        anonymous.status().await.expect("reads are open on loopback").devices[0].device.clone();

    // Refused changes on a healthy device: it stays healthy.
    for intruder in [&anonymous, &wrong] {
        for e in [
            intruder.drain(&target).await.map(drop).expect_err("drain"),
            intruder.drain("agent1").await.map(drop).expect_err("drain agent"),
            intruder.quarantine(&target, Some("x")).await.map(drop).expect_err("quarantine"),
            intruder.resume(&target).await.map(drop).expect_err("resume"),
            intruder.readmit(&target).await.map(drop).expect_err("readmit"),
            intruder
                .call::<serde_json::Value>(
                    reqwest::Method::POST,
                    "/v1/not-yet-mounted",
                    None::<&()>,
                )
                .await
                .map(drop)
                .expect_err("any other route"),
        ] {
            assert_eq!(e.status(), Some(401), "{e}");
        }
    }
    let d = device_of(&client, "a").await;
    assert!(!d.drained && !d.quarantined, "{d:?}");

    // Refused changes on a drained, quarantined device: it stays so.
    client.drain(&target).await.expect("drain");
    client.quarantine(&target, Some("operator")).await.expect("quarantine");
    for intruder in [&anonymous, &wrong] {
        for e in [
            intruder.resume(&target).await.map(drop).expect_err("resume"),
            intruder.readmit(&target).await.map(drop).expect_err("readmit"),
        ] {
            assert_eq!(e.status(), Some(401), "{e}");
        }
    }
    let d = device_of(&client, "a").await;
    assert!(d.drained && d.quarantined, "{d:?}");
    drop((agent, api));
    shutdown(farm).await;
}

/// Kills a child process when dropped.
struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `cpc-coordinator farm ARGS` ([`cpc_tests::harness::farm_admin_command`]); answers the exit status,
/// stdout and stderr.
fn farm_cli(home: &std::path::Path, args: &[&str]) -> (bool, String, String) {
    let out =
        cpc_tests::harness::farm_admin_command(home, args).output().expect("cpc-coordinator farm");
    let text = |b: Vec<u8>| String::from_utf8_lossy(&b).into_owned();
    (out.status.success(), text(out.stdout), text(out.stderr))
}

/// The real binaries: `cpc-coordinator serve --admin` makes the admin token (mode 0600) in its data dir, a
/// `cpc-agent` process joins, and the `farm` commands read and change it; a change without the token file
/// is refused and changes nothing.
#[test]
fn the_farm_commands_drive_a_served_farm() {
    use cpc_tests::harness::{coordinator_command, locate_workspace_binary};
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    let identity = Identity::load_or_create(&data).expect("coordinator identity");
    let quic = format!(
        "127.0.0.1:{}",
        std::net::UdpSocket::bind("127.0.0.1:0").and_then(|s| s.local_addr()).expect("udp").port()
    );
    let admin = format!("127.0.0.1:{}", cpc_tests::harness::free_port());
    let url = format!("http://{admin}");
    let _serve = KillOnDrop(
        coordinator_command()
            .args(["serve", "--listen", &quic, "--admin", &admin, "--data-dir"])
            .arg(&data)
            .env("RUST_LOG", "warn")
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("serve"),
    );
    let agent_bin = locate_workspace_binary("cpc-agent", "CPC_AGENT_BIN")
        .expect("cpc-agent binary: run `cargo build --workspace --bins`");
    let _agent = KillOnDrop(
        std::process::Command::new(agent_bin)
            .args(["--coordinator", &quic, "--token", &identity.token])
            .args(["--coordinator-fingerprint", &identity.fingerprint(), "--backend", "cpu"])
            .args(["--name", "proc-agent"])
            .env("RAYON_NUM_THREADS", "1")
            .env("RUST_LOG", "warn")
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("agent"),
    );
    let home = dir.path().join("home");
    std::fs::create_dir_all(&home).expect("home");
    // Polled until the agent joined (a bound on a hang, not a measurement).
    let mut device = None;
    for _ in 0..600 {
        let (ok, out, _) = farm_cli(&home, &["status", "--admin", &url]);
        if ok {
            let status: serde_json::Value = serde_json::from_str(&out).expect("status JSON");
            if let Some(d) = status["devices"].as_array().and_then(|d| d.first()) {
                assert_eq!(d["agent"], "proc-agent", "{status}");
                device = d["device"].as_str().map(str::to_owned);
                break;
            }
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let device = device.expect("the agent joined within 30 s");
    let token_file = data.join(admin::ADMIN_TOKEN_FILE);
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        let mode = std::fs::metadata(&token_file).expect("admin token").permissions().mode();
        assert_eq!(mode & 0o777, 0o600, "the admin token is private");
    }

    let (ok, _, err) = farm_cli(&home, &["drain", &device, "--admin", &url]);
    assert!(!ok && err.contains("401"), "refused without the token: {err}");
    let (_, out, _) = farm_cli(&home, &["status", "--admin", &url]);
    assert!(out.contains("\"drained\": false"), "nothing changed: {out}");

    let token = token_file.to_str().expect("utf-8 path");
    let (ok, out, err) =
        farm_cli(&home, &["drain", &device, "--admin", &url, "--token-file", token]);
    assert!(ok, "{err}");
    assert!(out.contains(&device), "{out}");
    let (_, out, _) = farm_cli(&home, &["status", "--admin", &url]);
    assert!(out.contains("\"drained\": true"), "{out}");
    let (ok, _, err) =
        farm_cli(&home, &["readmit", &device, "--admin", &url, "--token-file", token]);
    assert!(!ok && err.contains("not quarantined"), "{err}");
}
