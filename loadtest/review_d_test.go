package main

// Failing tests from hostile review D of the load generator. Each test's
// comment states the defect and the README claim it contradicts.

import (
	"io"
	"net"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"ai-load-service/server"
	"ai-load-service/shard"

	"github.com/valyala/fasthttp"
)

// TestReviewDShortRunSchedulesNothing: request i is due at start + i/rate
// (README, "Load testing"), so every i with i/rate < -duration is due
// within the run: ceil(rate × duration) requests, and never none. run
// schedules uint64(rate × duration), rounded down (main.go:148): a run
// shorter than one interval schedules and sends nothing, reports 0 errors,
// crosses no threshold and exits 0, so a CI gate with -rate 1 -duration
// 500ms passes against a service that is down. Rate 1.5 for 1 s sends one
// request though two (at 0 and 0.667 s) are due.
func TestReviewDShortRunSchedulesNothing(t *testing.T) {
	for _, c := range []struct {
		rate     float64
		duration time.Duration
		want     uint64
	}{
		{1, 500 * time.Millisecond, 1},
		{1.5, time.Second, 2},
		{3, 500 * time.Millisecond, 2},
	} {
		// Nothing listens there: every request sent is a network error.
		cfg := config{URL: "http://127.0.0.1:1", Route: "metric", Rate: c.rate, Duration: c.duration, Grace: time.Second,
			Devices: 1, Batch: 1, Metrics: 1, Connections: 4, Quiet: true, P95: time.Second, MaxErrorRate: 0.01}
		s := run(cfg, io.Discard)
		if s.Scheduled != c.want {
			t.Errorf("-rate %g -duration %s against a closed port: scheduled %d, sent %d, errors %d, thresholds crossed %v (exit 0 when none); "+
				"want %d scheduled (due at i/rate < duration)", c.rate, c.duration, s.Scheduled, s.Requests, s.Errors, thresholds(cfg, s), c.want)
		}
	}
}

// startCounting serves 200s on loopback and counts the requests it gets
// and when the last one arrived.
func startCounting(tb testing.TB) (url string, count func() (uint64, time.Time)) {
	tb.Helper()
	var n atomic.Uint64
	var mu sync.Mutex
	var last time.Time
	url = serveLoopback(tb, func(ctx *fasthttp.RequestCtx) {
		n.Add(1)
		mu.Lock()
		last = time.Now()
		mu.Unlock()
	})
	return url, func() (uint64, time.Time) {
		mu.Lock()
		defer mu.Unlock()
		return n.Load(), last
	}
}

// TestReviewDSchedulerBehindSendsPastDuration: -rate is accepted up to 1e7
// (main.go:80). README: "Sending stops at -duration; requests still
// unanswered -grace later ... are counted as interrupted errors", and run
// "returns by c.Duration + c.Grace". The scheduler loop (main.go:260-275)
// walks every one of the rate×duration due times and never looks at the
// clock: when it cannot keep up (on this 2-core VM, 1e7/s), it hands out
// requests after -duration and even after -duration + -grace. Those handed
// out after the cutoff go to DoDeadline with a deadline already past,
// return ErrTimeout at once without reaching the network, and are counted
// as sent ("requests") and as "interrupted" errors: the summary reports
// hundreds of thousands of requests the service never saw, and an rps to
// match.
//
// Timing-dependent: it needs a scheduler slower than 1e7 iterations/s
// (about 120-170 ns each here).
func TestReviewDSchedulerBehindSendsPastDuration(t *testing.T) {
	url, count := startCounting(t)
	cfg := config{URL: url, Route: "metric", Rate: 1e7, Duration: time.Second, Grace: 0,
		Devices: 1, Batch: 1, Metrics: 1, Connections: 8, Quiet: true}
	start := time.Now()
	s := run(cfg, io.Discard)
	took := time.Since(start)
	time.Sleep(100 * time.Millisecond)
	got, last := count()
	t.Logf("took %s; scheduled %d, requests (sent) %d, dropped %d, ok %d, errors %v, rps %.0f; the server got %d, the last %s after start",
		took.Round(time.Millisecond), s.Scheduled, s.Requests, s.Dropped, s.OK, s.ErrorsByStatus, s.RPS, got, last.Sub(start).Round(time.Millisecond))
	if limit := cfg.Duration + cfg.Grace + 200*time.Millisecond; took > limit {
		t.Errorf("run took %s; README: it returns by -duration + -grace (%s)", took.Round(time.Millisecond), cfg.Duration+cfg.Grace)
	}
	// At most one request per connection can be cut off in flight.
	if s.Requests > got+uint64(cfg.Connections) {
		t.Errorf("summary says %d requests sent, the server received %d: %d counted as sent never left the generator (errors %v)",
			s.Requests, got, s.Requests-got, s.ErrorsByStatus)
	}
}

// TestReviewDIdleClosedConnectionsCountedAsErrors: the service closes a
// keep-alive connection that waits longer than IDLE_TIMEOUT, quietly, as
// HTTP allows (README: "then a quiet close"). The generator's
// fasthttp.Client takes idle connections oldest first (FIFO, fasthttp's
// default) and does not notice one the server closed, so once a stall has
// opened more connections than rate × IDLE_TIMEOUT, each of them carries
// one more request after the service closed it: the request fails without
// reaching the service (a POST is not retried) and is counted as a
// "network" error of the service. The run fails its error-rate threshold
// against a service that answered every request it received. (Go's
// net/http, as k6 uses, drops an idle connection once it sees the
// server's FIN.)
//
// Here the handler stalls 200 ms for the first 300 ms (about 10 requests
// in flight, so about 10 connections), then answers at once, at 50 req/s,
// with IDLE_TIMEOUT 100 ms.
func TestReviewDIdleClosedConnectionsCountedAsErrors(t *testing.T) {
	set := shard.New(shard.Options{Shards: 2})
	h := server.New(server.Options{Shards: set, Timeouts: server.Timeouts{Read: time.Second, Write: time.Second, Idle: 100 * time.Millisecond}})
	h.SetReady()
	var served atomic.Uint64
	start := time.Now()
	srv := h.NewServer()
	api := srv.Handler
	srv.Handler = func(ctx *fasthttp.RequestCtx) {
		if time.Since(start) < 300*time.Millisecond {
			time.Sleep(200 * time.Millisecond)
		}
		served.Add(1)
		api(ctx)
	}
	nl, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ln := h.Listen(nl)
	go srv.Serve(ln)                                            //nolint:errcheck
	t.Cleanup(func() { srv.Shutdown(); ln.Stop(); set.Stop() }) //nolint:errcheck
	cfg := config{URL: "http://" + ln.Addr().String(), Route: "metric", Rate: 50, Duration: 2 * time.Second, Grace: time.Second,
		Devices: 1, Batch: 1, Metrics: 1, Connections: 32, Quiet: true, P95: time.Second, MaxErrorRate: 0.01}
	start = time.Now()
	s := run(cfg, io.Discard)
	t.Logf("sent %d, ok %d, errors %v; the service handled %d", s.Requests, s.OK, s.ErrorsByStatus, served.Load())
	if s.Errors > 0 && served.Load() == s.OK {
		t.Errorf("%d of %d requests counted as errors (%v), crossing %v, but the service answered every request it received (%d, all 200): "+
			"they went out on keep-alive connections it had closed after IDLE_TIMEOUT",
			s.Errors, s.Requests, s.ErrorsByStatus, thresholds(cfg, s), served.Load())
	}
}

// countingListener counts the connections accepted and not yet closed.
type countingListener struct {
	net.Listener
	open atomic.Int64
}

type countedConn struct {
	net.Conn
	l    *countingListener
	once sync.Once
}

func (l *countingListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err != nil {
		return nil, err
	}
	l.open.Add(1)
	return &countedConn{Conn: c, l: l}, nil
}

func (c *countedConn) Close() error {
	c.once.Do(func() { c.l.open.Add(-1) })
	return c.Conn.Close()
}

// TestReviewDRunLeavesConnectionsOpen: run builds its own fasthttp.Client
// (main.go:141) and returns without closing its connections
// (CloseIdleConnections is never called). Every run leaves up to
// -connections keep-alive connections, their file descriptors and the
// client's reaper goroutine behind until fasthttp's MaxIdleConnDuration
// (10 s) passes; the service under test sees them in
// http_open_connections long after the load ended. The timerfd is closed
// (pacer.close): that part holds.
func TestReviewDRunLeavesConnectionsOpen(t *testing.T) {
	nl, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ln := &countingListener{Listener: nl}
	srv := &fasthttp.Server{Handler: func(ctx *fasthttp.RequestCtx) { time.Sleep(time.Millisecond) }}
	go srv.Serve(ln)                     //nolint:errcheck
	t.Cleanup(func() { srv.Shutdown() }) //nolint:errcheck
	cfg := config{URL: "http://" + nl.Addr().String(), Route: "metric", Rate: 2000, Duration: 300 * time.Millisecond, Grace: time.Second,
		Devices: 1, Batch: 1, Metrics: 1, Connections: 16, Quiet: true}
	s := run(cfg, io.Discard)
	time.Sleep(time.Second)
	if n := ln.open.Load(); n > 0 {
		t.Errorf("1 s after run returned (%d requests sent), the server still has %d of its connections open", s.Requests, n)
	}
}
