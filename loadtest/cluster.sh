#!/usr/bin/env bash
# cluster.sh (make bench, after bench.sh): cluster mode's cost, in one run.
#
# - Three pods sharing CPU 0 (GOMAXPROCS=1 each) against one pod alone on
#   CPU 0, batches of 100 devices: each client request reaches a random pod,
#   which applies its third and forwards the rest, one request per owner.
#   Target: the three reach >= 0.6x the single pod's samples/s.
# - A cluster of one (PEERS naming itself) against no cluster at all.
#   Target: >= 0.95x.
# wrk runs on CPU 1 (three of them at once for the three pods, splitting
# the connections). Pairs are interleaved and the median ratio reported.
set -euo pipefail
cd "$(dirname "$0")/.."
. loadtest/lib.sh

PAIRS=${PAIRS:-5}
DUR=${DUR:-5}
CONNS=${CONNS:-63} # a multiple of 3
DEVICES=${DEVICES:-10000}
PORT=${PORT:-18190}
command -v wrk >/dev/null || { echo "cluster bench: wrk is missing: apt-get install -y wrk" >&2; exit 1; }

work=$(mktemp -d)
pids=()
cleanup() { [ ${#pids[@]} -gt 0 ] && kill "${pids[@]}" 2>/dev/null; rm -rf "$work"; }
trap cleanup EXIT
go build -o "$work/svc" .
lua "${PER:-100}" >"$work/batch.lua"

addr() { echo "127.0.0.1:$((PORT + $1))"; }

# start N [cluster]: N pods on CPU 0; with cluster, members of one cluster
# (N=1: a cluster of one). Waits until each is ready.
start() {
	local n=$1 peers=""
	for i in $(seq "$n"); do peers="$peers${peers:+,}$(addr "$i")"; done
	for i in $(seq "$n"); do
		local env=()
		[ -n "${2:-}" ] && env=(PEERS="$peers" SELF_ADDR="$(addr "$i")")
		env "${env[@]}" GOMAXPROCS=1 LOG_LEVEL=warn taskset -c 0 "$work/svc" -addr "$(addr "$i")" >"$work/pod$i.log" 2>&1 &
		pids+=($!)
	done
	for i in $(seq "$n"); do
		for _ in $(seq 100); do
			curl -fsS -o /dev/null "http://$(addr "$i")/ready" 2>/dev/null && continue 2
			sleep 0.1
		done
		echo "cluster bench: pod $i did not become ready" >&2
		cat "$work/pod$i.log" >&2
		exit 1
	done
}
stop() {
	kill "${pids[@]}" 2>/dev/null || true
	wait "${pids[@]}" 2>/dev/null || true
	pids=()
	for _ in $(seq 50); do # the ports must be free for the next run
		curl -s -o /dev/null "http://$(addr 1)/" 2>/dev/null || break
		sleep 0.1
	done
}

# load N SECONDS: wrk against pods 1..N at once (CONNS split), on CPU 1;
# prints the summed req/s and errors.
load() {
	local n=$1 d=$2
	for i in $(seq "$n"); do
		taskset -c 1 wrk -t1 -c$((CONNS / n)) -d"${d}s" -s "$work/batch.lua" "http://$(addr "$i")/" >"$work/wrk$i.out" &
	done
	local w
	for w in $(jobs -p); do
		[[ " ${pids[*]} " == *" $w "* ]] || wait "$w" || true
	done
	cat "$work"/wrk*.out | awk '/^RESULT/ { for (i = 2; i <= NF; i++) { split($i, kv, "="); v[kv[1]] = kv[2] } r += v["rps"]; e += v["errors"] }
		END { print r, e }'
	rm -f "$work"/wrk*.out
}

run() { # N [cluster]: prints "req/s errors"
	start "$@"
	load "$1" 1 >/dev/null
	load "$1" "$DUR"
	stop
}

echo "Cluster mode: batches of 100 in device order ($DEVICES devices), wrk on CPU 1 with $CONNS connections in all, ${DUR}s per run, $PAIRS interleaved pairs"
: >"$work/three.pairs"
: >"$work/one.pairs"
for p in $(seq "$PAIRS"); do
	run 1 >"$work/run.out"; read -r srps serr <"$work/run.out"
	run 3 cluster >"$work/run.out"; read -r crps cerr <"$work/run.out"
	run 1 cluster >"$work/run.out"; read -r orps oerr <"$work/run.out"
	echo "$srps $crps $orps" >>"$work/three.pairs"
	printf '  pair %d: one pod %8.0f req/s | three pods %8.0f req/s (errors %d) ratio %.3f | cluster of one %8.0f req/s (errors %d) ratio %.3f\n' \
		"$p" "$srps" "$crps" "$cerr" "$(echo "$crps $srps" | awk '{ print $1 / $2 }')" "$orps" "$oerr" "$(echo "$orps $srps" | awk '{ print $1 / $2 }')"
done
three=$(awk '{ print $2 / $1 }' "$work/three.pairs" | median)
one=$(awk '{ print $3 / $1 }' "$work/three.pairs" | median)
srps=$(awk '{ print $1 }' "$work/three.pairs" | median)
crps=$(awk '{ print $2 }' "$work/three.pairs" | median)
echo
echo "| setup (all on CPU 0) | samples/s (median) | ratio to one pod (median of pairs) | target |"
echo "|---|---|---|---|"
awk -v s="$srps" 'BEGIN { printf "| one pod | %.0f | 1 | |\n", s * 100 }'
awk -v c="$crps" -v r="$three" 'BEGIN { printf "| three pods, 2/3 of samples forwarded | %.0f | %.3f | >= 0.6 %s |\n", c * 100, r, (r >= 0.6 ? "ok" : "MISSED") }'
awk -v s="$srps" -v r="$one" 'BEGIN { printf "| cluster of one | %.0f | %.3f | >= 0.95 %s |\n", s * r * 100, r, (r >= 0.95 ? "ok" : "MISSED") }'
