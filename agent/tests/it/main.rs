//! The agent as its peers see it: the `cpc-agent` binary as an operator starts it (what it says when the
//! devices asked for cannot run), and an agent over real loopback QUIC (`cancel`: shards on streams of their
//! own; `pipe`: the shard pipe), driven by the test coordinator of `harness`.

mod cancel;
mod harness;
mod pipe;

use std::process::Command;

#[test]
fn backend_cuda_without_a_gpu_exits_with_a_clear_message() {
    if cpc_kernels::CudaBackend::device_count() > 0 {
        return; // a GPU here: `--backend cuda` would open it and dial the coordinator.
    }
    let out = Command::new(env!("CARGO_BIN_EXE_cpc-agent"))
        .args(["--coordinator", "127.0.0.1:9", "--token", "t", "--coordinator-fingerprint"])
        .arg("ab".repeat(32))
        .args(["--backend", "cuda", "--devices", "all"])
        .output()
        .expect("spawn cpc-agent");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--backend cuda cannot run on this host"), "{err}");
    assert!(err.contains("--backend cpu"), "{err}");
    if matches!(cpc_kernels::CudaBackend::new(0), Err(cpc_kernels::BackendError::CudaNotCompiled)) {
        assert!(err.contains("--features cuda"), "{err}");
    }
}

#[test]
fn a_bad_device_list_is_named() {
    let out = Command::new(env!("CARGO_BIN_EXE_cpc-agent"))
        .args(["--coordinator", "127.0.0.1:9", "--token", "t", "--coordinator-fingerprint"])
        .arg("ab".repeat(32))
        .args(["--backend", "cpu", "--devices", "0,zero"])
        .output()
        .expect("spawn cpc-agent");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--devices `0,zero`"), "{err}");
}

#[test]
fn simulated_devices_are_refused_without_the_acknowledgement() {
    let out = Command::new(env!("CARGO_BIN_EXE_cpc-agent"))
        .args(["--coordinator", "127.0.0.1:9", "--token", "t", "--coordinator-fingerprint"])
        .arg("ab".repeat(32))
        .args(["--backend", "simulated", "--devices", "0-3", "--device-tops", "660"])
        .output()
        .expect("spawn cpc-agent");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("WRONG") && err.contains("--allow-wrong-results"), "{err}");
    let out = Command::new(env!("CARGO_BIN_EXE_cpc-agent"))
        .args(["--coordinator", "127.0.0.1:9", "--token", "t", "--coordinator-fingerprint"])
        .arg("ab".repeat(32))
        .args(["--backend", "simulated", "--devices", "0-3", "--allow-wrong-results"])
        .output()
        .expect("spawn cpc-agent");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--device-tops"), "{err}");
}
