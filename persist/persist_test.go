package persist

import (
	"bufio"
	"context"
	"fmt"
	"net"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"ai-load-service/shard"

	"github.com/redis/rueidis"
)

// redisServer is a real redis-server on a free loopback port, started by
// the test; Stop and Start keep its port and its data directory.
type redisServer struct {
	tb    testing.TB
	addr  string
	dir   string
	extra []string // more redis-server arguments, overriding Start's
	cmd   *exec.Cmd
}

func MustStartRedis(tb testing.TB, extra ...string) *redisServer {
	tb.Helper()
	if _, err := exec.LookPath("redis-server"); err != nil {
		tb.Fatal("redis-server not found: install it (apt-get install -y redis-server); .ci/run does")
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		tb.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	r := &redisServer{tb: tb, addr: addr, dir: tb.TempDir(), extra: extra}
	r.Start()
	tb.Cleanup(r.Stop)
	return r
}

// Start runs redis-server with an append-only file, so a restart keeps
// what was written, like a production Redis would.
func (r *redisServer) Start() {
	r.tb.Helper()
	_, port, _ := net.SplitHostPort(r.addr)
	args := []string{"--port", port, "--bind", "127.0.0.1", "--save", "",
		"--appendonly", "yes", "--appendfsync", "always", "--dir", r.dir, "--logfile", filepath.Join(r.dir, "log")}
	r.cmd = exec.Command("redis-server", append(args, r.extra...)...)
	if err := r.cmd.Start(); err != nil {
		r.tb.Fatal(err)
	}
	deadline := time.Now().Add(10 * time.Second)
	for time.Now().Before(deadline) {
		if c, err := net.DialTimeout("tcp", r.addr, 100*time.Millisecond); err == nil {
			fmt.Fprintf(c, "PING\r\n")
			line, _ := bufio.NewReader(c).ReadString('\n')
			c.Close()
			if strings.HasPrefix(line, "+PONG") {
				return
			}
		}
		time.Sleep(20 * time.Millisecond)
	}
	r.tb.Fatalf("redis-server on %s did not answer", r.addr)
}

// Stop kills redis-server (an outage, not a clean shutdown).
func (r *redisServer) Stop() {
	if r.cmd != nil && r.cmd.Process != nil {
		r.cmd.Process.Kill() //nolint:errcheck
		r.cmd.Wait()         //nolint:errcheck
		r.cmd = nil
	}
}

func (r *redisServer) client(tb testing.TB) rueidis.Client {
	tb.Helper()
	c, err := rueidis.NewClient(rueidis.ClientOption{InitAddress: []string{r.addr}, DisableCache: true})
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(c.Close)
	return c
}

// stack is a Writer and a Set wired as main.go wires them.
type stack struct {
	w   *Writer
	set *shard.Set
}

func MustOpenStack(tb testing.TB, addr string, o shard.Options) *stack {
	tb.Helper()
	return MustOpenStackWith(tb, Options{Addrs: []string{addr}, Interval: 50 * time.Millisecond, Timeout: 500 * time.Millisecond}, o)
}

func MustOpenStackWith(tb testing.TB, wo Options, o shard.Options) *stack {
	tb.Helper()
	w := New(wo)
	o.Store = w
	set := shard.New(o)
	w.Start(set)
	s := &stack{w: w, set: set}
	tb.Cleanup(func() { s.close(tb) })
	return s
}

func (s *stack) close(tb testing.TB) {
	if s.w == nil {
		return
	}
	sealErr, _, err := s.stop(3 * time.Second)
	if sealErr != nil {
		tb.Logf("seal: %v", sealErr)
	}
	if err != nil {
		tb.Logf("stop: %v", err)
	}
}

// stop runs the service's stop sequence (seal, Writer.Stop, the shards)
// within d, as main does, and returns what the seal and Writer.Stop said.
func (s *stack) stop(d time.Duration) (sealErr error, rep StopReport, err error) {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	defer cancel()
	sealErr = s.set.Seal(ctx)
	rep, err = s.w.Stop(ctx)
	s.set.Stop()
	s.w = nil
	return sealErr, rep, err
}

// unrestoredKnown sends one more sample to each of the n devices
// storeKnown stored, one every 300 ms, and counts those that came back
// without their stored samples.
func (s *stack) unrestoredKnown(t *testing.T, n int) int {
	t.Helper()
	fresh := 0
	for i := range n {
		time.Sleep(300 * time.Millisecond)
		dev := fmt.Sprint("known-", i)
		s.ingest(t, dev, 4)
		if st, _ := s.state(t, dev); st.Count != 4 {
			fresh++
		}
	}
	return fresh
}

// storeKnown stores devices known-0 ... known-(n-1) with three samples
// each in the Redis at addr.
func storeKnown(t *testing.T, addr string, n int) {
	t.Helper()
	old := MustOpenStack(t, addr, shard.Options{Shards: 2})
	for i := range n {
		old.ingest(t, fmt.Sprint("known-", i), 1, 2, 3)
	}
	old.close(t)
}

func (s *stack) ingest(tb testing.TB, dev string, vals ...float64) {
	tb.Helper()
	for _, v := range vals {
		var b shard.Batch
		b.Add([]byte(dev), 1)
		b.AddMetric([]byte("m"), v)
		if err := s.set.Ingest(&b); err != nil {
			tb.Fatal(err)
		}
	}
}

func (s *stack) state(tb testing.TB, dev string) (shard.MetricState, bool) {
	tb.Helper()
	ms, ok, err := s.set.Device(dev)
	if err != nil {
		tb.Fatal(err)
	}
	if !ok || len(ms) == 0 {
		return shard.MetricState{}, false
	}
	return ms[0], true
}

func stored(tb testing.TB, c rueidis.Client, dev string) *shard.Snapshot {
	tb.Helper()
	b, err := c.Do(context.Background(), c.B().Get().Key("aiload:dev:"+dev).Build()).AsBytes()
	if rueidis.IsRedisNil(err) {
		return nil
	}
	if err != nil {
		tb.Fatal(err)
	}
	s, err := shard.DecodeSnapshot(b)
	if err != nil {
		return nil // not (yet) a valid snapshot
	}
	return s
}

func waitFor(tb testing.TB, what string, cond func() bool) {
	tb.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			tb.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func TestSnapshotsReachRedisAndRestore(t *testing.T) {
	r := MustStartRedis(t)
	c := r.client(t)
	a := MustOpenStack(t, r.addr, shard.Options{Shards: 4})
	for i := range 20 {
		a.ingest(t, fmt.Sprint("dev-", i), 1, 2, 3, float64(i))
	}
	waitFor(t, "snapshots in redis", func() bool {
		s := stored(t, c, "dev-19")
		return s != nil && s.Streams[0].Count == 4
	})
	want, _ := a.state(t, "dev-7")
	a.ingest(t, "dev-7", 9) // not yet snapshotted: the final flush must carry it
	want.Count, want.Last = 5, 9
	a.close(t)
	if ttl, err := c.Do(context.Background(), c.B().Pttl().Key("aiload:dev:dev-7").Build()).AsInt64(); err != nil || ttl < int64(6*24*time.Hour/time.Millisecond) {
		t.Fatalf("unexpected TTL %d ms, %v; want about 7 days", ttl, err)
	}

	b := MustOpenStack(t, r.addr, shard.Options{Shards: 2}) // a new process, other shard count
	got, ok := b.state(t, "dev-7")
	if !ok || got.Count != want.Count || got.Last != want.Last || got.Window != 5 {
		t.Fatalf("restored %+v; want count %d last %v window 5", got, want.Count, want.Last)
	}
	if n := b.w.hits.Get(); n != 1 {
		t.Fatalf("unexpected restore hits %d", n)
	}
}

// TestRestartBurstRestoresEveryDevice: after a restart the first requests
// name thousands of devices within milliseconds; every one must be loaded
// (none served unrestored while Redis is healthy), in pipelined batches.
func TestRestartBurstRestoresEveryDevice(t *testing.T) {
	const n = 6000 // more than the old fixed queue of 4096 loads
	r := MustStartRedis(t)
	batch := func(s *stack, v float64) {
		t.Helper()
		var b shard.Batch
		for i := range n {
			b.Add([]byte(fmt.Sprint("dev-", i)), 1)
			b.AddMetric([]byte("m"), v+float64(i))
		}
		if err := s.set.Ingest(&b); err != nil {
			t.Fatal(err)
		}
	}
	a := MustOpenStack(t, r.addr, shard.Options{Shards: 4})
	batch(a, 0)
	a.close(t)

	b := MustOpenStack(t, r.addr, shard.Options{Shards: 4})
	batch(b, 1) // one request naming every device: all loads start at once
	if h, f, u := b.w.hits.Get(), b.w.loadFailures.Get(), b.set.Unrestored(); h != n || f != 0 || u != 0 {
		t.Fatalf("restore hits %d, failures %d, unrestored %d; want %d, 0, 0", h, f, u, n)
	}
	for _, i := range []int{0, 4095, 4096, n - 1} {
		got, ok := b.state(t, fmt.Sprint("dev-", i))
		if !ok || got.Count != 2 || got.Mean != float64(i)+0.5 {
			t.Fatalf("dev-%d: %+v; want count 2, mean %v", i, got, float64(i)+0.5)
		}
	}
}

func TestCorruptSnapshotStartsFresh(t *testing.T) {
	r := MustStartRedis(t)
	c := r.client(t)
	if err := c.Do(context.Background(), c.B().Set().Key("aiload:dev:bad").Value("garbage").Build()).Error(); err != nil {
		t.Fatal(err)
	}
	s := MustOpenStack(t, r.addr, shard.Options{Shards: 2})
	s.ingest(t, "bad", 5)
	if st, ok := s.state(t, "bad"); !ok || st.Count != 1 {
		t.Fatalf("want a fresh device; got %+v %v", st, ok)
	}
	if n := s.w.corrupt.Get(); n != 1 {
		t.Fatalf("corrupt snapshot not counted: %d", n)
	}
	waitFor(t, "the garbage replaced", func() bool { return stored(t, c, "bad") != nil })
}

func TestRedisOutage(t *testing.T) {
	r := MustStartRedis(t)
	c := r.client(t)
	s := MustOpenStack(t, r.addr, shard.Options{Shards: 2})
	s.ingest(t, "old", 1, 2, 3)
	waitFor(t, "old persisted", func() bool { return stored(t, c, "old") != nil })

	r.Stop()
	s.ingest(t, "old", 4, 5)   // known device: goes on
	s.ingest(t, "new", 10)     // unknown device: load fails, served fresh
	s.ingest(t, "new", 11, 12) // and kept for replay
	if st, ok := s.state(t, "new"); !ok || st.Count != 3 {
		t.Fatalf("ingest during the outage failed: %+v", st)
	}
	waitFor(t, "failed snapshots", func() bool { return s.w.failures.Get() > 0 && s.set.Unrestored() == 1 })
	if s.w.Pending() != 1 { // old is pending; new is unrestored and must not be written
		t.Fatalf("unexpected pending %d; want 1", s.w.Pending())
	}

	r.Start()
	waitFor(t, "recovery", func() bool {
		o, n := stored(t, c, "old"), stored(t, c, "new")
		return o != nil && o.Streams[0].Count == 5 && n != nil && n.Streams[0].Count == 3
	})
	waitFor(t, "nothing unrestored or pending", func() bool { return s.set.Unrestored() == 0 && s.w.Pending() == 0 })
}

func TestOutageKeepsStoredStateForUnrestoredDevice(t *testing.T) {
	r := MustStartRedis(t)
	c := r.client(t)
	a := MustOpenStack(t, r.addr, shard.Options{Shards: 2})
	a.ingest(t, "d", 1, 2, 3, 4)
	a.close(t)

	r.Stop()
	b := MustOpenStack(t, r.addr, shard.Options{Shards: 2})
	b.ingest(t, "d", 5, 6) // load fails: fresh state, must not overwrite
	if st, _ := b.state(t, "d"); st.Count != 2 {
		t.Fatalf("unexpected fresh state %+v", st)
	}
	time.Sleep(200 * time.Millisecond)
	r.Start()
	waitFor(t, "stored state merged with the outage's samples", func() bool {
		st, _ := b.state(t, "d")
		return st.Count == 6 && st.Last == 6 && st.Window == 6
	})
	waitFor(t, "merged state persisted", func() bool {
		s := stored(t, c, "d")
		return s != nil && s.Streams[0].Count == 6
	})
}

func TestRedisDownAtStart(t *testing.T) {
	r := MustStartRedis(t)
	c := r.client(t)
	r.Stop()
	s := MustOpenStack(t, r.addr, shard.Options{Shards: 2})
	s.ingest(t, "early", 1, 2)
	time.Sleep(150 * time.Millisecond)
	r.Start()
	waitFor(t, "early persisted", func() bool {
		st := stored(t, c, "early")
		return st != nil && st.Streams[0].Count == 2
	})
}

func TestIdleEvictionReloads(t *testing.T) {
	r := MustStartRedis(t)
	s := MustOpenStack(t, r.addr, shard.Options{Shards: 2, IdleEvict: 100 * time.Millisecond})
	s.ingest(t, "sleepy", 1, 2, 3)
	waitFor(t, "eviction", func() bool { return s.set.Evicted() == 1 && s.set.Devices() == 0 })
	s.ingest(t, "sleepy", 4)
	if st, _ := s.state(t, "sleepy"); st.Count != 4 || st.Window != 4 {
		t.Fatalf("not reloaded after eviction: %+v", st)
	}
}

// TestRedisCluster runs the same Writer against a real three-node Redis
// Cluster: REDIS_ADDR takes any seeds, rueidis finds the slots, and
// DoMulti splits each pipeline by node.
func TestRedisCluster(t *testing.T) {
	if _, err := exec.LookPath("redis-cli"); err != nil {
		t.Fatal("redis-cli not found: it comes with the redis-server package")
	}
	var addrs []string
	for range 3 {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		addrs = append(addrs, ln.Addr().String())
		ln.Close()
	}
	for _, a := range addrs {
		_, port, _ := net.SplitHostPort(a)
		dir := t.TempDir()
		cmd := exec.Command("redis-server", "--port", port, "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
			"--cluster-enabled", "yes", "--cluster-config-file", filepath.Join(dir, "nodes.conf"), "--dir", dir)
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() }) //nolint:errcheck
	}
	waitFor(t, "cluster nodes", func() bool {
		for _, a := range addrs {
			c, err := net.Dial("tcp", a)
			if err != nil {
				return false
			}
			c.Close()
		}
		return true
	})
	args := append([]string{"--cluster", "create"}, addrs...)
	if out, err := exec.Command("redis-cli", append(args, "--cluster-replicas", "0", "--cluster-yes")...).CombinedOutput(); err != nil {
		t.Fatalf("redis-cli --cluster create: %v\n%s", err, out)
	}
	waitFor(t, "cluster state ok", func() bool {
		out, _ := exec.Command("redis-cli", "-h", "127.0.0.1", "-p", strings.Split(addrs[0], ":")[1], "cluster", "info").Output()
		return strings.Contains(string(out), "cluster_state:ok")
	})

	a := MustOpenStack(t, addrs[0], shard.Options{Shards: 2})
	for i := range 50 {
		a.ingest(t, fmt.Sprint("node-", i), float64(i), 1)
	}
	w := a.w
	a.close(t)
	if w.written.Get() != 50 || w.failures.Get() != 0 {
		t.Fatalf("unexpected snapshots written %d, failed %d; want 50 and 0", w.written.Get(), w.failures.Get())
	}
	b := MustOpenStack(t, addrs[2], shard.Options{Shards: 2}) // another seed
	for i := range 50 {
		if st, ok := b.state(t, fmt.Sprint("node-", i)); !ok || st.Count != 2 || st.Mean != (float64(i)+1)/2 {
			t.Fatalf("node-%d not restored from the cluster: %+v", i, st)
		}
	}
}

// TestOutageDoesNotStallNewDevices: with Redis gone, thousands of new
// devices must each fail their load fast (the breaker), not queue behind a
// few loaders for a call timeout each (which would take minutes here).
func TestOutageDoesNotStallNewDevices(t *testing.T) {
	r := MustStartRedis(t)
	s := MustOpenStack(t, r.addr, shard.Options{Shards: 2})
	s.ingest(t, "warm", 1) // connected
	r.Stop()
	start := time.Now()
	for i := range 20 {
		var b shard.Batch
		for d := range 100 {
			b.Add([]byte(fmt.Sprint("new-", i, "-", d)), 1)
			b.AddMetric([]byte("m"), 1)
		}
		if err := s.set.Ingest(&b); err != nil {
			t.Fatal(err)
		}
	}
	if took := time.Since(start); took > 10*time.Second {
		t.Fatalf("2000 new devices took %s during the outage", took)
	}
	if n := s.set.Unrestored(); n != 2000 {
		t.Fatalf("unexpected unrestored count %d; want 2000", n)
	}
}

// keys returns how many device keys Redis holds.
func keys(tb testing.TB, c rueidis.Client) int {
	tb.Helper()
	ks, err := c.Do(context.Background(), c.B().Keys().Pattern("aiload:dev:*").Build()).AsStrSlice()
	if err != nil {
		tb.Fatal(err)
	}
	return len(ks)
}

// TestStopWritesUnrestoredDevices: Redis down at start (past the connect
// grace), new devices answered 200, Redis back, SIGTERM 0.3 s later: the
// stop must reconcile them and write them (0 keys were written, and the log
// said the final snapshot was written). One device has stored state its
// outage samples replay onto; the others have none and keep their state.
func TestStopWritesUnrestoredDevices(t *testing.T) {
	r := MustStartRedis(t)
	c := r.client(t)
	old := MustOpenStack(t, r.addr, shard.Options{Shards: 2})
	old.ingest(t, "known", 1, 2, 3)
	old.close(t)
	r.Stop()

	s := MustOpenStackWith(t, Options{Addrs: []string{r.addr}, Interval: time.Hour, Timeout: 300 * time.Millisecond},
		shard.Options{Shards: 2})
	time.Sleep(400 * time.Millisecond) // past the connect grace: loads fail at once
	for i := range 20 {
		s.ingest(t, fmt.Sprint("dev-", i), float64(i), float64(i+1))
	}
	s.ingest(t, "known", 4, 5)
	if n := s.set.Unrestored(); n != 21 {
		t.Fatalf("unrestored %d; want 21", n)
	}
	r.Start()
	time.Sleep(300 * time.Millisecond)
	sealErr, rep, err := s.stop(4 * time.Second)
	if sealErr != nil {
		t.Fatal(sealErr)
	}
	if err != nil || rep.Reconciled != 21 || rep.Written != 21 || rep.Pending != 0 || rep.Unreconciled != 0 {
		t.Fatalf("stop: %+v, %v; want 21 reconciled and written", rep, err)
	}
	if n := keys(t, c); n != 21 {
		t.Fatalf("redis holds %d device keys; want 21", n)
	}
	if st := stored(t, c, "known"); st == nil || st.Streams[0].Count != 5 || st.Streams[0].Last != 5 {
		t.Fatalf("known device: %+v; want its 3 stored samples and the 2 replayed", st)
	}
	if st := stored(t, c, "dev-7"); st == nil || st.Streams[0].Count != 2 || st.Streams[0].Last != 8 {
		t.Fatalf("new device: %+v", st)
	}
}

// TestStopReportsWhatItCannotWrite: with Redis down through the stop, the
// report and the error say how many devices were not written and not
// reconciled, instead of claiming success.
func TestStopReportsWhatItCannotWrite(t *testing.T) {
	r := MustStartRedis(t)
	s := MustOpenStackWith(t, Options{Addrs: []string{r.addr}, Interval: time.Hour, Timeout: 200 * time.Millisecond},
		shard.Options{Shards: 2})
	s.ingest(t, "a", 1) // loaded (nothing stored), changed, not yet written
	r.Stop()
	time.Sleep(250 * time.Millisecond)
	s.ingest(t, "b", 1) // load fails: unrestored
	sealErr, rep, err := s.stop(time.Second)
	if sealErr != nil {
		t.Fatal(sealErr)
	}
	if err == nil || rep.Pending != 1 || rep.Unreconciled != 1 || rep.Written != 0 {
		t.Fatalf("stop: %+v, %v; want an error, 1 not written, 1 not reconciled", rep, err)
	}
}

// TestUnrestoredRetriedWithinSeconds: retries of failed loads do not wait
// for the snapshot interval (with SNAPSHOT_INTERVAL=1h they waited an hour).
func TestUnrestoredRetriedWithinSeconds(t *testing.T) {
	r := MustStartRedis(t)
	r.Stop()
	s := MustOpenStackWith(t, Options{Addrs: []string{r.addr}, Interval: time.Hour, Timeout: 200 * time.Millisecond},
		shard.Options{Shards: 2})
	time.Sleep(300 * time.Millisecond)
	s.ingest(t, "d", 1, 2)
	if s.set.Unrestored() != 1 {
		t.Fatalf("unrestored %d; want 1", s.set.Unrestored())
	}
	r.Start()
	start := time.Now()
	waitFor(t, "reconciled", func() bool { return s.set.Unrestored() == 0 })
	t.Logf("reconciled %v after redis came back", time.Since(start).Round(time.Millisecond))
}

// TestNewerVersionNotOverwritten: a snapshot written by a newer version of
// the service (a deploy rolled back) is not corrupt: its device is served
// unrestored and its key is never written over (it was overwritten).
func TestNewerVersionNotOverwritten(t *testing.T) {
	r := MustStartRedis(t)
	c := r.client(t)
	newer := []byte("\x05aisv\x01d\x00\x00") // version 4 is this one since the ranges default
	if err := c.Do(context.Background(), c.B().Set().Key("aiload:dev:d").Value(rueidis.BinaryString(newer)).Build()).Error(); err != nil {
		t.Fatal(err)
	}
	s := MustOpenStack(t, r.addr, shard.Options{Shards: 2})
	s.ingest(t, "d", 1, 2)
	if s.set.Unrestored() != 1 || s.w.corrupt.Get() != 0 {
		t.Fatalf("unrestored %d, corrupt %d; want 1 and 0", s.set.Unrestored(), s.w.corrupt.Get())
	}
	time.Sleep(300 * time.Millisecond) // several rounds
	s.close(t)
	got, err := c.Do(context.Background(), c.B().Get().Key("aiload:dev:d").Build()).AsBytes()
	if err != nil || string(got) != string(newer) {
		t.Fatalf("the newer version's snapshot was replaced: %x, %v", got, err)
	}
}

// TestFencedWrites: with Fence, a snapshot is not written over one with a
// greater or equal Gen (a stale owner's write after a handoff), nor over a
// newer version's; it is written over a smaller Gen, a version 1 snapshot,
// garbage, another type, or the same bytes. IDs long enough for a two-byte
// length are read right.
func TestFencedWrites(t *testing.T) {
	r := MustStartRedis(t)
	c := r.client(t)
	ctx := context.Background()
	w := New(Options{Addrs: []string{r.addr}, Interval: time.Hour, Fence: true})
	t.Cleanup(func() { w.Stop(ctx) }) //nolint:errcheck
	for w.clientOrNil() == nil {
		time.Sleep(time.Millisecond)
	}
	snap := func(id string, gen uint64) []byte {
		return (&shard.Snapshot{Device: id, Gen: gen, Streams: []shard.StreamSnapshot{{Name: "m", Values: []float64{float64(gen)}, Count: 1}}}).AppendBinary(nil)
	}
	long := strings.Repeat("L", 128)
	for _, tc := range []struct {
		name, id string
		stored   []byte // nil: none
		list     bool   // stored as a list, not a string
		write    []byte
		fenced   bool
	}{
		{"none stored", "a", nil, false, snap("a", 1), false},
		{"older stored", "b", snap("b", 4), false, snap("b", 5), false},
		{"newer stored", "c", snap("c", 6), false, snap("c", 5), true},
		{"equal gen, other bytes", "d", snap("d", 5), false, append(snap("d", 5), 0), true},
		{"same bytes", "e", snap("e", 5), false, snap("e", 5), false},
		{"version 1 stored", "f", []byte{1, 1, 'f', 0, 0}, false, snap("f", 1), false},
		{"newer version stored", "g", []byte("\x05aisv\x01g\x00\x00"), false, snap("g", 9), true},
		{"garbage stored", "h", []byte("garbage"), false, snap("h", 1), false},
		{"list stored", "i", nil, true, snap("i", 1), false},
		{"long ID, newer stored", long, snap(long, 300), false, snap(long, 299), true},
		{"garbage gen stored", "j", snap("j", 1<<60), false, snap("j", 1), false},
		{"long ID, older stored", long, snap(long, 2), false, snap(long, 3), false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			key := w.Key(tc.id)
			c.Do(ctx, c.B().Del().Key(key).Build()) //nolint:errcheck
			if tc.stored != nil {
				if err := c.Do(ctx, c.B().Set().Key(key).Value(rueidis.BinaryString(tc.stored)).Build()).Error(); err != nil {
					t.Fatal(err)
				}
			}
			if tc.list {
				c.Do(ctx, c.B().Rpush().Key(key).Element("x").Build()) //nolint:errcheck
			}
			before := w.fenced.Get()
			w.mu.Lock()
			w.pending[tc.id] = tc.write
			w.mu.Unlock()
			if err := w.flush(ctx); err != nil {
				t.Fatal(err)
			}
			got, _ := c.Do(ctx, c.B().Get().Key(key).Build()).AsBytes()
			fenced := w.fenced.Get() - before
			want := tc.write
			if tc.fenced {
				want = tc.stored
			}
			if string(got) != string(want) || fenced != map[bool]uint64{true: 1}[tc.fenced] || w.Pending() != 0 {
				t.Fatalf("stored %q, fenced %d, pending %d; want %q, fenced %v, nothing pending", got, fenced, w.Pending(), want, tc.fenced)
			}
		})
	}
}
