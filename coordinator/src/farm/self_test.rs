//! The known-answer self-test a device must pass before an operator's `readmit` lifts its quarantine.
//!
//! A quarantined device was wrong or broken once; letting it back on the operator's word alone would put
//! its next wrong answer into a block's result. So the coordinator first sends it one small shard of a
//! fresh challenge, pinned to that device on its agent's connection (outside the scheduler: the device takes
//! no scheduled work while quarantined), and compares every leaf with the same rows computed here by the
//! CPU backend. Any difference, a device error, a failed Freivalds check or no answer within
//! [`SELF_TEST_TIMEOUT`] refuses the readmission with the reason.

use cpc_common::{
    hashing::Digest32,
    quic::call,
    synthetic::Challenge,
    wire::{DeviceAdvert, RunShard, ShardAnswer},
};
use cpc_kernels::{Backend as _, CpuBackend, Shard};
use rand::{Rng as _, RngCore as _};
use serde::{Deserialize, Serialize};
use std::time::{Duration, Instant};

/// Matrix size of the self-test's challenge: large enough to run the device's real kernels, small enough
/// to answer in milliseconds on any device and on the coordinator's CPU.
pub const SELF_TEST_MATRIX_SIZE: u32 = 64;
/// Longest time the device has to answer.
pub const SELF_TEST_TIMEOUT: Duration = Duration::from_secs(30);
/// Threads of the CPU reference computation.
const REFERENCE_THREADS: usize = 2;

/// A passed self-test.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SelfTestReport {
    /// The challenge's seed.
    pub seed: String,
    /// n.
    pub matrix_size: u32,
    /// Rows computed on the device and checked against the CPU.
    pub rows: u32,
    /// Round trip of the device's answer.
    pub device_seconds: f64,
}

/// Runs the self-test on device `advert.index` of the agent behind `conn`; answers its report, or why it
/// failed (the text an operator sees).
pub async fn run(
    conn: &quinn::Connection,
    advert: &DeviceAdvert,
) -> Result<SelfTestReport, String> {
    let n = SELF_TEST_MATRIX_SIZE;
    let rows = advert.max_rows_at(n).min(n);
    if rows == 0 {
        return Err(format!("the device holds no rows at n = {n}: it cannot run the self-test"));
    }
    let seed = format!("cpc-farm-self-test/{:016x}", rand::rngs::OsRng.next_u64());
    let challenge = Challenge::new(seed.clone(), n, 1).map_err(|e| e.to_string())?;
    let expected = {
        let challenge = challenge.clone();
        tokio::task::spawn_blocking(move || reference_leaves(challenge, rows))
    };
    let request = RunShard {
        // Above the scheduler's shard ids (below 2^62), so the agent's row cache never confuses the two.
        shard_id: rand::thread_rng().gen_range(1u64 << 62..1u64 << 63),
        challenge: challenge.clone(),
        iteration: 0,
        rows: (0, rows),
        device: advert.index,
        check_seed: rand::rngs::OsRng.next_u64(),
    };
    let started = Instant::now();
    let answer = tokio::time::timeout(SELF_TEST_TIMEOUT, ask(conn, &request))
        .await
        .map_err(|_| format!("the device did not answer within {SELF_TEST_TIMEOUT:?}"))??;
    let device_seconds = started.elapsed().as_secs_f64();
    let expected =
        expected.await.map_err(|e| format!("the CPU reference did not finish: {e}"))??;
    if answer.len() != expected.len() {
        return Err(format!("the device answered {} leaves for {rows} rows", answer.len()));
    }
    if let Some(row) = answer.iter().zip(&expected).position(|(got, want)| got != want) {
        return Err(format!(
            "row {row} of the known-answer shard ({seed}, n = {n}) differs from the CPU's: the device still \
             computes wrong results"
        ));
    }
    Ok(SelfTestReport { seed, matrix_size: n, rows, device_seconds })
}

/// Sends the shard and reads its leaves, or the device's reason for not giving them.
async fn ask(conn: &quinn::Connection, request: &RunShard) -> Result<Vec<Digest32>, String> {
    let (mut send, mut recv) =
        conn.open_bi().await.map_err(|e| format!("cannot reach the agent: {e}"))?;
    match call(&mut send, &mut recv, request.clone()).await {
        Ok(Some(ShardAnswer::Done { shard_id, leaves, .. })) if shard_id == request.shard_id => {
            Ok(leaves)
        }
        Ok(Some(ShardAnswer::Done { shard_id, .. })) => {
            Err(format!("the agent answered shard {shard_id}, not {}", request.shard_id))
        }
        Ok(Some(ShardAnswer::Root { .. })) => {
            Err("the agent answered a root where the self-test asked for every leaf".into())
        }
        Ok(Some(ShardAnswer::CheckFailed { reason, .. })) => {
            Err(format!("the device failed its Freivalds check: {reason}"))
        }
        Ok(Some(ShardAnswer::Failed { reason, .. } | ShardAnswer::Refused { reason })) => {
            Err(format!("the device could not run the shard: {reason}"))
        }
        Ok(None) => Err("the agent closed the stream without an answer".into()),
        Err(e) => Err(format!("the shard's stream failed: {e}")),
    }
}

/// The leaves of rows `0..rows` computed by the CPU backend.
fn reference_leaves(challenge: Challenge, rows: u32) -> Result<Vec<Digest32>, String> {
    let fail = |e: cpc_kernels::BackendError| format!("the CPU reference failed: {e}");
    let backend = CpuBackend::new(REFERENCE_THREADS).map_err(fail)?;
    let shard = Shard::new(challenge, 0, 0..rows).map_err(fail)?;
    Ok(backend.run_shard(&shard, false).map_err(fail)?.leaves)
}
