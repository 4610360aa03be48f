# Quality gates and measurements; `make check` is what to run before a commit.
.PHONY: run test check bench soak fuzz eval eval-nab manifests

run:
	go run .

# The README's second command: installs what the tests need when missing
# (redis-server, promtool, node; .ci/deps says how when it cannot), then
# runs them all.
test:
	./.ci/deps
	go test -race ./...

check:
	test -z "$$(gofmt -s -l .)" || { gofmt -s -l .; exit 1; }
	go vet ./...
	staticcheck ./...
	./.ci/manifests
	$(MAKE) test

# The Dockerfile and the Kubernetes manifests, checked offline (kubectl,
# promtool and go; see .ci/manifests).
manifests:
	./.ci/manifests

bench:
	./loadtest/bench.sh
	./loadtest/cluster.sh
	if [ -n "$(SOAK)" ]; then ./loadtest/soak.sh; fi

# The soak run (make bench SOAK=1 runs it too; not CI): MINUTES (10) at 70%
# of the measured saturation with 100k devices, in memory then with Redis,
# about 2 x (MINUTES + 1) minutes in all: 22 at the default (loadtest/soak.sh).
soak:
	./loadtest/soak.sh

# Every fuzz target for FUZZTIME each (CI runs them for 10s; make fuzz
# FUZZTIME=10m for a longer hunt). A new input is minimised for at most
# FUZZMIN (Go's default is 60s, reported as 0 execs/s, which once looked
# like a stalled worker in CI; timing 8 million mutated snapshots found none
# slower than 7 ms).
FUZZTIME ?= 30s
FUZZMIN ?= 5s
FUZZ = go test -run='^$$' -fuzztime=$(FUZZTIME) -fuzzminimizetime=$(FUZZMIN)
fuzz:
	$(FUZZ) -fuzz=FuzzDecodeIngest ./server
	$(FUZZ) -fuzz=FuzzDecodeMetric ./server
	$(FUZZ) -fuzz=FuzzDecodeSnapshot ./shard
	$(FUZZ) -fuzz=FuzzWindow ./shard/detect

# Detector evaluation on the labelled corpus; EVAL_FLAGS=-sweep scores a grid.
eval:
	go test ./shard/detect -run 'TestScoreAlerts|TestCorpus|TestEval' -count=1 -v $(EVAL_FLAGS)

# Detectors on the Numenta Anomaly Benchmark (NAB_DIR, default ../shared/nab;
# without the data the tests say so and skip): the scorer's checks, every
# detector's table beside NAB's published scores, then the default through
# a running service's ingest route.
eval-nab:
	go test ./shard/detect -run 'TestNABScorer|TestEvalNAB|TestRangesNAB' -count=1 -v
	go test . -run TestNABLive -count=1 -v
