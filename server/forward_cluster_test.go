package server

import (
	"context"
	"encoding/json"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"ai-load-service/server/cluster"
	"ai-load-service/shard"

	"github.com/VictoriaMetrics/metrics"
	"github.com/valyala/fasthttp"
)

// pod is one in-process cluster member on a loopback port.
type pod struct {
	addr    string
	h       *Handler
	set     *shard.Set
	members *cluster.Membership
}

// startPods starts a member on each of addrs, each reading its own peers
// file (files[i]), and waits until each is in its own view.
func startPods(t *testing.T, addrs, files []string) []*pod {
	t.Helper()
	pods := make([]*pod, len(addrs))
	for i, a := range addrs {
		m, err := cluster.New(cluster.Options{Self: a, File: files[i], Refresh: time.Hour})
		if err != nil {
			t.Fatal(err)
		}
		m.Start()
		_, h := serveAPI(t, a, Options{Cluster: m, ForwardTimeout: time.Second, MaxBatch: 1 << 20} /* the body limit alone: some tests send 1 MiB of small samples */, shard.Options{}, nil)
		pods[i] = &pod{addr: a, h: h, set: h.set, members: m}
	}
	return pods
}

func freeAddrs(t *testing.T, n int) []string {
	t.Helper()
	out := make([]string, n)
	for i := range out {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		out[i] = ln.Addr().String()
		ln.Close()
	}
	return out
}

func writePeers(t *testing.T, path string, addrs ...string) {
	t.Helper()
	if err := os.WriteFile(path+".tmp", []byte(strings.Join(addrs, "\n")), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(path+".tmp", path); err != nil {
		t.Fatal(err)
	}
}

// deviceOwnedBy returns a device ID that owner owns in the view of members.
func deviceOwnedBy(owner string, members []string) string {
	v := cluster.NewView(owner, members)
	for i := 0; ; i++ {
		if id := fmt.Sprint("d", i); v.Owner([]byte(id)) == owner {
			return id
		}
	}
}

func post(t *testing.T, addr, body string, header ...string) (int, []byte) {
	t.Helper()
	req, resp := fasthttp.AcquireRequest(), fasthttp.AcquireResponse()
	defer fasthttp.ReleaseRequest(req)
	defer fasthttp.ReleaseResponse(resp)
	req.SetRequestURI("http://" + addr + "/api/v1/ingest")
	req.Header.SetMethod("POST")
	for i := 0; i+1 < len(header); i += 2 {
		req.Header.Set(header[i], header[i+1])
	}
	req.SetBodyString(body)
	if err := fasthttp.DoTimeout(req, resp, 5*time.Second); err != nil {
		t.Fatal(err)
	}
	return resp.StatusCode(), append([]byte(nil), resp.Body()...)
}

func count(t *testing.T, p *pod, dev string) uint64 {
	t.Helper()
	ms, ok, err := p.set.Device(dev)
	if err != nil || !ok {
		return 0
	}
	return ms[0].Count
}

// TestForwardedNeverForwardedAgain: a request marked as forwarded, for a
// device the receiver neither owns nor holds, is refused whole with 421;
// the receiver forwards nothing and applies nothing. A loop cannot form.
func TestForwardedNeverForwardedAgain(t *testing.T) {
	addrs := freeAddrs(t, 2)
	file := filepath.Join(t.TempDir(), "peers")
	writePeers(t, file, addrs...)
	pods := startPods(t, addrs, []string{file, file})
	a, b := pods[0], pods[1]
	mine, theirs := deviceOwnedBy(a.addr, addrs), deviceOwnedBy(b.addr, addrs)
	body := fmt.Sprintf(`[{"device":%q,"metrics":{"m":1}},{"device":%q,"metrics":{"m":2}}]`, mine, theirs)
	code, out := post(t, a.addr, body, hdrForwarded, b.addr)
	if code != fasthttp.StatusMisdirectedRequest {
		t.Fatalf("marked request for a device A does not own: %d %s; want 421", code, out)
	}
	if a.set.Devices() != 0 || b.set.Devices() != 0 {
		t.Fatalf("devices held after a 421: A %d, B %d", a.set.Devices(), b.set.Devices())
	}
	if n := a.h.fwd.peer(b.addr).ok.Get() + a.h.fwd.peer(b.addr).failed.Get(); n != 0 {
		t.Fatalf("A forwarded a forwarded request (%d)", n)
	}
	// Unmarked, the same request is split: each device to its owner.
	if code, out := post(t, a.addr, body); code != 200 {
		t.Fatalf("unmarked: %d %s", code, out)
	}
	if count(t, a, mine) != 1 || count(t, b, theirs) != 1 || a.set.Devices() != 1 || b.set.Devices() != 1 {
		t.Fatalf("after the split: A holds %d, B holds %d", a.set.Devices(), b.set.Devices())
	}
}

// TestUnreachableOwnerAnswersApplied: an owner that cannot take a part (it
// answers 421 to every try) gets one retry after a refresh; then the
// request is answered 503 with the indexes applied, and resending the rest
// once the view has changed applies each sample exactly once.
func TestUnreachableOwnerAnswersApplied(t *testing.T) {
	addrs := freeAddrs(t, 2)
	file := filepath.Join(t.TempDir(), "peers")
	writePeers(t, file, addrs...)
	a := startPods(t, addrs[:1], []string{file})[0]
	startFake(t, addrs[1], answer421)
	mine, gone := deviceOwnedBy(addrs[0], addrs), deviceOwnedBy(addrs[1], addrs)
	samples := []string{fmt.Sprintf(`{"device":%q,"ts":1,"metrics":{"m":1}}`, gone), fmt.Sprintf(`{"device":%q,"ts":2,"metrics":{"m":1}}`, mine)}
	code, out := post(t, a.addr, "["+strings.Join(samples, ",")+"]")
	var r struct {
		Error   string
		Applied []int
	}
	if err := json.Unmarshal(out, &r); err != nil || code != 503 || !slices.Equal(r.Applied, []int{1}) {
		t.Fatalf("got %d %s; want 503 with applied [1]", code, out)
	}
	writePeers(t, file, addrs[0]) // the member leaves the view
	var rest []string
	for i, s := range samples {
		if !slices.Contains(r.Applied, i) {
			rest = append(rest, s)
		}
	}
	if code, out := post(t, a.addr, "["+strings.Join(rest, ",")+"]"); code != 200 {
		t.Fatalf("resend of the rest: %d %s", code, out)
	}
	if count(t, a, mine) != 1 || count(t, a, gone) != 1 {
		t.Fatalf("counts %d and %d; want each sample applied once", count(t, a, mine), count(t, a, gone))
	}
}

// TestRefusingOwnerSuspected: nothing listens at an owner's address (it
// crashed; the peer source still lists it): the sender takes it out of its
// view at once and the retry goes to the device's next owner, here the
// sender itself: answered 200, each sample applied once, and the suspicion
// rides on the sender's forwarded requests.
func TestRefusingOwnerSuspected(t *testing.T) {
	addrs := freeAddrs(t, 3) // the third never listens
	file := filepath.Join(t.TempDir(), "peers")
	writePeers(t, file, addrs...)
	pods := startPods(t, addrs[:2], []string{file, file})
	a := pods[0]
	gone := devOwned(addrs[2], addrs, addrs[0], addrs[:2])
	mine := deviceOwnedBy(addrs[0], addrs)
	body := fmt.Sprintf(`[{"device":%q,"ts":1,"metrics":{"m":1}},{"device":%q,"ts":2,"metrics":{"m":1}}]`, gone, mine)
	if code, out := post(t, a.addr, body); code != 200 {
		t.Fatalf("got %d %s; want 200", code, out)
	}
	if count(t, a, mine) != 1 || count(t, a, gone) != 1 {
		t.Fatalf("counts %d and %d; want each sample applied once, here", count(t, a, mine), count(t, a, gone))
	}
	s := a.h.fwd.members.Suspects()
	if len(s) != 1 || s[0].Member != addrs[2] || slices.Contains(a.h.fwd.members.View().Members, addrs[2]) {
		t.Fatalf("suspects %v, view %v; want %s out", s, a.h.fwd.members.View().Members, addrs[2])
	}
	// B hears of it with A's next forwarded request.
	theirs := deviceOwnedBy(addrs[1], addrs)
	if code, out := post(t, a.addr, fmt.Sprintf(`{"device":%q,"ts":3,"metrics":{"m":1}}`, theirs)); code != 200 {
		t.Fatalf("got %d %s", code, out)
	}
	// B hears it with the time A gave, not a new 5 s.
	if b := pods[1].h.fwd.members.Suspects(); len(b) != 1 || b[0].Member != addrs[2] || b[0].Until.After(s[0].Until.Add(time.Millisecond)) {
		t.Fatalf("B suspects %v; want %s until %v", b, addrs[2], s[0].Until)
	}
}

// TestMisdirectedRetriedOnRefreshedView: the owner in the sender's view
// answers 421 (it has left); the sender refreshes its view at once and
// sends the part to the device's new owner: one request, answered 200.
// misdirected starts pods A, B and C, then B leaves: B owns nothing now,
// and holds nothing, C's view has caught up and A's has not (it still sends
// B's devices to B). It returns the pods and a device B owned.
func misdirected(t *testing.T) (pods []*pod, dev string) {
	addrs := freeAddrs(t, 3)
	dir := t.TempDir()
	fa, fo := filepath.Join(dir, "a"), filepath.Join(dir, "others")
	writePeers(t, fa, addrs...)
	writePeers(t, fo, addrs...)
	pods = startPods(t, addrs, []string{fa, fo, fo})
	dev = deviceOwnedBy(addrs[1], addrs)
	pods[1].members.Leave()
	writePeers(t, fa, addrs[0], addrs[2])
	writePeers(t, fo, addrs[0], addrs[2])
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	if err := pods[2].members.Refresh(ctx); err != nil { // C's periodic refresh, now
		t.Fatal(err)
	}
	return pods, dev
}

func TestMisdirectedRetriedOnRefreshedView(t *testing.T) {
	pods, dev := misdirected(t)
	a, b := pods[0], pods[1]
	if code, out := post(t, a.addr, fmt.Sprintf(`{"device":%q,"metrics":{"m":1}}`, dev)); code != 200 {
		t.Fatalf("got %d %s; want 200 after one retry", code, out)
	}
	if b.set.Devices() != 0 || pods[0].set.Devices()+pods[2].set.Devices() != 1 {
		t.Fatalf("held: A %d, B %d, C %d; want the device once, not on B", a.set.Devices(), b.set.Devices(), pods[2].set.Devices())
	}
	if n := answered(b, "/api/v1/ingest", "POST", 421); n != 1 {
		t.Fatalf("421s from B: %d; want 1", n)
	}
}

// TestMisdirectedReadRetried: a read the owner of a stale view refuses
// (421) is asked again on the refreshed view and answered as the new owner
// answers it. It was answered 503, since the first attempt's failure was
// still remembered after the second one succeeded.
func TestMisdirectedReadRetried(t *testing.T) {
	pods, dev := misdirected(t)
	a, b := pods[0], pods[1]
	if code, body := doReq(t, "GET", "http://"+a.addr+"/api/v1/devices/"+dev, ""); code != fasthttp.StatusNotFound {
		t.Fatalf("read of an unknown device after a 421: %d %s; want 404 from the new owner", code, body)
	}
	if n := answered(b, "/api/v1/devices/{device}", "GET", 421); n != 1 {
		t.Fatalf("421s from B: %d; want 1", n)
	}
}

// answered counts p's answers with status code on endpoint. (The sender's
// per-peer series are gone once the peer left its view.)
func answered(p *pod, endpoint, method string, code int) uint64 {
	return p.h.ms.GetOrCreateCounter(fmt.Sprintf(`requests_total{route=%q,method=%q,status="%d"}`, endpoint, method, code)).Get()
}

// TestStoppedBetweenAttemptsKeepsApplied: a request part of which was
// applied, whose retry meets the shards stopping, is answered with the
// indexes applied. It was answered with the bare stopping error, which
// tells the client nothing was applied.
func TestStoppedBetweenAttemptsKeepsApplied(t *testing.T) {
	addrs := freeAddrs(t, 2)
	a, r := addrs[0], addrs[1]
	file := filepath.Join(t.TempDir(), "peers")
	writePeers(t, file, a, r)
	pa := reviewFPod(t, a, file, shard.Options{}, Options{})
	held := devOwned(a, addrs, "", nil)
	if code, out := post(t, a, fmt.Sprintf(`{"device":%q,"ts":1,"metrics":{"m":1}}`, held)); code != 200 {
		t.Fatalf("%d %s", code, out)
	}
	pa.members.Leave() // draining: A still applies what it holds, forwards the rest to R
	startFake(t, r, func(ctx *fasthttp.RequestCtx, _ <-chan struct{}) {
		time.Sleep(200 * time.Millisecond) // A applies its own part meanwhile
		pa.set.Stop()
		answer421(ctx, nil)
	})
	other := devOwned(r, addrs, "", nil)
	code, out := post(t, a, fmt.Sprintf(`[{"device":%q,"ts":2,"metrics":{"m":1}},{"device":%q,"ts":1,"metrics":{"m":1}}]`, held, other))
	if code != 503 || !strings.Contains(string(out), `"applied":[0]`) {
		t.Fatalf("got %d %s; want 503 with \"applied\":[0] (sample 0 was applied before the shards stopped)", code, out)
	}
}

// BenchmarkIngestRoute runs POST /api/v1/ingest (100 samples over 10,000
// devices) in process, without a network: a plain pod against a cluster
// of one (PEERS naming itself, wired as main.go wires it). Compare the two
// ns/op of one run: the cluster-mode path must cost nothing measurable
// when every device is owned here.
func BenchmarkIngestRoute(b *testing.B) {
	bodies := make([][]byte, 100)
	for k := range bodies {
		var parts []string
		for i := range 100 {
			parts = append(parts, fmt.Sprintf(`{"device":"sensor-%d","ts":1732560000123,"metrics":{"temp":%d.5,"hum":%d}}`, k*100+i, 20+(k+i)%7, 40+i%11))
		}
		bodies[k] = []byte("[" + strings.Join(parts, ",") + "]")
	}
	for _, mode := range []string{"plain", "cluster-of-one"} {
		b.Run(mode, func(b *testing.B) {
			so := shard.Options{Shards: 2}
			opts := Options{}
			if mode == "cluster-of-one" {
				m, err := cluster.New(cluster.Options{Self: "127.0.0.1:1", Static: []string{"127.0.0.1:1"}})
				if err != nil {
					b.Fatal(err)
				}
				hf := NewHandoff(HandoffOptions{Members: m, Metrics: metrics.NewSet()})
				so.Store, so.LoadOnly = hf, true
				opts.Cluster, opts.Handoff = m, hf
				defer func() { m.Stop(); hf.Stop() }()
				defer func() { opts.Shards.Stop() }()
				opts.Shards = shard.New(so)
				hf.Start(opts.Shards)
				m.Start()
			} else {
				opts.Shards = shard.New(so)
				defer opts.Shards.Stop()
			}
			h := New(opts)
			serve := h.Handler()
			var ctx fasthttp.RequestCtx
			run := func(k int) {
				ctx.Request.Reset()
				ctx.Response.Reset()
				ctx.Request.Header.SetMethod("POST")
				ctx.Request.SetRequestURI("/api/v1/ingest")
				ctx.Request.SetBody(bodies[k%len(bodies)])
				serve(&ctx)
				if ctx.Response.StatusCode() != 200 {
					b.Fatalf("%d %s", ctx.Response.StatusCode(), ctx.Response.Body())
				}
			}
			for k := range 2 * len(bodies) { // every device known, every window moving
				run(k)
			}
			b.ReportAllocs()
			b.ResetTimer()
			for k := 0; k < b.N; k++ {
				run(k)
			}
			b.ReportMetric(float64(b.N)*100/b.Elapsed().Seconds(), "samples/s")
		})
	}
}
