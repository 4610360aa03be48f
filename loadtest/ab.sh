#!/usr/bin/env bash
# ab.sh: the service built at OLD (a git revision) against the working
# tree, same settings, RUNS interleaved wrk runs each, server pinned to CPU
# 0 (GOMAXPROCS=1) and wrk to CPU 1. $1 is samples per request (1 or 100);
# DETECTOR, when set, is given to both (empty: each build's default), and
# so is ENV (more settings, e.g. Redis mode against a redis-server you run).
#   OLD=d541cf3 DETECTOR=zscore ./loadtest/ab.sh 100
#   OLD=7718063 ENV="REDIS_ADDR=127.0.0.1:6390 SNAPSHOT_INTERVAL=1s" ./loadtest/ab.sh 100
set -euo pipefail
cd "$(dirname "$0")/.."
. loadtest/lib.sh
: "${OLD:?set OLD to the git revision to compare with}"
RUNS=${RUNS:-3}
DUR=${DUR:-5}
DEVICES=${DEVICES:-10000}
PORT=${PORT:-18111}
per=${1:-1}
work=$(mktemp -d)
pid=
cleanup() {
	[ -n "$pid" ] && kill "$pid" 2>/dev/null
	git worktree remove --force "$work/old" 2>/dev/null || true
	rm -rf "$work"
}
trap cleanup EXIT
lua "$per" >"$work/ab.lua"
go build -o "$work/new" .
git worktree add -q --detach "$work/old" "$OLD"
(cd "$work/old" && go build -o "$work/old.bin" .)
run() { # $1 = binary, $2 = label
	env ${DETECTOR:+DETECTOR=$DETECTOR} ${ENV:-} GOMAXPROCS=1 LOG_LEVEL=warn taskset -c 0 "$1" -addr 127.0.0.1:$PORT >/dev/null 2>&1 &
	pid=$!
	for _ in $(seq 100); do curl -sf "127.0.0.1:$PORT/ready" >/dev/null 2>&1 && break; sleep 0.1; done
	taskset -c 1 wrk -t1 -c64 -d1s -s "$work/ab.lua" "http://127.0.0.1:$PORT" >/dev/null 2>&1
	r=$(taskset -c 1 wrk -t1 -c64 -d"${DUR}s" -s "$work/ab.lua" "http://127.0.0.1:$PORT" 2>/dev/null | grep RESULT)
	kill "$pid"; wait "$pid" 2>/dev/null || true; pid=
	echo "$2 $r"
}
for i in $(seq "$RUNS"); do
	o=$(run "$work/old.bin" old); n=$(run "$work/new" new)
	echo "$o"; echo "$n"
	echo "$o $n" | awk '{ for (i = 1; i <= NF; i++) if ($i ~ /^rps=/) { split($i, kv, "="); r[++k] = kv[2] } } END { printf "  new/old %.3f\n", r[2] / r[1] }'
done
