#!/usr/bin/env bash
# Builds the local control plane used by the end-to-end tests and the demo: etcd, kube-apiserver,
# kube-controller-manager and kubectl, from the Go module in e2e/cluster (one pinned Kubernetes
# release). The binaries are cached outside the checkout, keyed by the Kubernetes version:
#
#   ${XDG_CACHE_HOME:-$HOME/.cache}/ckb-operator/control-plane/<version>/bin/
#
# and rebuilt only when missing. A stamp file written last marks a complete build, so an
# interrupted build is redone. The first build takes 15-25 minutes on 2 cores; progress is printed
# every 30 seconds so CI never sees a silent step.
#
# Usage: e2e/scripts/build-control-plane.sh [--print-bin-dir | --where]
#   --print-bin-dir   build if needed, then print only the bin directory on stdout (progress on stderr)
#   --where           print the bin directory without building; exit 1 if the build is not complete
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
log_tag=build-control-plane
# shellcheck source=e2e/scripts/lib.sh
source "$here/scripts/lib.sh"
module_dir="$here/cluster"
version="$(sed -n 's/^[[:space:]]*k8s\.io\/kubernetes \(v[0-9.]*\)$/\1/p' "$module_dir/go.mod" | head -n1)"
[[ -n "$version" ]] || { echo "cannot read the k8s.io/kubernetes version from $module_dir/go.mod" >&2; exit 1; }
[[ "$version" =~ ^v1\.([0-9]+)\.[0-9]+$ ]] || { echo "unexpected version $version" >&2; exit 1; }
minor="${BASH_REMATCH[1]}"

cache_root="${XDG_CACHE_HOME:-$HOME/.cache}/ckb-operator/control-plane/$version"
bin_dir="$cache_root/bin"
stamp="$cache_root/complete"
binaries=(etcd kube-apiserver kube-controller-manager kubectl)

is_complete() {
  [[ -f "$stamp" ]] || return 1
  for b in "${binaries[@]}"; do [[ -x "$bin_dir/$b" ]] || return 1; done
}

finish() {
  if [[ "${1:-}" == "--print-bin-dir" ]]; then echo "$bin_dir"; else log "binaries in $bin_dir"; fi
}

if [[ "${1:-}" == "--where" ]]; then echo "$bin_dir"; is_complete; exit; fi
if is_complete; then finish "${1:-}"; exit 0; fi

lock_cache "$cache_root" "$version"
if is_complete; then finish "${1:-}"; exit 0; fi

go_setup "$module_dir" "the control plane"

rm -f "$stamp"
mkdir -p "$bin_dir"
build_start=$SECONDS
log "building Kubernetes $version control plane into $bin_dir (go $(go env GOVERSION), -p $jobs); first build takes 15-25 min on 2 cores"

# Without these the binaries report v0.0.0-master, which kubectl and helm treat as an unknown server.
ldflags="-s -w"
for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
  ldflags+=" -X $pkg.gitVersion=$version -X $pkg.gitMajor=1 -X $pkg.gitMinor=$minor"
  ldflags+=" -X $pkg.gitTreeState=clean -X $pkg.buildDate=1970-01-01T00:00:00Z"
done

pkg_for() {
  case "$1" in
    etcd) echo ./etcd ;;
    *) echo "k8s.io/kubernetes/cmd/$1" ;;
  esac
}

for b in "${binaries[@]}"; do
  if [[ -x "$bin_dir/$b" && -f "$cache_root/.built-$b" ]]; then
    log "$b already built"
    continue
  fi
  step_start=$SECONDS
  log "go build $b ..."
  with_progress "$b" go_in "$module_dir" build -p "$jobs" -ldflags "$ldflags" -o "$bin_dir/$b.partial" "$(pkg_for "$b")"
  mv -f "$bin_dir/$b.partial" "$bin_dir/$b"
  touch "$cache_root/.built-$b"
  log "built $b in $(( SECONDS - step_start ))s"
done

for b in "${binaries[@]}"; do
  "$bin_dir/$b" --version >/dev/null 2>&1 || "$bin_dir/$b" version --client >/dev/null 2>&1 ||
    { echo "$bin_dir/$b does not run" >&2; exit 1; }
done
printf 'kubernetes %s\nbuilt %s\nseconds %s\n' "$version" "$(date -u +%FT%TZ)" "$(( SECONDS - build_start ))" >"$stamp"
log "control plane $version complete in $(( SECONDS - build_start ))s"
finish "${1:-}"
