//! Commands that compute: `task` (derive and compute a block task locally) and `verify` (recompute a
//! worker's on-chain result).

use super::{EXIT_MISMATCH, GlobalArgs, output::print_json};
use clap::Args;
use cpc_common::synthetic::{BlockTask, DEFAULT_MATRIX_SIZE};
use cpc_coordinator::{submit, verify};
use cpc_kernels::{Backend, BackendKind, cpu::Kernel};
use serde_json::json;
use std::{process::ExitCode, sync::Arc, time::Instant};

/// Which local backend computes.
#[derive(Debug, Args)]
pub(crate) struct BackendArgs {
    /// Compute backend.
    #[arg(long, default_value = "cpu", help_heading = "Compute")]
    pub(crate) backend: BackendKind,
    /// Device index (for `cuda`).
    #[arg(long, default_value_t = 0, help_heading = "Compute")]
    pub(crate) device: usize,
    /// Force the CPU backend's GEMM kernel (avx512vnni, avxvnni, avx2, scalar) instead of the fastest this
    /// CPU has; refused when the CPU lacks it.
    #[arg(long, env = "CPC_CPU_KERNEL", value_name = "KERNEL", help_heading = "Compute")]
    pub(crate) kernel: Option<Kernel>,
}

impl BackendArgs {
    fn open(&self) -> anyhow::Result<Arc<dyn Backend>> {
        Ok(Arc::from(cpc_kernels::open_with_kernel(self.backend, self.device, self.kernel)?))
    }
}

#[derive(Debug, Args)]
pub(crate) struct TaskArgs {
    /// Hash of the block that seeds the task.
    #[arg(long)]
    block_hash: String,
    /// The worker identity: a `cpc1...` address or a key name from the keystore.
    #[arg(long)]
    worker: String,
    /// Matrix size n.
    #[arg(long, default_value_t = DEFAULT_MATRIX_SIZE)]
    matrix_size: u32,
    /// Height of the seeding block (the ComputeResult nonce).
    #[arg(long, default_value_t = 0)]
    height: u64,
    /// Sign the ComputeResult with this key (it must be the worker's).
    #[arg(long)]
    from: Option<String>,
    #[command(flatten)]
    backend: BackendArgs,
}

pub(crate) async fn task(g: &GlobalArgs, mut args: TaskArgs) -> anyhow::Result<ExitCode> {
    check_block_hash(&args.block_hash)?;
    args.worker = super::chain::resolve_address(g, &args.worker)?;
    let task = BlockTask::derive(&args.block_hash, &args.worker, args.matrix_size, args.height)?;
    let backend = args.backend.open()?;
    let challenge = task.challenge.clone();
    let compute = Arc::clone(&backend);
    let started = Instant::now();
    let root =
        tokio::task::spawn_blocking(move || cpc_kernels::result_hash(compute.as_ref(), &challenge))
            .await??;
    let elapsed = started.elapsed().as_secs_f64();
    let result_hash = hex::encode(root);
    let n = f64::from(args.matrix_size);
    let gops = 2.0 * n * n * n / elapsed / 1e9;

    let result = match &args.from {
        Some(name) => {
            let key = g.keystore().load(name)?;
            if key.address.as_str() != args.worker {
                anyhow::bail!("key `{name}` is {}, not the worker {}", key.address, args.worker);
            }
            submit::block_task_result(&key.secret, &task, &result_hash)?
        }
        None => cpc_common::ComputeResult {
            task_id: task.task_id.to_string(),
            worker_address: args.worker.clone(),
            result_hash: result_hash.clone(),
            proof: String::new(),
            nonce: task.height.into(),
            signature: String::new(),
        },
    };
    if g.json {
        print_json(&json!({
            "task_id": task.task_id.to_string(),
            "seed": task.challenge.seed(),
            "matrix_size": args.matrix_size,
            "height": task.height,
            "result_hash": result_hash,
            "compute_result": result,
            "backend": backend.name(),
            "elapsed_seconds": elapsed,
            "gops": gops,
        }))?;
    } else {
        println!("task_id      {}", task.task_id);
        println!("seed         {}", task.challenge.seed());
        println!("matrix_size  {}", args.matrix_size);
        println!("result_hash  {result_hash}");
        println!("backend      {}", backend.name());
        println!("elapsed      {elapsed:.3} s ({gops:.1} GOPS, 2n^3 ops)");
        println!("{}", result.canonical_json());
    }
    Ok(ExitCode::SUCCESS)
}

#[derive(Debug, Args)]
pub(crate) struct VerifyArgs {
    /// Height of the block whose hash seeded the task (the ComputeResult nonce).
    #[arg(long)]
    height: u64,
    /// The worker: a `cpc1...` address or a key name from the keystore.
    #[arg(long)]
    worker: String,
    /// Matrix size the worker was expected to use.
    #[arg(long, default_value_t = DEFAULT_MATRIX_SIZE)]
    matrix_size: u32,
    /// How many blocks after `height` to search for the submission.
    #[arg(long, default_value_t = 100)]
    search_blocks: u64,
    #[command(flatten)]
    backend: BackendArgs,
}

pub(crate) async fn verify(g: &GlobalArgs, mut args: VerifyArgs) -> anyhow::Result<ExitCode> {
    args.worker = super::chain::resolve_address(g, &args.worker)?;
    let backend = args.backend.open()?;
    let v = verify::verify_worker(
        &g.node(),
        args.height,
        &args.worker,
        args.matrix_size,
        args.search_blocks,
        backend,
    )
    .await?;
    let valid = v.is_valid();
    if g.json {
        print_json(&json!({"verdict": v, "valid": valid}))?;
    } else {
        let yes = |b: bool| if b { "yes" } else { "NO" };
        println!("task_id          {} (matches: {})", v.task.task_id, yes(v.task_id_matches));
        println!("included_in      block {} (tx {})", v.included_in, v.tx_hash);
        println!("submitted        {}", v.submitted.result_hash);
        println!("recomputed       {} ({:.3} s)", v.expected_result_hash, v.compute_seconds);
        println!("result matches   {}", yes(v.result_hash_matches));
        println!("block valid      {} (signatures, compute_root)", yes(v.block_valid));
        match v.payload_signature_valid {
            Some(ok) => println!("payload signed   {}", yes(ok)),
            None => println!("payload signed   no signature"),
        }
        println!("verdict          {}", if valid { "VALID" } else { "INVALID" });
    }
    Ok(if valid { ExitCode::SUCCESS } else { ExitCode::from(EXIT_MISMATCH) })
}

/// A block hash as the L1 prints it: 64 lower-case hex digits (the task's seed hashes the text, so another
/// spelling of the same bytes would derive another task).
fn check_block_hash(hash: &str) -> anyhow::Result<()> {
    if hash.len() == 64 && hash.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)) {
        return Ok(());
    }
    Err(super::UsageError(format!(
        "invalid --block-hash `{hash}`: expected 64 lower-case hex digits (the block's `hash` from `query block`)"
    ))
    .into())
}
