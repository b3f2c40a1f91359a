//! Integration tests of cpc-kernels: conformance with the shared synthetic-v1 vectors, sharding
//! invariance, kernel parity (the CPU kernels; the CUDA kernels run on the host, and on a GPU with
//! `--features cuda -- --ignored`) and fault injection. One binary, per the workspace's house style.

mod conformance;
#[cfg(feature = "cuda")]
mod cuda;
mod cuda_host;
mod fault;
mod parity;
mod sharding;
mod vectors;
