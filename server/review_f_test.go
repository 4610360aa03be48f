package server

// Regression tests from hostile review F of cluster mode (forward.go,
// server/cluster): each comment tells the defect as it was found (notDialled
// is now notApplied); the test checks that it stays fixed.

import (
	"bufio"
	"cmp"
	"context"
	"encoding/json"
	"fmt"
	"math"
	"math/rand/v2"
	"net"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"ai-load-service/server/cluster"
	"ai-load-service/shard"

	"github.com/valyala/fasthttp"
)

// reviewFPod starts one in-process member on addr reading peers from file,
// with its own shard and server options (startPods fixes both).
func reviewFPod(t *testing.T, addr, file string, so shard.Options, opts Options) *pod {
	t.Helper()
	m, err := cluster.New(cluster.Options{Self: addr, File: file, Refresh: time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	m.Start()
	opts.Cluster = m
	opts.ForwardTimeout = cmp.Or(opts.ForwardTimeout, time.Second)
	_, h := serveAPI(t, addr, opts, so, nil)
	return &pod{addr: addr, h: h, set: h.set, members: m}
}

// fakeMember serves addr with fn: a member whose answers the test decides.
// It counts the requests it received.
type fakeMember struct {
	got     atomic.Int64
	release chan struct{} // closed at cleanup: ends handlers that hang
}

func startFake(t *testing.T, addr string, fn func(ctx *fasthttp.RequestCtx, release <-chan struct{})) *fakeMember {
	t.Helper()
	f := &fakeMember{release: make(chan struct{})}
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	srv := &fasthttp.Server{Handler: func(ctx *fasthttp.RequestCtx) {
		f.got.Add(1)
		fn(ctx, f.release)
	}}
	go srv.Serve(ln)                                       //nolint:errcheck
	t.Cleanup(func() { close(f.release); srv.Shutdown() }) //nolint:errcheck
	return f
}

func fakeGot(f *fakeMember) int64 {
	if f == nil {
		return 0
	}
	return f.got.Load()
}

func answer421(ctx *fasthttp.RequestCtx, _ <-chan struct{}) {
	ctx.SetStatusCode(fasthttp.StatusMisdirectedRequest)
	ctx.SetBodyString(`{"error":"not mine"}`)
}

// devOwned returns a device owner owns in members and, if also is not
// empty, that also owns in the smaller list alsoIn.
func devOwned(owner string, members []string, also string, alsoIn []string) string {
	v := cluster.NewView(owner, members)
	w := cluster.NewView(also, alsoIn)
	for i := 0; ; i++ {
		id := fmt.Sprint("rf", i)
		if v.Owner([]byte(id)) == owner && (also == "" || w.Owner([]byte(id)) == also) {
			return id
		}
	}
}

// 1. TestReviewF_RetryForgetsEarlierFailures: applyCluster empties problems
// at the start of its second attempt (forward.go:212), so a part that
// failed in the first attempt and is not retried (the local part refused
// with 429, a remote part answered 503, a remote part that took the
// samples and never answered) is forgotten as soon as another part of the
// same request needed a retry and the retry worked. The client gets 200
// with "accepted": n for a request some of whose samples were never
// applied (or may not have been): they are lost silently.
func TestReviewF_RetryForgetsEarlierFailures(t *testing.T) {
	for _, tc := range []struct {
		name string
		// fake is F's handler (nil: the failing sample is A's own, refused
		// locally with 429 by the stream limit).
		fake func(ctx *fasthttp.RequestCtx, release <-chan struct{})
	}{
		{"local 429", nil},
		{"remote 503", func(ctx *fasthttp.RequestCtx, _ <-chan struct{}) {
			ctx.SetStatusCode(fasthttp.StatusServiceUnavailable)
			ctx.SetBodyString(`{"error":"ingest queue is full; retry after a short backoff or add replicas"}`)
		}},
		{"remote no answer", func(ctx *fasthttp.RequestCtx, release <-chan struct{}) {
			select { // took the samples, answers after FORWARD_TIMEOUT
			case <-release:
			case <-time.After(3 * time.Second):
			}
			ctx.SetBodyString(`{"accepted":1,"anomalies":[]}`)
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			addrs := freeAddrs(t, 3) // A (real), R (answers 421), F (fails)
			a, r, f := addrs[0], addrs[1], addrs[2]
			file := filepath.Join(t.TempDir(), "peers")
			all := []string{a, r, f}
			writePeers(t, file, all...)
			pa := reviewFPod(t, a, file, shard.Options{MaxStreams: 1}, Options{ForwardTimeout: 300 * time.Millisecond})
			startFake(t, r, answer421)
			var failing string
			var fk *fakeMember
			if tc.fake == nil {
				failing = devOwned(a, all, "", nil)
				// The device has its one stream: a second name is refused (429).
				if code, out := post(t, a, fmt.Sprintf(`{"device":%q,"metrics":{"m":1}}`, failing)); code != 200 {
					t.Fatalf("priming: %d %s", code, out)
				}
			} else {
				fk = startFake(t, f, tc.fake)
				failing = devOwned(f, all, "", nil)
			}
			moved := devOwned(r, all, a, []string{a, f}) // R's, and A's once R is gone
			writePeers(t, file, a, f)                    // R leaves the source; A has not re-read it yet
			body := fmt.Sprintf(`[{"device":%q,"ts":1,"metrics":{"x":1}},{"device":%q,"ts":1,"metrics":{"m":1}}]`, failing, moved)
			code, out := post(t, a, body)
			if code == 200 {
				var names []string
				if ms, ok, _ := pa.set.Device(failing); ok {
					for _, m := range ms {
						names = append(names, m.Name)
					}
				}
				t.Fatalf("sample 0 (%s part) failed and was not retried, sample 1 went through after a 421 and a retry;\n"+
					"got 200 %s\nwant an error naming sample 0's failure and \"applied\":[1] (streams of %s on A: %v; fake F received %d parts)",
					tc.name, out, failing, names, fakeGot(fk))
			}
		})
	}
}

// 2. TestReviewF_ForwardedBodyOverLimit: a request a single pod accepts
// (under MAX_BODY_BYTES, all or nothing) is refused when its samples belong
// to another member: appendForward (forward.go:542) writes every sample
// with an explicit "ts" (and values in strconv's form), so the forwarded
// body is larger than the client's, and the owner's server rejects it with
// 413 before any handler runs (server.go:194 MaxRequestBodySize). The
// client, who sent a valid request within the documented limit, gets an
// error it can never resolve by resending.
func TestReviewF_ForwardedBodyOverLimit(t *testing.T) {
	addrs := freeAddrs(t, 2)
	file := filepath.Join(t.TempDir(), "peers")
	writePeers(t, file, addrs...)
	pods := startPods(t, addrs, []string{file, file}) // MAX_BODY_BYTES 1 MiB on both
	a, b := pods[0], pods[1]
	dev := deviceOwnedBy(b.addr, addrs)
	one := fmt.Sprintf(`{"device":%q,"metrics":{"m":1}}`, dev)
	n := (1<<20 - 2) / (len(one) + 1)
	body := "[" + strings.TrimSuffix(strings.Repeat(one+",", n), ",") + "]"
	if len(body) > 1<<20 {
		t.Fatalf("body %d bytes", len(body))
	}
	// Sent straight to its owner the body is fine: a valid request.
	if code, out := post(t, b.addr, body); code != 200 {
		t.Fatalf("to the owner directly: %d %.200s", code, out)
	}
	code, out := post(t, a.addr, body)
	if code != 200 {
		t.Fatalf("the same %d-byte request through a non-owner: %d %.300s\nwant 200, as the owner answered it directly", len(body), code, out)
	}
}

// 3. TestReviewF_IdleConnectionAmbiguous: the forwarder keeps idle
// connections 30s (forward.go:68 MaxIdleConnDuration) whatever the peers'
// IDLE_TIMEOUT (main.go:125, allowed down to 10ms). Once a peer has closed
// an idle keep-alive connection, the next forwarded part is written on the
// dead connection, fasthttp returns ErrConnectionClosed, notDialled
// (forward.go:164) says "dialled", and send calls it ambiguous: on a
// healthy, idle cluster the client gets 503 "took the samples but did not
// answer: they may or may not have been applied" for samples the owner
// never received, with no retry. (The same happens to the requests that
// meet a peer's graceful shutdown, which closes idle connections.)
func TestReviewF_IdleConnectionAmbiguous(t *testing.T) {
	addrs := freeAddrs(t, 2)
	file := filepath.Join(t.TempDir(), "peers")
	writePeers(t, file, addrs...)
	a := reviewFPod(t, addrs[0], file, shard.Options{}, Options{})
	b := reviewFPod(t, addrs[1], file, shard.Options{}, Options{Timeouts: Timeouts{Idle: 200 * time.Millisecond}})
	dev := deviceOwnedBy(b.addr, addrs)
	for i := range 3 {
		code, out := post(t, a.addr, fmt.Sprintf(`{"device":%q,"ts":%d,"metrics":{"m":1}}`, dev, i+1))
		if code != 200 {
			t.Fatalf("request %d, sent %s after the previous one (B's IDLE_TIMEOUT is 200ms): %d %s\nB applied %d of the %d samples sent",
				i+1, map[bool]string{true: "at once", false: "1s"}[i == 0], code, out, count(t, b, dev), i+1)
		}
		time.Sleep(time.Second)
	}
}

// 4. TestReviewF_NoFreeConnsAmbiguous: with more than MaxConnsPerHost (512,
// forward.go:67) parts in flight to one owner, fasthttp fails the rest at
// once with ErrNoFreeConns, before anything is written. notDialled does
// not know that error, so each is reported as "took the samples but did
// not answer ... may or may not have been applied" and counted no_answer,
// though the owner never saw them. [load-dependent: needs > 512 requests
// in flight to one owner at once; reproduced every run here]
func TestReviewF_NoFreeConnsAmbiguous(t *testing.T) {
	addrs := freeAddrs(t, 2)
	file := filepath.Join(t.TempDir(), "peers")
	writePeers(t, file, addrs...)
	a := reviewFPod(t, addrs[0], file, shard.Options{}, Options{ForwardTimeout: 5 * time.Second})
	fake := startFake(t, addrs[1], func(ctx *fasthttp.RequestCtx, release <-chan struct{}) {
		select { // a busy owner: 300ms per part
		case <-release:
		case <-time.After(300 * time.Millisecond):
		}
		ctx.SetBodyString(`{"accepted":1,"anomalies":[],"head":{"Window":1,"Size":60,"Mean":1}}`)
	})
	dev := deviceOwnedBy(addrs[1], addrs)
	const clients = 700
	cl := &fasthttp.Client{MaxConnsPerHost: clients + 10}
	var wg sync.WaitGroup
	var ok, ambiguous, other atomic.Int64
	var sample atomic.Value
	for i := range clients {
		wg.Add(1)
		go func() {
			defer wg.Done()
			req, resp := fasthttp.AcquireRequest(), fasthttp.AcquireResponse()
			defer fasthttp.ReleaseRequest(req)
			defer fasthttp.ReleaseResponse(resp)
			req.SetRequestURI("http://" + a.addr + "/api/v1/ingest")
			req.Header.SetMethod("POST")
			req.SetBodyString(fmt.Sprintf(`{"device":%q,"ts":%d,"metrics":{"m":1}}`, dev, i+1))
			if err := cl.DoTimeout(req, resp, 10*time.Second); err != nil {
				other.Add(1)
				return
			}
			switch {
			case resp.StatusCode() == 200:
				ok.Add(1)
			case strings.Contains(string(resp.Body()), "did not answer"):
				ambiguous.Add(1)
				sample.Store(string(resp.Body()))
			default:
				other.Add(1)
			}
		}()
	}
	wg.Wait()
	if ambiguous.Load() > 0 {
		t.Fatalf("%d requests: %d answered 200, %d answered 503 as ambiguous, %d other; the owner received %d parts and answered every one within 300ms,\n"+
			"so none of the %d 'may or may not have been applied' parts reached it; e.g. %s",
			clients, ok.Load(), ambiguous.Load(), other.Load(), fake.got.Load(), ambiguous.Load(), sample.Load())
	}
}

// 5. TestReviewF_EmptyViewAmbiguous: with no members in the view (the last
// pod of a cluster after Leave on SIGTERM, or an existing empty PEERS_FILE,
// documented as "no members"), View.Owner returns "" (rendezvous.go:49)
// and applyCluster treats "" as a remote owner (forward.go:188): it
// "forwards" to http:///api/v1/ingest, fasthttp fails without dialling
// anything, and the client is told 503 "member  took the samples but did
// not answer ... may or may not have been applied" although nothing was
// sent anywhere; a metric series with peer="" appears.
func TestReviewF_EmptyViewAmbiguous(t *testing.T) {
	addrs := freeAddrs(t, 1)
	file := filepath.Join(t.TempDir(), "peers")
	writePeers(t, file, addrs...)
	a := reviewFPod(t, addrs[0], file, shard.Options{}, Options{})
	a.members.Leave() // SIGTERM on the last member (main.go:494)
	code, out := post(t, a.addr, `{"device":"d1","ts":1,"metrics":{"m":1}}`)
	if strings.Contains(string(out), "may or may not") || strings.Contains(string(out), `member  `) {
		t.Fatalf("nothing was sent anywhere (the view is empty), yet: %d %s", code, out)
	}
	if code != 503 || !strings.Contains(string(out), "no members") || !strings.Contains(string(out), `"applied":[]`) {
		t.Fatalf("empty view: %d %s; want 503 saying the view has no members and nothing applied", code, out)
	}
}

// 6. TestReviewF_AbsoluteFormReadForwarded: forwardRead builds the owner's
// URL as "http://" + owner + ctx.RequestURI() (forward.go:425), the raw
// request target. A request in absolute form (RFC 9112 3.2.2: a server
// MUST accept it; proxies send it) is routed here by its path, but the
// forwarded URL becomes http://<owner>http://<host>/api/v1/devices/...,
// which cannot be dialled: the read answers 503 "cannot answer" for a
// device whose owner is up, while the same read in origin form works.
func TestReviewF_AbsoluteFormReadForwarded(t *testing.T) {
	addrs := freeAddrs(t, 2)
	file := filepath.Join(t.TempDir(), "peers")
	writePeers(t, file, addrs...)
	pods := startPods(t, addrs, []string{file, file})
	a, b := pods[0], pods[1]
	dev := deviceOwnedBy(b.addr, addrs)
	if code, out := post(t, a.addr, fmt.Sprintf(`{"device":%q,"metrics":{"m":1}}`, dev)); code != 200 {
		t.Fatalf("%d %s", code, out)
	}
	get := func(target string) (int, string) {
		c, err := net.Dial("tcp", a.addr)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		c.SetDeadline(time.Now().Add(10 * time.Second)) //nolint:errcheck
		fmt.Fprintf(c, "GET %s HTTP/1.1\r\nHost: %s\r\nConnection: close\r\n\r\n", target, a.addr)
		var resp fasthttp.Response
		if err := resp.Read(bufio.NewReader(c)); err != nil {
			t.Fatal(err)
		}
		return resp.StatusCode(), string(resp.Body())
	}
	if code, body := get("/api/v1/devices/" + dev); code != 200 {
		t.Fatalf("origin form: %d %s", code, body)
	}
	if code, body := get("http://" + a.addr + "/api/v1/devices/" + dev); code != 200 {
		t.Fatalf("absolute form of the same read: %d %s; want 200 as in origin form", code, body)
	}
}

// 7. TestReviewF_MarkedMetricWrongShape: anyone can set
// X-Aiload-Forwarded (nothing checks that the sender is a member), and
// applyCluster hands every marked request to applyForwarded
// (forward.go:180), which always answers in the internal forwarding
// format. A marked POST /metric for a device the pod owns is applied but
// answered {"accepted":..,"head":..} instead of /metric's documented body
// (status, window_size, rolling_average, is_anomaly): a client (or a proxy
// that passes the header along) cannot read the answer to its own request.
func TestReviewF_MarkedMetricWrongShape(t *testing.T) {
	addrs := freeAddrs(t, 2)
	file := filepath.Join(t.TempDir(), "peers")
	writePeers(t, file, addrs...)
	a := startPods(t, addrs[:1], []string{file})[0]
	dev := deviceOwnedBy(a.addr, addrs)
	req, resp := fasthttp.AcquireRequest(), fasthttp.AcquireResponse()
	defer fasthttp.ReleaseRequest(req)
	defer fasthttp.ReleaseResponse(resp)
	req.SetRequestURI("http://" + a.addr + "/metric")
	req.Header.SetMethod("POST")
	req.Header.Set(hdrForwarded, "anyone")
	req.SetBodyString(fmt.Sprintf(`{"device_id":%q,"cpu":1}`, dev))
	if err := fasthttp.DoTimeout(req, resp, 5*time.Second); err != nil {
		t.Fatal(err)
	}
	var r map[string]any
	_ = json.Unmarshal(resp.Body(), &r)
	if _, ok := r["rolling_average"]; resp.StatusCode() == 200 && !ok {
		t.Fatalf("marked /metric from a non-member, device owned here: 200 %s\nwant /metric's body (status, window_size, rolling_average, is_anomaly) or a refusal", resp.Body())
	}
}

// 8. TestReviewF_PeerSeriesNeverDropped: forwarder.peer (forward.go:86)
// creates forwarded_requests_total and forward_duration_seconds series for
// every address it ever forwarded to, and nothing removes them when the
// member leaves the view. With PEERS_DNS every restarted pod has a new IP,
// so a long-lived pod's /metrics grows by 4 counters and a histogram per
// pod ever seen.
func TestReviewF_PeerSeriesNeverDropped(t *testing.T) {
	addrs := freeAddrs(t, 6)
	file := filepath.Join(t.TempDir(), "peers")
	self := addrs[0]
	writePeers(t, file, self, addrs[1])
	a := reviewFPod(t, self, file, shard.Options{}, Options{ForwardTimeout: 200 * time.Millisecond})
	for _, peer := range addrs[1:] { // pods restarted with new IPs, one at a time
		writePeers(t, file, self, peer)
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		if err := a.members.Refresh(ctx); err != nil {
			t.Fatal(err)
		}
		cancel()
		dev := devOwned(peer, []string{self, peer}, "", nil)
		post(t, self, fmt.Sprintf(`{"device":%q,"ts":1,"metrics":{"m":1}}`, dev)) // unreachable: 503, fine
	}
	req, resp := fasthttp.AcquireRequest(), fasthttp.AcquireResponse()
	defer fasthttp.ReleaseRequest(req)
	defer fasthttp.ReleaseResponse(resp)
	req.SetRequestURI("http://" + self + "/metrics")
	if err := fasthttp.DoTimeout(req, resp, 5*time.Second); err != nil {
		t.Fatal(err)
	}
	peers := map[string]bool{}
	for _, m := range regexp.MustCompile(`forwarded_requests_total\{peer="([^"]*)"`).FindAllStringSubmatch(string(resp.Body()), -1) {
		peers[m[1]] = true
	}
	view := a.members.View().Members
	var stale []string
	for p := range peers {
		if !slices.Contains(view, p) {
			stale = append(stale, p)
		}
	}
	slices.Sort(stale)
	if len(stale) > 0 {
		t.Fatalf("view %v; /metrics still has forwarded_requests_total series for %d departed peers: %v", view, len(stale), stale)
	}
}

// 9. TestReviewF_DrainingPodRefusesItsOwnDevices: on SIGTERM a pod leaves
// its own view (main.go:494) and then keeps serving for DRAIN_DELAY, the
// seconds a load balancer needs to stop sending it traffic. In those
// seconds a client request that reaches it for a device it owns in the
// others' views, and holds, is forwarded by its own view alone
// (forward.go:187, and forward.go:420 for reads) to the next member, which
// still sees the draining pod as the owner, does not hold the device, and
// answers 421; the retry meets the same view and the client gets 503. The
// same sample sent to the other member is forwarded to the draining pod
// and applied there. With PEERS (never re-read) or PEERS_DNS on a headless
// Service with publishNotReadyAddresses (the draining pod keeps its
// record), this lasts the whole drain.
func TestReviewF_DrainingPodRefusesItsOwnDevices(t *testing.T) {
	addrs := freeAddrs(t, 2)
	file := filepath.Join(t.TempDir(), "peers")
	writePeers(t, file, addrs...)
	pods := startPods(t, addrs, []string{file, file})
	a, b := pods[0], pods[1]
	dev := deviceOwnedBy(a.addr, addrs)
	if code, out := post(t, a.addr, fmt.Sprintf(`{"device":%q,"ts":1,"metrics":{"m":1}}`, dev)); code != 200 {
		t.Fatalf("%d %s", code, out)
	}
	a.members.Leave() // SIGTERM; the source still lists A
	codeB, outB := post(t, b.addr, fmt.Sprintf(`{"device":%q,"ts":2,"metrics":{"m":1}}`, dev))
	codeA, outA := post(t, a.addr, fmt.Sprintf(`{"device":%q,"ts":3,"metrics":{"m":1}}`, dev))
	readA, bodyA := doReq(t, "GET", "http://"+a.addr+"/api/v1/devices/"+dev, "")
	if codeA != 200 || readA != 200 {
		t.Fatalf("draining A holds %s (count %d, B holds %d devices);\nsent to B: %d %s\nsent to A: %d %s\nread at A: %d %s",
			dev, count(t, a, dev), b.set.Devices(), codeB, outB, codeA, outA, readA, bodyA)
	}
}

func doReq(t *testing.T, method, url, body string) (int, string) {
	req, resp := fasthttp.AcquireRequest(), fasthttp.AcquireResponse()
	defer fasthttp.ReleaseRequest(req)
	defer fasthttp.ReleaseResponse(resp)
	req.SetRequestURI(url)
	req.Header.SetMethod(method)
	if body != "" {
		req.SetBodyString(body)
	}
	if err := fasthttp.DoTimeout(req, resp, 5*time.Second); err != nil {
		t.Fatal(err)
	}
	return resp.StatusCode(), string(resp.Body())
}

// TestReviewFHeldMatchesReference: three pods fed random batches
// through random members answer every ingest and /metric request exactly
// as a stand-alone pod fed the same stream (anomalies in sample order,
// window_size, rolling_average, is_anomaly), /analyze merges to the same
// figures, and samples_ingested_total summed over the pods equals the
// reference's: nothing counted twice.
func TestReviewFHeldMatchesReference(t *testing.T) {
	addrs := freeAddrs(t, 4)
	file := filepath.Join(t.TempDir(), "peers")
	writePeers(t, file, addrs[:3]...)
	pods := startPods(t, addrs[:3], []string{file, file, file})
	set := shard.New(shard.Options{Shards: 2})
	h := New(Options{Shards: set})
	h.SetReady()
	nl, _ := net.Listen("tcp", addrs[3])
	ln := h.Listen(nl)
	srv := h.NewServer()
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Shutdown(); ln.Stop(); set.Stop() })
	ref := addrs[3]
	rng := rand.New(rand.NewPCG(1, 2))
	ts := int64(1000)
	for r := 0; r < 300; r++ {
		var parts []string
		n := 1 + rng.IntN(8)
		for i := 0; i < n; i++ {
			ts++
			v := rng.NormFloat64()
			if rng.IntN(10) == 0 {
				v = 100 * rng.Float64()
			}
			dev := fmt.Sprint("dev", rng.IntN(12))
			if rng.IntN(3) == 0 {
				parts = append(parts, fmt.Sprintf(`{"device":%q,"ts":%d,"metrics":{"a":%v,"b":%v}}`, dev, ts, v, -v*3))
			} else {
				parts = append(parts, fmt.Sprintf(`{"device":%q,"metrics":{"a":%v}}`, dev, v))
			}
		}
		body := "[" + strings.Join(parts, ",") + "]"
		p := pods[rng.IntN(3)].addr
		if rng.IntN(4) == 0 {
			dev := fmt.Sprint("dev", rng.IntN(12))
			v := rng.NormFloat64()
			if rng.IntN(8) == 0 {
				v = 50
			}
			mb := fmt.Sprintf(`{"device_id":%q,"timestamp":%d,"a":%v}`, dev, ts, v)
			c1, b1 := doReq(t, "POST", "http://"+p+"/metric", mb)
			c2, b2 := doReq(t, "POST", "http://"+ref+"/metric", mb)
			if c1 != c2 || b1 != b2 {
				t.Fatalf("metric %s\ncluster %d %s\nref %d %s", mb, c1, b1, c2, b2)
			}
			continue
		}
		c1, b1 := doReq(t, "POST", "http://"+p+"/api/v1/ingest", body)
		c2, b2 := doReq(t, "POST", "http://"+ref+"/api/v1/ingest", body)
		// ts differ for samples without ts: the anomalies' ts; mask them.
		re := regexp.MustCompile(`"ts":\d+`)
		if c1 != c2 || re.ReplaceAllString(b1, "") != re.ReplaceAllString(b2, "") {
			t.Fatalf("ingest %s\ncluster %d %s\nref %d %s", body, c1, b1, c2, b2)
		}
	}
	var cl, rf map[string]any
	_, a1 := doReq(t, "GET", "http://"+pods[1].addr+"/analyze", "")
	_, a2 := doReq(t, "GET", "http://"+ref+"/analyze", "")
	json.Unmarshal([]byte(a1), &cl)
	json.Unmarshal([]byte(a2), &rf)
	for k, v := range rf {
		if f, ok := v.(float64); ok {
			if g, _ := cl[k].(float64); math.Abs(f-g) > 1e-9*math.Max(1, math.Abs(f)) {
				t.Errorf("analyze %s: cluster %v ref %v", k, cl[k], v)
			}
		}
	}
	t.Logf("analyze cluster %s\nref %s", a1, a2)
	sum := 0.0
	re := regexp.MustCompile(`(?m)^samples_ingested_total (\d+)`)
	for _, p := range pods {
		_, m := doReq(t, "GET", "http://"+p.addr+"/metrics", "")
		x, _ := strconv.ParseFloat(re.FindStringSubmatch(m)[1], 64)
		sum += x
	}
	_, m := doReq(t, "GET", "http://"+ref+"/metrics", "")
	x, _ := strconv.ParseFloat(re.FindStringSubmatch(m)[1], 64)
	if sum != x {
		t.Errorf("samples_ingested_total: cluster %v ref %v", sum, x)
	}
}

// TestReviewFHeldEscapedRead: escaped IDs and query strings are forwarded
// to the owner and answered as at the owner.
func TestReviewFHeldEscapedRead(t *testing.T) {
	addrs := freeAddrs(t, 2)
	file := filepath.Join(t.TempDir(), "peers")
	writePeers(t, file, addrs...)
	pods := startPods(t, addrs, []string{file, file})
	var dev string
	for i := 0; ; i++ {
		dev = fmt.Sprintf("aa:%d", i)
		if v := pods[1].members.View(); v.Owner([]byte(dev)) == addrs[1] {
			break
		}
	}
	if c, b := post(t, addrs[0], fmt.Sprintf(`{"device":%q,"metrics":{"m":1}}`, dev)); c != 200 {
		t.Fatal(c, string(b))
	}
	esc := strings.ReplaceAll(dev, ":", "%3A")
	for i, p := range []string{"/api/v1/devices/" + esc, "/api/v1/devices/" + esc + "?x=1&y=%2F", "/api/v1/devices/" + esc + "/anomalies",
		"/api/v1/devices/" + strings.ReplaceAll(dev, ":", "%253A")} {
		c, b := doReq(t, "GET", "http://"+addrs[0]+p, "")
		oc, ob := doReq(t, "GET", "http://"+addrs[1]+p, "")
		if c != oc || b != ob || i < 3 && c != 200 {
			t.Errorf("%s: through A %d %s; at the owner %d %s", p, c, b, oc, ob)
		}
	}
	if pods[1].set.Devices() != 1 || pods[0].set.Devices() != 0 {
		t.Errorf("B holds %d devices, A %d; want the one on B", pods[1].set.Devices(), pods[0].set.Devices())
	}
}
