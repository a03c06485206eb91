# Shared by the e2e/scripts/build-*.sh scripts (sourced, not run): logging, the lock on a cache
# directory, the Go build environment, and a build step that reports progress every 30 seconds so
# CI never sees a silent step. The sourcing script sets `log_tag` first.

# log and run_with_progress.
# shellcheck source=scripts/lib.sh
source "$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)/scripts/lib.sh"

# lock_cache DIR WHAT: holds DIR/.lock for the rest of the script, so two runs at once (the tests
# and the demo) do not build twice into the same directory; waits for another build, saying so.
lock_cache() {
  mkdir -p "$1"
  exec 9>"$1/.lock"
  if ! flock -n 9; then
    log "another build of $2 is running; waiting for it"
    flock 9
  fi
}

# go_setup MODULE_DIR WHAT: checks for go, exports the build environment and sets `jobs`, then
# downloads the module's dependencies.
go_setup() {
  command -v go >/dev/null ||
    { echo "go is required to build $2 (Go >= $(sed -n 's/^go //p' "$1/go.mod"))" >&2; exit 1; }
  export GOTOOLCHAIN=local CGO_ENABLED=0
  export GOFLAGS="-mod=readonly -buildvcs=false -trimpath"
  # Two cores are shared with the Rust build: keep Go from using more.
  local cores
  cores="$(nproc 2>/dev/null || echo 2)"
  jobs="${CKB_GO_BUILD_JOBS:-$(( cores < 2 ? 1 : 2 ))}"
  export GOMAXPROCS="${GOMAXPROCS:-$jobs}"
  (cd "$1" && go mod download) ||
    { echo "go mod download failed (check: go env GOPROXY GOSUMDB)" >&2; exit 1; }
}

# go_in DIR ARGS...: runs `go ARGS...` in DIR.
go_in() {
  local dir="$1"
  shift
  (cd "$dir" && go "$@")
}

# with_progress WHAT COMMAND...: a go build step with progress; exits the script if it fails.
with_progress() {
  local what="$1"
  shift
  run_with_progress "building $what" "$@" || { echo "go build of $what failed" >&2; exit 1; }
}
