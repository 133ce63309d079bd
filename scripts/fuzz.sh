#!/usr/bin/env bash
# Runs every `fuzz_` test of the workspace (the harnesses for each decoder an outsider can
# reach, issue 14) for longer than CI does, optimised, and says which ran and how long each
# test binary took. Exits non-zero if a harness fails or if none ran.
#
#   scripts/fuzz.sh              # 20,000 cases per property
#   scripts/fuzz.sh 100000       # a first argument sets the cases
#   CHORUS_FUZZ_CASES=5000 scripts/fuzz.sh
#
# Cases reach the harnesses two ways: chorus's own (`CHORUS_FUZZ_CASES`, read by each crate's
# `fuzz_cases()`) and proptest's default configuration (`PROPTEST_CASES`, for harnesses that
# keep it); both are set. The build uses the `fuzz` profile of the root Cargo.toml: release
# optimisation with debug assertions on, so the `debug_assert!`s the harnesses lean on are
# checked too. The log of the whole run is kept in target/fuzz.log.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

if ! command -v cargo >/dev/null 2>&1 && [ -f "$HOME/.cargo/env" ]; then
    # shellcheck disable=SC1091
    . "$HOME/.cargo/env"
fi

CASES="${1:-${CHORUS_FUZZ_CASES:-20000}}"
if ! [[ "$CASES" =~ ^[1-9][0-9]*$ ]]; then
    echo "scripts/fuzz.sh: cases must be a positive number, not ${CASES@Q}" >&2
    exit 2
fi
export CHORUS_FUZZ_CASES="$CASES" PROPTEST_CASES="$CASES"
TARGET_DIR="${CARGO_TARGET_DIR:-target}"
LOG="$TARGET_DIR/fuzz.log"
mkdir -p "$TARGET_DIR"
: >"$LOG"

# The packages holding a `fn fuzz_`: the nearest Cargo.toml above each file that has one.
packages=()
while IFS= read -r file; do
    dir=$(dirname "$file")
    while [ ! -f "$dir/Cargo.toml" ] && [ "$dir" != . ]; do
        dir=$(dirname "$dir")
    done
    name=$(sed -n '/^\[package\]/,/^\[/s/^name *= *"\(.*\)"/\1/p' "$dir/Cargo.toml" | head -n 1)
    [ -n "$name" ] && packages+=("$name")
done < <(grep -rlE --include='*.rs' '\bfn fuzz_' crates vendor tests bench 2>/dev/null || true)
mapfile -t packages < <(printf '%s\n' "${packages[@]}" | sort -u)
if [ "${#packages[@]}" -eq 0 ]; then
    echo "scripts/fuzz.sh: found no fuzz_ tests" >&2
    exit 1
fi

started=$SECONDS
echo "==> $CASES cases per property; packages: ${packages[*]}"
echo "==> building (profile fuzz)"
pkg_args=()
for p in "${packages[@]}"; do pkg_args+=(-p "$p"); done
if ! cargo test --profile fuzz --tests "${pkg_args[@]}" --no-run >>"$LOG" 2>&1; then
    tail -n 30 "$LOG" >&2
    echo "scripts/fuzz.sh: the build failed (log: $LOG)" >&2
    exit 1
fi
echo "    built in $((SECONDS - started))s"

# One invocation for all packages, as built above (a package alone may unify features
# differently and rebuild). libtest reports each test binary: "Running ... (path)", a line per
# harness, then "test result: ... finished in Ns".
echo "==> running"
t=$SECONDS
status=0
cargo test --profile fuzz --tests "${pkg_args[@]}" fuzz_ >"$TARGET_DIR/fuzz-run.log" 2>&1 || status=$?
cat "$TARGET_DIR/fuzz-run.log" >>"$LOG"
total=$(grep -cE '^test .*fuzz_[A-Za-z0-9_]* \.\.\. ok$' "$TARGET_DIR/fuzz-run.log" || true)
awk '
    /^ *Running / {
        binary = $NF; gsub(/[()]/, "", binary); sub(/.*\//, "", binary); sub(/-[0-9a-f]+$/, "", binary)
        source = $2 == "unittests" ? $3 : $2
        harnesses = ""; count = 0
    }
    /^test .*fuzz_[A-Za-z0-9_]* \.\.\. / { sub(/^test /, ""); harnesses = harnesses "    " $0 "\n"; count++ }
    /^test result:/ && count > 0 {
        time = $NF
        printf "%s (%s): %d harnesses in %s\n%s", binary, source, count, time, harnesses
        count = 0
    }
' "$TARGET_DIR/fuzz-run.log"
echo "    ran in $((SECONDS - t))s"

echo
if [ "$status" -ne 0 ]; then
    grep -E -A 30 '^(failures:|---- )' "$TARGET_DIR/fuzz-run.log" | head -n 80 || true
    echo "==> FAILED: a fuzz harness failed ($total passed; full log $LOG)"
    exit 1
fi
if [ "$total" -eq 0 ]; then
    echo "==> FAILED: no fuzz harness ran"
    exit 1
fi
echo "==> $total fuzz harnesses passed, $CASES cases per property, in $((SECONDS - started))s"
