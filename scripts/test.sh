#!/usr/bin/env bash
# The test command (README; CI runs exactly this through .ci/run).
#
# From a fresh clone on a fresh machine: installs the tools, builds the local control plane
# (Kubernetes from Go modules; 15-25 min the first time, cached afterwards), then runs format,
# lints, unit and integration tests, the chart tests and the end-to-end suite on a real API server
# (including building the release image for both architectures and installing the chart and the
# image from a local OCI registry).
# Every step prints a timestamp and the elapsed time, so a long step never looks like a hang.
#
# Environment:
#   CKB_TEST_SKIP_E2E=1   skip the control-plane build and the e2e suite (says so loudly; for quick
#                         local iterations only, never in CI)
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

start=$SECONDS
step() { printf '\n==> [%s +%4ss] %s\n' "$(date -u +%H:%M:%S)" "$(( SECONDS - start ))" "$*"; }
trap 'rc=$?; [[ $rc -eq 0 ]] || printf "\n==> [%s +%4ss] FAILED (exit %s)\n" "$(date -u +%H:%M:%S)" "$(( SECONDS - start ))" "$rc"' EXIT

# Two cores shared by everything: keep every build to two jobs.
export CARGO_BUILD_JOBS="${CARGO_BUILD_JOBS:-2}"
export CARGO_TERM_COLOR="${CARGO_TERM_COLOR:-never}"
export GOTOOLCHAIN=local
# One build directory outside the checkout, like the control-plane cache: a fresh clone (CI) reuses
# the dependencies compiled by the previous run instead of rebuilding ~400 crates on two cores.
# Workspace crates are keyed by their path, so clones in different folders never share artifacts.
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/ckb-operator/target}"
# CI builds once: incremental data would only fill the disk.
export CARGO_INCREMENTAL="${CARGO_INCREMENTAL:-0}"

step "tools: helm, Python venv (check-jsonschema, kubernetes-validate)"
bash scripts/install-tools.sh helm venv
eval "$(bash scripts/install-tools.sh env)"

if [[ "${CKB_TEST_SKIP_E2E:-}" == 1 ]]; then
  step "CKB_TEST_SKIP_E2E=1: NOT building the control plane and NOT running the e2e suite"
else
  step "local control plane (Kubernetes from Go modules; cached after the first build)"
  bash e2e/scripts/build-control-plane.sh
  bash scripts/install-tools.sh kubectl
  step "GitOps health checkers: kstatus and Argo CD's Lua (Go modules; cached after the first build)"
  bash e2e/scripts/build-gitops-check.sh
  step "Azure Workload Identity webhook (from its Go module; cached after the first build)"
  bash e2e/scripts/build-awi.sh
fi

step "version check (crates, Chart.yaml, values.yaml image tag, CHANGELOG.md, README install agree); workflow schema"
python3 scripts/check-version.py
check-jsonschema --builtin-schema vendor.github-workflows .github/workflows/*.yml

step "cargo fmt --check"
cargo fmt --all -- --check

step "cargo clippy (all targets, warnings are errors)"
cargo clippy -j2 --workspace --all-targets -- -D warnings

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
  # The local OCI registry (the README test and oci_install push to it), crane, the cross toolchain
  # (Debian's musl and aarch64 packages) and cargo-cyclonedx.
  step "tools: crane, OCI registry (distribution), cross toolchain, cargo-cyclonedx"
  bash scripts/install-tools.sh crane registry cross cyclonedx
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
