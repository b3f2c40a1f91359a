//! `cpc-devnet`: a single-validator ComputeChain devnet for tests and the quick start. Parses arguments,
//! sets up logging (stderr; stdout carries only the listening line) and runs [`cpc_tests::devnet::run`]
//! until SIGTERM or Ctrl-C.

use anyhow::Context as _;
use clap::Parser;
use cpc_tests::devnet::{
    DevnetConfig,
    chain::{
        ChainConfig, DEFAULT_EPOCH_LENGTH, DEFAULT_MEMPOOL_CAP, DEFAULT_PREMINE, DEVNET_CHAIN_ID,
    },
    run,
};
use std::{net::SocketAddr, path::PathBuf, time::Duration};

/// A single-validator ComputeChain devnet that answers like the public node.
#[derive(Debug, Parser)]
#[command(name = "cpc-devnet", version)]
struct Args {
    /// Address to serve the node's HTTP API on (port 0: a free port, printed at start).
    #[arg(
        long,
        env = "CPC_DEVNET_LISTEN",
        default_value = "127.0.0.1:8000",
        help_heading = "Network"
    )]
    listen: SocketAddr,

    /// Interval between blocks, e.g. `5s`, `200ms`, `1.5s` (a bare number is seconds).
    #[arg(long, env = "CPC_DEVNET_BLOCK_TIME", default_value = "5s", value_parser = parse_duration, help_heading = "Chain")]
    block_time: Duration,

    /// Directory holding the chain database; the chain lives in memory when absent.
    #[arg(long, env = "CPC_DEVNET_DATA_DIR", help_heading = "Chain")]
    data_dir: Option<PathBuf>,

    /// Genesis balance of the devnet faucet, in 10^-18 CPC (used only when creating a chain).
    #[arg(long, env = "CPC_DEVNET_PREMINE", default_value_t = DEFAULT_PREMINE, help_heading = "Chain")]
    premine: u128,

    /// Chain id written into headers and answered as `network`.
    #[arg(long, default_value = DEVNET_CHAIN_ID, help_heading = "Chain")]
    chain_id: String,

    /// Most transactions in the mempool (`mempool_full` beyond).
    #[arg(long, default_value_t = DEFAULT_MEMPOOL_CAP, help_heading = "Chain")]
    mempool_cap: usize,

    /// Blocks per epoch.
    #[arg(long, default_value_t = DEFAULT_EPOCH_LENGTH, help_heading = "Chain")]
    epoch_length: u64,

    /// Answer 429 (Retry-After: 1) beyond this many HTTP requests a second, as a saturated node would.
    #[arg(long, env = "CPC_DEVNET_MAX_REQUESTS_PER_SEC", help_heading = "Node")]
    max_requests_per_sec: Option<u32>,
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let (number, scale) = if let Some(ms) = s.strip_suffix("ms") {
        (ms, 0.001)
    } else if let Some(sec) = s.strip_suffix('s') {
        (sec, 1.0)
    } else {
        (s, 1.0)
    };
    let value: f64 =
        number.trim().parse().map_err(|_| format!("`{s}` is not a duration like 5s or 200ms"))?;
    if !value.is_finite() || value <= 0.0 {
        return Err(format!("`{s}`: the block time must be positive"));
    }
    Ok(Duration::from_secs_f64(value * scale))
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(mut term) => {
            tokio::select! {
                _ = ctrl_c => {}
                _ = term.recv() => {}
            }
        }
        Err(_) => {
            let _ = ctrl_c.await;
        }
    }
    tracing::info!("shutdown signal received");
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
    let args = Args::parse();
    let config = DevnetConfig {
        listen: args.listen,
        block_time: args.block_time,
        data_dir: args.data_dir,
        chain: ChainConfig {
            chain_id: args.chain_id,
            premine: args.premine,
            mempool_cap: args.mempool_cap,
            epoch_length: args.epoch_length,
            ..ChainConfig::default()
        },
        max_requests_per_sec: args.max_requests_per_sec,
    };
    run(config, shutdown_signal()).await.context("cpc-devnet stopped with an error")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse() {
        assert_eq!(parse_duration("200ms"), Ok(Duration::from_millis(200)));
        assert_eq!(parse_duration("5s"), Ok(Duration::from_secs(5)));
        assert_eq!(parse_duration("1.5"), Ok(Duration::from_millis(1500)));
        assert!(parse_duration("0s").is_err());
        assert!(parse_duration("soon").is_err());
    }
}
