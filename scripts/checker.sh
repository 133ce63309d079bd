#!/usr/bin/env bash
# The leader-safety checker of the simulator: N random fault schedules (default 1,000) on new
# seeds from a printed base, optimised. Asserts one valid lease at a time, growing terms, task
# starts after the old lease plus the grace, and liveness (docs/leader.md, "The checker").
#
#   scripts/checker.sh            # 1,000 schedules
#   scripts/checker.sh 100000     # more
#   CHORUS_BASE_SEED=B scripts/checker.sh N   # repeats a run; CHORUS_SEED=S replays one schedule
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
RUNS="${1:-1000}"
log="$(mktemp)"
trap 'rm -f "$log"' EXIT
status=0
CHORUS_RUNS="$RUNS" cargo test --release -p chorus-core --test scenarios \
    checker_finds_no_overlapping_leases -- --nocapture >"$log" 2>&1 || status=$?
# The summary, or the failing schedule with its replay command.
grep -E "^checker:|schedule [0-9]+ failed|^replay:|^test result" "$log" || tail -40 "$log"
exit "$status"
