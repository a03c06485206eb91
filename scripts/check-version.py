#!/usr/bin/env python3
"""Version-bump check: every place that names the release version agrees.

Usage: scripts/check-version.py [--tag vX.Y.Z] [ROOT]

The one version is the workspace's (Cargo.toml [workspace.package] version). It must be:
- the version of every workspace crate (Cargo.toml of each member, and Cargo.lock);
- the chart's `version` and `appVersion` (Chart.yaml): chart and operator are released together;
- the image tag in values.yaml (`image.tag` empty means appVersion, or the version itself);
- a `## [X.Y.Z]` section of CHANGELOG.md;
- the `--version` of the `helm install oci://...` in README.md and the chart's README;
- with --tag (the release workflow), the git tag `vX.Y.Z`.
Also the image the chart deploys (values.yaml image.repository) is the one the release workflow
publishes (IMAGE in .github/workflows/release.yml).
Exits 1 naming every disagreement.
"""

import os
import re
import sys
import tomllib


def main(argv):
    tag = None
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    args = list(argv)
    while args:
        a = args.pop(0)
        if a == "--tag":
            tag = args.pop(0) if args else ""
        elif a.startswith("--tag="):
            tag = a.split("=", 1)[1]
        else:
            root = a
    problems = []

    def read(rel):
        with open(os.path.join(root, rel), encoding="utf-8") as fh:
            return fh.read()

    workspace = tomllib.loads(read("Cargo.toml"))
    version = workspace["workspace"]["package"]["version"]
    if not re.fullmatch(r"\d+\.\d+\.\d+(-[0-9A-Za-z.-]+)?", version):
        problems.append(f"Cargo.toml: workspace version {version!r} is not semantic (X.Y.Z)")

    # Workspace crates: inherit the version, or state the same one; Cargo.lock agrees.
    names = []
    for member in workspace["workspace"]["members"]:
        manifest = tomllib.loads(read(os.path.join(member, "Cargo.toml")))
        pkg = manifest["package"]
        names.append(pkg["name"])
        v = pkg.get("version")
        if v != {"workspace": True} and v != version:
            problems.append(f"{member}/Cargo.toml: version {v!r}, workspace version {version}")
    lock = tomllib.loads(read("Cargo.lock"))
    for p in lock["package"]:
        if p["name"] in names and "source" not in p and p["version"] != version:
            problems.append(f"Cargo.lock: {p['name']} {p['version']}, workspace version {version} (run cargo update -w)")

    chart = read("charts/ckb-operator/Chart.yaml")

    def field(text, name):
        m = re.search(rf"^{name}:\s*\"?([^\"\s#]+)\"?\s*(#.*)?$", text, re.M)
        return m.group(1) if m else None

    for name in ("version", "appVersion"):
        v = field(chart, name)
        if v != version:
            problems.append(f"charts/ckb-operator/Chart.yaml: {name} {v!r}, crate version {version}")

    values = read("charts/ckb-operator/values.yaml")
    image = re.search(r"^image:\n((?:[ \t]+.*\n|[ \t]*\n|#.*\n)*)", values, re.M)
    block = image.group(1) if image else ""
    m = re.search(r"^\s+tag:\s*\"?([^\"\s#]*)\"?", block, re.M)
    image_tag = m.group(1) if m else None
    if image_tag not in ("", version):
        problems.append(f"charts/ckb-operator/values.yaml: image.tag {image_tag!r}, expected \"\" (appVersion) or {version}")
    m = re.search(r"^\s+repository:\s*\"?([^\"\s#]+)", block, re.M)
    repository = m.group(1) if m else None

    workflow_path = ".github/workflows/release.yml"
    if os.path.exists(os.path.join(root, workflow_path)):
        m = re.search(r"^\s+IMAGE:\s*\"?([^\"\s#]+)", read(workflow_path), re.M)
        published = m.group(1) if m else None
        if published != repository:
            problems.append(f"{workflow_path}: publishes {published!r}, the chart deploys {repository!r}")
    else:
        problems.append(f"{workflow_path} is missing")

    changelog = read("CHANGELOG.md")
    if not re.search(rf"^## \[{re.escape(version)}\]", changelog, re.M):
        problems.append(f"CHANGELOG.md: no '## [{version}]' section")

    for doc in ("README.md", "charts/ckb-operator/README.md"):
        installs = re.findall(r"helm install [^\n]*oci://[^\n]*", read(doc))
        if not installs:
            problems.append(f"{doc}: no `helm install ... oci://...`")
        for cmd in installs:
            m = re.search(r"--version[ =](\S+)", cmd)
            if not m or m.group(1) != version:
                problems.append(f"{doc}: `helm install oci://...` installs {m.group(1) if m else 'no --version'}, expected {version}")

    if tag is not None and tag != f"v{version}":
        problems.append(f"git tag {tag!r}, expected v{version}")

    if problems:
        print(f"version check failed ({len(problems)}):", file=sys.stderr)
        for p in problems:
            print(f"  - {p}", file=sys.stderr)
        return 1
    print(f"version {version}: crates, Cargo.lock, Chart.yaml version/appVersion, values.yaml image tag, "
          f"CHANGELOG.md, README install{', tag ' + tag if tag else ''} agree")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
