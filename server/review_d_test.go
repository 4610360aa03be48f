package server

// Failing tests from hostile review D (after the fixes of reviews A and B).
// Each test's comment states the defect and the claim it contradicts.

import (
	"bytes"
	"io"
	"net"
	"os"
	"strings"
	"testing"
	"time"

	"ai-load-service/shard"
)

// reviewDServer serves the API wired as main wires it (NewServer, Listen)
// with opts (Shards is filled in) and returns its address and handler.
func reviewDServer(tb testing.TB, opts Options) (string, *Handler) {
	tb.Helper()
	ln, h := serveAPI(tb, "127.0.0.1:0", opts, shard.Options{}, nil)
	return ln.Addr().String(), h
}

// reviewDRaw writes req on a new connection and returns what comes back
// until the server closes it or limit passes.
func reviewDRaw(tb testing.TB, addr, req string, limit time.Duration) string {
	tb.Helper()
	c, err := net.Dial("tcp", addr)
	if err != nil {
		tb.Fatal(err)
	}
	defer c.Close()
	if _, err := io.WriteString(c, req); err != nil {
		tb.Fatal(err)
	}
	_ = c.SetReadDeadline(time.Now().Add(limit))
	b, _ := io.ReadAll(c)
	return string(b)
}

// TestReviewDPprofCmdlineBypass: /debug/pprof/cmdline is refused because
// it echoes os.Args, which may hold -redis-password (server.go:141-148).
// The refusal looks at the router's catch-all value, taken from the path as
// sent (PathOriginal), but pprofhandler picks the profile from ctx.Path(),
// fasthttp's normalised and decoded path. Any path that normalises to
// /debug/pprof/cmdline without starting the catch-all with "cmdline"
// (a doubled slash, a dot segment, a percent escape) is served the command
// line.
func TestReviewDPprofCmdlineBypass(t *testing.T) {
	addr, _ := reviewDServer(t, Options{Pprof: true})
	marker := []byte(os.Args[0]) // the command line's first word
	if got := reviewDRaw(t, addr, "GET /debug/pprof/cmdline HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n", 5*time.Second); !strings.HasPrefix(got, "HTTP/1.1 404") {
		t.Fatalf("the plain path is refused, as fixed; got %.80q", got)
	}
	for _, target := range []string{
		"/debug/pprof//cmdline",
		"/debug/pprof/x/../cmdline",
		"/debug/pprof/./cmdline",
		"/debug/pprof/%63mdline",
	} {
		got := reviewDRaw(t, addr, "GET "+target+" HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n", 5*time.Second)
		if strings.HasPrefix(got, "HTTP/1.1 200") && bytes.Contains([]byte(got), marker) {
			i := strings.Index(got, "\r\n\r\n")
			t.Errorf("GET %s: 200 with the process's command line (which may hold -redis-password): %.120q", target, got[i+4:])
		}
	}
}

// TestReviewDTrailingCRLFKeepAliveCutByReadTimeout: many small HTTP
// clients (embedded ones especially) end a POST body with an extra CRLF,
// which RFC 9112 §2.2 asks servers to ignore before the next request line.
// The service answers the request and then holds the keep-alive
// connection to READ_TIMEOUT instead of IDLE_TIMEOUT, and counts its quiet
// close as http_connection_timeouts_total{phase="read"}, a request cut off,
// though no request was in progress. README: IDLE_TIMEOUT is "how long a
// keep-alive connection may wait for its next request; then a quiet
// close", and phase="read" counts connections cut off by READ_TIMEOUT.
// Cause: the CRLF stays in fasthttp's read buffer, so its Peek for the
// next request returns at once and fasthttp reports StateActive; active()
// (conns.go:268-280) starts a read phase there, and the flush of the
// response (conns.go:309-311) restores it. With the defaults (30 s, 60 s)
// such a client's connections close at 30 s, each counted as a read
// timeout.
func TestReviewDTrailingCRLFKeepAliveCutByReadTimeout(t *testing.T) {
	const read, idle = 150 * time.Millisecond, 1500 * time.Millisecond
	ln, ms, set := timeoutServer(t, Timeouts{Read: read, Write: 5 * time.Second, Idle: idle}, nil)
	body := `{"device":"crlf","metrics":{"t":1}}`
	c, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	start := time.Now()
	if _, err := io.WriteString(c, reviewPost(body, len(body))+"\r\n"); err != nil {
		t.Fatal(err)
	}
	_ = c.SetReadDeadline(start.Add(3 * idle))
	got, _ := io.ReadAll(c)
	took := time.Since(start)
	if !strings.HasPrefix(string(got), "HTTP/1.1 200") || set.Devices() != 1 {
		t.Fatalf("want the request answered 200 and applied; got %q", got)
	}
	if r, i := timeouts(ms, "read"), timeouts(ms, "idle"); took < idle*3/4 || r != 0 || i != 1 {
		t.Errorf("keep-alive connection closed %v after its request was answered (READ_TIMEOUT %v, IDLE_TIMEOUT %v); "+
			"timeouts counted: read %d, idle %d; want a close at IDLE_TIMEOUT counted as idle",
			took.Round(time.Millisecond), read, idle, r, i)
	}
}

// TestReviewDAbsoluteFormCutOffCountedAsOther: a request in absolute form
// (POST http://host/api/v1/ingest, which proxies send and RFC 9112 §3.2.2
// requires servers to accept) is routed to /api/v1/ingest and counted
// there when it succeeds, but when fasthttp rejects it mid-body (a 408, a
// broken chunked body) the request-line capture (conns.go:203-215) takes
// "http://x/api/v1/ingest" as its path, finds no route of that name
// (server.go:252-256) and counts it as route="other". README: such
// requests count "under the route whose path their request line names",
// "other" only when the path matches only a parameterised route or could
// not be read.
func TestReviewDAbsoluteFormCutOffCountedAsOther(t *testing.T) {
	const read = 150 * time.Millisecond
	ln, _, _ := timeoutServer(t, Timeouts{Read: read, Write: 5 * time.Second, Idle: 5 * time.Second}, nil)
	addr := ln.Addr().String()
	body := `{"device":"abs","metrics":{"t":1}}`
	for _, c := range []struct{ req, status string }{
		{"POST http://x/api/v1/ingest HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Length: 34\r\n\r\n" + body, "200"},
		{"POST http://x/api/v1/ingest HTTP/1.1\r\nHost: x\r\nContent-Length: 60\r\n\r\n" + body, "408"},
		{"POST http://x/api/v1/ingest HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n", "400"},
	} {
		if got := reviewDRaw(t, addr, c.req, 5*time.Second); !strings.HasPrefix(got, "HTTP/1.1 "+c.status) {
			t.Fatalf("%.60q: got %.60q; want %s", c.req, got, c.status)
		}
	}
	page := reviewDRaw(t, addr, "GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n", 5*time.Second)
	for _, want := range []string{
		`requests_total{route="/api/v1/ingest",method="POST",status="200"} 1`,
		`requests_total{route="/api/v1/ingest",method="POST",status="408"} 1`,
		`requests_total{route="/api/v1/ingest",method="POST",status="400"} 1`,
	} {
		if !strings.Contains(page, want) {
			t.Errorf("/metrics lacks %s", want)
		}
	}
	if t.Failed() {
		for _, l := range strings.Split(page, "\n") {
			if strings.HasPrefix(l, "requests_total") {
				t.Log(l)
			}
		}
	}
}

// TestReviewDPprofRouteAnyMethodUncounted: with PPROF=true the profiler
// route is registered with r.ANY and a bare handler (server.go:141), not
// as an endpoint: a PUT or DELETE of a profile is served 200 rather than a
// JSON 405 with Allow, and no pprof request appears in requests_total or
// request_duration_seconds. README (Metrics): requests_total counts
// requests "by route pattern (other for unmatched)"; every other route
// answers a wrong method with 405 and counts it.
func TestReviewDPprofRouteAnyMethodUncounted(t *testing.T) {
	addr, _ := reviewDServer(t, Options{Pprof: true})
	for _, m := range []string{"GET", "PUT", "DELETE"} {
		got := reviewDRaw(t, addr, m+" /debug/pprof/heap HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Length: 0\r\n\r\n", 5*time.Second)
		if m != "GET" && !strings.HasPrefix(got, "HTTP/1.1 405") {
			t.Errorf("%s /debug/pprof/heap: got %.40q; want 405 with Allow", m, got)
		}
	}
	page := reviewDRaw(t, addr, "GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n", 5*time.Second)
	if !strings.Contains(page, "pprof") {
		t.Errorf("3 requests to /debug/pprof/heap; /metrics counts none of them (no series names pprof, none under other)")
	}
}
