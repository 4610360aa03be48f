package main

import (
	"io"
	"math"
	"math/rand/v2"
	"net"
	"regexp"
	"slices"
	"strconv"
	"testing"
	"time"

	"ai-load-service/server"
	"ai-load-service/shard"

	"github.com/valyala/fasthttp"
)

// startService serves the real handler on a loopback port.
func startService(t *testing.T) string {
	t.Helper()
	set := shard.New(shard.Options{Shards: 2})
	h := server.New(server.Options{Shards: set})
	h.SetReady()
	srv := &fasthttp.Server{Handler: h.Handler(), ErrorHandler: h.ErrorHandler}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go srv.Serve(ln)                                 //nolint:errcheck
	t.Cleanup(func() { srv.Shutdown(); set.Stop() }) //nolint:errcheck
	return "http://" + ln.Addr().String()
}

// requestsTotal sums requests_total for one endpoint from /metrics.
func requestsTotal(t *testing.T, base, endpoint string) uint64 {
	t.Helper()
	var req fasthttp.Request
	var resp fasthttp.Response
	req.SetRequestURI(base + "/metrics")
	if err := fasthttp.Do(&req, &resp); err != nil {
		t.Fatal(err)
	}
	re := regexp.MustCompile(`(?m)^requests_total\{endpoint="` + regexp.QuoteMeta(endpoint) + `",[^}]*\} (\d+)$`)
	var n uint64
	for _, m := range re.FindAllSubmatch(resp.Body(), -1) {
		v, _ := strconv.ParseUint(string(m[1]), 10, 64)
		n += v
	}
	return n
}

func TestRequestCountMatchesServer(t *testing.T) {
	base := startService(t)
	for _, c := range []config{
		{Route: "ingest", Rate: 400, Duration: time.Second, Devices: 50, Batch: 3, Metrics: 2, SpikeRate: 0.05, Connections: 8},
		{Route: "metric", Rate: 200, Duration: 500 * time.Millisecond, Devices: 1, Batch: 1, Metrics: 1, Connections: 4},
	} {
		c.URL, c.Quiet = base, true
		endpoint := map[string]string{"ingest": "/api/v1/ingest", "metric": "/metric"}[c.Route]
		before := requestsTotal(t, base, endpoint)
		s := run(c, io.Discard)
		if want := uint64(c.Rate * c.Duration.Seconds()); s.Requests != want || s.Errors != 0 {
			t.Fatalf("%s: sent %d with %d errors; want %d and 0", c.Route, s.Requests, s.Errors, want)
		}
		if got := requestsTotal(t, base, endpoint) - before; got != s.Requests {
			t.Fatalf("%s: server counted %d requests; generator sent %d", c.Route, got, s.Requests)
		}
		if c.Route == "ingest" && (s.SpikesInjected == 0 || s.SpikesDetected == 0 || s.SpikesDetected > s.SpikesInjected) {
			t.Fatalf("spikes: injected %d detected %d", s.SpikesInjected, s.SpikesDetected)
		}
		if s.LatencyMS.P50 <= 0 || s.LatencyMS.P99 < s.LatencyMS.P50 || s.LatencyMS.Max < s.LatencyMS.P99 {
			t.Fatalf("implausible latencies %+v", s.LatencyMS)
		}
	}
}

func TestErrorsAndThresholds(t *testing.T) {
	base := startService(t)
	// Aim at a path the service does not serve: every request is a 404,
	// which must be counted as an error under its status.
	c := config{URL: base + "/nope", Route: "ingest", Rate: 100, Duration: 200 * time.Millisecond, Devices: 5,
		Batch: 1, Metrics: 1, Connections: 2, Quiet: true, P95: time.Second, MaxErrorRate: 0.01}
	s := run(c, io.Discard)
	if s.Errors != s.Requests || s.ErrorsByStatus["404"] != s.Requests {
		t.Fatalf("errors not counted by status: %+v", s)
	}
	if crossed := thresholds(c, s); len(crossed) != 1 {
		t.Fatalf("want the error-rate threshold crossed; got %v", crossed)
	}
	s.Errors, s.LatencyMS.P95 = 0, 2000
	if crossed := thresholds(c, s); len(crossed) != 1 {
		t.Fatalf("want the p95 threshold crossed; got %v", crossed)
	}
}

func TestHistogram(t *testing.T) {
	var h histogram
	for us := 1; us <= 100000; us++ {
		h.record(time.Duration(us) * time.Microsecond)
	}
	f := func(q, want float64) {
		t.Helper()
		if got := h.quantile(q); got < want || got > want*1.033 {
			t.Fatalf("quantile(%v): got %v; want %v to 3.3%% above", q, got, want)
		}
	}
	f(0, 1)
	f(0.5, 50000)
	f(0.99, 99000)
	f(1, 100000)
	for b := range 40 * 32 {
		if lo := bucketLow(b); bucketOf(lo) != b || bucketOf(bucketLow(b+1)-1) != b {
			t.Fatalf("bucket %d: low %d maps to %d, high %d to %d", b, lo, bucketOf(lo), bucketLow(b+1)-1, bucketOf(bucketLow(b+1)-1))
		}
	}
}

// TestQuantileNearestRank checks percentiles against the exact nearest-rank
// value (the ceil(q*N)-th smallest): never below it, and above it by at
// most one bucket (1/32). Rounding the rank down or reporting a bucket's
// lower edge fails here.
func TestQuantileNearestRank(t *testing.T) {
	t.Run("one slow of ten", func(t *testing.T) {
		var h histogram
		for range 9 {
			h.record(time.Millisecond)
		}
		h.record(100 * time.Millisecond)
		for _, c := range []struct{ q, lo, hi float64 }{
			{0.5, 1000, 1032}, {0.9, 1000, 1032}, {0.95, 100000, 100000}, {0.99, 100000, 100000},
		} {
			if got := h.quantile(c.q); got < c.lo || got > c.hi {
				t.Errorf("quantile(%v): got %vµs; want %v-%vµs", c.q, got, c.lo, c.hi)
			}
		}
	})
	rng := rand.New(rand.NewPCG(1, 2))
	for _, c := range []struct {
		name string
		n    int
		draw func() uint64 // µs
	}{
		{"single", 1, func() uint64 { return 734 }},
		{"two", 2, func() uint64 { return 1 + rng.Uint64N(5000) }},
		{"small values", 200, func() uint64 { return rng.Uint64N(40) }},
		{"uniform", 5000, func() uint64 { return 1 + rng.Uint64N(100000) }},
		{"exponential", 5000, func() uint64 { return uint64(rng.ExpFloat64() * 2000) }},
		{"bimodal", 1000, func() uint64 {
			if rng.IntN(100) < 3 {
				return 200000 + rng.Uint64N(1000)
			}
			return 100 + rng.Uint64N(20)
		}},
		{"long tail", 3000, func() uint64 { return uint64(math.Exp(rng.NormFloat64()*2) * 500) }},
	} {
		t.Run(c.name, func(t *testing.T) {
			var h histogram
			v := make([]uint64, c.n)
			for i := range v {
				v[i] = c.draw()
				h.record(time.Duration(v[i]) * time.Microsecond)
			}
			slices.Sort(v)
			for _, pm := range []int{10, 70, 500, 900, 950, 990, 999} { // per mille
				want := float64(v[(pm*c.n+999)/1000-1]) // ceil(pm*n/1000)-th smallest
				got := h.quantile(float64(pm) / 1000)
				if got < want || got > want+want/32 {
					t.Errorf("q=%v: got %vµs; want %vµs (nearest rank) to 1/32 above", float64(pm)/1000, got, want)
				}
			}
		})
	}
}

func TestParseFlags(t *testing.T) {
	if _, err := parseFlags([]string{"-route", "bogus"}, io.Discard); err == nil {
		t.Fatal("bad route accepted")
	}
	if _, err := parseFlags([]string{"-rate", "0"}, io.Discard); err == nil {
		t.Fatal("zero rate accepted")
	}
	c, err := parseFlags(nil, io.Discard)
	if err != nil || c.P95 != 500*time.Millisecond || c.MaxErrorRate != 0.01 || c.Batch != 1 {
		t.Fatalf("unexpected defaults %+v %v", c, err)
	}
}
