package server

// Hostile review G of the cluster handoff (shard/handoff.go, server/handoff.go,
// server/forward.go). Each test that fails shows a defect; its comment says
// what is wrong and what is expected. The pods here are wired as main.go
// wires a cluster member without Redis: the Set's Store is a Handoff,
// LoadOnly, and the membership's OnChange is Handoff.ViewChanged.

import (
	"context"
	"encoding/json"
	"fmt"
	"net"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"ai-load-service/server/cluster"
	"ai-load-service/shard"

	"github.com/VictoriaMetrics/metrics"
	"github.com/valyala/fasthttp"
)

// gPod is one in-process member wired as main.go wires it.
type gPod struct {
	addr    string
	h       *Handler
	set     *shard.Set
	members *cluster.Membership
	hf      *Handoff
	srv     *fasthttp.Server
	ln      *Listener
	once    sync.Once
}

type gOpts struct {
	forwardTimeout time.Duration
	handoffTimeout time.Duration
	// wrap, if set, wraps the pod's handler (to delay answers, say).
	wrap func(api fasthttp.RequestHandler) fasthttp.RequestHandler
}

func startGPod(t *testing.T, addr, file string, o gOpts) *gPod {
	t.Helper()
	if o.forwardTimeout == 0 {
		o.forwardTimeout = time.Second
	}
	if o.handoffTimeout == 0 {
		o.handoffTimeout = o.forwardTimeout
	}
	p := &gPod{addr: addr}
	m, err := cluster.New(cluster.Options{Self: addr, File: file, Refresh: time.Hour,
		OnChange: func(old, v *cluster.View) {
			if p.hf != nil {
				p.hf.ViewChanged(old, v)
			}
		}})
	if err != nil {
		t.Fatal(err)
	}
	ms := metrics.NewSet()
	p.hf = NewHandoff(HandoffOptions{Members: m, Timeout: o.handoffTimeout, Metrics: ms})
	p.set = shard.New(shard.Options{Shards: 2, Store: p.hf, LoadOnly: true})
	p.hf.Start(p.set)
	m.Start()
	p.members = m
	p.h = New(Options{Shards: p.set, Cluster: m, ForwardTimeout: o.forwardTimeout, Handoff: p.hf, Metrics: []*metrics.Set{ms}})
	p.h.SetReady()
	nl, err := net.Listen("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	p.ln = p.h.Listen(nl)
	p.srv = p.h.NewServer()
	if o.wrap != nil {
		p.srv.Handler = o.wrap(p.srv.Handler)
	}
	go p.srv.Serve(p.ln) //nolint:errcheck
	t.Cleanup(p.kill)
	return p
}

// kill stops the pod at once, handing nothing over (a crash, as far as
// the others can tell).
func (p *gPod) kill() {
	p.once.Do(func() {
		p.srv.Shutdown() //nolint:errcheck
		p.ln.Stop()
		p.set.Stop()
		p.members.Stop()
		p.hf.Stop()
	})
}

// refresh re-reads the pod's peers file now.
func (p *gPod) refresh(t *testing.T) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	if err := p.members.Refresh(ctx); err != nil {
		t.Fatal(err)
	}
}

// gCount is device dev's count of metric "m" held at p (0 if not held).
func gCount(p *gPod, dev string) uint64 {
	ms, ok, err := p.set.Device(dev)
	if err != nil || !ok {
		return 0
	}
	return ms[0].Count
}

// gHeld reports whether p holds dev, without loading it.
func gHeld(p *gPod, dev string) bool {
	held, _ := p.set.Held(dev)
	return held
}

// gDevice returns a device whose owner in each of lists is the matching
// entry of owners.
func gDevice(prefix string, owners []string, lists ...[]string) string {
	for i := 0; ; i++ {
		id := fmt.Sprintf("%s%d", prefix, i)
		ok := true
		for k, l := range lists {
			if cluster.NewView(owners[k], l).Owner([]byte(id)) != owners[k] {
				ok = false
				break
			}
		}
		if ok {
			return id
		}
	}
}

func gSample(dev string, ts int, v float64) string {
	return fmt.Sprintf(`{"device":%q,"ts":%d,"metrics":{"m":%g}}`, dev, ts, v)
}

// 1. TestReviewG_MovedSampleReportedApplied: applyCluster's all-local path
// (forward.go:287-292) marks every sample applied, then calls sp.moved for
// the samples the shards reported moved, without clearing their applied
// flag (sendParts' local path does clear it, forward.go:427). A moved
// sample therefore counts as applied before it was sent anywhere. When its
// new owner answers a partial 421 saying the device moved on again, the
// retry loop skips it ("case sp.applied[i]", forward.go:466) and, since
// the answer carried "moved", adds no problem either: the client gets 200
// {"accepted":1} for a sample no pod applied. When the new owner is down,
// the client gets 503 with the sample listed in "applied", so it never
// resends it. Either way an acknowledged sample is lost.
func TestReviewG_MovedSampleReportedApplied(t *testing.T) {
	t.Run("moved on again: 200 for a lost sample", func(t *testing.T) {
		addrs := freeAddrs(t, 3)
		a, x, y := addrs[0], addrs[1], addrs[2]
		dir := t.TempDir()
		fa, fx, fy := filepath.Join(dir, "a"), filepath.Join(dir, "x"), filepath.Join(dir, "y")
		// Three views of a cluster growing A → A,X → A,X,Y, each pod's
		// refresh lagging the next: A still sees itself alone, X does not
		// see Y yet.
		writePeers(t, fa, a)
		writePeers(t, fx, a, x)
		writePeers(t, fy, a, x, y)
		dev := gDevice("mv", []string{x, y}, []string{a, x}, []string{a, x, y})
		pa := startGPod(t, a, fa, gOpts{})
		if code, out := post(t, a, gSample(dev, 1, 1)); code != 200 {
			t.Fatalf("sample 1 at A: %d %s", code, out)
		}
		px := startGPod(t, x, fx, gOpts{})
		if code, out := post(t, x, gSample(dev, 2, 1)); code != 200 { // X takes the device from A
			t.Fatalf("sample 2 at X: %d %s", code, out)
		}
		py := startGPod(t, y, fy, gOpts{})
		if code, out := post(t, y, gSample(dev, 3, 1)); code != 200 { // Y takes it from X
			t.Fatalf("sample 3 at Y: %d %s", code, out)
		}
		if got := gCount(py, dev); got != 3 {
			t.Fatalf("after three samples Y holds count %d; want 3 (the handoffs A→X→Y)", got)
		}
		// A client still sending to A: A's view says A owns the device, its
		// shard says it went to X, X says it went on to Y.
		code, out := post(t, a, gSample(dev, 4, 1))
		got := gCount(py, dev)
		if code == 200 && got != 4 {
			t.Fatalf("sample 4 sent to A answered 200 %s, but Y (the holder) counts %d samples; want 4.\n"+
				"The sample was applied nowhere (A holds %v, X holds %v): a moved sample is marked applied by applyCluster's local path, so the retry after X's \"moved\" answer skips it",
				out, got, gHeld(pa, dev), gHeld(px, dev))
		}
		if code != 200 && strings.Contains(string(out), `"applied":[0]`) && got != 4 {
			t.Fatalf("sample 4 answered %d %s, listing it as applied, but Y counts %d; want 4", code, out, got)
		}
	})
	t.Run("new owner down: 503 lists the sample as applied", func(t *testing.T) {
		addrs := freeAddrs(t, 2)
		a, x := addrs[0], addrs[1]
		dir := t.TempDir()
		fa, fx := filepath.Join(dir, "a"), filepath.Join(dir, "x")
		writePeers(t, fa, a) // A's view lags: X joined, A has not re-read yet
		writePeers(t, fx, a, x)
		dev := gDevice("dn", []string{x}, []string{a, x})
		pa := startGPod(t, a, fa, gOpts{forwardTimeout: 300 * time.Millisecond})
		if code, out := post(t, a, gSample(dev, 1, 1)); code != 200 {
			t.Fatalf("sample 1 at A: %d %s", code, out)
		}
		px := startGPod(t, x, fx, gOpts{})
		if code, out := post(t, x, gSample(dev, 2, 1)); code != 200 { // X takes the device from A
			t.Fatalf("sample 2 at X: %d %s", code, out)
		}
		px.kill() // the new pod dies
		code, out := post(t, a, gSample(dev, 3, 1))
		var r struct{ Applied []int }
		_ = json.Unmarshal(out, &r)
		if code != 200 && len(r.Applied) == 1 && r.Applied[0] == 0 {
			t.Fatalf("sample 3 sent to A: %d %s\nIt was applied nowhere (A handed the device to X, which is down; A holds it: %v), yet \"applied\" lists it, so the client will never resend it; want it left out of \"applied\"",
				code, out, gHeld(pa, dev))
		}
	})
}
