#!/usr/bin/env bash
# make demo: a scripted tour of ipledger on the embedded default, start to finish.
#
# Starts `ipledger up` (what `make run` runs) on a data dir of its own (.data/demo, emptied
# first, so every run tells the same story and a `make run` of yours is left alone), appends the
# files of examples/ one step at a time, and after each step shows what came of it through the
# query API, `ipledger status` and the CiliumNode files the sync worker wrote; then stops
# everything. Each command is printed before it runs, so the tour can be replayed by hand.
#
# Environment: IPLEDGER_DEMO_DATA_DIR (default .data/demo), IPLEDGER_DEMO_API_ADDRESS (default
# 127.0.0.1:8089, not make run's 8080, so both can run at once), VENV (default .venv).
set -euo pipefail

cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}
IPLEDGER="$VENV/bin/ipledger"
PY="$VENV/bin/python"
DATA=${IPLEDGER_DEMO_DATA_DIR:-.data/demo}
API=${IPLEDGER_DEMO_API_ADDRESS:-127.0.0.1:8089}
export IPLEDGER_DATA_DIR="$DATA" IPLEDGER_API_ADDRESS="$API"
# The demo runs on its own embedded server and writes files, whatever the caller has set.
unset IPLEDGER_DATABASE_URL IPLEDGER_LOG IPLEDGER_KUBECONFIG IPLEDGER_KUBECONFIGS IPLEDGER_CONFIG
unset IPLEDGER_CILIUMNODE_DIR IPLEDGER_METRICS_PORT IPLEDGER_SYNC_METRICS_PORT

step() { printf '\n\033[1m== %s\033[0m\n' "$*"; }
run() { printf '$ %s\n' "$*"; "$@"; }

# wait_for SECONDS WHAT COMMAND...: run COMMAND until it succeeds, for at most SECONDS.
wait_for() {
    local seconds=$1 what=$2
    shift 2
    local deadline=$((SECONDS + seconds))
    until "$@" >/dev/null 2>&1; do
        if ((SECONDS >= deadline)); then
            echo "demo: gave up waiting for $what after ${seconds}s; the tree's output:" >&2
            tail -n 40 "$DATA/up.log" >&2 || true
            exit 1
        fi
        sleep 0.2
    done
}

# api VIEW PATH: GET http://$API/PATH and print the answer as VIEW (nodes, node, decisions,
# clusters), a few fields of each item, the way a person would read them.
api() {
    printf '$ curl -s http://%s%s\n' "$API" "$2"
    "$PY" - "$1" "http://$API$2" <<'PY'
import json
import sys
import urllib.request

view, url = sys.argv[1:]
with urllib.request.urlopen(url, timeout=10) as answer:
    body = json.load(answer)


def node(n):
    cidrs = ", ".join(n["podCIDRs"]) or "-"
    line = f"  {n['name']:<16} {cidrs:<34} error: {n['error'] or '-'}"
    return line + (f"\n  {'':<16} conflict: {n['conflict']}" if n["conflict"] else "")


if view == "nodes":
    print("\n".join(node(n) for n in body["items"]))
elif view == "node":
    print(node(body["node"]))
elif view == "decisions":
    for d in body["items"]:
        print(f"  offset {d['offset']:>3}  {d['eventId']:<20} {d['type']:<16} {d['error'] or '-'}")
elif view == "clusters":
    for c in body["items"]:
        n = c["nodes"]
        print(
            f"  {c['name']:<13} {n['total']} node(s), {n['withCIDR']} with a CIDR, "
            f"{n['waiting']} waiting, {n['inError']} in error, {n['inConflict']} in conflict"
        )
PY
}

caught_up() { "$IPLEDGER" state --wait-caught-up --timeout 60 >/dev/null; }
has_file() { test -s "$DATA/ciliumnodes/$1.yaml"; }
api_up() { "$PY" -c "import urllib.request as u; u.urlopen('http://$API/v1/clusters', timeout=2)"; }

stop_tree() {
    if [[ -n ${UP:-} ]] && kill -0 "$UP" 2>/dev/null; then
        kill -TERM "$UP"
        wait "$UP" || true
    fi
}
trap stop_tree EXIT

step "Starting ipledger up (what make run runs) on a fresh data dir: $DATA"
if [[ -L $DATA/postgres ]]; then
    # As root the embedded cluster lives where the link points (README, "Where the data lives").
    rm -rf "$(readlink -f "$DATA/postgres")"
fi
rm -rf "$DATA"
mkdir -p "$DATA"
"$IPLEDGER" up >"$DATA/up.log" 2>&1 &
UP=$!
wait_for 120 "ipledger up to start" grep -q "Ctrl-C stops everything" "$DATA/up.log"
wait_for 60 "the query API on $API" api_up
sed -n '/^ipledger is running/,/^Ctrl-C/p' "$DATA/up.log"

step "1. A three-node dual-stack cluster with pods (examples/dual-stack-cluster.jsonl)"
run "$IPLEDGER" append examples/dual-stack-cluster.jsonl
caught_up
api nodes /v1/clusters/default/nodes
wait_for 60 "the CiliumNode files" has_file worker-b
run ls "$DATA/ciliumnodes/"
run cat "$DATA/ciliumnodes/worker-a.yaml"

step "2. Pool exhaustion (cluster lab: room for two nodes, a third arrives)"
printf '$ head -n 7 examples/pool-exhaustion.jsonl | ipledger append -\n'
head -n 7 examples/pool-exhaustion.jsonl | "$IPLEDGER" append -
caught_up
api node /v1/clusters/lab/nodes/lab-3
run "$IPLEDGER" status --cluster lab

step "   ... then expansion: an element appended to the pool serves the waiting node"
printf '$ tail -n +8 examples/pool-exhaustion.jsonl | ipledger append -\n'
tail -n +8 examples/pool-exhaustion.jsonl | "$IPLEDGER" append -
caught_up
api nodes /v1/clusters/lab/nodes
run "$IPLEDGER" status --cluster lab

step "3. Migrating an existing Cilium cluster: node.adopted keeps the operator's CIDRs"
run "$IPLEDGER" append examples/migration.jsonl
caught_up
api nodes /v1/clusters/migrated/nodes
api decisions "/v1/clusters/migrated/decisions?limit=20"

step "4. A node network inside the pod pool (Cilium's troubleshooting case), and the fix"
run "$IPLEDGER" append examples/node-overlap.jsonl
caught_up
api nodes /v1/clusters/onprem/nodes
api nodes /v1/clusters/onprem-fixed/nodes

step "5. Refused events: each decided with its reason, nothing changed"
run "$IPLEDGER" append examples/refused-events.jsonl
caught_up
api decisions "/v1/clusters/checks/decisions?limit=40"

step "   ... and records that are not events at all: append refuses them, with the line"
printf '$ ipledger append examples/bad-events.jsonl\n'
if "$IPLEDGER" append examples/bad-events.jsonl; then
    echo "demo: bad-events.jsonl was accepted" >&2
    exit 1
fi

step "6. Every cluster through the API, and ipledger status"
api clusters /v1/clusters
run "$IPLEDGER" status --limit 3

step "Stopping: SIGTERM (as Ctrl-C does for make run) stops the API, sync, allocator, server"
kill -TERM "$UP"
wait "$UP"
UP=
grep -E "stopping|stopped" "$DATA/up.log" | sed 's/^/  /'
echo
echo "demo: done. The data stays in $DATA (the tree's output in $DATA/up.log);"
echo "      make run is the same thing on .data, for your own events."
