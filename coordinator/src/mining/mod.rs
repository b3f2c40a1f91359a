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

pub mod accounting;
pub mod compute;
pub mod config;
pub mod control;
#[cfg(test)]
mod fuzz;
pub mod journal;
pub mod node;
pub mod planner;
pub mod priority;
pub mod settings;
pub mod submitter;
pub mod watcher;

pub use control::{MiningControl, ReloadError, ReloadOutcome};
pub use node::{RunError, RunEvent, RunReport, WindowReport, WindowRow, run, run_controlled};

use crate::l1::NodePool;
use actix::prelude::*;
use cpc_common::actors::{Subsystem, SubsystemRuntime};
use cpc_common::{Address, SecretKey};
use journal::Journal;
use std::{sync::Arc, time::Duration};
use tokio_util::sync::CancellationToken;

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
    /// Where the planner publishes the highest block whose tasks it has journaled (validator clients hold
    /// an answer until it covers the job's nonce: see [`crate::validator`]).
    pub planned_height: tokio::sync::watch::Sender<u64>,
    /// The mining loop stops when this is cancelled (the node passes the process's one shutdown token);
    /// [`MinerHandle::stop`] stops it alone.
    pub shutdown: CancellationToken,
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
    /// The L1 nodes the watcher and the submitters share.
    pub nodes: NodePool,
}

/// A mining loop running on an arbiter of its own on the process's actix system
/// ([`cpc_common::actors`]), so any caller (the CLI on tokio, a test) can start and stop it.
#[derive(Debug)]
pub struct MinerHandle {
    /// The journal (for reports and tests).
    pub journal: Journal,
    subsystem: Option<Subsystem>,
    /// A child of the settings' token, which this handle alone cancels.
    stop: CancellationToken,
    /// The mining loop's arbiter (a reload starts submitters there) and what a reload changes.
    live: Option<(actix::dev::ArbiterHandle, Arc<std::sync::Mutex<Live>>)>,
}

/// What a reload changes in a running mining loop, and the actors it tells.
#[derive(Debug)]
struct Live {
    settings: MinerSettings,
    identities: Vec<Identity>,
    journal: Journal,
    nodes: NodePool,
    /// Every submitter started, retired identities' included: they keep settling their results.
    submitters: std::collections::HashMap<String, Addr<submitter::Submitter>>,
    planner: Addr<planner::Planner>,
    watcher: Addr<watcher::ChainWatcher>,
}

/// A reload's new mining settings.
#[derive(Debug, Clone)]
pub struct MinerChange {
    /// The identities, in order.
    pub identities: Vec<Identity>,
    /// L1 node URLs in failover order.
    pub nodes: Vec<String>,
    /// Gas price of submissions.
    pub gas_price: u64,
    /// Matrix size of block tasks.
    pub matrix_size: u32,
}

/// The mining loop has stopped: nothing to reconfigure.
#[derive(Debug, Clone, Copy, thiserror::Error)]
#[error("the mining loop is not running")]
pub struct MinerStopped;

impl MinerHandle {
    /// The L1 nodes the loop uses now.
    pub fn nodes(&self) -> Option<NodePool> {
        let (_, live) = self.live.as_ref()?;
        live.lock().ok().map(|l| l.nodes.clone())
    }

    /// The identities the loop plans for now.
    pub fn identities(&self) -> Vec<Identity> {
        self.live
            .as_ref()
            .and_then(|(_, live)| live.lock().ok().map(|l| l.identities.clone()))
            .unwrap_or_default()
    }

    /// Applies `change` in place: new identities get a submitter and are planned from the next block,
    /// removed ones are retired (see [`planner::SetIdentities`]), the nodes and gas price go to the
    /// watcher and every submitter, the matrix size to the planner. Nothing in flight is dropped.
    /// Answers once the actors have been told.
    pub async fn reconfigure(&self, change: MinerChange) -> Result<(), MinerStopped> {
        let Some((arbiter, live)) = &self.live else { return Err(MinerStopped) };
        let live = Arc::clone(live);
        let (done_tx, done_rx) = tokio::sync::oneshot::channel();
        let applied = arbiter.spawn(async move {
            let Ok(mut live) = live.lock() else { return };
            let nodes = if live.settings.nodes == change.nodes {
                live.nodes.clone()
            } else {
                NodePool::with_readiness(&change.nodes, Arc::clone(&live.settings.readiness))
            };
            live.settings.nodes = change.nodes.clone();
            live.settings.gas_price = change.gas_price;
            live.settings.matrix_size = change.matrix_size;
            live.nodes = nodes.clone();
            let mut added = Vec::new();
            let mut planned = Vec::new();
            for id in &change.identities {
                let submitter = match live.submitters.get(&id.name) {
                    Some(s) => s.clone(),
                    None => {
                        let s = submitter::Submitter::new(
                            id.clone(),
                            nodes.clone(),
                            live.journal.clone(),
                            change.gas_price,
                        )
                        .recovering_from_chain(live.settings.recover_from_chain)
                        .start();
                        live.submitters.insert(id.name.clone(), s.clone());
                        added.push(s.clone().recipient());
                        s
                    }
                };
                planned.push((id.clone(), submitter));
            }
            for s in live.submitters.values() {
                s.do_send(submitter::UseSettings {
                    nodes: nodes.clone(),
                    gas_price: change.gas_price,
                });
            }
            live.watcher.do_send(watcher::UseNodes(nodes));
            if !added.is_empty() {
                live.watcher.do_send(watcher::AddBlockRecipients(added));
            }
            live.planner.do_send(planner::SetIdentities {
                identities: planned,
                matrix_size: change.matrix_size,
            });
            live.identities = change.identities;
            let _ = done_tx.send(());
        });
        if !applied {
            return Err(MinerStopped);
        }
        done_rx.await.map_err(|_| MinerStopped)
    }

    /// Stops the actors and waits for their arbiter to stop.
    pub fn stop(mut self) {
        self.shutdown();
    }

    fn shutdown(&mut self) {
        self.live = None;
        self.stop.cancel();
        if let Some(subsystem) = self.subsystem.take() {
            subsystem.join();
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
    let (live_tx, live_rx) = std::sync::mpsc::channel();
    let shared = journal.clone();
    let stop = settings.shutdown.child_token();
    let stopped = stop.clone();
    let subsystem = Subsystem::start(SubsystemRuntime::CurrentThread, move || async move {
        let miner = start(&settings, identities.clone(), shared, compute);
        let live = Live {
            nodes: miner.nodes.clone(),
            submitters: identities
                .iter()
                .map(|id| id.name.clone())
                .zip(miner.submitters.iter().cloned())
                .collect(),
            planner: miner.planner.clone(),
            watcher: miner.watcher.clone(),
            journal: miner.journal.clone(),
            settings,
            identities,
        };
        let _ = live_tx.send((actix::Arbiter::current(), Arc::new(std::sync::Mutex::new(live))));
        let _miner = miner;
        // The actors run until the token is cancelled; the arbiter (and every actor on it) then stops.
        stopped.cancelled().await;
    })?;
    let live = live_rx.recv().ok();
    Ok(MinerHandle { journal, subsystem: Some(subsystem), stop, live })
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
        settings.planned_height.clone(),
    )
    .with_readiness(Arc::clone(&settings.readiness))
    .start();
    let watcher = watcher::ChainWatcher::new(
        nodes.clone(),
        settings.poll_interval,
        vec![planner.clone().recipient()],
        submitters.iter().map(|s| s.clone().recipient()).collect(),
    )
    .start();
    Miner { watcher, planner, submitters, journal, nodes }
}
