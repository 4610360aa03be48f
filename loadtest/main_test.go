package main

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"maps"
	"math"
	"math/rand/v2"
	"net"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
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
	re := regexp.MustCompile(`(?m)^requests_total\{route="` + regexp.QuoteMeta(endpoint) + `",[^}]*\} (\d+)$`)
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
		{Route: "ingest", Rate: 400, Duration: time.Second, Devices: 50, Batch: 3, Metrics: 2, SpikeRate: 0.05, Connections: 32},
		{Route: "metric", Rate: 200, Duration: 500 * time.Millisecond, Devices: 1, Batch: 1, Metrics: 1, Connections: 16},
	} {
		c.URL, c.Quiet, c.Grace = base, true, 5*time.Second
		endpoint := map[string]string{"ingest": "/api/v1/ingest", "metric": "/metric"}[c.Route]
		before := requestsTotal(t, base, endpoint)
		s := run(c, io.Discard)
		// A stall longer than Connections/Rate (80 ms) on a busy machine
		// drops requests; they must be counted, and stay few.
		if want := uint64(c.Rate * c.Duration.Seconds()); s.Scheduled != want || s.Requests+s.Dropped != want ||
			s.Dropped > want/10 || s.Errors != 0 || s.OK != s.Requests {
			t.Fatalf("%s: scheduled %d, sent %d, dropped %d, ok %d, errors %d; want %d scheduled, all sent ok",
				c.Route, s.Scheduled, s.Requests, s.Dropped, s.OK, s.Errors, want)
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
	c := config{URL: base + "/nope", Route: "ingest", Rate: 100, Duration: 200 * time.Millisecond, Grace: time.Second,
		Devices: 5, Batch: 1, Metrics: 1, Connections: 2, Quiet: true, P95: time.Second, MaxErrorRate: 0.01}
	s := run(c, io.Discard)
	if s.Errors != s.Requests || s.ErrorsByStatus["404"] != s.Requests {
		t.Fatalf("errors not counted by status: %+v", s)
	}
	if crossed := thresholds(c, s); len(crossed) != 1 {
		t.Fatalf("want the error-rate threshold crossed; got %v", crossed)
	}
	s.Errors, s.Dropped, s.LatencyMS.P95 = 0, 0, 2000
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

// serveLoopback serves handler on a loopback port until the test ends and
// returns its URL.
func serveLoopback(tb testing.TB, handler fasthttp.RequestHandler) string {
	tb.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		tb.Fatal(err)
	}
	srv := &fasthttp.Server{Handler: handler}
	go srv.Serve(ln)                      //nolint:errcheck
	tb.Cleanup(func() { srv.Shutdown() }) //nolint:errcheck
	return "http://" + ln.Addr().String()
}

// startTimed serves handler on loopback and records how long each request
// spent in it, the server's share of the true latency.
func startTimed(tb testing.TB, handler fasthttp.RequestHandler) (url string, took func() []time.Duration) {
	tb.Helper()
	var mu sync.Mutex
	var d []time.Duration // guarded by mu
	url = serveLoopback(tb, func(ctx *fasthttp.RequestCtx) {
		t0 := time.Now()
		handler(ctx)
		mu.Lock()
		d = append(d, time.Since(t0))
		mu.Unlock()
	})
	return url, func() []time.Duration {
		mu.Lock()
		defer mu.Unlock()
		return append([]time.Duration(nil), d...)
	}
}

// nearestRank returns the ceil(q*N)-th smallest of d in milliseconds.
func nearestRank(d []time.Duration, q float64) float64 {
	slices.Sort(d)
	return float64(d[max(int(math.Ceil(q*float64(len(d))-1e-9)), 1)-1]) / 1e6
}

// roundTrips times n requests sent one at a time, each after an idle pause
// like the gaps between the generator's requests.
func roundTrips(tb testing.TB, url string, n int) []time.Duration {
	tb.Helper()
	client := &fasthttp.Client{}
	var req fasthttp.Request
	var resp fasthttp.Response
	req.SetRequestURI(url + "/metric")
	req.Header.SetMethod(fasthttp.MethodPost)
	req.SetBodyString(`{"rps":1,"cpu":1,"timestamp":1}`)
	d := make([]time.Duration, n)
	for i := range d {
		time.Sleep(3 * time.Millisecond)
		t0 := time.Now()
		if err := client.Do(&req, &resp); err != nil {
			tb.Fatal(err)
		}
		d[i] = time.Since(t0)
	}
	return d
}

// sleepLag is the baseline pacing: how late time.Sleep to each due time,
// 5 ms apart, wakes up, in milliseconds.
func sleepLag(n int) []time.Duration {
	d := make([]time.Duration, n)
	start := time.Now()
	for i := range d {
		at := start.Add(time.Duration(i+1) * 5 * time.Millisecond)
		time.Sleep(time.Until(at))
		d[i] = time.Since(at)
	}
	return d
}

// TestLatencyExcludesWakeUpLag sends at a low rate, where the runtime is
// idle between requests and time.Sleep wakes up to ~1 ms late, to servers
// that answer at once or after a 2 ms sleep, timing each request inside
// the server. The generator must send on time: send lag p50 <= 0.15 ms
// (sleeping to each due time gives ~0.55 ms) and p90 no worse than that
// sleeping, measured in the same try (an absolute p90 bound failed in CI,
// where other packages' race-enabled tests share the 2 cores). The
// reported latency must lie between the server's own time and that time
// plus the rest of a round trip, measured one request at a time, plus
// 0.4 ms (p50) or, at p90, 0.8 ms or time.Sleep's p90 in the same try if
// that is worse: a p90 of 200 requests carries the machine's scheduling
// noise, which CI's parallel race-enabled packages pushed to 1-3 ms. The
// p50 bounds still catch a generator that counts its own lag. The machine
// is shared, so a case gets six tries.
func TestLatencyExcludesWakeUpLag(t *testing.T) {
	const (
		lagP50             = 0.15     // ms
		slackP50, slackP90 = 0.4, 0.8 // ms
	)
	for _, c := range []struct {
		name    string
		handler fasthttp.RequestHandler
	}{
		{"instant", func(ctx *fasthttp.RequestCtx) {}},
		{"2ms", func(ctx *fasthttp.RequestCtx) { time.Sleep(2 * time.Millisecond) }},
	} {
		t.Run(c.name, func(t *testing.T) {
			var tries []string
			for try := range 6 { // the machine is shared: a quiet moment is enough
				url, took := startTimed(t, c.handler)
				rtt := roundTrips(t, url, 100)
				ovh := took() // becomes each round trip minus its time in the server
				for i := range ovh {
					ovh[i] = rtt[i] - ovh[i]
				}
				cfg := config{URL: url, Route: "metric", Rate: 200, Duration: time.Second, Grace: time.Second,
					Devices: 1, Batch: 1, Metrics: 1, Connections: 8, Quiet: true}
				s := run(cfg, io.Discard)
				d := took()[len(rtt):]
				if s.OK != s.Requests || s.Requests == 0 || uint64(len(d)) != s.Requests {
					t.Fatalf("sent %d, ok %d, server saw %d", s.Requests, s.OK, len(d))
				}
				l, lag := s.LatencyMS, s.SendLagMS
				lagP90 := max(nearestRank(sleepLag(100), 0.9), 0.45)
				if lag.P50 > lag.P90 || lag.P90 > lag.P99 || lag.P99 > lag.Max || lag.P50 > l.P50 || lag.P90 > l.P90 {
					t.Fatalf("send lag %+v implausible next to latency %+v", lag, l)
				}
				slack90 := max(slackP90, lagP90)
				sp50, sp90, op50, op90 := nearestRank(d, 0.5), nearestRank(d, 0.9), nearestRank(ovh, 0.5), nearestRank(ovh, 0.9)
				msg := fmt.Sprintf("try %d: p50 %.3fms p90 %.3fms, send lag p50 %.3fms p90 %.3fms (time.Sleep's p90 %.3fms); in the server p50 %.3fms p90 %.3fms, "+
					"rest of a round trip p50 %.3fms p90 %.3fms", try, l.P50, l.P90, lag.P50, lag.P90, lagP90, sp50, sp90, op50, op90)
				t.Log(msg)
				if lag.P50 <= lagP50 && lag.P90 <= lagP90 && l.P50 >= sp50 && l.P90 >= sp90 &&
					l.P50 <= sp50+op50+slackP50 && l.P90 <= sp90+op90+slack90 {
					return
				}
				tries = append(tries, msg)
			}
			t.Fatalf("want send lag p50 <= %.2fms, p90 <= time.Sleep's (at least 0.45ms), and latency from the server's own time to %.2f/%.2fms "+
				"above it (or time.Sleep's p90) plus the rest of a round trip:\n%s", lagP50, slackP50, slackP90, strings.Join(tries, "\n"))
		})
	}
}

// startStalled accepts connections and reads requests but never answers.
func startStalled(tb testing.TB) string {
	tb.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		tb.Fatal(err)
	}
	var wg sync.WaitGroup
	tb.Cleanup(func() { ln.Close(); wg.Wait() })
	wg.Go(func() {
		for {
			conn, err := ln.Accept()
			if err != nil {
				return
			}
			wg.Go(func() {
				defer conn.Close()
				// Until the client gives up, or the test.
				conn.SetDeadline(time.Now().Add(10 * time.Second)) //nolint:errcheck
				io.Copy(io.Discard, conn)                          //nolint:errcheck
			})
		}
	})
	return "http://" + ln.Addr().String()
}

// TestBoundedWhenConnectionsBusy runs against a server that never answers
// and one slower than -connections allow at the rate. Requests due while
// every connection is busy must be dropped and counted, not sent late; the
// run must end by Duration + Grace; requests still out then are errors
// ("interrupted"); and the counts must add up.
func TestBoundedWhenConnectionsBusy(t *testing.T) {
	slow, _ := startTimed(t, func(ctx *fasthttp.RequestCtx) { time.Sleep(50 * time.Millisecond) })
	for _, c := range []struct {
		name        string
		url         string
		interrupted bool // every sent request cut off at the grace
	}{
		{"never answers", startStalled(t), true},
		{"50ms answers, 2 connections", slow, false},
	} {
		t.Run(c.name, func(t *testing.T) {
			cfg := config{URL: c.url, Route: "metric", Rate: 100, Duration: time.Second, Grace: 300 * time.Millisecond,
				Devices: 1, Batch: 1, Metrics: 1, Connections: 2, Quiet: true, P95: time.Second, MaxErrorRate: 0.01}
			limit := cfg.Duration + cfg.Grace + 500*time.Millisecond
			t0 := time.Now()
			done := make(chan Summary, 1)
			go func() { done <- run(cfg, io.Discard) }()
			var s Summary
			select {
			case s = <-done:
			case <-time.After(limit + 3*time.Second):
				t.Fatalf("run still going after %s; want it done within %s", time.Since(t0).Round(time.Millisecond), limit)
			}
			took := time.Since(t0)
			t.Logf("%s: %+v", took, s)
			if took > limit {
				t.Errorf("run took %s; want at most %s", took, limit)
			}
			var byStatus uint64
			for _, n := range s.ErrorsByStatus {
				byStatus += n
			}
			if s.Scheduled != 100 || s.Requests+s.Dropped != s.Scheduled || s.OK+s.Errors != s.Requests || byStatus != s.Errors {
				t.Errorf("counts do not add up: scheduled %d, sent %d, dropped %d, ok %d, errors %d (%d by status)",
					s.Scheduled, s.Requests, s.Dropped, s.OK, s.Errors, byStatus)
			}
			// 2 connections at 50 ms serve at most ~40 of the 100 due in 1 s.
			if s.Dropped < 40 {
				t.Errorf("dropped %d; want most of the 100 due", s.Dropped)
			}
			if c.interrupted {
				if s.Requests != 2 || s.ErrorsByStatus["interrupted"] != s.Requests || s.ErrorRate != 1 {
					t.Errorf("want both connections' requests interrupted and error rate 1; got %+v", s)
				}
			} else if s.Errors != 0 || s.LatencyMS.Min < 50 {
				t.Errorf("want every sent request answered in >= 50 ms; got %d errors, min %.3fms", s.Errors, s.LatencyMS.Min)
			}
			if crossed := thresholds(cfg, s); len(crossed) == 0 || !strings.Contains(crossed[0], "error rate") {
				t.Errorf("want the error-rate threshold crossed by the drops; got %v", crossed)
			}
		})
	}
}

// TestSummaryReportsSendLagAndDrops checks the send lag line and the JSON
// keys the README documents.
func TestSummaryReportsSendLagAndDrops(t *testing.T) {
	s := Summary{Scheduled: 10, Requests: 8, Dropped: 2, OK: 7, Errors: 1, ErrorRate: 0.3,
		SendLagMS: SendLag{P50: 0.012, P90: 0.034, P99: 0.5, Max: 1.25}}
	b, err := json.Marshal(s)
	if err != nil {
		t.Fatal(err)
	}
	var top map[string]json.RawMessage
	if err := json.Unmarshal(b, &top); err != nil {
		t.Fatal(err)
	}
	for k, want := range map[string]string{"scheduled": "10", "requests": "8", "dropped": "2", "ok": "7", "errors": "1", "error_rate": "0.3"} {
		if got := string(top[k]); got != want {
			t.Errorf("%s: got %q; want %q", k, got, want)
		}
	}
	var lag map[string]float64
	if err := json.Unmarshal(top["send_lag_ms"], &lag); err != nil {
		t.Fatalf("send_lag_ms: %v in %s", err, b)
	}
	if want := (map[string]float64{"p50": 0.012, "p90": 0.034, "p99": 0.5, "max": 1.25}); !maps.Equal(lag, want) {
		t.Fatalf("send_lag_ms: got %v; want %v", lag, want)
	}
	var out bytes.Buffer
	printSummary(&out, config{Route: "metric", Connections: 4}, s)
	for _, want := range []string{
		"send lag (generator)........: p50=0.012ms p90=0.034ms p99=0.500ms max=1.250ms",
		"scheduled...................: 10 (8 sent, 2 dropped: due while all 4 connections were busy)",
		"errors......................: 1; with dropped, 30.000% of scheduled",
	} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("no %q in:\n%s", want, out.String())
		}
	}
}

func TestParseFlags(t *testing.T) {
	if _, err := parseFlags([]string{"-route", "bogus"}, io.Discard); err == nil {
		t.Fatal("bad route accepted")
	}
	if _, err := parseFlags([]string{"-rate", "0"}, io.Discard); err == nil {
		t.Fatal("zero rate accepted")
	}
	if _, err := parseFlags([]string{"-grace", "-1s"}, io.Discard); err == nil {
		t.Fatal("negative grace accepted")
	}
	c, err := parseFlags(nil, io.Discard)
	if err != nil || c.P95 != 500*time.Millisecond || c.MaxErrorRate != 0.01 || c.Batch != 1 || c.Grace != 5*time.Second {
		t.Fatalf("unexpected defaults %+v %v", c, err)
	}
}
