package server

import (
	"fmt"
	"net"
	"net/netip"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"ai-load-service/server/cluster"
	"ai-load-service/shard"

	"github.com/valyala/fasthttp"
)

// TestReviewP_MaxConnsPerIPRefusesMembers: MAX_CONNS_PER_IP bounds "open
// connections one client address may have", on the one listener that
// serves clients and members alike. In cluster mode every request a
// member forwards to another arrives from that member's address, over a
// client pool of up to 512 connections (forward.go MaxConnsPerHost): the
// forwarded traffic of all of a member's clients counts as one client's.
// Under ordinary concurrency the owner refuses the member's extra
// connections with its canned 429 ("too many connections from your
// address"), and clients that each hold a single connection, far under
// the bound, get their samples refused (or partly applied), though no
// client passed any limit. A bound meant for one hostile client throttles
// the whole cluster.
//
// Here: two members with MAX_CONNS_PER_IP=4; 24 clients, each from its own
// loopback address with one connection, post to member A samples of a
// device member B owns, so A forwards each to B. Correct: every request is
// answered 200 (no client holds more than one connection). The members
// are listed by IP, and again by name ("localhost:port", as PEERS may
// list them): the exemption first knew only members listed by IP. The
// timeouts are generous: CI, with other packages' tests on both cores,
// took over 2 s to forward one of these 2,000-sample batches.
func TestReviewP_MaxConnsPerIPRefusesMembers(t *testing.T) {
	for _, byName := range []bool{false, true} {
		t.Run(fmt.Sprint("byName=", byName), func(t *testing.T) { maxConnsSparesMembers(t, byName) })
	}
}

func maxConnsSparesMembers(t *testing.T, byName bool) {
	addrs := freeAddrs(t, 2)
	if byName {
		for i, a := range addrs {
			_, port, _ := net.SplitHostPort(a)
			addrs[i] = "localhost:" + port
		}
	}
	dir := t.TempDir()
	for i, a := range addrs {
		file := filepath.Join(dir, fmt.Sprint("peers", i))
		writePeers(t, file, addrs...)
		m, err := cluster.New(cluster.Options{Self: a, File: file, Refresh: time.Hour})
		if err != nil {
			t.Fatal(err)
		}
		m.Start()
		t.Cleanup(m.Stop)
		// Names are looked up apart from the refresh: wait for it.
		deadline := time.Now().Add(5 * time.Second)
		for !m.IsMember(netip.MustParseAddr("127.0.0.1")) && time.Now().Before(deadline) {
			time.Sleep(5 * time.Millisecond)
		}
		serveAPI(t, a, Options{Cluster: m, ForwardTimeout: 15 * time.Second, MaxConnsPerIP: 4}, shard.Options{}, nil)
	}
	dev := deviceOwnedBy(addrs[1], addrs)
	// A batch big enough that a forwarded request takes a while, so that
	// the members' requests overlap.
	var sb strings.Builder
	sb.WriteString("[")
	for i := range 2000 {
		if i > 0 {
			sb.WriteString(",")
		}
		sb.WriteString(sample(dev, int64(i+1), `"t":1,"u":2,"v":3`))
	}
	sb.WriteString("]")
	body := sb.String()

	const clients, each = 24, 8
	var (
		mu     sync.Mutex
		bad    = map[int]int{}
		sample string
		wg     sync.WaitGroup
	)
	for c := range clients {
		wg.Go(func() {
			src := &net.TCPAddr{IP: net.IPv4(127, 0, 1, byte(c+1))}
			cl := &fasthttp.Client{MaxConnsPerHost: 1, Dial: func(addr string) (net.Conn, error) {
				d := net.Dialer{LocalAddr: src, Timeout: 2 * time.Second}
				return d.Dial("tcp", addr)
			}}
			for range each {
				req, resp := fasthttp.AcquireRequest(), fasthttp.AcquireResponse()
				req.SetRequestURI("http://" + addrs[0] + "/api/v1/ingest")
				req.Header.SetMethod("POST")
				req.SetBodyString(body)
				err := cl.DoTimeout(req, resp, 30*time.Second)
				code := resp.StatusCode()
				mu.Lock()
				switch {
				case err != nil:
					bad[-1]++
				case code != 200:
					bad[code]++
					if sample == "" {
						sample = string(resp.Body())
					}
				}
				mu.Unlock()
				fasthttp.ReleaseRequest(req)
				fasthttp.ReleaseResponse(resp)
			}
		})
	}
	wg.Wait()
	if code, _, m := call(t, "http://"+addrs[1], "GET", "/metrics", "", nil); code == 200 {
		t.Logf("the owner's rejections: %s", grepLines(m, "rejections_total"))
	}
	if len(bad) > 0 {
		t.Fatalf("of %d requests from %d clients holding one connection each (MAX_CONNS_PER_IP 4), failed by status "+
			"(-1: transport error): %v; e.g. %.300s", clients*each, clients, bad, sample)
	}
}
