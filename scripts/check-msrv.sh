#!/usr/bin/env bash
# Fails when a dependency in the resolved graph (normal, build and dev
# dependencies of every workspace member, for every target platform, from
# `cargo metadata`) declares a `rust-version` newer than the one the workspace
# packages declare, so the MSRV users read in Cargo.toml can build the crates.
#
#   scripts/check-msrv.sh    # prints the declared MSRV and the highest one a dependency needs
set -euo pipefail
cd "$(dirname "$0")/.."

python3 - <<'PY'
import json
import subprocess
import sys

def version(text):
    """"1.94" and "1.94.0" compare equal."""
    parts = [int(part) for part in text.split(".")]
    return tuple(parts + [0] * (3 - len(parts)))

def show(parts):
    return ".".join(str(part) for part in (parts[:2] if parts[2] == 0 else parts))

meta = json.loads(subprocess.run(
    ["cargo", "metadata", "--format-version", "1", "--locked"],
    check=True, stdout=subprocess.PIPE,
).stdout)
in_graph = {node["id"] for node in meta["resolve"]["nodes"]}
members = set(meta["workspace_members"])
packages = [p for p in meta["packages"] if p["id"] in in_graph]

declared = {}
for p in packages:
    if p["id"] in members:
        if not p.get("rust_version"):
            sys.exit("error: workspace package %s declares no rust-version" % p["name"])
        declared[p["name"]] = version(p["rust_version"])
msrv = min(declared.values())

needs = sorted(
    ((version(p["rust_version"]), p["name"], p["version"])
     for p in packages if p["id"] not in members and p.get("rust_version")),
    reverse=True,
)
if not needs:
    sys.exit("error: no dependency declares a rust-version: is the graph empty?")
highest = needs[0][0]
too_new = [need for need in needs if need[0] > msrv]
if too_new:
    print("error: the workspace declares rust-version %s, but these dependencies need more:"
          % show(msrv), file=sys.stderr)
    for need, name, ver in too_new:
        print("  %s %s: rust-version %s" % (name, ver, show(need)), file=sys.stderr)
    print("raise [workspace.package] rust-version to %s, or hold these dependencies back"
          % show(highest), file=sys.stderr)
    sys.exit(1)
at_highest = ", ".join("%s %s" % (name, ver) for need, name, ver in needs if need == highest)
print("ok: rust-version %s covers all %d dependencies; the highest any of them needs is %s (%s)"
      % (show(msrv), len(packages) - len(members), show(highest), at_highest))
PY
