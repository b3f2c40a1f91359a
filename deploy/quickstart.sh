#!/usr/bin/env bash
# Quick start: a whole local farm on one machine, CPU backend.
#   cpc-devnet (a local ComputeChain L1) -> cpc-coordinator run (2 funded worker identities)
#   -> 2 cpc-agent processes over QUIC -> one SUBMIT_RESULT per identity per block -> verified on chain.
# Tunables (environment): BLOCKS (default 8), MATRIX (default 512), BLOCK_TIME (default 2s).
set -euo pipefail
cd "$(dirname "$0")/.."

BLOCKS="${BLOCKS:-8}"
MATRIX="${MATRIX:-512}"
BLOCK_TIME="${BLOCK_TIME:-2s}"
FAUCET_KEY=4f3edf982522b4e51b7e8b5f2f9c4d1d7a9e5f8c2b6d4e1a3c5b7d9e0f1a2b3c # public devnet faucet

echo "== building (release)"
cargo build --release --locked --bins
BIN="$PWD/target/release"
WORK="$(mktemp -d "${TMPDIR:-/tmp}/cpc-quickstart.XXXXXX")"
PIDS=()
cleanup() {
    for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
}
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
NODE="http://127.0.0.1:$(free_port)"
QUIC="127.0.0.1:$(free_port)"
METRICS="127.0.0.1:$(free_port)"
CLI=("$BIN/cpc-coordinator" --node "$NODE" --keystore "$WORK/keys")

echo "== cpc-devnet on $NODE (blocks every $BLOCK_TIME; logs in $WORK)"
"$BIN/cpc-devnet" --listen "${NODE#http://}" --block-time "$BLOCK_TIME" --data-dir "$WORK/chain" >"$WORK/devnet.log" 2>&1 &
PIDS+=($!)
for _ in $(seq 100); do "${CLI[@]}" status >/dev/null 2>&1 && break; sleep 0.1; done

echo "== identities: faucet imported, worker-1 and worker-2 created and funded"
"${CLI[@]}" keys import faucet "$FAUCET_KEY" >/dev/null
for w in worker-1 worker-2; do
    "${CLI[@]}" keys add "$w" >/dev/null
    "${CLI[@]}" tx send "$w" 100 --from faucet --wait 60 | sed "s/^/   $w: /"
done

echo "== coordinator: QUIC $QUIC, metrics http://$METRICS/metrics"
"${CLI[@]}" --json run --identity worker-1,worker-2 --data-dir "$WORK/farm" --listen "$QUIC" --metrics "$METRICS" \
    --matrix-size "$MATRIX" --min-agents 2 --stop-after-blocks "$BLOCKS" >"$WORK/report.json" 2>"$WORK/coordinator.log" &
COORD=$!
PIDS+=("$COORD")
for _ in $(seq 200); do grep -q -- "--coordinator-fingerprint" "$WORK/coordinator.log" 2>/dev/null && break; sleep 0.1; done
FINGERPRINT="$(grep -o -- '--coordinator-fingerprint [^ ]*' "$WORK/coordinator.log" | head -1 | cut -d' ' -f2)"

echo "== 2 agents (CPU backend) join with the join-token file and the pinned fingerprint"
for i in 1 2; do
    "$BIN/cpc-agent" --coordinator "$QUIC" --token-file "$WORK/farm/join-token" --coordinator-fingerprint "$FINGERPRINT" \
        --backend cpu --devices all >"$WORK/agent-$i.log" 2>&1 &
    PIDS+=($!)
done

echo "== mining $BLOCKS blocks (metrics at http://$METRICS/metrics while it runs)"
sleep 3
curl -s "http://$METRICS/metrics" 2>/dev/null | grep -E '^cpcfarm_(agents|devices)_connected' | sed 's/^/   /' || true
wait "$COORD"

echo "== per block and identity: task, result_hash, inclusion"
python3 - "$WORK/report.json" <<'PY'
import json, sys
rows = json.load(open(sys.argv[1]))
print(f"   {'height':<7} {'identity':<9} {'task_id':<36} {'result_hash':<64} included")
for r in rows:
    inc = f"block {r['included_in']}" if r.get("included_in") is not None else r["state"]
    print(f"   {r['height']:<7} {r['identity']:<9} {r['task_id']:<36} {r['result_hash'] or '-':<64} {inc}")
PY

echo "== cpc-coordinator verify: recompute every result from the chain"
FAIL=0
while read -r height identity; do
    addr="$("${CLI[@]}" --json keys show "$identity" | python3 -c 'import json,sys; print(json.load(sys.stdin)["address"])')"
    if "${CLI[@]}" verify --height "$height" --worker "$addr" --matrix-size "$MATRIX" >"$WORK/verify.txt" 2>&1; then
        echo "   block $height $identity: VALID"
    else
        echo "   block $height $identity: $(tail -1 "$WORK/verify.txt")"; FAIL=1
    fi
done < <(python3 -c 'import json,sys; [print(r["height"], r["identity"]) for r in json.load(open(sys.argv[1])) if r.get("included_in") is not None]' "$WORK/report.json")
echo "== done (logs and journal in $WORK)"
exit "$FAIL"
