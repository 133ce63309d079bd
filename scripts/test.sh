#!/usr/bin/env bash
# Everything CI runs, in order: format, lints, build, tests. Exits non-zero on the first
# failure. Needs only rustup's cargo; adds the rustfmt and clippy components if missing.
#
#   scripts/test.sh              # the whole suite (a few minutes on 2 cores)
#   TEST_THREADS=4 scripts/test.sh
#
# The network-namespace partition tests (tests/netns.rs) need root; elsewhere they print
# SKIPPED and pass.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

if ! command -v cargo >/dev/null 2>&1 && [ -f "$HOME/.cargo/env" ]; then
    # shellcheck disable=SC1091
    . "$HOME/.cargo/env"
fi
if ! command -v cargo >/dev/null 2>&1; then
    echo "scripts/test.sh: cargo not found; install Rust with rustup (https://rustup.rs)" >&2
    exit 1
fi

# Two test threads by default: the integration tests run whole clusters, and CI has 2 cores.
TEST_THREADS="${TEST_THREADS:-2}"
# A hung test must not hang CI: each test step gets a deadline (coreutils timeout).
STEP_TIMEOUT="${STEP_TIMEOUT:-15m}"

started=$SECONDS
step() {
    echo
    echo "==> $*"
    local t=$SECONDS
    "$@"
    echo "    ok ($((SECONDS - t))s)"
}
with_timeout() {
    if command -v timeout >/dev/null 2>&1; then
        timeout --kill-after=30s "$STEP_TIMEOUT" "$@"
    else
        "$@"
    fi
}

ensure_component() { # $1 = cargo subcommand, $2 = rustup component
    if ! cargo "$1" --version >/dev/null 2>&1; then
        if command -v rustup >/dev/null 2>&1; then
            echo "==> rustup component add $2"
            rustup component add "$2"
        else
            echo "scripts/test.sh: cargo $1 is missing and rustup is not there to add $2" >&2
            exit 1
        fi
    fi
}
ensure_component fmt rustfmt
ensure_component clippy clippy

step cargo fmt --all -- --check
step cargo clippy --workspace --all-targets -- -D warnings
# The process tests run the `chorus` binary from the target dir: build it first.
step cargo build --workspace
# The .deb from that debug build: contents, conffile, maintainer scripts, the unit verified
# (installs cargo-deb on the first run, about 2 minutes).
step with_timeout scripts/test-package.sh
step with_timeout cargo test --workspace -- --test-threads="$TEST_THREADS"
step with_timeout cargo test -p chorus-tests -- --ignored netns --test-threads=1 --nocapture
# The simulator's leader checker on new seeds every run (the suite above ran 100 schedules).
step with_timeout scripts/checker.sh "${CHECKER_RUNS:-1000}"
# The benchmark is never a test, but its tiny configuration runs here so it cannot rot.
step with_timeout cargo run -q -p chorus-bench -- --quick

echo
echo "==> all green in $((SECONDS - started))s"
