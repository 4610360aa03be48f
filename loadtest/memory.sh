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
python3 - "$PORT" "$pid" "$DEVICES" "$METRICS" "$VALUES" "$W" <<'PY'
import http.client, sys, time
port, pid, devices, metrics, values, w = map(int, sys.argv[1:])
def rss():
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
before = rss()
c = http.client.HTTPConnection("127.0.0.1", port)
per = 100
for r in range(values):
    for first in range(0, devices, per):
        parts = []
        for d in range(first, min(first + per, devices)):
            ms = ",".join(f'"m{m}":{(d * 7 + r * 13 + m) % 101}.5' for m in range(metrics))
            parts.append(f'{{"device":"sensor-{d}","metrics":{{{ms}}}}}')
        c.request("POST", "/api/v1/ingest", "[" + ",".join(parts) + "]")
        resp = c.getresponse(); resp.read()
        if resp.status != 200:
            sys.exit(f"fill failed: {resp.status}")
time.sleep(float(__import__("os").environ.get("SETTLE", "1")))
after = rss()
streams = devices * metrics
print(f"W={w} {devices} devices x {metrics} metrics, {values} values each: RSS {before / 2**20:.1f} -> {after / 2**20:.1f} MiB, "
      f"{(after - before) / streams:.0f} bytes per stream, {(after - before) / devices:.0f} per device")
PY
