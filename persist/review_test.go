package persist

// Review tests: each demonstrates a defect in the current code and fails.

import (
	"context"
	"fmt"
	"syscall"
	"testing"
	"time"

	"ai-load-service/shard"
)

// TestReviewOneFailingLoadLosesEveryOtherDevice: Redis is up and healthy,
// but one device's key cannot be read (here it holds a list, so GET answers
// WRONGTYPE; a cluster MOVED/ACL error or any persistent per-key error does
// the same). That device stays unrestored, and Writer.Stop's reconcile
// retries it until the stop budget (4 s in main.go) has run out; the final
// collect and flush then run on an expired context, so every other changed
// device - here "good", acknowledged and loaded normally - is not written.
func TestReviewOneFailingLoadLosesEveryOtherDevice(t *testing.T) {
	r := MustStartRedis(t)
	c := r.client(t)
	if err := c.Do(context.Background(), c.B().Lpush().Key("aiload:dev:bad").Element("x").Build()).Error(); err != nil {
		t.Fatal(err)
	}
	s := MustOpenStackWith(t, Options{Addrs: []string{r.addr}, Interval: time.Hour, Timeout: 500 * time.Millisecond},
		shard.Options{Shards: 2})
	time.Sleep(1200 * time.Millisecond) // the first round (at the first tick) is over; the next is in an hour
	s.ingest(t, "good", 1, 2, 3)
	s.ingest(t, "bad", 1)
	if s.set.Unrestored() != 1 {
		t.Fatalf("test premise: unrestored %d; want 1 (bad)", s.set.Unrestored())
	}
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Second) // main.go flushTimeout
	defer cancel()
	if err := s.set.Seal(ctx); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	rep, err := s.w.Stop(ctx)
	s.set.Stop()
	s.w = nil
	t.Logf("Stop took %v: %+v, %v", time.Since(start).Round(time.Millisecond), rep, err)
	if st := stored(t, c, "good"); st == nil || st.Streams[0].Count != 3 {
		t.Fatalf("device \"good\" (3 samples answered 200, Redis healthy) not written at stop: redis holds %+v; report %+v", st, rep)
	}
}

// TestReviewStopReportOmitsAckedLoss: Redis stops answering (SIGSTOP: the
// connection stays open) while a new device's first load is in flight.
// stopState's Seal runs out of its budget, Writer.Stop then finds nothing
// dirty and nothing unrestored (the device is still *loading*, which
// neither count covers) and reports success: no error, 0 not written, 0
// not reconciled. Closing the Writer fails the load, the device goes
// unrestored, the parked sample is applied and Ingest returns nil (200):
// an acknowledged sample no snapshot holds, under a report saying nothing
// was lost.
func TestReviewStopReportOmitsAckedLoss(t *testing.T) {
	r := MustStartRedis(t)
	s := MustOpenStackWith(t, Options{Addrs: []string{r.addr}, Interval: time.Hour, Timeout: 3 * time.Second},
		shard.Options{Shards: 2})
	waitFor(t, "redis connected", func() bool { return s.w.clientOrNil() != nil })
	proc := r.cmd.Process
	if err := proc.Signal(syscall.SIGSTOP); err != nil {
		t.Fatal(err)
	}
	defer proc.Signal(syscall.SIGCONT) //nolint:errcheck
	ingested := make(chan error, 1)
	go func() {
		var b shard.Batch
		b.Add([]byte("new"), 1)
		b.AddMetric([]byte("m"), 42)
		ingested <- s.set.Ingest(&b)
	}()
	time.Sleep(100 * time.Millisecond) // its load is waiting on redis
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	sealErr := s.set.Seal(ctx)
	rep, stopErr := s.w.Stop(ctx)
	s.set.Stop()
	s.w = nil
	ackErr := <-ingested
	t.Logf("seal: %v; Writer.Stop: %+v, %v; ingest: %v", sealErr, rep, stopErr, ackErr)
	if ackErr == nil && stopErr == nil && rep.Pending == 0 && rep.Unreconciled == 0 {
		t.Fatalf("sample acknowledged after the final snapshot, and the stop report says nothing was lost: %+v", rep)
	}
}

// TestReviewPoisonedKeyFailsOtherLoads: the same unreadable key during
// normal operation. Its device is retried every second (loop, Set.Retry),
// each retry's GET error calls markDown, and for the next second every
// other load fails at once (errRedisDown) without asking Redis. So while
// Redis is healthy, devices stored in it come back unrestored: reads show
// fresh state (count 1 instead of the 4 samples it has), alerts are scored
// against an empty window, restore_failures_total climbs.
func TestReviewPoisonedKeyFailsOtherLoads(t *testing.T) {
	r := MustStartRedis(t)
	c := r.client(t)
	old := MustOpenStack(t, r.addr, shard.Options{Shards: 2})
	for i := range 10 {
		old.ingest(t, fmt.Sprint("known-", i), 1, 2, 3)
	}
	old.close(t)
	if err := c.Do(context.Background(), c.B().Lpush().Key("aiload:dev:bad").Element("x").Build()).Error(); err != nil {
		t.Fatal(err)
	}
	s := MustOpenStackWith(t, Options{Addrs: []string{r.addr}, Interval: time.Hour, Timeout: 500 * time.Millisecond},
		shard.Options{Shards: 2})
	waitFor(t, "redis connected", func() bool { return s.w.clientOrNil() != nil })
	s.ingest(t, "bad", 1)
	fresh := 0
	for i := range 10 {
		time.Sleep(300 * time.Millisecond)
		dev := fmt.Sprint("known-", i)
		s.ingest(t, dev, 4)
		if st, _ := s.state(t, dev); st.Count != 4 {
			fresh++
		}
	}
	t.Logf("%d of 10 stored devices came back with fresh state; restore_failures_total %d", fresh, s.w.loadFailures.Get())
	if fresh > 0 {
		t.Fatalf("%d of 10 devices stored in a healthy Redis were served unrestored because one other key is unreadable", fresh)
	}
}

// TestReviewEvictionAfterTTLForgetsDevice (low severity, configuration):
// SNAPSHOT_TTL and IDLE_EVICT are validated separately (each >= 1 s), and
// nothing refreshes the key of a device that sits clean in memory. With
// TTL < IDLE_EVICT the key expires while the device is still held; the
// eviction then drops the only copy and the next sample reloads nothing:
// the device restarts from scratch although it never left the service.
// (Timing: TTL 1 s, eviction after 2 s idle, checked at 3.5 s.)
func TestReviewEvictionAfterTTLForgetsDevice(t *testing.T) {
	r := MustStartRedis(t)
	s := MustOpenStackWith(t, Options{Addrs: []string{r.addr}, Interval: 50 * time.Millisecond, TTL: time.Second, Timeout: 500 * time.Millisecond},
		shard.Options{Shards: 2, IdleEvict: 2 * time.Second})
	s.ingest(t, "d", 1, 2, 3)
	time.Sleep(3500 * time.Millisecond)
	if s.set.Evicted() != 1 {
		t.Fatalf("test premise: evicted %d", s.set.Evicted())
	}
	s.ingest(t, "d", 4)
	st, _ := s.state(t, "d")
	if st.Count != 4 {
		t.Fatalf("after eviction the device holds %d samples; want 4 (it lost the 3 it had in memory when its key expired)", st.Count)
	}
}
