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
#   crane    crane (go-containerregistry; go install)             -> tools/bin/crane
#   registry CNCF distribution registry (go install)              -> tools/bin/registry
#   cyclonedx cargo-cyclonedx (cargo install --locked)            -> tools/bin/cargo-cyclonedx
#   cross    musl and aarch64 cross toolchain: rust targets (rustup) and Debian packages (apt-get,
#            adds the arm64 dpkg architecture for musl-dev:arm64; needs root)
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
CRANE_VERSION="v0.22.1"
REGISTRY_VERSION="v3.1.2"
CARGO_CYCLONEDX_VERSION="0.5.9"
CROSS_RUST_TARGETS="x86_64-unknown-linux-musl aarch64-unknown-linux-musl"
CROSS_DEBIAN_PACKAGES="musl-tools gcc-aarch64-linux-gnu musl-dev:arm64 qemu-user-static"

log_tag=install-tools
# shellcheck source=scripts/lib.sh
source "$repo/scripts/lib.sh"
say() { printf '%s=%s\n' "$1" "$2"; }

mkdir -p "$bin"

install_helm() {
  local stamp="$tools/.helm-$HELM_VERSION"
  if [[ -x "$bin/helm" && -f "$stamp" ]]; then say helm "$bin/helm"; return; fi
  command -v go >/dev/null || { echo "go is required to install helm" >&2; return 1; }
  log "installing helm $HELM_VERSION with go install (2-5 min the first time)"
  local start=$SECONDS
  run_with_progress "building helm" env GOTOOLCHAIN=local CGO_ENABLED=0 GOBIN="$bin" \
    GOFLAGS="-buildvcs=false -trimpath" GOMAXPROCS="${GOMAXPROCS:-2}" \
    go install -p 2 -ldflags "-s -w -X helm.sh/helm/v3/internal/version.version=$HELM_VERSION" \
    "helm.sh/helm/v3/cmd/helm@$HELM_VERSION"
  "$bin/helm" version --short >/dev/null
  rm -f "$tools"/.helm-*; touch "$stamp"
  log "helm $("$bin/helm" version --short) installed in $(( SECONDS - start ))s"
  say helm "$bin/helm"
}

# go install <name> <package> <version>: a pinned Go module binary into tools/bin.
go_tool() {
  local name="$1" pkg="$2" version="$3"
  local stamp="$tools/.$name-$version"
  if [[ -x "$bin/$name" && -f "$stamp" ]]; then say "$name" "$bin/$name"; return; fi
  # Two runs at once (the image build and a test) must not build the same tool twice.
  exec 8>"$tools/.$name.lock"; flock 8
  if [[ -x "$bin/$name" && -f "$stamp" ]]; then say "$name" "$bin/$name"; exec 8>&-; return; fi
  command -v go >/dev/null || { echo "go is required to install $name" >&2; return 1; }
  log "installing $name $version with go install (1-5 min the first time)"
  local start=$SECONDS
  run_with_progress "building $name" env GOTOOLCHAIN=local CGO_ENABLED=0 GOBIN="$bin" \
    GOFLAGS="-buildvcs=false -trimpath" GOMAXPROCS="${GOMAXPROCS:-2}" \
    go install -p 2 -ldflags "-s -w" "$pkg@$version"
  rm -f "$tools/.$name"-*; touch "$stamp"
  log "$name $version installed in $(( SECONDS - start ))s"
  exec 8>&-
  say "$name" "$bin/$name"
}

install_crane() {
  go_tool crane github.com/google/go-containerregistry/cmd/crane "$CRANE_VERSION"
}

install_registry() {
  go_tool registry github.com/distribution/distribution/v3/cmd/registry "$REGISTRY_VERSION"
}

install_cyclonedx() {
  local stamp="$tools/.cargo-cyclonedx-$CARGO_CYCLONEDX_VERSION"
  if [[ -x "$bin/cargo-cyclonedx" && -f "$stamp" ]]; then say cargo-cyclonedx "$bin/cargo-cyclonedx"; return; fi
  exec 8>"$tools/.cargo-cyclonedx.lock"; flock 8
  if [[ -x "$bin/cargo-cyclonedx" && -f "$stamp" ]]; then say cargo-cyclonedx "$bin/cargo-cyclonedx"; exec 8>&-; return; fi
  log "installing cargo-cyclonedx $CARGO_CYCLONEDX_VERSION with cargo install --locked (3-8 min the first time)"
  local start=$SECONDS root="$tools/cargo-cyclonedx"
  # A target dir of its own in the cache: an interrupted install resumes instead of starting over.
  run_with_progress "building cargo-cyclonedx" nice -n 10 cargo install --locked --quiet -j 2 \
    --root "$root" --target-dir "$root/build" --version "$CARGO_CYCLONEDX_VERSION" cargo-cyclonedx
  ln -sfn "$root/bin/cargo-cyclonedx" "$bin/cargo-cyclonedx"
  rm -f "$tools"/.cargo-cyclonedx-*; touch "$stamp"
  log "cargo-cyclonedx $CARGO_CYCLONEDX_VERSION installed in $(( SECONDS - start ))s"
  exec 8>&-
  say cargo-cyclonedx "$bin/cargo-cyclonedx"
}

# The cross toolchain the image build needs. Debian's packages, because the rules are "real parts
# from a registry": musl-tools gives x86_64-linux-musl-gcc; gcc-aarch64-linux-gnu plus musl-dev:arm64
# (multiarch) give aarch64-linux-musl-gcc, musl's arm64 headers and libc; qemu-user-static runs the
# arm64 binary in the image check.
install_cross() {
  local t missing=()
  for t in $CROSS_RUST_TARGETS; do
    rustup target list --installed | grep -qx "$t" || missing+=("$t")
  done
  if [[ ${#missing[@]} -gt 0 ]]; then
    log "rustup target add ${missing[*]}"
    rustup target add "${missing[@]}" >&2
  fi
  local need=0
  for t in x86_64-linux-musl-gcc aarch64-linux-musl-gcc aarch64-linux-gnu-gcc aarch64-linux-gnu-ar qemu-aarch64-static; do
    command -v "$t" >/dev/null || need=1
  done
  if [[ $need == 1 ]]; then
    command -v apt-get >/dev/null || { echo "the cross toolchain needs Debian's apt-get ($CROSS_DEBIAN_PACKAGES)" >&2; return 1; }
    local sudo=()
    [[ $(id -u) == 0 ]] || sudo=(sudo)
    log "apt-get install $CROSS_DEBIAN_PACKAGES"
    dpkg --print-foreign-architectures | grep -qx arm64 || "${sudo[@]}" dpkg --add-architecture arm64
    run_with_progress "apt-get update" "${sudo[@]}" apt-get update -qq >&2
    run_with_progress "installing the cross toolchain" env DEBIAN_FRONTEND=noninteractive \
      "${sudo[@]}" apt-get install -y -qq --no-install-recommends $CROSS_DEBIAN_PACKAGES >&2
  fi
  say cross "$(command -v aarch64-linux-musl-gcc)"
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
    crane) install_crane ;;
    registry) install_registry ;;
    cyclonedx) install_cyclonedx ;;
    cross) install_cross ;;
    control-plane) install_control_plane ;;
    env) print_env ;;
    *) echo "unknown tool: $tool (helm, kubectl, venv, lowkey, crane, registry, cyclonedx, cross, control-plane, env)" >&2; exit 2 ;;
  esac
done
