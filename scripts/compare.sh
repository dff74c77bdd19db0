#!/usr/bin/env bash
# The comparison run: distlock's Redis and PostgreSQL backends side by side,
# with the raw clients and the peer crates (rslock, distributed-lock), and
# Redis on one server vs a Redlock of 3 and 5 servers vs a 3-master cluster,
# on throwaway servers the run starts itself.
#
#   scripts/compare.sh                  # full run (about 10 minutes on 2 cores, plus the build)
#   scripts/compare.sh --docs           # full run, then copy the README's charts to docs/comparison-*.svg
#   scripts/compare.sh --quick          # smoke run (CI), under 4 minutes
#   scripts/compare.sh --only cycles    # only these sections (comma-separated: cycles, hand-off,
#                                       # hold, booking, topologies), no Criterion: for iteration
#   scripts/compare.sh --rounds 5       # rounds of the lock-cycle section (default 3, quick 1)
#
# 1. Criterion groups (lock cycle, 1 and 16 tasks): HTML report under
#    target/criterion/report/index.html (skipped with --only).
# 2. The sampled measurements, printed as they go: the lock cycle at
#    1/16/64 tasks in rounds (every implementation once per task count per
#    round, interleaved; a row is the median round's cycles/s with the
#    min–max over the rounds, with client and server CPU per cycle from
#    /proc), hand-off (two tasks sharing a client; 2/8/32 waiters with
#    clients of their own; PostgreSQL's own pg_advisory_lock as baseline),
#    the cost and capacity of held locks, booking transactions while K locks
#    are held (in Redis, on the application's pool, on a pool of their own),
#    one server vs Redlock vs cluster. Then written to target/comparison/:
#    report.md, SVG charts and results.json.
set -euo pipefail
cd "$(dirname "$0")/.."

usage() {
    echo "usage: scripts/compare.sh [--quick] [--docs] [--only SECTION[,SECTION...]] [--rounds N]" >&2
    exit 2
}

quick=()
only=()
rounds=()
docs=false
# The full run measures optimised code (release); the smoke run only shows
# that every section runs, so it builds with the `quick` profile (release at
# opt-level 1: about half the compile time, numbers not comparable).
profile=release
# Full run: shorter than Criterion's defaults (3 s + 5 s, 100 samples) so
# the whole run stays within about 12 minutes on 2 cores.
criterion_args=(--warm-up-time 1 --measurement-time 3 --sample-size 50)
while [[ $# -gt 0 ]]; do
    case "$1" in
        --quick)
            quick=(--quick)
            profile=quick
            criterion_args=(--warm-up-time 0.2 --measurement-time 0.5 --sample-size 10)
            ;;
        --docs) docs=true ;;
        --only) [[ $# -ge 2 ]] || usage; only=(--only "$2"); shift ;;
        --only=*) only=(--only "${1#--only=}") ;;
        --rounds) [[ $# -ge 2 ]] || usage; rounds=(--rounds "$2"); shift ;;
        --rounds=*) rounds=(--rounds "${1#--rounds=}") ;;
        *) usage ;;
    esac
    shift
done
if $docs && [[ ${#quick[@]} -gt 0 || ${#only[@]} -gt 0 ]]; then
    echo "error: --docs takes the README's charts from a full run: not with --quick or --only" >&2
    exit 2
fi

pg_line="$(scripts/ensure-servers.sh | tail -n1)"
export "${pg_line?}"

echo "=== building the comparison run (profile $profile)"
cargo build --profile "$profile" -p distlock-comparison --bins --benches

started=$(date +%s)
if [[ ${#only[@]} -eq 0 ]]; then
    echo "=== Criterion groups: lock cycle, every implementation side by side"
    cargo bench --profile "$profile" -p distlock-comparison --bench cycle -- "${criterion_args[@]}"
fi

echo "=== sampled measurements"
args=("${quick[@]}" "${only[@]}" "${rounds[@]}")
DISTLOCK_COMPARE_COMMAND="scripts/compare.sh${args[*]:+ ${args[*]}}" \
    cargo run --profile "$profile" -q -p distlock-comparison --bin distlock-compare -- "${args[@]}" --out target/comparison

expected=(report.md results.json)
if [[ ${#only[@]} -eq 0 ]]; then
    expected+=(cycle_throughput.svg topology_throughput.svg hand_off.svg hold_cost.svg booking.svg)
fi
for file in "${expected[@]}"; do
    [[ -s "target/comparison/$file" ]] || { echo "error: target/comparison/$file was not written" >&2; exit 1; }
done
if $docs; then
    # The charts the README shows, from this full run.
    cp target/comparison/cycle_throughput.svg docs/comparison-cycles.svg
    cp target/comparison/hold_cost.svg docs/comparison-hold-cost.svg
    cp target/comparison/booking.svg docs/comparison-booking.svg
    cp target/comparison/topology_throughput.svg docs/comparison-topology.svg
    echo "=== copied the README's charts to docs/comparison-{cycles,hold-cost,booking,topology}.svg"
fi
echo "=== comparison run took $(( $(date +%s) - started )) s (without the build); report: target/comparison/report.md"
