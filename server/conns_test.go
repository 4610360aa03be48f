package server

import (
	"bufio"
	"bytes"
	"io"
	"net"
	"net/http"
	"runtime"
	"strings"
	"testing"
	"time"

	"ai-load-service/shard"

	"github.com/VictoriaMetrics/metrics"
	"github.com/valyala/fasthttp"
)

func TestOverdue(t *testing.T) {
	const ms = int64(time.Millisecond)
	at := func(since int64, phase int64) int64 { return since<<stateShift | phase }
	cases := []struct {
		name       string
		s          int64
		now, limit int64
		want       bool
	}{
		{"within bound", at(10*ms, phaseRead), 50 * ms, 100 * ms, false},
		{"at bound", at(10*ms, phaseRead), 110 * ms, 100 * ms, true},
		{"past bound", at(10*ms, phaseIdle), 500 * ms, 100 * ms, true},
		{"unbounded phase", at(0, phaseWrite), 1 << 50, 0, false},
		{"already cut off", at(0, phaseRead) | firedBit, 500 * ms, 100 * ms, false},
		{"stamped after now", at(60*ms, phaseNew), 50 * ms, 100 * ms, false},
	}
	for _, c := range cases {
		if got := overdue(c.s, c.now, c.limit); got != c.want {
			t.Errorf("%s: overdue = %v; want %v", c.name, got, c.want)
		}
	}
}

// timeoutServer serves the API behind a Listener with t; wrap, when not
// nil, gets the API's handler and returns the one to serve.
func timeoutServer(tb testing.TB, t Timeouts, wrap func(api fasthttp.RequestHandler) fasthttp.RequestHandler) (*Listener, *metrics.Set, *shard.Set) {
	tb.Helper()
	ln, h := serveAPI(tb, "127.0.0.1:0", Options{Timeouts: t}, shard.Options{}, wrap)
	return ln, h.ms, h.set
}

func timeouts(ms *metrics.Set, phase string) uint64 {
	return ms.GetOrCreateCounter(`http_connection_timeouts_total{phase="` + phase + `"}`).Get()
}

// A request that does not arrive whole within Read gets a 408 naming the
// setting, the connection closes, and nothing is stored.
func TestSlowRequestGets408(t *testing.T) {
	const read = 150 * time.Millisecond
	ln, ms, set := timeoutServer(t, Timeouts{Read: read, Write: 5 * time.Second, Idle: 5 * time.Second}, nil)
	cases := []struct{ name, send string }{
		{"silent connection", ""},
		{"headers cut", "POST /api/v1/ingest HTTP/1.1\r\nHost: x\r\nContent-Le"},
		{"body cut", "POST /api/v1/ingest HTTP/1.1\r\nHost: x\r\nContent-Length: 60\r\n\r\n" + `{"device":"slow","metrics":{"t":1`},
	}
	for i, c := range cases {
		start := time.Now()
		resp := rawExchange(t, ln.Addr().String(), c.send, 5*time.Second)
		took := time.Since(start)
		if !strings.HasPrefix(resp, "HTTP/1.1 408") || !strings.Contains(resp, "READ_TIMEOUT") {
			t.Fatalf("%s: want a 408 naming READ_TIMEOUT, then close; got %q", c.name, resp)
		}
		if took < read*3/4 {
			t.Errorf("%s: cut off after %v; the bound is %v", c.name, took, read)
		}
		if got := timeouts(ms, "read"); got != uint64(i+1) {
			t.Errorf("%s: read timeouts counted %d; want %d", c.name, got, i+1)
		}
	}
	if set.Devices() != 0 {
		t.Fatalf("a cut-off request stored %d devices", set.Devices())
	}
}

// rawExchange writes send on a new connection and returns everything the
// server writes until it closes the connection.
func rawExchange(tb testing.TB, addr, send string, limit time.Duration) string {
	tb.Helper()
	c, err := net.Dial("tcp", addr)
	if err != nil {
		tb.Fatal(err)
	}
	defer c.Close()
	if _, err := io.WriteString(c, send); err != nil {
		tb.Fatal(err)
	}
	_ = c.SetReadDeadline(time.Now().Add(limit))
	b, err := io.ReadAll(c)
	if err != nil {
		tb.Fatalf("no close within %v: %v (read %q)", limit, err, b)
	}
	return string(b)
}

// A keep-alive connection waiting longer than Idle is closed without a
// response, while one that keeps sending requests, each within Read, stays.
func TestIdleAndBusyConnections(t *testing.T) {
	const bound = 120 * time.Millisecond
	ln, ms, set := timeoutServer(t, Timeouts{Read: bound, Write: bound, Idle: bound}, nil)
	c, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	br := bufio.NewReader(c)
	body := `{"device":"busy","metrics":{"t":1}}`
	req := "POST /api/v1/ingest HTTP/1.1\r\nHost: x\r\nContent-Length: 35\r\n\r\n"
	start, idle := time.Now(), time.Now()
	for i := 0; time.Since(start) < 4*bound; i++ {
		time.Sleep(bound / 4)
		// Half the request, a pause under the bound, then the rest.
		if _, err := io.WriteString(c, req); err != nil {
			t.Fatalf("request %d: %v", i, err)
		}
		time.Sleep(bound / 4)
		if _, err := io.WriteString(c, body); err != nil {
			t.Fatalf("request %d: %v", i, err)
		}
		resp, err := http.ReadResponse(br, nil)
		if err != nil {
			t.Fatalf("request %d after %v: %v", i, time.Since(start), err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != 200 {
			t.Fatalf("request %d: status %d: %s", i, resp.StatusCode, b)
		}
		idle = time.Now()
	}
	if n := timeouts(ms, "read") + timeouts(ms, "idle"); n != 0 {
		t.Fatalf("a busy connection within its bounds was cut off %d times", n)
	}
	_ = c.SetReadDeadline(time.Now().Add(5 * time.Second))
	rest, err := io.ReadAll(br)
	if err != nil || len(rest) != 0 {
		t.Fatalf("idle connection: want a quiet close; got %q, %v", rest, err)
	}
	if took := time.Since(idle); took < bound*3/4 {
		t.Errorf("idle connection closed after %v; the bound is %v", took, bound)
	}
	if got := timeouts(ms, "idle"); got != 1 {
		t.Errorf("idle timeouts counted %d; want 1", got)
	}
	if got := set.Devices(); got != 1 {
		t.Errorf("devices = %d; want 1", got)
	}
}

// A client that stops reading a large response is cut off after Write.
func TestWriteTimeout(t *testing.T) {
	big := bytes.Repeat([]byte("x"), 32<<20)
	ln, ms, _ := timeoutServer(t, Timeouts{Read: 5 * time.Second, Write: 150 * time.Millisecond, Idle: 5 * time.Second},
		func(fasthttp.RequestHandler) fasthttp.RequestHandler {
			return func(ctx *fasthttp.RequestCtx) { ctx.SetBody(big) }
		})
	c, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if _, err := io.WriteString(c, "GET / HTTP/1.1\r\nHost: x\r\n\r\n"); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(10 * time.Second)
	for timeouts(ms, "write") == 0 || openConns(ln) != 0 {
		if time.Now().After(deadline) {
			t.Fatalf("write timeouts %d, open connections %d: the stalled write was not cut off", timeouts(ms, "write"), openConns(ln))
		}
		time.Sleep(10 * time.Millisecond)
	}
	_ = c.SetReadDeadline(time.Now().Add(5 * time.Second))
	n, _ := io.Copy(io.Discard, c)
	if n >= int64(len(big)) {
		t.Fatalf("the client got all %d bytes after the cut-off", n)
	}
}

func openConns(l *Listener) int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return len(l.conns)
}

// The janitor sweeps every sixteenth of the shortest bound, within
// [1 ms, 1 s]; without bounds none runs. Stop returns either way, also twice.
func TestListenerTick(t *testing.T) {
	cases := []struct {
		t    Timeouts
		tick time.Duration
	}{
		{Timeouts{}, 0},
		{Timeouts{Read: 30 * time.Second, Write: 30 * time.Second, Idle: time.Minute}, time.Second},
		{Timeouts{Idle: 800 * time.Millisecond}, 50 * time.Millisecond},
		{Timeouts{Read: time.Hour, Write: 160 * time.Millisecond}, 10 * time.Millisecond},
		{Timeouts{Read: 10 * time.Millisecond}, time.Millisecond},
	}
	for _, c := range cases {
		nl, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		l := NewListener(nl, c.t, metrics.NewSet())
		if l.tick != c.tick {
			t.Errorf("%+v: tick = %v; want %v", c.t, l.tick, c.tick)
		}
		l.Stop()
		l.Stop()
		nl.Close()
	}
}

// A handler slower than Read (waiting on a Redis load, say) does not count
// against the read bound: the response is sent, its keep-alive connection
// serves the next requests, and no read timeout is counted.
func TestSlowHandlerKeepsConnection(t *testing.T) {
	const read = 100 * time.Millisecond
	ln, ms, _ := timeoutServer(t, Timeouts{Read: read, Write: 5 * time.Second, Idle: 5 * time.Second},
		func(api fasthttp.RequestHandler) fasthttp.RequestHandler {
			return func(ctx *fasthttp.RequestCtx) {
				api(ctx)
				if string(ctx.Path()) == "/api/v1/ingest" {
					time.Sleep(4 * read)
				}
			}
		})
	c, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	br := bufio.NewReader(c)
	body := `{"device":"slow","metrics":{"t":1}}`
	for i := range 3 {
		if _, err := io.WriteString(c, "POST /api/v1/ingest HTTP/1.1\r\nHost: x\r\nContent-Length: 35\r\n\r\n"+body); err != nil {
			t.Fatalf("request %d: %v", i, err)
		}
		_ = c.SetReadDeadline(time.Now().Add(5 * time.Second))
		resp, err := http.ReadResponse(br, nil)
		if err != nil {
			t.Fatalf("request %d on the same connection: %v", i, err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != 200 {
			t.Fatalf("request %d: status %d: %s", i, resp.StatusCode, b)
		}
	}
	if got := timeouts(ms, "read"); got != 0 {
		t.Fatalf("read timeouts counted %d; want 0", got)
	}
}

// acceptedPair returns both ends of one connection through l: the client's
// and the server's (a *conn).
func acceptedPair(tb testing.TB, l *Listener) (client, server net.Conn) {
	tb.Helper()
	client, err := net.Dial("tcp", l.Addr().String())
	if err != nil {
		tb.Fatal(err)
	}
	server, err = l.Accept()
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { client.Close(); server.Close() })
	return client, server
}

// A deadline the janitor armed for a phase does not outlive the phase: a
// connection whose read bound fired just as its request was read in full
// goes on to answer it and to read the next request.
func TestFiredDeadlineClearedOnPhaseChange(t *testing.T) {
	nl, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer nl.Close()
	ms := metrics.NewSet()
	l := NewListener(nl, Timeouts{Read: time.Hour, Write: time.Hour, Idle: time.Hour}, ms)
	defer l.Stop()
	client, server := acceptedPair(t, l)
	buf := make([]byte, 64)
	if _, err := io.WriteString(client, "GET / HTTP/1.1\r\n\r\n"); err != nil {
		t.Fatal(err)
	}
	if _, err := server.Read(buf); err != nil {
		t.Fatal(err)
	}
	l.sweep(int64(2 * time.Hour)) // the read bound fires: a past read deadline
	if _, err := io.WriteString(server, "HTTP/1.1 200 OK\r\n\r\n"); err != nil {
		t.Fatalf("response: %v", err)
	}
	if _, err := io.WriteString(client, "GET / HTTP/1.1\r\n\r\n"); err != nil {
		t.Fatal(err)
	}
	if n, err := server.Read(buf); err != nil {
		t.Fatalf("next request: read %d bytes, %v; the fired read deadline outlived the read phase", n, err)
	}
	if got := timeouts(ms, "read"); got != 0 {
		t.Fatalf("read timeouts counted %d for a connection that was not cut off; want 0", got)
	}
}

// The janitor arms its deadline after its CAS: a connection that changes
// phase between the two must clear the deadline after it is armed, not
// before, or the deadline outlives the phase. Here the test plays the
// janitor, holding c.mu between the CAS and the deadline as fire does.
func TestFireRacesPhaseChange(t *testing.T) {
	nl, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer nl.Close()
	l := NewListener(nl, Timeouts{Read: time.Hour, Write: time.Hour, Idle: time.Hour}, metrics.NewSet())
	defer l.Stop()
	client, server := acceptedPair(t, l)
	c := server.(*conn)
	buf := make([]byte, 64)
	if _, err := io.WriteString(client, "GET / HTTP/1.1\r\n\r\n"); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Read(buf); err != nil {
		t.Fatal(err)
	}
	s := c.state.Load()
	c.mu.Lock()
	if s&phaseMask != phaseRead || !c.state.CompareAndSwap(s, s|firedBit) {
		t.Fatalf("state %b: want the read phase, not fired", s)
	}
	done := make(chan struct{})
	go func() { c.handling(); close(done) }()
	for c.state.Load()&phaseMask != phaseHandle {
		runtime.Gosched()
	}
	select {
	case <-done:
		t.Fatal("the phase change cleared the deadline before the janitor armed it")
	case <-time.After(50 * time.Millisecond):
	}
	_ = c.Conn.SetReadDeadline(time.Unix(1, 0))
	c.mu.Unlock()
	<-done
	if _, err := io.WriteString(client, "next"); err != nil {
		t.Fatal(err)
	}
	if n, err := c.Read(buf); err != nil {
		t.Fatalf("read %d bytes, %v: the deadline armed for the read phase outlived it", n, err)
	}
}

// BenchmarkPhaseChange is the hot-path cost a request pays per phase change
// (four per keep-alive request: read, handle, write, idle).
func BenchmarkPhaseChange(b *testing.B) {
	c := &conn{l: &Listener{}}
	b.ReportAllocs()
	for i := 0; b.Loop(); i++ {
		c.enter(int64(i & 3))
	}
}

// TestCutOffRequestsCountedByRoute: requests fasthttp rejects after it has
// reset them (a 408 in the body, a broken chunked body) are still counted
// under the route their request line names, with its method; they were
// all route="other".
func TestCutOffRequestsCountedByRoute(t *testing.T) {
	ln, ms, _ := timeoutServer(t, Timeouts{Read: 300 * time.Millisecond}, nil)
	addr := ln.Addr().String()
	got := rawExchange(t, addr, "POST /api/v1/ingest HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{\"device\":", 3*time.Second)
	if !strings.HasPrefix(got, "HTTP/1.1 408") {
		t.Fatalf("half a body: %q; want 408", got)
	}
	got = rawExchange(t, addr, "POST /metric HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n", 3*time.Second)
	if !strings.HasPrefix(got, "HTTP/1.1 400") {
		t.Fatalf("broken chunk: %q; want 400", got)
	}
	for name, want := range map[string]uint64{
		`requests_total{route="/api/v1/ingest",method="POST",status="408"}`: 1,
		`requests_total{route="/metric",method="POST",status="400"}`:        1,
		`requests_total{route="other",method="GET",status="408"}`:           0,
		`requests_total{route="other",method="GET",status="400"}`:           0,
	} {
		if n := ms.GetOrCreateCounter(name).Get(); n != want {
			t.Errorf("%s = %d; want %d", name, n, want)
		}
	}
}
