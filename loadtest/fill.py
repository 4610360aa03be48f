#!/usr/bin/env python3
"""fill.py PORT DEVICES METRICS VALUES [PID]: fill a running service with
DEVICES x METRICS streams (devices sensor-N, metrics mN), VALUES values
each, in batches of 100 samples over one keep-alive connection. With PID,
print the growth of its VmRSS per stream once SETTLE seconds (default 1)
have passed. Used by bench.sh, memory.sh and scrape.sh."""
import http.client
import os
import sys
import time


def rss(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024


def main():
    port, devices, metrics, values = map(int, sys.argv[1:5])
    pid = sys.argv[5] if len(sys.argv) > 5 else None
    before = rss(pid) if pid else 0
    c = http.client.HTTPConnection("127.0.0.1", port)
    per = 100
    for r in range(values):
        for first in range(0, devices, per):
            parts = []
            for d in range(first, min(first + per, devices)):
                ms = ",".join(f'"m{m}":{(d * 7 + r * 13 + m) % 101}.5' for m in range(metrics))
                parts.append(f'{{"device":"sensor-{d}","metrics":{{{ms}}}}}')
            c.request("POST", "/api/v1/ingest", "[" + ",".join(parts) + "]")
            resp = c.getresponse()
            body = resp.read()
            if resp.status != 200:
                sys.exit(f"fill failed: {resp.status} {body[:200]!r}")
    if not pid:
        return
    time.sleep(float(os.environ.get("SETTLE", "1")))
    after = rss(pid)
    print(f"{devices} devices x {metrics} metrics, {values} values each: RSS {before / 2**20:.1f} -> {after / 2**20:.1f} MiB, "
          f"{(after - before) / (devices * metrics):.0f} bytes per stream, {(after - before) / devices:.0f} per device")


main()
