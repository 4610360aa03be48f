package server

// Regression tests from a hostile review of the /metrics page: each comment tells
// the defect as it was found; the test checks that it stays fixed.

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"ai-load-service/shard"
)

func reviewGauge(tb testing.TB, page []byte, series string) float64 {
	tb.Helper()
	for _, line := range strings.Split(string(page), "\n") {
		if rest, ok := strings.CutPrefix(line, series+" "); ok {
			v, err := strconv.ParseFloat(rest, 64)
			if err != nil {
				tb.Fatalf("%s: %v", line, err)
			}
			return v
		}
	}
	tb.Fatalf("/metrics has no series %s:\n%s", series, page)
	return 0
}

// TestReviewRollingAverageDriftsAfterLargeValue: with default settings, a
// device sends one large reading (|v| <= 1e150 is valid input) and then 60
// ordinary ones, so its window (W=50) holds only ordinary values again.
// Its only stream's mean is 7.3 (the device route says so), but
// rolling_average_current{metric} stays wrong for good: each sample adds
// (new mean - old mean) to the compensated per-name sum, and that
// difference is rounded before compensation sees it, so the low digits of
// the old sum are lost when a large mean steps down.
func TestReviewRollingAverageDriftsAfterLargeValue(t *testing.T) {
	s := MustOpenServer(t, shard.Options{Shards: 2}, 1<<20)
	var b strings.Builder
	b.WriteString("[" + sample("d", 1, `"x":1e17,"y":1e150`))
	for i := range 60 {
		b.WriteString("," + sample("d", int64(2+i), `"x":7.3,"y":7.3`))
	}
	b.WriteString("]")
	s.json(t, "POST", "/api/v1/ingest", b.String(), 200)
	d := s.json(t, "GET", "/api/v1/devices/d", "", 200)
	ms := d["metrics"].(map[string]any)
	_, page := s.do(t, "GET", "/metrics", "")
	for _, name := range []string{"x", "y"} {
		want := ms[name].(map[string]any)["mean"].(float64)
		got := reviewGauge(t, page, fmt.Sprintf(`rolling_average_current{metric=%q}`, name))
		if got != want {
			t.Errorf("rolling_average_current{metric=%q} = %g; its only stream's window mean is %g", name, got, want)
		}
	}
}

// TestReviewRejectedPostCountedAsGet: a POST whose chunked body runs over
// the limit, and a POST with two Content-Length headers, are answered by
// the ErrorHandler after fasthttp reset the request; requests_total then
// records them with method="GET", a method the client never used (the
// reset request's default). README: requests_total is "by route pattern
// ..., method and status".
func TestReviewRejectedPostCountedAsGet(t *testing.T) {
	s := MustOpenServer(t, shard.Options{Shards: 2}, 1024)
	addr := strings.TrimPrefix(s.URL, "http://")
	chunk := "400\r\n" + strings.Repeat("a", 1024) + "\r\n"
	for _, req := range []string{
		"POST /api/v1/ingest HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n" + strings.Repeat(chunk, 3) + "0\r\n\r\n",
		"POST /api/v1/ingest HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\n{}",
	} {
		c, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		_, _ = io.WriteString(c, req)
		_ = c.SetReadDeadline(time.Now().Add(5 * time.Second))
		got, _ := io.ReadAll(c)
		c.Close()
		if !bytes.HasPrefix(got, []byte("HTTP/1.1 4")) {
			t.Fatalf("want a 4xx; got %q", got)
		}
	}
	_, page := s.do(t, "GET", "/metrics", "")
	if m := regexp.MustCompile(`requests_total\{[^}]*method="GET"[^}]*\} \d+`).FindAll(page, -1); len(m) > 0 {
		t.Fatalf("only POSTs were sent, yet /metrics counts GETs: %s", bytes.Join(m, []byte("; ")))
	}
}

// TestReviewOptionsStarUncounted: "OPTIONS *" (and "OPTIONS /*") are
// answered by the router's built-in OPTIONS handling (HandleOPTIONS is on
// by default and routes() leaves it on): 200, an empty non-JSON body, an
// Allow header naming the pseudo-method "*", and no requests_total or
// request_duration_seconds count at all. README: every response is JSON
// except / and /metrics, and every request is counted (unmatched ones
// under route="other").
func TestReviewOptionsStarUncounted(t *testing.T) {
	s := MustOpenServer(t, shard.Options{Shards: 2}, 1<<20)
	addr := strings.TrimPrefix(s.URL, "http://")
	before := requestsTotal(t, s)
	for _, target := range []string{"*", "/*"} {
		c, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		_, _ = io.WriteString(c, "OPTIONS "+target+" HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
		_ = c.SetReadDeadline(time.Now().Add(5 * time.Second))
		got, _ := io.ReadAll(c)
		c.Close()
		head, body, _ := strings.Cut(string(got), "\r\n\r\n")
		if !json.Valid([]byte(body)) || strings.Contains(head, "Allow: *") {
			t.Errorf("OPTIONS %s: want a JSON answer and no Allow: *; got %q", target, got)
		}
	}
	// The scrape that read "before" is counted after it was written: +1.
	if after := requestsTotal(t, s); after-before-1 != 2 {
		t.Errorf("requests_total rose by %d for 2 OPTIONS requests (the first scrape discounted)", after-before-1)
	}
}

func requestsTotal(tb testing.TB, s *testServer) int {
	tb.Helper()
	_, page := s.do(tb, "GET", "/metrics", "")
	n := 0
	for _, m := range regexp.MustCompile(`(?m)^requests_total\{[^}]*\} (\d+)$`).FindAllSubmatch(page, -1) {
		v, _ := strconv.Atoi(string(m[1]))
		n += v
	}
	return n
}
