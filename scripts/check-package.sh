#!/usr/bin/env bash
# Proves that every publishable crate packages and builds from its package, as
# crates.io would get it: `cargo package` of all workspace members that do not
# say `publish = false`, in dependency order, each verified by building its
# unpacked .crate with all features (what docs.rs builds; the feature sets one
# by one are clippy's and scripts/check-features.sh's job) against the
# packages made before it. The members depend on each other and none is on crates.io
# yet, so they are packaged in one call: cargo then resolves distlock-api and
# friends from a local registry of the fresh packages (target/package/), not
# from crates.io. Also checks that each package carries its README and both
# licence files, and no tests, benchmarks or examples.
#
#   scripts/check-package.sh    # extra arguments go to `cargo package`: --offline, --allow-dirty (uncommitted work)
set -euo pipefail
cd "$(dirname "$0")/.."

mapfile -t crates < <(cargo metadata --format-version 1 --no-deps --locked | python3 -c '
import json, sys
meta = json.load(sys.stdin)
members = set(meta["workspace_members"])
for p in meta["packages"]:
    # publish = false is an empty list; no `publish` key at all is null.
    if p["id"] in members and p["publish"] is None:
        print(p["name"])
')
[[ ${#crates[@]} -gt 0 ]] || { echo "error: no publishable crate found" >&2; exit 1; }
echo "publishable: ${crates[*]}"
selection=()
for crate in "${crates[@]}"; do selection+=(-p "$crate"); done

for crate in "${crates[@]}"; do
    files="$(cargo package --list --locked -p "$crate" "$@")" ||
        { echo "error: cargo package --list -p $crate failed" >&2; exit 1; }
    for needed in Cargo.toml README.md LICENSE-MIT LICENSE-APACHE src/lib.rs; do
        grep -qx "$needed" <<<"$files" || { echo "error: the $crate package lacks $needed" >&2; exit 1; }
    done
    if grep -E '^(tests|benches|examples)/' <<<"$files" >&2; then
        echo "error: the $crate package carries the files above (they need the unpublished testkit)" >&2
        exit 1
    fi
done
echo "ok: each package has its README and both licence files, and no tests, benchmarks or examples"

# The tests, benchmarks and examples are left out on purpose (`include` in
# each Cargo.toml): cargo's warning about each is expected.
quiet_expected() { grep -Ev '^warning: ignoring (test|benchmark|example) `[^`]+` as `[^`]+` is not included in the published package$' || true; }

echo "=== cargo package --all-features ${selection[*]}"
# These builds share nothing with the workspace's (other feature
# unification), so they are built as cheaply as possible: without debug info,
# and without the root manifest's opt-level 2 for dependencies, which the
# distlock package keeps and which would build every dependency a second time.
cheap=(--config profile.dev.debug=false --config 'profile.dev.package."*".opt-level=0')
if ! cargo package --locked --all-features "${cheap[@]}" "${selection[@]}" "$@" 2>&1 | quiet_expected; then
    echo "error: cargo package failed" >&2
    exit 1
fi
for crate in "${crates[@]}"; do
    ls -sh "${CARGO_TARGET_DIR:-target}/package/$crate-"[0-9]*.crate
done
echo "ok: ${crates[*]} package and build from their packages"
