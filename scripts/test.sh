#!/usr/bin/env bash
# Runs the whole test suite against real, throwaway Redis and PostgreSQL
# servers (started by distlock-testkit), installing the server binaries first when
# they are missing. Extra arguments go to `cargo test`.
#
#   scripts/test.sh                      # everything, doc tests included
#   scripts/test.sh -p distlock-api      # one crate
#   scripts/test.sh -p distlock --test it redis_faults::   # one module
#
# "Everything" is the workspace's default members: the comparison crate
# (scripts/compare.sh) and its peer crates are left out of this build.
# Each crate's integration tests are one binary, tests/it/main.rs.
set -euo pipefail
cd "$(dirname "$0")/.."

pg_line="$(scripts/ensure-servers.sh | tail -n1)"
export "${pg_line?}"

if [[ $# -gt 0 || -n "${REDIS_URL:-}" || -n "${DATABASE_URL:-}" ]]; then
    # A selection, or servers of the caller's own (shared by every test
    # process): one cargo test, as asked.
    cargo test --all-features "$@"
else
    # Everything: build once, then run the crates' tests in three processes
    # at a time. Each process starts its own throwaway servers, and most
    # tests wait on servers and timers rather than on the CPU, so this takes
    # the longest group's time instead of the sum (about 80 s instead of
    # 200 s on 2 cores). Each group's output is shown when it ends.
    cargo test --all-features --no-run
    groups=("-p distlock" "-p distlock-redis -p distlock-api" "-p distlock-postgres -p distlock-testkit")
    logs="$(mktemp -d)"
    trap 'rm -rf "$logs"' EXIT
    pids=()
    for i in "${!groups[@]}"; do
        # shellcheck disable=SC2086 # the group is a list of -p arguments
        cargo test --all-features ${groups[$i]} >"$logs/$i" 2>&1 &
        pids+=($!)
    done
    failed=0
    for i in "${!groups[@]}"; do
        status=0
        wait "${pids[$i]}" || status=$?
        echo "=== cargo test --all-features ${groups[$i]}: exit $status"
        cat "$logs/$i"
        [[ $status -eq 0 ]] || failed=1
    done
    [[ $failed -eq 0 ]] || { echo "error: a test group failed (output above)" >&2; exit 1; }
fi

# The examples check themselves: an axum service booking one ticket under
# 32 concurrent requests, and a job that must run on one instance per round
# (cargo test above built them, so this build has nothing to do).
if [[ $# -eq 0 ]]; then
    cargo build --all-features --examples
    examples="${CARGO_TARGET_DIR:-target}/debug/examples"
    "$examples/axum_booking" --self-test
    "$examples/axum_booking" --self-test --throwaway redis
    "$examples/axum_booking" --self-test --throwaway postgres
    "$examples/background_job" --self-check
    "$examples/background_job" --self-check --throwaway redis
fi

# distlock-testkit must not leave servers behind: no redis-server, postgres or pgbouncer
# process may still run out of one of its directories (their working
# directory is the server's data directory under distlock-testkit-<uid>/).
leftovers() {
    local proc comm cwd
    for proc in /proc/[0-9]*; do
        comm="$(cat "$proc/comm" 2>/dev/null || true)"
        [[ "$comm" == redis-server || "$comm" == postgres || "$comm" == pgbouncer ]] || continue
        cwd="$(readlink "$proc/cwd" 2>/dev/null || true)"
        if [[ "$cwd" == *distlock-testkit-* ]]; then
            echo "${proc#/proc/} $(tr '\0' ' ' <"$proc/cmdline" 2>/dev/null) (in $cwd)"
        fi
    done
}
for _ in $(seq 50); do
    [[ -z "$(leftovers)" ]] && break
    sleep 0.1 # the kernel's parent-death signals are delivered asynchronously
done
if [[ -n "$(leftovers)" ]]; then
    echo "error: distlock-testkit left server processes behind:" >&2
    leftovers >&2
    exit 1
fi
echo "no server processes left behind"
