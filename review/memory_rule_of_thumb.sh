#!/usr/bin/env bash
# review-d: README "Memory a setting implies" gives the rule of thumb
# "D·M·(600 + 8·W) bytes live, up to ~1.7× that resident for W > 64 without
# GOMEMLIMIT". Its own table measures 16,300 bytes per stream at W=1000
# (1.9× the 8,600 the rule gives), and loadtest/memory.sh measures the same.
# This script runs memory.sh at W=1000 (2,000 devices x 5 metrics, full
# windows) and fails when the resident bytes per stream exceed the rule's
# bound. Takes ~15 s. Usage: review/memory_rule_of_thumb.sh [W]
set -euo pipefail
cd "$(dirname "$0")/.."
W=${1:-1000}
out=$(W=$W DEVICES=2000 METRICS=5 VALUES=$W ./loadtest/memory.sh 2>&1 | tail -1)
echo "$out"
per=$(sed -n 's/.* \([0-9]*\) bytes per stream.*/\1/p' <<<"$out")
bound=$(( (600 + 8 * W) * 17 / 10 ))
echo "rule of thumb: live $((600 + 8 * W)) bytes per stream, up to ~1.7x = $bound resident; measured $per"
if [ "$per" -gt "$bound" ]; then
	echo "FAIL: measured $per bytes per stream > $bound, the README's bound ($(awk "BEGIN{printf \"%.2f\", $per/(600+8*$W)}")x live)" >&2
	exit 1
fi
