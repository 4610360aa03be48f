#!/usr/bin/env bash
# memory.sh: resident memory per stream of the running service, for the
# README's "Memory a setting implies". Fills DEVICES × METRICS streams with
# VALUES values each at WINDOW_SIZE=W (in memory) and reports the growth of
# VmRSS per stream.
#   W=50 DEVICES=20000 METRICS=5 VALUES=50 ./loadtest/memory.sh
set -euo pipefail
cd "$(dirname "$0")/.."
W=${W:-50}
DEVICES=${DEVICES:-20000}
METRICS=${METRICS:-5}
VALUES=${VALUES:-$W}
PORT=${PORT:-18091}
work=$(mktemp -d)
pid=
cleanup() { [ -n "$pid" ] && kill "$pid" 2>/dev/null; rm -rf "$work"; }
trap cleanup EXIT
go build -o "$work/svc" .
WINDOW_SIZE=$W LOG_LEVEL=warn "$work/svc" -addr "127.0.0.1:$PORT" &
pid=$!
for _ in $(seq 100); do curl -sf "127.0.0.1:$PORT/ready" >/dev/null && break; sleep 0.05; done
mem=$(python3 loadtest/fill.py "$PORT" "$DEVICES" "$METRICS" "$VALUES" "$pid")
echo "W=$W $mem"
