#!/usr/bin/env bash
# review-d: README "Two commands" says what the tests need and what
# `make test` installs: "Go 1.26 and redis-server with redis-cli ... make
# test installs the Debian package redis-server when it is missing". Since
# 50bb9fd, .ci/deps (run by make test) also installs prometheus (promtool)
# and nodejs (node), and the tests fail without them (TestMetricsExposition
# and TestFleetSpikesOnlyWarmDevices call t.Fatal). A developer reading the
# README to set up a machine by hand (no root, no sudo) installs Redis only
# and gets failures. The Makefile's comment has the same omission. This
# script fails for every command .ci/deps checks that the README's
# paragraph does not name.
set -euo pipefail
cd "$(dirname "$0")/.."
para=$(awk '/^The tests need/,/^$/' README.md)
fail=0
for cmd in $(sed -n 's/^command -v \([a-z-]*\) .*/\1/p' .ci/deps); do
	if ! grep -q -- "$cmd" <<<"$para"; then
		echo "FAIL: .ci/deps requires '$cmd' for the tests; README's test requirements do not mention it" >&2
		fail=1
	fi
done
if [ $fail -ne 0 ]; then
	echo "--- README:" >&2
	echo "$para" >&2
	exit 1
fi
