//! # cpc-coordinator
//!
//! The farm's coordinator and the operator's command line. This library holds what the `cpc-coordinator`
//! binary drives and what tests call directly:
//!
//! - [`admin`]: the admin API (HTTP + JSON, loopback by default): farm status and device control;
//! - [`l1`]: the typed client of a ComputeChain node's HTTP RPC;
//! - [`submit`]: building a `SUBMIT_RESULT` (or transfer) the node will accept, checking it as the node
//!   would, and sending it;
//! - [`verify`]: checking blocks (`compute_root`, signatures) and recomputing a worker's result;
//! - [`farm`]: the GPU farm: QUIC agents, sharded jobs, spot checks, metrics;
//! - [`mining`]: the mining loop (watcher, planner, submitters, journal) and the compute priority layer;
//! - [`readiness`]: what `/readyz` means ("can mine now": an L1 answers, identities funded, a device);
//! - [`validator`]: jobs pushed by PoC validators over WebSocket, answered with signed results.
//!
//! # Feature flags
//! - `cuda`: offer the CUDA backend of `cpc-kernels` for local `task` and `verify` runs.

pub mod admin;
pub mod data_dir;
pub mod farm;
pub mod l1;
pub mod mining;
pub mod readiness;
pub mod submit;
pub mod validator;
pub mod verify;
