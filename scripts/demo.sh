#!/usr/bin/env bash
# The local demo (README's first command): a real Kubernetes control plane on loopback, the Key
# Vault and Attestation doubles, the chart in development mode, the operator as a local process
# with the chart's ServiceAccount token; applies samples/ and shows the binding, the key and its
# release policy, the injected pod, and a key release for that pod (granted) and for an altered
# policy (refused). Stays up until Ctrl-C.
#
# Usage: scripts/demo.sh [--once]
#   --once   show everything, then clean up and exit (what the tests run)
# The first run builds the control plane from Go modules (15-25 min on 2 cores, cached after).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
export CARGO_BUILD_JOBS="${CARGO_BUILD_JOBS:-2}" GOTOOLCHAIN=local

log() { printf '[demo %s] %s\n' "$(date -u +%H:%M:%S)" "$*" >&2; }

log "tools and control plane (cached after the first run)"
bash e2e/scripts/build-control-plane.sh
bash scripts/install-tools.sh kubectl helm >/dev/null

log "building the operator and the demo"
cargo build -j2 -q -p ckb-operator --bin ckb-operator -p ckb-e2e --bin ckb-demo
log "running"
exec cargo run -j2 -q -p ckb-e2e --bin ckb-demo -- "$@"
