//! The farm end to end on loopback, in one process: a real QUIC coordinator with a real certificate and
//! agents on their own threads (CPU backend), checked against the single-process `cpc_kernels::result_hash`.
//! Timeouts are shortened through the configs; nothing asserts on timing.

use cpc_agent::{AgentConfig, AgentError, AgentThread, DeviceSpec};
use cpc_common::{
    codec::{self, FrameDecoder},
    quic::{read_frame, write_frame},
    synthetic::Challenge,
    wire::{
        ALPN, AgentControl, DeviceAdvert, Hello, HelloReply, PROTOCOL_VERSION, Request,
        RowCapacity, SHARD_PIPE_SINCE, ShardPipeOrders, advertised_sizes,
    },
};
use cpc_coordinator::farm::{
    self, FarmConfig, FarmHandle, Identity, JobError, JobSpec, SplitPolicy, SpotCheckConfig,
};
use cpc_kernels::{Backend, BackendError, CpuBackend, DeviceInfo, Shard, ShardOutput};
use std::{
    sync::{Arc, Mutex, mpsc},
    time::Duration,
};
use tokio_util::sync::CancellationToken;

fn farm_config() -> FarmConfig {
    let mut c = FarmConfig::new(
        "127.0.0.1:0".parse().expect("addr"),
        Identity::generate().expect("identity"),
    );
    c.heartbeat_interval = Duration::from_millis(100);
    c.heartbeat_timeout = Duration::from_millis(1500);
    c.idle_timeout = Duration::from_secs(3);
    c.handshake_timeout = Duration::from_secs(5);
    c.no_device_wait = Duration::from_secs(30);
    c.split = SplitPolicy { small_job: Duration::ZERO, min_shard_rows: 8 };
    c.spot_check = SpotCheckConfig {
        rows_per_shard: 2,
        elements_per_row: 8,
        seed: Some(0x5eed),
        ..Default::default()
    };
    c
}

fn agent_config(farm: &FarmHandle, name: &str) -> AgentConfig {
    let mut c = AgentConfig::new(farm.local_addr().to_string(), farm.token(), farm.fingerprint());
    c.name = name.to_owned();
    c.idle_timeout = Duration::from_secs(3);
    c.backoff_initial = Duration::from_millis(50);
    c.backoff_max = Duration::from_millis(500);
    c.measure_matrix_size = 64;
    c.drain_grace = Duration::from_millis(100);
    c
}

/// An agent whose devices skip the start-up measurement and announce 1 op/s each, for a test that needs every
/// device in the split: measured throughputs of equal CPU devices differ with whatever else the test host runs
/// at that moment, and a device measured far slower than the others gets a share below `min_shard_rows`
/// (none). Equal announcements split evenly, and re-issue no straggler.
fn even_agent_config(farm: &FarmHandle, name: &str) -> AgentConfig {
    let mut c = agent_config(farm, name);
    c.measure_matrix_size = 0;
    c
}

fn cpu() -> Arc<dyn Backend> {
    Arc::new(CpuBackend::new(1).expect("cpu backend"))
}

fn one_device(backend: Arc<dyn Backend>) -> Vec<DeviceSpec> {
    vec![DeviceSpec { index: 0, backend }]
}

fn expected(challenge: &Challenge) -> cpc_common::hashing::Digest32 {
    cpc_kernels::result_hash(&CpuBackend::new(0).expect("cpu"), challenge).expect("reference")
}

async fn shutdown(farm: FarmHandle) {
    tokio::task::spawn_blocking(move || farm.shutdown()).await.expect("shutdown");
}

/// The farm's QUIC I/O on the scheduler's own thread (the default on a host of 3 cores or fewer).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn farm_three_agents_match_single_process_with_io_on_the_scheduler_thread() {
    three_agents_match_single_process(0).await;
}

/// The farm's QUIC I/O on worker threads of its own (the default on a larger host).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn farm_three_agents_match_single_process_with_io_workers() {
    three_agents_match_single_process(2).await;
}

/// A job sharded over three agents, spot-checked and Freivalds-checked, gives the single-process result,
/// with the farm's I/O on `io_threads` workers (0: on the scheduler's thread).
async fn three_agents_match_single_process(io_threads: usize) {
    let farm = farm::start(FarmConfig { io_threads, ..farm_config() }).expect("farm");
    let agents: Vec<AgentThread> = (0..3)
        .map(|i| AgentThread::spawn(even_agent_config(&farm, &format!("a{i}")), one_device(cpu())))
        .collect();
    farm.wait_for_agents(3, Duration::from_secs(60)).await.expect("3 agents");

    let challenge = Challenge::new("farm-it-512", 512, 1).expect("challenge");
    let report = farm.run_job(challenge.clone()).await.expect("job");
    assert_eq!(report.result_hash, expected(&challenge));
    assert_eq!(report.devices.len(), 3, "sharded over every device: {report:#?}");
    assert_eq!(report.devices.iter().map(|d| d.rows).sum::<u64>(), 512);
    assert!(report.devices.iter().all(|d| d.rows > 0), "{report:#?}");
    assert!(report.spot_checks_passed >= 3, "{report:#?}");
    assert_eq!(report.spot_checks_failed, 0);
    // Every shard was Freivalds-checked on its device, and none raised a false alarm.
    assert!(report.freivalds_checks_passed >= 3, "{report:#?}");
    assert_eq!((report.freivalds_checks_failed, report.shards_unchecked), (0, 0), "{report:#?}");

    // Several iterations and a size that does not divide evenly.
    let challenge = Challenge::new("farm-it-iter", 129, 3).expect("challenge");
    let report = farm.run_job(challenge.clone()).await.expect("job");
    assert_eq!(report.result_hash, expected(&challenge));
    drop(agents);
    shutdown(farm).await;
}

/// A CPU backend that blocks shards of one seed until released, so a test knows an agent is mid-shard.
#[derive(Debug)]
struct GatedBackend {
    inner: CpuBackend,
    seed: String,
    started: Mutex<Option<mpsc::Sender<()>>>,
    gate: Mutex<mpsc::Receiver<()>>,
}

impl Backend for GatedBackend {
    fn name(&self) -> &str {
        "gated"
    }
    fn info(&self) -> DeviceInfo {
        self.inner.info()
    }
    fn run_shard(&self, shard: &Shard, keep_rows: bool) -> Result<ShardOutput, BackendError> {
        if shard.challenge.seed() == self.seed {
            if let Some(tx) = self.started.lock().expect("lock").take() {
                let _ = tx.send(());
            }
            let _ = self.gate.lock().expect("lock").recv_timeout(Duration::from_secs(60));
            return Err(BackendError::InvalidShard("gated backend released".into()));
        }
        self.inner.run_shard(shard, keep_rows)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn farm_survives_an_agent_killed_mid_job() {
    let farm = farm::start(farm_config()).expect("farm");
    let seed = "farm-it-kill";
    let (started_tx, started_rx) = mpsc::channel();
    let (release_tx, release_rx) = mpsc::channel();
    let gated = Arc::new(GatedBackend {
        inner: CpuBackend::new(1).expect("cpu"),
        seed: seed.into(),
        started: Mutex::new(Some(started_tx)),
        gate: Mutex::new(release_rx),
    });
    let a = AgentThread::spawn(even_agent_config(&farm, "a"), one_device(cpu()));
    let b = AgentThread::spawn(even_agent_config(&farm, "b"), one_device(cpu()));
    let mut victim = AgentThread::spawn(even_agent_config(&farm, "victim"), one_device(gated));
    farm.wait_for_agents(3, Duration::from_secs(60)).await.expect("3 agents");

    let challenge = Challenge::new(seed, 512, 1).expect("challenge");
    let job = tokio::spawn({
        let (farm, challenge) = (farm.clone(), challenge.clone());
        async move { farm.run_job(challenge).await }
    });
    tokio::task::spawn_blocking(move || started_rx.recv_timeout(Duration::from_secs(60)))
        .await
        .expect("join")
        .expect("the victim got a shard");
    victim.kill();
    let _ = release_tx.send(());
    let report = job.await.expect("join").expect("job finishes without the victim");
    assert_eq!(report.result_hash, expected(&challenge));
    assert!(report.shards_reassigned >= 1, "{report:#?}");
    assert!(report.devices.iter().all(|d| d.agent != "victim" || d.rows == 0), "{report:#?}");
    drop((a, b, victim));
    shutdown(farm).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn farm_quarantines_a_faulty_device_and_still_gets_it_right() {
    let mut config = farm_config();
    // Whole-row recomputation: with fault injection every row, any checked row reveals the fault.
    config.spot_check.elements_per_row = u32::MAX;
    let farm = farm::start(config).expect("farm");
    let faulty: Arc<dyn Backend> =
        Arc::new(CpuBackend::new(1).expect("cpu").with_fault_injection(1));
    let agents = [
        AgentThread::spawn(even_agent_config(&farm, "good-a"), one_device(cpu())),
        AgentThread::spawn(even_agent_config(&farm, "good-b"), one_device(cpu())),
        AgentThread::spawn(even_agent_config(&farm, "liar"), one_device(faulty)),
    ];
    farm.wait_for_agents(3, Duration::from_secs(60)).await.expect("3 agents");
    let challenge = Challenge::new("farm-it-fault", 256, 1).expect("challenge");
    let report = farm.run_job(challenge.clone()).await.expect("job");
    assert_eq!(report.result_hash, expected(&challenge));
    assert_eq!(report.quarantined.len(), 1, "{report:#?}");
    // The liar's own Freivalds check fails its product before it hashes: it never answers leaves.
    assert!(report.freivalds_checks_failed >= 1, "{report:#?}");
    assert_eq!(report.spot_checks_failed, 0, "{report:#?}");
    assert!(report.devices.iter().all(|d| d.agent != "liar" || d.rows == 0), "{report:#?}");
    let devices = farm.devices().await.expect("devices");
    let liar = devices.iter().find(|d| d.agent == "liar").expect("liar still connected");
    assert!(liar.quarantined);
    // The next job does not use it at all.
    let challenge = Challenge::new("farm-it-fault-2", 128, 1).expect("challenge");
    let report = farm.run_job(challenge.clone()).await.expect("job");
    assert_eq!(report.result_hash, expected(&challenge));
    assert!(report.devices.iter().all(|d| d.agent != "liar"), "{report:#?}");
    drop(agents);
    shutdown(farm).await;
}

/// One flipped bit in one element of one shard, the fault ECC-less memory makes: the device's Freivalds check
/// fails that shard, the device is quarantined with the reason, the shard is recomputed on the honest
/// device, and the result is right.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn farm_recomputes_a_shard_that_failed_its_freivalds_check_and_quarantines_the_device() {
    let farm = farm::start(farm_config()).expect("farm");
    // No start-up measurement runs (`even_agent_config`): run 0 is the device's first shard.
    let flip = cpc_kernels::cpu::BitFlip { shard: 0, row: 3, col: 100, bit: 17 };
    let flaky: Arc<dyn Backend> = Arc::new(CpuBackend::new(1).expect("cpu").with_bit_flip(flip));
    let agents = [
        AgentThread::spawn(even_agent_config(&farm, "honest"), one_device(cpu())),
        AgentThread::spawn(even_agent_config(&farm, "bit-flip"), one_device(flaky)),
    ];
    farm.wait_for_agents(2, Duration::from_secs(60)).await.expect("2 agents");
    let challenge = Challenge::new("farm-it-freivalds", 256, 1).expect("challenge");
    let report = farm.run_job(challenge.clone()).await.expect("job");
    assert_eq!(report.result_hash, expected(&challenge), "{report:#?}");
    assert_eq!(report.freivalds_checks_failed, 1, "{report:#?}");
    assert!(report.freivalds_checks_passed >= 1, "{report:#?}");
    assert_eq!(report.shards_unchecked, 0, "{report:#?}");
    assert!(
        report.freivalds_check_share > 0.0 && report.freivalds_check_share < 1.0,
        "{report:#?}"
    );
    assert!(report.devices.iter().all(|d| d.agent != "bit-flip" || d.rows == 0), "{report:#?}");
    let devices = farm.devices().await.expect("devices");
    let flipped = devices.iter().find(|d| d.agent == "bit-flip").expect("still connected");
    let reason = flipped.quarantine_reason.as_deref().unwrap_or_default();
    assert!(flipped.quarantined && reason.contains("Freivalds"), "{devices:#?}");
    drop(agents);
    shutdown(farm).await;
}

/// A device whose C stays in device memory, like a GPU: it keeps no rows, so the agent recomputes the rows a
/// spot check asks for as one-row shards. With `flip`, every multi-row shard comes back with one element of
/// each row wrong and the leaves hashed from the wrong rows (a consistent lie, as a faulty GPU tells it);
/// one-row recomputations are right.
#[derive(Debug)]
struct RowsOnDevice {
    inner: CpuBackend,
    flip: bool,
}

impl Backend for RowsOnDevice {
    fn name(&self) -> &str {
        "rows-on-device"
    }
    fn info(&self) -> DeviceInfo {
        self.inner.info()
    }
    fn run_shard(&self, shard: &Shard, keep_rows: bool) -> Result<ShardOutput, BackendError> {
        if !self.flip || shard.row_count() == 1 {
            return self.inner.run_shard(shard, keep_rows);
        }
        let mut out = self.inner.run_shard(shard, true)?;
        let n = shard.challenge.matrix_size() as usize;
        let mut rows = out.rows.take().unwrap_or_default();
        for (i, row) in rows.chunks_mut(n).enumerate() {
            row[n / 2] = row[n / 2].wrapping_add(1);
            let bytes: Vec<u8> = row.iter().flat_map(|v| v.to_le_bytes()).collect();
            out.leaves[i] = cpc_common::hashing::sha256(&bytes);
        }
        out.rows = keep_rows.then_some(rows);
        Ok(out)
    }
    fn keeps_rows_cheaply(&self) -> bool {
        false
    }
}

/// Two agents of one [`RowsOnDevice`] each, `gpu-ok` honest and `gpu-flaky` lying, once both joined.
async fn honest_and_flaky_rows_on_device(farm: &FarmHandle) -> [AgentThread; 2] {
    let device = |flip| -> Arc<dyn Backend> {
        Arc::new(RowsOnDevice { inner: CpuBackend::new(1).expect("cpu"), flip })
    };
    let agents = [
        AgentThread::spawn(agent_config(farm, "gpu-ok"), one_device(device(false))),
        AgentThread::spawn(agent_config(farm, "gpu-flaky"), one_device(device(true))),
    ];
    farm.wait_for_agents(2, Duration::from_secs(60)).await.expect("2 agents");
    agents
}

/// The farm's devices, after checking that `gpu-flaky`'s alone is quarantined.
async fn only_the_flaky_device_is_quarantined(farm: &FarmHandle) -> Vec<farm::DeviceStatus> {
    let devices = farm.devices().await.expect("devices");
    let quarantined: Vec<&str> =
        devices.iter().filter(|d| d.quarantined).map(|d| d.agent.as_str()).collect();
    assert_eq!(quarantined, ["gpu-flaky"], "{devices:#?}");
    devices
}

/// GPU-like devices are spot-checked through recomputed rows: an honest one passes, and one whose shards
/// each carry a single wrong element per row is caught by the leaf check alone (the 8 sampled elements of a
/// 256-wide row would miss it most of the time), quarantined, and its rows recomputed elsewhere.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn farm_spot_checks_devices_that_keep_no_rows_by_recomputing_them() {
    let farm = farm::start(farm_config()).expect("farm");
    let agents = honest_and_flaky_rows_on_device(&farm).await;
    let challenge = Challenge::new("farm-it-rows-on-device", 256, 1).expect("challenge");
    let report = farm.run_job(challenge.clone()).await.expect("job");
    assert_eq!(report.result_hash, expected(&challenge), "{report:#?}");
    assert!(report.spot_checks_failed >= 1, "{report:#?}");
    assert!(
        report.spot_checks_passed >= 1,
        "the honest device's recomputed rows pass: {report:#?}"
    );
    only_the_flaky_device_is_quarantined(&farm).await;
    drop(agents);
    shutdown(farm).await;
}

/// Small jobs run whole, and an agent answers each by its iteration's Merkle root (protocol version 6), so
/// the coordinator never receives their leaves; its spot checks fetch rows with their Merkle paths. An
/// honest device's rows prove against its roots; a device whose roots were built from wrong rows (one
/// wrong element a row, the rows it shows recomputed right) fails the path check, is quarantined, and its
/// jobs are recomputed elsewhere: every result is right.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn farm_whole_jobs_are_answered_by_their_root_and_spot_checked_by_merkle_paths() {
    let mut config = farm_config();
    config.split = SplitPolicy { small_job: Duration::from_secs(3600), min_shard_rows: 8 };
    let farm = farm::start(config).expect("farm");
    let agents = honest_and_flaky_rows_on_device(&farm).await;
    // At once, so that both devices get a job in the first round.
    let challenges: Vec<Challenge> = (0..6)
        .map(|i| Challenge::new(format!("farm-it-roots-{i}"), 64, 1).expect("challenge"))
        .collect();
    let reports = futures_util::future::join_all(challenges.iter().map(|c| {
        let (farm, c) = (farm.clone(), c.clone());
        async move { farm.run_job(c).await }
    }))
    .await;
    let (mut passed, mut failed) = (0, 0);
    for (challenge, report) in challenges.iter().zip(reports) {
        let report = report.expect("job");
        assert_eq!(report.result_hash, expected(challenge), "{report:#?}");
        assert_eq!(
            report.shards_dispatched,
            1 + report.shards_reassigned,
            "ran whole: {report:#?}"
        );
        passed += report.spot_checks_passed;
        failed += report.spot_checks_failed;
    }
    assert!(passed >= 1 && failed >= 1, "spot checks: {passed} passed, {failed} failed");
    let devices = only_the_flaky_device_is_quarantined(&farm).await;
    let flaky = devices.iter().find(|d| d.quarantined).expect("quarantined");
    let reason = flaky.quarantine_reason.as_deref().unwrap_or_default();
    assert!(reason.contains("Merkle path"), "{reason}");
    drop(agents);
    shutdown(farm).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn farm_refuses_a_wrong_token_with_a_clear_message() {
    let farm = farm::start(farm_config()).expect("farm");
    let mut config = agent_config(&farm, "intruder");
    config.token = "not-the-token".into();
    let agent = AgentThread::spawn(config, one_device(cpu()));
    let err = tokio::task::spawn_blocking(move || agent.join())
        .await
        .expect("join")
        .expect_err("refused");
    assert!(matches!(err, AgentError::Refused(_)), "{err}");
    assert!(err.to_string().contains("invalid join token"), "{err}");
    assert!(farm.devices().await.expect("devices").is_empty());
    shutdown(farm).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn farm_agent_refuses_an_unpinned_coordinator() {
    let farm = farm::start(farm_config()).expect("farm");
    let other = Identity::generate().expect("identity");
    let mut config = agent_config(&farm, "careful");
    config.fingerprint = other.fingerprint();
    let agent = AgentThread::spawn(config, one_device(cpu()));
    let err = tokio::task::spawn_blocking(move || agent.join())
        .await
        .expect("join")
        .expect_err("mismatch");
    match &err {
        AgentError::FingerprintMismatch { presented, pinned } => {
            assert_eq!(presented, farm.fingerprint());
            assert_eq!(pinned, &other.fingerprint());
        }
        other => panic!("expected a fingerprint mismatch, got {other}"),
    }
    assert!(err.to_string().contains("--coordinator-fingerprint"), "{err}");
    assert!(farm.devices().await.expect("devices").is_empty(), "the token was never sent");
    shutdown(farm).await;
}

/// A QUIC connection to `farm` that pins its certificate, as an agent's does (and its endpoint).
async fn pinned_connection(farm: &FarmHandle) -> (quinn::Endpoint, quinn::Connection) {
    let pinned = cpc_agent::tls::parse_fingerprint(farm.fingerprint()).expect("fingerprint");
    let (client, _) =
        cpc_agent::tls::client_config(pinned, quinn::TransportConfig::default()).expect("client");
    let mut endpoint =
        quinn::Endpoint::client("127.0.0.1:0".parse().expect("addr")).expect("endpoint");
    endpoint.set_default_client_config(client);
    let conn =
        endpoint.connect(farm.local_addr(), "cpc-coordinator").expect("dial").await.expect("TLS");
    (endpoint, conn)
}

/// Opens a pinned QUIC connection and sends raw bytes as the first frame; answers the decoded reply.
async fn raw_hello(farm: &FarmHandle, bytes: Vec<u8>) -> Option<HelloReply> {
    let (endpoint, conn) = pinned_connection(farm).await;
    let (mut send, mut recv) = conn.open_bi().await.expect("stream");
    send.write_all(&bytes).await.expect("write");
    let _ = send.finish();
    let mut dec = FrameDecoder::new();
    let mut reply = None;
    while let Ok(Some(chunk)) = recv.read_chunk(4096, true).await {
        dec.push(&chunk.bytes);
        if let Ok(Some(r)) = dec.next_message::<HelloReply>() {
            reply = Some(r);
            break;
        }
    }
    conn.close(0u32.into(), b"done");
    endpoint.wait_idle().await;
    reply
}

/// Joins `farm` as a hand-driven agent of the current protocol named `name`, with one device that claims to
/// be very fast (so that the scheduler picks it first), and heartbeats until the connection is dropped.
async fn hand_driven_agent(farm: &FarmHandle, name: &str) -> quinn::Connection {
    let (endpoint, conn) = pinned_connection(farm).await;
    let (mut ctl_send, mut ctl_recv) = conn.open_bi().await.expect("control stream");
    let device = DeviceAdvert {
        index: 0,
        name: name.into(),
        kind: "gpu".into(),
        memory_bytes: 1 << 40,
        measured_ops_per_sec: 1e15,
        concurrent_shards: 1,
        row_capacity: advertised_sizes()
            .map(|matrix_size| RowCapacity { matrix_size, max_rows: matrix_size })
            .collect(),
    };
    let hello = Hello {
        protocol_version: PROTOCOL_VERSION,
        token: farm.token().to_owned(),
        agent_name: name.into(),
        devices: vec![device],
    };
    write_frame(&mut ctl_send, &hello).await.expect("hello");
    let mut dec = FrameDecoder::new();
    let welcome = read_frame::<HelloReply>(&mut ctl_recv, &mut dec).await.expect("read");
    let Some(HelloReply::Welcome { heartbeat_interval_ms, .. }) = welcome else {
        panic!("not welcomed: {welcome:?}");
    };
    tokio::spawn(async move {
        let _endpoint = endpoint;
        for seq in 0.. {
            if write_frame(&mut ctl_send, &AgentControl::Heartbeat { seq }).await.is_err() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(heartbeat_interval_ms.into())).await;
        }
    });
    conn
}

/// A [`hand_driven_agent`] that answers the first orders on its shard pipe with `garbage`.
async fn garbling_agent(farm: &FarmHandle, garbage: Vec<u8>) -> quinn::Connection {
    let conn = hand_driven_agent(farm, "garbler").await;
    let streams = conn.clone();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((mut send, mut recv)) = streams.accept_bi().await {
            let mut dec = FrameDecoder::new();
            if let Ok(Some(Request::OpenShardPipe(_))) = read_frame(&mut recv, &mut dec).await
                && let Ok(Some(ShardPipeOrders(_))) = read_frame(&mut recv, &mut dec).await
            {
                let _ = send.write_all(&garbage).await;
            }
            held.push((send, recv));
        }
    });
    conn
}

/// The coordinator opens an agent's shard pipe as the agent joins, before any job: a block's first shards
/// do not wait for the stream to open.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn farm_opens_a_joined_agent_s_shard_pipe_before_its_first_shard() {
    let farm = farm::start(farm_config()).expect("farm");
    let agent = hand_driven_agent(&farm, "early").await;
    let opened = tokio::time::timeout(Duration::from_secs(30), async {
        let (_send, mut recv) = agent.accept_bi().await.expect("a stream from the coordinator");
        read_frame::<Request>(&mut recv, &mut FrameDecoder::new()).await.expect("read")
    })
    .await
    .expect("the pipe opened without a job");
    assert!(matches!(opened, Some(Request::OpenShardPipe(_))), "{opened:?}");
    agent.close(0u32.into(), b"done");
    shutdown(farm).await;
}

/// An agent whose shard pipe answers do not decode has every shard it held answered wrong: its device is
/// quarantined with the reason, and the job's result is computed right by the honest device.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn farm_quarantines_an_agent_that_garbles_its_shard_pipe() {
    let mut config = farm_config();
    config.split = SplitPolicy { small_job: Duration::from_secs(1), min_shard_rows: 8 };
    let farm = farm::start(config).expect("farm");
    let honest = AgentThread::spawn(agent_config(&farm, "honest"), one_device(cpu()));
    farm.wait_for_agents(1, Duration::from_secs(60)).await.expect("honest agent");
    // A length prefix, then a payload that is no sequence of answers.
    let garbler = garbling_agent(&farm, vec![0, 0, 0, 2, 0xff, 0xff]).await;
    farm.wait_for_agents(2, Duration::from_secs(60)).await.expect("both agents");

    let challenge = Challenge::new("garbled-pipe", 64, 1).expect("challenge");
    let report = farm.run_job(challenge.clone()).await.expect("job");
    assert_eq!(report.result_hash, expected(&challenge));
    let rows_by = |agent: &str| -> u64 {
        report.devices.iter().filter(|d| d.agent == agent).map(|d| d.rows).sum()
    };
    assert_eq!((rows_by("honest"), rows_by("garbler")), (64, 0), "{report:#?}");
    assert_eq!((report.spot_checks_failed, report.shards_reassigned), (1, 1), "{report:#?}");
    let garbled = farm
        .devices()
        .await
        .expect("devices")
        .into_iter()
        .find(|d| d.agent == "garbler")
        .expect("the garbler is listed");
    assert!(garbled.quarantined, "{garbled:#?}");
    let reason = garbled.quarantine_reason.unwrap_or_default();
    assert!(reason.contains("undecodable answer on the shard pipe"), "{reason}");
    garbler.close(0u32.into(), b"done");
    drop(honest);
    shutdown(farm).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn farm_garbage_frames_do_not_disturb_other_agents() {
    assert_eq!(ALPN, b"cpcfarm/1");
    let farm = farm::start(farm_config()).expect("farm");
    let agents = [
        AgentThread::spawn(agent_config(&farm, "a"), one_device(cpu())),
        AgentThread::spawn(agent_config(&farm, "b"), one_device(cpu())),
    ];
    farm.wait_for_agents(2, Duration::from_secs(60)).await.expect("2 agents");
    let challenge = Challenge::new("farm-it-garbage", 384, 1).expect("challenge");
    let job = tokio::spawn({
        let (farm, challenge) = (farm.clone(), challenge.clone());
        async move { farm.run_job(challenge).await }
    });

    // A well-framed payload that is not a Hello.
    let mut garbage = 16u32.to_be_bytes().to_vec();
    garbage.extend_from_slice(&[0xff; 16]);
    match raw_hello(&farm, garbage).await {
        Some(HelloReply::Refused { reason }) => {
            assert!(reason.contains("malformed frame"), "{reason}")
        }
        other => panic!("expected a refusal, got {other:?}"),
    }
    // A length prefix far above the handshake's cap.
    match raw_hello(&farm, u32::MAX.to_be_bytes().to_vec()).await {
        Some(HelloReply::Refused { reason }) => assert!(reason.contains("exceeds"), "{reason}"),
        other => panic!("expected a refusal, got {other:?}"),
    }
    // A real encoder's frame of the wrong type.
    let wrong = codec::encode(&cpc_common::wire::Request::FetchRow(cpc_common::wire::FetchRow {
        shard_id: 1,
        row: 2,
    }))
    .expect("encode");
    assert!(matches!(raw_hello(&farm, wrong).await, Some(HelloReply::Refused { .. })));

    let report = job.await.expect("join").expect("job");
    assert_eq!(report.result_hash, expected(&challenge));
    assert_eq!(farm.devices().await.expect("devices").len(), 2, "the good agents are still there");
    drop(agents);
    shutdown(farm).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn farm_drained_agent_leaves_cleanly_and_metrics_are_served() {
    let mut config = farm_config();
    config.metrics_listen = Some("127.0.0.1:0".parse().expect("addr"));
    let farm = farm::start(config).expect("farm");
    let a = AgentThread::spawn(agent_config(&farm, "a"), one_device(cpu()));
    let b = AgentThread::spawn(agent_config(&farm, "b"), one_device(cpu()));
    farm.wait_for_agents(2, Duration::from_secs(60)).await.expect("2 agents");
    let challenge = Challenge::new("farm-it-metrics", 128, 1).expect("challenge");
    let report = farm.run_job(challenge.clone()).await.expect("job");
    assert_eq!(report.result_hash, expected(&challenge));

    b.drain();
    tokio::task::spawn_blocking(move || b.join()).await.expect("join").expect("drained cleanly");
    let report =
        farm.run_job(Challenge::new("farm-it-after-drain", 96, 1).expect("c")).await.expect("job");
    assert!(report.devices.iter().all(|d| d.agent == "a"), "{report:#?}");

    let base = format!("http://{}", farm.metrics_addr().expect("metrics addr"));
    let client = reqwest::Client::new();
    let metrics = client
        .get(format!("{base}/metrics"))
        .send()
        .await
        .expect("GET")
        .text()
        .await
        .expect("body");
    for name in [
        "cpcfarm_build_info",
        "cpcfarm_shards_dispatched_total",
        "cpcfarm_shards_completed_total",
        "cpcfarm_spot_checks_passed_total",
        "cpcfarm_freivalds_checks_total{outcome=\"pass\"}",
        "cpcfarm_freivalds_check_ratio",
        "cpcfarm_shard_duration_seconds_bucket",
        "cpcfarm_job_duration_seconds",
        "cpcfarm_agents_connected",
        "process_resident_memory_bytes",
    ] {
        assert!(metrics.contains(name), "{name} missing from:\n{metrics}");
    }
    // Every family is described (promtool check metrics: "no help text"). The agents of this test run in
    // this process and share its recorder: their descriptions are the agent binary's.
    cpc_agent::metrics::install_recorder();
    let metrics = client
        .get(format!("{base}/metrics"))
        .send()
        .await
        .expect("GET")
        .text()
        .await
        .expect("body");
    for family in metrics.lines().filter_map(|l| l.strip_prefix("# TYPE ")) {
        let name = family.split_whitespace().next().unwrap_or_default();
        assert!(metrics.contains(&format!("# HELP {name} ")), "{name} has no HELP:\n{metrics}");
    }
    for path in ["healthz", "readyz"] {
        let status = client.get(format!("{base}/{path}")).send().await.expect("GET").status();
        assert_eq!(status.as_u16(), 200, "/{path}");
    }
    drop(a);
    shutdown(farm).await;
}

/// How [`FaultyDevice`] fails shards of its seed: as a wedged GPU (the call never returns), or as a CUDA
/// error that leaves the device unusable.
#[derive(Debug, Clone, Copy)]
enum DeviceFault {
    Hang,
    CudaError,
}

/// A CPU backend that fails (see [`DeviceFault`]) every shard whose seed starts with `seed`; the start-up
/// measurement and other seeds run normally.
#[derive(Debug)]
struct FaultyDevice {
    inner: CpuBackend,
    seed: &'static str,
    fault: DeviceFault,
}

impl Backend for FaultyDevice {
    fn name(&self) -> &str {
        "faulty"
    }
    fn info(&self) -> DeviceInfo {
        self.inner.info()
    }
    fn run_shard(&self, shard: &Shard, keep_rows: bool) -> Result<ShardOutput, BackendError> {
        if !shard.challenge.seed().starts_with(self.seed) {
            return self.inner.run_shard(shard, keep_rows);
        }
        match self.fault {
            DeviceFault::Hang => {
                // Far past the watchdog; the agent abandons this thread and never joins it.
                std::thread::sleep(Duration::from_secs(300));
                Err(BackendError::InvalidShard("woke up".into()))
            }
            DeviceFault::CudaError => Err(BackendError::Cuda {
                device: "cuda:0 test".into(),
                reason: "cuStreamSynchronize: an illegal memory access was encountered".into(),
            }),
        }
    }
}

/// One agent, device 0 faulty and device 1 healthy: the job still gives the single-process result, device 0
/// ends up quarantined on the coordinator with the agent's reason, device 1 is not, and the next job runs on
/// device 1 alone.
async fn faulty_device_is_quarantined_and_the_other_keeps_serving(
    fault: DeviceFault,
    seed: &'static str,
    reason_contains: &str,
) {
    let farm = farm::start(farm_config()).expect("farm");
    let mut config = agent_config(&farm, "faulty");
    config.watchdog = Duration::from_millis(500);
    config.measure_matrix_size = 0; // see `even_agent_config`
    let faulty = FaultyDevice { inner: CpuBackend::new(1).expect("cpu backend"), seed, fault };
    let devices = vec![
        DeviceSpec { index: 0, backend: Arc::new(faulty) },
        DeviceSpec { index: 1, backend: cpu() },
    ];
    let agent = AgentThread::spawn(config, devices);
    farm.wait_for_devices(2, Duration::from_secs(60)).await.expect("2 devices");

    let challenge = Challenge::new(format!("{seed}-1"), 256, 1).expect("challenge");
    let report = farm.run_job(challenge.clone()).await.expect("job despite a faulty device");
    assert_eq!(report.result_hash, expected(&challenge), "{report:#?}");

    // The quarantine travels on the control stream: it may land just after the job's last shard.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let devices = loop {
        let devices = farm.devices().await.expect("devices");
        if devices.iter().any(|d| d.quarantined) || tokio::time::Instant::now() >= deadline {
            break devices;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let state = |suffix: &str| {
        devices
            .iter()
            .find(|d| d.device.ends_with(suffix))
            .unwrap_or_else(|| panic!("{devices:#?}"))
    };
    let bad = state("/gpu0");
    assert!(bad.quarantined, "{devices:#?}");
    let why = bad.quarantine_reason.as_deref().unwrap_or_default();
    assert!(why.contains(reason_contains), "reason {why:?} lacks {reason_contains:?}");
    assert!(!state("/gpu1").quarantined, "{devices:#?}");

    // The next job (a seed the faulty device could compute) runs on the healthy device alone.
    let challenge = Challenge::new("after-quarantine", 129, 2).expect("challenge");
    let report = farm.run_job(challenge.clone()).await.expect("next job");
    assert_eq!(report.result_hash, expected(&challenge));
    assert!(report.devices.iter().all(|d| d.device.ends_with("/gpu1")), "{report:#?}");
    assert_eq!(report.devices.iter().map(|d| d.rows).sum::<u64>(), 129 * 2);
    assert!(!agent.is_finished(), "the agent keeps running");
    drop(agent);
    shutdown(farm).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn farm_quarantines_a_hung_device_and_keeps_serving() {
    faulty_device_is_quarantined_and_the_other_keeps_serving(
        DeviceFault::Hang,
        "farm-hang",
        "did not finish",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn farm_quarantines_a_device_with_a_cuda_error_and_keeps_serving() {
    faulty_device_is_quarantined_and_the_other_keeps_serving(
        DeviceFault::CudaError,
        "farm-cuda-error",
        "illegal memory access",
    )
    .await;
}

/// Makespan of n = 2048 on one agent, then on two (each agent one CPU thread: this machine has two cores).
/// `cargo test -p cpc-tests --release --test farm farm_makespan -- --ignored --nocapture`
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "benchmark: run on purpose"]
async fn farm_makespan_1_vs_2_agents() {
    let challenge = Challenge::new("farm-makespan-2048", 2048, 1).expect("challenge");
    let want = expected(&challenge);
    for agents in [1usize, 2] {
        let mut config = farm_config();
        config.spot_check.seed = None;
        let farm = farm::start(config).expect("farm");
        let threads: Vec<AgentThread> = (0..agents)
            .map(|i| {
                let mut c = agent_config(&farm, &format!("m{i}"));
                c.measure_matrix_size = 256;
                AgentThread::spawn(c, one_device(cpu()))
            })
            .collect();
        farm.wait_for_agents(agents, Duration::from_secs(60)).await.expect("agents");
        let report = farm.run_job(challenge.clone()).await.expect("job");
        assert_eq!(report.result_hash, want);
        println!(
            "n=2048 on {agents} agent(s): makespan {:.3} s, {:.3e} ops/s; per device: {}",
            report.makespan_seconds,
            report.achieved_ops_per_sec,
            report
                .devices
                .iter()
                .map(|d| format!(
                    "{} {} rows {:.3e} ops/s",
                    d.agent, d.rows, d.achieved_ops_per_sec
                ))
                .collect::<Vec<_>>()
                .join("; ")
        );
        drop(threads);
        shutdown(farm).await;
    }
}

/// Many jobs at once (a block's tasks for many identities): all answered, each with its own right root,
/// spread over both agents, and a dropped caller's job cancelled without disturbing the others.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn farm_runs_many_jobs_at_once_over_every_device() {
    let farm = farm::start(farm_config()).expect("farm");
    let agents: Vec<AgentThread> = (0..2)
        .map(|i| AgentThread::spawn(agent_config(&farm, &format!("m{i}")), one_device(cpu())))
        .collect();
    farm.wait_for_agents(2, Duration::from_secs(60)).await.expect("2 agents");
    let challenges: Vec<Challenge> = (0..60)
        .map(|i| Challenge::new(format!("many-{i}"), 64, 1 + i % 2).expect("challenge"))
        .collect();
    let abandoned = farm.run_job(Challenge::new("abandoned", 1024, 1).expect("challenge"));
    drop(abandoned);
    let reports = futures_util::future::join_all(challenges.iter().map(|c| {
        let farm = farm.clone();
        let c = c.clone();
        async move { farm.run_job(c).await }
    }))
    .await;
    let mut devices = std::collections::BTreeSet::new();
    for (c, report) in challenges.iter().zip(reports) {
        let report = report.expect("job");
        assert_eq!(report.result_hash, expected(c), "{}", c.seed());
        devices.extend(report.devices.iter().map(|d| d.agent.clone()));
    }
    assert_eq!(devices.len(), 2, "both agents computed: {devices:?}");
    drop(agents);
    shutdown(farm).await;
}

/// A coordinator serves an agent of the protocol before the shard pipe (a QUIC stream per shard) beside a
/// current one (every shard on its pipe), jobs handed over together in one `run_all`: small jobs run whole
/// (answered by their root), a larger one is sharded over both, and every result is right either way.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn farm_serves_agents_before_the_shard_pipe_beside_current_ones() {
    let mut config = farm_config();
    config.split = SplitPolicy { small_job: Duration::from_millis(2), min_shard_rows: 8 };
    let farm = farm::start(config).expect("farm");
    let mut older = agent_config(&farm, "older");
    older.protocol_version = SHARD_PIPE_SINCE - 1;
    let agents = [
        AgentThread::spawn(older, one_device(cpu())),
        AgentThread::spawn(agent_config(&farm, "current"), one_device(cpu())),
    ];
    farm.wait_for_agents(2, Duration::from_secs(60)).await.expect("2 agents");
    let versions: std::collections::BTreeSet<u16> =
        farm.devices().await.expect("devices").iter().map(|d| d.protocol_version).collect();
    assert_eq!(versions, [SHARD_PIPE_SINCE - 1, PROTOCOL_VERSION].into(), "{versions:?}");

    let challenges: Vec<Challenge> = (0..24)
        .map(|i| Challenge::new(format!("pipe-{i}"), 64, 1 + i % 2).expect("challenge"))
        .collect();
    let mut runs = farm.run_all(challenges.iter().cloned().map(JobSpec::new).collect());
    // One dropped before it is ever polled: its job is cancelled, the others go on.
    let dropped = runs.remove(5);
    drop(dropped);
    let large = Challenge::new("pipe-large", 1024, 1).expect("challenge");
    let (reports, large_report) =
        tokio::join!(futures_util::future::join_all(runs), farm.run_job(large.clone()));
    let mut agents_used = std::collections::BTreeSet::new();
    let kept = challenges.iter().enumerate().filter(|(i, _)| *i != 5).map(|(_, c)| c);
    for (c, report) in kept.zip(reports) {
        let report = report.expect("job");
        assert_eq!(report.result_hash, expected(c), "{}", c.seed());
        assert!(report.devices.iter().all(|d| d.rows % 64 == 0), "runs whole: {report:#?}");
        agents_used.extend(report.devices.iter().map(|d| d.agent.clone()));
    }
    assert_eq!(agents_used.len(), 2, "both agents computed: {agents_used:?}");
    let large_report = large_report.expect("large job");
    assert_eq!(large_report.result_hash, expected(&large));
    assert_eq!(large_report.devices.len(), 2, "sharded over both: {large_report:#?}");
    assert_eq!(large_report.spot_checks_failed, 0, "{large_report:#?}");
    drop(agents);
    shutdown(farm).await;
}

/// A farm stops when the process's shutdown token (its config's) is cancelled, answering a waiting job
/// `Shutdown`; a farm's own `shutdown` cancels only its child of that token, so a second farm sharing the
/// token keeps going.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn farm_stops_on_the_process_token_and_its_own_shutdown_stops_only_itself() {
    let process = CancellationToken::new();
    let sharing = || FarmConfig { shutdown: process.clone(), ..farm_config() };
    let waiting_farm = farm::start(sharing()).expect("farm");
    let other = farm::start(sharing()).expect("farm");
    // No device: the job waits (`no_device_wait` is 30 s).
    let challenge = Challenge::new("farm-it-token", 64, 1).expect("challenge");
    let mut waiting = tokio::spawn({
        let farm = waiting_farm.clone();
        async move { farm.run_job(challenge).await }
    });

    shutdown(other).await;
    assert!(!process.is_cancelled(), "a farm's own shutdown cancels only its child token");
    assert!(
        tokio::time::timeout(Duration::from_millis(300), &mut waiting).await.is_err(),
        "the other farm's shutdown left this farm's job waiting"
    );

    process.cancel();
    let answer = tokio::time::timeout(Duration::from_secs(20), waiting)
        .await
        .expect("the process token stops the farm, which answers its waiting job")
        .expect("join");
    assert!(matches!(answer, Err(JobError::Shutdown)), "{answer:?}");
    shutdown(waiting_farm).await;
}
