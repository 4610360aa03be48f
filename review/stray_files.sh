#!/usr/bin/env bash
# review-d: commit d83d16a added a test session's leftovers to the
# repository root: pw1.log, pw2.log (service logs naming loopback ports and
# a WRONGPASS Redis error), pw1.pid, pw2.pid and redis2.pid. They are in
# main and in every checkout; .gitignore does not cover them, and README's
# Layout does not list them. This script fails while git tracks any *.pid
# or *.log file.
set -euo pipefail
cd "$(dirname "$0")/.."
stray=$(git ls-files -- '*.pid' '*.log')
if [ -n "$stray" ]; then
	echo "FAIL: tracked test leftovers:" $stray >&2
	exit 1
fi
