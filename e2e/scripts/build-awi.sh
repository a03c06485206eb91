#!/usr/bin/env bash
# Builds the Azure Workload Identity mutating webhook (github.com/Azure/azure-workload-identity,
# cmd/webhook) from the Go module in e2e/awi, for the e2e suite's workload-identity tests. The
# version is pinned in e2e/awi/go.mod; monis.app/mlog (not served by the Go module proxy) is
# replaced by e2e/awi/mlog. The binary is cached outside the checkout, keyed by the AWI version and
# a hash of e2e/awi (so a change to the logging stand-in rebuilds it):
#
#   ${XDG_CACHE_HOME:-$HOME/.cache}/ckb-operator/awi/<version>-<hash>/bin/azure-wi-webhook
#
# and rebuilt only when missing. A stamp file written last marks a complete build. Progress is
# printed every 30 seconds.
#
# Usage: e2e/scripts/build-awi.sh [--print-bin | --where]
#   --print-bin   build if needed, then print only the binary's path on stdout (progress on stderr)
#   --where       print the binary's path without building; exit 1 if the build is not complete
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
log_tag=build-awi
# shellcheck source=e2e/scripts/lib.sh
source "$here/scripts/lib.sh"
module_dir="$here/awi"
version="$(sed -n 's/^[[:space:]]*github\.com\/Azure\/azure-workload-identity \(v[0-9.]*\).*$/\1/p' "$module_dir/go.mod" | head -n1)"
[[ -n "$version" ]] || { echo "cannot read the azure-workload-identity version from $module_dir/go.mod" >&2; exit 1; }
inputs_hash="$(cd "$module_dir" && cat go.mod go.sum mlog/go.mod mlog/go.sum mlog/*.go | sha256sum | cut -c1-12)"

cache_root="${XDG_CACHE_HOME:-$HOME/.cache}/ckb-operator/awi/$version-$inputs_hash"
bin="$cache_root/bin/azure-wi-webhook"
stamp="$cache_root/complete"

is_complete() { [[ -f "$stamp" && -x "$bin" ]]; }
finish() {
  if [[ "${1:-}" == "--print-bin" ]]; then echo "$bin"; else log "webhook binary: $bin"; fi
}

if [[ "${1:-}" == "--where" ]]; then echo "$bin"; is_complete; exit; fi
if is_complete; then finish "${1:-}"; exit 0; fi

mkdir -p "$cache_root/bin"
lock_cache "$cache_root" "AWI $version"
if is_complete; then finish "${1:-}"; exit 0; fi

go_setup "$module_dir" "the AWI webhook"

rm -f "$stamp"
start=$SECONDS
log "building the Azure Workload Identity webhook $version into $cache_root (go $(go env GOVERSION), -p $jobs)"
with_progress "the AWI webhook" go_in "$module_dir" build -p "$jobs" -ldflags "-s -w" -o "$bin.partial" \
  github.com/Azure/azure-workload-identity/cmd/webhook
mv -f "$bin.partial" "$bin"
"$bin" --version >/dev/null 2>&1 || { echo "$bin does not run" >&2; exit 1; }
printf 'azure-workload-identity %s\ninputs %s\nbuilt %s\nseconds %s\n' "$version" "$inputs_hash" \
  "$(date -u +%FT%TZ)" "$(( SECONDS - start ))" >"$stamp"
log "AWI webhook $version built in $(( SECONDS - start ))s"
finish "${1:-}"
