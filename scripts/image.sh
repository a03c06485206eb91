#!/usr/bin/env bash
# Builds, assembles and verifies the ckb-operator container image without a container engine.
#
#   scripts/image.sh binaries   cross-compile the static (musl) release binary for linux/amd64 and
#                               linux/arm64 into the cached release target directory
#   scripts/image.sh build      binaries + SBOM + the OCI image (an index of both platforms) as an
#                               OCI image layout in $CKB_IMAGE_OUT/layout (no daemon, no registry)
#   scripts/image.sh sbom       only the SBOM step of build
#   scripts/image.sh assemble   only the assembly step of build (binaries and SBOMs already there)
#   scripts/image.sh verify     unpack the layout and check the image (see verify() below)
#   scripts/image.sh all        build, then verify (what scripts/test.sh runs)
#   scripts/image.sh env        print `export ...` lines with the paths the e2e test reads
#
# Layout of the image (the Dockerfile describes the same image):
#   /ckb-operator                          static binary, root-owned, 0755
#   /etc/passwd, /etc/group                root and nonroot (65532), so the user has a name
#   /etc/ssl/certs/ca-certificates.crt     Debian's CA bundle: reqwest and kube trust the OS store
#                                          (rustls-platform-verifier / rustls-native-certs)
#   /tmp (1777), /home/nonroot (0700, 65532)
#   user 65532:65532, entrypoint ["/ckb-operator", "run"], OCI labels version/source/revision
#
# Reproducible: every file and the image config carry SOURCE_DATE_EPOCH (the commit time unless
# set), tar entries are sorted with numeric owners, and the same inputs give the same digests.
#
# Caches (CI runs a fresh clone on the same machine):
#   ${XDG_CACHE_HOME:-$HOME/.cache}/ckb-operator/release-target   cargo target dir of both targets
#   ${XDG_CACHE_HOME:-$HOME/.cache}/ckb-operator/tools/bin         crane, registry, cargo-cyclonedx
#   ${XDG_CACHE_HOME:-$HOME/.cache}/ckb-operator/image             the outputs ($CKB_IMAGE_OUT)
#
# Cross toolchain (Debian packages, installed by scripts/install-tools.sh cross):
#   x86_64: musl-tools (x86_64-linux-musl-gcc for aws-lc-sys)
#   arm64:  gcc-aarch64-linux-gnu + musl-dev:arm64 (aarch64-linux-musl-gcc wrapper and musl's
#           libc.a headers); rustc links with aarch64-linux-gnu-gcc using its self-contained crt.
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repo"
cache="${XDG_CACHE_HOME:-$HOME/.cache}/ckb-operator"
tools_bin="$cache/tools/bin"
# Outputs (layout, index-digest, SBOMs) outside the checkout, so every checkout on the machine (and
# the e2e tests run from any of them) finds the last image built.
out="${CKB_IMAGE_OUT:-$cache/image}"
release_target="${CKB_RELEASE_TARGET_DIR:-$cache/release-target}"

log_tag=image
# shellcheck source=scripts/lib.sh
source "$repo/scripts/lib.sh"
die() { printf '[image] FAILED: %s\n' "$*" >&2; exit 1; }

# Rust target triple -> OCI platform architecture.
targets=(x86_64-unknown-linux-musl aarch64-unknown-linux-musl)
oci_arch() { case "$1" in x86_64-*) echo amd64 ;; aarch64-*) echo arm64 ;; *) die "no OCI arch for $1" ;; esac; }

# Everything cargo sees must be identical between runs, or the cached target dir is rebuilt.
cargo_env() {
  export CARGO_TARGET_DIR="$release_target"
  export CARGO_BUILD_JOBS="${CARGO_BUILD_JOBS:-2}"
  export CARGO_INCREMENTAL=0
  export CARGO_TERM_COLOR="${CARGO_TERM_COLOR:-never}"
  export CC_x86_64_unknown_linux_musl=x86_64-linux-musl-gcc
  export AR_x86_64_unknown_linux_musl=ar
  export CC_aarch64_unknown_linux_musl=aarch64-linux-musl-gcc
  export AR_aarch64_unknown_linux_musl=aarch64-linux-gnu-ar
  export CARGO_TARGET_AARCH64_UNKNOWN_LINUX_MUSL_LINKER=aarch64-linux-gnu-gcc
  # The registry sources' absolute paths (in panic locations) become /cargo/registry: the binary
  # names no build-machine path. Workspace paths are already relative.
  local reg="${CARGO_HOME:-$HOME/.cargo}/registry"
  export CARGO_TARGET_X86_64_UNKNOWN_LINUX_MUSL_RUSTFLAGS="--remap-path-prefix=$reg=/cargo/registry"
  export CARGO_TARGET_AARCH64_UNKNOWN_LINUX_MUSL_RUSTFLAGS="--remap-path-prefix=$reg=/cargo/registry"
}

binaries() {
  for t in "${targets[@]}"; do
    rustup target list --installed 2>/dev/null | grep -qx "$t" || die "rust target $t missing (scripts/install-tools.sh cross)"
  done
  command -v x86_64-linux-musl-gcc >/dev/null && command -v aarch64-linux-musl-gcc >/dev/null &&
    command -v aarch64-linux-gnu-gcc >/dev/null || die "cross C toolchain missing (scripts/install-tools.sh cross)"
  cargo_env
  local t0=$SECONDS args=()
  for t in "${targets[@]}"; do args+=(--target "$t"); done
  log "cargo build --release --locked -p ckb-operator ${args[*]} (target dir $CARGO_TARGET_DIR)"
  run_with_progress "building the release binaries" \
    nice -n 10 cargo build --release --locked -j "$CARGO_BUILD_JOBS" -p ckb-operator "${args[@]}"
  log "release binaries built in $(( SECONDS - t0 ))s"
}

# ---- metadata ------------------------------------------------------------------------------

# The one version: the workspace crates', which Chart.yaml and the image carry (scripts/check-version.py).
crate_version() {
  python3 -c 'import tomllib,sys; print(tomllib.load(open(sys.argv[1],"rb"))["workspace"]["package"]["version"])' Cargo.toml
}
crate_repository() {
  python3 -c 'import tomllib,sys; print(tomllib.load(open(sys.argv[1],"rb"))["workspace"]["package"]["repository"])' Cargo.toml
}
chart_field() { sed -n "s/^$1:[[:space:]]*\"\{0,1\}\([^\"]*\)\"\{0,1\}[[:space:]]*$/\1/p" charts/ckb-operator/Chart.yaml | head -n1; }
# The image name the chart deploys by default (values.yaml image.repository).
image_repository() {
  sed -n '/^image:/,/^[^[:space:]#]/s/^[[:space:]]*repository:[[:space:]]*\([^[:space:]#]*\).*/\1/p' charts/ckb-operator/values.yaml | head -n1
}
source_date_epoch() { echo "${SOURCE_DATE_EPOCH:-$(git log -1 --format=%ct 2>/dev/null || echo 0)}"; }
revision() { git rev-parse HEAD 2>/dev/null || echo unknown; }

# ---- tools -----------------------------------------------------------------------------------

# ensure_tools TOOL...: scripts/install-tools.sh TOOL... (cached), then tools/bin first on PATH.
ensure_tools() {
  bash scripts/install-tools.sh "$@" >/dev/null
  export PATH="$tools_bin:$PATH"
}

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

# Starts the distribution registry on a free loopback port with its storage in "$1"; sets
# $registry_pid and $registry_host. Stopped by stop_registry (also on exit).
start_registry() {
  local dir="$1" port
  port="$(free_port)"
  mkdir -p "$dir/storage"
  cat >"$dir/config.yml" <<EOF
version: 0.1
log:
  level: warn
storage:
  filesystem:
    rootdirectory: $dir/storage
  delete:
    enabled: true
http:
  addr: 127.0.0.1:$port
EOF
  OTEL_TRACES_EXPORTER=none registry serve "$dir/config.yml" >"$dir/registry.log" 2>&1 &
  registry_pid=$!
  registry_host="127.0.0.1:$port"
  for _ in $(seq 100); do
    curl -fsS "http://$registry_host/v2/" >/dev/null 2>&1 && return 0
    kill -0 "$registry_pid" 2>/dev/null || break
    sleep 0.1
  done
  cat "$dir/registry.log" >&2
  die "the local registry did not start"
}
stop_registry() {
  if [[ -n "${registry_pid:-}" ]]; then kill "$registry_pid" 2>/dev/null || true; wait "$registry_pid" 2>/dev/null || true; fi
  registry_pid=""
}

# ---- SBOM ------------------------------------------------------------------------------------

# CycloneDX SBOM of ckb-operator's dependency graph (every platform's; see below), written
# to $out/sbom-<arch>.cdx.json with the timestamp and serial number pinned (reproducible).
sbom() {
  local target="$1" arch dest
  arch="$(oci_arch "$target")"
  dest="$out/sbom-$arch.cdx.json"
  local tmp; tmp="$(mktemp -d)"
  # cargo-cyclonedx writes one SBOM next to each workspace member's Cargo.toml; ckb-operator's is
  # kept, the others removed. --all: every crate, not only the direct dependencies.
  # NB: --target all (every platform's dependencies, a superset of what is linked): with
  # --target <triple>, cargo-cyclonedx 0.5.9 leaves out psm and stacker, which are linked
  # (pest_stack_guard names them both as feature-enabled and as platform-specific dependencies).
  # Listing a few crates too many is the safe side for an SBOM; the image check compares the SBOM
  # with cargo's own dependency tree for each target.
  local name="ckb-sbom-tmp-$arch"
  cargo cyclonedx --all --format json --spec-version 1.5 --target all --no-build-deps \
      --override-filename "$name" >/dev/null 2>"$tmp/err" ||
    { cat "$tmp/err" >&2; rm -f ./*/"$name.json" ./*/*/"$name.json"; die "cargo cyclonedx failed for $target"; }
  local epoch; epoch="$(source_date_epoch)"
  python3 - "operator/$name.json" "$dest" "$epoch" "$target" <<'PY'
import json, sys, datetime, uuid
src, dest, epoch, target = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
bom = json.load(open(src))
meta = bom.setdefault("metadata", {})
meta["timestamp"] = datetime.datetime.fromtimestamp(epoch, datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
# Same inputs, same serial: a name-based UUID of the content without the serial.
bom.pop("serialNumber", None)
digest_input = json.dumps(bom, sort_keys=True)
bom["serialNumber"] = "urn:uuid:" + str(uuid.uuid5(uuid.NAMESPACE_URL, "ckb-operator/" + target + "/" + digest_input))
json.dump(bom, open(dest, "w"), indent=2, sort_keys=True)
PY
  rm -f ./*/"$name.json" ./*/*/"$name.json"; rm -rf "$tmp"
}

# ---- image assembly -------------------------------------------------------------------------

# The image's files as one tar layer (sorted, numeric owners, mtime SOURCE_DATE_EPOCH): python's
# tarfile, because GNU tar cannot give one entry another owner without chown on disk.
make_layer() {
  local binary="$1" sbom_file="$2" dest="$3"
  local ca=/etc/ssl/certs/ca-certificates.crt
  [[ -s "$ca" ]] || die "$ca missing (Debian package ca-certificates)"
  python3 - "$binary" "$sbom_file" "$ca" "$dest" "$(source_date_epoch)" <<'PY'
import io, sys, tarfile
binary, sbom, ca, dest, epoch = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4], int(sys.argv[5])
entries = {}
def d(path, mode=0o755, uid=0):
    entries[path] = ("dir", None, mode, uid)
def f(path, data, mode=0o644, uid=0):
    entries[path] = ("file", data, mode, uid)
for p in ["etc", "etc/ssl", "etc/ssl/certs", "home", "usr", "usr/share", "usr/share/doc",
          "usr/share/doc/ckb-operator"]:
    d(p)
d("tmp", 0o1777)
d("home/nonroot", 0o700, 65532)
f("etc/passwd", b"root:x:0:0:root:/root:/sbin/nologin\nnonroot:x:65532:65532:nonroot:/home/nonroot:/sbin/nologin\n")
f("etc/group", b"root:x:0:\nnonroot:x:65532:\n")
f("etc/ssl/certs/ca-certificates.crt", open(ca, "rb").read())
f("usr/share/doc/ckb-operator/sbom.cdx.json", open(sbom, "rb").read())
f("ckb-operator", open(binary, "rb").read(), 0o755)
with tarfile.open(dest, "w", format=tarfile.PAX_FORMAT) as tar:
    for path in sorted(entries):
        kind, data, mode, uid = entries[path]
        info = tarfile.TarInfo(path)
        info.mtime, info.mode, info.uid, info.gid = epoch, mode, uid, uid
        info.uname = info.gname = ""
        if kind == "dir":
            info.type = tarfile.DIRTYPE
            tar.addfile(info)
        else:
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
PY
}

# Assembles the index in a throwaway local registry with crane (append, mutate, index append) and
# pulls it into an OCI image layout at "$1". Prints the index digest.
assemble() {
  local dest="$1" version repo_url rev epoch created work
  version="$(crate_version)"; repo_url="$(crate_repository)"; rev="$(revision)"; epoch="$(source_date_epoch)"
  created="$(date -u -d "@$epoch" +%Y-%m-%dT%H:%M:%SZ)"
  work="$(mktemp -d)"
  trap 'stop_registry; rm -rf "$work"' RETURN
  start_registry "$work/registry"
  local name="$registry_host/ckb-dev/ckb-operator" manifests=()
  for t in "${targets[@]}"; do
    local arch; arch="$(oci_arch "$t")"
    make_layer "$release_target/$t/release/ckb-operator" "$out/sbom-$arch.cdx.json" "$work/layer-$arch.tar"
    crane append --oci-empty-base -f "$work/layer-$arch.tar" -t "$name:build-$arch" >/dev/null 2>"$work/crane.log" ||
      { cat "$work/crane.log" >&2; die "crane append ($arch)"; }
    crane mutate "$name:build-$arch" -t "$name:$version-$arch" \
      --set-platform "linux/$arch" --user 65532:65532 --entrypoint /ckb-operator,run \
      --exposed-ports 9443/tcp,8080/tcp --workdir / \
      -l "org.opencontainers.image.title=ckb-operator" \
      -l "org.opencontainers.image.version=$version" \
      -l "org.opencontainers.image.source=$repo_url" \
      -l "org.opencontainers.image.revision=$rev" \
      -l "org.opencontainers.image.created=$created" \
      -l "org.opencontainers.image.licenses=Apache-2.0" \
      -l "dev.ckb.sbom=/usr/share/doc/ckb-operator/sbom.cdx.json" >/dev/null 2>"$work/crane.log" ||
      { cat "$work/crane.log" >&2; die "crane mutate ($arch)"; }
    manifests+=(-m "$name:$version-$arch")
  done
  crane index append "${manifests[@]}" -t "$name:$version" >/dev/null 2>"$work/crane.log" ||
    { cat "$work/crane.log" >&2; die "crane index append"; }
  rm -rf "$dest"
  crane pull --format=oci "$name:$version" "$dest" 2>"$work/crane.log" ||
    { cat "$work/crane.log" >&2; die "crane pull into the OCI layout"; }
  crane digest "$name:$version"
}

build() {
  ensure_tools crane registry cyclonedx
  binaries
  mkdir -p "$out"
  local t0=$SECONDS
  for t in "${targets[@]}"; do sbom "$t"; done
  log "SBOMs written in $(( SECONDS - t0 ))s"
  local digest; digest="$(assemble "$out/layout")"
  echo "$digest" >"$out/index-digest"
  log "image index $digest (linux/amd64, linux/arm64) in $out/layout"
}

# ---- verification -----------------------------------------------------------------------------

verify() {
  ensure_tools crane registry
  [[ -f "$out/layout/index.json" && -f "$out/index-digest" ]] || die "no image in $out: run scripts/image.sh build first"
  local t0=$SECONDS
  python3 scripts/image-verify.py "$out/layout" "$out/verify" || die "image checks (above)"

  # The chart's default image is this image: <values image.repository>:<appVersion>.
  local helm_bin="$tools_bin/helm" want rendered
  [[ -x "$helm_bin" ]] || helm_bin=helm
  want="$(image_repository):$(chart_field appVersion)"
  rendered="$("$helm_bin" template ckb-operator charts/ckb-operator --namespace ckb-system \
    --show-only templates/deployment.yaml | sed -n 's/^[[:space:]]*image:[[:space:]]*"\{0,1\}\([^"]*\)"\{0,1\}$/\1/p' | head -n1)"
  [[ "$rendered" == "$want" ]] || die "the chart's default image is '$rendered', expected '$want'"
  [[ "$(chart_field appVersion)" == "$(crate_version)" ]] || die "Chart.yaml appVersion differs from the crate version"
  log "ok   the chart's default image is $want"

  # Reproducible: the same binaries and SBOMs assemble into the same index digest.
  local again; again="$(assemble "$out/verify/layout-again")"
  [[ "$again" == "$(cat "$out/index-digest")" ]] ||
    die "assembling again gave $again, the build gave $(cat "$out/index-digest") (not reproducible)"
  log "ok   assembling again gives the same index digest $again"
  log "image verified in $(( SECONDS - t0 ))s"
}

# What the e2e test (e2e/tests/oci_install.rs) reads.
print_env() {
  echo "export CKB_IMAGE_DIR=\"$out\""
  echo "export CKB_IMAGE_LAYOUT=\"$out/layout\""
  echo "export CKB_IMAGE_VERSION=\"$(crate_version)\""
  echo "export PATH=\"$tools_bin:\$PATH\""
}

case "${1:-}" in
  build) build ;;
  sbom) ensure_tools cyclonedx; mkdir -p "$out"; for t in "${targets[@]}"; do sbom "$t"; done ;;
  assemble) ensure_tools crane registry; d="$(assemble "$out/layout")"; echo "$d" >"$out/index-digest"; log "image index $d" ;;
  verify) verify ;;
  all) build; verify ;;
  env) print_env ;;

  binaries) binaries ;;
  *) echo "usage: $0 binaries|build|verify|all|env" >&2; exit 2 ;;
esac
