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
log_tag=build-gitops-check
# shellcheck source=e2e/scripts/lib.sh
source "$here/scripts/lib.sh"
module_dir="$here/gitops"
key="$(cat "$module_dir/go.mod" "$module_dir/go.sum" "$module_dir"/*.go | sha256sum | cut -c1-16)"
cache_root="${XDG_CACHE_HOME:-$HOME/.cache}/ckb-operator/gitops-check/$key"
bin="$cache_root/ckb-gitops-check"

finish() {
  if [[ "${1:-}" == "--print-bin" ]]; then echo "$bin"; else log "built: $bin"; fi
}

if [[ "${1:-}" == "--where" ]]; then echo "$bin"; [[ -x "$bin" ]]; exit; fi
if [[ -x "$bin" ]]; then finish "${1:-}"; exit 0; fi

lock_cache "$cache_root" "ckb-gitops-check"
if [[ -x "$bin" ]]; then finish "${1:-}"; exit 0; fi

go_setup "$module_dir" "ckb-gitops-check"

start=$SECONDS
log "building ckb-gitops-check (kstatus $(sed -n 's/^[[:space:]]*sigs\.k8s\.io\/cli-utils //p' "$module_dir/go.mod"), gopher-lua $(sed -n 's/^[[:space:]]*github\.com\/yuin\/gopher-lua //p' "$module_dir/go.mod")) with go $(go env GOVERSION)"
with_progress "ckb-gitops-check" go_in "$module_dir" vet .
with_progress "ckb-gitops-check" go_in "$module_dir" build -p "$jobs" -ldflags "-s -w" -o "$bin.partial" .
mv -f "$bin.partial" "$bin"
log "built in $(( SECONDS - start ))s"
finish "${1:-}"
