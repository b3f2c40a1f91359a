#!/usr/bin/env bash
# Measures the miner's latencies on a local devnet: block→submit, result→submit (excluding compute) and
# block→inclusion, from the coordinator's own Prometheus histograms, scraped until the run ends.
# Tunables: BLOCKS (default 40), MATRIX (default 256), BLOCK_TIME (default 500ms), PROFILE (debug|release).
set -euo pipefail
cd "$(dirname "$0")/.."
BLOCKS="${BLOCKS:-40}"; MATRIX="${MATRIX:-256}"; BLOCK_TIME="${BLOCK_TIME:-500ms}"; PROFILE="${PROFILE:-debug}"
FAUCET_KEY=4f3edf982522b4e51b7e8b5f2f9c4d1d7a9e5f8c2b6d4e1a3c5b7d9e0f1a2b3c # public devnet faucet
if [ "$PROFILE" = release ]; then cargo build --release --locked --bins; else cargo build --locked --bins; fi
BIN="$PWD/target/$PROFILE"
WORK="$(mktemp -d "${TMPDIR:-/tmp}/cpc-latency.XXXXXX")"
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
NODE="127.0.0.1:$(free_port)"; METRICS="127.0.0.1:$(free_port)"
"$BIN/cpc-devnet" --listen "$NODE" --block-time "$BLOCK_TIME" >"$WORK/devnet.log" 2>&1 &
DEVNET=$!
trap 'kill $DEVNET 2>/dev/null || true' EXIT
CLI=("$BIN/cpc-coordinator" --node "http://$NODE" --keystore "$WORK/keys")
for _ in $(seq 100); do "${CLI[@]}" status >/dev/null 2>&1 && break; sleep 0.1; done
"${CLI[@]}" keys import faucet "$FAUCET_KEY" >/dev/null
for w in w1 w2; do "${CLI[@]}" keys add "$w" >/dev/null; "${CLI[@]}" tx send "$w" 5 --from faucet --wait 30 >/dev/null; done
"${CLI[@]}" run --identity w1,w2 --compute local --data-dir "$WORK/data" --matrix-size "$MATRIX" \
    --stop-after-blocks "$BLOCKS" --listen 127.0.0.1:0 --metrics "$METRICS" --poll-interval-ms 100 \
    >"$WORK/report.txt" 2>"$WORK/run.log" &
RUN=$!
while kill -0 "$RUN" 2>/dev/null; do
    curl -sf "http://$METRICS/metrics" >"$WORK/m.tmp" 2>/dev/null && cp "$WORK/m.tmp" "$WORK/metrics.txt" || true
    sleep 0.5
done
python3 - "$WORK/metrics.txt" <<'PY'
import re, sys
text = open(sys.argv[1]).read()
for name in ["cpcfarm_result_to_submit_seconds", "cpcfarm_block_to_submit_seconds", "cpcfarm_block_to_inclusion_seconds"]:
    buckets = [(float("inf") if le == "+Inf" else float(le), float(v))
               for le, v in re.findall(name + r'_bucket\{le="([^"]+)"\} (\S+)', text)]
    count = float(re.search(name + r"_count (\S+)", text).group(1))
    total = float(re.search(name + r"_sum (\S+)", text).group(1))
    def q(p):
        prev = 0.0
        for le, c in sorted(buckets):
            if c >= p * count:
                return f"({prev:g}, {le:g}] s"
            prev = le
    print(f"{name}: {int(count)} samples, mean {total / count * 1e3:.1f} ms, p50 in {q(0.5)}, p99 in {q(0.99)}")
PY
