#!/usr/bin/env bash
# The test suite: every crate's unit, conformance and end-to-end tests (real devnet process, loopback only).
# Conformance tests read ../shared/vectors (or $CPC_VECTORS); under CI=true a missing folder fails them.
set -euo pipefail
cd "$(dirname "$0")/.."

# The reference script (../shared/spec/synthetic_ref.py) needs numpy for the cross-check test.
if ! python3 -c 'import numpy' 2>/dev/null; then
    python3 -m pip install --quiet --disable-pip-version-check numpy
fi

# End-to-end tests run the real binaries (cpc-devnet, cpc-coordinator, cpc-agent): build them all first.
cargo build --workspace --bins --locked
cargo test --workspace --locked "$@"
