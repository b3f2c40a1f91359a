//! The coordinator's view of a ComputeChain L1 node: a typed HTTP client for the RPC in
//! `COMPUTECHAIN_L1.md`, with errors that name the node and say what failed.
//!
//! Everything that talks to the chain (operator commands, the chain watcher and the submitters) goes
//! through [`NodeClient`], so timeouts, TLS, error wording and JSON shapes live in one place; the miner
//! holds its nodes in a [`NodePool`] (short deadlines that stretch for a node slow under load, health
//! probes, failover and fail-back).

pub mod budget;
mod client;
pub mod deadline;
#[cfg(test)]
mod fuzz;
mod pool;

/// The L1 node used when none is configured (the public node's port on localhost).
pub const DEFAULT_NODE_URL: &str = "http://localhost:8000";

pub use client::{DEFAULT_CONNECT_TIMEOUT, DEFAULT_REQUEST_TIMEOUT, NodeClient, NodeError};
pub use pool::{
    NodePool, POOL_CONNECT_TIMEOUT, POOL_REQUEST_CEILING, POOL_REQUEST_TIMEOUT, PROBE_INTERVAL,
};
