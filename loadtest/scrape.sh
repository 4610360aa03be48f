#!/usr/bin/env bash
# scrape.sh: what /metrics scrapes cost ingest. Fills STREAMS streams
# (DEVICES devices x 5 metrics, full W=50 windows), then runs wrk with
# single-sample requests for DUR seconds twice: alone, and with a scrape of
# /metrics every EVERY seconds beside it. Prints p50/p99 of both.
#   ./loadtest/scrape.sh [binary]     (default: builds this checkout)
set -euo pipefail
cd "$(dirname "$0")/.."
DEVICES=${DEVICES:-20000}
DUR=${DUR:-5}
EVERY=${EVERY:-0.25}
PORT=${PORT:-18093}
command -v wrk >/dev/null || { echo "scrape: wrk is missing: apt-get install -y wrk" >&2; exit 1; }
work=$(mktemp -d)
pid=
cleanup() { [ -n "$pid" ] && kill "$pid" 2>/dev/null; rm -rf "$work"; }
trap cleanup EXIT
bin=${1:-}
if [ -z "$bin" ]; then
	go build -o "$work/svc" .
	bin=$work/svc
fi
GOMAXPROCS=1 LOG_LEVEL=warn taskset -c 0 "$bin" -addr "127.0.0.1:$PORT" &
pid=$!
for _ in $(seq 100); do curl -sf "127.0.0.1:$PORT/ready" >/dev/null && break; sleep 0.05; done
python3 loadtest/fill.py "$PORT" "$DEVICES" 5 50
cat >"$work/single.lua" <<LUA
local n = 0
request = function()
  n = n + 1
  local d = n % $DEVICES
  return wrk.format("POST", "/api/v1/ingest", {["Content-Type"]="application/json"},
    string.format('{"device":"sensor-%d","metrics":{"m0":%d.5,"m1":2}}', d, n % 97))
end
done = function(summary, latency, requests)
  io.write(string.format("RESULT rps=%.0f p50us=%d p99us=%d\n", summary.requests / (summary.duration / 1e6),
    latency:percentile(50), latency:percentile(99)))
end
LUA
measure() {
	taskset -c 1 wrk -t1 -c64 -d"${DUR}s" -s "$work/single.lua" "http://127.0.0.1:$PORT/" | grep '^RESULT'
}
echo "alone:          $(measure)"
( end=$((SECONDS + DUR + 2)); n=0; t=0
  while [ $SECONDS -lt $end ]; do
	s=$(date +%s%N); curl -sf -o /dev/null "127.0.0.1:$PORT/metrics"; e=$(date +%s%N)
	n=$((n + 1)); t=$((t + (e - s) / 1000)); sleep "$EVERY"
  done; echo "scrapes: $n, mean $((t / n)) us" >"$work/scrapes" ) &
spid=$!
echo "scraped every ${EVERY}s: $(measure)"
wait "$spid"; cat "$work/scrapes"
