//! `cpc-coordinator bench` as an operator runs it: the CPU backend on small sizes, every reported result hash
//! recomputed from its seed with `cpc_kernels::result_hash`, and `--backend cuda` on a host without a GPU.
//! Nothing asserts on timing beyond "some work was measured".

use super::{json, run, stderr, stdout};
use cpc_common::synthetic::Challenge;
use cpc_kernels::{CpuBackend, CudaBackend};
use serde_json::Value;

#[test]
fn cpu_bench_reports_every_size_and_real_result_hashes() {
    let out = json(&run(&[
        "bench",
        "--backend",
        "cpu",
        "--matrix-size",
        "64,130",
        "--reps",
        "2",
        "--json",
    ]));
    assert_eq!(out["backend"], "cpu");
    assert_eq!(out["reps"], 2);
    assert!(out["device"]["compute_units"].as_u64().is_some_and(|u| u > 0), "{out}");
    let Some(sizes) = out["sizes"].as_array() else { panic!("no sizes: {out}") };
    assert_eq!(sizes.iter().map(|s| s["n"].as_u64()).collect::<Vec<_>>(), [Some(64), Some(130)]);
    let cpu = CpuBackend::new(0).expect("cpu backend");
    for size in sizes {
        let n = u32::try_from(size["n"].as_u64().expect("n")).expect("n fits");
        assert_eq!(size["skipped"], Value::Null, "{size}");
        assert_eq!(size["ops"].as_u64(), Some(2 * u64::from(n).pow(3)));
        assert!(size["end_to_end"]["tops"].as_f64().is_some_and(|t| t > 0.0), "{size}");
        assert!(size["phases"]["end_to_end_wall"]["tops"].as_f64().is_some_and(|t| t > 0.0));
        let Some(reps) = size["reps"].as_array() else { panic!("no reps: {size}") };
        assert_eq!(reps.len(), 2, "{size}");
        let mut hashes = Vec::new();
        for rep in reps {
            let seed = rep["seed"].as_str().expect("seed");
            let challenge = Challenge::new(seed, n, 1).expect("challenge");
            let expected = cpc_kernels::result_hash(&cpu, &challenge).expect("result hash");
            assert_eq!(rep["result_hash"], hex::encode(expected), "n = {n}, seed {seed}");
            hashes.push(rep["result_hash"].clone());
        }
        assert_ne!(hashes[0], hashes[1], "each rep has a fresh seed");
    }
}

#[test]
fn cpu_bench_prints_a_table() {
    let out = run(&["bench", "--backend", "cpu", "--matrix-size", "48", "--reps", "1"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let text = stdout(&out);
    for expect in
        ["device: cpu", "n = 48", "phase", "TOPS", "end to end (host wall)", "end to end:"]
    {
        assert!(text.contains(expect), "`{expect}` missing from:\n{text}");
    }
}

#[test]
fn cuda_bench_without_a_gpu_names_the_cpu_backend() {
    if CudaBackend::device_count() != 0 {
        eprintln!("a CUDA device is visible: the no-GPU message is not checked here");
        return;
    }
    let out = run(&["bench", "--backend", "cuda", "--matrix-size", "64", "--reps", "1"]);
    assert!(!out.status.success(), "{}", stdout(&out));
    let err = stderr(&out);
    assert!(err.contains("--backend cpu"), "{err}");
}
