package main

// Hostile review G of the cluster handoff, against the real binary: each
// test that fails shows a defect; its comment says what is wrong and what
// is expected. See server/review_g_test.go for the in-process ones.

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"ai-load-service/server/cluster"

	"github.com/redis/rueidis"
)

// gStoredCount is dev's count of metric "m" in Redis at addr (-1: no key).
func gStoredCount(t *testing.T, addr, dev string) int {
	t.Helper()
	c, err := rueidis.NewClient(rueidis.ClientOption{InitAddress: []string{addr}, DisableCache: true})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	return hStored(t, c, dev)
}

// gDeviceOwned returns a device owner owns among members.
func gDeviceOwned(prefix, owner string, members []string) string {
	v := cluster.NewView(owner, members)
	for i := 0; ; i++ {
		if id := fmt.Sprintf("%s%d", prefix, i); v.Owner([]byte(id)) == owner {
			return id
		}
	}
}

// gWaitMembers waits until s's view has n members.
func gWaitMembers(t *testing.T, s *service, n int) {
	t.Helper()
	for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(20 * time.Millisecond) {
		var info struct{ Members []string }
		_ = json.Unmarshal([]byte(strings.TrimPrefix(s.get(t, "/api/v1/cluster"), "200 ")), &info)
		if len(info.Members) == n {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("view of %s never reached %d members: %+v", s.addr(), n, info)
		}
	}
}

// gCountOf reads device dev at s: its count of metric "m", or -1 with the
// answer when the read does not answer 200.
func gCountOf(t *testing.T, s *service, dev string) (int, string) {
	t.Helper()
	got := s.get(t, "/api/v1/devices/"+dev)
	if !strings.HasPrefix(got, "200 ") {
		return -1, got
	}
	var d struct {
		Metrics map[string]struct{ Count int }
	}
	if err := json.Unmarshal([]byte(strings.TrimPrefix(got, "200 ")), &d); err != nil {
		t.Fatal(err)
	}
	return d.Metrics["m"].Count, got
}

func gPeers(t *testing.T, file string, addrs ...string) {
	t.Helper()
	if err := os.WriteFile(file+".tmp", []byte(strings.Join(addrs, "\n")+"\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(file+".tmp", file); err != nil {
		t.Fatal(err)
	}
}

// 6. TestReviewG_HandedStateNeverPersisted: a device taken over by a read
// (the claim route reads each offered device, handoff.go:403; so does a
// GET at the new owner) is restored by shard.settle (shard/durable.go:208-
// 228) as if it came from Redis: clean, touched only when samples were
// replayed. But a member's handoff is newer than what Redis holds, and the
// old owner's final snapshot skips it (a tombstone, durable.go:341). So
// until a sample for it arrives, the new owner never writes it: its
// periodic snapshots skip it, and so does its own final snapshot. A
// graceful scale-in (SIGTERM: the pod offers its devices, the owner takes
// them) followed by a graceful stop of the owner loses every sample since
// the leaving pod's last periodic snapshot (here all of them, with a 20 s
// SNAPSHOT_INTERVAL): Redis has nothing for the device.
func TestReviewG_HandedStateNeverPersisted(t *testing.T) {
	bin := buildService(t)
	redis := startRedis(t)
	a, x := freeAddr(t), freeAddr(t)
	file := filepath.Join(t.TempDir(), "peers")
	gPeers(t, file, a, x)
	env := func(self string) []string {
		return []string{"REDIS_ADDR=" + redis, "SNAPSHOT_INTERVAL=20s", "PEERS_FILE=" + file, "SELF_ADDR=" + self, "PEERS_REFRESH=200ms"}
	}
	pa := startServiceAt(t, bin, a, env(a)...)
	px := startServiceAt(t, bin, x, env(x)...)
	gWaitMembers(t, pa, 2)
	dev := gDeviceOwned("hp", x, []string{a, x})
	for i := range 20 {
		pa.post(t, fmt.Sprintf(`{"device":%q,"ts":%d,"metrics":{"m":%d}}`, dev, i+1, i%3)) // applied at X
	}
	px.stop(t, syscall.SIGTERM) // scale-in: X offers the device to A, which takes it
	gPeers(t, file, a)
	gWaitMembers(t, pa, 1)
	if n, got := gCountOf(t, pa, dev); n != 20 {
		t.Fatalf("after X's graceful stop A reads %s; want count 20 (the handoff). X's log:\n%s", got, px.logs)
	}
	pa.stop(t, syscall.SIGTERM) // A's final snapshot
	pa2 := startServiceAt(t, bin, a, env(a)...)
	if n, got := gCountOf(t, pa2, dev); n != 20 {
		t.Fatalf("both pods stopped gracefully (SIGTERM), with Redis; the device had 20 acknowledged samples, held by A after X handed it over.\n"+
			"Restarted, A reads %s; want count 20. Neither final snapshot wrote it: X's skips the tombstone, and A never marked the handed-over state changed.\nA's log:\n%s",
			got, pa.logs)
	}
}

// 7. TestReviewG_RestartedTakerGetsStaleTombstone: HandOff answers the
// same member asking again with the bytes it handed over before
// (shard/handoff.go:155), on the premise that "nothing changed it since".
// A member that crashed and came back at the same address (a static PEERS
// list or a peers file naming StatefulSet pods, which keep their names)
// breaks the premise: its first life applied samples and wrote them to
// Redis, yet on its first touch after the restart it asks the old owner
// first (Handoff.load asks members before Redis, server/handoff.go:228)
// and is given the stale state from the tombstone, which it serves, and
// then writes over the newer snapshot in Redis.
func TestReviewG_RestartedTakerGetsStaleTombstone(t *testing.T) {
	bin := buildService(t)
	redis := startRedis(t)
	a, x := freeAddr(t), freeAddr(t)
	file := filepath.Join(t.TempDir(), "peers")
	gPeers(t, file, a)
	env := func(self string) []string {
		return []string{"REDIS_ADDR=" + redis, "SNAPSHOT_INTERVAL=200ms", "PEERS_FILE=" + file, "SELF_ADDR=" + self, "PEERS_REFRESH=200ms"}
	}
	pa := startServiceAt(t, bin, a, env(a)...)
	dev := gDeviceOwned("rs", x, []string{a, x})
	post := func(s *service, from, to int) {
		for i := from; i <= to; i++ {
			s.post(t, fmt.Sprintf(`{"device":%q,"ts":%d,"metrics":{"m":%d}}`, dev, i, i%3))
		}
	}
	post(pa, 1, 10) // A owns it
	gPeers(t, file, a, x)
	px := startServiceAt(t, bin, x, env(x)...)
	gWaitMembers(t, pa, 2)
	post(px, 11, 30) // X takes it over from A, then applies 20 more
	if n, got := gCountOf(t, px, dev); n != 30 {
		t.Fatalf("X reads %s; want count 30", got)
	}
	time.Sleep(time.Second) // five snapshot intervals: Redis has count 30
	if n := gStoredCount(t, redis, dev); n != 30 {
		t.Fatalf("Redis holds count %d for the device after a second; want 30 (X's snapshots)", n)
	}
	px.stop(t, syscall.SIGKILL)
	px2 := startServiceAt(t, bin, x, env(x)...) // back at the same address
	if n, got := gCountOf(t, px2, dev); n != 30 {
		post(px2, 31, 31) // one more sample: X's snapshot of the stale state goes over Redis's
		time.Sleep(time.Second)
		t.Fatalf("X crashed and restarted at its address after writing the device (count 30) to Redis;\n"+
			"X now reads %s; want count 30. It asked A first, which answered the bytes it handed over before (count 10) from its tombstone.\n"+
			"After one more sample, Redis holds count %d (want 31): the stale state overwrote the newer snapshot", got, gStoredCount(t, redis, dev))
	}
}

// 8. TestReviewG_EvictedDeviceReloadsStaleTombstone: the same premise as
// test 7 fails without any crash. With Redis, the new owner writes a
// device it took over (once samples changed it) and evicts it after
// IDLE_EVICT; on its next touch Handoff.load asks the members first
// (server/handoff.go:228), the old owner still has its tombstone (a
// minute at least) and answers the bytes it handed over long ago, which
// win over the newer snapshot in Redis: every sample the new owner
// applied before the eviction is lost, and its next snapshot overwrites
// Redis with the stale state.
func TestReviewG_EvictedDeviceReloadsStaleTombstone(t *testing.T) {
	bin := buildService(t)
	redis := startRedis(t)
	a, x := freeAddr(t), freeAddr(t)
	file := filepath.Join(t.TempDir(), "peers")
	gPeers(t, file, a)
	env := func(self string) []string {
		return []string{"REDIS_ADDR=" + redis, "SNAPSHOT_INTERVAL=200ms", "IDLE_EVICT=1s",
			"PEERS_FILE=" + file, "SELF_ADDR=" + self, "PEERS_REFRESH=200ms"}
	}
	pa := startServiceAt(t, bin, a, env(a)...)
	dev := gDeviceOwned("ev", x, []string{a, x})
	n := 0
	send := func(s *service) {
		n++
		s.post(t, fmt.Sprintf(`{"device":%q,"ts":%d,"metrics":{"m":%d}}`, dev, n, n%3))
	}
	// Steady traffic through A while X joins: the device stays warm at A
	// until A's view lists X, then goes to X, which takes it from A.
	stop := make(chan struct{})
	fed := make(chan struct{})
	go func() {
		defer close(fed)
		for {
			select {
			case <-stop:
				return
			default:
			}
			send(pa)
			time.Sleep(50 * time.Millisecond)
		}
	}()
	time.Sleep(300 * time.Millisecond)
	gPeers(t, file, a, x)
	px := startServiceAt(t, bin, x, env(x)...)
	gWaitMembers(t, pa, 2)
	time.Sleep(300 * time.Millisecond)
	close(stop)
	<-fed
	if c, got := gCountOf(t, px, dev); c != n {
		t.Fatalf("X reads %s; want count %d", got, n)
	}
	// Idle: X writes it, then evicts it (IDLE_EVICT 1s).
	for deadline := time.Now().Add(10 * time.Second); px.devicesHeld(t) != 0; time.Sleep(100 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("X never evicted the device")
		}
	}
	if c := gStoredCount(t, redis, dev); c != n {
		t.Fatalf("Redis holds count %d after X evicted the device; want %d", c, n)
	}
	send(px)
	if c, got := gCountOf(t, px, dev); c != n {
		t.Fatalf("after %d samples (the last one at X after it evicted the idle device, whose count %d Redis holds), X reads %s; want count %d.\n"+
			"X reloaded it from A, whose tombstone still had the state it handed over before X applied the rest", n, n-1, got, n)
	}
}
