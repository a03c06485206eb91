#!/usr/bin/env bash
# The test command (README; CI runs exactly this through .ci/run).
#
# From a fresh clone on a fresh machine: installs the tools, starts building the end-to-end
# suite's parts in the background (Kubernetes from Go modules, the GitOps checkers, the AWI webhook,
# crane, the registry, the cross toolchain; 15-25 min the first time, cached afterwards) while it
# runs format, lints, unit and integration tests and the chart tests, then builds the release image
# for both architectures and runs the end-to-end suite on a real API server (which also installs
# the chart and the image from a local OCI registry) and the demo.
# Every step prints a timestamp and the elapsed time, so a long step never looks like a hang.
#
# Environment:
#   CKB_TEST_SKIP_E2E=1   skip the control-plane build and the e2e suite (says so loudly; for quick
#                         local iterations only, never in CI)
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

start=$SECONDS
step() { printf '\n==> [%s +%4ss] %s\n' "$(date -u +%H:%M:%S)" "$(( SECONDS - start ))" "$*"; }
trap 'rc=$?; [[ -n "${bg_pid:-}" ]] && kill "$bg_pid" 2>/dev/null; [[ $rc -eq 0 ]] || printf "\n==> [%s +%4ss] FAILED (exit %s)\n" "$(date -u +%H:%M:%S)" "$(( SECONDS - start ))" "$rc"' EXIT

# Two cores shared by everything: keep every build to two jobs.
export CARGO_BUILD_JOBS="${CARGO_BUILD_JOBS:-2}"
export CARGO_TERM_COLOR="${CARGO_TERM_COLOR:-never}"
export GOTOOLCHAIN=local
# One build directory outside the checkout, like the control-plane cache: a fresh clone (CI) reuses
# the dependencies compiled by the previous run instead of rebuilding ~400 crates on two cores.
# NB: cargo may reuse a workspace crate built in another clone when its sources are the same; the
# e2e suite therefore finds the repository from the run-time CARGO_MANIFEST_DIR, not the compiled-in one.
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/ckb-operator/target}"
# CI builds once: incremental data would only fill the disk.
export CARGO_INCREMENTAL="${CARGO_INCREMENTAL:-0}"

step "tools: helm, Python venv (check-jsonschema, kubernetes-validate)"
bash scripts/install-tools.sh helm venv
eval "$(bash scripts/install-tools.sh env)"

# The end-to-end suite's parts (the control plane, the GitOps checkers and the AWI webhook from Go
# modules; crane, the registry, the cross toolchain and cargo-cyclonedx) are built in the background
# while the Rust checks below run in the foreground: on a fresh machine both take 15-25 minutes, and
# much of that is downloads and single-threaded steps that overlap well even on two cores. Cached,
# the background job takes seconds. Its output goes to a log, shown when it is waited for.
bg_pid=""
bg_log=""
if [[ "${CKB_TEST_SKIP_E2E:-}" == 1 ]]; then
  step "CKB_TEST_SKIP_E2E=1: NOT building the control plane and NOT running the e2e suite"
else
  bg_log="$(mktemp "${TMPDIR:-/tmp}/ckb-test-e2e-parts.XXXXXX.log")"
  step "e2e parts in the background (control plane, GitOps checkers, AWI webhook, crane, registry, cross toolchain, cargo-cyclonedx; cached after the first build): log $bg_log"
  (
    set -euo pipefail
    bash e2e/scripts/build-control-plane.sh
    bash scripts/install-tools.sh kubectl
    bash e2e/scripts/build-gitops-check.sh
    bash e2e/scripts/build-awi.sh
    # The local OCI registry (the README test and oci_install push to it), crane, the cross
    # toolchain (Debian's musl and aarch64 packages) and cargo-cyclonedx.
    bash scripts/install-tools.sh crane registry cross cyclonedx
  ) >"$bg_log" 2>&1 &
  bg_pid=$!
fi

# Waits for the background job, printing its latest line every minute; on failure prints the end
# of its log and fails.
wait_for_background() {
  [[ -n "$bg_pid" ]] || return 0
  step "waiting for the e2e parts built in the background"
  while kill -0 "$bg_pid" 2>/dev/null; do
    for _ in $(seq 60); do kill -0 "$bg_pid" 2>/dev/null || break; sleep 1; done
    kill -0 "$bg_pid" 2>/dev/null && printf '    ... %s\n' "$(tail -n 1 "$bg_log")"
  done
  if ! wait "$bg_pid"; then
    printf '\n==> the e2e parts failed to build; the end of %s:\n' "$bg_log"
    tail -n 60 "$bg_log"
    return 1
  fi
  bg_pid=""
  tail -n 20 "$bg_log"
}

step "version check (crates, Chart.yaml, values.yaml image tag, CHANGELOG.md, README install agree); workflow schema"
python3 scripts/check-version.py
check-jsonschema --builtin-schema vendor.github-workflows .github/workflows/*.yml

step "cargo fmt --check"
cargo fmt --all -- --check

step "cargo clippy (all targets, warnings are errors)"
cargo clippy -j2 --workspace --all-targets -- -D warnings

# The fuzz target is its own workspace (cargo-fuzz needs nightly to fuzz), so the lints above never
# see it; type-checking it on stable keeps it in step with the webhook's API. It starts from the
# main lock file, as fuzz/README.md says (cargo adds the fuzz-only crates to the copy).
step "the fuzz target compiles (cargo check; fuzzing itself needs nightly)"
cp Cargo.lock fuzz/Cargo.lock
cargo check -j2 --manifest-path fuzz/Cargo.toml

step "unit and integration tests (everything but the e2e suite)"
cargo test -j2 --workspace --exclude ckb-e2e

# Hook for the chart's own checks (helm lint, template snapshots, values schema): the chart owns
# the script; this command only runs it.
if [[ -f charts/ckb-operator/test.sh ]]; then
  step "chart tests (charts/ckb-operator/test.sh)"
  bash charts/ckb-operator/test.sh
else
  step "chart tests: charts/ckb-operator/test.sh not present yet"
fi

if [[ "${CKB_TEST_SKIP_E2E:-}" != 1 ]]; then
  wait_for_background
  # The release image: static musl binaries for linux/amd64 and linux/arm64, SBOM, daemon-less
  # assembly, then its checks (unpacked, run, user, modes, architecture, static, labels, SBOM vs
  # Cargo.lock, reproducible digest). The cross build is cached like the control plane; the first one
  # takes 15-30 min on two cores. e2e/tests/oci_install.rs then installs from it.
  step "release image for linux/amd64 and linux/arm64 (scripts/image.sh all; cached after the first build)"
  bash scripts/image.sh all

  step "end-to-end suite on the local control plane (one test at a time)"
  cargo test -j2 -p ckb-e2e -- --test-threads=1

  step "the README's demo command (scripts/demo.sh --once)"
  bash scripts/demo.sh --once
fi

step "all tests passed"
