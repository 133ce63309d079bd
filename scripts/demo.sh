#!/usr/bin/env bash
# A 3-node chorus cluster on this machine, for a first look: builds chorus, starts three
# agents on 127.0.0.1 in the background (data dirs, sockets and logs in a temporary directory),
# waits until each sees all three alive, prints `chorus members` and `chorus status`, then stops
# them with SIGTERM (a graceful leave). Whatever happens, nothing is left running.
#
#   scripts/demo.sh                      # ports 17946-17948
#   CHORUS_DEMO_PORT=27946 scripts/demo.sh
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

if ! command -v cargo >/dev/null 2>&1 && [ -f "$HOME/.cargo/env" ]; then
    # shellcheck disable=SC1091
    . "$HOME/.cargo/env"
fi

N=3
BASE_PORT="${CHORUS_DEMO_PORT:-17946}"
DEADLINE_S=60

echo "==> cargo build"
cargo build
CHORUS="${CARGO_TARGET_DIR:-$PWD/target}/debug/chorus"

WORK="$(mktemp -d "${TMPDIR:-/tmp}/chorus-demo.XXXXXX")"
PIDS=()
cleanup() {
    local pid
    for pid in ${PIDS[@]+"${PIDS[@]}"}; do
        kill -KILL "$pid" 2>/dev/null || true
    done
    wait 2>/dev/null || true
    rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

fail() {
    echo "demo: $*" >&2
    for i in $(seq 1 "$N"); do
        echo "----- log of node$i -----" >&2
        cat "$WORK/node$i.log" >&2 || true
    done
    exit 1
}

# Every agent needs the cluster key: it mints its own certificate from it (QUIC, mutual TLS).
"$CHORUS" keygen --out "$WORK/cluster.pem" --cluster demo >/dev/null

echo "==> starting $N agents on 127.0.0.1:$BASE_PORT-$((BASE_PORT + N - 1)) in $WORK"
for i in $(seq 1 "$N"); do
    port=$((BASE_PORT + i - 1))
    seed=()
    if [ "$i" -gt 1 ]; then
        seed=(--seed "127.0.0.1:$BASE_PORT")
    fi
    "$CHORUS" agent \
        --node-id "node$i" --cluster demo --app-version 1.0 --tag "zone=z$i" \
        --cluster-key "$WORK/cluster.pem" \
        --listen "127.0.0.1:$port" ${seed[@]+"${seed[@]}"} --expect "$N" \
        --data-dir "$WORK/node$i" --socket "$WORK/node$i.sock" \
        --gossip-interval 200ms \
        >"$WORK/node$i.log" 2>&1 &
    PIDS+=($!)
done

echo "==> waiting (at most ${DEADLINE_S}s) until every agent sees $N alive and a leader"
start=$SECONDS
converged() { # $1 = node number
    local s
    s="$("$CHORUS" status --json --socket "$WORK/node$1.sock" 2>/dev/null)" || return 1
    grep -q "\"alive\": $N," <<<"$s" && grep -q '"leader": "' <<<"$s"
}
for i in $(seq 1 "$N"); do
    until converged "$i"; do
        kill -0 "${PIDS[$((i - 1))]}" 2>/dev/null || fail "node$i exited"
        [ $((SECONDS - start)) -lt "$DEADLINE_S" ] || fail "no convergence after ${DEADLINE_S}s"
        sleep 0.2
    done
done
echo "    converged in $((SECONDS - start))s"
# A leader is elected once the members have voted through gossip: give every node a few
# seconds to know it (the demo goes on without one).
start=$SECONDS
for i in $(seq 1 "$N"); do
    until "$CHORUS" leader --socket "$WORK/node$i.sock" >/dev/null 2>&1 ||
        [ $((SECONDS - start)) -ge 20 ]; do
        sleep 0.2
    done
done

echo
echo "==> chorus members --socket $WORK/node1.sock"
"$CHORUS" members --socket "$WORK/node1.sock"
echo
echo "==> chorus status --socket $WORK/node2.sock"
"$CHORUS" status --socket "$WORK/node2.sock"

echo
echo "==> stopping the agents (SIGTERM: each publishes 'left' and exits)"
for pid in "${PIDS[@]}"; do
    kill -TERM "$pid" 2>/dev/null || true
done
for i in $(seq 1 "$N"); do
    status=0
    wait "${PIDS[$((i - 1))]}" || status=$?
    [ "$status" -eq 0 ] || fail "node$i exited with status $status"
done
PIDS=()
echo "    all stopped"

echo
echo "==> the alerts node1 logged (grep alert= on its log):"
grep -o 'alert=[a-z_]* node=[^ ]*' "$WORK/node1.log" || true
