//! # cpc-tests
//!
//! Test infrastructure and end-to-end tests for cpc-farm:
//!
//! - [`devnet`]: `cpc-devnet`, a single-validator ComputeChain L1 that behaves like the public node for
//!   everything a worker touches (the binary is `src/bin/cpc-devnet.rs`);
//! - [`harness`]: starts the real `cpc-devnet` binary on a free port for multi-process tests;
//! - [`fixtures`]: signed transactions for tests;
//! - [`proxy`]: a TCP proxy in front of a devnet that can hang or terminate TLS (test CA);
//! - [`validator`]: a test PoC validator (WebSocket server) that sends jobs and checks the answers.
//!
//! The end-to-end tests live in `tests/` (`cargo test -p cpc-tests`); the stress test is `#[ignore]`d and
//! run on purpose (`-- --ignored`).

pub mod devnet;
pub mod fixtures;
pub mod harness;
pub mod proxy;
pub mod validator;
