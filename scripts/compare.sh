#!/usr/bin/env bash
# The comparison run: distlock's Redis and PostgreSQL backends side by side,
# with the raw clients and the peer crates (rslock, distributed-lock), and
# Redis on one server vs a Redlock of 3 and 5 servers vs a 3-master cluster,
# on throwaway servers the run starts itself.
#
#   scripts/compare.sh            # full run (about 6 minutes on 2 cores, plus the build)
#   scripts/compare.sh --quick    # smoke run (CI), well under 2 minutes
#
# 1. Criterion groups (lock cycle, 1 and 16 tasks): HTML report under
#    target/criterion/report/index.html.
# 2. The sampled measurements (p50/p99 and throughput at 1/16/64 tasks,
#    hand-off, the cost and capacity of held locks, booking transactions
#    while K locks are held, one server vs Redlock vs cluster), printed as
#    they go, then written to
#    target/comparison/: report.md, SVG charts and results.json.
set -euo pipefail
cd "$(dirname "$0")/.."

quick=()
# The full run measures optimised code (release); the smoke run only shows
# that every section runs, so it builds with the `quick` profile (release at
# opt-level 1: about half the compile time, numbers not comparable).
profile=release
# Full run: shorter than Criterion's defaults (3 s + 5 s, 100 samples) so
# the whole run stays well within 15 minutes on 2 cores.
criterion_args=(--warm-up-time 1 --measurement-time 3 --sample-size 50)
for arg in "$@"; do
    case "$arg" in
        --quick)
            quick=(--quick)
            profile=quick
            criterion_args=(--warm-up-time 0.2 --measurement-time 0.5 --sample-size 10)
            ;;
        *) echo "usage: scripts/compare.sh [--quick]" >&2; exit 2 ;;
    esac
done

pg_line="$(scripts/ensure-servers.sh | tail -n1)"
export "${pg_line?}"

echo "=== building the comparison run (profile $profile)"
cargo build --profile "$profile" -p distlock-comparison --bins --benches

started=$(date +%s)
echo "=== Criterion groups: lock cycle, every implementation side by side"
cargo bench --profile "$profile" -p distlock-comparison --bench cycle -- "${criterion_args[@]}"

echo "=== sampled measurements"
DISTLOCK_COMPARE_COMMAND="scripts/compare.sh${quick[*]:+ ${quick[*]}}" \
    cargo run --profile "$profile" -q -p distlock-comparison --bin distlock-compare -- "${quick[@]}" --out target/comparison

for file in report.md results.json cycle_throughput.svg topology_throughput.svg hand_off.svg hold_cost.svg booking.svg; do
    [[ -s "target/comparison/$file" ]] || { echo "error: target/comparison/$file was not written" >&2; exit 1; }
done
echo "=== comparison run took $(( $(date +%s) - started )) s (without the build); report: target/comparison/report.md"
