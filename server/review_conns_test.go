package server

// Regression tests from a hostile review of connection phases (conns.go): each comment tells
// the defect as it was found; the test checks that it stays fixed.

import (
	"io"
	"net"
	"strconv"
	"strings"
	"testing"
	"time"
)

// reviewExchange writes send on a new connection in one write (so that the
// server reads it in one Read) and returns what the server writes until it
// closes the connection or limit passes, and how long that took.
func reviewExchange(tb testing.TB, addr, send string, limit time.Duration) (string, time.Duration, bool) {
	tb.Helper()
	c, err := net.Dial("tcp", addr)
	if err != nil {
		tb.Fatal(err)
	}
	defer c.Close()
	start := time.Now()
	if _, err := io.WriteString(c, send); err != nil {
		tb.Fatal(err)
	}
	_ = c.SetReadDeadline(start.Add(limit))
	b, err := io.ReadAll(c)
	return string(b), time.Since(start), err == nil // err: limit passed, connection still open
}

const reviewGood = `{"device":"pipe-1","metrics":{"t":1}}`

func reviewPost(body string, contentLength int) string {
	return "POST /api/v1/ingest HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: " +
		strconv.Itoa(contentLength) + "\r\n\r\n" + body
}

// TestReviewPipelinedBodyHeldForever: a client pipelines a whole request
// and, in the same packet, the header of a second one with only part of
// its body, then stalls. READ_TIMEOUT should cut the second request off
// (408 and close) within a tick of the bound, as it does for the same
// request on its own (TestSlowRequestGets408). Instead the connection is
// held open indefinitely, unbounded by READ_TIMEOUT and IDLE_TIMEOUT, and
// the 200 for the first request (which was applied) is never delivered.
func TestReviewPipelinedBodyHeldForever(t *testing.T) {
	const read, idle = 150 * time.Millisecond, 400 * time.Millisecond
	ln, ms, set := timeoutServer(t, Timeouts{Read: read, Write: 5 * time.Second, Idle: idle}, nil)
	send := reviewPost(reviewGood, len(reviewGood)) +
		reviewPost(`{"device":"pipe-2","met`, 60) // 60 declared, 23 sent
	limit := 3 * time.Second // 20x READ_TIMEOUT, 7.5x IDLE_TIMEOUT
	got, took, closed := reviewExchange(t, ln.Addr().String(), send, limit)
	if set.Devices() != 1 {
		t.Errorf("want the first request applied (1 device); got %d devices", set.Devices())
	}
	if !closed {
		t.Fatalf("connection still open %v after a stalled pipelined request (READ_TIMEOUT %v, IDLE_TIMEOUT %v); "+
			"client received %q (the first request's 200 was applied but never sent); timeouts counted: read %d idle %d",
			took.Round(time.Millisecond), read, idle, got, timeouts(ms, "read"), timeouts(ms, "idle"))
	}
	if !strings.HasPrefix(got, "HTTP/1.1 200") || !strings.Contains(got, "HTTP/1.1 408") {
		t.Fatalf("want the first request's 200, then a 408; got %q", got)
	}
}

// TestReviewExpectContinueBodyBoundedByIdle: after "100 Continue" the
// server waits for the body. README: READ_TIMEOUT bounds a request "from
// its first byte until it is read"; the 408 the client gets even says
// "request not received within <READ_TIMEOUT>". But conn.Write moves every
// connection to the idle phase after any write, the interim 100 Continue
// included, so the body wait is bounded by IDLE_TIMEOUT and counted as
// phase="idle".
func TestReviewExpectContinueBodyBoundedByIdle(t *testing.T) {
	const read, idle = 150 * time.Millisecond, 2 * time.Second
	ln, ms, _ := timeoutServer(t, Timeouts{Read: read, Write: 5 * time.Second, Idle: idle}, nil)
	send := "POST /api/v1/ingest HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\nContent-Length: 30\r\n\r\n"
	got, took, closed := reviewExchange(t, ln.Addr().String(), send, 5*time.Second)
	if !closed || !strings.Contains(got, "100 Continue") || !strings.Contains(got, "HTTP/1.1 408") {
		t.Fatalf("want 100 Continue then a 408; got %q (closed %v)", got, closed)
	}
	tick := read / 16
	if took > read+tick+300*time.Millisecond {
		t.Errorf("408 came %v after the header; READ_TIMEOUT is %v (IDLE_TIMEOUT %v): the body wait was bounded by IDLE_TIMEOUT",
			took.Round(time.Millisecond), read, idle)
	}
	if r, i := timeouts(ms, "read"), timeouts(ms, "idle"); r != 1 || i != 0 {
		t.Errorf("http_connection_timeouts_total: read %d idle %d; want read 1 idle 0 (a request cut off mid-body, answered 408)", r, i)
	}
}

// TestReviewPipelinedPartialHeaderBoundedByIdle: a whole request plus the
// first line of a second one in one packet, then a stall. Such bytes, read
// with the request before them, may also be the CRLF clients send after a
// body (TestReviewDTrailingCRLFKeepAliveCutByReadTimeout), which fasthttp
// skips and the connection cannot tell apart: they are held to
// IDLE_TIMEOUT, as a connection waiting for its next request, and counted
// idle. Once another byte of the request arrives, READ_TIMEOUT runs from
// it: the second half of the test.
func TestReviewPipelinedPartialHeaderBoundedByIdle(t *testing.T) {
	const read, idle = 150 * time.Millisecond, 600 * time.Millisecond
	ln, ms, _ := timeoutServer(t, Timeouts{Read: read, Write: 5 * time.Second, Idle: idle}, nil)
	send := reviewPost(reviewGood, len(reviewGood)) + "POST /api/v1/ingest HTTP/1.1\r\nHost: x\r\n"
	got, took, closed := reviewExchange(t, ln.Addr().String(), send, 5*time.Second)
	if !closed || !strings.HasPrefix(got, "HTTP/1.1 200") || !strings.Contains(got, "HTTP/1.1 408") {
		t.Fatalf("want a 200 then a 408; got %q (closed %v)", got, closed)
	}
	tick := read / 16
	// Phases are stamped with the listener's coarse clock, which lags by up
	// to a tick: the cut may come that much before the bound.
	if took < idle-tick || took > idle+tick+300*time.Millisecond {
		t.Errorf("408 for the half-sent pipelined request came after %v; IDLE_TIMEOUT is %v",
			took.Round(time.Millisecond), idle)
	}
	if r, i := timeouts(ms, "read"), timeouts(ms, "idle"); r != 0 || i != 1 {
		t.Errorf("http_connection_timeouts_total: read %d idle %d; want read 0 idle 1", r, i)
	}

	// One more byte of the request: from it, the read bound.
	c, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if _, err := io.WriteString(c, send); err != nil {
		t.Fatal(err)
	}
	time.Sleep(100 * time.Millisecond)
	start := time.Now()
	if _, err := io.WriteString(c, "X-More: 1\r\n"); err != nil {
		t.Fatal(err)
	}
	_ = c.SetReadDeadline(time.Now().Add(5 * time.Second))
	b, _ := io.ReadAll(c)
	if took := time.Since(start); !strings.Contains(string(b), "HTTP/1.1 408") || took > read+tick+300*time.Millisecond {
		t.Errorf("after another byte: %q after %v; want a 408 within READ_TIMEOUT %v", b, took.Round(time.Millisecond), read)
	}
	if r := timeouts(ms, "read"); r != 1 {
		t.Errorf("read timeouts %d; want 1", r)
	}
}
