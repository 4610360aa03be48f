package server

// Hostile review H of the cluster handoff after review G's fixes. Each
// test that fails shows a defect; its comment says what is wrong and what
// is expected. Pods are wired as main.go wires them (see startGPod in
// review_g_test.go, or startHPod here for a member with Redis).

import (
	"context"
	"fmt"
	"net"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"ai-load-service/persist"
	"ai-load-service/server/cluster"
	"ai-load-service/shard"

	"github.com/VictoriaMetrics/metrics"
	"github.com/valyala/fasthttp"
)

// 1. TestReviewH_SuspicionGossipNeverExpires: a member that refused one
// connection is meant to be out of the view for suspectFor (5 s), "unless
// heard from" (forward.go:104). But every forwarded request carries the
// sender's Suspects() (forward.go:121), which lists every entry of the
// suspects map, expired or not (cluster/membership.go Suspects does not
// look at the deadline; only installLocked prunes, at a refresh), and the
// receiver's heard() calls Suspect(m, 5s) for each (forward.go:137), which
// sets a fresh deadline (membership.go Suspect). Two members forwarding to
// each other keep renewing each other's suspicion of a third, live member
// for as long as traffic flows: it is never back in their views, so it
// owns none of its devices on them and they hold its devices.
//
// Here X is down for one request at A (a restart on the same address),
// then up and healthy; A and B exchange ordinary forwarded traffic. Eight
// seconds later, after a refresh of both views, X must be back (nothing
// refused since).
func TestReviewH_SuspicionGossipNeverExpires(t *testing.T) {
	addrs := freeAddrs(t, 3)
	a, b, x := addrs[0], addrs[1], addrs[2]
	file := filepath.Join(t.TempDir(), "peers")
	writePeers(t, file, a, b, x)
	all, noX := []string{a, b, x}, []string{a, b}
	devX := gDevice("hx", []string{x, a}, all, noX) // A's once X is out
	devA := gDevice("ha", []string{a, a}, all, noX) // A's in both views
	devB := gDevice("hb", []string{b, b}, all, noX) // B's in both views
	pa := startGPod(t, a, file, gOpts{})
	pb := startGPod(t, b, file, gOpts{})
	// X is restarting: A's forward is refused once; A suspects X, and
	// applies the sample itself (X's successor).
	if code, out := post(t, a, gSample(devX, 1, 1)); code != 200 {
		t.Fatalf("sample for X's device at A while X is down: %d %s", code, out)
	}
	if !slices.ContainsFunc(pa.members.Suspects(), func(s cluster.Suspect) bool { return s.Member == x }) {
		t.Fatalf("A does not suspect X after X refused a connection; suspects %v", pa.members.Suspects())
	}
	refusedAt := time.Now()
	startGPod(t, x, file, gOpts{}) // X is back, healthy
	// Ordinary traffic between A and B: each forwards to the other.
	for ts := 2; time.Since(refusedAt) < 8*time.Second; ts++ {
		if code, out := post(t, a, gSample(devB, ts, 1)); code != 200 {
			t.Fatalf("sample at A: %d %s", code, out)
		}
		if code, out := post(t, b, gSample(devA, ts, 1)); code != 200 {
			t.Fatalf("sample at B: %d %s", code, out)
		}
		time.Sleep(100 * time.Millisecond)
	}
	pa.refresh(t)
	pb.refresh(t)
	for _, p := range []*gPod{pa, pb} {
		if v := p.members.View(); !slices.Contains(v.Members, x) {
			t.Fatalf("%s's view %v still leaves X out (suspects %v), %v after X's only refused connection and a refresh;\n"+
				"want X back after suspectFor (5s): A and B renew each other's suspicion of X through X-Aiload-Suspects on every forwarded request",
				p.addr, v.Members, p.members.Suspects(), time.Since(refusedAt).Round(time.Second))
		}
	}
}

// 2. TestReviewH_FourJoinAtOnceLosesState: review G's defect 2 (two pods
// joining at once) was fixed by asking the top four of the ranking
// (cluster/rendezvous.go sourceRank = 4, View.Sources). The ranking
// includes the asking pod itself, so only three others are asked, and a
// scale-out by four at once (1 → 5, or 2 → 6: kubectl scale, an HPA step)
// leaves out the old owner of every device that ranks fifth: the new
// owner, whose first view is the whole new cluster (no past view names
// the old owner), asks three newcomers that never held the device, gets
// 204 from each and starts it fresh. The old owner keeps its copy: the
// history is lost and two pods hold the device. Expected: the new owner
// finds the state wherever the device was held.
func TestReviewH_FourJoinAtOnceLosesState(t *testing.T) {
	addrs := freeAddrs(t, 5)
	a := addrs[0]
	file := filepath.Join(t.TempDir(), "peers")
	writePeers(t, file, a)
	// A ranks last (fifth) for the device among all five.
	var dev string
	for i := 0; dev == ""; i++ {
		id := fmt.Sprint("fj", i)
		if r := cluster.NewView("", addrs).Rank([]byte(id), 5, nil); r[4] == a {
			dev = id
		}
	}
	owner := cluster.NewView("", addrs).Owner([]byte(dev))
	pa := startGPod(t, a, file, gOpts{})
	for i := range 20 {
		if code, out := post(t, a, gSample(dev, i+1, float64(i%3))); code != 200 {
			t.Fatalf("sample %d at A: %d %s", i+1, code, out)
		}
	}
	writePeers(t, file, addrs...) // four join at once
	pods := []*gPod{pa}
	var po *gPod
	for _, ad := range addrs[1:] {
		p := startGPod(t, ad, file, gOpts{})
		pods = append(pods, p)
		if ad == owner {
			po = p
		}
	}
	pa.refresh(t)
	if code, out := post(t, a, gSample(dev, 21, 1)); code != 200 { // A forwards it to the owner now
		t.Fatalf("sample 21 at A: %d %s", code, out)
	}
	held := 0
	for _, p := range pods {
		if gHeld(p, dev) {
			held++
		}
	}
	if got := gCount(po, dev); got != 21 || held != 1 {
		t.Fatalf("after 20 samples at A, four pods joining at once and a 21st sample: the new owner counts %d, want 21; pods holding the device %d, want 1 (A holds it: %v).\n"+
			"View.Sources asks the top %d of the ranking, the asking pod among them: A, fifth, is never asked and the device starts fresh",
			got, held, gHeld(pa, dev), 4)
	}
}

// hCheck compares every client device held by pods with ref: held once,
// same count, mean and anomalies.
func hCheck(t *testing.T, pods []*gPod, clients []*gClient, ref *shard.Set) {
	t.Helper()
	bad := 0
	for _, c := range clients {
		for d := range c.devices {
			dev := fmt.Sprintf("c%d-dev%d", c.id, d)
			want, ok, _ := ref.Device(dev)
			if !ok {
				continue
			}
			holders := 0
			var got []shard.MetricState
			var at []string
			for _, p := range pods {
				if gHeld(p, dev) {
					holders++
					at = append(at, p.addr)
					got, _, _ = p.set.Device(dev)
				}
			}
			if holders != 1 || len(got) != 1 || got[0].Count != want[0].Count || got[0].Mean != want[0].Mean || got[0].Anomalies != want[0].Anomalies {
				bad++
				if bad <= 10 {
					t.Errorf("%s: held by %d pods %v; got %+v\nwant %+v", dev, holders, at, got, want)
				}
			}
		}
	}
	if bad > 0 {
		t.Errorf("%d devices wrong", bad)
	}
}

// hRun runs clients until stop is closed and returns their first error.
func hRun(t *testing.T, clients []*gClient, stop chan struct{}) func() error {
	errs := make(chan error, len(clients))
	for i := range clients {
		go func() { errs <- clients[i].run(t, stop, i) }()
	}
	return func() error {
		close(stop)
		var first error
		for range clients {
			if err := <-errs; err != nil && first == nil {
				first = err
			}
		}
		return first
	}
}

// 3. TestReviewH_RestartSameAddressUnderTraffic: a member restarts at the
// same address (a StatefulSet pod: SIGTERM, hand over, exit, start again)
// while clients send through every member, resending what a 503 did not
// list as applied. While it is down the others' forwards to it are
// refused and they suspect it; when it is back it owns its devices again.
// Every device must end held once, equal to a reference fed the
// acknowledged samples.
func TestReviewH_RestartSameAddressUnderTraffic(t *testing.T) {
	addrs := freeAddrs(t, 3)
	file := filepath.Join(t.TempDir(), "peers")
	writePeers(t, file, addrs...)
	pods := make([]*gPod, 3)
	for i := range pods {
		pods[i] = startGPod(t, addrs[i], file, gOpts{})
	}
	ref := shard.New(shard.Options{Shards: 2})
	t.Cleanup(ref.Stop)
	clients := make([]*gClient, 4)
	for i := range clients {
		clients[i] = &gClient{id: i, devices: 25, ref: ref, pods: func() []string { return addrs }}
	}
	wait := hRun(t, clients, make(chan struct{}))
	time.Sleep(400 * time.Millisecond)
	for cycle := range 2 {
		offered, err := pods[2].stop(t)
		t.Logf("cycle %d: pod 3 offered %d devices (err %v)", cycle, offered, err)
		time.Sleep(300 * time.Millisecond) // down: the others' forwards are refused
		pods[2] = startGPod(t, addrs[2], file, gOpts{})
		time.Sleep(700 * time.Millisecond)
	}
	if err := wait(); err != nil {
		t.Fatal(err)
	}
	for _, c := range clients {
		t.Logf("client %d: %d batches, %d samples resent", c.id, c.sent, c.resent)
	}
	hCheck(t, pods, clients, ref)
}

// 4. TestReviewH_SuspectedHolderNeverAsked: View.Sources
// (cluster/rendezvous.go) lists the owners of the last keepPast (3) views,
// then the top of the ranking of the current view. A suspected member is
// out of the current view (Membership.Suspect), so it is never ranked; it
// is asked only while one of the last three views names it owner. After a
// few view changes (here the peers file adding and dropping a pod, as a
// scale-out and a rollback do; suspicion flaps of other members count as
// well) a pod that owns a device under the suspicion loads it, asks only
// members that never held it, and starts it fresh (no Redis), while the
// live, suspected holder keeps the whole state: two copies, history lost.
// Suspicion of a live member is ordinary: it travels as X-Aiload-Suspects
// from any member that was refused a connection once (and, see test 1,
// lasts as long as traffic flows). Expected: a load asks every member that
// may hold the device, suspected or not (a refused ask costs nothing).
func TestReviewH_SuspectedHolderNeverAsked(t *testing.T) {
	addrs := freeAddrs(t, 4)
	a, b, hAddr, c := addrs[0], addrs[1], addrs[2], addrs[3]
	dir := t.TempDir()
	fa, fo := filepath.Join(dir, "a"), filepath.Join(dir, "others")
	writePeers(t, fa, a, b, hAddr)
	writePeers(t, fo, a, b, hAddr)
	// H owns the device among A, B, H; A owns it once H is out of the view,
	// with or without C.
	dev := gDevice("sh", []string{hAddr, a, a}, []string{a, b, hAddr}, []string{a, b}, []string{a, b, c})
	pa := startGPod(t, a, fa, gOpts{})
	startGPod(t, b, fo, gOpts{})
	ph := startGPod(t, hAddr, fo, gOpts{})
	for i := range 20 {
		if code, out := post(t, a, gSample(dev, i+1, float64(i%3))); code != 200 { // applied at H
			t.Fatalf("sample %d: %d %s", i+1, code, out)
		}
	}
	if got := gCount(ph, dev); got != 20 {
		t.Fatalf("H counts %d; want 20", got)
	}
	// B was refused a connection to H once and says so on a request it
	// forwards to A (any device of A's will do).
	own := gDevice("ao", []string{a}, []string{a, b, hAddr})
	// (The header gives each suspect's deadline since the fix of test 1.)
	gossip := hAddr + "@" + strconv.FormatInt(time.Now().Add(suspectFor).UnixMilli(), 10)
	if code, out := post(t, a, gSample(own, 1, 1), hdrForwarded, b, hdrSuspects, gossip); code != 200 {
		t.Fatalf("forwarded sample at A: %d %s", code, out)
	}
	if v := pa.members.View(); slices.Contains(v.Members, hAddr) {
		t.Fatalf("A's view %v still has H after B's X-Aiload-Suspects", v.Members)
	}
	// Three more view changes at A: C is listed, dropped, listed again.
	for _, l := range [][]string{{a, b, hAddr, c}, {a, b, hAddr}, {a, b, hAddr, c}} {
		writePeers(t, fa, l...)
		pa.refresh(t)
	}
	// A now owns the device and takes it over on its next sample.
	if code, out := post(t, a, gSample(dev, 21, 1)); code != 200 {
		t.Fatalf("sample 21 at A: %d %s", code, out)
	}
	if got := gCount(pa, dev); got != 21 || gHeld(ph, dev) {
		t.Fatalf("A, the owner while H is suspected, counts %d; want 21 (H's 20, then sample 21). H still holds the device: %v (want false).\n"+
			"A asked only the owners of its last 3 views and the top of a ranking that leaves the suspected H out; H, alive and holding the state, was never asked",
			got, gHeld(ph, dev))
	}
}

// 5. TestReviewH_HandOverIgnoresDeadOwner: a stopping member offers each
// device to its owner by its view (HandOver, server/handoff.go); only a
// member that answers 503 (leaving too) is left out and its devices offered
// to the next owner. A member that refuses the connection (it crashed; the
// source still lists it: a peers file, or a headless Service with
// publishNotReadyAddresses, as docs/cluster.md recommends, while the
// kubelet restarts it) is offered the same devices in all three rounds and
// they stay with the stopping member, which then exits: without Redis
// their state is lost, though a live member (the next owner) could have
// taken them. The forwarder suspects a member that refuses a connection
// (forward.go refused); HandOver's offers do not. Expected: devices whose
// owner cannot be reached are offered to the next live owner.
func TestReviewH_HandOverIgnoresDeadOwner(t *testing.T) {
	addrs := freeAddrs(t, 3)
	s, r1, r2 := addrs[0], addrs[1], addrs[2]
	file := filepath.Join(t.TempDir(), "peers")
	writePeers(t, file, s, r1, r2)
	// S owns it; without S, R1; without S and R1, R2.
	dev := gDevice("ho", []string{s, r1}, []string{s, r1, r2}, []string{r1, r2})
	ps := startGPod(t, s, file, gOpts{})
	pr1 := startGPod(t, r1, file, gOpts{})
	pr2 := startGPod(t, r2, file, gOpts{})
	for i := range 20 {
		if code, out := post(t, s, gSample(dev, i+1, float64(i%3))); code != 200 {
			t.Fatalf("sample %d at S: %d %s", i+1, code, out)
		}
	}
	pr1.kill() // R1 crashes; the peers file still lists it
	offered, err := ps.stop(t)
	if !gHeld(pr2, dev) {
		t.Fatalf("S stopped (offered %d, err %v) while R1, the device's next owner, was down; R2, alive, does not hold the device.\n"+
			"Want R2 to hold it with its 20 samples: HandOver offered it to the dead R1 three times and S exited with it (no Redis: lost)", offered, err)
	}
	if got := gCount(pr2, dev); got != 20 {
		t.Fatalf("R2 counts %d; want 20", got)
	}
}

// hRedisServer is a redis-server on a loopback port with an append-only
// file, so it can be killed and restarted with its data.
type hRedisServer struct {
	t    *testing.T
	addr string
	dir  string
	cmd  *exec.Cmd
}

func (r *hRedisServer) start() {
	r.t.Helper()
	_, port, _ := net.SplitHostPort(r.addr)
	r.cmd = exec.Command("redis-server", "--port", port, "--bind", "127.0.0.1", "--save", "",
		"--appendonly", "yes", "--appendfsync", "always", "--dir", r.dir)
	if err := r.cmd.Start(); err != nil {
		r.t.Fatal(err)
	}
	for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline); time.Sleep(20 * time.Millisecond) {
		if c, err := net.Dial("tcp", r.addr); err == nil {
			c.Close()
			return
		}
	}
	r.t.Fatal("redis-server did not start")
}

func (r *hRedisServer) kill() {
	if r.cmd != nil {
		r.cmd.Process.Kill() //nolint:errcheck
		r.cmd.Wait()         //nolint:errcheck
		r.cmd = nil
	}
}

func startHRedis(t *testing.T) *hRedisServer {
	t.Helper()
	if _, err := exec.LookPath("redis-server"); err != nil {
		t.Fatal("redis-server not found")
	}
	r := &hRedisServer{t: t, addr: freeAddrs(t, 1)[0], dir: t.TempDir()}
	r.start()
	t.Cleanup(r.kill)
	return r
}

// hPod is a member with Redis, wired as main.go wires it: a fenced
// persist.Writer behind the Handoff.
type hPod struct {
	*gPod
	w *persist.Writer
}

func startHPod(t *testing.T, addr, file, redis string, interval time.Duration) *hPod {
	t.Helper()
	p := &hPod{gPod: &gPod{addr: addr}}
	m := p.membership(t, file)
	ms := metrics.NewSet()
	p.w = persist.New(persist.Options{Addrs: []string{redis}, Interval: interval, Timeout: time.Second, Fence: true})
	p.hf = NewHandoff(HandoffOptions{Members: m, Next: p.w, Timeout: time.Second, Metrics: ms})
	p.set = shard.New(shard.Options{Shards: 2, Store: p.hf, Tombstone: time.Minute})
	p.w.Start(p.set)
	p.hf.Start(p.set)
	m.Start()
	p.members = m
	p.h = New(Options{Shards: p.set, Cluster: m, ForwardTimeout: time.Second, Handoff: p.hf, Metrics: []*metrics.Set{ms, p.w.Metrics()}})
	p.serve(t, nil)
	t.Cleanup(func() { p.stop(t) })
	return p
}

// stop stops the member as main.go does on SIGTERM in cluster mode: leave,
// hand over, seal and write the final snapshot while still answering
// handoffs, then stop serving and stop the shards.
func (p *hPod) stop(t *testing.T) (offered int, err error) {
	p.once.Do(func() {
		p.members.Leave()
		p.h.SetDraining()
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		offered, err = p.h.HandOver(ctx)
		cancel()
		sctx, scancel := context.WithTimeout(context.Background(), 4*time.Second)
		_ = p.set.Seal(sctx)
		_, _ = p.w.Stop(sctx)
		scancel()
		p.srv.Shutdown() //nolint:errcheck
		p.ln.Stop()
		p.set.Stop()
		p.members.Stop()
		p.hf.Stop()
	})
	return offered, err
}

// hConnected reports whether p's persister is connected to Redis.
func hConnected(p *hPod) bool {
	var b strings.Builder
	p.w.Metrics().WritePrometheus(&b)
	return strings.Contains(b.String(), "\nredis_connected 1")
}

// 6. TestReviewH_UnrestoredPairNeverReconciles: with Redis, a device whose
// load failed is unrestored: it serves fresh state and the persister
// retries its load every second. A member whose copy is unrestored
// answers a handoff ask 409 (busy), and Handoff.load, having met a busy
// member, gives up with an error after 2×timeout instead of asking Redis
// (server/handoff.go load: "stuck", then done(nil, err)), so the asker
// stays unrestored too. Two members each holding an unrestored copy ask
// each other first on every retry, both get 409, neither ever asks Redis:
// the pair never reconciles, however long Redis has been back.
//
// It takes one Redis blip during a scale-out: A (the owner) loads the
// device while Redis is down and serves it unrestored; X joins and owns
// it, asks A (busy) and is left unrestored; Redis comes back. Seconds
// later the owner still serves the device without its stored history
// (every read is wrong), nothing of it is written (a SIGKILL loses all of
// it), and A's samples from the outage never reach X. Expected: once Redis
// answers, the device is restored from it (and A's copy reconciled and
// handed over).
func TestReviewH_UnrestoredPairNeverReconciles(t *testing.T) {
	r := startHRedis(t)
	addrs := freeAddrs(t, 2)
	a, x := addrs[0], addrs[1]
	dir := t.TempDir()
	fa, fx := filepath.Join(dir, "a"), filepath.Join(dir, "x")
	writePeers(t, fa, a)
	writePeers(t, fx, a, x)
	dev := gDevice("up", []string{a, x}, []string{a}, []string{a, x})
	// The device's history, 30 samples, is in Redis.
	pa := startHPod(t, a, fa, r.addr, 100*time.Millisecond)
	for i := range 30 {
		if code, out := hPost(t, a, gSample(dev, i+1, float64(i%3))); code != 200 {
			t.Fatalf("sample %d: %d %s", i+1, code, out)
		}
	}
	pa.stop(t) // final snapshot: count 30
	// Redis blips; A restarts meanwhile and its first sample of the device
	// finds Redis down.
	r.kill()
	pa = startHPod(t, a, fa, r.addr, 100*time.Millisecond)
	if code, out := hPost(t, a, gSample(dev, 31, 1)); code != 200 {
		t.Fatalf("sample 31 at A: %d %s", code, out)
	}
	if pa.set.Unrestored() != 1 {
		t.Fatalf("A has %d unrestored devices; want 1 (Redis is down)", pa.set.Unrestored())
	}
	// Scale-out: X joins and owns the device; A sees it.
	px := startHPod(t, x, fx, r.addr, 100*time.Millisecond)
	writePeers(t, fa, a, x)
	pa.refresh(t)
	if code, out := hPost(t, x, gSample(dev, 32, 1)); code != 200 { // X asks A: busy
		t.Fatalf("sample 32 at X: %d %s", code, out)
	}
	r.start() // Redis is back
	for deadline := time.Now().Add(10 * time.Second); !hConnected(pa) || !hConnected(px); time.Sleep(50 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("the persisters did not reconnect to Redis")
		}
	}
	time.Sleep(6 * time.Second) // several retries of both loads
	got := gCount(px.gPod, dev)
	if got != 32 || px.set.Unrestored() != 0 || pa.set.Unrestored() != 0 {
		t.Fatalf("6 s after Redis came back (both persisters connected), X (the owner) counts %d, want 32 (30 stored, 31 at A, 32 at X);\n"+
			"unrestored devices: X %d, A %d, want 0 and 0; loads given up on a busy member: X %d, A %d.\n"+
			"Each copy is unrestored, each member's retry asks the other first, gets 409 and gives up without asking Redis",
			got, px.set.Unrestored(), pa.set.Unrestored(), px.hf.busy.Get(), pa.hf.busy.Get())
	}
}

// hPost is post, sent again when the connection it used was one a
// stopped server had closed.
func hPost(t *testing.T, addr, body string) (int, []byte) {
	t.Helper()
	for try := 0; ; try++ {
		req, resp := fasthttp.AcquireRequest(), fasthttp.AcquireResponse()
		req.SetRequestURI("http://" + addr + "/api/v1/ingest")
		req.Header.SetMethod("POST")
		req.SetBodyString(body)
		err := fasthttp.DoTimeout(req, resp, 10*time.Second)
		code, out := resp.StatusCode(), append([]byte(nil), resp.Body()...)
		fasthttp.ReleaseRequest(req)
		fasthttp.ReleaseResponse(resp)
		if err == nil {
			return code, out
		}
		if try == 3 {
			t.Fatal(err)
		}
	}
}

// 7. TestReviewH_SuspectsHeaderIgnoredByItsOwnRequest: X-Aiload-Suspects
// exists so that "the receiver takes them out too, so the two agree on who
// owns their devices (otherwise the receiver, still counting a dead member,
// refuses the part with 421)" (forward.go hdrSuspects). But applyCluster
// loads the view first and calls heard() after (forward.go applyCluster:
// view := ...View(); then heard(ctx); applyForwarded(ctx, st, view)), so
// the request carrying the header is checked against the view from before
// the suspicion and refused with 421 exactly as without the header. With
// a member just dead, the sender's retry (after its refresh) is that
// request: the client gets 503 with nothing applied for every device the
// dead member's successor owns, though sender and successor agree by then.
// Expected: the forwarded part is applied (200), as the header promises.
func TestReviewH_SuspectsHeaderIgnoredByItsOwnRequest(t *testing.T) {
	addrs := freeAddrs(t, 3)
	a, b, x := addrs[0], addrs[1], addrs[2]
	file := filepath.Join(t.TempDir(), "peers")
	writePeers(t, file, a, b, x)
	// X owns it; without X, B.
	dev := gDevice("sx", []string{x, b}, []string{a, b, x}, []string{a, b})
	startGPod(t, a, file, gOpts{})
	pb := startGPod(t, b, file, gOpts{})
	// X is dead (never started here): A's forward to it is refused, A
	// suspects X and resends to B with X-Aiload-Suspects: X.
	code, out := post(t, a, gSample(dev, 1, 1))
	if code != 200 {
		t.Fatalf("sample for a device of the dead X, sent to A: %d %s;\n"+
			"want 200: A suspects X and sends it to B, X's successor, with X-Aiload-Suspects; B takes X out of its view on that request (view now %v) but checked the request against its view from before, and refused it with 421",
			code, out, pb.members.View().Members)
	}
	if got := gCount(pb, dev); got != 1 {
		t.Fatalf("B counts %d; want 1", got)
	}
}

// TestReviewH_SuspectsHeaderIgnoredByItsOwnRead: the same for a read
// (forward.go forwardRead loads the view, then calls heard()): a read of a
// dead member's device is answered 503 by its successor's refusal (421)
// instead of by the successor.
func TestReviewH_SuspectsHeaderIgnoredByItsOwnRead(t *testing.T) {
	addrs := freeAddrs(t, 3)
	a, b, x := addrs[0], addrs[1], addrs[2]
	file := filepath.Join(t.TempDir(), "peers")
	writePeers(t, file, a, b, x)
	dev := gDevice("rx", []string{x, b}, []string{a, b, x}, []string{a, b})
	startGPod(t, a, file, gOpts{})
	startGPod(t, b, file, gOpts{})
	code, body := doReq(t, "GET", "http://"+a+"/api/v1/devices/"+dev, "")
	if code != 404 && code != 200 {
		t.Fatalf("read of a device of the dead X at A: %d %s; want B's answer (404: it holds nothing):\n"+
			"B refused A's retry, which carried X-Aiload-Suspects: X, with 421, judging it by its view from before the header", code, body)
	}
}

// 8. TestReviewH_HandedOutCountsRetries: handoffs_out_total is "devices
// handed over to other members" (server.go handedOut). A taker whose
// answer was lost asks again with the same token and gets the same state
// again (shard/handoff.go: the tombstone's bytes); the handoff route
// counts that second answer as a second device handed over
// (handoff.go: h.handedOut.Inc() on every State). One device, handed
// once, is counted twice; the taker's handoffs_in_total{from="member"}
// counts it once. Expected: 1.
func TestReviewH_HandedOutCountsRetries(t *testing.T) {
	addrs := freeAddrs(t, 2)
	a, x := addrs[0], addrs[1]
	file := filepath.Join(t.TempDir(), "peers")
	writePeers(t, file, a)
	dev := gDevice("ho", []string{a}, []string{a})
	pa := startGPod(t, a, file, gOpts{})
	for i := range 5 {
		if code, out := post(t, a, gSample(dev, i+1, 1)); code != 200 {
			t.Fatalf("sample: %d %s", code, out)
		}
	}
	// X's ask, and its retry after the first answer was lost.
	for try := range 2 {
		req, resp := fasthttp.AcquireRequest(), fasthttp.AcquireResponse()
		req.SetRequestURI("http://" + a + handoffPath)
		req.Header.SetMethod("POST")
		req.Header.Set(hdrForwarded, x)
		req.Header.Set(hdrToken, "12345")
		req.SetBodyString(dev)
		if err := fasthttp.DoTimeout(req, resp, 5*time.Second); err != nil || resp.StatusCode() != 200 {
			t.Fatalf("ask %d: %v %d %s", try+1, err, resp.StatusCode(), resp.Body())
		}
		fasthttp.ReleaseRequest(req)
		fasthttp.ReleaseResponse(resp)
	}
	if got := pa.h.handedOut.Get(); got != 1 {
		t.Fatalf("handoffs_out_total %d after handing one device to one member (asked twice with the same token: the first answer lost); want 1", got)
	}
}
