#!/usr/bin/env bash
# soak.sh (make soak; not CI): MINUTES minutes at LOAD of the measured
# saturation rate with DEVICES devices of 2 metrics, in memory and then
# with Redis. Each minute it reports the open-model p99 and errors of that
# minute, and the service's RSS, goroutines, open connections and pending
# snapshots at its end; then start, peak and end of each. The server runs
# on CPU 0 (GOMAXPROCS=1), the generator and Redis on CPU 1.
#   MINUTES=10 LOAD=0.7 DEVICES=100000 ./loadtest/soak.sh
set -euo pipefail
cd "$(dirname "$0")/.."
. loadtest/lib.sh

MINUTES=${MINUTES:-10}
LOAD=${LOAD:-0.7}
DEVICES=${DEVICES:-100000}
BATCH=${BATCH:-100}
CONNS=${CONNS:-64}
PORT=${PORT:-18095}
MODES=${MODES:-memory redis}
for c in wrk taskset redis-server redis-cli python3 curl; do
	command -v "$c" >/dev/null || { echo "soak: $c is missing (apt-get install -y wrk util-linux redis-server python3 curl)" >&2; exit 1; }
done

work=$(mktemp -d)
pid= rpid=
cleanup() {
	[ -n "$pid" ] && kill "$pid" 2>/dev/null
	[ -n "$rpid" ] && kill "$rpid" 2>/dev/null
	rm -rf "$work"
}
trap cleanup EXIT
go build -o "$work/svc" .
go build -o "$work/gen" ./loadtest
lua "$BATCH" 1 >"$work/batch.lua"

start() { # $1 = extra environment
	env ${1:-} GOMAXPROCS=1 LOG_LEVEL=warn taskset -c 0 "$work/svc" -addr 127.0.0.1:$PORT >"$work/server.log" 2>&1 &
	pid=$!
	for _ in $(seq 100); do
		curl -fsS -o /dev/null "http://127.0.0.1:$PORT/ready" 2>/dev/null && return 0
		sleep 0.1
	done
	echo "soak: the service did not start" >&2
	cat "$work/server.log" >&2
	exit 1
}
stop() { kill "$pid"; wait "$pid" 2>/dev/null || true; pid=; }
metric() { awk -v m="$1" '$1 == m { print $2 }' "$work/metrics"; }
sample() { # prints "rss_mib goroutines open_conns pending"
	curl -fsS "http://127.0.0.1:$PORT/metrics" >"$work/metrics"
	rss=$(awk '/^VmRSS:/ { printf "%.1f", $2 / 1024 }' "/proc/$pid/status")
	echo "$rss $(metric go_goroutines) $(metric http_open_connections) $(metric snapshot_pending_devices)"
}

echo "machine: $(nproc) cores, $(awk -F': ' '/model name/ { print $2; exit }' /proc/cpuinfo), $(go env GOVERSION)"
for mode in $MODES; do
	env=
	if [ "$mode" = redis ]; then
		rport=$((PORT + 1))
		taskset -c 1 redis-server --port "$rport" --bind 127.0.0.1 --save "" --appendonly no --dir "$work" >"$work/redis.log" 2>&1 &
		rpid=$!
		sleep 0.5
		env="REDIS_ADDR=127.0.0.1:$rport SNAPSHOT_INTERVAL=1s"
	fi
	start "$env"
	# Saturation: wrk for 5 s, after every device is created (a first pass).
	taskset -c 1 wrk -t1 -c"$CONNS" -d3s -s "$work/batch.lua" "http://127.0.0.1:$PORT/" >/dev/null
	sat=$(taskset -c 1 wrk -t1 -c"$CONNS" -d5s -s "$work/batch.lua" "http://127.0.0.1:$PORT/" |
		awk '/^RESULT/ { split($2, kv, "="); print kv[2] }')
	rate=$(awk -v s="$sat" -v l="$LOAD" 'BEGIN { printf "%.0f", s * l }')
	echo
	echo "== $mode: saturation $sat req/s of $BATCH random devices, soak at $rate req/s ($LOAD), $DEVICES devices x 2 metrics, $MINUTES min"
	echo "| minute | req/s | samples/s | p50 | p99 | errors | dropped | RSS MiB | goroutines | open conns | snapshots pending |"
	echo "|---|---|---|---|---|---|---|---|---|---|---|"
	read -r rss0 gor0 conn0 pend0 < <(sample)
	echo "| 0 | | | | | | | $rss0 | $gor0 | $conn0 | ${pend0:-n/a} |"
	: >"$work/series"
	echo "$rss0 $gor0 $conn0 ${pend0:-0}" >>"$work/series"
	for m in $(seq "$MINUTES"); do
		taskset -c 1 "$work/gen" -url "http://127.0.0.1:$PORT" -rate "$rate" -duration 60s -grace 5s -devices "$DEVICES" \
			-batch "$BATCH" -connections "$CONNS" -quiet -json "$work/gen.json" -p95 1h -max-error-rate 1 >/dev/null || true
		read -r rss gor conn pend < <(sample)
		echo "$rss $gor $conn ${pend:-0}" >>"$work/series"
		python3 - "$work/gen.json" "$m" "$rss" "$gor" "$conn" "${pend:-n/a}" <<'PY'
import json, sys
j = json.load(open(sys.argv[1]))
m, rss, gor, conn, pend = sys.argv[2:]
lat = j.get("latency_ms", {})
print(f"| {m} | {j.get('rps', 0):,.0f} | {j.get('samples_per_second', 0):,.0f} | {lat.get('p50', 0):.2f} ms | {lat.get('p99', 0):.2f} ms | {j.get('errors', 0)} | {j.get('dropped', 0)} | {rss} | {gor} | {conn} | {pend} |")
PY
	done
	awk 'NR == 1 { for (i = 1; i <= 4; i++) { s[i] = $i; p[i] = $i } }
		{ for (i = 1; i <= 4; i++) { if ($i + 0 > p[i] + 0) p[i] = $i; e[i] = $i } }
		END { split("RSS MiB,goroutines,open connections,snapshots pending", n, ",")
			printf "start / peak / end:"; for (i = 1; i <= 4; i++) printf " %s %s / %s / %s;", n[i], s[i], p[i], e[i]; print "" }' "$work/series"
	stop
	if [ -n "$rpid" ]; then kill "$rpid"; wait "$rpid" 2>/dev/null || true; rpid=; fi
done
