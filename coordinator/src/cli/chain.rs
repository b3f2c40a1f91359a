//! Commands that read or write the L1: `status`, `balance`, `tx send`, `submit-result`, `query block`.

use super::{
    EXIT_MISMATCH, GlobalArgs,
    output::{format_cpc, parse_cpc, print_json},
};
use anyhow::Context as _;
use clap::{Args, Subcommand};
use cpc_common::{Address, keystore::StoredKey, tx::MIN_GAS_PRICE};
use cpc_coordinator::{
    l1::NodeClient,
    submit::{self, Outgoing},
    verify::check_block,
};
use serde_json::json;
use std::{process::ExitCode, time::Duration};

#[derive(Debug, Subcommand)]
pub(crate) enum TxCommand {
    /// Transfer CPC (e.g. to fund a worker identity from the faucet).
    Send {
        /// Recipient address or key name.
        to: String,
        /// Amount in CPC (decimal, e.g. 10 or 0.25), or in 10^-18 units with --base-units.
        amount: String,
        /// Key name of the sender.
        #[arg(long)]
        from: String,
        /// AMOUNT is an integer in 10^-18 CPC.
        #[arg(long)]
        base_units: bool,
        #[command(flatten)]
        send: SendArgs,
    },
}

/// How a transaction is priced and whether to wait for it.
#[derive(Debug, Args)]
pub(crate) struct SendArgs {
    /// Gas price (the node's minimum is 1000).
    #[arg(long, default_value_t = MIN_GAS_PRICE, help_heading = "Sending")]
    gas_price: u64,
    /// Wait up to this many seconds for the transaction to appear in a block (0: don't wait).
    #[arg(long, default_value_t = 0, help_heading = "Sending")]
    wait: u64,
}

/// `submit-result`, with cpc-cli's flags.
#[derive(Debug, Args)]
pub(crate) struct SubmitResultArgs {
    /// Task id (a UUID).
    #[arg(long)]
    task_id: String,
    /// Result hash (64 hex characters).
    #[arg(long)]
    result_hash: String,
    /// Proof string (may be empty).
    #[arg(long, default_value = "")]
    proof: String,
    /// ComputeResult nonce (for block tasks: the height of the block that seeded the task).
    #[arg(long, default_value = "0")]
    nonce: String,
    /// Key name of the worker.
    #[arg(long)]
    from: String,
    #[command(flatten)]
    send: SendArgs,
}

#[derive(Debug, Subcommand)]
pub(crate) enum QueryCommand {
    /// Show a block, check its transaction signatures and recompute its compute_root.
    Block {
        /// Block height.
        height: u64,
    },
}

pub(crate) async fn status(g: &GlobalArgs) -> anyhow::Result<ExitCode> {
    let s = g.node().status().await?;
    if g.json {
        print_json(&s)?;
    } else {
        println!("node        {}", g.node_url());
        println!("network     {}", s.network);
        println!("height      {}", s.height);
        println!("last_hash   {}", s.last_hash);
        println!("mempool     {}", s.mempool_size);
        println!("epoch       {}", s.epoch);
    }
    Ok(ExitCode::SUCCESS)
}

/// An address as typed, or the address of a key name; neither is a usage error (exit 2).
pub(crate) fn resolve_address(g: &GlobalArgs, who: &str) -> anyhow::Result<String> {
    if who.starts_with("cpc1") {
        return who
            .parse::<Address>()
            .map(|a| a.to_string())
            .map_err(|e| super::UsageError(format!("invalid address `{who}`: {e}")).into());
    }
    let keystore = g.keystore();
    match keystore.load(who) {
        Ok(key) => Ok(key.address.to_string()),
        Err(e) => Err(super::UsageError(format!(
            "`{who}` is neither a cpc1... address nor a usable key name ({e})"
        ))
        .into()),
    }
}

pub(crate) async fn balance(g: &GlobalArgs, who: &str) -> anyhow::Result<ExitCode> {
    let address = resolve_address(g, who)?;
    let b = g.node().balance(&address).await?;
    if g.json {
        print_json(&b)?;
    } else {
        let cpc = b.balance_u128().map(format_cpc).unwrap_or_else(|| b.balance.clone());
        println!("address     {}", b.address);
        println!("balance     {cpc} CPC ({} base units)", b.balance);
        println!("nonce       {}", b.nonce);
    }
    Ok(ExitCode::SUCCESS)
}

fn load_key(g: &GlobalArgs, name: &str) -> anyhow::Result<StoredKey> {
    Ok(g.keystore().load(name)?)
}

pub(crate) async fn tx(g: &GlobalArgs, cmd: TxCommand) -> anyhow::Result<ExitCode> {
    let TxCommand::Send { to, amount, from, base_units, send } = cmd;
    let key = load_key(g, &from)?;
    let to = resolve_address(g, &to)?;
    let amount = if base_units {
        amount
            .parse::<u128>()
            .with_context(|| format!("invalid amount `{amount}`: expected an integer"))?
    } else {
        parse_cpc(&amount)?
    };
    let out = Outgoing::transfer(to, amount, send.gas_price);
    send_and_report(g, &key, &out, send.wait).await
}

pub(crate) async fn submit_result(
    g: &GlobalArgs,
    args: SubmitResultArgs,
) -> anyhow::Result<ExitCode> {
    let key = load_key(g, &args.from)?;
    let nonce: cpc_common::PyInt = args
        .nonce
        .parse()
        .map_err(|_| anyhow::anyhow!("invalid --nonce `{}`: expected an integer", args.nonce))?;
    let result =
        submit::signed_result(&key.secret, &args.task_id, &args.result_hash, &args.proof, nonce)?;
    let out = Outgoing::submit_result(&result, args.send.gas_price);
    send_and_report(g, &key, &out, args.send.wait).await
}

async fn send_and_report(
    g: &GlobalArgs,
    key: &StoredKey,
    out: &Outgoing,
    wait: u64,
) -> anyhow::Result<ExitCode> {
    let node = g.node();
    let start_height = node.status().await?.height;
    let tx = submit::send(&node, &key.secret, out).await?;
    let tx_hash = tx.hash_hex();
    let included = if wait > 0 {
        wait_for_inclusion(&node, &tx_hash, start_height, wait).await?
    } else {
        None
    };
    if g.json {
        print_json(&json!({
            "tx_hash": tx_hash,
            "status": "received",
            "nonce": tx.nonce,
            "fee": tx.fee.to_string(),
            "included_in": included,
            "tx": tx,
        }))?;
    } else {
        println!("tx_hash     {tx_hash}");
        println!("status      received (nonce {}, fee {} CPC)", tx.nonce, format_cpc(tx.fee));
        match included {
            Some(h) => println!("included    block {h}"),
            None if wait > 0 => {
                println!("included    not yet (waited {wait}s); check `query block`")
            }
            None => {}
        }
    }
    Ok(if wait > 0 && included.is_none() {
        ExitCode::from(EXIT_MISMATCH)
    } else {
        ExitCode::SUCCESS
    })
}

/// Polls new blocks from `from` until `tx_hash` shows up or `secs` pass.
async fn wait_for_inclusion(
    node: &NodeClient,
    tx_hash: &str,
    from: u64,
    secs: u64,
) -> anyhow::Result<Option<u64>> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(secs);
    let mut next = from;
    loop {
        let (found, scanned) = node.find_tx(tx_hash, next).await?;
        if found.is_some() {
            return Ok(found);
        }
        next = scanned + 1;
        if tokio::time::Instant::now() >= deadline {
            return Ok(None);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

pub(crate) async fn query(g: &GlobalArgs, cmd: QueryCommand) -> anyhow::Result<ExitCode> {
    let QueryCommand::Block { height } = cmd;
    let block = g
        .node()
        .block(height)
        .await?
        .ok_or_else(|| anyhow::anyhow!("block {height} does not exist yet"))?;
    let check = check_block(&block);
    if g.json {
        print_json(&json!({"block": block, "check": check, "valid": check.is_valid()}))?;
    } else {
        let h = &block.header;
        println!("height        {}", h.height);
        println!("hash          {}", check.hash);
        println!("prev_hash     {}", h.prev_hash);
        println!("timestamp     {}", h.timestamp);
        println!("proposer      {}", h.proposer_address);
        println!("txs           {}", block.txs.len());
        for t in check.submissions() {
            let verdict = match (&t.compute_result, t.signature_valid, t.payload_signature_valid) {
                (Some(Err(e)), _, _) => format!("INVALID payload: {e}"),
                (_, false, _) => "INVALID tx signature".to_owned(),
                (_, _, Some(false)) => "INVALID payload signature".to_owned(),
                (_, _, Some(true)) => "ok (payload signed)".to_owned(),
                _ => "ok".to_owned(),
            };
            println!("  SUBMIT_RESULT {} from {}: {verdict}", t.tx_hash, t.from_address);
            if let Some(Ok(r)) = &t.compute_result {
                println!(
                    "    task_id {} result_hash {} nonce {}",
                    r.task_id, r.result_hash, r.nonce
                );
            }
        }
        let recomputed = check.recomputed_compute_root.as_deref().unwrap_or("<invalid payload>");
        let mark = if check.recomputed_compute_root.as_deref() == Some(h.compute_root.as_str()) {
            "verified"
        } else {
            "MISMATCH"
        };
        println!("compute_root  {:?} (recomputed {:?}: {mark})", h.compute_root, recomputed);
    }
    Ok(if check.is_valid() { ExitCode::SUCCESS } else { ExitCode::from(EXIT_MISMATCH) })
}
