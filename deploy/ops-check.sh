#!/usr/bin/env bash
# Operator checks, run by .ci/run (needs promtool, kubernetes-validate and systemd-analyze on PATH):
#   1. promtool check metrics on the live /metrics of a coordinator and an agent in a running farm
#      (cpc-devnet, `cpc-coordinator run` in farm mode, one CPU agent): 0 problems;
#   2. promtool check config / check rules / test rules (each alert fires on its first event, and
#      CpcFarmNoBlocks on a never-reached L1);
#   3. the Kubernetes manifests against the 1.30 schemas, strictly;
#   4. systemd-analyze verify on the units (ExecStart pointed at the built binaries) and their
#      systemd-analyze security exposure, which must stay under 4.
# BIN: where the binaries are (default target/debug, built if missing).
set -euo pipefail
cd "$(dirname "$0")/.."

BIN="${BIN:-$PWD/target/debug}"
if [ ! -x "$BIN/cpc-coordinator" ] || [ ! -x "$BIN/cpc-agent" ] || [ ! -x "$BIN/cpc-devnet" ]; then
    cargo build --locked --bins
fi
WORK="$(mktemp -d "${TMPDIR:-/tmp}/cpc-ops-check.XXXXXX")"
PIDS=()
cleanup() {
    for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
    rm -rf "$WORK"
}
trap cleanup EXIT
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
scrape() { python3 -c 'import sys, urllib.request; sys.stdout.write(urllib.request.urlopen(sys.argv[1], timeout=5).read().decode())' "$1"; }

echo "== promtool check metrics: a live coordinator and agent"
NODE="http://127.0.0.1:$(free_port)"
QUIC="127.0.0.1:$(free_port)"
COORD_METRICS="127.0.0.1:$(free_port)"
AGENT_METRICS="127.0.0.1:$(free_port)"
CLI=("$BIN/cpc-coordinator" --node "$NODE" --keystore "$WORK/keys")
"$BIN/cpc-devnet" --listen "${NODE#http://}" --block-time 500ms >"$WORK/devnet.log" 2>&1 &
PIDS+=($!)
for _ in $(seq 100); do "${CLI[@]}" status >/dev/null 2>&1 && break; sleep 0.1; done
"${CLI[@]}" keys add worker >/dev/null
"${CLI[@]}" run --identity worker --data-dir "$WORK/farm" --listen "$QUIC" --metrics "$COORD_METRICS" \
    --matrix-size 64 >"$WORK/coordinator.log" 2>&1 &
PIDS+=($!)
for _ in $(seq 200); do [ -s "$WORK/farm/join-token" ] && grep -q fingerprint "$WORK/coordinator.log" && break; sleep 0.1; done
FINGERPRINT="$(grep -o -- '--coordinator-fingerprint [^ ]*' "$WORK/coordinator.log" | head -1 | cut -d' ' -f2)"
"$BIN/cpc-agent" --coordinator "$QUIC" --token-file "$WORK/farm/join-token" --coordinator-fingerprint "$FINGERPRINT" \
    --backend cpu --metrics "$AGENT_METRICS" >"$WORK/agent.log" 2>&1 &
PIDS+=($!)
for _ in $(seq 300); do
    scrape "http://$AGENT_METRICS/metrics" 2>/dev/null | grep -q '^cpcfarm_agent_connected 1' && break
    sleep 0.1
done
scrape "http://$AGENT_METRICS/metrics" | grep -q '^cpcfarm_agent_connected 1' || { cat "$WORK/agent.log"; exit 1; }
sleep 2 # a few blocks and shards, so histograms and labelled series are there too
for target in "coordinator $COORD_METRICS" "agent $AGENT_METRICS"; do
    set -- $target
    scrape "http://$2/metrics" >"$WORK/$1.prom"
    problems="$(promtool check metrics <"$WORK/$1.prom" 2>&1 || true)"
    echo "   $1: $(grep -c '^cpcfarm_' "$WORK/$1.prom") samples, $(printf '%s' "$problems" | grep -c . || true) problems"
    if [ -n "$problems" ]; then printf '%s\n' "$problems"; exit 1; fi
done

echo "== promtool: config, rules, rule tests"
promtool check config deploy/prometheus/prometheus.yml
promtool check rules deploy/prometheus/alerts.yml
promtool test rules deploy/prometheus/alerts.test.yml

echo "== Kubernetes manifests against 1.30 (strict)"
kubernetes-validate --strict --quiet -k 1.30.0 deploy/kubernetes/*.yaml

echo "== systemd units: verify, security exposure"
mkdir -p "$WORK/units"
for unit in deploy/systemd/*.service; do
    sed "s|/usr/local/bin/|$BIN/|" "$unit" >"$WORK/units/$(basename "$unit")"
done
systemd-analyze verify "$WORK"/units/*.service
for unit in "$WORK"/units/*.service; do
    score="$(systemd-analyze security --offline=true --no-pager "$unit" 2>/dev/null | sed -n 's/.*Overall exposure level for [^:]*: \([0-9.]*\).*/\1/p')"
    echo "   $(basename "$unit"): exposure $score"
    python3 -c 'import sys; sys.exit(0 if float(sys.argv[1]) < 4 else 1)' "$score" ||
        { echo "   exposure $score is 4 or more: tighten $(basename "$unit")"; exit 1; }
done
echo "== operator checks passed"
