#!/usr/bin/env bash
# Runs the benchmarks (Criterion; HTML report under target/criterion):
# the in-process baseline, then each backend against its raw driver.
# `--quick` is a short smoke run.
#
#   scripts/bench.sh            # full run
#   scripts/bench.sh --quick    # smoke run (CI)
set -euo pipefail
cd "$(dirname "$0")/.."

criterion_args=()
for arg in "$@"; do
    case "$arg" in
        --quick)
            criterion_args+=(--warm-up-time 0.2 --measurement-time 0.5 --sample-size 10)
            export DISTLOCK_BENCH_QUICK=1
            ;;
        *) criterion_args+=("$arg") ;;
    esac
done

pg_line="$(scripts/ensure-servers.sh | tail -n1)"
export "${pg_line?}"

cargo bench -p distlock --bench lock_cycle -- "${criterion_args[@]}"
# Redis backend vs raw redis-rs, and hand-off latency (pins server and client
# to different cores).
cargo bench -p lock-redis --bench redis_lock -- "${criterion_args[@]}"
# PostgreSQL backend vs raw sqlx, and hand-off with NOTIFY vs polling.
cargo bench -p lock-postgres --bench pg_lock -- "${criterion_args[@]}"
