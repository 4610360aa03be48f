package server

// Failing tests from hostile review E of the fixes for review D (server
// side). Each comment says what is claimed, what happens, and why.
// Run: go test ./server -run 'ReviewE' -count=1 -v

import (
	"io"
	"net"
	"strings"
	"testing"
	"time"
)

// TestReviewEPipelinedTailTakenForRequestLine: a request fasthttp cuts off
// mid-way (a 408) is counted under the route and method of "its first
// bytes" (conns.go:190-196, server.go:252-265), and a pipelined request's
// line is not kept, so such a request counts as other. Review D's fix
// holds a pipelined request's buffered bytes in the idle phase
// (conns.go:281-291) until more arrive; the Read that brings them now
// takes the idle branch (conns.go:299-302), which keeps them as the
// request line. The tail of a POST /metric body is then parsed as the
// request line: the 408 for it is counted as GET /health (any route and
// method the tail happens to spell), a client-chosen label, not other.
func TestReviewEPipelinedTailTakenForRequestLine(t *testing.T) {
	const read, idle = 150 * time.Millisecond, 2 * time.Second
	ln, ms, _ := timeoutServer(t, Timeouts{Read: read, Write: 5 * time.Second, Idle: idle}, nil)
	c, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	first := reviewPost(reviewGood, len(reviewGood))
	second := "POST /metric HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 60\r\n\r\n" + `{"rps":1,"note":"`
	if _, err := io.WriteString(c, first+second); err != nil {
		t.Fatal(err)
	}
	time.Sleep(100 * time.Millisecond)
	if _, err := io.WriteString(c, "GET /health ?"); err != nil { // more of the body, then a stall
		t.Fatal(err)
	}
	_ = c.SetReadDeadline(time.Now().Add(5 * time.Second))
	got, _ := io.ReadAll(c)
	count := func(endpoint, method string) uint64 {
		return ms.GetOrCreateCounter(`requests_total{route="` + endpoint + `",method="` + method + `",status="408"}`).Get()
	}
	health, metric, other := count("/health", "GET"), count("/metric", "POST"), count("other", "other")+count("other", "POST")+count("other", "GET")
	t.Logf("responses %q; 408s counted: GET /health %d, POST /metric %d, other %d", got, health, metric, other)
	if !strings.Contains(string(got), "HTTP/1.1 408") {
		t.Fatalf("test premise: no 408 for the stalled request")
	}
	if health != 0 {
		t.Fatalf("the 408 for a stalled pipelined POST /metric was counted as GET /health: the bytes of its body " +
			"that arrived after the pipelined part were kept as its request line")
	}
}
