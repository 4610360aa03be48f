package server

import (
	"fmt"
	"io"
	"net"
	"net/http"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"ai-load-service/shard"
)

// TestSlowClientsDoNotDelayOthers: 200 connections that send half a
// header and stall, and 200 that ask for /metrics twice (pipelined) and
// read the answers a byte a second, do not delay a well-behaved client: its
// requests all succeed, with a p99 close to what it has alone. The
// connection timeouts then cut the slow ones off.
func TestSlowClientsDoNotDelayOthers(t *testing.T) {
	ln, _ := serveAPI(t, "127.0.0.1:0", Options{Timeouts: Timeouts{Read: 3 * time.Second, Write: 3 * time.Second, Idle: 4 * time.Second}}, shard.Options{}, nil)
	addr := ln.Addr().String()
	url := "http://" + addr
	client := &http.Client{Timeout: 10 * time.Second}
	p99 := func(n int) time.Duration {
		var ds []time.Duration
		for i := range n {
			start := time.Now()
			resp, err := client.Post(url+"/api/v1/ingest", "application/json", strings.NewReader(sample(fmt.Sprintf("good-%d", i%50), int64(i), `"t":1`)))
			if err != nil {
				t.Fatal(err)
			}
			resp.Body.Close()
			if resp.StatusCode != 200 {
				t.Fatalf("a good client's request: %d", resp.StatusCode)
			}
			ds = append(ds, time.Since(start))
		}
		slices.Sort(ds)
		return ds[len(ds)*99/100]
	}
	alone := p99(300)

	var conns []net.Conn
	var mu sync.Mutex
	stop := make(chan struct{})
	var wg sync.WaitGroup
	defer func() {
		close(stop)
		wg.Wait()
		for _, c := range conns {
			c.Close()
		}
	}()
	for i := range 400 {
		c, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		mu.Lock()
		conns = append(conns, c)
		mu.Unlock()
		if i%2 == 0 {
			fmt.Fprint(c, "POST /api/v1/ingest HTTP/1.1\r\nHost: x\r\nContent-Le") //nolint:errcheck
			continue
		}
		// A small receive buffer, as a slow client's window is: the
		// server's writes block after a few answers.
		c.(*net.TCPConn).SetReadBuffer(4096)                                         //nolint:errcheck
		fmt.Fprint(c, strings.Repeat("GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n", 2)) //nolint:errcheck
		wg.Add(1)
		go func() { // reads a byte a second
			defer wg.Done()
			buf := make([]byte, 1)
			tick := time.NewTicker(time.Second)
			defer tick.Stop()
			for {
				select {
				case <-stop:
					return
				case <-tick.C:
					if _, err := c.Read(buf); err != nil {
						return
					}
				}
			}
		}()
	}
	time.Sleep(2 * time.Second) // the answers that fit the buffers are written
	attacked := p99(300)
	t.Logf("a good client's p99: %v alone, %v beside 400 slow connections", alone, attacked)
	if attacked > 5*alone+20*time.Millisecond {
		t.Fatalf("slow connections delayed a good client: p99 %v, alone %v", attacked, alone)
	}
	// The bounds cut the slow connections off: the half headers by the
	// read bound, the slow readers by the write bound while an answer
	// waits on them, or by the idle bound once the socket buffers took
	// their answers.
	time.Sleep(5 * time.Second)
	resp, err := client.Get(url + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	m, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	for _, want := range []string{`http_connection_timeouts_total{phase="read"} 200`, `http_open_connections 1`} {
		if !strings.Contains(string(m), want+"\n") {
			t.Errorf("/metrics lacks %q:\n%s", want, grepLines(string(m), "http_"))
		}
	}
}
