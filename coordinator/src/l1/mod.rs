//! The coordinator's view of a ComputeChain L1 node: a typed HTTP client for the RPC in
//! `COMPUTECHAIN_L1.md`, with errors that name the node and say what failed.
//!
//! Everything that talks to the chain (operator commands, and later the chain watcher and submitters)
//! goes through [`NodeClient`], so timeouts, error wording and JSON shapes live in one place.

pub mod budget;
mod client;
#[cfg(test)]
mod fuzz;
mod pool;

pub use client::{DEFAULT_CONNECT_TIMEOUT, DEFAULT_REQUEST_TIMEOUT, NodeClient, NodeError};
pub use pool::NodePool;
