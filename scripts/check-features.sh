#!/usr/bin/env bash
# Proves that a backend feature does not drag in the other backend's client:
# with only `redis`, no sqlx in the dependency tree; with only `postgres`, no
# redis crate. Also checks that each feature set builds on its own, and
# lints it (cargo clippy: no dev-dependencies, no code generation).
set -euo pipefail
cd "$(dirname "$0")/.."

check() {
    local features="$1" forbidden="$2"
    local tree
    tree="$(cargo tree -p distlock -e normal --no-default-features --features "$features" --prefix none)"
    if grep -Eq "^${forbidden} v" <<<"$tree"; then
        echo "error: --features $features pulls in $forbidden:" >&2
        cargo tree -p distlock -e normal --no-default-features --features "$features" -i "$forbidden" >&2
        exit 1
    fi
    echo "ok: --no-default-features --features $features has no $forbidden"
    cargo clippy -q -p distlock --no-default-features --features "$features" -- -D warnings
}

check redis 'sqlx(-core|-postgres)?'
check postgres 'redis'
cargo clippy -q -p distlock --no-default-features -- -D warnings
echo "ok: every feature set builds on its own, without a lint"

# What connect(url) says for a backend that is left out is tested in the
# full-feature test build (src/connect.rs, connect_with); the builds above
# type-check the stubs that say it here.
