package main

// Failing tests from hostile review E of the fixes for review D (load
// generator). Each comment says what is claimed, what happens, and why.
// Run: go test ./loadtest -run 'ReviewE' -count=1 -v

import (
	"bytes"
	"io"
	"testing"
	"time"
)

// TestReviewELowRateReportsInflatedRPS: with review D's ceil, a run at a
// low or fractional rate now sends requests (-rate 0.3 -duration 2s: one,
// due at 0; -rate 0.5 -duration 3s: two, at 0 and 2 s). The counts hold
// (scheduled = sent + dropped, sent = ok + errors), but the summary's
// rate divides by the time until the last answer (main.go:296, secs =
// time since start when run returns), not by the run's -duration: the one
// request of the first run is reported as hundreds a second, and the
// second run at twice its rate (1.0/s for 0.5/s). printSummary also shows
// the target rounded to an integer ("target 0/s" for 0.3).
func TestReviewELowRateReportsInflatedRPS(t *testing.T) {
	url, _ := startCounting(t)
	for _, c := range []struct {
		rate float64
		d    time.Duration
	}{{0.3, 2 * time.Second}, {0.5, 3 * time.Second}} {
		cfg := config{URL: url, Route: "metric", Rate: c.rate, Duration: c.d, Grace: time.Second,
			Devices: 1, Batch: 1, Metrics: 1, Connections: 1, Quiet: true, P95: time.Second, MaxErrorRate: 0.01}
		s := run(cfg, io.Discard)
		var out bytes.Buffer
		printSummary(&out, cfg, s)
		line, _, _ := bytes.Cut(bytes.TrimLeft(bytes.SplitN(out.Bytes(), []byte("requests"), 2)[1], "."), []byte("\n"))
		t.Logf("-rate %g -duration %v: scheduled %d sent %d ok %d; seconds %.3f; summary: requests%s",
			c.rate, c.d, s.Scheduled, s.Requests, s.OK, s.Seconds, line)
		if s.Scheduled != s.Requests+s.Dropped || s.Requests != s.OK+s.Errors {
			t.Errorf("count invariants broken: %+v", s)
		}
		if honest := float64(s.Requests) / c.d.Seconds(); s.RPS > 1.2*honest {
			t.Errorf("-rate %g -duration %v: %d requests reported at %.1f/s; over the run they were %.2f/s",
				c.rate, c.d, s.Requests, s.RPS, honest)
		}
	}
}
