#!/usr/bin/env bash
# Builds ckb-gitops-check (e2e/gitops): the kstatus library (sigs.k8s.io/cli-utils, what Flux reads
# health with) and the Lua interpreter Argo CD embeds (github.com/yuin/gopher-lua), from their Go
# modules at the versions pinned in e2e/gitops/go.mod. The e2e test gitops_e2e runs it on live
# objects. The binary is cached outside the checkout, keyed by a hash of the module's sources:
#
#   ${XDG_CACHE_HOME:-$HOME/.cache}/ckb-operator/gitops-check/<hash>/ckb-gitops-check
#
# and rebuilt only when missing. Progress is printed every 30 seconds.
#
# Usage: e2e/scripts/build-gitops-check.sh [--print-bin | --where]
#   --print-bin   build if needed, then print only the binary's path on stdout (progress on stderr)
#   --where       print the binary's path without building; exit 1 if it is not built
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
module_dir="$here/gitops"
key="$(cat "$module_dir/go.mod" "$module_dir/go.sum" "$module_dir"/*.go | sha256sum | cut -c1-16)"
cache_root="${XDG_CACHE_HOME:-$HOME/.cache}/ckb-operator/gitops-check/$key"
bin="$cache_root/ckb-gitops-check"

log() { printf '[build-gitops-check %s] %s\n' "$(date -u +%H:%M:%S)" "$*" >&2; }
finish() {
  if [[ "${1:-}" == "--print-bin" ]]; then echo "$bin"; else log "built: $bin"; fi
}

if [[ "${1:-}" == "--where" ]]; then echo "$bin"; [[ -x "$bin" ]]; exit; fi
if [[ -x "$bin" ]]; then finish "${1:-}"; exit 0; fi

mkdir -p "$cache_root"
exec 9>"$cache_root/.lock"
flock 9
if [[ -x "$bin" ]]; then finish "${1:-}"; exit 0; fi

command -v go >/dev/null || { echo "go is required to build ckb-gitops-check (Go >= $(sed -n 's/^go //p' "$module_dir/go.mod"))" >&2; exit 1; }
export GOTOOLCHAIN=local CGO_ENABLED=0
export GOFLAGS="-mod=readonly -buildvcs=false -trimpath"
cores="$(nproc 2>/dev/null || echo 2)"
jobs="${CKB_GO_BUILD_JOBS:-$(( cores < 2 ? 1 : 2 ))}"
export GOMAXPROCS="${GOMAXPROCS:-$jobs}"

start=$SECONDS
log "building ckb-gitops-check (kstatus $(sed -n 's/^[[:space:]]*sigs\.k8s\.io\/cli-utils //p' "$module_dir/go.mod"), gopher-lua $(sed -n 's/^[[:space:]]*github\.com\/yuin\/gopher-lua //p' "$module_dir/go.mod")) with go $(go env GOVERSION)"
(cd "$module_dir" && go mod download) || { echo "go mod download failed (check: go env GOPROXY GOSUMDB)" >&2; exit 1; }
(cd "$module_dir" && go vet . && go build -p "$jobs" -ldflags "-s -w" -o "$bin.partial" .) &
pid=$!
while kill -0 "$pid" 2>/dev/null; do
  for _ in $(seq 30); do kill -0 "$pid" 2>/dev/null || break; sleep 1; done
  kill -0 "$pid" 2>/dev/null && log "still building: $(( SECONDS - start ))s"
done
wait "$pid" || { echo "go build of ckb-gitops-check failed" >&2; exit 1; }
mv -f "$bin.partial" "$bin"
log "built in $(( SECONDS - start ))s"
finish "${1:-}"
