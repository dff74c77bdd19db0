#!/usr/bin/env bash
# Proves that a backend feature does not drag in the other backend's client:
# with only `redis`, no sqlx in the dependency tree; with only `postgres`, no
# redis crate. Also builds each feature set on its own, and checks what
# connect(url) says for a backend that is left out.
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
    cargo check -q -p distlock --no-default-features --features "$features"
}

check redis 'sqlx(-core|-postgres)?'
check postgres 'redis'
cargo check -q -p distlock --no-default-features
echo "ok: every feature set builds on its own"

# connect(url) with a backend left out names the feature to enable (unit
# tests in src/connect.rs that only compile in these builds; no server needed).
cargo test -q -p distlock --no-default-features --features redis --lib
cargo test -q -p distlock --no-default-features --features postgres --lib
echo "ok: a URL whose backend is left out names the feature"
