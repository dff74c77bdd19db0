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
    # Everything: build once, then run the test binaries in two processes at
    # a time: the root crate's, and the others' one after another. Each
    # process starts its own throwaway servers, and most tests wait on
    # servers and timers rather than on the CPU, so this takes about 130 s
    # instead of 200 s on 2 cores. (Three at a time took 80 s, but left too
    # little headroom: with two busy loops beside it, timing-bound fault tests
    # failed.) The binaries are run as cargo runs them (from their
    # package's folder), but directly: a `cargo test -p …` per group would
    # resolve features per group and build the dependencies again.
    logs="$(mktemp -d)"
    trap 'rm -rf "$logs"' EXIT
    cargo test --all-features --no-run --message-format=json-render-diagnostics >"$logs/build.json"
    python3 - "$logs" <<'PY'
import json, os, sys
logs = sys.argv[1]
groups = {"distlock": 0, "distlock-redis": 1, "distlock-api": 1, "distlock-postgres": 1, "distlock-testkit": 1}
out = [open(os.path.join(logs, f"group{i}"), "w") for i in range(2)]
for line in open(os.path.join(logs, "build.json")):
    msg = json.loads(line)
    if msg.get("reason") != "compiler-artifact" or not msg.get("executable") or not msg["profile"]["test"]:
        continue
    package = msg["package_id"]
    name = next((n for n in groups if f"/{n}#" in package or f"#{n}@" in package), None)
    if name is None:
        sys.exit(f"error: no test group for {package}")
    folder = os.path.dirname(msg["manifest_path"])
    out[groups[name]].write(f"{folder}\t{msg['executable']}\n")
PY
    run_group() {
        local folder binary status=0
        while IFS=$'\t' read -r folder binary; do
            echo "--- ${binary#"$PWD"/} (in ${folder#"$PWD"})"
            (cd "$folder" && "$binary") || status=1
        done <"$1"
        return $status
    }
    pids=()
    for i in 0 1; do
        run_group "$logs/group$i" >"$logs/out$i" 2>&1 &
        pids+=($!)
    done
    # The doc tests, once, while the groups run.
    doc_status=0
    cargo test --all-features --doc || doc_status=$?
    failed=$doc_status
    for i in 0 1; do
        status=0
        wait "${pids[$i]}" || status=$?
        echo "=== test group $i: exit $status"
        cat "$logs/out$i"
        [[ $status -eq 0 ]] || failed=1
    done
    [[ $failed -eq 0 ]] || { echo "error: tests failed (output above)" >&2; exit 1; }
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
