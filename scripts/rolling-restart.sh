#!/usr/bin/env bash
# Restart every node of a chorus cluster in turn, with no downtime for new sessions:
# for each node: drain (no new sessions go to it), wait for its sessions to end, stop it,
# start it again, wait until every other node sees it alive (a new generation), resume.
#
# An example to copy and adapt. {node} in the templates is replaced by the node id.
#
#   scripts/rolling-restart.sh \
#     --nodes "web1 web2 web3" \
#     --socket '/run/chorus/{node}.sock' \
#     --stop  'ssh {node} systemctl stop openmrs chorus' \
#     --start 'ssh {node} systemctl start chorus openmrs' \
#     --drain-timeout 10m --alive-timeout 2m
#
# On one host with one socket per agent, --socket points at each agent; across hosts, wrap the
# chorus calls in ssh the same way (CHORUS env var: the chorus command to run, default chorus).
# Exit status: 0 all restarted; 1 a step failed (the script stops there, leaving that node
# drained so no new sessions land on a half-restarted node).
set -euo pipefail

CHORUS="${CHORUS:-chorus}"
nodes="" socket_tpl="" stop_tpl="" start_tpl="" drain_timeout="10m" alive_timeout="120"

usage() { sed -n '2,20p' "$0" | sed 's/^# \{0,1\}//'; exit 2; }
while [ $# -gt 0 ]; do
    case "$1" in
        --nodes) nodes="$2"; shift 2 ;;
        --socket) socket_tpl="$2"; shift 2 ;;
        --stop) stop_tpl="$2"; shift 2 ;;
        --start) start_tpl="$2"; shift 2 ;;
        --drain-timeout) drain_timeout="$2"; shift 2 ;;
        --alive-timeout) alive_timeout="${2%s}"; shift 2 ;;
        -h|--help) usage ;;
        *) echo "rolling-restart: unknown argument $1" >&2; usage ;;
    esac
done
[ -n "$nodes" ] && [ -n "$socket_tpl" ] && [ -n "$stop_tpl" ] && [ -n "$start_tpl" ] || usage
case "$alive_timeout" in *m) alive_timeout=$(( ${alive_timeout%m} * 60 )) ;; esac

fill() { printf '%s' "${1//\{node\}/$2}"; }
log() { echo "rolling-restart: $(date +%H:%M:%S) $*"; }

# The generation of NODE as seen through SOCKET, or nothing.
generation_of() { # $1 socket, $2 node, $3 wanted status (alive)
    "$CHORUS" members --json --socket "$1" 2>/dev/null |
        python3 -c '
import json, sys
node, status = sys.argv[1], sys.argv[2]
for m in json.load(sys.stdin):
    if m["node_id"] == node and m["status"] == status:
        print(m["generation"])
' "$2" "$3"
}

for node in $nodes; do
    sock=$(fill "$socket_tpl" "$node")
    old_gen=$(generation_of "$sock" "$node" alive)
    log "$node: draining (generation ${old_gen:-?})"
    if ! "$CHORUS" drain --wait --timeout "$drain_timeout" --socket "$sock"; then
        log "$node: drain did not finish within $drain_timeout: stopping here"
        exit 1
    fi
    log "$node: stopping"
    sh -c "$(fill "$stop_tpl" "$node")"
    log "$node: starting"
    sh -c "$(fill "$start_tpl" "$node")"

    deadline=$(( SECONDS + alive_timeout ))
    for other in $nodes; do
        osock=$(fill "$socket_tpl" "$other")
        while :; do
            gen=$(generation_of "$osock" "$node" alive || true)
            if [ -n "$gen" ] && { [ -z "$old_gen" ] || [ "$gen" -gt "$old_gen" ]; }; then
                break
            fi
            if [ $SECONDS -ge $deadline ]; then
                log "$node: not seen alive by $other within ${alive_timeout}s: stopping here"
                exit 1
            fi
            sleep 0.2
        done
    done
    # The drain survives the restart (data dir): take sessions again only now.
    "$CHORUS" resume --socket "$sock" >/dev/null
    log "$node: back, alive everywhere, resumed"
done
log "all nodes restarted"
