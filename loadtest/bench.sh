#!/usr/bin/env bash
# bench.sh (make bench): the service against the bare fasthttp baseline
# (loadtest/bare), side by side in one run on this machine.
#
# On 2 cores unpinned figures swing 2x, so each server runs alone on CPU 0
# with GOMAXPROCS=1 and wrk on CPU 1; pairs are interleaved (bare, service,
# bare, service...) and the median of the per-pair ratios is reported.
# Then the Go benchmarks, and resident memory per stream with 100k streams.
set -euo pipefail
cd "$(dirname "$0")/.."
. loadtest/lib.sh

PAIRS=${PAIRS:-5}     # interleaved pairs per mode
DUR=${DUR:-5}         # seconds per measured wrk run
CONNS=${CONNS:-64}
DEVICES=${DEVICES:-10000}
PORT=${PORT:-18090}
MODES=${MODES:-single batch random} # request shapes: 1 sample, 100 devices in order, 100 random devices
command -v wrk >/dev/null || { echo "bench: wrk is missing: apt-get install -y wrk" >&2; exit 1; }
command -v taskset >/dev/null || { echo "bench: taskset is missing: apt-get install -y util-linux" >&2; exit 1; }

work=$(mktemp -d)
pid=
cleanup() { [ -n "$pid" ] && kill "$pid" 2>/dev/null; rm -rf "$work"; }
trap cleanup EXIT
go build -o "$work/svc" .
go build -o "$work/bare" ./loadtest/bare
go build -o "$work/gen" ./loadtest

lua 1 >"$work/single.lua"
lua 100 >"$work/batch.lua"
lua 100 1 >"$work/random.lua"

start() { # $1 = binary, $2 = extra environment (optional); waits until it answers
	for _ in $(seq 50); do # the previous server must be gone from the port
		curl -s -o /dev/null "http://127.0.0.1:$PORT/" 2>/dev/null || break
		sleep 0.1
	done
	env ${2:-} GOMAXPROCS=1 LOG_LEVEL=warn taskset -c 0 "$1" -addr 127.0.0.1:$PORT >"$work/server.log" 2>&1 &
	pid=$!
	for _ in $(seq 100); do
		curl -fsS -o /dev/null "http://127.0.0.1:$PORT/health" 2>/dev/null && return 0
		curl -sS -o /dev/null -XPOST "http://127.0.0.1:$PORT/" 2>/dev/null && return 0
		sleep 0.1
	done
	echo "bench: $1 did not start" >&2
	cat "$work/server.log" >&2
	exit 1
}
stop() { kill "$pid"; wait "$pid" 2>/dev/null || true; pid=; }

run() { # $1 = binary, $2 = script, $3 = extra environment; prints "rps p50us p99us errors"
	start "$1" "${3:-}"
	taskset -c 1 wrk -t1 -c"$CONNS" -d1s -s "$work/$2" "http://127.0.0.1:$PORT/" >/dev/null
	taskset -c 1 wrk -t1 -c"$CONNS" -d"${DUR}s" -s "$work/$2" "http://127.0.0.1:$PORT/" |
		awk '/^RESULT/ { for (i = 2; i <= NF; i++) { split($i, kv, "="); v[kv[1]] = kv[2] }
			print v["rps"], v["p50us"], v["p99us"], v["errors"] }'
	curl -fsS "http://127.0.0.1:$PORT/metrics" >"$work/last.metrics" 2>/dev/null || : >"$work/last.metrics"
	stop
}


echo "machine: $(nproc) cores, $(awk '/model name/ { $1 = $2 = $3 = ""; print; exit }' /proc/cpuinfo | sed 's/^ *//'), $(go version | cut -d' ' -f3)"
echo "wrk -t1 -c$CONNS, $DEVICES devices, ${DUR}s per run, $PAIRS interleaved pairs, servers on CPU 0 (GOMAXPROCS=1), wrk on CPU 1"
for mode in $MODES; do
	: >"$work/$mode.pairs"
	for p in $(seq "$PAIRS"); do
		run "$work/bare" "$mode.lua" >"$work/run.out"; read -r brps bp50 bp99 berr <"$work/run.out"
		run "$work/svc" "$mode.lua" >"$work/run.out"; read -r srps sp50 sp99 serr <"$work/run.out"
		echo "$brps $bp50 $bp99 $berr $srps $sp50 $sp99 $serr" >>"$work/$mode.pairs"
		printf '  %-6s pair %d: bare %9.0f req/s p99 %6d us | service %9.0f req/s p99 %6d us errors %d | ratio %.3f\n' \
			"$mode" "$p" "$brps" "$bp99" "$srps" "$sp99" "$serr" "$(echo "$srps $brps" | awk '{ print $1 / $2 }')"
	done
done

echo
echo "| mode | bare req/s | service req/s | samples/s | ratio (median of pairs) | target | bare p99 | service p99 | p99 target (3x bare + 1ms) |"
echo "|---|---|---|---|---|---|---|---|---|"
for mode in $MODES; do
	f=$work/$mode.pairs
	per=1 target=0.8
	[ "$mode" = batch ] && per=100 target=0.4
	[ "$mode" = random ] && per=100 target=n/a
	ratio=$(awk '{ print $5 / $1 }' "$f" | median)
	brps=$(awk '{ print $1 }' "$f" | median)
	srps=$(awk '{ print $5 }' "$f" | median)
	bp99=$(awk '{ print $3 }' "$f" | median)
	sp99=$(awk '{ print $7 }' "$f" | median)
	errs=$(awk '{ s += $8 } END { print s }' "$f")
	awk -v m="$mode" -v br="$brps" -v sr="$srps" -v per="$per" -v r="$ratio" -v t="$target" -v bp="$bp99" -v sp="$sp99" -v e="$errs" 'BEGIN {
		verdict = (t == "n/a" ? "(information)" : ">= " t " " (r >= t ? "ok" : "MISSED"))
		printf "| %s | %.0f | %.0f | %.0f | %.3f | %s | %.2f ms | %.2f ms | <= %.2f ms %s |\n",
			m, br, sr, sr * per, r, verdict, bp / 1000, sp / 1000, (3 * bp + 1000) / 1000,
			(m != "single" ? "(n/a)" : (sp <= 3 * bp + 1000 ? "ok" : "MISSED"))
		if (e > 0) printf "service errors (non-2xx or socket): %d\n", e
	}'
done

echo
echo "Open-model latency (go run ./loadtest on CPU 1, after 1 s at the same rate) at 50% and 90% of the service's saturation rate above:"
echo "(send lag: how late the generator sent, part of every latency; drops: due while every connection was busy)"
echo "| request | load | target rate | req/s | samples/s | p50 | p95 | p99 | send lag p99 | errors | dropped |"
echo "|---|---|---|---|---|---|---|---|---|---|---|"
for mode in $MODES; do
	# The generator draws each batch's devices at random: its batch rate is
	# scaled by wrk's random-order rate when that was measured.
	if [ "$mode" = batch ] && [[ " $MODES " == *" random "* ]]; then
		continue
	fi
	sat=$(awk '{ print $5 }' "$work/$mode.pairs" | median)
	batch=1
	[ "$mode" != single ] && batch=100
	for pct in 50 90; do
		rate=$(awk -v s="$sat" -v p="$pct" 'BEGIN { printf "%d", s * p / 100 }')
		start "$work/svc"
		# Warm-up at the same rate, as for wrk: the first second creates
		# every device, which is start-up cost, not steady-state latency.
		taskset -c 1 "$work/gen" -url "http://127.0.0.1:$PORT" -rate "$rate" -duration 1s -devices "$DEVICES" \
			-batch "$batch" -connections "$CONNS" -quiet -p95 1h -max-error-rate 1 >/dev/null
		taskset -c 1 "$work/gen" -url "http://127.0.0.1:$PORT" -rate "$rate" -duration "${DUR}s" -devices "$DEVICES" \
			-batch "$batch" -connections "$CONNS" -quiet -json "$work/gen.json" -p95 1h -max-error-rate 1 >/dev/null
		stop
		python3 - "$work/gen.json" "$mode" "$pct" "$rate" <<'PY'
import json, sys
s = json.load(open(sys.argv[1]))
l = s["latency_ms"]
g = s.get("send_lag_ms", {})
print(f"| {sys.argv[2]} | {sys.argv[3]}% | {int(sys.argv[4]):,} | {s['rps']:,.0f} | {s['samples_per_second']:,.0f} | "
      f"{l['p50']:.2f} ms | {l['p95']:.2f} ms | {l['p99']:.2f} ms | {g.get('p99', 0):.2f} ms | {s['errors']} | "
      f"{s.get('dropped', 0):,} of {s.get('scheduled', s['requests']):,} |")
PY
	done
done

echo
echo "The prototype's scenario (POST /metric, 50 connections, the rate its 50 VUs with sleep(0.1) can reach at most):"
start "$work/svc"
taskset -c 1 "$work/gen" -url "http://127.0.0.1:$PORT" -route metric -rate 500 -duration "$((DUR * 2))s" -connections 50 \
	-quiet -json "$work/seed.json" >/dev/null || true
stop
python3 - "$work/seed.json" <<'PY'
import json, sys
s = json.load(open(sys.argv[1]))
l = s["latency_ms"]
rate = s["errors"] / max(s["requests"], 1)
print("| | RPS | p95 | error rate |\n|---|---|---|---|")
print("| prototype, as published | 1,250 | 320 ms | 0.2% |")
print(f"| this service, same scenario | {s['rps']:,.0f} (the scenario's ceiling is 500) | {l['p95']:.2f} ms | {100 * rate:.2f}% |")
PY

echo
echo "Default detector against the core's plain z-score (DETECTOR=zscore Z_THRESHOLD=3 ALERT_COOLDOWN=0), batch bodies:"
core="DETECTOR=zscore Z_THRESHOLD=3 ALERT_COOLDOWN=0"
: >"$work/detector.pairs"
for p in $(seq "$PAIRS"); do
	run "$work/svc" batch.lua "$core" >"$work/run.out"; read -r zrps _ _ zerr <"$work/run.out"
	run "$work/svc" batch.lua >"$work/run.out"; read -r drps _ _ derr <"$work/run.out"
	echo "$zrps $drps" >>"$work/detector.pairs"
	printf '  pair %d: zscore %9.0f req/s | default %9.0f req/s | ratio %.3f\n' "$p" "$zrps" "$drps" "$(echo "$drps $zrps" | awk '{ print $1 / $2 }')"
done
ratio=$(awk '{ print $2 / $1 }' "$work/detector.pairs" | median)
awk -v r="$ratio" 'BEGIN { printf "  median ratio default/zscore %.3f (target >= 0.9 %s)\n", r, (r >= 0.9 ? "ok" : "MISSED") }'

if command -v redis-server >/dev/null; then
	echo
	echo "Redis persistence (SNAPSHOT_INTERVAL=1s) against in-memory mode, batch bodies; redis-server on CPU 1 beside wrk;"
	echo "from the second pair on, every device is restored from the previous pair's snapshots:"
	rport=$((PORT + 1))
	taskset -c 1 redis-server --port "$rport" --bind 127.0.0.1 --save "" --appendonly no --dir "$work" >"$work/redis.log" 2>&1 &
	rpid=$!
	trap 'kill $rpid 2>/dev/null || true; cleanup' EXIT
	sleep 0.5
	: >"$work/redis.pairs"
	for p in $(seq "$PAIRS"); do
		run "$work/svc" batch.lua >"$work/run.out"; read -r mrps _ mp99 _ <"$work/run.out"
		c0=$(redis-cli -p "$rport" info stats | awk -F: '/^total_commands_processed/ { print $2 + 0 }')
		run "$work/svc" batch.lua "REDIS_ADDR=127.0.0.1:$rport SNAPSHOT_INTERVAL=1s" >"$work/run.out"; read -r rrps _ rp99 rerr <"$work/run.out"
		c1=$(redis-cli -p "$rport" info stats | awk -F: '/^total_commands_processed/ { print $2 + 0 }')
		echo "$mrps $rrps" >>"$work/redis.pairs"
		printf '  pair %d: in-memory %9.0f req/s p99 %6d us | redis %9.0f req/s p99 %6d us errors %d | ratio %.3f | redis commands %d in ~%ds\n' \
			"$p" "$mrps" "$mp99" "$rrps" "$rp99" "$rerr" "$(echo "$rrps $mrps" | awk '{ print $1 / $2 }')" "$((c1 - c0))" "$((DUR + 1))"
	done
	ratio=$(awk '{ print $2 / $1 }' "$work/redis.pairs" | median)
	awk -v r="$ratio" 'BEGIN { printf "  median ratio redis/in-memory %.3f (target >= 0.9 %s)\n", r, (r >= 0.9 ? "ok" : "MISSED") }'
	awk -v c="$((c1 - c0))" -v d="$((DUR + 1))" '
		/^snapshots_written_total / { n = $2 } /^snapshot_bytes_written_total / { b = $2 }
		END { if (n > 0) printf "  last run: %d snapshots written, %.0f bytes per device snapshot, ~%.0f redis commands/s\n", n, b / n, c / d }' "$work/last.metrics"
	kill "$rpid"
fi

echo
echo "Go benchmarks (ns/op and allocs/op; detector target <= 50 ns, 0 allocs; decode 0 allocs):"
go test -run='^$' -bench='Observe/W50|ShardOf|Ingest' -benchmem ./shard/detect ./shard | grep '^Benchmark'
go test -run='^$' -bench='Decode|IngestRoute' -benchmem ./server | grep '^Benchmark'

echo
echo "Memory: 100k (device, metric) streams with full windows (W=50):"
start "$work/svc"
mem=$(python3 loadtest/fill.py "$PORT" 20000 5 50 "$pid")
echo "  $mem (target <= 1024 per stream)"
stop
