//! `cpc-devnet`: a single-validator ComputeChain L1 that a worker cannot tell from the public node
//! (same RPC paths, JSON shapes, status codes, admission rules and reasons, inclusion rules, header hash
//! chain and `compute_root`), for tests and the quick start.
//!
//! - [`chain`]: the state machine (accounts, mempool, block production), pure and unit-tested;
//! - [`wire`]: `/tx/send` bodies read as FastAPI/pydantic reads them (400 vs 422);
//! - [`store`]: SQLite persistence (`--data-dir`), or an in-memory database;
//! - [`server`]: the axum routes.
//!
//! [`Devnet::bind`] opens or creates the chain and binds the listener; [`Devnet::serve`] runs the HTTP
//! server and the block producer until the shutdown future completes.

pub mod chain;
#[cfg(test)]
mod fuzz;
pub mod server;
pub mod store;
pub mod wire;

use chain::{Chain, ChainConfig};
use server::Shared;
use std::{
    future::Future,
    io::Write as _,
    net::SocketAddr,
    path::PathBuf,
    sync::{Arc, Mutex},
    time::Duration,
};
use store::{Store, StoreError};
use tokio::{net::TcpListener, sync::watch, task::JoinHandle};

/// Default listen address (the node's port).
pub const DEFAULT_LISTEN: &str = "127.0.0.1:8000";
/// Default block interval (the public devnet's).
pub const DEFAULT_BLOCK_TIME: Duration = Duration::from_secs(5);
/// How long shutdown waits for in-flight requests before giving up on them.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// Everything `cpc-devnet` is started with.
#[derive(Debug, Clone)]
pub struct DevnetConfig {
    /// Address to listen on (port 0 picks a free one).
    pub listen: SocketAddr,
    /// Interval between blocks.
    pub block_time: Duration,
    /// Where the chain is persisted; in memory when `None`.
    pub data_dir: Option<PathBuf>,
    /// Consensus parameters.
    pub chain: ChainConfig,
    /// Answer 429 beyond this many requests a second (a saturated node); unlimited when `None`.
    pub max_requests_per_sec: Option<u32>,
}

impl Default for DevnetConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 8000)),
            block_time: DEFAULT_BLOCK_TIME,
            data_dir: None,
            chain: ChainConfig::default(),
            max_requests_per_sec: None,
        }
    }
}

/// Why the devnet could not start or had to stop.
#[derive(Debug, thiserror::Error)]
pub enum DevnetError {
    /// The listen address is taken or not ours.
    #[error(
        "cannot listen on {addr}: {source} (pick another with --listen, or port 0 for a free one)"
    )]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// Why.
        source: std::io::Error,
    },
    /// The database failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The HTTP server failed.
    #[error("http server failed: {0}")]
    Serve(std::io::Error),
    /// A devnet task panicked or was cancelled.
    #[error("devnet task failed: {0}")]
    Task(String),
}

/// The line printed on stdout once listening.
pub fn listening_line(addr: SocketAddr) -> String {
    format!("cpc-devnet listening on http://{addr}")
}

/// A bound, ready devnet.
#[derive(Debug)]
pub struct Devnet {
    listener: TcpListener,
    shared: Arc<Shared>,
    block_time: Duration,
}

impl Devnet {
    /// Opens (or creates, with a genesis block) the chain and binds the listener.
    pub async fn bind(config: DevnetConfig) -> Result<Self, DevnetError> {
        let mut store = match &config.data_dir {
            Some(dir) => Store::open(dir)?,
            None => Store::in_memory()?,
        };
        store.check_chain_id(&config.chain.chain_id)?;
        let chain = match store.load()? {
            Some(store::Persisted { tip, accounts }) => {
                tracing::info!(height = tip.height, "resuming chain from the data dir");
                Chain::restore(config.chain.clone(), tip, accounts)
            }
            None => {
                let (chain, genesis) = Chain::genesis(config.chain.clone(), server::now());
                store.commit(&genesis)?;
                tracing::info!(faucet = %config.chain.faucet_address, premine = %config.chain.premine, "new chain");
                chain
            }
        };
        let listener = TcpListener::bind(config.listen)
            .await
            .map_err(|source| DevnetError::Bind { addr: config.listen, source })?;
        let shared = Arc::new(Shared {
            chain: Mutex::new(chain),
            store: Mutex::new(store),
            http: server::HttpStats::default(),
            rate_limit: config.max_requests_per_sec.map(server::RateLimit::new),
        });
        Ok(Self { listener, shared, block_time: config.block_time.max(Duration::from_millis(1)) })
    }

    /// The address actually bound.
    pub fn local_addr(&self) -> Result<SocketAddr, DevnetError> {
        self.listener.local_addr().map_err(DevnetError::Serve)
    }

    /// Serves HTTP and produces blocks until `shutdown` completes (or a task fails), then stops both,
    /// giving in-flight requests [`SHUTDOWN_GRACE`].
    pub async fn serve(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> Result<(), DevnetError> {
        let (stop_tx, stop_rx) = watch::channel(false);
        let mut producer: JoinHandle<Result<(), DevnetError>> =
            tokio::spawn(produce_blocks(self.shared.clone(), self.block_time, stop_rx.clone()));
        let app = server::router(self.shared.clone());
        let mut stop_http = stop_rx;
        let mut http: JoinHandle<std::io::Result<()>> = tokio::spawn(async move {
            axum::serve(self.listener, app)
                .with_graceful_shutdown(async move {
                    let _ = stop_http.wait_for(|stop| *stop).await;
                })
                .await
        });
        let (mut producer_done, mut http_done) = (false, false);
        let outcome = tokio::select! {
            () = shutdown => Ok(()),
            r = &mut producer => {
                producer_done = true;
                r.map_err(|e| DevnetError::Task(e.to_string())).and_then(|r| r)
            }
            r = &mut http => {
                http_done = true;
                r.map_err(|e| DevnetError::Task(e.to_string())).and_then(|r| r.map_err(DevnetError::Serve))
            }
        };
        let _ = stop_tx.send(true);
        let drain = async {
            if !producer_done {
                let _ = (&mut producer).await;
            }
            if !http_done {
                let _ = (&mut http).await;
            }
        };
        if tokio::time::timeout(SHUTDOWN_GRACE, drain).await.is_err() {
            tracing::warn!(
                "in-flight requests did not finish within {SHUTDOWN_GRACE:?}; stopping anyway"
            );
            producer.abort();
            http.abort();
        }
        tracing::info!(height = self.shared.chain().height(), "devnet stopped");
        outcome
    }
}

/// Binds, prints [`listening_line`] on stdout (flushed), and serves until `shutdown`.
pub async fn run(
    config: DevnetConfig,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), DevnetError> {
    let devnet = Devnet::bind(config).await?;
    let addr = devnet.local_addr()?;
    let mut stdout = std::io::stdout().lock();
    let _ = writeln!(stdout, "{}", listening_line(addr));
    let _ = stdout.flush();
    drop(stdout);
    tracing::info!(%addr, "devnet ready");
    devnet.serve(shutdown).await
}

async fn produce_blocks(
    shared: Arc<Shared>,
    block_time: Duration,
    mut stop: watch::Receiver<bool>,
) -> Result<(), DevnetError> {
    let mut interval =
        tokio::time::interval_at(tokio::time::Instant::now() + block_time, block_time);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = interval.tick() => {
                let mut chain = shared.chain();
                let produced = chain.produce_block(server::now());
                shared.store().commit(&produced)?;
                tracing::debug!(
                    height = produced.block.header.height,
                    txs = produced.block.txs.len(),
                    mempool = chain.mempool_len(),
                    "block"
                );
            }
            _ = stop.wait_for(|s| *s) => return Ok(()),
        }
    }
}
