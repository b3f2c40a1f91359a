#!/usr/bin/env bash
# GPU check of the CUDA backend: the driver, the CUDA libraries and the GEMM engine in use; the ignored GPU
# parity tests (GPU leaves == CPU leaves for every synthetic-v1 vector, odd sizes, random shards, the chunked
# path over 4096 rows, the dp4a fallback, the watchdog); and the benchmark table (per phase and end to end,
# ms and TOPS, n = 4096..32768, next to cuBLASLt alone), where every size also checks a sample of rows
# against the CPU. Fails when a parity test or a row check fails, or when the GEMM fell back to dp4a where
# cuBLASLt should run (GPU_CHECK_ALLOW_DP4A=1 accepts that, e.g. on purpose without cuBLAS).
#
# Two steps, so the GPU machine needs no Rust toolchain:
#   deploy/gpu-check.sh build          # any Linux x86-64 machine with Rust (no GPU needed): stages the
#                                      # prebuilt binaries and the vectors in deploy/gpu-bin/
#   deploy/gpu-check.sh run [BENCH...] # the GPU machine: runs them from deploy/gpu-bin/
#   deploy/gpu-check.sh all            # both, on a GPU machine that also has Rust
# BENCH arguments go to `cpc-coordinator bench --backend cuda` (default: --reps 5; e.g. --matrix-size 16384).
# Tunables: GPU_BIN (staging folder), CUDA_VISIBLE_DEVICES (which GPU; the tests and the bench use CUDA
# device 0 of what is visible), GPU_CHECK_ALLOW_DP4A.
#
# The GPU machine needs the NVIDIA driver (R535 or newer: libcuda, libnvidia-ml) and libnvrtc and
# libcublasLt of the driver's CUDA major version (CUDA 12 for R535-R570, 12 or 13 for R580+), found through
# LD_LIBRARY_PATH; /usr/local/cuda*/lib64 and pip's nvidia/*/lib folders are added when present.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN="${GPU_BIN:-$PWD/deploy/gpu-bin}"

build() {
    echo "== building the cuda test binary and cpc-coordinator (release, for its bench command)"
    mkdir -p "$BIN/vectors"
    # What an earlier build staged (cuda_bench: before `cpc-coordinator bench` replaced it).
    rm -f "$BIN/cpc-kernels-it" "$BIN/cpc-coordinator" "$BIN/cuda_bench" "$BIN"/vectors/*.json
    local json test_bin
    json="$(cargo test -p cpc-kernels --release --features cuda --no-run --message-format=json 2>/dev/null)"
    test_bin="$(printf '%s\n' "$json" | python3 -c '
import json, sys
for line in sys.stdin:
    try: m = json.loads(line)
    except ValueError: continue
    t = m.get("target", {})
    if m.get("reason") == "compiler-artifact" and t.get("name") == "it" and m.get("executable"):
        print(m["executable"])')"
    [ -n "$test_bin" ] || { echo "could not find the cpc-kernels integration test binary" >&2; exit 1; }
    cargo build -p cpc-coordinator --release --features cuda
    local target_dir
    target_dir="$(cargo metadata --format-version 1 --no-deps | python3 -c 'import json,sys; print(json.load(sys.stdin)["target_directory"])')"
    cp "$test_bin" "$BIN/cpc-kernels-it"
    cp "$target_dir/release/cpc-coordinator" "$BIN/cpc-coordinator"
    local vectors="${CPC_VECTORS:-$PWD/../shared/vectors}"
    [ -d "$vectors" ] || vectors="$PWD/shared/vectors"
    cp "$vectors"/*.json "$BIN/vectors/"
    echo "staged in $BIN: $(ls "$BIN" | tr '\n' ' ')"
}

cuda_libraries() {
    local extra=""
    for d in /usr/local/cuda/lib64 /usr/local/cuda-13*/lib64 /usr/local/cuda-12*/lib64 /usr/lib/x86_64-linux-gnu \
        $(python3 -c 'import site; print(" ".join(site.getsitepackages()))' 2>/dev/null | xargs -n1 -I{} sh -c 'ls -d {}/nvidia/*/lib 2>/dev/null' || true); do
        [ -d "$d" ] && extra="$extra:$d"
    done
    export LD_LIBRARY_PATH="${LD_LIBRARY_PATH:-}$extra"
    for lib in libcuda.so.1 libnvidia-ml.so.1 libnvrtc.so libcublasLt.so; do
        if ! ldconfig -p 2>/dev/null | grep -q "$lib" && ! (IFS=:; for d in $LD_LIBRARY_PATH; do ls "$d"/$lib* >/dev/null 2>&1 && exit 0; done; exit 1); then
            echo "warning: $lib not found (driver / CUDA libraries); the run may say why it cannot start" >&2
        fi
    done
}

# Where the dynamic loader finds a library (first match on LD_LIBRARY_PATH, then ldconfig's cache).
library_path() {
    local lib="$1" d f
    local IFS=:
    for d in ${LD_LIBRARY_PATH:-}; do
        for f in "$d/$lib".so "$d/$lib".so.*; do
            [ -e "$f" ] && { readlink -f "$f"; return; }
        done
    done
    ldconfig -p 2>/dev/null | awk -v l="$lib" '$1 ~ "^"l"\\.so" {print $NF; exit}'
}

run() {
    [ -x "$BIN/cpc-kernels-it" ] || { echo "no staged binaries in $BIN: run '$0 build' first" >&2; exit 1; }
    cuda_libraries
    echo "== driver and libraries"
    command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=index,uuid,name,driver_version,memory.total,clocks.max.sm --format=csv
    for lib in libcuda libnvrtc libcublasLt; do
        echo "$lib: $(library_path "$lib" || true)"
    done
    # Every step runs whatever the one before gives (GPU time is scarce: one run should bring back every
    # answer); the exit status is the first failure's.
    local parity=0 bench=0 engine=0 out
    echo "== GPU parity tests (ignored by default, run explicitly; the chunked path included)"
    CPC_VECTORS="$BIN/vectors" "$BIN/cpc-kernels-it" --ignored cuda --test-threads=1 --nocapture || parity=$?
    echo "== benchmark (versions and engine in the device line; a row check against the CPU per size)"
    [ "$#" -gt 0 ] || set -- --reps 5
    out="$(mktemp)"
    "$BIN/cpc-coordinator" bench --backend cuda "$@" | tee "$out" || bench=$?
    # The device line names the engine: "cublaslt", "dp4a (asked for)" or "dp4a (fallback: why)"; a size
    # line says "dp4a GEMM" when cuBLASLt failed on one of its shapes.
    if grep -q -e 'GEMM engine dp4a (fallback' -e '; dp4a GEMM' "$out"; then
        echo "the GEMM fell back to dp4a where cuBLASLt should run (see the device line and the warnings above)" >&2
        [ "${GPU_CHECK_ALLOW_DP4A:-0}" = 1 ] || engine=1
    fi
    rm -f "$out"
    echo "== parity: $([ "$parity" -eq 0 ] && echo PASSED || echo "FAILED ($parity)");" \
        "benchmark and row checks: $([ "$bench" -eq 0 ] && echo done || echo "FAILED ($bench)");" \
        "GEMM engine: $([ "$engine" -eq 0 ] && echo ok || echo "FAILED (dp4a fallback)")"
    [ "$parity" -eq 0 ] || exit "$parity"
    [ "$bench" -eq 0 ] || exit "$bench"
    exit "$engine"
}

case "${1:-}" in
    build) build ;;
    run) shift; run "$@" ;;
    all) shift; build; run "$@" ;;
    *) sed -n '2,21p' "$0"; exit 2 ;;
esac
