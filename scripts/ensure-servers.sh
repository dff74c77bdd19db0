#!/usr/bin/env bash
# Makes sure the server binaries the tests and benchmarks start are installed:
# redis-server and PostgreSQL (initdb, postgres, pg_isready, psql), PgBouncer
# (the pooler tests put it in front of PostgreSQL), iptables (the partition
# tests drop a client's packets on loopback), and openssl (the TLS tests
# make their own throwaway CA with it), and the OpenSSL headers (libssl-dev,
# pkg-config) the comparison run's peer crates link against.
# Installs what is missing with apt-get (as root, or through sudo); otherwise
# stops with the exact command to run. Prints the PostgreSQL bin directory it
# found as `DISTLOCK_PG_BIN=...` on its last line, for callers to export.
set -euo pipefail

find_pg_bin() {
    if [[ -n "${DISTLOCK_PG_BIN:-}" && -x "${DISTLOCK_PG_BIN}/postgres" ]]; then
        echo "$DISTLOCK_PG_BIN"; return 0
    fi
    local dir
    for dir in $(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -t/ -k5 -V -r); do
        if [[ -x "$dir/postgres" && -x "$dir/initdb" && -x "$dir/pg_isready" ]]; then
            echo "$dir"; return 0
        fi
    done
    local postgres
    postgres="$(command -v postgres || true)"
    if [[ -n "$postgres" ]]; then
        dir="$(dirname "$(readlink -f "$postgres")")"
        if [[ -x "$dir/initdb" && -x "$dir/pg_isready" ]]; then
            echo "$dir"; return 0
        fi
    fi
    return 1
}

missing=()
command -v redis-server >/dev/null 2>&1 || missing+=(redis-server)
find_pg_bin >/dev/null || missing+=(postgresql)
command -v openssl >/dev/null 2>&1 || missing+=(openssl)
have_pgbouncer() { command -v pgbouncer >/dev/null 2>&1 || [[ -x /usr/sbin/pgbouncer ]]; }
have_pgbouncer || missing+=(pgbouncer)
# The partition tests drop a client's packets on loopback with iptables.
have_iptables() { command -v iptables >/dev/null 2>&1 || [[ -x /usr/sbin/iptables ]]; }
have_iptables || missing+=(iptables)
# The comparison run's peer crates link OpenSSL (native-tls, through sqlx 0.8).
pkg-config --exists openssl 2>/dev/null || missing+=(libssl-dev pkg-config)

if ((${#missing[@]})); then
    install_cmd="apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends ${missing[*]}"
    if [[ "$(id -u)" == 0 ]]; then
        sudo=""
    elif command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
        sudo="sudo"
    else
        echo "error: missing ${missing[*]}; install them with:" >&2
        echo "  sudo sh -c '$install_cmd'" >&2
        echo "or point the tests at running servers with REDIS_URL / DATABASE_URL." >&2
        exit 1
    fi
    echo "installing ${missing[*]} ..." >&2
    # Keep the packages' post-install scripts from starting system-wide
    # services: the tests start their own throwaway servers.
    policy=/usr/sbin/policy-rc.d
    made_policy=0
    if [[ ! -e "$policy" ]]; then
        printf '#!/bin/sh\nexit 101\n' | $sudo tee "$policy" >/dev/null
        $sudo chmod +x "$policy"
        made_policy=1
    fi
    $sudo apt-get update -qq >&2
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >&2
    if ((made_policy)); then $sudo rm -f "$policy"; fi
fi

command -v redis-server >/dev/null 2>&1 || { echo "error: redis-server still not found" >&2; exit 1; }
have_pgbouncer || { echo "error: pgbouncer still not found" >&2; exit 1; }
pg_bin="$(find_pg_bin)" || { echo "error: PostgreSQL server binaries still not found" >&2; exit 1; }
echo "redis-server: $(redis-server --version | cut -d' ' -f3)" >&2
echo "postgres:     $("$pg_bin/postgres" --version) ($pg_bin)" >&2
echo "DISTLOCK_PG_BIN=$pg_bin"
