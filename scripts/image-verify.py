#!/usr/bin/env python3
"""Checks the ckb-operator image in an OCI image layout (written by scripts/image.sh build).

Usage: image-verify.py LAYOUT WORKDIR

For the index and each platform image (linux/amd64, linux/arm64):
- the index lists exactly those two platforms, and each image's config says the same os/arch;
- config: user 65532:65532, entrypoint ["/ckb-operator", "run"], the OCI labels version (= the
  crate version = the chart's appVersion), source (= Cargo.toml repository), revision (= HEAD);
- files (read from the layer tars, as a container runtime would unpack them): the binary is
  root-owned 0755, nothing is setuid/setgid, nothing is writable by others except /tmp (sticky),
  /etc/passwd names uid 65532, the CA bundle is there;
- the binary: ELF for the right machine (x86-64 / AArch64), statically linked (no interpreter, no
  needed libraries);
- run as uid 65532 inside the unpacked root (chroot, so nothing of the host is there): the
  entrypoint's `--version`, `crd` (equal to the chart's committed CRD) and `render` (adds the
  sidecar); arm64 through qemu-aarch64-static (Debian qemu-user-static, installed by
  scripts/install-tools.sh cross; skipped, saying so, when it is missing);
- the SBOM in the image lists every crate of ckb-operator's dependency graph for that target (as
  `cargo tree` resolves it), each with the version Cargo.lock pins, and nothing that is not in
  Cargo.lock;
- the Dockerfile describes the same image: its runtime stage's USER, ENTRYPOINT, EXPOSE, label
  names and the /etc/passwd and /etc/group it writes equal the built image's;
- (scripts/image.sh verify adds: the chart's default image is <values image.repository>:<Chart
  appVersion>, and assembling again gives the same digest).
Exits non-zero with every failure listed.
"""

import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tomllib

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PLATFORMS = {"amd64": ("x86_64-unknown-linux-musl", "Advanced Micro Devices X86-64"),
             "arm64": ("aarch64-unknown-linux-musl", "AArch64")}
UID = 65532

failures = []


def fail(msg):
    failures.append(msg)
    print(f"  FAIL {msg}", file=sys.stderr)


def ok(msg):
    print(f"  ok   {msg}", file=sys.stderr)


def check(cond, msg):
    (ok if cond else fail)(msg)
    return cond


def blob(layout, digest):
    algo, hexd = digest.split(":", 1)
    path = os.path.join(layout, "blobs", algo, hexd)
    data = open(path, "rb").read()
    if hashlib.sha256(data).hexdigest() != hexd:
        fail(f"blob {digest} does not match its digest")
    return data


def chart_field(name):
    for line in open(os.path.join(REPO, "charts/ckb-operator/Chart.yaml")):
        if line.startswith(name + ":"):
            return line.split(":", 1)[1].strip().strip('"')
    return None


def run(cmd, **kw):
    return subprocess.run(cmd, capture_output=True, text=True, **kw)


def elf_checks(path, machine):
    hdr = run(["readelf", "-hW", path]).stdout
    check(f"Machine:                           {machine}" in hdr or machine in hdr,
          f"{os.path.basename(path)} is an ELF for {machine}")
    progs = run(["readelf", "-lW", path]).stdout
    check("INTERP" not in progs, "no program interpreter (statically linked)")
    dyn = run(["readelf", "-dW", path]).stdout
    check("(NEEDED)" not in dyn, "no shared library needed")


def unpack(layout, manifest, root):
    """Unpacks the layers into root (owners kept) and returns {path: TarInfo}."""
    entries = {}
    os.makedirs(root)
    for layer in manifest["layers"]:
        data = blob(layout, layer["digest"])
        tmp = os.path.join(root + ".layer")
        with open(tmp, "wb") as fh:
            fh.write(data)
        with tarfile.open(tmp) as tar:
            for m in tar.getmembers():
                entries[m.name.lstrip("./")] = m
            tar.extractall(root, numeric_owner=True, filter="fully_trusted")
        os.remove(tmp)
    return entries


def file_checks(entries):
    b = entries.get("ckb-operator")
    if check(b is not None and b.isfile(), "/ckb-operator is a regular file"):
        check(b.uid == 0 and b.gid == 0, "/ckb-operator is owned by root (the user cannot change it)")
        check(b.mode & 0o7777 == 0o755, f"/ckb-operator mode is 0755 (is {b.mode & 0o7777:o})")
    for name, m in sorted(entries.items()):
        if m.mode & 0o6000:
            fail(f"/{name} is setuid/setgid")
        if m.mode & 0o002 and name != "tmp":
            fail(f"/{name} is writable by others")
    t = entries.get("tmp")
    check(t is not None and t.mode & 0o7777 == 0o1777, "/tmp is 1777")
    check("etc/ssl/certs/ca-certificates.crt" in entries, "the CA bundle is at /etc/ssl/certs/ca-certificates.crt")
    owners = {(m.uid, m.gid) for m in entries.values()}
    check(owners <= {(0, 0), (UID, UID)}, f"files are owned by root or {UID} only ({sorted(owners)})")


def run_in_image(root, arch, argv, stdin=None):
    """Runs the image's binary as uid 65532 inside the unpacked root (chroot, so nothing of the
    host is there; needs root). arm64 runs through qemu-aarch64-static, copied into the root (it
    is static too). Returns None when arm64 cannot be run (no qemu)."""
    env = {"PATH": "/", "HOME": "/home/nonroot"}
    prefix = []
    if arch == "arm64":
        qemu = shutil.which("qemu-aarch64-static")
        if qemu is None:
            return None
        shutil.copy(qemu, os.path.join(root, ".qemu-aarch64-static"))
        prefix = ["/.qemu-aarch64-static"]
    if os.geteuid() == 0:
        chroot = shutil.which("chroot") or "/usr/sbin/chroot"
        cmd = [chroot, f"--userspec={UID}:{UID}", root] + prefix + argv
    else:
        # Not root: no chroot; the binary by its host path, as the current user.
        cmd = [os.path.join(root, p.lstrip("/")) for p in prefix + argv[:1]] + argv[1:]
    return subprocess.run(cmd, input=stdin, capture_output=True, text=True, env=env, timeout=120)


def cargo_graph(target):
    """(name, version) of every crate ckb-operator links for target (normal dependencies)."""
    out = run(["cargo", "tree", "--locked", "--offline", "-p", "ckb-operator", "-e", "normal",
               "--target", target, "--prefix", "none", "--format", "{p}"], cwd=REPO)
    if out.returncode != 0:
        fail(f"cargo tree failed: {out.stderr}")
        return set()
    crates = set()
    for line in out.stdout.splitlines():
        parts = line.split()
        if len(parts) >= 2 and parts[1].startswith("v"):
            crates.add((parts[0], parts[1][1:]))
    return crates


def lock_crates():
    lock = tomllib.load(open(os.path.join(REPO, "Cargo.lock"), "rb"))
    return {(p["name"], p["version"]) for p in lock["package"]}


def sbom_checks(root, target):
    path = os.path.join(root, "usr/share/doc/ckb-operator/sbom.cdx.json")
    if not check(os.path.isfile(path), "the SBOM is in the image at /usr/share/doc/ckb-operator/sbom.cdx.json"):
        return
    bom = json.load(open(path))
    check(bom.get("bomFormat") == "CycloneDX", "the SBOM is CycloneDX")
    comps = set()

    def walk(cs):
        for c in cs or []:
            comps.add((c.get("name"), c.get("version")))
            walk(c.get("components"))
    walk(bom.get("components"))
    main = bom.get("metadata", {}).get("component", {})
    comps.add((main.get("name"), main.get("version")))
    graph = cargo_graph(target)
    missing = sorted(graph - comps)
    check(not missing, f"the SBOM lists all {len(graph)} crates ckb-operator links for {target}"
          + (f" (missing: {missing[:10]})" if missing else ""))
    foreign = sorted(comps - lock_crates())
    check(not foreign, f"every one of the SBOM's {len(comps)} components is a Cargo.lock crate at its locked version"
          + (f" (not in Cargo.lock: {foreign[:10]})" if foreign else ""))


def dockerfile_runtime():
    """USER, ENTRYPOINT, EXPOSE, LABEL names of the Dockerfile's last stage, and the text its
    build stage writes to /rootfs/etc/passwd and /rootfs/etc/group."""
    text = open(os.path.join(REPO, "Dockerfile")).read().replace("\\\n", " ")
    lines = [l.strip() for l in text.splitlines() if l.strip() and not l.strip().startswith("#")]
    last = max(i for i, l in enumerate(lines) if l.upper().startswith("FROM "))
    out = {"labels": set(), "expose": set()}
    for l in lines[last:]:
        word, _, rest = l.partition(" ")
        word = word.upper()
        if word == "USER":
            out["user"] = rest.strip()
        elif word == "ENTRYPOINT":
            out["entrypoint"] = json.loads(rest)
        elif word == "EXPOSE":
            out["expose"] |= {p if "/" in p else p + "/tcp" for p in rest.split()}
        elif word == "LABEL":
            out["labels"] |= {kv.split("=", 1)[0] for kv in rest.split() if "=" in kv}
    for name in ("passwd", "group"):
        m = re.search(r"printf '([^']*)' >/rootfs/etc/" + name + r"\b", text)
        out[name] = m.group(1).encode().decode("unicode_escape") if m else None
    return out


def dockerfile_checks(config, root):
    d = dockerfile_runtime()
    cfg = config.get("config", {})
    check(d.get("user") == cfg.get("User"), f"Dockerfile USER {d.get('user')} = image user {cfg.get('User')}")
    check(d.get("entrypoint") == cfg.get("Entrypoint"), f"Dockerfile ENTRYPOINT {d.get('entrypoint')} = image entrypoint")
    check(d["expose"] == set(cfg.get("ExposedPorts") or {}), f"Dockerfile EXPOSE {sorted(d['expose'])} = image ports")
    labels = set(cfg.get("Labels") or {}) - {"org.opencontainers.image.created"}
    check(d["labels"] == labels, f"Dockerfile LABEL names = image label names ({sorted(d['labels'] ^ labels)} differ)")
    for name in ("passwd", "group"):
        check(d[name] == open(os.path.join(root, "etc", name)).read(), f"Dockerfile's /etc/{name} = the image's")


def main():
    layout, work = sys.argv[1], sys.argv[2]
    shutil.rmtree(work, ignore_errors=True)
    os.makedirs(work)
    cargo = tomllib.load(open(os.path.join(REPO, "Cargo.toml"), "rb"))["workspace"]["package"]
    version, source = cargo["version"], cargo["repository"]
    revision = run(["git", "rev-parse", "HEAD"], cwd=REPO).stdout.strip()
    app_version = chart_field("appVersion")
    print(f"image check: crate {version}, chart appVersion {app_version}, revision {revision}", file=sys.stderr)
    check(app_version == version, f"Chart.yaml appVersion {app_version} = crate version {version}")

    top = json.load(open(os.path.join(layout, "index.json")))
    check(len(top["manifests"]) == 1, "the layout holds one image index")
    idx_desc = top["manifests"][0]
    check(idx_desc["mediaType"] == "application/vnd.oci.image.index.v1+json", "it is an OCI image index")
    index = json.loads(blob(layout, idx_desc["digest"]))
    plats = {(m["platform"]["os"], m["platform"]["architecture"]): m for m in index["manifests"]}
    check(set(plats) == {("linux", "amd64"), ("linux", "arm64")},
          f"the index has linux/amd64 and linux/arm64 ({sorted(plats)})")

    for arch, (target, machine) in PLATFORMS.items():
        desc = plats.get(("linux", arch))
        if desc is None:
            continue
        print(f"linux/{arch} {desc['digest']}", file=sys.stderr)
        manifest = json.loads(blob(layout, desc["digest"]))
        config = json.loads(blob(layout, manifest["config"]["digest"]))
        cfg = config.get("config", {})
        check((config.get("os"), config.get("architecture")) == ("linux", arch), f"config says linux/{arch}")
        check(cfg.get("User") == f"{UID}:{UID}", f"user is {UID}:{UID} (is {cfg.get('User')!r})")
        entrypoint = cfg.get("Entrypoint") or []
        check(entrypoint == ["/ckb-operator", "run"], f"entrypoint is /ckb-operator run (is {entrypoint})")
        check(not cfg.get("Cmd"), "no Cmd (the chart passes configuration as environment)")
        labels = cfg.get("Labels") or {}
        check(labels.get("org.opencontainers.image.version") == version, f"label version = {version}")
        check(labels.get("org.opencontainers.image.source") == source, f"label source = {source}")
        check(labels.get("org.opencontainers.image.revision") == revision, f"label revision = {revision}")

        root = os.path.join(work, arch)
        entries = unpack(layout, manifest, root)
        file_checks(entries)
        passwd = open(os.path.join(root, "etc/passwd")).read()
        check(f":{UID}:{UID}:" in passwd, f"/etc/passwd names uid {UID}")
        binary = os.path.join(root, entrypoint[0].lstrip("/")) if entrypoint else ""
        if os.path.isfile(binary):
            elf_checks(binary, machine)

        out = run_in_image(root, arch, [entrypoint[0], "--version"])
        if out is None:
            print(f"  skip running the {arch} binary: qemu-aarch64-static is not installed", file=sys.stderr)
        else:
            check(out.returncode == 0 and out.stdout.strip() == f"ckb-operator {version}",
                  f"`{entrypoint[0]} --version` prints ckb-operator {version} (got {out.stdout.strip()!r} {out.stderr.strip()[:200]})")
            crd = run_in_image(root, arch, [entrypoint[0], "crd"])
            committed = open(os.path.join(REPO, "charts/ckb-operator/files/confidentialkeybindings.ckb.dev.yaml")).read()
            check(crd.returncode == 0 and crd.stdout == committed,
                  "`crd` prints the chart's committed CRD")
            tmp = os.path.join(root, "tmp")
            shutil.copy(os.path.join(REPO, "samples/20-binding.yaml"), os.path.join(tmp, "binding.yaml"))
            bindings = "/tmp/binding.yaml" if os.geteuid() == 0 else os.path.join(tmp, "binding.yaml")
            workload = open(os.path.join(REPO, "samples/30-workload.yaml")).read()
            rendered = run_in_image(root, arch, [entrypoint[0], "render", "-f", "-", "--bindings", bindings],
                                    stdin=workload)
            check(rendered.returncode == 0 and "name: skr" in rendered.stdout,
                  f"`render` adds the skr sidecar to the sample workload ({rendered.stderr.strip()[:200]})")
        sbom_checks(root, target)
        dockerfile_checks(config, root)

    if failures:
        print(f"\n{len(failures)} image check(s) failed:", file=sys.stderr)
        for f in failures:
            print(f"  - {f}", file=sys.stderr)
        sys.exit(1)
    print("image checks passed", file=sys.stderr)


if __name__ == "__main__":
    main()
