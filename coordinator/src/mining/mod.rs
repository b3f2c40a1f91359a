//! The mining loop: every new block becomes one signed `SUBMIT_RESULT` per worker identity.
//!
//! Follow a block through the actors:
//! [`watcher::ChainWatcher`] sees a new head → [`planner::Planner`] derives each identity's task, journals
//! it and has the [`compute::ComputeService`] (the farm, or a local backend) compute it → the result is
//! journaled and the identity's [`submitter::Submitter`] signs, journals, sends, and confirms inclusion.
//! The [`journal::Journal`] (SQLite in the data dir) is written before anything is sent, which is what
//! makes a crash or restart lose nothing and send nothing twice.
//!
//! [`run`] is the whole mining node (`cpc-coordinator run`) as a library call: [`settings`] resolves its
//! settings from flags, environment and config file, and [`node`] wires the farm, this loop and the PoC
//! validator clients, until a shutdown signal or the end of a bounded run.

pub mod compute;
pub mod config;
#[cfg(test)]
mod fuzz;
pub mod journal;
pub mod node;
pub mod planner;
pub mod priority;
pub mod settings;
pub mod submitter;
pub mod watcher;

pub use node::{RunError, RunEvent, RunReport, WindowReport, WindowRow, run};

use crate::l1::NodePool;
use actix::prelude::*;
use cpc_common::actors::{Subsystem, SubsystemRuntime};
use cpc_common::{Address, SecretKey};
use journal::Journal;
use std::{sync::Arc, time::Duration};

/// A worker identity the farm mines for.
#[derive(Debug, Clone)]
pub struct Identity {
    /// Key name in the keystore (journal and metrics label).
    pub name: String,
    /// Its key.
    pub key: SecretKey,
    /// Its address.
    pub address: Address,
}

/// Settings of the mining loop.
#[derive(Debug, Clone)]
pub struct MinerSettings {
    /// L1 node URLs, in failover order.
    pub nodes: Vec<String>,
    /// Matrix size of each block task.
    pub matrix_size: u32,
    /// Gas price of submissions.
    pub gas_price: u64,
    /// How often to poll the head.
    pub poll_interval: Duration,
    /// The journal was made in this run: submitters look for their results on chain before signing
    /// (see [`submitter`]).
    pub recover_from_chain: bool,
    /// Where the node pool and the submitters report "can mine now" (`/readyz`).
    pub readiness: Arc<crate::readiness::Readiness>,
}

/// Handles of a running mining loop's actors.
#[derive(Debug)]
pub struct Miner {
    /// The watcher.
    pub watcher: Addr<watcher::ChainWatcher>,
    /// The planner.
    pub planner: Addr<planner::Planner>,
    /// One submitter per identity.
    pub submitters: Vec<Addr<submitter::Submitter>>,
    /// The journal.
    pub journal: Journal,
}

/// A mining loop running on an arbiter of its own on the process's actix system
/// ([`cpc_common::actors`]), so any caller (the CLI on tokio, a test) can start and stop it.
#[derive(Debug)]
pub struct MinerHandle {
    /// The journal (for reports and tests).
    pub journal: Journal,
    subsystem: Option<Subsystem>,
}

impl MinerHandle {
    /// Stops the actors and waits for their arbiter to stop.
    pub fn stop(mut self) {
        self.shutdown();
    }

    fn shutdown(&mut self) {
        if let Some(subsystem) = self.subsystem.take() {
            subsystem.stop();
        }
    }
}

impl Drop for MinerHandle {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// Starts the mining loop on an arbiter of its own.
pub fn spawn(
    settings: MinerSettings,
    identities: Vec<Identity>,
    journal: Journal,
    compute: Arc<dyn compute::ComputeService>,
) -> std::io::Result<MinerHandle> {
    let shared = journal.clone();
    let subsystem = Subsystem::start(SubsystemRuntime::CurrentThread, move || async move {
        let _miner = start(&settings, identities, shared, compute);
        // The actors run until the handle stops the arbiter.
        std::future::pending::<()>().await;
    })?;
    Ok(MinerHandle { journal, subsystem: Some(subsystem) })
}

/// Starts the actors (inside a running actix system).
pub fn start(
    settings: &MinerSettings,
    identities: Vec<Identity>,
    journal: Journal,
    compute: Arc<dyn compute::ComputeService>,
) -> Miner {
    let nodes = NodePool::with_readiness(&settings.nodes, Arc::clone(&settings.readiness));
    let submitters: Vec<Addr<submitter::Submitter>> = identities
        .iter()
        .map(|id| {
            submitter::Submitter::new(
                id.clone(),
                nodes.clone(),
                journal.clone(),
                settings.gas_price,
            )
            .recovering_from_chain(settings.recover_from_chain)
            .start()
        })
        .collect();
    let planner = planner::Planner::new(
        identities,
        journal.clone(),
        compute,
        settings.matrix_size,
        submitters.clone(),
    )
    .start();
    let watcher = watcher::ChainWatcher::new(
        nodes,
        settings.poll_interval,
        vec![planner.clone().recipient()],
        submitters.iter().map(|s| s.clone().recipient()).collect(),
    )
    .start();
    Miner { watcher, planner, submitters, journal }
}
