//! # cpc-common
//!
//! The ComputeChain protocol as a worker farm meets it, with no networking and no async runtime, so that
//! every other crate (the coordinator, the agents, the devnet, the tests) shares one byte-exact definition:
//!
//! - [`pyjson`]: Python's `json.dumps(sort_keys=True, separators=(",", ":"), ensure_ascii=True)`, which the
//!   node hashes transaction payloads with;
//! - [`crypto`] and [`address`]: secp256k1 keys, 64-byte `r‖s` signatures over 32-byte digests, bech32 addresses;
//! - [`tx`]: the node's wire transaction, its hash, signing and admission-level checks;
//! - [`compute_result`]: the `SUBMIT_RESULT` payload with the node's (pydantic) validation and canonical JSON;
//! - [`merkle`] and [`block`]: the duplicate-last Merkle tree, `compute_root` and the block header hash;
//! - [`synthetic`]: synthetic-v1 task derivation, Philox4x32-10 and the matrix element definition;
//! - [`keystore`]: cpc-cli compatible key files;
//! - [`rpc`]: the JSON shapes of the node's HTTP answers;
//! - [`wire`] and [`codec`]: the farm's messages between coordinator and agents, and their size-capped
//!   bincode frames (the only place bincode appears, so the wire codec can be swapped).
//!
//! # Feature flags
//! - `quic`: the `quic` module, async frame reading and writing over quinn streams (the agent and the coordinator
//!   enable it; the protocol itself needs no I/O).
//! - `metrics-endpoint`: the `metrics_endpoint` module, the Prometheus recorder and the `/metrics`,
//!   `/healthz`, `/readyz` HTTP endpoint shared by the agent and the coordinator.
//! - `service`: the `service` module, systemd readiness and watchdog notifications for the binaries.
//! - `actors`: the `actors` module, the process's one actix system and an arbiter on it per subsystem.
//!
//! Everything here is checked against `../shared/vectors` by the conformance tests in `tests/it`.

#[cfg(feature = "actors")]
pub mod actors;
pub mod address;
pub mod block;
pub mod codec;
pub mod compute_result;
pub mod crypto;
#[doc(hidden)]
pub mod fuzzing;
pub mod hashing;
pub mod keystore;
pub mod merkle;
#[cfg(feature = "metrics-endpoint")]
pub mod metrics_endpoint;
pub mod pyjson;
#[cfg(feature = "quic")]
pub mod quic;
pub mod rpc;
#[cfg(feature = "service")]
pub mod service;
pub mod synthetic;
#[doc(hidden)]
pub mod test_vectors;
pub mod tx;
pub mod wire;

pub use address::{Address, AddressError};
pub use block::{Block, BlockHeader};
pub use compute_result::{ComputeResult, ComputeResultError, PyInt};
pub use crypto::{CryptoError, PublicKey, SecretKey, Signature};
pub use hashing::{Digest32, sha256, sha256_hex};
pub use merkle::{compute_root, merkle_root};
pub use tx::{Transaction, TxError, TxType};
