#!/usr/bin/env bash
# Installs the tools the tests and the demo need, idempotently, into
#   ${XDG_CACHE_HOME:-$HOME/.cache}/ckb-operator/tools/
# using only package registries (Go module proxy, PyPI, Maven Central). Works on a fresh machine
# that has Go, Python 3 and (for `lowkey`) Java + Maven, as the project's machines do.
#
# Usage: scripts/install-tools.sh [TOOL...]
#   helm     helm v3 (go install)                                -> tools/bin/helm
#   kubectl  kubectl of the pinned control plane (e2e build)      -> tools/bin/kubectl
#   venv     Python venv with check-jsonschema, kubernetes-validate -> tools/venv/bin/
#   lowkey   Lowkey Vault runnable jar (Maven Central), opt-in    -> tools/lowkey-vault/lowkey-vault-app.jar
#   control-plane  etcd, kube-apiserver, kube-controller-manager (15-25 min the first time)
#   env      print `export ...` lines to eval (PATH with the tools first); installs nothing
# With no TOOL: helm venv kubectl (kubectl builds the whole control plane the first time).
# Each installed tool's path is printed on stdout as `<tool>=<path>`; progress goes to stderr.
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
tools="${XDG_CACHE_HOME:-$HOME/.cache}/ckb-operator/tools"
bin="$tools/bin"

# Pinned versions: change here, the cache follows (each install checks the version it finds).
HELM_VERSION="v3.21.4"
CHECK_JSONSCHEMA_VERSION="0.39.0"
KUBERNETES_VALIDATE_VERSION="1.37.0"
LOWKEY_VAULT_VERSION="${CKB_LOWKEY_VAULT_VERSION:-3.4.0}"

log() { printf '[install-tools %s] %s\n' "$(date -u +%H:%M:%S)" "$*" >&2; }
say() { printf '%s=%s\n' "$1" "$2"; }

mkdir -p "$bin"

install_helm() {
  local stamp="$tools/.helm-$HELM_VERSION"
  if [[ -x "$bin/helm" && -f "$stamp" ]]; then say helm "$bin/helm"; return; fi
  command -v go >/dev/null || { echo "go is required to install helm" >&2; return 1; }
  log "installing helm $HELM_VERSION with go install (2-5 min the first time)"
  local start=$SECONDS
  GOTOOLCHAIN=local CGO_ENABLED=0 GOBIN="$bin" GOFLAGS="-buildvcs=false -trimpath" GOMAXPROCS="${GOMAXPROCS:-2}" \
    go install -p 2 -ldflags "-s -w -X helm.sh/helm/v3/internal/version.version=$HELM_VERSION" \
    "helm.sh/helm/v3/cmd/helm@$HELM_VERSION" &
  local pid=$!
  while kill -0 "$pid" 2>/dev/null; do
    for _ in $(seq 30); do kill -0 "$pid" 2>/dev/null || break; sleep 1; done
    kill -0 "$pid" 2>/dev/null && log "still building helm: $(( SECONDS - start ))s"
  done
  wait "$pid"
  "$bin/helm" version --short >/dev/null
  rm -f "$tools"/.helm-*; touch "$stamp"
  log "helm $("$bin/helm" version --short) installed in $(( SECONDS - start ))s"
  say helm "$bin/helm"
}

install_control_plane() {
  local dir
  dir="$(bash "$repo/e2e/scripts/build-control-plane.sh" --print-bin-dir)"
  for b in etcd kube-apiserver kube-controller-manager; do say "$b" "$dir/$b"; done
}

install_kubectl() {
  local dir
  dir="$(bash "$repo/e2e/scripts/build-control-plane.sh" --print-bin-dir)"
  ln -sfn "$dir/kubectl" "$bin/kubectl"
  say kubectl "$bin/kubectl"
}

install_venv() {
  local venv="$tools/venv"
  local want="check-jsonschema==$CHECK_JSONSCHEMA_VERSION kubernetes-validate==$KUBERNETES_VALIDATE_VERSION"
  local stamp="$venv/.ckb-requirements"
  if [[ -x "$venv/bin/check-jsonschema" && -f "$stamp" && "$(cat "$stamp")" == "$want" ]]; then
    say check-jsonschema "$venv/bin/check-jsonschema"; say kubernetes-validate "$venv/bin/kubernetes-validate"; return
  fi
  command -v python3 >/dev/null || { echo "python3 is required for the venv" >&2; return 1; }
  log "creating Python venv in $venv ($want)"
  rm -rf "$venv"
  python3 -m venv "$venv"
  # shellcheck disable=SC2086
  "$venv/bin/pip" install --quiet --disable-pip-version-check $want
  echo "$want" >"$stamp"
  ln -sfn "$venv/bin/check-jsonschema" "$bin/check-jsonschema"
  ln -sfn "$venv/bin/kubernetes-validate" "$bin/kubernetes-validate"
  say check-jsonschema "$venv/bin/check-jsonschema"; say kubernetes-validate "$venv/bin/kubernetes-validate"
}

install_lowkey() {
  local dir="$tools/lowkey-vault" jar="$tools/lowkey-vault/lowkey-vault-app.jar"
  local stamp="$dir/.version-$LOWKEY_VAULT_VERSION"
  if [[ -f "$jar" && -f "$stamp" ]]; then say lowkey-vault "$jar"; return; fi
  command -v mvn >/dev/null || { echo "mvn is required to fetch Lowkey Vault" >&2; return 1; }
  mkdir -p "$dir"
  local artifact="com.github.nagyesta.lowkey-vault:lowkey-vault-app:$LOWKEY_VAULT_VERSION:jar"
  log "fetching $artifact from Maven Central"
  if ! mvn -q -B dependency:copy -Dartifact="$artifact" -DoutputDirectory="$dir" -Dmdep.stripVersion=true >"$dir/mvn.log" 2>&1; then
    echo "could not fetch $artifact (see $dir/mvn.log); set CKB_LOWKEY_VAULT_VERSION to another 3.4.x" >&2
    return 1
  fi
  rm -f "$dir"/.version-*; touch "$stamp"
  say lowkey-vault "$jar"
}

print_env() {
  echo "export PATH=\"$bin:\$PATH\""
  echo "export CKB_TOOLS_DIR=\"$tools\""
  local cp_bin
  # The path even when not built yet: `env` never starts the long build.
  cp_bin="$(bash "$repo/e2e/scripts/build-control-plane.sh" --where || true)"
  echo "export CKB_CONTROL_PLANE_BIN=\"$cp_bin\""
  return 0
}

[[ $# -gt 0 ]] || set -- helm venv kubectl
for tool in "$@"; do
  case "$tool" in
    helm) install_helm ;;
    kubectl) install_kubectl ;;
    venv) install_venv ;;
    lowkey) install_lowkey ;;
    control-plane) install_control_plane ;;
    env) print_env ;;
    *) echo "unknown tool: $tool (helm, kubectl, venv, lowkey, control-plane, env)" >&2; exit 2 ;;
  esac
done
