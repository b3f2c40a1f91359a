#!/usr/bin/env bash
# The CPU backend end to end (Philox generation, exact int8 GEMM, SHA-256 of every row) against numpy's
# float32 `a @ b` at the same n, in one run on one host, per GEMM kernel: the fastest this CPU has, then
# every kernel in KERNELS that it can run. numpy runs before and after the kernels; the ratio uses the
# faster of its two medians, so a noisy host cannot flatter the integers.
#
# Tunables: N (default 2048), REPS (default 5), KERNELS (default "avx512vnni avxvnni avx2"),
# PROFILE (release|debug, default release), SKIP_BUILD=1 to use an existing binary.
# numpy runs with OPENBLAS_CORETYPE and OPENBLAS_L2_SIZE unset, so OpenBLAS picks its own kernel.
set -euo pipefail
cd "$(dirname "$0")/.."
N="${N:-2048}"; REPS="${REPS:-5}"; KERNELS="${KERNELS:-avx512vnni avxvnni avx2}"; PROFILE="${PROFILE:-release}"
if [ -z "${SKIP_BUILD:-}" ]; then
    if [ "$PROFILE" = release ]; then
        cargo build --release --locked -p cpc-coordinator
    else
        cargo build --locked -p cpc-coordinator
    fi
fi
BIN="$PWD/target/$PROFILE/cpc-coordinator"
if ! python3 -c 'import numpy' 2>/dev/null; then
    python3 -m pip install --quiet --disable-pip-version-check numpy
fi
WORK="$(mktemp -d "${TMPDIR:-/tmp}/cpc-vs-numpy.XXXXXX")"
trap 'rm -rf "$WORK"' EXIT

numpy_bench() {
    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python3 - "$N" "$REPS" <<'PY'
import statistics, sys, time
import numpy as np
n, reps = int(sys.argv[1]), int(sys.argv[2])
rng = np.random.default_rng(0)
a = rng.integers(-128, 128, size=(n, n)).astype(np.float32)
b = rng.integers(-128, 128, size=(n, n)).astype(np.float32)
a @ b  # warm-up
times = []
for _ in range(reps):
    t = time.perf_counter()
    a @ b
    times.append(time.perf_counter() - t)
print(statistics.median(times))
PY
}

echo "host: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), $(nproc) threads"
NUMPY_BEFORE="$(numpy_bench)"
"$BIN" --json bench --backend cpu --matrix-size "$N" --reps "$REPS" >"$WORK/auto.json"
for k in $KERNELS; do
    if "$BIN" --json bench --backend cpu --kernel "$k" --matrix-size "$N" --reps "$REPS" \
        >"$WORK/$k.json" 2>"$WORK/$k.err"; then :; else
        echo "kernel $k: not run ($(tail -1 "$WORK/$k.err"))"
        rm -f "$WORK/$k.json"
    fi
done
NUMPY_AFTER="$(numpy_bench)"

python3 - "$N" "$REPS" "$NUMPY_BEFORE" "$NUMPY_AFTER" "$WORK" $KERNELS <<'PY'
import json, os, sys
n, reps, before, after, work = int(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3]), float(sys.argv[4]), sys.argv[5]
ops = 2 * n ** 3
numpy_s = min(before, after)
numpy_gops = ops / numpy_s / 1e9
print(f"n = {n}, {reps} reps after a warm-up, medians; ops = 2n^3 = {ops}")
print(f"{'what':<48} {'ms':>9} {'GOPS':>9} {'x numpy':>9}")
print(f"{'numpy float32 a @ b (before)':<48} {before * 1e3:>9.2f} {ops / before / 1e9:>9.1f}")
print(f"{'numpy float32 a @ b (after)':<48} {after * 1e3:>9.2f} {ops / after / 1e9:>9.1f}")
for name in ["auto"] + sys.argv[6:]:
    path = os.path.join(work, f"{name}.json")
    if not os.path.exists(path):
        continue
    doc = json.load(open(path))
    kernel = doc["device"]["cpu_kernel"]
    e2e = doc["sizes"][0]["end_to_end"]
    label = f"cpc bench --backend cpu ({'fastest: ' if name == 'auto' else '--kernel '}{kernel})"
    gops = e2e["tops"] * 1e3
    print(f"{label:<48} {e2e['seconds'] * 1e3:>9.2f} {gops:>9.1f} {gops / numpy_gops:>9.2f}")
PY
