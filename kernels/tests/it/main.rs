//! Integration tests of cpc-kernels: conformance with the shared synthetic-v1 vectors, sharding
//! invariance, kernel parity and fault injection. One binary, per the workspace's house style.

mod conformance;
#[cfg(feature = "cuda")]
mod cuda;
mod fault;
mod parity;
mod sharding;
mod vectors;
