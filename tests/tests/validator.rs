//! PoC validator jobs end to end: the real `cpc-coordinator run --compute local` process against a real
//! `cpc-devnet` and the test validator of `cpc_tests::validator` (a WebSocket server). A mix of jobs is
//! answered with the reference result_hash and a signature that verifies; malformed, unknown and oversize
//! frames get a `job_error` and the connection stays up; a validator that drops the connection mid-job
//! gets its answer after the reconnect, from the journal; a job accepted before a SIGKILL is answered
//! after the restart; and SUBMIT_RESULTs keep landing every block throughout.

use anyhow::Context as _;
use cpc_common::{PublicKey, TxType, keystore::Keystore};
use cpc_coordinator::mining::journal::{Journal, ValidatorJobState};
use cpc_tests::{
    devnet::chain::FAUCET_PRIVATE_KEY,
    harness::{DevnetOptions, DevnetProcess, coordinator_command},
    validator::{TestJob, TestValidator, quantile},
};
use serde_json::Value;
use std::{
    collections::BTreeSet,
    path::PathBuf,
    process::{Child, Output, Stdio},
    time::{Duration, Instant, SystemTime},
};

/// Matrix size of the block tasks.
const MATRIX_SIZE: u32 = 64;
/// How long any single wait may take.
const WAIT: Duration = Duration::from_secs(60);

/// A miner process, killed when dropped (a failing test leaves nothing behind).
struct Miner(Child);

impl Drop for Miner {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A devnet with 300 ms blocks, a keystore with the faucet and a funded `w1`, a data dir.
struct Farm {
    devnet: DevnetProcess,
    dir: tempfile::TempDir,
    address: String,
}

impl Farm {
    fn new() -> anyhow::Result<Self> {
        let dir = tempfile::tempdir()?;
        let devnet =
            DevnetProcess::start(DevnetOptions::located()?.block_time(Duration::from_millis(300)))?;
        let mut farm = Self { devnet, dir, address: String::new() };
        farm.cli(&["keys", "import", "faucet", FAUCET_PRIVATE_KEY])?;
        let out = farm.cli(&["--json", "keys", "add", "w1"])?;
        let v: Value = serde_json::from_slice(&out.stdout)?;
        farm.address = v["address"].as_str().context("address")?.to_owned();
        farm.cli(&["tx", "send", "w1", "5", "--from", "faucet", "--wait", "30"])?;
        Ok(farm)
    }

    fn keystore(&self) -> PathBuf {
        self.dir.path().join("keys")
    }

    fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    fn public_key(&self) -> anyhow::Result<PublicKey> {
        Ok(Keystore::new(self.keystore()).load("w1")?.secret.public_key())
    }

    fn cli(&self, args: &[&str]) -> anyhow::Result<Output> {
        let out = coordinator_command()
            .args(["--node", &self.devnet.url(), "--keystore"])
            .arg(self.keystore())
            .args(args)
            .output()?;
        anyhow::ensure!(out.status.success(), "{args:?}: {}", String::from_utf8_lossy(&out.stderr));
        Ok(out)
    }

    /// `cpc-coordinator run` for `w1`, computing locally, taking jobs from `validators`.
    fn miner(&self, validators: &[String], extra: &[&str], log: &str) -> anyhow::Result<Miner> {
        let log = std::fs::File::create(self.dir.path().join(log))?;
        let mut cmd = coordinator_command();
        cmd.args(["--node", &self.devnet.url(), "--keystore"])
            .arg(self.keystore())
            .args(["run", "--identity", "w1", "--compute", "local", "--data-dir"])
            .arg(self.data_dir())
            .args([
                "--matrix-size",
                &MATRIX_SIZE.to_string(),
                "--poll-interval-ms",
                "40",
                "--listen",
                "127.0.0.1:0",
            ]);
        for v in validators {
            cmd.arg("--validator").arg(format!("{v}=w1"));
        }
        let child =
            cmd.args(extra).env("RUST_LOG", "info").stdout(Stdio::null()).stderr(log).spawn()?;
        Ok(Miner(child))
    }

    fn log(&self, name: &str) -> String {
        std::fs::read_to_string(self.dir.path().join(name)).unwrap_or_default()
    }

    fn height(&self) -> anyhow::Result<u64> {
        Ok(self.devnet.status()?.height)
    }

    /// Heights of the blocks whose task `w1` has a SUBMIT_RESULT for on chain.
    fn mined_heights(&self) -> anyhow::Result<BTreeSet<u64>> {
        let head = self.height()?;
        let mut out = BTreeSet::new();
        for h in 0..=head {
            let (code, body) = self.devnet.get(&format!("/block/{h}"))?;
            anyhow::ensure!(code == 200, "block {h}: {code}");
            let block: cpc_common::Block = serde_json::from_str(&body)?;
            for tx in block
                .txs
                .iter()
                .filter(|t| t.tx_type == TxType::SubmitResult && t.from_address == self.address)
            {
                let r = cpc_common::ComputeResult::from_payload(&tx.payload)?;
                out.insert(r.nonce.to_u64().context("height nonce")?);
            }
        }
        Ok(out)
    }

    /// Waits until `w1` has a SUBMIT_RESULT on chain for a task seeded at `height` or later.
    fn wait_mined_from(&self, height: u64) -> anyhow::Result<()> {
        let deadline = Instant::now() + WAIT;
        while !self.mined_heights()?.iter().any(|h| *h >= height) {
            anyhow::ensure!(Instant::now() < deadline, "no SUBMIT_RESULT from block {height} on");
            std::thread::sleep(Duration::from_millis(100));
        }
        Ok(())
    }
}

fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// A seed of 64 hex characters (what a block task's seed looks like).
fn hex_seed(i: u8) -> String {
    hex::encode(cpc_common::sha256([i]))
}

#[test]
fn a_mix_of_jobs_is_answered_correctly_while_every_block_is_mined() -> anyhow::Result<()> {
    let farm = Farm::new()?;
    let validator = TestValidator::start()?;
    // A validator nobody listens on: it must never hold the miner back.
    let dead = format!("ws://127.0.0.1:{}/jobs", free_port()?);
    let metrics = format!("127.0.0.1:{}", free_port()?);
    let _miner = farm.miner(&[validator.url(), dead], &["--metrics", &metrics], "run.log")?;
    validator.wait_for_connection(1, WAIT)?;
    let worker = farm.public_key()?;
    let start = farm.height()?;

    // A stream of jobs over a few seconds (several blocks): hex and non-hex seeds, iterations 1-3,
    // sizes from 1 to 128, with and without a nonce.
    let seeds = [
        hex_seed(1),
        "hello world".to_owned(),
        "ключ 🔑 with spaces".to_owned(),
        String::new(),
        hex_seed(2).to_uppercase(),
        "0x1234".to_owned(),
    ];
    let sizes = [1, 17, 64, 100, 128, 33];
    let mut jobs = Vec::new();
    for i in 0..24usize {
        let mut job = TestJob::new(
            &format!("mix-{i}"),
            &seeds[i % seeds.len()],
            sizes[i % sizes.len()],
            (i % 3) as u32 + 1,
        );
        if i % 2 == 1 {
            job.nonce = Some(1000 + i as u64);
        }
        validator.send_job(&job);
        jobs.push(job);
        std::thread::sleep(Duration::from_millis(150));
    }
    let mut latencies = Vec::new();
    for job in &jobs {
        let answer = validator.wait_for_answer(&job.job_id, WAIT)?;
        job.check(&answer.value, &worker)?;
        assert_eq!(answer.connection, 1);
        latencies.extend(validator.latency(&job.job_id));
    }
    let end = farm.height()?;
    eprintln!(
        "{} validator jobs answered over blocks {start}..={end}: latency p50 {:?}, p90 {:?}, max {:?}",
        jobs.len(),
        quantile(&latencies, 0.5).unwrap_or_default(),
        quantile(&latencies, 0.9).unwrap_or_default(),
        quantile(&latencies, 1.0).unwrap_or_default(),
    );

    // Block mining went on throughout: a SUBMIT_RESULT for (nearly) every block of the window. A block
    // can be superseded when two come within one poll, as in the mining tests.
    farm.wait_mined_from(end)?;
    let mined = farm.mined_heights()?;
    let window: Vec<u64> = (start + 1..end).collect();
    let missed: Vec<&u64> = window.iter().filter(|h| !mined.contains(h)).collect();
    assert!(window.len() >= 10, "the jobs spanned only {} blocks", window.len());
    assert!(
        missed.len() * 5 <= window.len(),
        "blocks without a SUBMIT_RESULT while validator jobs ran: {missed:?} of {window:?}"
    );

    // Metrics: the live validator is up, the dead one is not, every job completed.
    let text = reqwest::blocking::get(format!("http://{metrics}/metrics"))?.text()?;
    let label = validator.url().trim_start_matches("ws://").trim_end_matches("/jobs").to_owned();
    let line = |name: &str| {
        text.lines()
            .find(|l| l.starts_with(&format!("{name}{{validator=\"{label}\"}}")))
            .map(str::to_owned)
            .unwrap_or_default()
    };
    assert!(line("cpcfarm_validator_connections_up").ends_with(" 1"), "{text}");
    assert!(
        line("cpcfarm_validator_jobs_completed_total").ends_with(&format!(" {}", jobs.len())),
        "{text}"
    );
    assert!(text.contains("cpcfarm_validator_job_duration_seconds_count"), "{text}");
    let log = farm.log("run.log");
    assert!(log.contains("cannot connect to validator"), "the dead validator was tried:\n{log}");
    Ok(())
}

#[test]
fn malformed_unknown_and_oversize_frames_get_job_error_and_the_connection_stays_up()
-> anyhow::Result<()> {
    let farm = Farm::new()?;
    let validator = TestValidator::start()?;
    let _miner =
        farm.miner(&[validator.url()], &["--max-validator-matrix-size", "128"], "run.log")?;
    validator.wait_for_connection(1, WAIT)?;
    let worker = farm.public_key()?;

    validator.send_raw("{this is not json");
    validator.send_raw(r#"{"type": "hello", "job_id": "greeting"}"#);
    validator.send_job(&TestJob::new("big", "s", 4096, 1));
    validator.send_raw(
        r#"{"type": "job", "job_id": "no-task", "payload": {"seed": "s", "matrix_size": 8}}"#,
    );
    validator.send_raw(r#"{"type": "job", "job_id": "zero", "task_id": "t", "payload": {"seed": "s", "matrix_size": 8, "iterations": 0}}"#);
    validator.send_raw(r#"{"type": "job", "job_id": "llm", "task_id": "t", "payload": {"challenge_type": "llm", "seed": "s", "matrix_size": 8}}"#);
    let mut late = TestJob::new("late", "s", 8, 1);
    late.deadline =
        Some(SystemTime::now().duration_since(SystemTime::UNIX_EPOCH)?.as_secs_f64() - 60.0);
    validator.send_job(&late);
    let good = TestJob::new("good", "after the errors", 128, 2);
    validator.send_job(&good);

    let error = |job_id: &str| -> anyhow::Result<String> {
        let r = validator.wait_for_answer(job_id, WAIT)?;
        assert_eq!(r.value["type"], "job_error", "{}", r.value);
        assert_eq!(r.connection, 1);
        Ok(r.value["error"].as_str().unwrap_or_default().to_owned())
    };
    let anonymous = validator.wait_for_anonymous(0, WAIT)?;
    assert_eq!(anonymous.value["type"], "job_error");
    assert!(
        anonymous.value["error"].as_str().unwrap_or_default().starts_with("malformed JSON"),
        "{}",
        anonymous.value
    );
    assert!(error("greeting")?.contains("unknown message type `hello`"));
    assert_eq!(error("big")?, "matrix_size 4096 is over this worker's limit of 128");
    assert_eq!(error("no-task")?, "missing field `task_id`");
    assert!(error("zero")?.contains("payload.iterations"));
    assert!(error("llm")?.contains("unknown message type `job/llm`"));
    assert_eq!(error("late")?, "deadline exceeded");
    let answer = validator.wait_for_answer("good", WAIT)?;
    good.check(&answer.value, &worker)?;
    assert_eq!(answer.connection, 1, "the connection stayed up through the errors");
    assert_eq!(validator.connections(), 1);
    Ok(())
}

#[test]
fn a_validator_that_drops_the_connection_mid_job_gets_the_answer_after_reconnecting()
-> anyhow::Result<()> {
    let farm = Farm::new()?;
    let validator = TestValidator::start()?;
    let _miner = farm.miner(&[validator.url()], &[], "run.log")?;
    validator.wait_for_connection(1, WAIT)?;
    let worker = farm.public_key()?;
    let start = farm.height()?;

    let mut job = TestJob::new("mid", "dropped mid-job", 128, 3);
    job.nonce = Some(77);
    validator.send_job(&job);
    validator.drop_connection();
    validator.wait_for_connection(2, WAIT)?;
    let answer = validator.wait_for_answer("mid", WAIT)?;
    assert_eq!(answer.connection, 2, "answered on the new connection, without being sent again");
    job.check(&answer.value, &worker)?;

    // The validator sends the same job id again: the same answer, from the journal.
    validator.send_job(&job);
    let deadline = Instant::now() + WAIT;
    let again = loop {
        let answers: Vec<Value> = validator
            .received()
            .into_iter()
            .filter(|r| r.value["job_id"] == "mid")
            .map(|r| r.value)
            .collect();
        if answers.len() >= 2 {
            break answers;
        }
        anyhow::ensure!(Instant::now() < deadline, "the re-sent job was not answered");
        std::thread::sleep(Duration::from_millis(20));
    };
    assert_eq!(again[0], again[1], "a re-sent job gets the same answer");

    // Blocks were mined while the validator came and went.
    farm.wait_mined_from(farm.height()?)?;
    assert!(farm.mined_heights()?.iter().any(|h| *h > start));
    let journal = Journal::open(&farm.data_dir().join("journal.sqlite"))?;
    let jobs = journal.validator_jobs()?;
    assert_eq!(jobs.len(), 1);
    assert_eq!(jobs[0].state, ValidatorJobState::Answered);
    Ok(())
}

#[test]
fn a_job_accepted_before_a_crash_is_answered_after_the_restart() -> anyhow::Result<()> {
    let farm = Farm::new()?;
    let validator = TestValidator::start()?;
    let extra = ["--max-validator-matrix-size", "1024"];
    let mut miner = farm.miner(&[validator.url()], &extra, "run-1.log")?;
    validator.wait_for_connection(1, WAIT)?;
    let worker = farm.public_key()?;

    // Heavy enough that the kill lands while it computes.
    let job = TestJob::new("crash", "accepted, then SIGKILL", 1024, 4);
    validator.send_job(&job);
    let journal_path = farm.data_dir().join("journal.sqlite");
    let deadline = Instant::now() + WAIT;
    let state_at_kill = loop {
        let journal = Journal::open(&journal_path)?;
        if let Some(j) = journal.validator_jobs()?.into_iter().find(|j| j.job_id == "crash") {
            miner.0.kill()?;
            miner.0.wait()?;
            break journal
                .validator_jobs()?
                .into_iter()
                .find(|j| j.job_id == "crash")
                .map_or(j.state, |j| j.state);
        }
        anyhow::ensure!(Instant::now() < deadline, "the job was never journaled");
        std::thread::sleep(Duration::from_millis(2));
    };
    eprintln!("job state when the miner was killed: {state_at_kill:?}");
    assert_ne!(state_at_kill, ValidatorJobState::Answered, "killed too late to test recovery");

    let _miner = farm.miner(&[validator.url()], &extra, "run-2.log")?;
    let answer = validator.wait_for_answer("crash", WAIT)?;
    assert_eq!(answer.connection, 2, "answered after the restart");
    job.check(&answer.value, &worker)?;
    Ok(())
}

#[test]
fn submit_to_l1_also_lands_a_validator_job_as_a_submit_result() -> anyhow::Result<()> {
    let farm = Farm::new()?;
    let validator = TestValidator::start()?;
    let config = farm.dir.path().join("farm.toml");
    std::fs::write(
        &config,
        format!(
            "[[validators]]\nurl = \"{}\"\nidentity = \"w1\"\nsubmit_to_l1 = true\n",
            validator.url()
        ),
    )?;
    let config = config.to_string_lossy().into_owned();
    let _miner = farm.miner(&[], &["--config", &config], "run.log")?;
    validator.wait_for_connection(1, WAIT)?;
    let worker = farm.public_key()?;

    let mut job = TestJob::new("l1", "validator job for the L1", 64, 2);
    job.task_id = "0b8f2d7e-5c1a-8a4b-9c3d-2e1f0a9b8c7d".to_owned();
    job.nonce = Some(4242);
    validator.send_job(&job);
    let answer = validator.wait_for_answer("l1", WAIT)?;
    job.check(&answer.value, &worker)?;

    // The identity's submitter sends it with the next block: the same payload, signed the same way.
    let deadline = Instant::now() + WAIT;
    loop {
        if farm.mined_heights()?.contains(&4242) {
            break;
        }
        anyhow::ensure!(Instant::now() < deadline, "the validator job never landed on the L1");
        std::thread::sleep(Duration::from_millis(100));
    }
    let mut found = None;
    for h in 0..=farm.height()? {
        let (_, body) = farm.devnet.get(&format!("/block/{h}"))?;
        let block: cpc_common::Block = serde_json::from_str(&body)?;
        for tx in block.txs.iter().filter(|t| t.tx_type == TxType::SubmitResult) {
            let r = cpc_common::ComputeResult::from_payload(&tx.payload)?;
            if r.task_id == job.task_id {
                found = Some(r);
            }
        }
    }
    let on_chain = found.context("SUBMIT_RESULT with the job's task_id")?;
    assert_eq!(on_chain.result_hash, answer.value["result_hash"].as_str().unwrap_or_default());
    assert_eq!(on_chain.signature, answer.value["signature"].as_str().unwrap_or_default());
    assert!(on_chain.verify_signature(&worker));
    Ok(())
}
