package main

import (
	"ai-load-service/server/cluster/dnstest"
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"
)

// startCluster starts n pods that find each other through a peers file.
func startCluster(t *testing.T, bin string, n int, env ...string) ([]*service, string) {
	t.Helper()
	addrs := make([]string, n)
	for i := range addrs {
		addrs[i] = freeAddr(t)
	}
	file := filepath.Join(t.TempDir(), "peers")
	if err := os.WriteFile(file, []byte(strings.Join(addrs, "\n")+"\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	pods := make([]*service, n)
	for i, a := range addrs {
		pods[i] = startServiceAt(t, bin, a, append([]string{"PEERS_FILE=" + file, "SELF_ADDR=" + a, "PEERS_REFRESH=200ms"}, env...)...)
	}
	return pods, file
}

// clusterBatch is one request of n samples over devices, values drawn
// from rng, spikes now and then, every ts explicit.
func clusterBatch(rng *rand.Rand, devices, n int, ts int64) string {
	return clusterBatchFrom(rng, 0, devices, n, ts)
}

// clusterBatchFrom is clusterBatch over devices first to first+devices-1.
func clusterBatchFrom(rng *rand.Rand, first, devices, n int, ts int64) string {
	parts := make([]string, n)
	for i := range parts {
		d := first + rng.IntN(devices)
		v := float64(d%13) + rng.NormFloat64()
		if rng.IntN(40) == 0 {
			v += 50
		}
		parts[i] = fmt.Sprintf(`{"device":"dev-%d","ts":%d,"metrics":{"temp":%g,"hum":%g}}`, d, ts+int64(i), v, 40+rng.Float64())
	}
	return "[" + strings.Join(parts, ",") + "]"
}

// TestClusterMatchesReference: three pods (PEERS_FILE) and a stand-alone
// reference get the same stream, each batch sent to a random pod. Every
// device read from any pod equals the reference exactly (state and alert
// history), and each device is held by exactly one pod.
func TestClusterMatchesReference(t *testing.T) {
	bin := buildService(t)
	pods, _ := startCluster(t, bin, 3)
	ref := startService(t, bin)
	const devices = 60
	rng := rand.New(rand.NewPCG(11, 12))
	for round := range 40 {
		body := clusterBatch(rng, devices, 25, int64(1_000_000+round*100))
		pods[rng.IntN(len(pods))].post(t, body)
		ref.post(t, body)
	}
	checkAgainst(t, ref, pods, devices)
}

// writePeers replaces the peers file by rename, as a ConfigMap volume does.
func writePeers(t *testing.T, file string, addrs []string) {
	t.Helper()
	tmp := file + ".tmp"
	if err := os.WriteFile(tmp, []byte(strings.Join(addrs, "\n")+"\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp, file); err != nil {
		t.Fatal(err)
	}
}

// feeder sends batches one at a time to random pods and the same batches
// to a reference, resending what a pod answered as not applied (503 with
// "applied"), until stop: the cluster must end up with the reference's
// state whatever the membership did meanwhile.
type feeder struct {
	ref              *service
	pods             atomic.Pointer[[]*service]
	stop, done       chan struct{}
	sent, resent     atomic.Int64
	errMu            sync.Mutex
	err              error
	devices, perPost int
	clients          int // feeding at once, each on its own devices
	// paused holds the clients between rounds; idle counts those held.
	paused      atomic.Bool
	idle        atomic.Int32
	first, f503 atomic.Int64 // first tries of a round, and those answered 503
	msgs        []string     // guarded by errMu: the first tries' 503 answers
}

// pause holds every client between two rounds, so cluster and reference
// hold the same samples; resume lets them go on.
func (f *feeder) pause(t *testing.T) {
	t.Helper()
	f.paused.Store(true)
	for f.idle.Load() < int32(f.clients) {
		select {
		case <-f.done:
			t.Fatalf("feeder stopped: %v", f.err)
		case <-time.After(time.Millisecond):
		}
	}
}

func (f *feeder) resume() { f.paused.Store(false) }

// start runs f.clients clients until stop; done closes when all ended.
func (f *feeder) start(t *testing.T) {
	var wg sync.WaitGroup
	for c := range f.clients {
		wg.Add(1)
		go func() {
			defer wg.Done()
			f.run(t, uint64(21+c), c*f.devices/f.clients, f.devices/f.clients)
		}()
	}
	go func() {
		wg.Wait()
		close(f.done)
	}()
}

// wait waits until the clients sent rounds more batches.
func (f *feeder) wait(t *testing.T, rounds int64) {
	t.Helper()
	for n := f.sent.Load() + rounds; f.sent.Load() < n; time.Sleep(5 * time.Millisecond) {
		select {
		case <-f.done:
			t.Fatalf("feeder stopped: %v", f.err)
		default:
		}
	}
}

// finish stops the clients and fails the test if one failed.
func (f *feeder) finish(t *testing.T) {
	t.Helper()
	close(f.stop)
	<-f.done
	if f.err != nil {
		t.Fatal(f.err)
	}
}

func (f *feeder) run(t *testing.T, seed uint64, first, devices int) {
	rng := rand.New(rand.NewPCG(seed, seed+1))
	for round := 0; ; round++ {
		if f.paused.Load() {
			f.idle.Add(1)
			for f.paused.Load() {
				select {
				case <-f.stop:
					return
				case <-time.After(time.Millisecond):
				}
			}
			f.idle.Add(-1)
		}
		select {
		case <-f.stop:
			return
		default:
		}
		body := clusterBatchFrom(rng, first, devices, f.perPost, int64(1_000_000+round*100))
		var samples []json.RawMessage
		if err := json.Unmarshal([]byte(body), &samples); err != nil {
			f.fail(err)
			return
		}
		var last string
		for try := 0; len(samples) > 0; try++ {
			if try == 50 {
				f.fail(fmt.Errorf("round %d: %d samples still not applied after 50 tries; last: %s", round, len(samples), last))
				return
			}
			pods := *f.pods.Load()
			pod := pods[rng.IntN(len(pods))]
			b, _ := json.Marshal(samples)
			resp, err := http.Post(pod.base+"/api/v1/ingest", "application/json", bytes.NewReader(b))
			if err != nil {
				time.Sleep(20 * time.Millisecond) // a pod stopping: another one
				continue
			}
			var ans struct {
				Applied []int
				Error   string
			}
			raw, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if try == 0 {
				f.first.Add(1)
				if resp.StatusCode == 503 {
					f.f503.Add(1)
					f.errMu.Lock()
					f.msgs = append(f.msgs, string(raw))
					f.errMu.Unlock()
				}
			}
			switch {
			case resp.StatusCode == 200:
				samples = nil
			case resp.StatusCode == 503:
				if err := json.Unmarshal(raw, &ans); err != nil {
					f.fail(fmt.Errorf("503 body %s: %v", raw, err))
					return
				}
				done := map[int]bool{}
				for _, i := range ans.Applied {
					done[i] = true
				}
				var rest []json.RawMessage
				for i, s := range samples {
					if !done[i] {
						rest = append(rest, s)
					}
				}
				f.resent.Add(int64(len(rest)))
				last = ans.Error
				samples = rest
				time.Sleep(20 * time.Millisecond)
			default:
				f.fail(fmt.Errorf("round %d: %d %s", round, resp.StatusCode, raw))
				return
			}
		}
		f.ref.post(t, body)
		f.sent.Add(1)
	}
}

func (f *feeder) fail(err error) {
	f.errMu.Lock()
	defer f.errMu.Unlock()
	if f.err == nil {
		f.err = err
	}
}

// checkAgainst compares every device read from every pod with the
// reference, and checks that each device is held by exactly one pod and
// that every pod's view is the pods given.
func checkAgainst(t *testing.T, ref *service, pods []*service, devices int) {
	t.Helper()
	for d := range devices {
		for _, path := range []string{"/api/v1/devices/dev-%d", "/api/v1/devices/dev-%d/anomalies"} {
			p := fmt.Sprintf(path, d)
			want := ref.get(t, p)
			for i, pod := range pods {
				if got := pod.get(t, p); got != want {
					t.Fatalf("%s from pod %d:\n got %s\nwant %s", p, i, got, want)
				}
			}
		}
	}
	held := 0
	for _, pod := range pods {
		var info struct {
			Devices int
			Members []string
			InView  bool `json:"in_view"`
		}
		if err := json.Unmarshal([]byte(strings.TrimPrefix(pod.get(t, "/api/v1/cluster"), "200 ")), &info); err != nil {
			t.Fatal(err)
		}
		if !info.InView || len(info.Members) != len(pods) {
			t.Fatalf("cluster info %+v; want this pod in a view of %d members", info, len(pods))
		}
		held += info.Devices
	}
	if want := ref.devicesHeld(t); held != want {
		t.Fatalf("pods hold %d devices in all; want each of the %d held once", held, want)
	}
}

// TestClusterScaleUnderTraffic: three pods take traffic from four clients
// (each on its own devices, one batch at a time); a fourth pod joins, then
// leaves (SIGTERM), while batches keep flowing. Every device ends
// identical to a reference fed the same stream, held by one pod: no
// sample lost or applied twice across both handoffs. Without Redis the
// state moves between pods alone; with Redis too.
func TestClusterScaleUnderTraffic(t *testing.T) {
	bin := buildService(t)
	for _, mode := range []string{"memory", "redis"} {
		t.Run(mode, func(t *testing.T) {
			var env []string
			if mode == "redis" {
				env = append(env, "REDIS_ADDR="+startRedis(t), "SNAPSHOT_INTERVAL=200ms")
			}
			pods, file := startCluster(t, bin, 3, env...)
			addrs := []string{pods[0].addr(), pods[1].addr(), pods[2].addr()}
			f := &feeder{ref: startService(t, bin), stop: make(chan struct{}), done: make(chan struct{}), devices: 400, perPost: 40, clients: 4}
			f.pods.Store(&pods)
			f.start(t)
			f.wait(t, 60)
			f.pause(t)
			checkAgainst(t, f.ref, pods, f.devices) // steady state
			f.resume()
			// Scale out: the fourth pod starts with the four in its file.
			a4 := freeAddr(t)
			writePeers(t, file, append(addrs, a4))
			p4 := startServiceAt(t, bin, a4, append([]string{"PEERS_FILE=" + file, "SELF_ADDR=" + a4, "PEERS_REFRESH=200ms"}, env...)...)
			four := append(slices.Clone(pods), p4)
			f.pods.Store(&four)
			f.wait(t, 200)
			f.pause(t)
			checkAgainst(t, f.ref, four, f.devices)
			f.resume()
			f.wait(t, 50)
			// Scale in: SIGTERM the fourth, out of the file half a second
			// later, as Kubernetes removes endpoints after the signal.
			stopped := make(chan struct{})
			go func() {
				defer close(stopped)
				p4.stop(t, syscall.SIGTERM)
			}()
			f.pods.Store(&pods)
			time.Sleep(500 * time.Millisecond)
			writePeers(t, file, addrs)
			<-stopped
			f.wait(t, 200)
			f.finish(t)
			t.Logf("%d batches, %d samples resent; pod 4's log:\n%s", f.sent.Load(), f.resent.Load(), p4.logs)
			checkAgainst(t, f.ref, pods, f.devices)
		})
	}
}

// addr is the host:port the service listens on.
func (s *service) addr() string { return strings.TrimPrefix(s.base, "http://") }

// TestClusterKilledPodFromRedis: with Redis, a pod SIGKILLed after its
// devices' last snapshot went out loses nothing: the survivors cannot reach
// it, take its devices from Redis and go on, and every device ends equal
// to the reference, held once.
func TestClusterKilledPodFromRedis(t *testing.T) {
	bin := buildService(t)
	env := []string{"REDIS_ADDR=" + startRedis(t), "SNAPSHOT_INTERVAL=100ms", "FORWARD_TIMEOUT=500ms"}
	pods, file := startCluster(t, bin, 3, env...)
	f := &feeder{ref: startService(t, bin), stop: make(chan struct{}), done: make(chan struct{}), devices: 300, perPost: 30, clients: 3}
	f.pods.Store(&pods)
	f.start(t)
	f.wait(t, 150)
	// Quiet for five intervals, so Redis has every device; then the kill.
	f.pause(t)
	time.Sleep(500 * time.Millisecond)
	pods[2].cmd.Process.Kill() //nolint:errcheck
	pods[2].cmd.Wait()         //nolint:errcheck
	two := []*service{pods[0], pods[1]}
	f.pods.Store(&two)
	first, f503 := f.first.Load(), f.f503.Load()
	f.resume()
	time.Sleep(time.Second) // the survivors still list it: suspicion alone carries
	writePeers(t, file, []string{pods[0].addr(), pods[1].addr()})
	f.wait(t, 150)
	f.finish(t)
	// Around the crash, few first tries may get a 503 (a survivor's view
	// still lists the dead pod, and a refresh had not dropped it yet).
	tries, failed := f.first.Load()-first, f.f503.Load()-f503
	t.Logf("after the kill: %d of %d first tries answered 503", failed, tries)
	if failed > max(1, tries/100) {
		t.Errorf("%d of %d first tries after the kill answered 503; want at most max(1, 1%%); last: %s", failed, tries, f.msgs[len(f.msgs)-1])
	}
	checkAgainst(t, f.ref, two, f.devices)
}

// TestClusterDNS: discovery end to end through a real DNS server on
// loopback. Pods listen on 127.0.0.1 to .4 at one port (PEER_PORT), as pod
// IPs behind a headless Service; the fourth joins when its address enters
// the records and leaves (SIGTERM, address gone) while traffic flows, and
// every device ends equal to the reference.
func TestClusterDNS(t *testing.T) {
	bin := buildService(t)
	_, port, _ := net.SplitHostPort(freeAddr(t))
	ips := []string{"127.0.0.1", "127.0.0.2", "127.0.0.3", "127.0.0.4"}
	srv := dnstest.Start(t, "peers.test.", ips[:3]...)
	start := func(ip string) *service {
		a := net.JoinHostPort(ip, port)
		return startServiceAt(t, bin, a, "PEERS_DNS=peers.test.", "PEERS_DNS_SERVER="+srv.Addr, "SELF_ADDR="+a, "PEERS_REFRESH=200ms")
	}
	var pods []*service
	for _, ip := range ips[:3] {
		pods = append(pods, start(ip))
	}
	f := &feeder{ref: startService(t, bin), stop: make(chan struct{}), done: make(chan struct{}), devices: 200, perPost: 20, clients: 2}
	f.pods.Store(&pods)
	f.start(t)
	f.wait(t, 50)
	srv.Set(ips...)
	p4 := start(ips[3])
	four := append(slices.Clone(pods), p4)
	f.pods.Store(&four)
	f.wait(t, 100)
	f.pods.Store(&pods)
	srv.Set(ips[:3]...)
	p4.stop(t, syscall.SIGTERM)
	f.wait(t, 100)
	f.finish(t)
	if !regexp.MustCompile(`"offered":[1-9]`).MatchString(p4.logs.String()) {
		t.Errorf("pod 4 handed nothing over:\n%s", p4.logs)
	}
	checkAgainst(t, f.ref, pods, f.devices)
}
